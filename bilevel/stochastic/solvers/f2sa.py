r"""F2SA (Kwon, Kwon, Wright & Nowak, "A Fully First-Order Method for Stochastic Bilevel Optimization", ICML 2023).

No second derivatives: the bilevel problem is replaced by the penalty (value-function) formulation

.. math::  \min_{x, z}\; \mathcal L_\lambda(x, z) = f(z, x) + \lambda\big(g(z, x) - \min_y g(y, x)\big),

whose gradient in :math:`x` at :math:`z \approx z^\star_\lambda(x)`, :math:`y \approx z^\star(x)`,

.. math::  \nabla_x f(z, x) + \lambda\big(\nabla_x g(z, x) - \nabla_x g(y, x)\big),

tends to :math:`\nabla F(x)` as :math:`\lambda\to\infty` (bias :math:`O(1/\lambda)`, Kwon et al. Lemma 3.1).
Each iteration runs ``n_inner_steps`` SGD steps on :math:`z` (loss :math:`f + \lambda g`) and on
:math:`y` (loss :math:`g`), then one step on :math:`x` and grows :math:`\lambda \leftarrow \lambda + \delta_t`.
benchopt's schedules (from the paper's Thm. 1): :math:`\alpha^z_t = c/(t+1)^{5/7}`,
:math:`\alpha^y_t = c/(t+1)^{4/7}`, :math:`\beta_t = c/(r(t+1)^{4/7})`, :math:`\delta_t = \delta_0/(t+1)^{1/7}`.
The two :math:`\nabla_x g` of the :math:`x` direction use independent batches (benchopt's choice);
``common_batch=True`` evaluates them on the same batch, which removes the noise term
:math:`\lambda(\nabla_x g(\cdot;\xi) - \nabla_x g(\cdot;\xi'))` that otherwise grows with :math:`\lambda`
(common random numbers; the estimate stays unbiased).
``aux["y"]`` is the approximation of :math:`z^\star(x)`; ``inner`` is the penalized :math:`z`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from bilevel.stochastic import oracles as O
from bilevel.stochastic.sampling import GRAD_INNER, GRAD_OUTER, draw_inner, draw_outer, tally
from bilevel.stochastic.solvers.base import StochasticSolver, schedule

__all__ = ["F2SA"]


@dataclasses.dataclass(frozen=True)
class F2SA(StochasticSolver):
    """F2SA: first-order penalty method with a growing multiplier."""

    step_size: float = 0.01
    outer_ratio: float = 1.0
    lmbda0: float = 1.0
    delta_lmbda: float = 0.1
    n_inner_steps: int = 10
    common_batch: bool = False
    batch_size: int | None = 64
    sampling: str = "shuffle"

    _positive = ("step_size", "outer_ratio", "lmbda0")
    _nonnegative = ("delta_lmbda",)
    _counts = ("n_inner_steps",)

    def _init_aux(self, problem, inner0, outer0, tape):
        return {"y": inner0, "lmbda": jnp.asarray(self.lmbda0, jnp.float32)}, tape

    def step(self, problem, state):
        bt, x, t = self.batching, state.outer, state.step
        lam = state.aux["lmbda"]
        lr_z = schedule(self.step_size, 5.0 / 7.0, t)
        lr_y = schedule(self.step_size, 4.0 / 7.0, t)

        def body(_, carry):
            z, y, tape = carry
            b1, _, tape = draw_inner(problem, bt, tape)
            b2, _, tape = draw_inner(problem, bt, tape)
            bo, _, tape = draw_outer(problem, bt, tape)
            dz = O.taxpy(lam, O.grad_inner(problem, z, x, b1), O.grads_outer(problem, z, x, bo)[0])
            z = O.taxpy(-lr_z, dz, z)
            y = O.taxpy(-lr_y, O.grad_inner(problem, y, x, b2), y)
            return z, y, tally(tally(tape, bt, GRAD_INNER, 2), bt, GRAD_OUTER)

        z, y, tape = jax.lax.fori_loop(0, self.n_inner_steps, body, (state.inner, state.aux["y"], state.tape))
        bo, _, tape = draw_outer(problem, bt, tape)
        b1, _, tape = draw_inner(problem, bt, tape)
        if self.common_batch:
            b2 = b1
        else:
            b2, _, tape = draw_inner(problem, bt, tape)
        gap = O.tsub(O.grad_inner_outer_var(problem, z, x, b1), O.grad_inner_outer_var(problem, y, x, b2))
        d = O.taxpy(lam, gap, O.grads_outer(problem, z, x, bo)[1])
        tape = tally(tally(tape, bt, GRAD_INNER, 2), bt, GRAD_OUTER)
        x = O.taxpy(-self._outer_lr(4.0 / 7.0, t), d, x)
        lam = lam + schedule(self.delta_lmbda, 1.0 / 7.0, t)
        return self._next(state, z, x, {"y": y, "lmbda": lam}, tape)
