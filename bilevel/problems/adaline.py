r"""Adaline: a linear classifier trained with the squared loss on ``±1`` targets (Widrow-Hoff rule).

Math (labels ``y_i ∈ {-1, +1}``, ``params = {"w": (d,), "b": ()}``, optional sample weights ``s``):

.. math::

    L(w, b) = \frac1n \sum_i s_i\, \tfrac12 (x_i^\top w + b - y_i)^2 + \tfrac12 \sum_j \mathrm{reg}_j w_j^2 ,

i.e. ridge regression (:mod:`bilevel.problems.ridge`, same ``1/2`` scaling) onto the class labels;
predictions are ``sign(x^\top w + b)`` (a zero score is mapped to ``+1``). ``reg`` is a scalar or a
per-feature ``(d,)`` array; the intercept is not regularized. Because the loss is quadratic, the inner
problem has the closed-form solution :func:`adaline_closed_form`.

This is one of the three learners attacked by back-gradient poisoning in
L. Muñoz-González, B. Biggio, A. Demontis, A. Paudice, V. Wongrassamee, E. C. Lupu, F. Roli,
"Towards Poisoning of Deep Learning Algorithms with Back-gradient Optimization", AISec 2017
(arXiv:1708.08689). Original rule: B. Widrow and M. E. Hoff, "Adaptive switching circuits",
IRE WESCON Convention Record, 1960.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bilevel.problems._common import (
    Params,
    check_binary_labels,
    check_linear_params,
    check_reg,
    check_weights,
    check_X,
    init_linear_params,
    l2_penalty,
    linear_decision,
    weighted_mean,
)
from bilevel.problems.ridge import ridge_closed_form

__all__ = [
    "init_params",
    "adaline_init_params",
    "adaline_loss",
    "adaline_optimality",
    "adaline_closed_form",
    "adaline_decision_function",
    "adaline_predict",
    "adaline_accuracy",
    "adaline_error",
]

_LABELS = (-1, 1)


def init_params(d: int, dtype=None) -> Params:
    """Zero parameters ``{"w": (d,), "b": ()}``."""
    return init_linear_params(d, None, dtype)


adaline_init_params = init_params


def _single_output(params, d):
    if check_linear_params(params, d) is not None:
        raise ValueError("argument 'params': Adaline expects 'w' of shape (d,) and scalar 'b'")


def _validate(params, reg, X, y, weights):
    n, d = check_X(X)
    _single_output(params, d)
    check_reg(reg, d)
    check_binary_labels(y, n, values=_LABELS)
    check_weights(weights, n)


@jax.jit
def _adaline_loss(params, reg, X, y, weights):
    score = linear_decision(params, X)
    per_example = 0.5 * jnp.square(score - jnp.asarray(y).astype(score.dtype))
    return weighted_mean(per_example, weights) + l2_penalty(params["w"], reg)


_adaline_grad = jax.jit(jax.grad(_adaline_loss))
_linear_decision = jax.jit(linear_decision)
_adaline_predict = jax.jit(lambda params, X: jnp.where(linear_decision(params, X) >= 0, 1, -1).astype(jnp.int32))
_adaline_accuracy = jax.jit(lambda params, X, y: jnp.mean(_adaline_predict(params, X) == y))


def adaline_loss(params: Params, reg, X, y, weights=None) -> jax.Array:
    """``mean_i s_i * 0.5 * (x_i w + b - y_i)^2 + 0.5 * sum(reg * w**2)`` with ``y_i ∈ {-1, +1}``."""
    _validate(params, reg, X, y, weights)
    return _adaline_loss(params, reg, X, y, weights)


def adaline_optimality(params: Params, reg, X, y, weights=None) -> Params:
    """Gradient of :func:`adaline_loss` w.r.t. ``params`` (zero at the solution)."""
    _validate(params, reg, X, y, weights)
    return _adaline_grad(params, reg, X, y, weights)


def adaline_closed_form(reg, X, y, weights=None, fit_intercept: bool = True) -> Params:
    """Exact minimizer of :func:`adaline_loss` (normal equations via :func:`ridge_closed_form`)."""
    n, _ = check_X(X)
    check_binary_labels(y, n, values=_LABELS)
    y = jnp.asarray(y)
    if not jnp.issubdtype(y.dtype, jnp.floating):
        y = y.astype(jnp.result_type(jnp.asarray(X).dtype, jnp.float32))
    return ridge_closed_form(reg, X, y, weights, fit_intercept=fit_intercept)


def adaline_decision_function(params: Params, X) -> jax.Array:
    """Scores ``X @ w + b``, shape ``(n,)``."""
    _, d = check_X(X)
    _single_output(params, d)
    return _linear_decision(params, X)


def adaline_predict(params: Params, X) -> jax.Array:
    """Labels in ``{-1, +1}`` (int32): ``sign`` of the score, zero mapped to ``+1``."""
    _, d = check_X(X)
    _single_output(params, d)
    return _adaline_predict(params, X)


def adaline_accuracy(params: Params, X, y) -> jax.Array:
    """Fraction of examples with ``adaline_predict == y`` (labels in ``{-1, +1}``)."""
    n, d = check_X(X)
    _single_output(params, d)
    check_binary_labels(y, n, values=_LABELS)
    return _adaline_accuracy(params, X, y)


def adaline_error(params: Params, X, y) -> jax.Array:
    """Classification error ``1 - adaline_accuracy``."""
    return 1.0 - adaline_accuracy(params, X, y)
