"""TRIM (poisoning.defenses.trim): recovers the clean fit under planted outliers (ridge regression and
logistic classification), its false positive rate on clean data, jit, and bad input."""

import jax
import numpy as np
import pytest

from poisoning import victims
from poisoning.defenses.trim import removal_rates, trim


def _regression(n=80, n_out=16, d=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 1, (n, d))
    w = np.array([1.0, -2.0, 0.5])[:d]
    y = X @ w + 0.3 + 0.01 * rng.standard_normal(n)
    # planted outliers: high-leverage points with targets far off the clean line (they pull an OLS fit)
    Xo = rng.uniform(0.8, 1.0, (n_out, d))
    yo = Xo @ w + 0.3 + 3.0
    return np.concatenate([X, Xo]), np.concatenate([y, yo]), np.r_[np.zeros(n, bool), np.ones(n_out, bool)]


def test_trim_recovers_the_clean_ridge_fit_under_planted_outliers():
    X, y, is_poison = _regression()
    victim = victims.ridge(1e-4)
    clean = victim.fit(X[~is_poison], y[~is_poison])
    naive = victim.fit(X, y)
    res = trim(victim, X, y, n_keep=int((~is_poison).sum()))
    assert bool(res.converged) and int(res.iterations) >= 1
    np.testing.assert_array_equal(np.asarray(res.keep), ~is_poison)         # exactly the outliers removed
    for a, b in zip(jax.tree_util.tree_leaves(res.params), jax.tree_util.tree_leaves(clean)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
    mse = lambda p: float(np.mean((np.asarray(victim.decision(p, X[~is_poison])) - y[~is_poison]) ** 2))
    assert mse(naive) > 100 * mse(res.params)                                 # the naive fit is pulled away
    assert removal_rates(res.keep, is_poison) == {"false_positive_rate": 0.0, "detection_rate": 1.0}
    # jit gives the same answer
    res3 = jax.jit(lambda X, y: trim(victim, X, y, n_keep=80))(X, y)
    np.testing.assert_array_equal(np.asarray(res3.keep), np.asarray(res.keep))


def test_trim_has_local_minima_and_small_random_restarts_escape_them():
    """24 outliers in 104 points: from the all-points start (and from the paper's random n-subsets) TRIM
    settles on a fixed point that keeps the outliers; 10 elemental starts of d + 1 points (vmapped)
    find the clean set, whose trimmed loss is far lower."""
    X, y, is_poison = _regression(n_out=24, seed=1)
    victim = victims.ridge(1e-4)
    stuck = trim(victim, X, y, n_keep=80)
    assert bool(stuck.converged) and removal_rates(stuck.keep, is_poison)["detection_rate"] == 0.0
    found = trim(victim, X, y, n_keep=80, key=jax.random.key(0), restarts=10, start_size=4)
    np.testing.assert_array_equal(np.asarray(found.keep), ~is_poison)
    assert float(found.trimmed_loss) < 1e-3 * float(stuck.trimmed_loss)
    with pytest.raises(ValueError, match="restarts"):
        trim(victim, X, y, n_keep=80, restarts=3)                           # random starts need a key


def test_trim_false_positive_rate_on_clean_data_and_a_harmless_fit():
    X, y, is_poison = _regression(n_out=0)
    victim = victims.ridge(1e-4)
    full = victim.fit(X, y)
    n_keep = 72                                                   # the defender budgets for 10 % poison
    res = trim(victim, X, y, n_keep=n_keep)
    rates = removal_rates(res.keep, is_poison)
    # on clean data every removed point is a false positive: (N - n) / N, the price of the budget
    assert rates["false_positive_rate"] == pytest.approx((len(y) - n_keep) / len(y))
    assert np.isnan(rates["detection_rate"])
    # ... and trimming the largest residuals of a well-specified model barely moves it
    for a, b in zip(jax.tree_util.tree_leaves(res.params), jax.tree_util.tree_leaves(full)):
        np.testing.assert_allclose(a, b, atol=0.02)
    # the kept points are those with the smallest residuals under the final fit (a fixed point)
    r = np.abs(np.asarray(victim.decision(res.params, X)) - y)
    assert r[np.asarray(res.keep)].max() <= r[~np.asarray(res.keep)].min()


def test_trim_removes_mislabeled_points_for_logistic_classification():
    rng = np.random.default_rng(0)
    n, n_flip = 100, 12
    X = np.concatenate([rng.normal(-1.5, 0.6, (n // 2, 2)), rng.normal(1.5, 0.6, (n // 2, 2))])
    y = np.r_[np.zeros(n // 2, int), np.ones(n // 2, int)]
    # planted: points deep inside class 1's region labeled 0
    Xp = rng.normal(2.5, 0.3, (n_flip, 2))
    Xa, ya = np.concatenate([X, Xp]), np.r_[y, np.zeros(n_flip, int)]
    is_poison = np.r_[np.zeros(n, bool), np.ones(n_flip, bool)]
    victim = victims.logistic(reg=1e-2)
    res = trim(victim, Xa, ya, n_keep=n)
    rates = removal_rates(res.keep, is_poison)
    assert bool(res.converged) and rates["detection_rate"] == 1.0 and rates["false_positive_rate"] == 0.0
    clean, naive = victim.fit(X, y), victim.fit(Xa, ya)
    for a, b in zip(jax.tree_util.tree_leaves(res.params), jax.tree_util.tree_leaves(clean)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    gap = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
              for a, b in zip(jax.tree_util.tree_leaves(naive), jax.tree_util.tree_leaves(clean)))
    assert gap > 0.1                                                        # the poison does move the naive fit


def test_trim_rejects_bad_input():
    X, y, _ = _regression(n=10, n_out=0)
    victim = victims.ridge()
    for bad in (0, 11, 2.5, True):
        with pytest.raises(ValueError, match="n_keep"):
            trim(victim, X, y, n_keep=bad)
    with pytest.raises(ValueError, match="max_iter"):
        trim(victim, X, y, n_keep=5, max_iter=0)
    with pytest.raises(ValueError, match="start_size"):
        trim(victim, X, y, n_keep=5, key=jax.random.key(0), start_size=0)
    Xn = X.copy()
    Xn[0, 0] = np.nan
    with pytest.raises(ValueError, match="X"):
        trim(victim, Xn, y, n_keep=5)
    with pytest.raises(ValueError):
        trim(victims.logistic(), X, np.full(10, 3), n_keep=5)              # labels out of range
    with pytest.raises(TypeError, match="victim"):
        trim("ridge", X, y, n_keep=5)
    with pytest.raises(ValueError, match="keep"):
        removal_rates(np.ones(3, bool), np.ones(4, bool))
