"""Label-flip randomized smoothing (Rosenfeld et al. 2020): the radius survives every flip set of its size
(brute force over all noise vectors of tiny instances), the Chernoff bounds hold, the ridge weights are
ridge regression."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from poisoning.certify import label_flip_smoothing as LS

N = 6


def _noise_table(q):
    z = np.array(list(itertools.product([0, 1], repeat=N)))              # every flip pattern xi
    w = np.prod(np.where(z == 1, q, 1 - q), axis=1)
    return z, w


def _smoothed_prob(f, y, q):
    """Exact P(f(y xor xi) = 1)."""
    z, w = _noise_table(q)
    return float(np.sum(w * np.array([f(tuple(np.bitwise_xor(y, zz))) for zz in z])))


@pytest.mark.parametrize("q", [0.1, 0.3])
def test_radius_survives_every_flip_set_for_arbitrary_base_classifiers(q):
    rng = np.random.default_rng(int(q * 10))
    certified_somewhere = 0
    for trial in range(12):
        if trial % 2:    # an arbitrary base classifier: a random table
            table = {bits: int(rng.random() < 0.5) for bits in itertools.product([0, 1], repeat=N)}
            f = table.__getitem__
        else:            # a linear one, as ridge regression is
            wts = rng.uniform(0.2, 1.0, N)

            def f(bits, wts=wts):
                return int(np.dot(bits, wts) >= 0.5 * wts.sum())
        y = (rng.random(N) < (0.85 if trial % 4 == 0 else 0.5)).astype(int)
        p1 = _smoothed_prob(f, y, q)
        c, p = (1, p1) if p1 > 0.5 else (0, 1 - p1)
        r = int(LS.flip_radius(jnp.asarray([p]), q, max_radius=N)[0])
        assert r == -1 if p <= 0.5 else r >= 0
        certified_somewhere += r >= 1
        for k in range(1, r + 1):
            for S in itertools.combinations(range(N), k):
                y2 = y.copy()
                y2[list(S)] ^= 1
                p2 = _smoothed_prob(f, y2, q)
                assert (p2 if c == 1 else 1 - p2) > 0.5, (trial, S)
    assert certified_somewhere >= 2


def test_required_probability_is_tight_for_the_worst_base_classifier():
    """The base classifier that votes c exactly on the noise vectors agreeing most with y on a set S of
    r labels reaches p*(r) + eps before and 1/2 after flipping S (up to the partial level)."""
    q, r = 0.2, 3
    need = np.asarray(LS.required_probability(q, 5))
    assert need[0] == pytest.approx(0.5) and np.all(np.diff(need) > 0) and need[-1] < 1
    # a threshold on the agreement count k over S: P under clean ~ Bin(r, 1 - q), under flips ~ Bin(r, q)
    from scipy.stats import binom
    for kstar in range(r + 1):
        clean = binom.sf(kstar - 1, r, 1 - q)     # P(K >= kstar)
        flipped = binom.sf(kstar - 1, r, q)
        # certified iff the clean mass beats p*(r); the worst case attains exactly the flipped mass
        assert (flipped > 0.5) == (clean > need[r] + 1e-12) or abs(clean - need[r]) < 1e-9


def test_ridge_weights_are_ridge_regression_and_chernoff_bounds_hold():
    rng = np.random.default_rng(0)
    H, Ht = rng.standard_normal((N, 2)), rng.standard_normal((4, 2))
    y = rng.integers(0, 2, N)
    lam = 0.1
    beta = np.asarray(LS.ridge_label_weights(jnp.asarray(H), jnp.asarray(Ht), lam))
    # the bias is penalized too (unlike scikit-learn's Ridge): compare with the explicit solve
    Hb = np.c_[H, np.ones(N)]
    w = np.linalg.solve(Hb.T @ Hb + lam * N * np.eye(3), Hb.T @ y)
    np.testing.assert_allclose(beta @ y, np.c_[Ht, np.ones(4)] @ w, atol=1e-10)
    q = 0.25
    up1, up0 = (np.asarray(a) for a in LS.chernoff_bounds(jnp.asarray(beta), jnp.asarray(y), q))
    z, wts = _noise_table(q)
    scores = np.bitwise_xor(y[None, :], z) @ beta.T                      # (2^N, 4)
    exact1 = wts @ (scores >= 0.5)
    assert np.all(up1 >= exact1 - 1e-12) and np.all(up0 >= (1 - exact1) - 1e-12)
    assert np.all(np.minimum(up1, up0) <= 1)
    pred, radius = (np.asarray(a) for a in LS.certify_linear(jnp.asarray(H), jnp.asarray(y), jnp.asarray(Ht), q, lam,
                                                              max_radius=N))
    for j in range(4):
        if pred[j] >= 0:
            assert (exact1[j] > 0.5) == (pred[j] == 1)
        else:
            assert radius[j] == -1


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="'q'"):
        LS.flip_radius(jnp.asarray([0.9]), 0.5)
    with pytest.raises(ValueError, match="p_lower"):
        LS.flip_radius(jnp.asarray([1.2]), 0.1)
    with pytest.raises(ValueError, match="max_radius"):
        LS.flip_radius(jnp.asarray([0.9]), 0.1, max_radius=-1)
    with pytest.raises(ValueError, match="'y'"):
        LS.chernoff_bounds(jnp.ones((2, 3)), jnp.asarray([0, 2, 1]), 0.1)
    with pytest.raises(ValueError, match="'lam'"):
        LS.ridge_label_weights(jnp.ones((3, 2)), jnp.ones((1, 2)), 0.0)
