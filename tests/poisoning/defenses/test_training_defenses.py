"""Training-time defenses: DP-SGD (and its accountant), adversarial poisoning, Gaussian augmentation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import integrate, stats

from poisoning.attacks.geiping2021 import gradient_matching_loss
from poisoning.defenses.adversarial_poisoning import AdversarialPoisoning
from poisoning.defenses.dp_sgd import DPSGD, dp_epsilon, rdp_sampled_gaussian
from poisoning.defenses.gaussian_augmentation import GaussianAugmentation
from poisoning.training import TrainConfig, init_state, train, train_step


class Tiny(nn.Module):
    batch_norm: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False, features: bool = False):
        x = nn.relu(nn.Conv(2, (3, 3), strides=(2, 2))(x))
        if self.batch_norm:
            x = nn.BatchNorm(use_running_average=not train)(x)
        return nn.Dense(3)(x.reshape(x.shape[0], -1))


def _data(n=8, dtype=jnp.float64):
    rng = np.random.default_rng(0)
    return jnp.asarray(rng.uniform(size=(n, 6, 6, 1)), dtype), jnp.asarray(rng.integers(0, 3, n))


CFG = TrainConfig(batch_size=8, learning_rate=0.5, momentum=0.0, compute_dtype="float64")


def _state(model=Tiny(), x=None):
    x = _data()[0] if x is None else x
    return init_state(model, CFG, x, jax.random.key(0), dtype=jnp.float64)


def test_rdp_matches_the_gaussian_closed_form_and_a_quadrature_of_its_definition():
    orders = np.arange(2, 7)
    np.testing.assert_allclose(rdp_sampled_gaussian(1.0, 1.3, orders), orders / (2 * 1.3 ** 2), rtol=1e-12)
    q, s = 0.1, 1.5
    for a in (2, 3, 5):  # D_a(mu || mu0), mu = (1-q) N(0, s^2) + q N(1, s^2), by numerical integration
        f = lambda z: stats.norm.pdf(z, 0, s) * ((1 - q) + q * np.exp((2 * z - 1) / (2 * s ** 2))) ** a
        val = integrate.quad(f, -40, 40, limit=200)[0]
        np.testing.assert_allclose(rdp_sampled_gaussian(q, s, [a])[0], np.log(val) / (a - 1), rtol=1e-8)
    e1, _ = dp_epsilon(1.0, 0.01, 1000, 1e-5)
    e2, _ = dp_epsilon(2.0, 0.01, 1000, 1e-5)
    e3, _ = dp_epsilon(1.0, 0.01, 4000, 1e-5)
    assert 0 < e2 < e1 < e3 < np.inf and dp_epsilon(0.0, 0.01, 10, 1e-5)[0] == np.inf
    for bad, match in (((1.0, 0.0, 10, 1e-5), "'sample_rate'"), ((1.0, 0.1, 0, 1e-5), "'steps'"),
                       ((1.0, 0.1, 10, 1.5), "'delta'")):
        with pytest.raises(ValueError, match=match):
            dp_epsilon(*bad)


def test_dpsgd_step_clips_each_example_adds_the_stated_noise_and_reduces_to_sgd():
    model, (x, y) = Tiny(), _data()
    st = _state(model, x)
    key = jax.random.key(1)
    run = jax.jit(lambda d, s: d(model, s, (x, y), key, CFG)[0], static_argnums=0)

    @jax.jit
    def grad_i(i):  # one example's gradient, by itself
        return jax.grad(lambda p: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
            model.apply({"params": p}, x[i][None]), y[i][None])))(st.params)

    C = 1.3  # between the smallest and the largest per-example norm (1.1-1.8): some are clipped, some not
    per = [grad_i(i) for i in range(len(y))]
    norms = [float(optax.tree_utils.tree_norm(g)) for g in per]
    assert min(norms) < C < max(norms), norms
    clipped_sum = jax.tree_util.tree_map(lambda *gs: sum(
        g * min(1.0, C / float(optax.tree_utils.tree_norm(full))) for g, full in zip(gs, per)), *per)
    clipped = run(DPSGD(l2_clip=C, noise_multiplier=0.0), st)
    want = jax.tree_util.tree_map(lambda p, g: p - CFG.learning_rate * g / len(y), st.params, clipped_sum)
    for a, b in zip(jax.tree_util.tree_leaves(clipped.params), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    sigma = 3.0
    noisy = run(DPSGD(l2_clip=C, noise_multiplier=sigma), st)
    resid = np.concatenate([np.ravel((b - a) / -CFG.learning_rate) for a, b in zip(
        jax.tree_util.tree_leaves(clipped.params), jax.tree_util.tree_leaves(noisy.params))])
    sd = sigma * C / len(y)
    assert abs(resid.std() / sd - 1) < 0.25 and abs(resid.mean()) < 4 * sd / np.sqrt(resid.size)
    with pytest.raises(ValueError, match="BatchNorm"):
        DPSGD()(Tiny(batch_norm=True), _state(Tiny(batch_norm=True), x), (x, y), key, CFG)
    with pytest.raises(ValueError, match="'l2_clip'"):
        DPSGD(l2_clip=0.0)


def test_adversarial_poisoning_crafts_inside_the_ball_and_trains_through_the_step_door():
    model, (x, y) = Tiny(), _data()
    st = _state(model, x)
    d = AdversarialPoisoning(eps=0.1, steps=4, lr=0.03, fraction=0.25, num_classes=3)
    xp = jax.jit(d.poison_batch, static_argnums=0)(model, st, x, y, jax.random.key(2))
    m = 2
    assert np.array_equal(np.asarray(xp[m:]), np.asarray(x[m:]))
    delta = np.asarray(xp[:m] - x[:m])
    assert 0 < np.abs(delta).max() <= 0.1 + 1e-12 and float(xp.min()) >= 0 and float(xp.max()) <= 1
    # the crafted poisons match the targets' wrong-label gradient better than the clean images do
    wrong = (y[m:2 * m] + jax.random.randint(jax.random.split(jax.random.key(2))[1], (m,), 1, 3)) % 3
    apply_fn = lambda v, z: model.apply(v, z, train=False)
    v = {"params": st.params}
    assert float(gradient_matching_loss(apply_fn, v, xp[:m], y[:m], x[m:2 * m], wrong)) < \
        float(gradient_matching_loss(apply_fn, v, x[:m], y[:m], x[m:2 * m], wrong))
    out = train(model, st, (x, y), CFG.replace(epochs=2), step=d)
    assert int(out.step) == 2 and all(np.isfinite(np.asarray(a)).all() for a in jax.tree_util.tree_leaves(out.params))
    with pytest.raises(ValueError, match="'fraction'"):
        AdversarialPoisoning(fraction=0.9)
    with pytest.raises(TypeError, match="'step'"):
        train(model, st, (x, y), CFG, step="sgd")


def test_gaussian_augmentation_perturbs_the_training_images_only_by_its_noise():
    model, (x, y) = Tiny(), _data()
    st = _state(model, x)
    key = jax.random.key(3)
    tiny, _ = GaussianAugmentation(std=1e-12)(model, st, (x, y), key, CFG)
    plain, _ = train_step(model, st, (x, y), key, CFG)
    big, _ = GaussianAugmentation(std=0.5)(model, st, (x, y), key, CFG)
    leaves = lambda s: np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(s.params)])
    np.testing.assert_allclose(leaves(tiny), leaves(plain), rtol=1e-8, atol=1e-10)
    assert np.abs(leaves(big) - leaves(plain)).max() > 1e-3
    with pytest.raises(ValueError, match="'std'"):
        GaussianAugmentation(std=-1.0)
