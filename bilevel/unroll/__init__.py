r"""Unrolled, truncated and back-gradient differentiation: hypergradients *through* the inner steps.

The inner solver is an iteration :math:`s_{t+1} = \Phi_t(s_t, \theta)` (state :math:`s = (x, \dots)`,
hyperparameters and data :math:`\theta` = ``args``) run for exactly :math:`T` steps; the returned
:math:`x_T(\theta)` is differentiated as the composition of the :math:`T` maps, *not* as the exact
minimizer (compare :class:`bilevel.minimize.Implicit`). For gradient descent on
:math:`\mathcal L(x,\theta)` with step :math:`\eta` the reverse-mode recursion (the adjoint of the
unrolled map) is

.. math::

    \bar x_T = \nabla_x f, \qquad
    \bar x_{t} = (I - \eta \nabla^2_{xx}\mathcal L(x_t))\,\bar x_{t+1}, \qquad
    \bar\theta = -\eta \sum_{t=0}^{T-1} \nabla^2_{\theta x}\mathcal L(x_t)\,\bar x_{t+1},

a truncated Neumann series of the implicit hypergradient
:math:`-\nabla^2_{\theta x}\mathcal L\,(\nabla^2_{xx}\mathcal L)^{-1}\nabla_x f`, to which it converges
geometrically (rate :math:`1 - \eta\mu` for a :math:`\mu`-strongly convex inner loss) when the
iterates converge. The strategies below are ``method`` objects of :func:`bilevel.minimize` (same
signature as :class:`~bilevel.minimize.Implicit`): ``minimize(loss, init, *args, solver=, method=)``.

- :class:`Unrolled` (:mod:`bilevel.unroll.unrolled`): differentiate through the :math:`T` steps of a
  ``lax.scan``, forward or reverse mode, with rematerialization (``checkpoint``);
- :class:`Truncated` (:mod:`bilevel.unroll.truncated`): backpropagate through the last :math:`k` steps;
- :class:`BackGradient` (:mod:`bilevel.unroll.back_gradient`): reverse the trajectory of gradient
  descent / momentum SGD instead of storing it, exactly for momentum (integer arithmetic of
  :mod:`bilevel.unroll.reversible`);
- :class:`MiniBatches` (:mod:`bilevel.unroll.minibatches`): a stochastic inner loop whose data order
  is a pure function of a key, for any of the above.

Lower level: :func:`unrolled_solve` scans any pure ``step_fn(state, t, *args) -> state`` (e.g. a flax
model's train step) with the same checkpointing; :func:`back_gradient_solve` reverses gradient descent
or momentum driven by any pure ``grad_fn(params, t, *args) -> gradient``.

References:
  J. Domke, *Generic Methods for Optimization-Based Modeling*, AISTATS 2012.
  D. Maclaurin, D. Duvenaud, R. P. Adams, *Gradient-based Hyperparameter Optimization through
  Reversible Learning*, ICML 2015.
  L. Muñoz-González et al., *Towards Poisoning of Deep Learning Algorithms with Back-gradient
  Optimization*, AISec 2017.
  L. Franceschi, M. Donini, P. Frasconi, M. Pontil, *Forward and Reverse Gradient-Based Hyperparameter
  Optimization*, ICML 2017.
  A. Shaban, C.-A. Cheng, N. Hatch, B. Boots, *Truncated Back-propagation for Bilevel Optimization*,
  AISTATS 2019.
  A. Griewank, A. Walther, *Algorithm 799: Revolve*, ACM TOMS 2000; T. Chen et al., *Training Deep
  Nets with Sublinear Memory Cost*, 2016.
"""


from bilevel.unroll._common import Checkpoint
from bilevel.unroll.back_gradient import BackGradient, back_gradient_solve
from bilevel.unroll.minibatches import MiniBatches, batch_indices
from bilevel.unroll.reversible import information_buffer_limbs
from bilevel.unroll.truncated import Truncated
from bilevel.unroll.unrolled import Unrolled, checkpoint_blocks, unrolled_solve

__all__ = [
    "Unrolled",
    "Truncated",
    "BackGradient",
    "MiniBatches",
    "Checkpoint",
    "unrolled_solve",
    "back_gradient_solve",
    "batch_indices",
    "checkpoint_blocks",
    "information_buffer_limbs",
]
