r"""LASSO and elastic net as victims: the fixed point of the proximal-gradient map.

:math:`\min_{w,b} \frac{1}{2\sum s}\sum_i s_i (x_i^\top w + b - y_i)^2 + \text{reg}\,\big(\rho\|w\|_1 +
\frac{1-\rho}{2}\|w\|^2\big)` (scikit-learn's ``alpha = reg``, ``l1_ratio = rho``; intercept free). The
minimizer is the fixed point of the ISTA map

.. math::  T(\theta) = \mathrm{prox}_{t\,\text{reg}\,\rho\|\cdot\|_1}\big(\theta - t\nabla f(\theta)\big),
           \qquad t = 1/L,

found by FISTA (plus a few plain ISTA steps that land exactly on the support) and differentiated by
:func:`bilevel.fixed_point_solve`: the soft-threshold's derivative is 0 on the zero coordinates, so this
is the exact derivative of the non-smooth problem on its support, without smoothing (the victims of
Jagielski et al. 2018).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from bilevel import LU, ImplicitConfig, fixed_point_solve
from poisoning.victims.base import Victim, normalized_weights
from poisoning.victims.linear import _linear_scores

__all__ = ["lasso", "elastic_net"]


def _soft(u, k):
    return jnp.sign(u) * jnp.maximum(jnp.abs(u) - k, 0.0)


@functools.lru_cache(maxsize=None)
def elastic_net(reg: float = 1e-3, l1_ratio: float = 0.5, *, maxiter: int = 20000, tol: float = 1e-12) -> Victim:
    """Elastic net (``l1_ratio = 1``: LASSO) by FISTA to a sup-norm step below ``tol`` (at most ``maxiter``
    iterations), differentiated at the fixed point of the ISTA map. Real targets."""
    reg, rho = float(reg), float(l1_ratio)
    if reg < 0 or not 0.0 <= rho <= 1.0:
        raise ValueError(f"need reg >= 0 and 0 <= l1_ratio <= 1, got {reg}, {rho}")
    maxiter, tol = int(maxiter), float(tol)

    def parts(X, sw):
        n = X.shape[0]
        l2 = reg * (1.0 - rho)
        Xa = jnp.concatenate([X, jnp.ones((n, 1), X.dtype)], axis=1)
        lip = jnp.linalg.eigvalsh((Xa * sw[:, None]).T @ Xa / n)[-1] + l2
        return jax.lax.stop_gradient(1.0 / lip), l2, reg * rho

    def prox_map(theta, X, y, sw):
        step, l2, l1 = parts(X, sw)
        w, b = theta[:-1], theta[-1]
        r = sw * (X @ w + b - y)
        gw = X.T @ r / X.shape[0] + l2 * w
        gb = jnp.mean(r)
        return jnp.concatenate([_soft(w - step * gw, step * l1), (b - step * gb)[None]])

    def fista(theta0, X, y, sw):  # never differentiated (the fixed point is)
        def cond(s):
            _, _, _, k, delta = s
            return (k < maxiter) & (delta > tol)

        def body(s):
            x, z, t, k, _ = s
            x_new = prox_map(z, X, y, sw)
            t_new = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
            z_new = x_new + ((t - 1.0) / t_new) * (x_new - x)
            return x_new, z_new, t_new, k + 1, jnp.max(jnp.abs(x_new - x))

        s0 = (theta0, theta0, jnp.asarray(1.0, X.dtype), 0, jnp.asarray(jnp.inf, X.dtype))
        x, *_ = jax.lax.while_loop(cond, body, s0)
        return jax.lax.fori_loop(0, 50, lambda _, v: prox_map(v, X, y, sw), x)

    def fit(X, y, weights, warm_start):
        n, d = X.shape
        sw = normalized_weights(weights, n, X.dtype)
        theta0 = (jnp.zeros((d + 1,), X.dtype) if warm_start is None
                  else jnp.concatenate([warm_start["w"], jnp.reshape(warm_start["b"], (1,))]).astype(X.dtype))
        theta = fixed_point_solve(prox_map, fista, jax.lax.stop_gradient(theta0), X, y, sw,
                                  config=ImplicitConfig(linear_solver=LU(), on_failure="ignore"))
        return {"w": theta[:-1], "b": theta[-1]}

    def per_example(params, X, y):
        return 0.5 * jnp.square(_linear_scores(params, X) - y)

    def init(n, d, dtype):
        return {"w": jnp.zeros((d,), dtype), "b": jnp.zeros((), dtype)}

    name = f"lasso(reg={reg:g})" if rho == 1.0 else f"elastic-net(reg={reg:g}, l1_ratio={rho:g})"
    return Victim(name=name, task="regression", n_classes=None, fit_fn=fit, decision_fn=_linear_scores,
                  loss_fn=per_example, init_fn=init, method="implicit")


def lasso(reg: float = 1e-3, *, maxiter: int = 20000, tol: float = 1e-12) -> Victim:
    """LASSO: :func:`elastic_net` with ``l1_ratio = 1``."""
    return elastic_net(reg, 1.0, maxiter=maxiter, tol=tol)
