"""Argument checks shared by the backdoor defenses that act on a trained network (STRIP, Neural Cleanse):
each error names the argument (or the config field) it rejects."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from poisoning.training.loop import as_float_images

__all__ = ["check_number", "check_positive_int", "check_images"]


def _label(name: str, owner: str | None) -> str:
    return f"{owner}.{name}" if owner else f"argument {name!r}"


def check_number(name: str, value, *, low=None, high=None, open_low: bool = False, owner: str | None = None) -> float:
    """``value`` as a float after checking it is a finite real in ``[low, high]`` (``(low, high]`` with
    ``open_low``); ``owner`` names the config class in the message (e.g. ``"StripConfig"``)."""
    what = _label(name, owner)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    if low is not None and (value < low or (open_low and value == low)):
        raise ValueError(f"{what} must be {'>' if open_low else '>='} {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{what} must be <= {high}, got {value!r}")
    return float(value)


def check_positive_int(name: str, value, *, owner: str | None = None) -> int:
    """``value`` after checking it is an int >= 1 (not a bool)."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{_label(name, owner)} must be an int >= 1, got {value!r}")
    return int(value)


def check_images(x, name: str, *, like=None) -> jax.Array:
    """``x`` as ``(n, H, W, C)`` float pixels: ``(n, H, W)`` gains a channel axis, ``uint8`` is scaled to
    [0, 1]. Rejects other ranks, an empty batch, a per-image shape other than ``like``'s, and (on
    concrete values; skipped under ``jit``) NaN / inf and pixels outside [0, 1]."""
    x = jnp.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"argument {name!r} must be images (n, H, W, C) or (n, H, W), got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"argument {name!r} holds no images")
    if like is not None and x.shape[1:] != like.shape[1:]:
        raise ValueError(f"argument {name!r} has images of shape {x.shape[1:]}, expected {like.shape[1:]} "
                         f"(those of the overlays)")
    x = as_float_images(x, jnp.float32)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"argument {name!r} must hold float pixels in [0, 1] or uint8, got {x.dtype}")
    if not isinstance(x, jax.core.Tracer):
        xa = np.asarray(x)
        if not np.all(np.isfinite(xa)):
            raise ValueError(f"argument {name!r} contains NaN or inf")
        if xa.min() < 0 or xa.max() > 1:
            raise ValueError(f"argument {name!r} must hold pixels in [0, 1], found [{xa.min():.4g}, "
                             f"{xa.max():.4g}]")
    return x
