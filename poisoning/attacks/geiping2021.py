r"""Witches' Brew (Geiping et al. 2021): gradient matching, poisons for networks trained from scratch.

The victim will train a network :math:`\theta` on a set that contains the poisons
:math:`x_i + \Delta_i` (correct labels :math:`y_i`). If the poisons' training gradient points where the
gradient of the *adversarial* loss of the target points, every training step on them also moves the
target toward the adversarial class. Geiping et al. align the two directions on a model trained on
clean data,

.. math::  \min_{\|\Delta\|_\infty \le \varepsilon}\; \mathcal B(\Delta) = 1 -
           \frac{\big\langle \nabla_\theta \ell(f_\theta(t), y^{adv}),\;
                 \sum_i \nabla_\theta \ell(f_\theta(A(x_i + \Delta_i)), y_i) \big\rangle}
                {\big\|\nabla_\theta \ell(f_\theta(t), y^{adv})\big\|\;
                 \big\|\sum_i \nabla_\theta \ell(f_\theta(A(x_i + \Delta_i)), y_i)\big\|}

(:func:`gradient_matching_loss`; :math:`A` a random differentiable augmentation drawn afresh at each
step, so the poisons survive the victim's augmentation; several crafting models: the losses are
averaged). The ascent is *signed Adam* (Adam on :math:`\mathrm{sign}\,\nabla_\Delta \mathcal B`),
``steps`` = 250 with the step size divided by 10 at 3/8, 5/8 and 5/6 of the run, projected onto the
:math:`\ell_\infty` ball and the pixel box; ``restarts`` independent random starts, the best
(lowest :math:`\mathcal B`) kept. The loop is one ``lax.scan`` per restart (a fresh augmentation key
per step, which the core's leader loop has no place for), and the whole attack is a pure function:
``jit`` it, ``vmap`` it over targets.

Defaults follow the paper's code: :math:`\varepsilon = 16/255`, a budget of 1 % of the training set
(the caller picks the poison indices, all of the adversarial class in the paper's single-class
threat model), 250 steps, 8 restarts, step size 0.025 in pixel units (``tau = 0.1`` of their code,
taken in the space of normalized inputs).

Reference: J. Geiping, L. Fowl, W. R. Huang, W. Czaja, G. Taylor, M. Moeller, T. Goldstein,
"Witches' Brew: industrial scale data poisoning via gradient matching", ICLR 2021.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["BrewConfig", "Brewed", "parameter_gradient", "gradient_matching_loss", "craft"]


@dataclasses.dataclass(frozen=True)
class BrewConfig:
    """Settings of :func:`craft` (a frozen, hashable dataclass).

    Attributes:
      eps: the l_inf radius (pixels in [0, 1]).
      steps: signed-Adam steps per restart; restarts: independent random starts (the best is kept).
      lr: Adam's step size in pixel units (a signed Adam step moves each pixel by about ``lr``); divided
        by 10 at 3/8, 5/8 and 5/6 of the steps (the paper code's schedule). The paper's code takes
        ``tau = 0.1`` in the normalized input space (pixels / std, std about 0.25 on CIFAR-10), which is
        0.025 in pixel units, the default.
      augment: a :class:`~poisoning.training.Augment` (or any ``augment(key, x)``) applied to the poisons
        inside the objective, or ``None``.
      lo, hi: the pixel range.
    """

    eps: float = 16 / 255
    steps: int = 250
    restarts: int = 8
    lr: float = 0.025
    augment: Any = None
    lo: float = 0.0
    hi: float = 1.0

    def __post_init__(self):
        if not (np.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"argument 'eps' must be a finite number > 0, got {self.eps!r}")
        for name in ("steps", "restarts"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"argument {name!r} must be an integer >= 1, got {v!r}")
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"argument 'lr' must be a finite number > 0, got {self.lr!r}")


class Brewed(NamedTuple):
    """Output of :func:`craft`: ``poisons`` (inside the budget), their ``loss`` (the best restart's final
    alignment loss), ``losses`` (every restart's), ``history`` (the best restart's loss per step)."""

    poisons: jax.Array
    loss: jax.Array
    losses: jax.Array
    history: jax.Array


def parameter_gradient(apply_fn: Callable, variables, x, y):
    r""":math:`\nabla_\theta \sum_i \ell(f_\theta(x_i), y_i)` (cross-entropy summed over the batch), a
    pytree shaped like ``variables["params"]``; differentiable in ``x`` (a second-order quantity).
    ``apply_fn(variables, x) -> logits`` (inference mode: BatchNorm uses its running statistics)."""

    def loss(params):
        logits = apply_fn({**variables, "params": params}, x)
        return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    return jax.grad(loss)(variables["params"])


def _cosine_distance(a, b):
    dot = sum(jnp.vdot(u, v) for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
    na = optax.tree_utils.tree_norm(a)
    nb = optax.tree_utils.tree_norm(b)
    return 1.0 - dot / (na * nb + jnp.finfo(jnp.result_type(dot)).tiny)


def gradient_matching_loss(apply_fn: Callable, variables, x_poison, y_poison, x_target, y_adv, *,
                           augment=None, key=None, target_grad=None):
    r""":math:`\mathcal B`: one minus the cosine between the target's adversarial-label gradient and the
    poisons' training gradient (module docstring). ``variables`` may be a tuple (an ensemble: the
    losses are averaged, with ``apply_fn`` a tuple too). ``target_grad``: the precomputed target
    gradient(s) (constant during crafting)."""
    if isinstance(variables, (tuple, list)):
        fns = apply_fn if isinstance(apply_fn, (tuple, list)) else (apply_fn,) * len(variables)
        tg = target_grad if target_grad is not None else (None,) * len(variables)
        losses = [gradient_matching_loss(f, v, x_poison, y_poison, x_target, y_adv, augment=augment, key=key,
                                         target_grad=g) for f, v, g in zip(fns, variables, tg)]
        return sum(losses) / len(losses)
    if augment is not None:
        if key is None:
            raise ValueError("argument 'key' is required with 'augment'")
        x_poison = augment(key, x_poison)
    if target_grad is None:
        target_grad = parameter_gradient(apply_fn, variables, x_target, y_adv)
    target_grad = jax.lax.stop_gradient(target_grad)
    return _cosine_distance(target_grad, parameter_gradient(apply_fn, variables, x_poison, y_poison))


def _schedule(cfg: BrewConfig):
    s = cfg.steps
    return optax.piecewise_constant_schedule(
        cfg.lr, {int(3 * s / 8): 0.1, int(5 * s / 8): 0.1, int(5 * s / 6): 0.1})


def craft(apply_fn: Callable, variables, bases, labels, x_target, y_adv, key, config: BrewConfig = BrewConfig(),
          *, init=None) -> Brewed:
    """Brew poisons from ``bases`` (their true ``labels``) so that training on them pushes ``x_target``
    (a batch of targets) toward ``y_adv``. ``variables``/``apply_fn`` may be tuples (an ensemble of
    crafting models). ``key`` draws the random starts and the augmentations; ``init`` (poisons, e.g. a
    previous run's) replaces the random starts. Pure (``jit``/``vmap``)."""
    bases = jnp.asarray(bases)
    x_target = jnp.asarray(x_target, bases.dtype)
    labels, y_adv = jnp.asarray(labels), jnp.asarray(y_adv)
    if labels.shape != bases.shape[:1]:
        raise ValueError(f"argument 'labels' must have shape {bases.shape[:1]}, got {labels.shape}")
    if x_target.ndim != bases.ndim or y_adv.shape != x_target.shape[:1]:
        raise ValueError(f"arguments 'x_target' (m, ...) and 'y_adv' (m,) must describe a batch of targets, got "
                         f"{x_target.shape} and {y_adv.shape}")
    cfg = config
    eps = jnp.asarray(cfg.eps, bases.dtype)
    members = tuple(variables) if isinstance(variables, (tuple, list)) else (variables,)
    fns = tuple(apply_fn) if isinstance(apply_fn, (tuple, list)) else (apply_fn,) * len(members)
    target_grads = tuple(parameter_gradient(f, v, x_target, y_adv) for f, v in zip(fns, members))
    opt = optax.adam(_schedule(cfg))

    def project(delta):
        delta = jnp.clip(delta, -eps, eps)
        return jnp.clip(bases + delta, cfg.lo, cfg.hi) - bases

    def objective(delta, k):
        return gradient_matching_loss(fns, members, bases + delta, labels, x_target, y_adv, augment=cfg.augment,
                                      key=k, target_grad=target_grads)

    def one_restart(rkey):
        if init is None:
            delta0 = project(jax.random.uniform(rkey, bases.shape, bases.dtype, -1.0, 1.0) * eps)
        else:
            delta0 = project(jnp.asarray(init, bases.dtype) - bases)

        def step(carry, t):
            delta, opt_state = carry
            val, g = jax.value_and_grad(objective)(delta, jax.random.fold_in(rkey, t))
            upd, opt_state = opt.update(jnp.sign(g), opt_state, delta)
            return (project(delta + upd), opt_state), val

        (delta, _), hist = jax.lax.scan(step, (delta0, opt.init(delta0)), jnp.arange(cfg.steps))
        final = objective(delta, jax.random.fold_in(rkey, cfg.steps))
        return delta, final, hist

    deltas, finals, hists = jax.lax.map(one_restart, jax.random.split(key, cfg.restarts))
    best = jnp.argmin(finals)
    return Brewed(poisons=bases + deltas[best], loss=finals[best], losses=finals, history=hists[best])
