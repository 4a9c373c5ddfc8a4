"""The baseline MNIST network of BadNets (Gu, Dolan-Gavitt & Garg 2017, Table 1).

=====  ==========  =============  ======  ==========  ==========
layer  input       filter         stride  output      activation
=====  ==========  =============  ======  ==========  ==========
conv1  1x28x28     16x1x5x5       1       16x24x24    ReLU
pool1  16x24x24    average, 2x2   2       16x12x12
conv2  16x12x12    32x16x5x5      1       32x8x8      ReLU
pool2  32x8x8      average, 2x2   2       32x4x4
fc1    32x4x4                             512         ReLU
fc2    512                                10          softmax
=====  ==========  =============  ======  ==========  ==========

281,034 parameters for 10 classes (416 + 12,832 + 262,656 + 5,130). ``width`` (conv1 filters;
conv2 has twice as many) and ``hidden`` (fc1) are knobs for small CPU runs; the defaults are the
paper's. The penultimate features are fc1's 512 activations.

Reference: T. Gu, B. Dolan-Gavitt, S. Garg, *BadNets: Identifying Vulnerabilities in the Machine
Learning Model Supply Chain*, arXiv:1708.06733 (2017); IEEE Access 7 (2019).
"""

from __future__ import annotations

import flax.linen as nn

from poisoning.models._common import avg_pool, Conv, ImageClassifier

__all__ = ["BadNetsCNN"]


class BadNetsCNN(ImageClassifier):
    """BadNets' two-convolution, two-dense MNIST classifier (see the module docstring)."""

    width: int = 16
    hidden: int = 512

    @nn.compact
    def __call__(self, x, train: bool = False, features: bool = False):
        x = self.prepare(x)
        x = nn.relu(Conv(self.width, (5, 5), conv=self.conv, padding="VALID", name="conv1")(x))
        x = avg_pool(x, 2)
        x = nn.relu(Conv(2 * self.width, (5, 5), conv=self.conv, padding="VALID", name="conv2")(x))
        x = avg_pool(x, 2)
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(self.hidden, name="fc1")(x))
        if features:
            return x
        return nn.Dense(self.num_classes, name="head")(x)
