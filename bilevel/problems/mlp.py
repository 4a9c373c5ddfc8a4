r"""A small multilayer perceptron (tanh hidden layers, softmax output) as an inner problem.

Model (flax.linen :class:`MLP`): ``h_0 = x``, ``h_l = tanh(h_{l-1} K_l + c_l)`` for each hidden layer
(default one layer of 10 units), logits ``z = h_L K_out + c_out`` over ``n_classes`` classes.
Parameters are the plain ``"params"`` collection
``{"hidden_0": {"kernel", "bias"}, ..., "output": {"kernel", "bias"}}``.

Loss (integer labels ``y_i ∈ {0, …, k-1}``, optional sample weights ``s``):

.. math::

    L(\theta) = \frac1n \sum_i s_i \big[-\log \mathrm{softmax}(z_i)_{y_i}\big]
               + \tfrac12\, \mathrm{reg} \sum_{\text{kernels } K} \lVert K \rVert_F^2 .

Biases are not regularized. ``reg`` may also be a per-input-feature array of shape ``(d,)``: it then
weights the rows of the first kernel, ``0.5 * sum_j reg_j ||K_1[j, :]||^2``, and the deeper kernels
(further hidden layers and the output layer) are penalized by the scalar ``reg_deep`` (default: equal to
``reg`` when ``reg`` is a scalar, ``0`` when ``reg`` is per-feature). The loss is non-convex, so
"the" inner solution is whatever the inner solver reaches.

Reference: the network attacked in L. Muñoz-González et al., "Towards Poisoning of Deep Learning
Algorithms with Back-gradient Optimization", AISec 2017 (arXiv:1708.08689), uses one hidden layer of
10 tanh units and a softmax output; see also C. M. Bishop, *Pattern Recognition and Machine Learning*,
2006, Ch. 5.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import flax.linen as nn
from flax.core import unfreeze
import jax
import jax.numpy as jnp
import optax

from bilevel.problems._common import (
    check_integer_labels,
    check_reg,
    check_weights,
    check_X,
    default_float_dtype,
    weighted_mean,
)

__all__ = [
    "MLP",
    "mlp_init",
    "mlp_apply",
    "mlp_loss",
    "mlp_optimality",
    "mlp_predict_proba",
    "mlp_predict",
    "mlp_accuracy",
    "mlp_error",
]

MLPParams = dict[str, Any]


class MLP(nn.Module):
    """tanh MLP returning logits. ``hidden``: units per hidden layer; ``n_classes``: output width."""

    hidden: Sequence[int] = (10,)
    n_classes: int = 2
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        for i, h in enumerate(self.hidden):
            x = nn.Dense(int(h), name=f"hidden_{i}", param_dtype=self.param_dtype)(x)
            x = jnp.tanh(x)
        return nn.Dense(int(self.n_classes), name="output", param_dtype=self.param_dtype)(x)


def _as_hidden(hidden) -> tuple[int, ...]:
    if isinstance(hidden, int):
        hidden = (hidden,)
    hidden = tuple(int(h) for h in hidden)
    if any(h <= 0 for h in hidden):
        raise ValueError(f"argument 'hidden' must contain positive layer sizes, got {hidden}")
    return hidden


def mlp_init(key, d: int, hidden: int | Sequence[int] = 10, n_classes: int = 2, dtype=None) -> MLPParams:
    """Initial parameters (flax defaults: LeCun-normal kernels, zero biases).

    Args:
      key: PRNG key.
      d: input dimension.
      hidden: units of the single hidden layer, or a sequence of sizes (``()`` = linear softmax model).
      n_classes: number of output classes (>= 2).
      dtype: parameter dtype; defaults to JAX's default float (float64 under ``jax_enable_x64``).
    """
    if int(d) <= 0:
        raise ValueError(f"argument 'd' must be positive, got {d}")
    if int(n_classes) < 2:
        raise ValueError(f"argument 'n_classes' must be >= 2, got {n_classes}")
    dtype = default_float_dtype(dtype)
    return _init(key, int(d), _as_hidden(hidden), int(n_classes), dtype)


@partial(jax.jit, static_argnames=("d", "hidden", "n_classes", "dtype"))
def _init(key, d, hidden, n_classes, dtype):
    module = MLP(hidden=hidden, n_classes=n_classes, param_dtype=dtype)
    return unfreeze(module.init(key, jnp.zeros((1, d), dtype))["params"])


def _architecture(params, name: str = "params") -> tuple[int, tuple[int, ...], int]:
    """Read ``(d, hidden, n_classes)`` from the (static) parameter shapes, validating the structure."""
    if not isinstance(params, Mapping) or "output" not in params:
        raise ValueError(f"argument {name!r} must be an MLP params dict with an 'output' layer")
    n_hidden = len(params) - 1
    expected = {f"hidden_{i}" for i in range(n_hidden)} | {"output"}
    if set(params) != expected:
        raise ValueError(f"argument {name!r} must have layers {sorted(expected)}, got {sorted(params)}")
    layers = [params[f"hidden_{i}"] for i in range(n_hidden)] + [params["output"]]
    fan_in = None
    sizes = []
    for i, layer in enumerate(layers):
        lname = f"hidden_{i}" if i < n_hidden else "output"
        if not isinstance(layer, Mapping) or set(layer) != {"kernel", "bias"}:
            raise ValueError(f"argument {name!r}: layer {lname!r} must have 'kernel' and 'bias'")
        ks, bs = jnp.shape(layer["kernel"]), jnp.shape(layer["bias"])
        if len(ks) != 2 or bs != (ks[1],) or (fan_in is not None and ks[0] != fan_in):
            raise ValueError(f"argument {name!r}: layer {lname!r} has inconsistent shapes {ks}, {bs}")
        if fan_in is None:
            d = ks[0]
        fan_in = ks[1]
        sizes.append(ks[1])
    return d, tuple(sizes[:-1]), sizes[-1]


def _check_inputs(params, X) -> tuple[int, int, tuple[int, ...], int]:
    d_params, hidden, k = _architecture(params)
    n, d = check_X(X)
    if d != d_params:
        raise ValueError(f"argument 'X' has {d} features but params expect {d_params}")
    return n, d, hidden, k


def mlp_apply(params: MLPParams, X) -> jax.Array:
    """Logits of shape ``(n, n_classes)`` (architecture read from the parameter shapes)."""
    _check_inputs(params, X)
    return _apply(params, X)


def _module_for(params) -> MLP:
    """The :class:`MLP` whose parameters have the (static) shapes of ``params``."""
    n_hidden = len(params) - 1
    hidden = tuple(int(params[f"hidden_{i}"]["bias"].shape[0]) for i in range(n_hidden))
    return MLP(hidden=hidden, n_classes=int(params["output"]["bias"].shape[0]))


@jax.jit
def _apply(params, X):
    return _module_for(params).apply({"params": params}, jnp.asarray(X))


def _penalty(params: MLPParams, reg, reg_deep) -> jax.Array:
    reg = jnp.asarray(reg)
    n_hidden = len(params) - 1
    kernels = [params[f"hidden_{i}"]["kernel"] for i in range(n_hidden)] + [params["output"]["kernel"]]
    first, deep = kernels[0], kernels[1:]
    if reg_deep is None:
        reg_deep = reg if reg.ndim == 0 else 0.0
    first_pen = 0.5 * jnp.sum((reg[:, None] if reg.ndim == 1 else reg) * jnp.square(first))
    deep_pen = sum((jnp.sum(jnp.square(K)) for K in deep), jnp.zeros((), first.dtype))
    return first_pen + 0.5 * jnp.asarray(reg_deep) * deep_pen


def _validate(params, reg, X, y, weights, reg_deep):
    n, d, _, k = _check_inputs(params, X)
    check_reg(reg, d)
    if reg_deep is not None:
        if jnp.ndim(reg_deep) != 0:
            raise ValueError(f"argument 'reg_deep' must be a scalar, got shape {jnp.shape(reg_deep)}")
        check_reg(reg_deep, 1, name="reg_deep")
    check_integer_labels(y, n, k)
    check_weights(weights, n)


def mlp_loss(params: MLPParams, reg, X, y, weights=None, reg_deep=None) -> jax.Array:
    """Mean (weighted) softmax cross-entropy + L2 on kernels (see module docstring).

    Args:
      params: from :func:`mlp_init`.
      reg: scalar (all kernels) or ``(d,)`` (rows of the first kernel).
      X: ``(n, d)``; y: ``(n,)`` integer labels in ``0..n_classes-1``; weights: optional ``(n,)``.
      reg_deep: optional scalar L2 weight of the kernels after the first; default ``reg`` for scalar
        ``reg`` and ``0`` for per-feature ``reg``.
    """
    _validate(params, reg, X, y, weights, reg_deep)
    return _mlp_loss(params, reg, X, y, weights, reg_deep)


@jax.jit
def _mlp_loss(params, reg, X, y, weights, reg_deep):
    logits = _apply(params, X)
    per_example = optax.losses.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y))
    return weighted_mean(per_example, weights) + _penalty(params, reg, reg_deep)


_mlp_grad = jax.jit(jax.grad(_mlp_loss))


def mlp_optimality(params: MLPParams, reg, X, y, weights=None, reg_deep=None) -> MLPParams:
    """Gradient of :func:`mlp_loss` w.r.t. ``params`` (zero at a stationary point)."""
    _validate(params, reg, X, y, weights, reg_deep)
    return _mlp_grad(params, reg, X, y, weights, reg_deep)


def mlp_predict_proba(params: MLPParams, X) -> jax.Array:
    """Class probabilities ``(n, n_classes)``."""
    _check_inputs(params, X)
    return _proba(params, X)


def mlp_predict(params: MLPParams, X) -> jax.Array:
    """Predicted class indices ``(n,)``."""
    _check_inputs(params, X)
    return _predict(params, X)


def mlp_accuracy(params: MLPParams, X, y) -> jax.Array:
    """Fraction of examples with ``mlp_predict == y``."""
    n, _, _, k = _check_inputs(params, X)
    check_integer_labels(y, n, k)
    return _accuracy(params, X, y)


_proba = jax.jit(lambda params, X: jax.nn.softmax(_apply(params, X), axis=-1))
_predict = jax.jit(lambda params, X: jnp.argmax(_apply(params, X), axis=-1))
_accuracy = jax.jit(lambda params, X, y: jnp.mean(_predict(params, X) == y))


def mlp_error(params: MLPParams, X, y) -> jax.Array:
    """Classification error ``1 - mlp_accuracy``."""
    return 1.0 - mlp_accuracy(params, X, y)
