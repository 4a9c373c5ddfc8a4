"""Koh, Steinhardt & Liang (2022): influence attack constrained to the sanitizers' feasible set."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from poisoning.attacks import koh2022 as K
from poisoning.data import binary_pair, load_digits
from poisoning.defenses.sanitizers import SlabDefense, SphereDefense, pm1_to_index


def _tiny(seed=0, n=30, d=4):
    rng = np.random.default_rng(seed)
    y = np.where(np.arange(n) % 2 == 0, 1, -1)
    X = np.clip(0.5 + 0.15 * y[:, None] * np.ones(d) + 0.2 * rng.standard_normal((n, d)), 0, 1)
    yt = np.where(np.arange(20) % 2 == 0, 1, -1)
    Xt = np.clip(0.5 + 0.15 * yt[:, None] * np.ones(d) + 0.2 * rng.standard_normal((20, d)), 0, 1)
    return X, y, Xt, yt


@pytest.fixture(scope="module")
def digits():
    ds = load_digits(seed=0)
    X, y = binary_pair(ds.X_train, ds.y_train, 1, 7)
    Xt, yt = binary_pair(ds.X_test, ds.y_test, 1, 7)
    return X.astype(float), y, Xt.astype(float), yt


def test_gradient_matches_finite_differences():
    X, y, Xt, yt = _tiny()
    cfg = K.SVMConfig(wd=0.01, t=0.1, tol=1e-12)
    X_loc = np.array([[0.3, 0.6, 0.4, 0.5], [0.7, 0.2, 0.6, 0.4]])
    y_loc, counts = np.array([1, -1]), np.array([2, 1])
    v, g = K.poison_gradient(X_loc, X, y, y_loc, counts, Xt, yt, cfg, method="influence")
    v2, g2 = K.poison_gradient(X_loc, X, y, y_loc, counts, Xt, yt, cfg, method="ift")
    np.testing.assert_allclose(float(v), float(v2), rtol=1e-9)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g2), rtol=1e-6, atol=1e-10)

    def retrained(Xl):
        Xs, ys, _ = K.expand_copies(X, y, Xl, y_loc, counts)
        return float(K.target_loss(K.train_svm(Xs, ys, None, cfg), Xt, yt, cfg.t))

    # the influence gradient is the derivative of retraining on the copies expanded into rows

    h = 1e-5
    fd = np.zeros_like(X_loc)
    for i in range(X_loc.shape[0]):
        for j in range(X_loc.shape[1]):
            e = np.zeros_like(X_loc)
            e[i, j] = h
            fd[i, j] = (retrained(X_loc + e) - retrained(X_loc - e)) / (2 * h)
    assert np.max(np.abs(fd)) > 1e-4
    np.testing.assert_allclose(np.asarray(g), fd, rtol=1e-5, atol=1e-9)


def test_projection_is_feasible_and_survives_sanitizers(digits):
    X, y, _, _ = digits
    rng = np.random.default_rng(0)
    y_loc = np.array([1, -1, 1, -1])
    counts = np.array([2, 2, 2, 2])
    X_far = rng.uniform(-1.0, 2.0, size=(4, X.shape[1]))  # far outside everything
    Xp = np.asarray(K.project_feasible(X_far, y_loc, counts, X, y, percentile=90.0))
    assert Xp.min() >= 0.0 and Xp.max() <= 1.0
    Xs, ys, is_p = K.expand_copies(X, y, Xp, y_loc, counts)
    k = pm1_to_index(ys)
    for defense in (SphereDefense(num_classes=2), SlabDefense(num_classes=2)):
        state = defense.fit(Xs, k)  # data-dependent: centroids of the poisoned data
        thr = np.asarray(defense.thresholds(state, X, pm1_to_index(y), 90.0))
        scores = np.asarray(defense.score(state, Xs, k))
        assert np.all(scores[is_p] <= thr[np.asarray(k)[is_p]] + 1e-9)
        keep, _ = defense.sanitize(Xs, k, 0.05)
        assert np.all(np.asarray(keep)[is_p])
    # the unprojected points are removed
    Xs0, ys0, is_p0 = K.expand_copies(X, y, np.clip(X_far, 0, 1), y_loc, counts)
    keep0, _ = SphereDefense(num_classes=2).sanitize(Xs0, pm1_to_index(ys0), 0.05)
    assert not np.any(np.asarray(keep0)[is_p0])


def test_aware_beats_naive_under_sphere_and_slab(digits):
    X, y, Xt, yt = digits
    n_poison = int(round(0.03 * len(y)))
    kw = dict(steps=30, step_size=0.5, n_locations=2, seed=0)
    naive = K.koh_attack(X, y, Xt, yt, n_poison, aware=False, **kw)
    aware = K.koh_attack(X, y, Xt, yt, n_poison, aware=True, **kw)
    assert naive.best_value > naive.history[0] and aware.best_value >= aware.history[0]
    rows = {r["defense"]: r for r in K.evaluate_defenses(X, y, Xt, yt, naive, aware, defenses=("sphere", "slab"))}
    for name in ("sphere", "slab"):
        r = rows[name]
        assert r["aware_poison_kept"] == 1.0
        assert r["aware_with_defense"] >= r["naive_with_defense"]
        assert r["naive_no_defense"] >= r["clean_error"]


def test_quick_experiment_writes_results(tmp_path):
    from experiments import koh2022

    res = koh2022.main(["--quick", "--steps", "3", "--out", str(tmp_path), "--no-plots"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["defense"] for r in saved["rows"]] == ["sphere", "slab", "loss", "knn"]
    for r in saved["rows"]:
        for key in ("clean_error", "naive_no_defense", "naive_with_defense", "aware_with_defense"):
            assert 0.0 <= r[key] <= 1.0
    assert res["config"]["n_poison"] >= 1 and "Enron" in saved["paper"]
