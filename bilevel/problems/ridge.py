r"""Ridge regression (L2-regularized least squares) as an inner problem.

Math
----
With data ``X`` of shape ``(n, d)``, targets ``y`` of shape ``(n,)`` (or ``(n, k)`` for ``k`` outputs),
optional sample weights ``s`` (``(n,)``; default all ones), parameters ``params = {"w", "b"}`` and an L2
weight ``reg`` (scalar or per-feature ``(d,)``):

.. math::

    L(w, b) = \frac{1}{n} \sum_{i=1}^n s_i \, \tfrac12 \lVert x_i^\top w + b - y_i \rVert^2
              + \tfrac12 \sum_{j=1}^d \mathrm{reg}_j\, \lVert w_j \rVert^2 .

The factor ``1/2`` on both terms makes the optimality condition the plain normal equations; the intercept
``b`` is not regularized. Weights multiply the per-example losses and the mean is still over ``n``
(no renormalization by ``sum(s)``). In terms of :class:`sklearn.linear_model.Ridge`, which minimizes
``sum_i s_i (y_i - x_i w - b)^2 + alpha ||w||^2``, the same minimizer is obtained with
``alpha = n * reg`` (scalar ``reg``).

Closed form (``fit_intercept=True``): with weighted means
``x̄ = Σ s_i x_i / Σ s_i``, ``ȳ = Σ s_i y_i / Σ s_i`` and centered ``X_c = X - x̄``, ``y_c = y - ȳ``,

.. math::

    \Big(\tfrac1n X_c^\top S X_c + \mathrm{diag}(\mathrm{reg})\Big) w = \tfrac1n X_c^\top S y_c,
    \qquad b = ȳ - x̄^\top w,

solved with :func:`jax.numpy.linalg.solve`, so the solution is differentiable in ``reg``, ``X``, ``y`` and
``weights`` by ordinary autodiff.

Reference: A. E. Hoerl and R. W. Kennard, "Ridge regression: biased estimation for nonorthogonal
problems", Technometrics 12(1), 1970; T. Hastie, R. Tibshirani, J. Friedman, *The Elements of
Statistical Learning*, 2nd ed., Sec. 3.4.1.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from bilevel.problems._common import (
    Params,
    check_linear_params,
    check_reg,
    check_targets,
    check_weights,
    check_X,
    init_linear_params,
    l2_penalty,
    linear_decision,
    weighted_mean,
)

__all__ = [
    "init_params",
    "ridge_init_params",
    "ridge_loss",
    "ridge_optimality",
    "ridge_closed_form",
    "ridge_predict",
    "ridge_mse",
]


def init_params(d: int, n_outputs: int | None = None, dtype=None) -> Params:
    """Zero parameters: ``{"w": (d,), "b": ()}``, or ``{"w": (d, k), "b": (k,)}`` for ``k = n_outputs``.

    ``dtype`` defaults to JAX's default float (float64 under ``jax_enable_x64``).
    """
    return init_linear_params(d, n_outputs, dtype)


ridge_init_params = init_params


def _validate(params, reg, X, y, weights):
    n, d = check_X(X)
    k = check_linear_params(params, d)
    check_reg(reg, d)
    check_targets(y, n, ndims=(1, 2), n_outputs=k)
    check_weights(weights, n)


@jax.jit
def _ridge_loss(params, reg, X, y, weights):
    r = linear_decision(params, X) - y
    per_example = 0.5 * (jnp.square(r) if r.ndim == 1 else jnp.sum(jnp.square(r), axis=-1))
    return weighted_mean(per_example, weights) + l2_penalty(params["w"], reg)


_ridge_grad = jax.jit(jax.grad(_ridge_loss))


def ridge_loss(params: Params, reg, X, y, weights=None) -> jax.Array:
    """``mean_i s_i * 0.5 * ||x_i w + b - y_i||^2 + 0.5 * sum(reg * w**2)`` (see module docstring)."""
    _validate(params, reg, X, y, weights)
    return _ridge_loss(params, reg, X, y, weights)


def ridge_optimality(params: Params, reg, X, y, weights=None) -> Params:
    """Optimality condition: the gradient of :func:`ridge_loss` w.r.t. ``params`` (zero at the solution).

    Same pytree structure as ``params``; suitable as an ``optimality_fun`` for implicit differentiation.
    """
    _validate(params, reg, X, y, weights)
    return _ridge_grad(params, reg, X, y, weights)


def ridge_closed_form(reg, X, y, weights=None, fit_intercept: bool = True) -> Params:
    """Exact minimizer of :func:`ridge_loss` by the (centered) normal equations.

    Args:
      reg: scalar or per-feature ``(d,)`` L2 weight (non-negative; with ``reg = 0`` the data must
        have full column rank).
      X: ``(n, d)`` inputs.
      y: ``(n,)`` or ``(n, k)`` targets.
      weights: optional ``(n,)`` sample weights (their sum must be non-zero when ``fit_intercept``).
      fit_intercept: if False, ``b`` is fixed to zero.

    Returns:
      ``{"w": (d,) or (d, k), "b": () or (k,)}``, differentiable w.r.t. ``reg``, ``X``, ``y``, ``weights``.
    """
    n, d = check_X(X)
    check_reg(reg, d)
    check_targets(y, n, ndims=(1, 2))
    check_weights(weights, n)

    return _ridge_closed_form(reg, X, y, weights, fit_intercept=bool(fit_intercept))


@partial(jax.jit, static_argnames="fit_intercept")
def _ridge_closed_form(reg, X, y, weights, fit_intercept):
    n, d = X.shape
    dtype = jnp.result_type(X, y, reg, *(() if weights is None else (weights,)))
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.zeros(()).dtype
    X, y, reg = X.astype(dtype), y.astype(dtype), reg.astype(dtype)
    s = jnp.ones((n,), dtype) if weights is None else weights.astype(dtype)

    if fit_intercept:
        sw = jnp.sum(s)
        x_mean = (s @ X) / sw
        y_mean = (s @ y) / sw
        Xc = X - x_mean
        yc = y - y_mean
    else:
        Xc, yc = X, y

    XtS = Xc.T * s  # (d, n)
    A = XtS @ Xc / n + jnp.diag(jnp.broadcast_to(reg, (d,)))
    rhs = XtS @ yc / n
    w = jnp.linalg.solve(A, rhs)
    if fit_intercept:
        b = y_mean - x_mean @ w
    else:
        b = jnp.zeros(y.shape[1:], dtype)
    return {"w": w, "b": b}


def ridge_predict(params: Params, X) -> jax.Array:
    """Predictions ``X @ w + b`` of shape ``(n,)`` or ``(n, k)``."""
    _, d = check_X(X)
    check_linear_params(params, d)
    return _linear_decision(params, X)


def ridge_mse(params: Params, X, y) -> jax.Array:
    """Mean squared error ``mean((X @ w + b - y)**2)`` over all entries (no 1/2 factor, no penalty)."""
    n, d = check_X(X)
    k = check_linear_params(params, d)
    check_targets(y, n, ndims=(1, 2), n_outputs=k)
    return _ridge_mse(params, X, y)


_linear_decision = jax.jit(linear_decision)


@jax.jit
def _ridge_mse(params, X, y):
    return jnp.mean(jnp.square(linear_decision(params, X) - y))
