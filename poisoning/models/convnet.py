"""A small five-layer ConvNet, the one of Geiping et al. (2021, "Witches' Brew") for CIFAR-10.

Five 3x3 convolutions with ``w, 2w, 2w, 4w, 4w`` filters and ReLU, a 3x3 max-pool (stride 3) after
the fourth and the fifth, and a dense head on the flattened ``3 x 3 x 4w = 36w`` features (32x32
input). With ``width=32`` and 10 classes it has 289,290 parameters. ``batch_norm=True`` adds a
BatchNorm after every convolution (convolutions then have no bias), which makes short CPU runs
train more reliably; ``width`` is the knob for CPU protocols.

Reference: J. Geiping, L. Fowl, W. R. Huang, W. Czaja, G. Taylor, M. Moeller, T. Goldstein,
*Witches' Brew: Industrial Scale Data Poisoning via Gradient Matching*, ICLR 2021 (the ``ConvNet``
of their ``forest/victims/models.py``).
"""

from __future__ import annotations

import flax.linen as nn

from poisoning.models._common import batch_norm, Conv, conv_init, ImageClassifier, max_pool

__all__ = ["ConvNet"]


class ConvNet(ImageClassifier):
    """Five convolutions, two 3x3 max-pools, one dense head (see the module docstring)."""

    width: int = 32
    batch_norm: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False, features: bool = False):
        x = self.prepare(x)
        w = self.width
        for i, (c, pool) in enumerate(((w, False), (2 * w, False), (2 * w, False), (4 * w, True), (4 * w, True))):
            x = Conv(c, (3, 3), conv=self.conv, padding=1, use_bias=not self.batch_norm, kernel_init=conv_init, name=f"conv{i}")(x)
            if self.batch_norm:
                x = batch_norm(train, name=f"bn{i}")(x)
            x = nn.relu(x)
            if pool:
                x = max_pool(x, 3)
        x = x.reshape(x.shape[0], -1)
        if features:
            return x
        return nn.Dense(self.num_classes, name="head")(x)
