r"""Differentiable data augmentation in pure JAX: keyed, batched, usable in training and in attacks.

Every function maps a batch of NHWC images ``x`` (``(N, H, W, C)``, or ``(N, H, W)``) and a PRNG
``key`` to a batch of the same shape and dtype, drawing one random transformation per image. Each is
a *linear* map of ``x`` for a fixed key (a selection, a reflection or a mask), so it is
differentiable in ``x`` (reverse and forward mode, any order) and an attack objective can average
over augmentations (expectation over transformations, as in Geiping et al. 2021) with the gradient
flowing to the poison pixels. The key is not differentiated.

- :func:`random_crop`: pad every side by ``padding`` pixels (zeros, or ``mode="reflect"``/``"edge"``),
  then cut an ``H x W`` window at a uniform offset in :math:`\{0..2p\}^2`: torchvision's
  ``RandomCrop(H, padding=p)``, the standard CIFAR augmentation (He et al. 2016).
- :func:`random_translate`: the same map seen as a shift by :math:`(d_y, d_x) \in \{-s..s\}^2` with
  zero fill (the "small translations" of clean-label attacks).
- :func:`random_flip`: mirror left-right with probability ``p`` (``RandomHorizontalFlip``).
- :func:`cutout`: zero a ``size x size`` square (clipped at the border) centred at a uniform pixel
  (DeVries & Taylor 2017).

:class:`Augment` composes them (crop, then flip, then cutout) as a frozen dataclass for
:class:`~poisoning.training.TrainConfig`; ``Augment.cifar()`` is crop(4) + flip.

References: T. DeVries, G. W. Taylor, *Improved Regularization of Convolutional Neural Networks
with Cutout*, arXiv:1708.04552 (2017); J. Geiping et al., *Witches' Brew*, ICLR 2021 (differentiable
augmentations inside the poisoning objective).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

__all__ = ["random_crop", "random_translate", "random_flip", "cutout", "Augment"]

_PAD_MODES = ("constant", "reflect", "edge")


def _as_batch(x):
    x = jnp.asarray(x)
    squeeze = x.ndim == 3
    if squeeze:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"argument 'x' must be a batch of images (N, H, W, C) or (N, H, W), got shape {x.shape}")
    return x, squeeze


def _check_int(name, value, low=0):
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"argument {name!r} must be an int >= {low}, got {value!r}")


def random_crop(key, x, padding: int = 4, mode: str = "constant"):
    """Pad by ``padding`` pixels and crop back to ``H x W`` at a random offset, per image."""
    _check_int("padding", padding)
    if mode not in _PAD_MODES:
        raise ValueError(f"argument 'mode' must be one of {_PAD_MODES}, got {mode!r}")
    x, squeeze = _as_batch(x)
    if padding == 0:
        return x[..., 0] if squeeze else x
    n, h, w, c = x.shape
    p = padding
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode=mode)
    offsets = jax.random.randint(key, (n, 2), 0, 2 * p + 1)

    def crop(img, off):
        return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))

    out = jax.vmap(crop)(xp, offsets)
    return out[..., 0] if squeeze else out


def random_translate(key, x, max_shift: int = 2):
    """Shift each image by a uniform integer offset in ``[-max_shift, max_shift]^2``, zero fill."""
    return random_crop(key, x, padding=max_shift, mode="constant")


def random_flip(key, x, p: float = 0.5):
    """Mirror each image left-right with probability ``p``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"argument 'p' must be in [0, 1], got {p!r}")
    x, squeeze = _as_batch(x)
    flip = jax.random.bernoulli(key, p, (x.shape[0],))
    out = jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)
    return out[..., 0] if squeeze else out


def cutout(key, x, size: int = 8):
    """Zero a ``size x size`` square (clipped at the border) at a uniform centre, per image."""
    _check_int("size", size)
    x, squeeze = _as_batch(x)
    if size == 0:
        return x[..., 0] if squeeze else x
    n, h, w, _ = x.shape
    ky, kx = jax.random.split(key)
    cy = jax.random.randint(ky, (n, 1, 1), 0, h)
    cx = jax.random.randint(kx, (n, 1, 1), 0, w)
    rows = jnp.arange(h)[None, :, None]
    cols = jnp.arange(w)[None, None, :]
    lo = size // 2
    inside = (rows >= cy - lo) & (rows < cy - lo + size) & (cols >= cx - lo) & (cols < cx - lo + size)
    out = jnp.where(inside[..., None], jnp.zeros((), x.dtype), x)
    return out[..., 0] if squeeze else out


@dataclasses.dataclass(frozen=True)
class Augment:
    """Crop (``crop_padding`` > 0), then flip (``flip``), then cutout (``cutout`` > 0), per image.

    Call it as ``augment(key, x)``; the three transformations use independent sub-keys.
    """

    crop_padding: int = 0
    flip: bool = False
    cutout: int = 0
    pad_mode: str = "constant"

    def __post_init__(self):
        _check_int("crop_padding", self.crop_padding)
        _check_int("cutout", self.cutout)
        if not isinstance(self.flip, bool):
            raise ValueError(f"Augment.flip must be a bool, got {self.flip!r}")
        if self.pad_mode not in _PAD_MODES:
            raise ValueError(f"Augment.pad_mode must be one of {_PAD_MODES}, got {self.pad_mode!r}")

    @classmethod
    def cifar(cls) -> "Augment":
        """Random crop with 4 pixels of zero padding and random horizontal flips."""
        return cls(crop_padding=4, flip=True)

    @property
    def is_identity(self) -> bool:
        return self.crop_padding == 0 and not self.flip and self.cutout == 0

    def __call__(self, key, x):
        k_crop, k_flip, k_cut = jax.random.split(key, 3)
        if self.crop_padding:
            x = random_crop(k_crop, x, self.crop_padding, self.pad_mode)
        if self.flip:
            x = random_flip(k_flip, x)
        if self.cutout:
            x = cutout(k_cut, x, self.cutout)
        return x
