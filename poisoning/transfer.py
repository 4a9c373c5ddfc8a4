r"""Clean-label poisoning of transfer learning: poisons crafted in the feature space of a frozen network.

The attacker holds a feature extractor :math:`\phi` (the victim's pretrained network, a network of the
same architecture, or an ensemble), a *target* image :math:`t` it wants classified as the *base*
class, and :math:`k` base images :math:`b_j` of that class that will enter the victim's fine-tuning set
with their correct labels. It moves the bases inside an :math:`\ell_\infty` ball,

.. math::  \min_{x \in \Phi}\; L\big(\phi(x_1), \dots, \phi(x_k);\, \phi(t);\, c^\star\big), \qquad
           \Phi = \{x : \|x_j - b_j\|_\infty \le \varepsilon,\ 0 \le x \le 1\},

where :math:`c^\star = c^\star(\phi(x), \phi(t))` is the solution of an optional inner problem posed on
the features (the convex-polytope coefficients of Zhu et al. 2019). That is a bilevel problem, and it
is solved by the core: :func:`bilevel.stackelberg.solve_stackelberg` (the leader loop of every attack
here), the inner problem a :class:`~bilevel.stackelberg.ResponseFollower` warm-started across steps,
the step rule any optax transformation (Adam for CP and BP, forward-backward splitting for FC), the
projection onto :math:`\Phi` a function of each problem's own bases. :meth:`FeatureSpaceAttack.craft`
is a pure function of arrays: ``jit`` it, ``vmap`` it over trials, shard it
(:func:`poisoning.trials.map_trials`).

``features`` may return one ``(n, d)`` array or a tuple of them (several layers of one network,
or an ensemble of networks): the loss is summed over the members, each with its own inner problem
(the multi-layer and ensemble variants of FC, CP and BP).

The published attacks are small modules built on this one: :mod:`poisoning.attacks.shafahi2018`
(feature collision), :mod:`poisoning.attacks.zhu2019` (convex polytope),
:mod:`poisoning.attacks.aghakhani2021` (bullseye polytope). :func:`frozen_head_predictions` and
:func:`finetune_predictions` are the victims of the benchmark of Schwarzschild et al. (2021): a convex
head retrained on frozen features, or the whole network fine-tuned.

References
----------
- A. Shafahi et al., "Poison Frogs! Targeted clean-label poisoning attacks on neural networks",
  NeurIPS 2018.
- C. Zhu et al., "Transferable clean-label poisoning attacks on deep neural nets", ICML 2019.
- H. Aghakhani et al., "Bullseye Polytope: a scalable clean-label poisoning attack with improved
  transferability", EuroS&P 2021.
- A. Schwarzschild et al., "Just how toxic is data poisoning? A unified benchmark for backdoor and
  data poisoning attacks", ICML 2021.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bilevel.stackelberg import ResponseFollower, StackelbergConfig, StackelbergSolver

__all__ = ["FeatureSpaceAttack", "Crafted", "feature_members", "frozen_head_predictions", "finetune_predictions"]


def feature_members(feats) -> tuple:
    """The members of a feature map's output: ``(F,)`` for one ``(n, d)`` array, the tuple itself for
    several (layers or ensemble members)."""
    members = tuple(feats) if isinstance(feats, (tuple, list)) else (feats,)
    for i, F in enumerate(members):
        if F.ndim != 2:
            raise ValueError(f"argument 'features' must return (n, d) arrays (or a tuple of them); member {i} "
                             f"has shape {F.shape}")
    return members


class Crafted(NamedTuple):
    """Output of :meth:`FeatureSpaceAttack.craft` (every field gets a leading axis under ``vmap``).

    Attributes:
      poisons: the crafted images, shaped like the bases, inside the feasible set.
      loss: the attack loss at ``poisons`` (the best iterate); loss_start: at the bases.
      response: the inner problem's solution at ``poisons`` (``()`` without one), e.g. CP's coefficients.
      history: the loss at every evaluated iterate (``steps + 1`` entries; NaN after an early stop).
      n_steps: steps taken.
    """

    poisons: jax.Array
    loss: jax.Array
    loss_start: jax.Array
    response: Any
    history: jax.Array
    n_steps: jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureSpaceAttack:
    r"""A feature-space attack: ``loss`` + an optional inner problem + the :math:`\ell_\infty` set + a step rule.

    Attributes:
      loss: ``loss(F_poison (k, d), f_target (d,), response) -> scalar`` to **minimize**, for one member
        of the feature map (summed over members).
      respond: the inner problem, ``respond(F_poison, f_target, warm) -> response`` (differentiable in
        ``F_poison``, e.g. through :func:`bilevel.fixed_point_solve`), or ``None``.
      respond_init: ``respond_init(k, dtype) -> warm`` (the first warm start), required with ``respond``.
      eps: the :math:`\ell_\infty` radius around each base image (pixels in [0, 1]; ``8/255`` in the
        benchmark of Schwarzschild et al.).
      step: an optax transformation (or a step rule of :mod:`bilevel.stackelberg.steps`).
      steps: leader steps.
      lo, hi: the pixel range.
      name: a label for reports.
    """

    loss: Callable
    respond: Callable | None = None
    respond_init: Callable | None = None
    eps: float = 8 / 255
    step: Any = dataclasses.field(default_factory=lambda: optax.adam(0.01))
    steps: int = 200
    lo: float = 0.0
    hi: float = 1.0
    name: str = "feature-space"

    def __post_init__(self):
        if not callable(self.loss):
            raise ValueError("argument 'loss' must be callable: loss(F_poison, f_target, response) -> scalar")
        if self.respond is not None and not callable(self.respond_init):
            raise ValueError("argument 'respond_init' must be callable when 'respond' is given")
        if not (np.isfinite(self.eps) and self.eps >= 0):
            raise ValueError(f"argument 'eps' must be a finite number >= 0, got {self.eps!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, (int, np.integer)) or self.steps < 0:
            raise ValueError(f"argument 'steps' must be an integer >= 0, got {self.steps!r}")
        if not self.lo < self.hi:
            raise ValueError(f"arguments 'lo' < 'hi' required, got lo={self.lo!r}, hi={self.hi!r}")

    # -- the pieces of the leader loop ------------------------------------------------------------
    def project(self, x, bases):
        r""":math:`P_\Phi(x)`: clip to :math:`[b - \varepsilon, b + \varepsilon] \cap [lo, hi]` (a product of
        intervals, so clipping twice is the exact Euclidean projection)."""
        eps = jnp.asarray(self.eps, x.dtype)
        x = jnp.clip(x, bases - eps, bases + eps)
        return jnp.clip(x, jnp.asarray(self.lo, x.dtype), jnp.asarray(self.hi, x.dtype))

    def _members(self, features, x, target):
        both = jnp.concatenate([x, target[None]], axis=0)
        return [(F[:-1], F[-1]) for F in feature_members(features(both))]

    def objective(self, features, x, target, response=None):
        """The attack loss at poisons ``x`` (summed over the members of ``features``); ``response``: the
        inner problem's solution per member (``Crafted.response``)."""
        members = self._members(features, x, target)
        responses = [()] * len(members) if response is None else response
        return sum(self.loss(Fp, ft, r) for (Fp, ft), r in zip(members, responses))

    def _solver(self, features):
        attack = self

        # The follower's response per member is (F_poison, f_target, inner solution): the features are
        # computed once per step, by the response, and the leader objective reads them from it (the
        # hypergradient flows through the response). The warm start is the previous response.
        def respond(x, warm, bases, target):
            out = []
            for (Fp, ft), w in zip(attack._members(features, x, target), warm):
                out.append((Fp, ft, () if attack.respond is None else attack.respond(Fp, ft, w[2])))
            return tuple(out)

        def leader_objective(x, response, bases, target):
            return sum(attack.loss(Fp, ft, r) for Fp, ft, r in response)

        config = StackelbergConfig(
            leader_optimizer=self.step, projection=lambda x, bases, target: self.project(x, bases),
            projection_uses_args=True, maximize=False, steps=int(self.steps), tol=None, gain_tol=None,
            return_best=True)
        return StackelbergSolver(leader_objective, ResponseFollower(respond), config)

    def craft(self, features: Callable, bases, target, start=None) -> Crafted:
        """Craft poisons from ``bases`` ``(k, ...)`` against ``target`` ``(...)`` (one image).

        Args:
          features: ``x (n, ...) -> (n, d)`` (or a tuple of such arrays), pure and differentiable.
          start: the first iterate (default: the bases; FC's watermarked bases, say); projected.

        Pure: ``jax.jit(lambda b, t: attack.craft(phi, b, t))`` and ``jax.vmap`` over trials work.
        """
        bases = jnp.asarray(bases)
        target = jnp.asarray(target, bases.dtype)
        if bases.ndim < 2 or target.shape != bases.shape[1:]:
            raise ValueError(f"arguments 'bases' (k, ...) and 'target' (...) must share the image shape, got "
                             f"{bases.shape} and {target.shape}")
        k = bases.shape[0]
        start = bases if start is None else jnp.asarray(start, bases.dtype)
        if start.shape != bases.shape:
            raise ValueError(f"argument 'start' must be shaped like 'bases' {bases.shape}, got {start.shape}")
        shapes = jax.eval_shape(lambda x: self._members(features, x, target), bases)
        warm = tuple((jnp.zeros(Fp.shape, Fp.dtype), jnp.zeros(ft.shape, ft.dtype),
                      () if self.respond is None else self.respond_init(k, bases.dtype)) for Fp, ft in shapes)
        solver = self._solver(features)
        res = solver.run(start, warm, bases, target)
        loss_start = res.history.objective[0]  # the first iterate: the projected start
        response = () if self.respond is None else tuple(r for _, _, r in res.follower)
        hist = jnp.where(res.history.active, res.history.objective, jnp.nan)
        return Crafted(poisons=res.leader, loss=res.objective, loss_start=loss_start, response=response,
                       history=hist, n_steps=res.n_iterates - 1)


