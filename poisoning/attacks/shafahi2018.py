r"""Feature collision, "Poison Frogs" (Shafahi et al. 2018): a clean-label poison whose features sit
on the target's.

Each poison starts from a base image :math:`b` of the class the target should be mistaken for and
solves

.. math::  x^\star = \arg\min_x\; \|\phi(x) - \phi(t)\|_2^2 + \beta \|x - b\|_2^2 ,
           \qquad \beta = \beta_0 \cdot 2048^2 / \dim(b)^2 \quad (\beta_0 = 0.25),

by forward-backward splitting (the paper's Algorithm 1): a forward (gradient) step on the collision
term, then the backward (proximal) step of the anchor term,
:math:`x \leftarrow (\hat x + \lambda\beta\, b) / (1 + \lambda\beta)` — :func:`proximal_pull`, an optax
transformation, so the whole attack is one :class:`~poisoning.transfer.FeatureSpaceAttack` driven by the
core's leader loop. With the benchmark's budget (Schwarzschild et al. 2021) every iterate is also
projected onto the :math:`\ell_\infty` ball of radius :math:`\varepsilon` around the base.

For end-to-end fine-tuning the paper *watermarks* the target into the base first,
:math:`b \leftarrow (1-\gamma) b + \gamma t` with opacity :math:`\gamma \in [0.2, 0.3]`
(:func:`watermark`), and the poison starts and is anchored there. The collision term of several
feature extractors (an ensemble, or several layers) is summed: pass a ``features`` returning a tuple.

Here the forward step is an optax transformation (Adam by default, so one learning rate fits every
feature scale; ``forward=optax.sgd(lr)`` is the paper's plain gradient step), and
:math:`\lambda\beta` is the ``prox`` strength (default ``lr * beta``).

Reference: A. Shafahi, W. R. Huang, M. Najibi, O. Suciu, C. Studer, T. Dumitras, T. Goldstein,
"Poison Frogs! Targeted clean-label poisoning attacks on neural networks", NeurIPS 2018.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from poisoning.transfer import Crafted, FeatureSpaceAttack

__all__ = ["collision_loss", "proximal_pull", "watermark", "attack", "craft", "default_beta"]


def collision_loss(F_poison, f_target, response=()):
    r""":math:`\sum_j \|\phi(x_j) - \phi(t)\|_2^2` (each poison collides with the target on its own)."""
    return jnp.sum(jnp.square(F_poison - f_target[None, :]))


class _Anchor(NamedTuple):
    anchor: Any


def proximal_pull(strength: float) -> optax.GradientTransformation:
    r"""The backward step of forward-backward splitting for :math:`\beta\|x - b\|^2`: after an update
    :math:`u` (the forward step), the iterate moves to :math:`z = (x + u + s\,b)/(1 + s)` with
    :math:`s = \lambda\beta` = ``strength``; the anchor :math:`b` is the first iterate (recorded by
    ``init``). Chain it after the forward step: ``optax.chain(optax.adam(lr), proximal_pull(s))``."""
    s = float(strength)
    if not np.isfinite(s) or s < 0:
        raise ValueError(f"argument 'strength' must be a finite number >= 0, got {strength!r}")

    def init(params):
        return _Anchor(jax.tree_util.tree_map(jnp.asarray, params))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("proximal_pull needs the current iterate: call update(updates, state, params)")

        def pull(u, x, b):
            return ((x + u + s * b) / (1.0 + s) - x).astype(u.dtype)

        return jax.tree_util.tree_map(pull, updates, params, state.anchor), state

    return optax.GradientTransformation(init, update)


def watermark(bases, target, opacity: float):
    r""":math:`(1-\gamma)\,b + \gamma\,t` for every base (``opacity`` :math:`\gamma \in [0, 1]`)."""
    g = float(opacity)
    if not 0.0 <= g <= 1.0:
        raise ValueError(f"argument 'opacity' must be in [0, 1], got {opacity!r}")
    bases = jnp.asarray(bases)
    return (1.0 - g) * bases + g * jnp.asarray(target, bases.dtype)[None]


def default_beta(input_dim: int, beta0: float = 0.25, feature_dim: int = 2048) -> float:
    r"""The paper's :math:`\beta = \beta_0 \cdot 2048^2 / \dim(b)^2`."""
    return float(beta0) * float(feature_dim) ** 2 / float(input_dim) ** 2


def attack(*, input_dim: int, eps: float = 8 / 255, lr: float = 0.01, steps: int = 200, beta0: float = 0.25,
           prox: float | None = None, forward: optax.GradientTransformation | None = None) -> FeatureSpaceAttack:
    """Feature collision as a :class:`~poisoning.transfer.FeatureSpaceAttack` (module docstring).

    Args:
      input_dim: the number of pixels of one image (for :func:`default_beta`).
      eps: the l_inf budget around each base (``None``-like ``1.0``: unconstrained, the paper's setting).
      lr: the forward step's learning rate; forward: its optax transformation (default Adam(lr)).
      prox: the backward step's strength (default ``lr * beta``).
    """
    beta = default_beta(input_dim, beta0)
    s = lr * beta if prox is None else prox
    fwd = optax.adam(lr) if forward is None else forward
    return FeatureSpaceAttack(loss=collision_loss, eps=eps, step=optax.chain(fwd, proximal_pull(s)),
                              steps=steps, name="feature-collision")


def craft(features: Callable, bases, target, *, opacity: float = 0.0, **kw) -> Crafted:
    """Craft one poison per base against ``target`` (``opacity`` > 0: watermark the target in first;
    the ``eps`` ball is then around the watermarked base, as in the paper's end-to-end setting).
    ``kw`` go to :func:`attack`. Pure: ``jit`` / ``vmap`` over (bases, target)."""
    bases = jnp.asarray(bases)
    a = attack(input_dim=int(np.prod(bases.shape[1:])), **kw)
    start = watermark(bases, target, opacity) if opacity > 0 else bases
    return a.craft(features, start, target)
