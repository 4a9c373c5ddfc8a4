"""Sponge poisoning: the l0 density, its smooth surrogate's gradient, and training that raises it."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from poisoning.attacks.cina2022 import SpongeTraining, activation_density, energy_surrogate, relu_inputs
from poisoning.training import TrainConfig, init_state, train


class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False, features: bool = False):
        h = nn.relu(nn.Conv(3, (3, 3), strides=(2, 2), name="conv")(x))
        h = nn.relu(nn.Dense(5, name="hidden")(h.reshape(h.shape[0], -1)))
        return nn.Dense(3, name="head")(h)


def _setup(dtype=jnp.float64, n=6):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(-1, 1, size=(n, 6, 6, 1)), dtype)
    v = jax.tree_util.tree_map(lambda a: a.astype(dtype), Tiny().init(jax.random.key(0), x))
    return x, v


def test_density_counts_the_relu_outputs_by_hand_and_the_surrogate_gradient_matches_differences():
    x, v = _setup()
    p = v["params"]
    pre1 = jax.lax.conv_general_dilated(x, p["conv"]["kernel"], (2, 2), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["conv"]["bias"]
    h1 = jax.nn.relu(pre1).reshape(x.shape[0], -1)
    pre2 = h1 @ p["hidden"]["kernel"] + p["hidden"]["bias"]
    want = (np.sum(pre1 > 0) + np.sum(pre2 > 0)) / (pre1.size + pre2.size)
    assert float(activation_density(Tiny(), v, x)) == pytest.approx(float(want), abs=1e-12)
    acts, logits = relu_inputs(Tiny(), v, x)
    assert len(acts) == 2 and logits.shape == (6, 3)

    def f(params):
        return jnp.mean(energy_surrogate(relu_inputs(Tiny(), {"params": params}, x)[0], sigma=0.05))

    f = jax.jit(f)
    g = jax.jit(jax.grad(f))(p)
    d = jax.tree_util.tree_map(lambda a: jnp.asarray(np.random.default_rng(1).standard_normal(a.shape)), p)
    h = 1e-6
    shift = lambda s: jax.tree_util.tree_map(lambda a, b: a + s * b, p, d)
    fd = (f(shift(h)) - f(shift(-h))) / (2 * h)
    dot = sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(d)))
    np.testing.assert_allclose(float(dot), float(fd), rtol=1e-6)
    np.testing.assert_allclose(float(jax.jit(lambda a, b: jax.jvp(f, (a,), (b,))[1])(p, d)), float(fd), rtol=1e-6)
    with pytest.raises(ValueError, match="'fraction'"):
        SpongeTraining(fraction=0.0)


def test_sponge_training_raises_the_density_of_a_network_trained_from_scratch():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(0, 1, size=(64, 6, 6, 1)), jnp.float32)
    y = jnp.asarray((np.asarray(x).mean(axis=(1, 2, 3)) > 0.5).astype(np.int32))
    cfg = TrainConfig(epochs=10, batch_size=16, learning_rate=0.05)
    st = init_state(Tiny(), cfg, x, jax.random.key(0), steps_per_epoch=4)
    clean = train(Tiny(), st, (x, y), cfg)
    sponge = train(Tiny(), st, (x, y), cfg, step=SpongeTraining(lam=2.0, sigma=1e-2, fraction=0.5))
    d_clean = float(activation_density(Tiny(), {"params": clean.params}, x))
    d_sponge = float(activation_density(Tiny(), {"params": sponge.params}, x))
    assert d_sponge > d_clean + 0.1, (d_clean, d_sponge)
