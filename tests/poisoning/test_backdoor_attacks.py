"""The blended (Chen et al. 2017), clean-label (Turner et al. 2019) and hidden-trigger (Saha et al. 2020)
backdoors: the poisoned sets they build, the gradients their crafting loops follow (float64 central finite
differences on a tiny network) and their argument checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from poisoning import triggers
from poisoning.attacks import chen2017, saha2020, turner2019

K = 4


def tiny_net(key, d_in=36, hidden=5):
    k1, k2 = jax.random.split(key)
    v = {"W1": jax.random.normal(k1, (d_in, hidden), jnp.float64) / np.sqrt(d_in),
         "W2": jax.random.normal(k2, (hidden, K), jnp.float64)}
    return v


def feature_fn(v, x):
    return jnp.tanh(x.reshape(x.shape[0], -1) @ v["W1"])


def apply_fn(v, x):
    return feature_fn(v, x) @ v["W2"]


@pytest.fixture(scope="module")
def data():
    key = jax.random.key(0)
    x = np.asarray(jax.random.uniform(key, (40, 6, 6, 1), jnp.float64))
    y = (np.arange(40) % K).astype(np.int32)
    return x, y, tiny_net(jax.random.key(1))


def directional_fd(f, x, v, h=1e-6):
    return (f(x + h * v) - f(x - h * v)) / (2 * h)


def check_gradient(f, grad, x, n_dirs=3, seed=0):
    f = jax.jit(f)
    rng = np.random.default_rng(seed)
    for _ in range(n_dirs):
        v = rng.standard_normal(x.shape)
        np.testing.assert_allclose(float(jnp.vdot(grad, v)), float(directional_fd(f, x, v)), rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------------------------------------
# blended
# ------------------------------------------------------------------------------------------------
def test_blended_poisons_are_the_blend_relabelled_and_the_test_alpha_changes_only_alpha(data):
    x, y, _ = data
    cfg = chen2017.BlendedConfig(alpha=0.2, test_alpha=0.5, rate=0.25)
    trig = chen2017.make_trigger(jax.random.key(3), x.shape[1:], cfg)
    ps = chen2017.poison_dataset(jax.random.key(4), x, y, trig, cfg, target=1, num_classes=K)
    p = ps.is_poison
    assert p.sum() == 10 and np.all(ps.labels[p] == 1) and np.all(y[p] != 1)      # drawn from other classes
    want = 0.8 * x[p] + 0.2 * np.asarray(trig.pattern)[None]
    np.testing.assert_allclose(ps.images[p], want, rtol=1e-12)
    np.testing.assert_array_equal(ps.images[~p], x[~p])
    np.testing.assert_array_equal(ps.labels[~p], y[~p])
    t2 = chen2017.eval_trigger(trig, cfg.test_alpha)
    assert float(t2.alpha) == 0.5 and t2.pattern is trig.pattern


def test_blend_loss_gradient_in_alpha_matches_finite_differences(data):
    x, _, v = data
    trig = chen2017.make_trigger(jax.random.key(3), x.shape[1:])

    @jax.jit
    def f(a):
        return chen2017.blend_loss(apply_fn, v, triggers.Blend(trig.pattern, a), x[:8], 2)

    g = jax.jit(jax.grad(lambda t: chen2017.blend_loss(apply_fn, v, t, x[:8], 2)))(trig)   # a Blend of gradients
    np.testing.assert_allclose(float(g.alpha), float(directional_fd(f, jnp.asarray(0.2), 1.0)), rtol=1e-6)
    assert g.pattern.shape == trig.pattern.shape


def test_blended_argument_errors(data):
    x, y, _ = data
    trig = chen2017.make_trigger(jax.random.key(3), x.shape[1:])
    with pytest.raises(ValueError, match="alpha"):
        chen2017.BlendedConfig(alpha=1.5)
    with pytest.raises(ValueError, match="rate"):
        chen2017.BlendedConfig(rate=0.0)
    with pytest.raises(ValueError, match="target"):
        chen2017.poison_dataset(jax.random.key(0), x, y, trig, target=K, num_classes=K)
    with pytest.raises(ValueError, match="eligible"):                               # more poisons than images
        chen2017.poison_dataset(jax.random.key(0), x, y, trig, chen2017.BlendedConfig(rate=0.9), target=1,
                                num_classes=K)
    with pytest.raises(TypeError, match="Blend"):
        chen2017.poison_dataset(jax.random.key(0), x, y, triggers.badnets_pixel(), target=1, num_classes=K)


# ------------------------------------------------------------------------------------------------
# clean-label
# ------------------------------------------------------------------------------------------------
def test_clean_label_pgd_gradient_matches_finite_differences(data):
    x, y, v = data
    xb = jnp.asarray(x[:6])
    g = jax.jit(turner2019.input_gradient, static_argnums=0)(apply_fn, v, xb, jnp.asarray(y[:6]))
    check_gradient(lambda z: turner2019.adversarial_loss(apply_fn, v, z, jnp.asarray(y[:6])), g, xb)


def test_clean_label_perturbation_stays_in_the_ball_and_raises_the_loss(data):
    x, y, v = data
    cfg = turner2019.CleanLabelConfig(eps=0.05, steps=8, batch_size=16)       # 3 padded batches, one compile
    adv = turner2019.perturb(apply_fn, v, x, y, cfg)
    assert adv.shape == x.shape
    assert float(jnp.max(jnp.abs(adv - x))) <= 0.05 + 1e-12 and float(adv.min()) >= 0 and float(adv.max()) <= 1
    before = turner2019.adversarial_loss(apply_fn, v, jnp.asarray(x), jnp.asarray(y))
    after = turner2019.adversarial_loss(apply_fn, v, adv, jnp.asarray(y))
    assert float(after) > float(before) + 0.5
    # batching is invisible: one batch gives the same poisons
    one = turner2019.perturb(apply_fn, v, x, y, turner2019.CleanLabelConfig(eps=0.05, steps=8, batch_size=40))
    np.testing.assert_allclose(np.asarray(one), np.asarray(adv), atol=1e-12)


def test_clean_label_poisons_keep_their_labels_and_carry_the_corner_trigger(data):
    x, y, v = data
    cfg = turner2019.CleanLabelConfig(eps=0.05, steps=3, amplitude=0.5, corners=4, rate=0.1)
    ps = turner2019.poison_dataset(jax.random.key(2), apply_fn, v, x, y, cfg, target=3, num_classes=K)
    p = ps.is_poison
    assert p.sum() == 4 and np.all(y[p] == 3)
    np.testing.assert_array_equal(ps.labels, y)                                     # labels unchanged
    np.testing.assert_array_equal(ps.images[~p], x[~p])
    adv = np.asarray(turner2019.perturb(apply_fn, v, x[p], y[p], cfg, key=jax.random.split(jax.random.key(2))[1]))
    # the four 3x3 corners hold (1 - a) x + a P with P the checkerboard (bright in its corners)
    for r, c in ((0, 0), (0, 3), (3, 0), (3, 3)):
        win, base = ps.images[p][:, r:r + 3, c:c + 3, 0], adv[:, r:r + 3, c:c + 3, 0]
        board = ((np.add.outer(np.arange(3), np.arange(3)) % 2) == 0).astype(float)
        np.testing.assert_allclose(win, 0.5 * base + 0.5 * board[None], atol=1e-6)
    full = turner2019.eval_trigger(1, cfg)
    assert len(full) == 4 and all(float(np.min(t.mask)) == 1.0 for t in full)


def test_clean_label_argument_errors(data):
    x, y, v = data
    for bad in ({"eps": 0.0}, {"eps": 2.0}, {"steps": 0}, {"amplitude": 0.0}, {"corners": 2}, {"rate": 1.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            turner2019.CleanLabelConfig(**bad)
    with pytest.raises(ValueError, match="only 10"):                                # more poisons than the class
        turner2019.poison_dataset(jax.random.key(0), apply_fn, v, x, y, target=1, n_poison=11, num_classes=K)
    with pytest.raises(ValueError, match="target"):
        turner2019.poison_dataset(jax.random.key(0), apply_fn, v, x, y, target=-1, num_classes=K)
    with pytest.raises(ValueError, match="labels"):
        turner2019.perturb(apply_fn, v, x, y[:3])


# ------------------------------------------------------------------------------------------------
# hidden trigger
# ------------------------------------------------------------------------------------------------
def test_patch_at_is_the_patch_trigger_at_any_location(data):
    x = jnp.asarray(data[0][:5])
    patch = triggers.Patch(jnp.asarray(np.random.default_rng(0).uniform(size=(2, 2, 1))), jnp.full((2, 2), 0.7),
                           row=1, col=3)
    got = jax.jit(saha2020.patch_at)(patch, x, jnp.full(5, 1), jnp.full(5, 3))
    np.testing.assert_allclose(np.asarray(got), np.asarray(triggers.apply(patch, x)), atol=1e-12)
    moved = jax.jit(saha2020.patch_at_random)(jax.random.key(0), patch, x)
    changed = np.any(np.asarray(moved) != np.asarray(x), axis=(1, 2, 3))
    assert changed.all() and moved.shape == x.shape


def test_hidden_trigger_collision_gradient_and_nearest_pairing(data):
    x, _, v = data
    z, s = jnp.asarray(x[:5]), jnp.asarray(x[10:17])
    Fz, Fs = feature_fn(v, z), feature_fn(v, s)
    brute = np.argmin(((np.asarray(Fz)[:, None] - np.asarray(Fs)[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(np.asarray(saha2020.pair_nearest(Fz, Fs)), brute)
    g = jax.jit(saha2020.collision_gradient, static_argnums=0)(feature_fn, v, z, s)
    check_gradient(lambda w: saha2020.collision_loss(feature_fn, v, w, s), g, z)


def test_hidden_trigger_crafting_moves_features_within_the_budget(data):
    x, y, v = data
    patch = triggers.badnets_pattern(1, margin=0)
    cfg = saha2020.HiddenTriggerConfig(eps=0.1, steps=40, lr=0.02, rate=0.1)
    ps, rec = saha2020.poison_dataset(jax.random.key(5), feature_fn, v, x, y, patch, cfg, target=0, source=2,
                                      num_classes=K)
    p = ps.is_poison
    assert p.sum() == 4 and np.all(y[p] == 0)
    np.testing.assert_array_equal(ps.labels, y)                                     # clean label
    np.testing.assert_array_equal(ps.images[~p], x[~p])
    assert np.max(np.abs(ps.images[p] - x[p])) <= 0.1 + 1e-12
    assert ps.images.min() >= 0 and ps.images.max() <= 1
    assert float(rec.loss) < 0.7 * float(rec.loss_start)                            # features moved toward them
    assert rec.history.shape == (40,)


def test_hidden_trigger_argument_errors(data):
    x, y, v = data
    patch = triggers.badnets_pattern(1, margin=0)
    for bad in ({"eps": 0.0}, {"eps": float("nan")}, {"steps": 0}, {"lr": -1.0}, {"sources_per_step": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            saha2020.HiddenTriggerConfig(**bad)
    with pytest.raises(ValueError, match="source"):
        saha2020.poison_dataset(jax.random.key(0), feature_fn, v, x, y, patch, target=1, source=1, num_classes=K)
    with pytest.raises(ValueError, match="target"):
        saha2020.poison_dataset(jax.random.key(0), feature_fn, v, x, y, patch, target=K, num_classes=K)
    with pytest.raises(ValueError, match="only 10"):
        saha2020.poison_dataset(jax.random.key(0), feature_fn, v, x, y, patch, target=1, n_poison=20, num_classes=K)
    with pytest.raises(TypeError, match="Patch"):
        saha2020.craft(feature_fn, v, x[:2], x[2:4], triggers.random_blend(jax.random.key(0), (6, 6)),
                       jax.random.key(0))
