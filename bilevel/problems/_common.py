"""Shared helpers of the inner problems in :mod:`bilevel.problems`: input validation and linear-model pieces.

Validation policy
-----------------
Every check that only needs *shapes* or *dtypes* runs always (shapes and dtypes are static, also under
``jit``/``vmap``/``grad`` tracing). Checks that need *values* (NaN/inf, label ranges, negative
regularization) run only when the value is concrete, i.e. when ``numpy.asarray(x)`` succeeds; on tracers
they are skipped silently, so every loss stays pure, jit-able and vmap-able. Failures raise
:class:`ValueError` whose message names the offending argument (``'X'``, ``'y'``, ``'weights'``,
``'reg'``, ``'params'`` ...).

The public functions of the problem modules are thin Python wrappers: validate, then call a
module-level ``jax.jit``-ed core. Eager calls therefore compile once per argument signature instead of
dispatching op by op; inside a user's ``jit``/``grad``/``vmap`` the inner ``jit`` is simply inlined.

Linear-model conventions
------------------------
Linear parameters are dicts ``{"w": (d,) or (d, k), "b": () or (k,)}``. The L2 penalty is
``0.5 * sum(reg * w**2)`` with ``reg`` a scalar or a per-feature array of shape ``(d,)`` (broadcast over
the ``k`` columns of a ``(d, k)`` weight matrix); intercepts are never regularized. Sample weights enter
as ``mean(weights * per_example_loss)`` (no renormalization by ``sum(weights)``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Params = dict[str, Any]

__all__ = [
    "is_concrete",
    "concrete_value",
    "default_float_dtype",
    "check_X",
    "check_targets",
    "check_binary_labels",
    "check_integer_labels",
    "check_weights",
    "check_reg",
    "check_linear_params",
    "init_linear_params",
    "linear_decision",
    "l2_penalty",
    "weighted_mean",
]


# ----------------------------------------------------------------------------------------------------
# concreteness
# ----------------------------------------------------------------------------------------------------
def is_concrete(x) -> bool:
    """True when ``x`` holds actual values (not a JAX tracer)."""
    if isinstance(x, jax.core.Tracer):
        return False
    try:
        np.asarray(x)
        return True
    except Exception:  # abstract tracer that is not a jax.core.Tracer subclass
        return False


def concrete_value(x) -> np.ndarray | None:
    """``numpy.asarray(x)`` when ``x`` is concrete, else ``None``."""
    if isinstance(x, jax.core.Tracer):
        return None
    try:
        return np.asarray(x)
    except Exception:
        return None


def default_float_dtype(dtype=None):
    """``dtype`` if given, else JAX's default float (float64 when x64 is enabled, float32 otherwise)."""
    if dtype is not None:
        return jnp.dtype(dtype)
    return jnp.zeros(()).dtype


def _shape(x) -> tuple[int, ...]:
    return tuple(np.shape(x))


def _check_finite(name: str, x) -> None:
    a = concrete_value(x)
    if a is None:
        return
    if a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
        raise ValueError(f"argument {name!r} contains NaN or inf")


# ----------------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------------
def check_X(X, name: str = "X") -> tuple[int, int]:
    """``X`` must be a 2-D ``(n, d)`` array, finite when concrete. Returns ``(n, d)``."""
    shape = _shape(X)
    if len(shape) != 2:
        raise ValueError(f"argument {name!r} must be a 2-D array of shape (n, d), got shape {shape}")
    if shape[0] == 0:
        raise ValueError(f"argument {name!r} has no rows")
    _check_finite(name, X)
    return shape  # type: ignore[return-value]


def check_targets(y, n: int, name: str = "y", *, ndims=(1,), n_outputs=...) -> None:
    """Real-valued targets: ``ndim`` in ``ndims``, first dim ``n``, finite when concrete.

    When ``n_outputs`` is given (``None`` = single output, as returned by :func:`check_linear_params`),
    the shape must be ``(n,)`` if ``n_outputs`` is ``None`` and ``(n, n_outputs)`` otherwise.
    """
    shape = _shape(y)
    if len(shape) not in ndims:
        raise ValueError(f"argument {name!r} must have ndim in {tuple(ndims)}, got shape {shape}")
    if shape[0] != n:
        raise ValueError(f"argument {name!r} has {shape[0]} rows but X has {n}")
    if n_outputs is not ...:
        expected = (n,) if n_outputs is None else (n, n_outputs)
        if shape != expected:
            raise ValueError(f"argument {name!r} must have shape {expected} to match params, got {shape}")
    _check_finite(name, y)


