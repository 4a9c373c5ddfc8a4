"""Koh & Liang (2017, §5.2): the influence attack on frozen features (poisoning.attacks.koh2017)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilevel.influence import influence_perturbation
from poisoning import victims
from poisoning.attacks import koh2017 as K
from poisoning.datasets import biggio_protocol, load_digits

_W = np.random.default_rng(1).standard_normal((64, 10)) / 4.0


def random_tanh_features(X):  # a frozen "extractor": one fixed random tanh layer on 8x8 digits
    return jnp.tanh(jnp.asarray(X) @ jnp.asarray(_W, jnp.asarray(X).dtype) - 1.0)


VICTIM = victims.on_features(victims.logistic(1e-2), random_tanh_features)


def _split():  # float64 (the suite runs with x64; the digits are stored in float32)
    s = biggio_protocol(load_digits(), 1, 7, n_train=50, n_val=80, seed=0)
    return dataclasses.replace(s, X_train=np.asarray(s.X_train, np.float64), X_val=np.asarray(s.X_val, np.float64))


def _least_confident_correct(s):
    clean = VICTIM.fit(s.X_train, s.y_train)
    correct = np.flatnonzero(np.asarray(VICTIM.predict(clean, s.X_val)) == s.y_val)
    t = correct[np.argmin(np.abs(np.asarray(VICTIM.decision(clean, s.X_val[correct]))))]
    return clean, s.X_val[t:t + 1], s.y_val[t:t + 1]


def test_influence_gradient_is_i_pert_loss_and_selection_takes_the_largest():
    """d target loss / d x_i = I_pert,loss(z_i, z_t) / n, against bilevel.influence with an explicit Cholesky
    solve of the Hessian (an independent computation), and select_images = the k largest L1 norms."""
    s = _split()
    clean, x_t, y_t = _least_confident_correct(s)
    g = np.asarray(K.influence_gradient(VICTIM, s.X_train, s.y_train, x_t, y_t))
    assert g.shape == s.X_train.shape
    ye = VICTIM.encode(s.y_train, jnp.float64)

    def loss(p, ex):  # the victim's loss on one raw image, through the frozen features
        return VICTIM.loss_fn(p, ex[0][None], ex[1][None])[0]

    ipert = jax.jit(lambda p: influence_perturbation(  # compiled: ~5x faster than eager here
        loss, p, (jnp.asarray(s.X_train), ye), (jnp.asarray(x_t), VICTIM.encode(y_t)), reduction="sum",
        objective=lambda q: VICTIM.train_loss(q, s.X_train, ye, None), linear_solver="cholesky"))(clean)
    n = len(s.y_train)
    assert np.max(np.abs(g)) > 1e-4
    np.testing.assert_allclose(g, np.asarray(ipert) / n, rtol=1e-6, atol=1e-10)
    norms = np.abs(np.asarray(ipert)).sum(axis=1)
    for k in (1, 2, 5):
        idx = K.select_images(VICTIM, s.X_train, s.y_train, x_t, y_t, k, gradient=g)
        assert list(idx) == list(np.argsort(-norms)[:k])
    np.testing.assert_array_equal(K.select_images(VICTIM, s.X_train, s.y_train, x_t, y_t, 3), np.argsort(-norms)[:3])


def test_perturbation_stays_in_the_8bit_box_and_the_pixel_range_labels_unchanged():
    s = _split()
    clean = VICTIM.fit(s.X_train, s.y_train)
    margin = np.asarray(VICTIM.decision(clean, s.X_val)) * (2 * s.y_val - 1)
    t = int(np.argsort(margin)[len(margin) // 2])  # a target of median confidence: not flipped in 8 steps
    x_t, y_t = s.X_val[t:t + 1], s.y_val[t:t + 1]
    for eps, step in ((K.EPS_8BIT, 0.1 / 255), (0.05, 0.02)):  # the paper's box; a larger one
        r = K.attack(VICTIM, s.X_train, s.y_train, x_t, y_t, 3, eps=eps, steps=8, step_size=step)
        d = r.X_perturbed - r.X_original
        assert not r.flipped
        assert np.max(np.abs(d)) == pytest.approx(eps, rel=1e-9)  # it went to the edge of the box ...
        assert np.all(np.abs(d) <= eps + 1e-12)  # ... and no further ...
        assert r.X_perturbed.min() >= 0.0 and r.X_perturbed.max() <= 1.0  # ... inside the pixel range
        assert np.any(r.X_original == 0.0) and np.any(r.X_perturbed == 0.0)  # (the [0, 1] clip is active)
        np.testing.assert_array_equal(r.X_original, s.X_train[r.indices])
        np.testing.assert_array_equal(r.labels, s.y_train[r.indices])  # clean label
        assert r.p_true < r.p_true_clean  # the target's true-class probability fell


def test_large_eps_flips_the_target_and_stops_at_the_flip_as_retraining_confirms():
    """With a large radius the attack flips a target that the unperturbed images do not; it stops at the
    first flipped iterate (p_true < 0.5, before the step budget), and retraining from scratch agrees."""
    s = _split()
    clean, x_t, y_t = _least_confident_correct(s)
    r = K.attack(VICTIM, s.X_train, s.y_train, x_t, y_t, 3, eps=0.3, steps=60, step_size=0.02)
    keep = np.setdiff1d(np.arange(len(s.y_train)), r.indices)

    def retrained(Xp):
        params = VICTIM.fit(np.concatenate([s.X_train[keep], Xp]), np.concatenate([s.y_train[keep], r.labels]))
        return int(VICTIM.predict(params, x_t)[0])

    assert int(VICTIM.predict(clean, x_t)[0]) == retrained(r.X_original) == y_t[0]
    assert r.flipped and retrained(r.X_perturbed) != y_t[0]
    assert r.p_true < 0.5 < r.p_true_clean
    hist = r.result.history[0]
    assert r.n_steps < 60 and np.all(hist[:-1] < np.log(2.0)) and hist[-1] == pytest.approx(np.log(2.0))
    # the paper's half-level box does not move this target that far: reported as not flipped, and
    # retraining agrees
    small = K.attack(VICTIM, s.X_train, s.y_train, x_t, y_t, 3, eps=K.EPS_8BIT, steps=5, step_size=0.2 / 255)
    assert not small.flipped and retrained(small.X_perturbed) == y_t[0]


def test_bad_input_raises_naming_the_argument():
    s = _split()
    X, y, x_t, y_t = s.X_train, s.y_train, s.X_val[:1], s.y_val[:1]
    with pytest.raises(ValueError, match="'n_images'"):
        K.attack(VICTIM, X, y, x_t, y_t, len(y) + 1)
    with pytest.raises(ValueError, match="'n_images'"):
        K.select_images(VICTIM, X, y, x_t, y_t, 0)
    for eps in (0.0, -0.1, np.nan):
        with pytest.raises(ValueError, match="'eps'"):
            K.attack(VICTIM, X, y, x_t, y_t, 1, eps=eps)
    with pytest.raises(ValueError, match="'y_target'"):
        K.attack(VICTIM, X, y, x_t, np.array([2]), 1)
    with pytest.raises(ValueError, match="'x_target'"):
        K.attack(VICTIM, X, y, x_t[:, :10], y_t, 1)
    with pytest.raises(ValueError, match="'x_target'"):
        K.attack(VICTIM, X, y, s.X_val[:2], s.y_val[:2], 1)
    with pytest.raises(ValueError, match="'threshold'"):
        K.attack(VICTIM, X, y, x_t, y_t, 1, threshold=1.0)
    with pytest.raises(ValueError, match="'indices'"):
        K.attack(VICTIM, X, y, x_t, y_t, 2, indices=[3, 3])
    with pytest.raises(ValueError, match="'step_size'"):
        K.attack(VICTIM, X, y, x_t, y_t, 1, step_size=0.0)
    with pytest.raises(ValueError, match="'victim'"):
        K.influence_gradient(victims.ridge(1.0), X, y.astype(float), x_t, y_t.astype(float))
