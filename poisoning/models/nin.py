"""Network-in-Network (Lin, Chen & Yan 2014), the variant of Deep Partition Aggregation.

Levine & Feizi (2021) train their DPA base classifiers with the NiN of Gidaris et al. (2018,
``FeatureLearningRotNet/architectures/NetworkInNetwork.py``, 3 stages): each stage is a KxK
convolution followed by two 1x1 convolutions ("mlpconv"), every convolution without bias and followed
by BatchNorm and ReLU:

- stage 1: 5x5 -> 192, 1x1 -> 160, 1x1 -> 96, then 3x3 max-pool, stride 2, padding 1;
- stage 2: 5x5 -> 192, 1x1 -> 192, 1x1 -> 192, then 3x3 average pool, stride 2, padding 1
  (padding counted in the average, PyTorch's default);
- stage 3: 3x3 -> 192, 1x1 -> 192, 1x1 -> 192;

then global average pooling and a dense head. 1,005,642 parameters for CIFAR-10 (3 input channels,
10 classes) and 996,042 for MNIST (1 channel). ``channels = (c1, c2, c3)`` (default
(192, 160, 96)) are the knobs for CPU protocols. The penultimate features are the 192 pooled
channels.

References: M. Lin, Q. Chen, S. Yan, *Network In Network*, ICLR 2014; S. Gidaris, P. Singh,
N. Komodakis, *Unsupervised Representation Learning by Predicting Image Rotations*, ICLR 2018;
A. Levine, S. Feizi, *Deep Partition Aggregation: Provable Defenses against General Poisoning
Attacks*, ICLR 2021.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from poisoning.models._common import batch_norm, Conv, conv_init, ImageClassifier

__all__ = ["NetworkInNetwork"]


class NetworkInNetwork(ImageClassifier):
    """Three mlpconv stages (see the module docstring)."""

    channels: Sequence[int] = (192, 160, 96)

    @nn.compact
    def __call__(self, x, train: bool = False, features: bool = False):
        x = self.prepare(x)
        c1, c2, c3 = self.channels

        def block(x, features, kernel, name):
            x = Conv(features, (kernel, kernel), conv=self.conv, padding=kernel // 2, use_bias=False,
                     kernel_init=conv_init, name=name)(x)
            return nn.relu(batch_norm(train, name=name + "_bn")(x))

        x = block(x, c1, 5, "stage1_conv1")
        x = block(x, c2, 1, "stage1_conv2")
        x = block(x, c3, 1, "stage1_conv3")
        x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        x = block(x, c1, 5, "stage2_conv1")
        x = block(x, c1, 1, "stage2_conv2")
        x = block(x, c1, 1, "stage2_conv3")
        x = nn.avg_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)), count_include_pad=True)
        x = block(x, c1, 3, "stage3_conv1")
        x = block(x, c1, 1, "stage3_conv2")
        x = block(x, c1, 1, "stage3_conv3")
        x = jnp.mean(x, axis=(1, 2))
        if features:
            return x
        return nn.Dense(self.num_classes, name="head")(x)
