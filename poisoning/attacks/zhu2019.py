r"""Convex Polytope (Zhu et al. 2019): poisons whose features surround the target's.

If the target's feature :math:`\phi(t)` lies in the convex hull of the poisons' features, every linear
classifier that puts all poisons in their (correct, base) class puts the target there too. The attack

.. math::  \min_{x \in \Phi}\; \frac{\tfrac12 \|\phi(t) - \sum_j c^\star_j \phi(x_j)\|^2}{\|\phi(t)\|^2},
           \qquad c^\star(x) = \arg\min_{c \in \Delta_k} \tfrac12 \Big\|\phi(t) - \sum_j c_j \phi(x_j)\Big\|^2

is a bilevel problem: the coefficients are an inner problem on the simplex, solved here by FISTA
(accelerated projected gradient, warm-started at the previous step's coefficients) and differentiated
by the implicit function theorem on the projected-gradient fixed point
:math:`c = P_\Delta(c - \eta \nabla_c)` (:func:`bilevel.fixed_point_solve`); the poisons move by Adam
inside the :math:`\ell_\infty` ball (:class:`~poisoning.transfer.FeatureSpaceAttack`). Several layers
or an ensemble of networks: a ``features`` returning a tuple, one polytope per member (the paper's
multi-layer, multi-network variant), losses summed.

Reference: C. Zhu, W. R. Huang, A. Shafahi, H. Li, G. Taylor, C. Studer, T. Goldstein,
"Transferable clean-label poisoning attacks on deep neural nets", ICML 2019.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from bilevel import LU, ImplicitConfig, fixed_point_solve
from poisoning.transfer import Crafted, FeatureSpaceAttack

__all__ = ["polytope_loss", "polytope_coefficients", "attack", "craft"]


def polytope_loss(F_poison, f_target, coefficients):
    r""":math:`\tfrac12\|\phi(t) - F^\top c\|^2 / \|\phi(t)\|^2`."""
    resid = f_target - coefficients @ F_poison
    return 0.5 * jnp.sum(resid * resid) / jnp.sum(f_target * f_target)


def _simplex(v):
    r"""Euclidean projection onto :math:`\Delta_k` (sort-based, Held et al. 1974), in ``v``'s dtype
    (optax's ``projection_simplex`` promotes float32 to float64 under ``jax_enable_x64``)."""
    u = jnp.sort(v)[::-1]
    css = jnp.cumsum(u) - 1.0
    ind = jnp.arange(1, v.shape[0] + 1, dtype=v.dtype)
    rho = jnp.sum(u - css / ind > 0) - 1
    theta = css[rho] / (rho + 1).astype(v.dtype)
    return jnp.maximum(v - theta, 0.0)


def _pg_map(c, F, f):
    """One projected-gradient step of the simplex least squares with step 1 / ||F||_F^2 (<= 1/L)."""
    eta = 1.0 / (jnp.sum(F * F) + jnp.finfo(F.dtype).tiny)
    grad = F @ (c @ F - f)
    return _simplex(c - eta * grad)


def polytope_coefficients(F_poison, f_target, warm=None, *, iters: int = 200):
    r""":math:`c^\star = \arg\min_{c\in\Delta_k} \tfrac12\|f_t - F^\top c\|^2` by ``iters`` FISTA steps from
    ``warm`` (default uniform), differentiable in ``F_poison`` and ``f_target`` by implicit
    differentiation of the projected-gradient fixed point (a dense LU adjoint solve, ``k`` x ``k``)."""
    F = jnp.asarray(F_poison)
    k = F.shape[0]
    warm = jnp.full((k,), 1.0 / k, F.dtype) if warm is None else jnp.asarray(warm, F.dtype)

    def fista(c0, F, f):
        def body(_, s):
            c, z, t = s
            c_new = _pg_map(z, F, f)
            t_new = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
            return c_new, (c_new + ((t - 1.0) / t_new) * (c_new - c)).astype(F.dtype), t_new.astype(F.dtype)

        c, _, _ = jax.lax.fori_loop(0, iters, body, (c0, c0, jnp.asarray(1.0, F.dtype)))
        return c

    return fixed_point_solve(_pg_map, fista, jax.lax.stop_gradient(warm), F, jnp.asarray(f_target, F.dtype),
                             config=ImplicitConfig(linear_solver=LU(), on_failure="ignore"))


def attack(*, eps: float = 8 / 255, lr: float = 0.01, steps: int = 200, inner_iters: int = 200) -> FeatureSpaceAttack:
    """Convex Polytope as a :class:`~poisoning.transfer.FeatureSpaceAttack` (Adam on the poisons, the
    coefficients an inner problem warm-started across steps)."""
    return FeatureSpaceAttack(
        loss=polytope_loss,
        respond=lambda F, f, warm: polytope_coefficients(F, f, warm, iters=inner_iters),
        respond_init=lambda k, dtype: jnp.full((k,), 1.0 / k, dtype),
        eps=eps, step=optax.adam(lr), steps=steps, name="convex-polytope")


def craft(features: Callable, bases, target, **kw) -> Crafted:
    """Craft ``k`` poisons from ``bases`` around ``target``; ``kw`` go to :func:`attack`. Pure."""
    return attack(**kw).craft(features, bases, target)
