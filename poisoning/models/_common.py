"""Pieces shared by every model family: the input convention, normalization, initializers.

Input convention (all models): images ``x`` of shape ``(N, H, W, C)`` (NHWC, the layout XLA prefers
on every backend) or ``(N, H, W)`` for one channel, with pixel values in ``[0, 1]``. A model may carry
a per-channel ``mean`` / ``std``; the normalization ``(x - mean) / std`` is then the model's first
operation, so attacks, feasible sets (e.g. an :math:`\\ell_\\infty` ball of radius 8/255) and
augmentations all live in pixel space, as in Schwarzschild et al. (2021), whose networks start
with a ``NormalizeByChannelMeanStd`` layer.

Convolutions: every model has a field ``conv`` (default ``"auto"``) choosing how its convolutions
are computed (see :mod:`poisoning.models._conv`): ``"auto"`` keeps them on XLA:CPU's fast kernels
inside ``lax.scan`` (training loops) with reverse-mode derivatives of any order; ``"lax"`` is plain
``lax.conv_general_dilated``, needed for forward-mode derivatives (``jax.jvp``) through the model.

Every model's ``__call__(x, train=False, features=False)`` returns the logits, or with
``features=True`` the penultimate representation (the input of the final ``Dense`` layer, which is
always named ``"head"``: ``params["head"]`` is the linear classifier on the features).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from poisoning.models._conv import IMPLS as CONV_IMPLS
from poisoning.models._conv import conv_function

__all__ = ["ImageClassifier", "prepare_input", "conv_init", "batch_norm", "Conv", "CONV_IMPLS", "avg_pool", "max_pool", "CIFAR10_MEAN", "CIFAR10_STD", "MNIST_MEAN", "MNIST_STD"]

# Per-channel statistics of the training sets (the CIFAR-10 std is the one of the poisoning
# benchmark's ``data_mean_std_dict``; MNIST's are the usual 0.1307 / 0.3081).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)

# He et al. (2015) normal initialization (fan-out, as torchvision's ResNets) for ReLU networks.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def prepare_input(x, mean: Sequence[float] | None, std: Sequence[float] | None):
    """Check the rank, add the channel axis of ``(N, H, W)`` input and normalize per channel."""
    x = jnp.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"argument 'x' must be images (N, H, W, C) or (N, H, W), got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        raise TypeError(f"argument 'x' must hold floating-point pixels in [0, 1], got dtype {x.dtype}")
    if (mean is None) != (std is None):
        raise ValueError("a model's 'mean' and 'std' must be given together")
    if mean is not None:
        if len(mean) != x.shape[-1] or len(std) != x.shape[-1]:
            raise ValueError(
                f"the model's mean/std have {len(mean)}/{len(std)} channels but 'x' has {x.shape[-1]}"
            )
        m = jnp.asarray(mean, x.dtype)
        s = jnp.asarray(std, x.dtype)
        x = (x - m) / s
    return x


class ImageClassifier(nn.Module):
    """The fields every model shares (its subclasses add their architecture's own, keyword-only in
    practice): ``num_classes`` (the head's width), ``conv`` (how convolutions are computed, see
    :func:`Conv`) and the per-channel ``mean`` / ``std`` applied first (:func:`prepare_input`)."""

    num_classes: int = 10
    conv: str = "auto"
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None

    def prepare(self, x):
        """The model's input convention: checked rank and dtype, channel axis, normalization."""
        return prepare_input(x, self.mean, self.std)


def Conv(features: int, kernel_size, *, conv: str = "auto", **kw) -> nn.Conv:  # noqa: N802 - a layer factory
    """``nn.Conv`` whose convolution is :func:`poisoning.models._conv.conv_general_dilated` with
    ``impl=conv``: ``"auto"`` (fast inside ``lax.scan`` on CPU, reverse-mode derivatives of any order;
    plain ``lax`` elsewhere) or ``"lax"`` (``lax.conv_general_dilated``: forward mode too)."""
    return nn.Conv(features, kernel_size, conv_general_dilated=conv_function(conv), **kw)


def _blocks(x, window: int):
    """``x`` (NHWC) cut into non-overlapping ``window x window`` blocks, ``(N, H', w, W', w, C)``
    (rows and columns beyond a multiple of ``window`` are dropped, as VALID pooling does)."""
    n, h, w, c = x.shape
    hh, ww = h // window, w // window
    x = x[:, : hh * window, : ww * window, :]
    return x.reshape(n, hh, window, ww, window, c)


def avg_pool(x, window: int):
    """Average pooling over non-overlapping ``window x window`` blocks (stride = window, VALID).

    Written as a reshape and a mean, so its derivative is a broadcast: on XLA:CPU several times
    cheaper than the transpose of ``lax.reduce_window`` (``nn.avg_pool``), with the same values."""
    return jnp.mean(_blocks(x, window), axis=(2, 4))


def max_pool(x, window: int):
    """Max pooling over non-overlapping ``window x window`` blocks (stride = window, VALID), as a reshape
    and a max (see :func:`avg_pool`). At ties the gradient is shared equally among the maxima (the
    derivative of ``jnp.max``), where ``nn.max_pool`` gives it to one of them: both are subgradients."""
    return jnp.max(_blocks(x, window), axis=(2, 4))


def batch_norm(train: bool, name: str | None = None, **kw) -> nn.BatchNorm:
    """``nn.BatchNorm`` with PyTorch's defaults: running averages updated with weight 0.1
    (flax ``momentum=0.9``), ``epsilon=1e-5``; batch statistics when ``train`` else running ones."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name, **kw)
