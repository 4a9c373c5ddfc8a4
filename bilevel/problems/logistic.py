r"""L2-regularized logistic regression (binary and multinomial) as inner problems.

Binary (labels ``y_i ∈ {0, 1}``; ``params = {"w": (d,), "b": ()}``; logit ``z_i = x_i^\top w + b``):

.. math::

    L(w, b) = \frac1n \sum_i s_i \big[-y_i \log\sigma(z_i) - (1 - y_i)\log\sigma(-z_i)\big]
              + \tfrac12 \sum_j \mathrm{reg}_j w_j^2 ,

computed stably with :func:`optax.losses.sigmoid_binary_cross_entropy` (built on ``log_sigmoid``).
Labels must be exactly 0 or 1 (map ``{-1, +1}`` labels with ``(y + 1) // 2``).

Multinomial (integer labels ``y_i ∈ {0, …, k-1}``; ``params = {"w": (d, k), "b": (k,)}``; logits
``z_i = x_i^\top W + b``):

.. math::

    L(W, b) = \frac1n \sum_i s_i \big[-\log \mathrm{softmax}(z_i)_{y_i}\big]
              + \tfrac12 \sum_{j, c} \mathrm{reg}_j W_{jc}^2 ,

computed with :func:`optax.losses.softmax_cross_entropy_with_integer_labels`. The full
(over-parameterized) softmax is used, as in scikit-learn's multinomial model; ``W`` is unique for
``reg > 0`` but ``b`` is only determined up to a common shift (intercepts are not regularized).

In both cases ``reg`` is a scalar or a per-feature ``(d,)`` array (broadcast over classes), sample
weights ``s`` multiply the per-example losses and the mean is over ``n``. The minimizer equals that of
:class:`sklearn.linear_model.LogisticRegression` (L2) with ``C = 1 / (n * reg)`` (scalar ``reg``; its
``sample_weight`` equals ``weights``).

Reference: C. M. Bishop, *Pattern Recognition and Machine Learning*, 2006, Sec. 4.3.2 and 4.3.4;
T. Hastie, R. Tibshirani, J. Friedman, *The Elements of Statistical Learning*, 2nd ed., Sec. 4.4.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from bilevel.problems._common import (
    Params,
    check_binary_labels,
    check_integer_labels,
    check_linear_params,
    check_reg,
    check_weights,
    check_X,
    init_linear_params,
    l2_penalty,
    linear_decision,
    weighted_mean,
)

__all__ = [
    "init_params",
    "logistic_init_params",
    "multiclass_init_params",
    # binary
    "logistic_loss",
    "logistic_optimality",
    "logistic_decision_function",
    "logistic_predict_proba",
    "logistic_predict",
    "logistic_accuracy",
    "logistic_error",
    # multinomial
    "multiclass_logistic_loss",
    "multiclass_logistic_optimality",
    "multiclass_decision_function",
    "multiclass_predict_proba",
    "multiclass_predict",
    "multiclass_accuracy",
    "multiclass_error",
]


# ----------------------------------------------------------------------------------------------------
# parameters
# ----------------------------------------------------------------------------------------------------
def init_params(d: int, n_classes: int | None = None, dtype=None) -> Params:
    """Zero parameters: binary ``{"w": (d,), "b": ()}`` when ``n_classes is None``, else multinomial
    ``{"w": (d, n_classes), "b": (n_classes,)}`` (``n_classes=2`` gives a 2-column softmax model)."""
    return init_linear_params(d, n_classes, dtype)


def logistic_init_params(d: int, dtype=None) -> Params:
    """Zero binary parameters ``{"w": (d,), "b": ()}``."""
    return init_linear_params(d, None, dtype)


def multiclass_init_params(d: int, n_classes: int, dtype=None) -> Params:
    """Zero multinomial parameters ``{"w": (d, n_classes), "b": (n_classes,)}``."""
    return init_linear_params(d, n_classes, dtype)


# ----------------------------------------------------------------------------------------------------
# jitted cores (validation happens in the public wrappers, on concrete values only)
# ----------------------------------------------------------------------------------------------------
@jax.jit
def _binary_loss(params, reg, X, y, weights):
    z = linear_decision(params, X)
    per_example = optax.losses.sigmoid_binary_cross_entropy(z, jnp.asarray(y).astype(z.dtype))
    return weighted_mean(per_example, weights) + l2_penalty(params["w"], reg)


@jax.jit
def _multi_loss(params, reg, X, y, weights):
    logits = linear_decision(params, X)
    per_example = optax.losses.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y))
    return weighted_mean(per_example, weights) + l2_penalty(params["w"], reg)


_binary_grad = jax.jit(jax.grad(_binary_loss))
_multi_grad = jax.jit(jax.grad(_multi_loss))
_linear_decision = jax.jit(linear_decision)
_sigmoid_proba = jax.jit(lambda params, X: jax.nn.sigmoid(linear_decision(params, X)))
_softmax_proba = jax.jit(lambda params, X: jax.nn.softmax(linear_decision(params, X), axis=-1))
_binary_predict = jax.jit(lambda params, X: (linear_decision(params, X) > 0).astype(jnp.int32))
_multi_predict = jax.jit(lambda params, X: jnp.argmax(linear_decision(params, X), axis=-1))
_binary_accuracy = jax.jit(lambda params, X, y: jnp.mean(_binary_predict(params, X) == y))
_multi_accuracy = jax.jit(lambda params, X, y: jnp.mean(_multi_predict(params, X) == y))


# ----------------------------------------------------------------------------------------------------
# binary
# ----------------------------------------------------------------------------------------------------
def _binary_params(params, d):
    k = check_linear_params(params, d)
    if k is not None:
        raise ValueError(
            "argument 'params': binary logistic regression expects 'w' of shape (d,) and scalar 'b'; "
            "use the multiclass_* functions for (d, k) weights"
        )


def _validate_binary(params, reg, X, y, weights):
    n, d = check_X(X)
    _binary_params(params, d)
    check_reg(reg, d)
    check_binary_labels(y, n, values=(0, 1))
    check_weights(weights, n)


def logistic_loss(params: Params, reg, X, y, weights=None) -> jax.Array:
    """Binary L2 logistic loss, labels in ``{0, 1}`` (see module docstring)."""
    _validate_binary(params, reg, X, y, weights)
    return _binary_loss(params, reg, X, y, weights)


def logistic_optimality(params: Params, reg, X, y, weights=None) -> Params:
    """Gradient of :func:`logistic_loss` w.r.t. ``params`` (zero at the unique minimizer for reg > 0)."""
    _validate_binary(params, reg, X, y, weights)
    return _binary_grad(params, reg, X, y, weights)


def logistic_decision_function(params: Params, X) -> jax.Array:
    """Logits ``X @ w + b``, shape ``(n,)``."""
    _, d = check_X(X)
    _binary_params(params, d)
    return _linear_decision(params, X)


def logistic_predict_proba(params: Params, X) -> jax.Array:
    """``P(y = 1 | x) = sigmoid(x w + b)``, shape ``(n,)``."""
    _, d = check_X(X)
    _binary_params(params, d)
    return _sigmoid_proba(params, X)


def logistic_predict(params: Params, X) -> jax.Array:
    """Hard labels in ``{0, 1}`` (int32): 1 where the logit is positive."""
    _, d = check_X(X)
    _binary_params(params, d)
    return _binary_predict(params, X)


def logistic_accuracy(params: Params, X, y) -> jax.Array:
    """Fraction of examples with ``logistic_predict == y`` (labels in ``{0, 1}``)."""
    n, d = check_X(X)
    _binary_params(params, d)
    check_binary_labels(y, n, values=(0, 1))
    return _binary_accuracy(params, X, y)


def logistic_error(params: Params, X, y) -> jax.Array:
    """Classification error ``1 - logistic_accuracy``."""
    return 1.0 - logistic_accuracy(params, X, y)


# ----------------------------------------------------------------------------------------------------
# multinomial
# ----------------------------------------------------------------------------------------------------
def _multi_params(params, d) -> int:
    k = check_linear_params(params, d)
    if k is None:
        raise ValueError(
            "argument 'params': multinomial logistic regression expects 'w' of shape (d, k) and 'b' of "
            "shape (k,); use the logistic_* functions for binary (d,) weights"
        )
    return k


def _validate_multi(params, reg, X, y, weights):
    n, d = check_X(X)
    k = _multi_params(params, d)
    check_reg(reg, d)
    check_integer_labels(y, n, k)
    check_weights(weights, n)


def multiclass_logistic_loss(params: Params, reg, X, y, weights=None) -> jax.Array:
    """Softmax cross-entropy with integer labels ``0..k-1`` plus L2 (see module docstring)."""
    _validate_multi(params, reg, X, y, weights)
    return _multi_loss(params, reg, X, y, weights)


def multiclass_logistic_optimality(params: Params, reg, X, y, weights=None) -> Params:
    """Gradient of :func:`multiclass_logistic_loss` w.r.t. ``params`` (zero at a minimizer)."""
    _validate_multi(params, reg, X, y, weights)
    return _multi_grad(params, reg, X, y, weights)


def multiclass_decision_function(params: Params, X) -> jax.Array:
    """Logits ``X @ W + b``, shape ``(n, k)``."""
    _, d = check_X(X)
    _multi_params(params, d)
    return _linear_decision(params, X)


def multiclass_predict_proba(params: Params, X) -> jax.Array:
    """Class probabilities ``softmax(X @ W + b)``, shape ``(n, k)``."""
    _, d = check_X(X)
    _multi_params(params, d)
    return _softmax_proba(params, X)


def multiclass_predict(params: Params, X) -> jax.Array:
    """Predicted class indices ``argmax`` of the logits, shape ``(n,)``."""
    _, d = check_X(X)
    _multi_params(params, d)
    return _multi_predict(params, X)


def multiclass_accuracy(params: Params, X, y) -> jax.Array:
    """Fraction of examples with ``multiclass_predict == y``."""
    n, d = check_X(X)
    k = _multi_params(params, d)
    check_integer_labels(y, n, k)
    return _multi_accuracy(params, X, y)


def multiclass_error(params: Params, X, y) -> jax.Array:
    """Classification error ``1 - multiclass_accuracy``."""
    return 1.0 - multiclass_accuracy(params, X, y)
