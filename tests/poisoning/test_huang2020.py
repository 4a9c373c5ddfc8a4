"""MetaPoison: the gradient through K unrolled training steps of an ensemble, and the crafting loop."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from poisoning.attacks import huang2020 as mp
from poisoning.training import TrainConfig, init_state


class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False, features: bool = False):
        x = nn.relu(nn.Conv(2, (3, 3), strides=(2, 2))(x))
        return nn.Dense(3)(x.reshape(x.shape[0], -1))


def _ensemble(cfg, x, dtype, members=2):
    states = [init_state(Tiny(), cfg, x, jax.random.key(i), dtype=dtype) for i in range(members)]
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *states)


def test_gradient_through_unrolled_steps_matches_central_differences_in_float64():
    rng = np.random.default_rng(0)
    cfg = TrainConfig(batch_size=6, learning_rate=0.3, momentum=0.9, compute_dtype="float64")
    poisons = jnp.asarray(rng.uniform(size=(3, 6, 6, 1)))
    labels = jnp.asarray([0, 1, 2])
    cx, cy = jnp.asarray(rng.uniform(size=(2, 3, 6, 6, 1))), jnp.asarray(rng.integers(0, 3, (2, 3)))
    t, y_adv = jnp.asarray(rng.uniform(size=(1, 6, 6, 1))), jnp.asarray([1])
    states = _ensemble(cfg, poisons, jnp.float64)
    f = jax.jit(lambda p: mp.adversarial_loss(Tiny(), cfg, states, p, labels, cx, cy, t, y_adv, jax.random.key(0)))
    d = jnp.asarray(rng.standard_normal(poisons.shape))
    g = jax.jit(jax.grad(f))(poisons)
    h = 1e-6
    fd = (f(poisons + h * d) - f(poisons - h * d)) / (2 * h)
    assert abs(float(fd)) > 1e-6  # the unrolled steps make the target's loss depend on the poisons
    np.testing.assert_allclose(float(jnp.vdot(g, d)), float(fd), rtol=1e-6)


def test_craft_lowers_the_adversarial_loss_inside_the_ball_and_advances_the_ensemble():
    rng = np.random.default_rng(1)
    cfg = TrainConfig(batch_size=8, learning_rate=0.3, momentum=0.0)
    x = jnp.asarray(rng.uniform(size=(20, 6, 6, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, 20))
    t, y_adv = x[:1], jnp.asarray([(int(y[0]) + 1) % 3])
    states = _ensemble(cfg, x, jnp.float32)
    run = jax.jit(lambda s, mc: mp.craft(Tiny(), cfg, s, x[1:4], y[1:4], (x, y), t, y_adv, jax.random.key(0), mc),
                  static_argnums=1)
    # a fixed ensemble: the loss after the unrolled steps falls as the poisons move
    fixed = mp.MetaConfig(eps=0.2, steps=15, unroll=2, lr=0.02, clean_batch=4, advance=False)
    res, same = run(states, fixed)
    assert np.abs(np.asarray(res.poisons - x[1:4])).max() <= 0.2 + 1e-6
    assert float(res.history[-3:].mean()) < float(res.history[:3].mean())
    assert np.array_equal(np.asarray(same.step), np.asarray(states.step))
    # staggered training: each member takes one step on poisoned data per crafting step
    _, after = run(states, dataclasses.replace(fixed, advance=True))
    assert np.array_equal(np.asarray(after.step), np.asarray(states.step) + 15)
    with pytest.raises(ValueError, match="'unroll'"):
        mp.MetaConfig(unroll=0)
    with pytest.raises(ValueError, match="'clean'"):
        mp.craft(Tiny(), cfg, states, x[1:4], y[1:4], (x[:2], y[:2]), t, y_adv, jax.random.key(0), fixed)
