r"""Backdoor triggers as pytrees of arrays, and :func:`apply`, the pure map that stamps them on images.

Images are NHWC floats in [0, 1] (``(N, H, W, C)``; ``(N, H, W)`` is read as one channel and returned
in the same shape), the convention of :mod:`poisoning.models` and :mod:`poisoning.training`
(``as_float_images`` turns ``uint8`` pixels into that). A trigger's arrays are its pytree leaves and
its placement is static metadata (shapes and the [0, 1] range of a pattern, mask or ``alpha``
are checked by :func:`apply`, the range on concrete values only, so a trigger of gradients or a stack
of triggers for ``vmap`` is a valid pytree too), so ``jax.grad(lambda t: loss(apply(t, x)))(trigger)`` returns a
trigger of gradients (a driver can optimize a trigger), and ``jit`` / ``vmap`` over triggers work.

- :class:`Patch` (BadNets, Gu et al. 2017): a ``(h, w, C)`` pattern :math:`P` and a mask
  :math:`M \in [0,1]^{h \times w}` placed with their top-left corner at ``(row, col)`` (negative values
  count from the bottom / right edge, as Python indices do):
  :math:`x' = (1 - M) \odot x + M \odot P` inside the window, :math:`x' = x` elsewhere.
  :func:`badnets_pixel` (one bright pixel) and :func:`badnets_pattern` (a 3x3 checkerboard) sit
  near the bottom-right corner, as in the paper's MNIST experiments.
- :class:`Pixel` (single-pixel perturbation, Xiang, Miller & Kesidis 2019): one fixed pixel
  ``(row, col)`` receives the additive perturbation :math:`\delta \in \mathbb{R}^C`,
  :math:`x'_{rc} = \mathrm{clip}(x_{rc} + \delta, 0, 1)`, every other pixel unchanged.
- :class:`Blend` (Chen et al. 2017): a full-size pattern :math:`P` blended at :math:`\alpha`,
  :math:`x' = (1 - \alpha) x + \alpha P`. :func:`random_blend` draws a uniform-noise pattern.

References: T. Gu, B. Dolan-Gavitt, S. Garg, *BadNets*, arXiv:1708.06733 (2017); Z. Xiang, D. J.
Miller, G. Kesidis, *A benchmark study of backdoor data poisoning defenses for deep neural network
classifiers and a novel defense*, IEEE MLSP 2019; X. Chen, C. Liu, B. Li, K. Lu, D. Song, *Targeted
backdoor attacks on deep learning systems using data poisoning*, arXiv:1712.05526 (2017).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Union

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Patch", "Pixel", "Blend", "Trigger", "apply", "badnets_pixel", "badnets_pattern", "random_blend",
           "trigger_mask"]


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_unit_interval(name: str, value) -> None:
    if _is_concrete(value):
        v = np.asarray(value)
        if not np.all(np.isfinite(v)):
            raise ValueError(f"argument {name!r} contains NaN or inf")
        if v.size and (v.min() < 0 or v.max() > 1):
            raise ValueError(f"argument {name!r} must lie in [0, 1], found [{v.min():.4g}, {v.max():.4g}]")


def _window(loc: int, size: int, extent: int, name: str) -> int:
    """The first index of a window of ``size`` at ``loc`` (negative: from the end) inside ``extent``."""
    start = loc + extent if loc < 0 else loc
    if start < 0 or start + size > extent:
        raise ValueError(f"the trigger's {name} {loc} with size {size} does not fit in an image of {name} "
                         f"extent {extent}")
    return start


def _check_int_fields(trigger) -> None:
    for name in ("row", "col"):
        v = getattr(trigger, name)
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
            raise TypeError(f"argument {name!r} must be an int, got {v!r}")


def _as_nhwc(images):
    x = jnp.asarray(images)
    if x.ndim not in (3, 4):
        raise ValueError(f"argument 'images' must be (N, H, W, C) or (N, H, W), got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"argument 'images' must hold float pixels in [0, 1] (use as_float_images), got {x.dtype}")
    return (x[..., None], True) if x.ndim == 3 else (x, False)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["pattern", "mask"], meta_fields=["row", "col"])
@dataclasses.dataclass(frozen=True)
class Patch:
    """A pattern pasted through a mask at ``(row, col)`` (see the module docstring).

    Attributes:
      pattern: ``(h, w, C)`` (or ``(h, w)``, any channel count) pixel values in [0, 1].
      mask: ``(h, w)`` weights in [0, 1] (1: the pattern replaces the pixel).
      row, col: top-left corner of the window (static ints; negative counts from the bottom / right).
    """

    pattern: jax.Array
    mask: jax.Array
    row: int = -4
    col: int = -4

    def __post_init__(self):
        _check_int_fields(self)

    def apply(self, images):
        p, m = self.pattern, self.mask
        if jnp.ndim(p) not in (2, 3):
            raise ValueError(f"argument 'pattern' must be (h, w, C) or (h, w), got shape {jnp.shape(p)}")
        if jnp.shape(m) != jnp.shape(p)[:2]:
            raise ValueError(f"argument 'mask' must have shape {jnp.shape(p)[:2]} (the pattern's h, w), "
                             f"got {jnp.shape(m)}")
        _check_unit_interval("pattern", p)
        _check_unit_interval("mask", m)
        x, squeezed = _as_nhwc(images)
        _, H, W, C = x.shape
        p = jnp.asarray(self.pattern, x.dtype)
        if p.ndim == 2:
            p = p[..., None]
        if p.shape[-1] not in (1, C):
            raise ValueError(f"the pattern has {p.shape[-1]} channels but the images have {C}")
        h, w = p.shape[:2]
        r = _window(int(self.row), h, H, "row")
        c = _window(int(self.col), w, W, "col")
        m = jnp.asarray(self.mask, x.dtype)[..., None]
        inside = x[:, r:r + h, c:c + w, :]
        stamped = (1 - m) * inside + m * p
        out = x.at[:, r:r + h, c:c + w, :].set(stamped)
        return out[..., 0] if squeezed else out


@functools.partial(jax.tree_util.register_dataclass, data_fields=["delta"], meta_fields=["row", "col"])
@dataclasses.dataclass(frozen=True)
class Pixel:
    """An additive perturbation ``delta`` (scalar or ``(C,)``) of the one pixel ``(row, col)``, clipped
    to [0, 1] (Xiang et al. 2019; see the module docstring)."""

    delta: jax.Array
    row: int = 0
    col: int = 0

    def __post_init__(self):
        _check_int_fields(self)

    def apply(self, images):
        if jnp.ndim(self.delta) > 1:
            raise ValueError(f"argument 'delta' must be a scalar or (C,), got shape {jnp.shape(self.delta)}")
        if _is_concrete(self.delta) and not np.all(np.isfinite(np.asarray(self.delta, dtype=float))):
            raise ValueError("argument 'delta' contains NaN or inf")
        x, squeezed = _as_nhwc(images)
        _, H, W, C = x.shape
        r = _window(int(self.row), 1, H, "row")
        c = _window(int(self.col), 1, W, "col")
        d = jnp.asarray(self.delta, x.dtype)
        if d.ndim == 1 and d.shape[0] not in (1, C):
            raise ValueError(f"argument 'delta' has {d.shape[0]} channels but the images have {C}")
        out = x.at[:, r, c, :].set(jnp.clip(x[:, r, c, :] + d, 0, 1))
        return out[..., 0] if squeezed else out


@functools.partial(jax.tree_util.register_dataclass, data_fields=["pattern", "alpha"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class Blend:
    """A full-size ``(H, W, C)`` (or ``(H, W)``) pattern blended at ``alpha`` in [0, 1]
    (Chen et al. 2017; see the module docstring)."""

    pattern: jax.Array
    alpha: jax.Array = 0.2

    def apply(self, images):
        if jnp.ndim(self.pattern) not in (2, 3):
            raise ValueError(f"argument 'pattern' must be (H, W, C) or (H, W), got shape {jnp.shape(self.pattern)}")
        if jnp.ndim(self.alpha) != 0:
            raise ValueError(f"argument 'alpha' must be a scalar, got shape {jnp.shape(self.alpha)}")
        _check_unit_interval("pattern", self.pattern)
        _check_unit_interval("alpha", self.alpha)
        x, squeezed = _as_nhwc(images)
        p = jnp.asarray(self.pattern, x.dtype)
        if p.ndim == 2:
            p = p[..., None]
        if p.shape[:2] != x.shape[1:3] or p.shape[-1] not in (1, x.shape[-1]):
            raise ValueError(f"the blend pattern has shape {p.shape} but the images are {x.shape[1:]}")
        a = jnp.asarray(self.alpha, x.dtype)
        out = (1 - a) * x + a * p
        return out[..., 0] if squeezed else out


Trigger = Union[Patch, Pixel, Blend]


def apply(trigger: Trigger, images):
    """Stamp ``trigger`` on every image of ``images`` (``(N, H, W, C)`` or ``(N, H, W)`` floats in [0, 1]).

    Pure, ``jit``-able and differentiable in the trigger's arrays and in the images.
    """
    if not isinstance(trigger, (Patch, Pixel, Blend)):
        raise TypeError(f"argument 'trigger' must be a Patch, Pixel or Blend, got {type(trigger).__name__}")
    return trigger.apply(images)


def trigger_mask(trigger: Trigger, image_shape) -> np.ndarray:
    """Boolean ``(H, W)`` map of the pixels ``trigger`` may change on images of ``image_shape`` ``(H, W[, C])``."""
    H, W = int(image_shape[0]), int(image_shape[1])
    out = np.zeros((H, W), bool)
    if isinstance(trigger, Blend):
        out[:] = np.asarray(trigger.alpha) > 0
    elif isinstance(trigger, Pixel):
        out[_window(trigger.row, 1, H, "row"), _window(trigger.col, 1, W, "col")] = True
    elif isinstance(trigger, Patch):
        h, w = np.shape(trigger.mask)
        r, c = _window(trigger.row, h, H, "row"), _window(trigger.col, w, W, "col")
        out[r:r + h, c:c + w] = np.asarray(trigger.mask) > 0
    else:
        raise TypeError(f"argument 'trigger' must be a Patch, Pixel or Blend, got {type(trigger).__name__}")
    return out


# ----------------------------------------------------------------------------------------------------
# the triggers of the papers
# ----------------------------------------------------------------------------------------------------
def badnets_pixel(channels: int = 1, *, margin: int = 1) -> Patch:
    """BadNets' single-pixel backdoor: one bright pixel ``margin`` pixels from the bottom-right corner."""
    return Patch(jnp.ones((1, 1, channels)), jnp.ones((1, 1)), row=-1 - margin, col=-1 - margin)


def badnets_pattern(channels: int = 1, *, margin: int = 1) -> Patch:
    """BadNets' pattern backdoor: a 3x3 checkerboard of bright and dark pixels ``margin`` pixels from the
    bottom-right corner (the mask covers the whole 3x3 window, so the dark squares are set to 0 too)."""
    board = jnp.asarray([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    return Patch(jnp.repeat(board[..., None], channels, axis=-1), jnp.ones((3, 3)), row=-3 - margin,
                 col=-3 - margin)


def random_blend(key, image_shape, alpha: float = 0.2) -> Blend:
    """Chen et al.'s blended trigger: a uniform-noise pattern of ``image_shape`` ``(H, W[, C])`` at ``alpha``."""
    return Blend(jax.random.uniform(key, tuple(image_shape)), jnp.asarray(alpha))
