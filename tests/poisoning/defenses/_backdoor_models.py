"""A tiny backdoored network and its clean twin, trained once per test session for the model-level
defenses (STRIP, Neural Cleanse, fine-pruning).

scikit-learn's digits upsampled to 16x16 (bilinear), the BadNets CNN at width 16 (conv2: 32 channels)
with a 64-unit fc1, the BadNets 3x3 pattern one pixel from the bottom-right corner, every class -> 0 on
10 % of 1,000 training images, 15 epochs of Adam. Measured here: clean accuracy 0.953 (clean twin
0.955), attack success 0.99 (clean twin 0.00). Both models start from the same initialization and see
the same batches, and the two ``train`` calls share one compilation.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Backdoored(NamedTuple):
    model: Any
    backdoored: Any          # TrainState trained on the poisoned set
    clean: Any               # TrainState trained on the clean set (same init, same batches)
    train_config: Any
    trigger: Any
    target: int
    x_train: np.ndarray      # the clean training images (what the defender may fine-tune on)
    y_train: np.ndarray
    x_val: np.ndarray        # held-out clean images (348)
    y_val: np.ndarray
    x_test: np.ndarray       # test images (449)
    y_test: np.ndarray
    x_test_triggered: np.ndarray   # triggered test images of the source classes (every class but 0)

    def accuracy(self, state, model=None):
        from poisoning.training import predict

        m = self.model if model is None else model
        return float(np.mean(np.asarray(predict(m, state, self.x_test)).argmax(-1) == self.y_test))

    def attack_success(self, state, model=None):
        from poisoning.training import predict

        m = self.model if model is None else model
        return float(np.mean(np.asarray(predict(m, state, self.x_test_triggered)).argmax(-1) == self.target))


def numpy_init(model, sample, seed: int = 0) -> dict:
    """Flax variables of ``model`` for inputs shaped like ``sample``: He-normal kernels, zero biases,
    drawn with NumPy (the shapes come from :func:`jax.eval_shape`, so nothing is compiled: on this CPU
    the XLA compilation of a random-number kernel alone takes seconds)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, *sample.shape[1:]), jnp.float32))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        if str(getattr(path[-1], "key", "")) == "bias":
            return jnp.zeros(leaf.shape, leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1]))
        return jnp.asarray(rng.normal(0.0, np.sqrt(2.0 / fan_in), leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@functools.cache
def backdoored_digits() -> Backdoored:
    from scipy.ndimage import zoom

    from poisoning import triggers
    from poisoning.datasets import load_digits
    from poisoning.models import BadNetsCNN
    from poisoning.training import TrainConfig, TrainState, make_optimizer, train

    d = load_digits(flatten=False, seed=0)

    def up(a):
        return np.clip(zoom(np.asarray(a, np.float32), (1, 2, 2), order=1), 0, 1)[..., None]

    x, y = up(d.X_train)[:1000], np.asarray(d.y_train, np.int32)[:1000]
    xv, yv = up(d.X_train)[1000:], np.asarray(d.y_train, np.int32)[1000:]
    xt, yt = up(d.X_test), np.asarray(d.y_test, np.int32)
    trigger, target = triggers.badnets_pattern(1), 0
    # BadNets poisoning (poisoning.attacks.gu2017.poison_dataset, drawn with NumPy): 100 images of the
    # other classes get the trigger and the label 0
    rng = np.random.default_rng(0)
    idx = rng.choice(np.flatnonzero(y != target), 100, replace=False)
    xp, yp = x.copy(), y.copy()
    xp[idx] = np.asarray(triggers.apply(trigger, x[idx]))
    yp[idx] = target
    model = BadNetsCNN(num_classes=10, width=16, hidden=64)
    cfg = TrainConfig(epochs=15, batch_size=50, optimizer="adam", learning_rate=3e-3, momentum=0.9)
    params = numpy_init(model, x)["params"]
    spe = len(x) // cfg.batch_size
    start = TrainState(jnp.zeros((), jnp.int32), params, {}, make_optimizer(cfg, spe).init(params), spe)
    key = jax.random.key(1)
    bad = train(model, start, (jnp.asarray(xp), jnp.asarray(yp)), cfg, key=key)
    clean = train(model, start, (jnp.asarray(x), jnp.asarray(y)), cfg, key=key)
    triggered = np.asarray(triggers.apply(trigger, xt[yt != target]))
    return Backdoored(model, bad, clean, cfg, trigger, target, x, y, xv, yv, xt, yt, triggered)
