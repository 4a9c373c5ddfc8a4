r"""MetaPoison (Huang et al. 2020): poisons crafted through unrolled training steps of an ensemble.

Gradient matching (Witches' Brew) aligns first-order directions on one fixed model; MetaPoison instead
differentiates the attacker's goal *through* ``unroll`` = K steps of the victim's own training on a
batch that contains the poisons,

.. math::  \min_{\|\Delta\|_\infty \le \varepsilon}\; \frac1M \sum_{m=1}^M
           \ell\big(f_{\theta_m^{(K)}(\Delta)}(t), y^{adv}\big), \qquad
           \theta_m^{(k+1)} = \mathrm{step}\big(\theta_m^{(k)};\, \{x_i + \Delta_i, y_i\} \cup B_k\big),

over an ensemble of M models caught at *staggered* stages of training (so the poisons work whatever
stage the victim's network is in when it meets them), with :math:`B_k` clean mini-batches. After each
crafting step every member of the ensemble takes one ordinary training step on poisoned data, so the
ensemble keeps moving along the training trajectory, as in the paper. The step is
:func:`poisoning.training.train_step` (the engine's own, differentiable in the images, augmentation
included); the ascent is Adam on :math:`\Delta`, projected onto the ball and the pixel box.

Reference: W. R. Huang, J. Geiping, L. Fowl, G. Taylor, T. Goldstein, "MetaPoison: practical
general-purpose clean-label data poisoning", NeurIPS 2020 (K = 2, M = 24, 60 steps; about 90 %
success at 1 % poisons on CIFAR-10 from scratch in their Fig. 4, eps 8/255 with ReColorAdv, which we
do not use).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["MetaConfig", "MetaPoisoned", "adversarial_loss", "craft"]


@dataclasses.dataclass(frozen=True)
class MetaConfig:
    """Settings of :func:`craft`: ``eps`` (l_inf radius), ``steps`` (crafting steps), ``unroll`` (K),
    ``lr`` (Adam's step size, pixel units), ``clean_batch`` (clean images beside the poisons in each
    unrolled step), ``advance`` (whether the ensemble trains one step on poisoned data after each
    crafting step)."""

    eps: float = 16 / 255
    steps: int = 60
    unroll: int = 2
    lr: float = 0.01
    clean_batch: int = 32
    advance: bool = True

    def __post_init__(self):
        if not (np.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"argument 'eps' must be a finite number > 0, got {self.eps!r}")
        for name in ("steps", "unroll", "clean_batch"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"argument {name!r} must be an int >= 1, got {v!r}")
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"argument 'lr' must be a finite number > 0, got {self.lr!r}")


class MetaPoisoned(NamedTuple):
    """Output of :func:`craft`: the poisons and the adversarial loss per crafting step."""

    poisons: jax.Array
    history: jax.Array


def _one_member(model, train_config, state, poisons, labels, clean_x, clean_y, x_target, y_adv, key):
    from poisoning.training import train_step, variables

    for k in range(clean_x.shape[0]):
        batch = (jnp.concatenate([poisons, clean_x[k]]), jnp.concatenate([labels, clean_y[k]]))
        state, _ = train_step(model, state, batch, jax.random.fold_in(key, k), train_config)
    logits = model.apply(variables(state), x_target, train=False)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y_adv))


def adversarial_loss(model, train_config, states, poisons, labels, clean_x, clean_y, x_target, y_adv, key):
    r"""The ensemble's mean adversarial loss after K unrolled training steps (module docstring).

    ``states``: a :class:`~poisoning.training.TrainState` whose leaves are stacked over the M members;
    ``clean_x``/``clean_y``: ``(K, b, ...)`` clean mini-batches (one per unrolled step). Differentiable
    in ``poisons`` (the gradient passes through every unrolled step). Members run one after the other
    (``lax.map``)."""
    keys = jax.random.split(key, jax.tree_util.tree_leaves(states)[0].shape[0])
    losses = jax.lax.map(lambda sk: _one_member(model, train_config, sk[0], poisons, labels, clean_x, clean_y,
                                                x_target, y_adv, sk[1]), (states, keys))
    return jnp.mean(losses)


def craft(model, train_config, states, bases, labels, clean, x_target, y_adv, key,
          config: MetaConfig = MetaConfig()) -> tuple[MetaPoisoned, object]:
    """MetaPoison poisons from ``bases`` (true ``labels``) against the ensemble ``states`` (stacked),
    with ``clean = (x, y)`` the clean training data the unrolled steps and the ensemble's own steps draw
    mini-batches from. Returns ``(MetaPoisoned, states)`` (the ensemble after its advance steps)."""
    from poisoning.training import train_step

    bases = jnp.asarray(bases)
    labels, y_adv = jnp.asarray(labels), jnp.asarray(y_adv)
    x_target = jnp.asarray(x_target, bases.dtype)
    if labels.shape != bases.shape[:1]:
        raise ValueError(f"argument 'labels' must have shape {bases.shape[:1]}, got {labels.shape}")
    if y_adv.shape != x_target.shape[:1]:
        raise ValueError(f"arguments 'x_target' {x_target.shape} and 'y_adv' {y_adv.shape} disagree")
    cx, cy = (jnp.asarray(a) for a in clean)
    n = cx.shape[0]
    if n < config.clean_batch:
        raise ValueError(f"argument 'clean' has {n} images, fewer than config.clean_batch={config.clean_batch}")
    eps = jnp.asarray(config.eps, bases.dtype)
    opt = optax.adam(config.lr)

    def project(d):
        return jnp.clip(bases + jnp.clip(d, -eps, eps), 0.0, 1.0) - bases

    def draw(k, m):
        idx = jax.random.randint(k, (m, config.clean_batch), 0, n)
        return cx[idx], cy[idx]

    def step(carry, t):
        delta, opt_state, states = carry
        k_batch, k_loss, k_adv, k_adv_batch = jax.random.split(jax.random.fold_in(key, t), 4)
        bx, by = draw(k_batch, config.unroll)
        val, g = jax.value_and_grad(lambda d: adversarial_loss(
            model, train_config, states, bases + d, labels, bx, by, x_target, y_adv, k_loss))(delta)
        upd, opt_state = opt.update(g, opt_state, delta)
        delta = project(delta + upd)
        if config.advance:
            ax, ay = draw(k_adv_batch, 1)
            batch = (jnp.concatenate([bases + delta, ax[0]]), jnp.concatenate([labels, ay[0]]))
            members = jax.tree_util.tree_leaves(states)[0].shape[0]
            states = jax.lax.map(lambda sk: train_step(model, sk[0], batch, sk[1], train_config)[0],
                                 (states, jax.random.split(k_adv, members)))
        return (delta, opt_state, states), val

    delta0 = jnp.zeros_like(bases)
    (delta, _, states), hist = jax.lax.scan(step, (delta0, opt.init(delta0), states), jnp.arange(config.steps))
    return MetaPoisoned(poisons=bases + delta, history=hist), states
