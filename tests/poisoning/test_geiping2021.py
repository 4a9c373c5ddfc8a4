"""Witches' Brew (gradient matching): gradients, the budget, and poisons that survive retraining."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from poisoning.attacks import geiping2021 as wb
from poisoning.datasets import load_digits
from poisoning.training import Augment


class TinyCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(3, (3, 3), strides=(2, 2))(x))
        return nn.Dense(4)(x.reshape(x.shape[0], -1))


def _setup(dtype=jnp.float64):
    rng = np.random.default_rng(0)
    net = TinyCNN()
    x = jnp.asarray(rng.uniform(size=(3, 6, 6, 1)), dtype)
    v = jax.tree_util.tree_map(lambda a: a.astype(dtype), net.init(jax.random.PRNGKey(0), x))
    t = jnp.asarray(rng.uniform(size=(1, 6, 6, 1)), dtype)
    return net, v, x, jnp.asarray([0, 1, 2]), t, jnp.asarray([3])


def test_matching_loss_gradient_matches_central_differences_in_float64():
    net, v, x, y, t, y_adv = _setup()
    aug = Augment(crop_padding=1, flip=True)
    key = jax.random.PRNGKey(3)
    f = jax.jit(lambda x_: wb.gradient_matching_loss(net.apply, v, x_, y, t, y_adv, augment=aug, key=key))
    d = jnp.asarray(np.random.default_rng(1).standard_normal(x.shape))
    g = jax.jit(jax.grad(f))(x)
    h = 1e-6
    fd = (f(x + h * d) - f(x - h * d)) / (2 * h)
    np.testing.assert_allclose(float(jnp.sum(g * d)), float(fd), rtol=1e-6)
    # forward mode agrees (a second-order quantity in the parameters)
    np.testing.assert_allclose(float(jax.jit(lambda x_, d_: jax.jvp(f, (x_,), (d_,))[1])(x, d)), float(fd), rtol=1e-6)
    # the loss is 1 - cosine: 0 when the poisons' gradient is the target's (same images, same labels)
    same = wb.gradient_matching_loss(net.apply, v, t, y_adv, t, y_adv)
    assert abs(float(same)) < 1e-12
    # an ensemble averages its members
    ens = wb.gradient_matching_loss(net.apply, (v, v), x, y, t, y_adv)
    np.testing.assert_allclose(float(ens), float(wb.gradient_matching_loss(net.apply, v, x, y, t, y_adv)), rtol=1e-12)


def test_craft_stays_in_budget_lowers_the_loss_and_is_seeded():
    net, v, x, y, t, y_adv = _setup(jnp.float32)
    cfg = wb.BrewConfig(eps=0.1, steps=20, restarts=2, lr=0.05, augment=Augment(flip=True))
    run = jax.jit(lambda k: wb.craft(net.apply, v, x, y, t, y_adv, k, cfg))
    r1, r2 = run(jax.random.PRNGKey(0)), run(jax.random.PRNGKey(0))
    assert np.array_equal(np.asarray(r1.poisons), np.asarray(r2.poisons))
    d = np.asarray(r1.poisons - x)
    assert np.abs(d).max() <= 0.1 + 1e-6 and float(r1.poisons.min()) >= 0 and float(r1.poisons.max()) <= 1
    start = wb.gradient_matching_loss(net.apply, v, x, y, t, y_adv)
    assert float(r1.loss) < float(start) and float(r1.loss) == float(r1.losses.min())
    for bad, match in (({"eps": 0.0}, "'eps'"), ({"restarts": 0}, "'restarts'"), ({"lr": -1.0}, "'lr'")):
        with pytest.raises(ValueError, match=match):
            wb.BrewConfig(**bad)
    with pytest.raises(ValueError, match="'labels'"):
        wb.craft(net.apply, v, x, y[:2], t, y_adv, jax.random.PRNGKey(0), cfg)
    with pytest.raises(ValueError, match="'key'"):
        wb.gradient_matching_loss(net.apply, v, x, y, t, y_adv, augment=Augment(flip=True))


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(nn.relu(nn.Dense(32)(x.reshape(x.shape[0], -1))))


def test_brewed_poisons_raise_the_adversarial_probability_after_retraining_from_scratch():
    """Digits, an MLP trained from scratch (Adam, 300 full-batch steps) with 12 of 600 images (2 %, all
    of the adversarial class) replaced: brewed poisons raise the target's adversarial-class probability
    far above what random noise of the same budget does (measured on 8 targets: 1.9x-570x, 7 of 8
    above 4x; this test runs the first)."""
    ds = load_digits(seed=0)
    X, y = jnp.asarray(ds.X_train[:600], jnp.float32), jnp.asarray(ds.y_train[:600])
    net = MLP()

    @jax.jit
    def train(X, y):
        p = net.init(jax.random.PRNGKey(1), X[:1])["params"]
        opt = optax.adam(0.01)

        def body(c, _):
            p, s = c
            g = jax.grad(lambda q: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(net.apply({"params": q}, X), y)))(p)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        return {"params": jax.lax.scan(body, (p, opt.init(p)), None, length=300)[0][0]}

    v0 = train(X, y)
    cfg = wb.BrewConfig(eps=0.25, steps=100, restarts=2, lr=0.05)
    for i in (0,):
        t = jnp.asarray(ds.X_test[i:i + 1], jnp.float32)
        adv = (int(ds.y_test[i]) + 1) % 10
        idx = jnp.flatnonzero(y == adv)[:12]
        r = wb.craft(net.apply, v0, X[idx], y[idx], t, jnp.asarray([adv]), jax.random.PRNGKey(i), cfg)
        noise = jnp.clip(X[idx] + jax.random.uniform(jax.random.PRNGKey(9), X[idx].shape, X.dtype, -0.25, 0.25), 0, 1)
        p_brew = float(jax.nn.softmax(net.apply(train(X.at[idx].set(r.poisons), y), t))[0, adv])
        p_noise = float(jax.nn.softmax(net.apply(train(X.at[idx].set(noise), y), t))[0, adv])
        assert p_brew > 10 * p_noise, (i, p_brew, p_noise)