# ----------------------------------------------------------------------------------------------------
# the victims of the transfer benchmark
# ----------------------------------------------------------------------------------------------------
def frozen_head_predictions(F_train, y_train, F_eval, num_classes: int, *, reg: float = 1e-3, solver=None):
    """Labels predicted for ``F_eval`` by the multinomial logistic head trained on frozen features
    ``(F_train, y_train)`` (:func:`poisoning.training.fit_linear_head`: a convex problem solved by
    L-BFGS). Pure: ``vmap`` it over poisoned copies of the training features."""
    from poisoning.training import fit_linear_head

    head = fit_linear_head(F_train, y_train, num_classes, reg=reg, solver=solver)
    return jnp.argmax(F_eval @ head["w"] + head["b"], axis=-1)


def finetune_predictions(model, state, data, x_eval, config, key, *, new_head: bool = True):
    """Labels predicted for ``x_eval`` by ``model`` fine-tuned end to end on ``data`` (``config``'s
    ``trainable``; :func:`poisoning.training.finetune`). Pure and ``vmap``-able over ``data``/``key``."""
    from poisoning.training import finetune
    from poisoning.training.state import variables

    tuned = finetune(model, state, data, config, key, new_head=new_head)
    logits = model.apply(variables(tuned), x_eval, train=False)
    return jnp.argmax(logits, axis=-1)
