"""Run-time checks that work on concrete values, under ``jit`` and under ``vmap``.

A failed check must never turn into a silent NaN. On concrete (non-traced) values the check raises a
Python exception at once; on traced values it is staged with :func:`jax.debug.callback`, which raises
from the host when the compiled computation runs. Outside ``jit`` that is our own exception class; from
inside a compiled computation JAX wraps every host exception into a ``jax.errors.JaxRuntimeError``
whose text contains our message. :class:`typed_errors` turns it back into the original exception::

    with bilevel.typed_errors():                  # or: bilevel.typed_errors()(jitted_fn)
        g = jax.jit(jax.grad(f))(x)               # a failed solve raises bilevel.ConvergenceError
        jax.block_until_ready(g)                  # (errors surface when the result is computed)

Without it, catch ``(bilevel.ConvergenceError, jax.errors.JaxRuntimeError)``.

``on_failure`` policies, used across the package:

- ``"raise"`` (default): raise :class:`BilevelError` (or the subclass given).
- ``"warn"``: emit a :class:`RuntimeWarning` and return the value unchanged.
- ``"ignore"``: return the value unchanged (for callers that read the flagged residuals themselves).
"""

from __future__ import annotations

import collections
import contextlib
import threading
import warnings
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

OnFailure = Literal["raise", "warn", "ignore"]
ON_FAILURE_CHOICES = ("raise", "warn", "ignore")


class BilevelError(RuntimeError):
    """Base class of the run-time errors raised by :mod:`bilevel`."""


class ConvergenceError(BilevelError):
    """An inner or adjoint solve did not reach its tolerance."""


class NonFiniteError(BilevelError):
    """A solve produced NaN or inf."""


# The exceptions raised by host callbacks (most recent last), so that typed_errors can find the one a
# JaxRuntimeError wraps. Bounded: only the last few matter.
_RAISED: collections.deque = collections.deque(maxlen=64)
_RAISED_LOCK = threading.Lock()


def _wrapped_original(exc: BaseException):
    """The bilevel exception whose message a ``JaxRuntimeError`` ``exc`` carries, or None."""
    text = str(exc)
    with _RAISED_LOCK:
        candidates = list(_RAISED)
    for original in reversed(candidates):
        if f"{type(original).__name__}: {original}" in text:
            return original
    return None


class typed_errors(contextlib.ContextDecorator):
    """Context manager and decorator: re-raise bilevel's errors from compiled code with their own type.

    Inside ``jit`` a failed check (e.g. a :class:`ConvergenceError` of an adjoint solve) reaches Python
    as a ``jax.errors.JaxRuntimeError`` carrying our message; within this context it is re-raised as the
    original :class:`BilevelError` subclass (chained to the ``JaxRuntimeError``). Errors surface when
    the result is computed, so block on it inside the context (``jax.block_until_ready``). Any other
    exception passes through unchanged.
    """

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, BilevelError) or not isinstance(exc, jax.errors.JaxRuntimeError):
            return False
        original = _wrapped_original(exc)
        if original is None:
            return False
        raise type(original)(*original.args) from exc


def check_on_failure(on_failure: str) -> None:
    if on_failure not in ON_FAILURE_CHOICES:
        raise ValueError(f"argument 'on_failure' must be one of {ON_FAILURE_CHOICES}, got {on_failure!r}")


def _is_concrete(x) -> bool:
    try:
        np.asarray(x)
        return True
    except Exception:  # tracer
        return False


def error_if(
    value,
    failed,
    message: str,
    *,
    on_failure: OnFailure = "raise",
    error: type = BilevelError,
    fmt_args: dict | None = None,
):
    """Return ``value``; raise/warn with ``message`` when the boolean ``failed`` is true.

    ``failed`` may be a Python bool, a concrete array or a tracer; any element true counts as failure.
    ``message`` may hold ``str.format`` fields filled from ``fmt_args`` (arrays, reduced to their
    largest value when batched), so the measured residual appears in the error even under ``jit``.
    """
    check_on_failure(on_failure)
    if on_failure == "ignore":
        return value
    fmt_args = dict(fmt_args or {})
    static = {k: v for k, v in fmt_args.items() if isinstance(v, (str, int, float))}
    dynamic = {k: v for k, v in fmt_args.items() if k not in static}

    def _act(flag, dyn, from_callback=False):
        if np.any(np.asarray(flag)):
            vals = dict(static)
            for k, v in dyn.items():
                a = np.asarray(v, dtype=float)
                vals[k] = float(np.nan if np.isnan(a).any() else a.max()) if a.size else float("nan")
            try:
                msg = message.format(**vals)
            except (KeyError, IndexError, ValueError):  # literal braces in the message, e.g. "{0, 1}"
                msg = message + (f" ({', '.join(f'{k}={v}' for k, v in vals.items())})" if vals else "")
            if on_failure == "raise":
                exc = error(msg)
                if from_callback:
                    with _RAISED_LOCK:
                        _RAISED.append(exc)
                raise exc
            warnings.warn(msg, RuntimeWarning, stacklevel=3)

    if _is_concrete(failed) and all(_is_concrete(v) for v in dynamic.values()):
        _act(failed, dynamic)
        return value
    # An unconditional callback (about 0.1 ms) rather than one inside lax.cond: outside jit the
    # callback then raises our own exception class (callers can catch ConvergenceError), while a
    # callback compiled into a cond surfaces as a generic JaxRuntimeError.
    jax.debug.callback(lambda flag, dyn: _act(flag, dyn, True), jnp.any(failed), dynamic)
    return value


def tree_all_finite(tree) -> jax.Array:
    """Scalar bool: every leaf of ``tree`` is finite."""
    leaves = [jnp.all(jnp.isfinite(l)) for l in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def validate_finite(name: str, tree) -> None:
    """Raise ``ValueError`` naming the argument when a concrete input holds NaN/inf (no-op on tracers)."""
    for leaf in jax.tree_util.tree_leaves(tree):
        if _is_concrete(leaf):
            a = np.asarray(leaf)
            if a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
                raise ValueError(f"argument {name!r} contains NaN or inf")
