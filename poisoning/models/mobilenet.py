"""MobileNetV2 for 32x32 images (Sandler et al. 2018), the CIFAR variant of the poisoning benchmark.

Inverted residual blocks: a 1x1 expansion to ``t * c_in`` channels, a 3x3 depthwise convolution
(strided where the stage downsamples), a linear 1x1 projection to ``c_out``, each with BatchNorm
(ReLU after the first two; the paper uses ReLU6, Kuang Liu's CIFAR code and the benchmark ReLU).
Stages ``(t, c, n, s)``: (1,16,1,1), (6,24,2,1), (6,32,3,2), (6,64,4,2), (6,96,3,1), (6,160,3,2),
(6,320,1,1), after a 3x3 stem of 32 filters with stride 1 (the CIFAR change: stride 1 instead of 2 in
the stem and in the second stage), then a 1x1 convolution to 1280 channels, global average pooling
and a dense head. As in the benchmark's code, stride-1 blocks whose width changes get a 1x1
convolution + BN shortcut (the paper has no shortcut there). 2,296,922 parameters for 10 classes.
``width_mult`` scales every layer (the paper's width multiplier; the last layer stays at 1280).

Reference: M. Sandler, A. Howard, M. Zhu, A. Zhmoginov, L.-C. Chen, *MobileNetV2: Inverted
Residuals and Linear Bottlenecks*, CVPR 2018, Table 2.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from poisoning.models._common import batch_norm, Conv, conv_init, ImageClassifier

__all__ = ["InvertedResidual", "MobileNetV2", "MOBILENETV2_CIFAR_CONFIG"]

MOBILENETV2_CIFAR_CONFIG = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _conv(features, kernel, stride=1, groups=1, name=None, conv="auto"):
    return Conv(features, (kernel, kernel), conv=conv, strides=stride, padding=kernel // 2, use_bias=False,
                feature_group_count=groups, kernel_init=conv_init, name=name)


class InvertedResidual(nn.Module):
    """Expand (1x1) - depthwise (3x3) - project (1x1), with a shortcut when the stride is 1."""

    out_planes: int
    expansion: int
    stride: int
    conv: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool = False):
        planes, c = self.expansion * x.shape[-1], self.conv
        out = nn.relu(batch_norm(train, name="bn1")(_conv(planes, 1, name="expand", conv=c)(x)))
        out = _conv(planes, 3, self.stride, groups=planes, name="depthwise", conv=c)(out)
        out = nn.relu(batch_norm(train, name="bn2")(out))
        out = batch_norm(train, name="bn3")(_conv(self.out_planes, 1, name="project", conv=c)(out))
        if self.stride != 1:
            return out
        if x.shape[-1] != self.out_planes:
            x = batch_norm(train, name="shortcut_bn")(_conv(self.out_planes, 1, name="shortcut", conv=c)(x))
        return out + x


class MobileNetV2(ImageClassifier):
    """MobileNetV2, CIFAR variant (see the module docstring)."""

    width_mult: float = 1.0
    config: Sequence[tuple[int, int, int, int]] = MOBILENETV2_CIFAR_CONFIG
    last_channels: int = 1280

    @nn.compact
    def __call__(self, x, train: bool = False, features: bool = False):
        x = self.prepare(x)

        def scaled(c):
            return max(1, int(round(c * self.width_mult)))

        x = nn.relu(batch_norm(train, name="stem_bn")(_conv(scaled(32), 3, name="stem", conv=self.conv)(x)))
        k = 0
        for t, c, n, s in self.config:
            for j in range(n):
                x = InvertedResidual(scaled(c), t, s if j == 0 else 1, self.conv, name=f"block{k}")(x, train)
                k += 1
        x = nn.relu(batch_norm(train, name="last_bn")(_conv(self.last_channels, 1, name="last", conv=self.conv)(x)))
        x = jnp.mean(x, axis=(1, 2))
        if features:
            return x
        return nn.Dense(self.num_classes, name="head")(x)
