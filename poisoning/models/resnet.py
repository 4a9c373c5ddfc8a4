"""Residual networks for 32x32 images: ResNet-18 and ResNet-20 (CIFAR variants), PreAct-ResNet-18.

A basic block (He et al. 2016a) maps :math:`x \\mapsto \\mathrm{relu}(\\mathrm{BN}(W_2 *
\\mathrm{relu}(\\mathrm{BN}(W_1 * x))) + s(x))` with 3x3 convolutions :math:`W_1, W_2` (the first one
strided when the stage downsamples) and a shortcut :math:`s` that is the identity, or, where the
shape changes, either a 1x1 strided convolution + BN (``shortcut="projection"``, "option B") or
a parameter-free subsampling padded with zero channels (``shortcut="pad"``, "option A").

- **ResNet-18, CIFAR variant** (the network of the poisoning benchmark of Schwarzschild et al.
  2021, which is Kuang Liu's ``pytorch-cifar`` ResNet18): a 3x3 stem of 64 filters (no 7x7
  convolution, no max-pool), stages of (2, 2, 2, 2) blocks with 64, 128, 256, 512 filters, strides
  1, 2, 2, 2, projection shortcuts, global average pooling, a dense head. 11,173,962 parameters
  for 10 classes.
- **ResNet-20** (He et al. 2016a, Sec. 4.2): a 3x3 stem of 16 filters, three stages of 3 blocks
  with 16, 32, 64 filters, option-A shortcuts; 0.27 M parameters (269,722 for 10 classes; 272,474
  with projection shortcuts).
- **PreAct-ResNet-18** (He et al. 2016b): blocks :math:`x \\mapsto W_2 * \\mathrm{relu}(\\mathrm{BN}(
  W_1 * \\mathrm{relu}(\\mathrm{BN}(x)))) + s(x)`, the projection applied to the pre-activated
  input. As in Kuang Liu's ``PreActResNet18`` (used across the backdoor literature) there is no
  BatchNorm after the stem nor before the pooling (``final_norm=True`` adds the final BN + ReLU of
  the paper); 11,171,146 parameters for 10 classes.

Knobs for CPU protocols: ``width`` (filters of the first stage; each later stage doubles it) and
``stage_sizes`` (blocks per stage). The penultimate features are the globally pooled activations.

References: K. He, X. Zhang, S. Ren, J. Sun, *Deep Residual Learning for Image Recognition*, CVPR
2016 (a); *Identity Mappings in Deep Residual Networks*, ECCV 2016 (b).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from poisoning.models._common import batch_norm, Conv, conv_init, ImageClassifier

__all__ = ["BasicBlock", "PreActBlock", "ResNet", "PreActResNet"]

_SHORTCUTS = ("projection", "pad")


def _conv(features, kernel, stride=1, name=None, conv="auto"):
    pad = kernel // 2
    return Conv(features, (kernel, kernel), conv=conv, strides=stride, padding=pad, use_bias=False,
                kernel_init=conv_init, name=name)


def _pad_shortcut(x, planes: int, stride: int):
    """He et al.'s option A: subsample by ``stride`` and pad the new channels with zeros."""
    x = x[:, ::stride, ::stride, :]
    extra = planes - x.shape[-1]
    if extra < 0:
        raise ValueError(f"option-A shortcut cannot reduce channels ({x.shape[-1]} -> {planes})")
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a shortcut (post-activation)."""

    planes: int
    stride: int = 1
    shortcut: str = "projection"
    conv: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool = False):
        c = self.conv
        out = nn.relu(batch_norm(train, name="bn1")(_conv(self.planes, 3, self.stride, name="conv1", conv=c)(x)))
        out = batch_norm(train, name="bn2")(_conv(self.planes, 3, name="conv2", conv=c)(out))
        if self.stride != 1 or x.shape[-1] != self.planes:
            if self.shortcut == "projection":
                x = batch_norm(train, name="shortcut_bn")(_conv(self.planes, 1, self.stride, name="shortcut", conv=c)(x))
            else:
                x = _pad_shortcut(x, self.planes, self.stride)
        return nn.relu(out + x)


class PreActBlock(nn.Module):
    """BN-ReLU-conv twice; the projection shortcut (where needed) takes the pre-activated input."""

    planes: int
    stride: int = 1
    conv: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool = False):
        c = self.conv
        out = nn.relu(batch_norm(train, name="bn1")(x))
        if self.stride != 1 or x.shape[-1] != self.planes:
            x = _conv(self.planes, 1, self.stride, name="shortcut", conv=c)(out)
        out = _conv(self.planes, 3, self.stride, name="conv1", conv=c)(out)
        out = _conv(self.planes, 3, name="conv2", conv=c)(nn.relu(batch_norm(train, name="bn2")(out)))
        return out + x


class ResNet(ImageClassifier):
    """Post-activation ResNet for small images (see the module docstring).

    ``ResNet()`` is ResNet-18 (CIFAR); ``ResNet(stage_sizes=(3, 3, 3), width=16, shortcut="pad")``
    is ResNet-20.
    """

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    width: int = 64
    shortcut: str = "projection"

    @nn.compact
    def __call__(self, x, train: bool = False, features: bool = False):
        if self.shortcut not in _SHORTCUTS:
            raise ValueError(f"shortcut must be one of {_SHORTCUTS}, got {self.shortcut!r}")
        x = self.prepare(x)
        x = nn.relu(batch_norm(train, name="stem_bn")(_conv(self.width, 3, name="stem", conv=self.conv)(x)))
        for i, blocks in enumerate(self.stage_sizes):
            for j in range(blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                x = BasicBlock(self.width * 2**i, stride, self.shortcut, self.conv,
                               name=f"stage{i + 1}_block{j + 1}")(x, train)
        x = jnp.mean(x, axis=(1, 2))
        if features:
            return x
        return nn.Dense(self.num_classes, name="head")(x)


class PreActResNet(ImageClassifier):
    """Pre-activation ResNet; ``PreActResNet()`` is PreAct-ResNet-18 (see the module docstring)."""

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    width: int = 64
    final_norm: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False, features: bool = False):
        x = self.prepare(x)
        x = _conv(self.width, 3, name="stem", conv=self.conv)(x)
        for i, blocks in enumerate(self.stage_sizes):
            for j in range(blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                x = PreActBlock(self.width * 2**i, stride, self.conv, name=f"stage{i + 1}_block{j + 1}")(x, train)
        if self.final_norm:
            x = nn.relu(batch_norm(train, name="final_bn")(x))
        x = jnp.mean(x, axis=(1, 2))
        if features:
            return x
        return nn.Dense(self.num_classes, name="head")(x)