def check_binary_labels(y, n: int, name: str = "y", *, values=(0, 1)) -> None:
    """Binary labels: shape ``(n,)``, finite, every value in ``values`` (when concrete)."""
    shape = _shape(y)
    if shape != (n,):
        raise ValueError(f"argument {name!r} must have shape ({n},) to match X, got {shape}")
    a = concrete_value(y)
    if a is None:
        return
    if a.dtype.kind == "b":
        a = a.astype(np.int64)
    if a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
        raise ValueError(f"argument {name!r} contains NaN or inf")
    if not np.all(np.isin(a, np.asarray(values))):
        bad = np.unique(a[~np.isin(a, np.asarray(values))])[:5]
        raise ValueError(f"argument {name!r} must contain only labels in {set(values)}, found {bad.tolist()}")


def check_integer_labels(y, n: int, n_classes: int, name: str = "y") -> None:
    """Class indices: integer dtype, shape ``(n,)``, values in ``0 .. n_classes-1`` (when concrete)."""
    shape = _shape(y)
    if shape != (n,):
        raise ValueError(f"argument {name!r} must have shape ({n},) to match X, got {shape}")
    a = concrete_value(y)
    dtype = a.dtype if a is not None else y.dtype
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"argument {name!r} must hold integer class indices, got dtype {dtype}")
    if a is None:
        return
    if a.size and (a.min() < 0 or a.max() >= n_classes):
        raise ValueError(
            f"argument {name!r} must contain class indices in [0, {n_classes - 1}], "
            f"found range [{a.min()}, {a.max()}]"
        )


def check_weights(weights, n: int, name: str = "weights") -> None:
    """Optional sample weights: ``None`` or shape ``(n,)``, finite when concrete."""
    if weights is None:
        return
    shape = _shape(weights)
    if shape != (n,):
        raise ValueError(f"argument {name!r} must have shape ({n},) to match X, got {shape}")
    _check_finite(name, weights)


def check_reg(reg, d: int, name: str = "reg") -> None:
    """L2 weight: scalar or per-feature ``(d,)``; finite and non-negative when concrete."""
    shape = _shape(reg)
    if shape not in ((), (d,)):
        raise ValueError(f"argument {name!r} must be a scalar or have shape ({d},), got shape {shape}")
    a = concrete_value(reg)
    if a is None:
        return
    if not np.all(np.isfinite(a)):
        raise ValueError(f"argument {name!r} contains NaN or inf")
    if np.any(a < 0):
        raise ValueError(f"argument {name!r} must be non-negative")


def check_linear_params(params, d: int, name: str = "params") -> int | None:
    """``params = {"w": (d,) | (d, k), "b": () | (k,)}``. Returns ``k`` (``None`` for a single output)."""
    if not isinstance(params, dict) or set(params) != {"w", "b"}:
        keys = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"argument {name!r} must be a dict with keys 'w' and 'b', got {keys}")
    ws, bs = _shape(params["w"]), _shape(params["b"])
    if len(ws) not in (1, 2) or ws[0] != d:
        raise ValueError(f"argument {name!r}: 'w' must have shape ({d},) or ({d}, k) to match X, got {ws}")
    k = ws[1] if len(ws) == 2 else None
    expected_b = () if k is None else (k,)
    if bs != expected_b:
        raise ValueError(f"argument {name!r}: 'b' must have shape {expected_b} to match 'w' {ws}, got {bs}")
    return k


# ----------------------------------------------------------------------------------------------------
# linear-model pieces
# ----------------------------------------------------------------------------------------------------
def init_linear_params(d: int, n_outputs: int | None = None, dtype=None) -> Params:
    """Zeros ``{"w": (d,) , "b": ()}`` (``n_outputs=None``) or ``{"w": (d, k), "b": (k,)}``."""
    if int(d) <= 0:
        raise ValueError(f"argument 'd' must be positive, got {d}")
    dtype = default_float_dtype(dtype)
    if n_outputs is None:
        return {"w": jnp.zeros((int(d),), dtype), "b": jnp.zeros((), dtype)}
    if int(n_outputs) <= 0:
        raise ValueError(f"argument 'n_outputs' must be positive, got {n_outputs}")
    return {"w": jnp.zeros((int(d), int(n_outputs)), dtype), "b": jnp.zeros((int(n_outputs),), dtype)}


def linear_decision(params: Params, X) -> jax.Array:
    """``X @ w + b``: shape ``(n,)`` or ``(n, k)``."""
    return jnp.asarray(X) @ params["w"] + params["b"]


def l2_penalty(w, reg) -> jax.Array:
    """``0.5 * sum(reg * w**2)``; a ``(d,)`` ``reg`` broadcasts over the columns of a ``(d, k)`` ``w``."""
    reg = jnp.asarray(reg)
    if reg.ndim == 1 and jnp.ndim(w) == 2:
        reg = reg[:, None]
    return 0.5 * jnp.sum(reg * jnp.square(w))


def weighted_mean(per_example, weights=None) -> jax.Array:
    """``mean(per_example)`` or ``mean(weights * per_example)`` (weights are not renormalized)."""
    if weights is None:
        return jnp.mean(per_example)
    return jnp.mean(jnp.asarray(weights) * per_example)
