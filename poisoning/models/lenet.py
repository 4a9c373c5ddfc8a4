"""LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998), in its common modern form.

C1: 6 filters 5x5 on the 32x32 input (MNIST's 28x28 padded by 2 pixels, as in the paper), ReLU,
S2: 2x2 max-pool; C3: 16 filters 5x5, ReLU, S4: 2x2 max-pool; C5: 120 units (a 5x5 convolution on
a 5x5 map, i.e. a dense layer on 400 inputs), F6: 84 units, output: ``num_classes`` units.

Differences from the 1998 network, which the parameter counts show: C3 connects every S2 map (the
paper's sparse table of 60 connections has 1,516 parameters, ours 2,416), the subsampling layers
have no trainable coefficient (the paper's S2/S4 have 12 and 32) and the output is a dense layer
(850 parameters) instead of 84x10 Euclidean RBF units (840). C1 (156), C5 (48,120) and F6
(10,164) are the paper's. Total: 61,706 for 10 classes.

Reference: Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, *Gradient-Based Learning Applied to Document
Recognition*, Proc. IEEE 86(11), 1998, Sec. II.B.
"""

from __future__ import annotations

import flax.linen as nn

from poisoning.models._common import Conv, ImageClassifier, max_pool

__all__ = ["LeNet5"]


class LeNet5(ImageClassifier):
    """LeNet-5 with ReLU and max-pooling (see the module docstring); ``pad`` pixels of zero padding
    before C1 (2 for 28x28 MNIST, 0 for 32x32 input)."""

    pad: int = 2

    @nn.compact
    def __call__(self, x, train: bool = False, features: bool = False):
        x = self.prepare(x)
        p = self.pad
        x = nn.relu(Conv(6, (5, 5), conv=self.conv, padding=((p, p), (p, p)), name="c1")(x))
        x = max_pool(x, 2)
        x = nn.relu(Conv(16, (5, 5), conv=self.conv, padding="VALID", name="c3")(x))
        x = max_pool(x, 2)
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(120, name="c5")(x))
        x = nn.relu(nn.Dense(84, name="f6")(x))
        if features:
            return x
        return nn.Dense(self.num_classes, name="head")(x)
