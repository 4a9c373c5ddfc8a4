"""VGG-11 with BatchNorm for 32x32 images (Simonyan & Zisserman 2015, configuration "A").

Eight 3x3 convolutions (with bias) with 64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M
filters (M = 2x2 max-pool), each followed by BatchNorm and ReLU, then a dense head on the
``1 x 1 x 512`` map: the CIFAR variant of the poisoning benchmark (Schwarzschild et al. 2021) and of
Kuang Liu's ``pytorch-cifar``, whose classifier is one dense layer instead of the paper's three
(4096, 4096, 1000) of the ImageNet network. 9,231,114 parameters for 10 classes. ``width``
scales every layer (64 is the paper's). The penultimate features are the flattened last map.

Reference: K. Simonyan, A. Zisserman, *Very Deep Convolutional Networks for Large-Scale Image
Recognition*, ICLR 2015, Table 1 (A).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn

from poisoning.models._common import batch_norm, Conv, ImageClassifier, max_pool

__all__ = ["VGG", "VGG11_CONFIG"]

VGG11_CONFIG = (1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M")  # multiples of ``width``


class VGG(ImageClassifier):
    """VGG with BatchNorm; ``config`` lists filter multiples of ``width`` and ``"M"`` (max-pool)."""

    width: int = 64
    config: Sequence[int | str] = VGG11_CONFIG

    @nn.compact
    def __call__(self, x, train: bool = False, features: bool = False):
        x = self.prepare(x)
        i = 0
        for item in self.config:
            if item == "M":
                x = max_pool(x, 2)
            else:
                x = Conv(int(item) * self.width, (3, 3), conv=self.conv, padding=1, name=f"conv{i}")(x)
                x = nn.relu(batch_norm(train, name=f"bn{i}")(x))
                i += 1
        x = x.reshape(x.shape[0], -1)
        if features:
            return x
        return nn.Dense(self.num_classes, name="head")(x)
