"""A tiny model and data set shared by the training tests (compiled once per test process)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from poisoning.models._common import Conv, batch_norm, prepare_input
from poisoning.training import Augment, TrainConfig

# The "rbg" generator compiles much faster than threefry on XLA:CPU; the engine takes any key.
def key(i: int):
    return jax.random.key(i, impl="rbg")


class TinyCNN(nn.Module):
    """Two convolutions (the second strided), BatchNorm, average pooling and a dense head; tanh keeps
    the training map smooth for finite differences (with ReLU, the parameters after two or more steps
    jump where an activation changes sign). The registry's models are tested in tests/poisoning/models."""

    num_classes: int = 3
    conv: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool = False, features: bool = False):
        x = prepare_input(x, None, None)
        x = jnp.tanh(batch_norm(train)(Conv(3, (3, 3), conv=self.conv, padding=1, use_bias=False)(x)))
        x = nn.avg_pool(x, (3, 3), (3, 3))
        x = jnp.tanh(Conv(4, (3, 3), conv=self.conv, strides=2, padding=1)(x))
        x = jnp.mean(x, axis=(1, 2))
        if features:
            return x
        return nn.Dense(self.num_classes, name="head")(x)


MODEL = TinyCNN()  # 9x9 single-channel images
CONFIG = TrainConfig(epochs=2, batch_size=8, learning_rate=0.1, weight_decay=1e-3, schedule="cosine",
                     augment=Augment(crop_padding=1, flip=True))
N = 24
STEPS = N // CONFIG.batch_size


def data(seed: int = 0, n: int = N):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n).astype(np.int32)
    x = rng.random((n, 9, 9, 1), dtype=np.float32) * 0.5
    x[np.arange(n), 3 * y + 1, 4, 0] += 1.0  # a learnable signal: a bright pixel in the class-th third
    return x, y


def leaves_equal(a, b) -> bool:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(la, lb))
