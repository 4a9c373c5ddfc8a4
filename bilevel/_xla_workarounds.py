"""Work-around for an XLA:CPU miscompilation in the jaxlib this project is tested with.

On jaxlib 0.10 (XLA:CPU with YNNPACK fusions), a row reduction of a matrix product whose operand is
a compile-time constant -- e.g. ``jax.nn.softmax(X @ W0)`` inside ``jit`` with ``W0 = zeros`` or any
constant, the cold start of a softmax model -- can return NaN: the product is recomputed in the
``max`` fusion and in the ``exp(z - max)`` fusion, and the two disagree (the family of
jax-ml/jax#38609, openxla/xla#44738). Measured here: ``softmax(X @ zeros((784, 10)))`` for
500 x 784 uniform ``X`` is all NaN under ``jit`` in float64 and float32; with the YNN fusions off it
is exact, and the poisoning benchmarks run at the same speed.

:func:`apply` therefore adds ``--xla_cpu_experimental_ynn_fusion_type=`` (no YNN fusions) to
``XLA_FLAGS`` when ``bilevel`` is imported, only

- for the jaxlib versions where this flag exists and the bug was observed (an unknown flag would
  abort XLA), and
- when the user has not set that flag, nor ``BILEVEL_KEEP_XLA_FLAGS=1`` (opt out).

XLA reads ``XLA_FLAGS`` when its CPU client starts, so this works when ``bilevel`` (or ``poisoning``)
is imported before the first JAX computation; otherwise it warns once.
"""

from __future__ import annotations

import os
import warnings

FLAG = "--xla_cpu_experimental_ynn_fusion_type="
AFFECTED_JAXLIB = ("0.10.",)


def _backend_started() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(getattr(xla_bridge, "_backends", {}))
    except Exception:  # noqa: BLE001 - private API moved: assume not started
        return False


def apply() -> bool:
    """Add :data:`FLAG` to ``XLA_FLAGS`` where needed; returns whether it is in effect for this process."""
    try:
        import jaxlib

        version = jaxlib.__version__
    except Exception:  # noqa: BLE001
        return False
    if not version.startswith(AFFECTED_JAXLIB) or os.environ.get("BILEVEL_KEEP_XLA_FLAGS") == "1":
        return False
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" in flags:
        return FLAG in flags.split()
    if _backend_started():
        warnings.warn(
            f"bilevel was imported after JAX started its backend, so it could not add {FLAG} to XLA_FLAGS; "
            f"jaxlib {version} on CPU can return NaN for softmax(X @ constant) under jit. Import bilevel "
            f"first or set XLA_FLAGS={FLAG}",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    os.environ["XLA_FLAGS"] = (flags + " " + FLAG).strip()
    return True
