"""Subpopulation poisoning (Jagielski et al. 2021): k-means, FeatureMatch / ClusterMatch masks and the
label-flip attack's target damage vs collateral on a small synthetic problem."""

import types

import numpy as np
import pytest

from poisoning.attack import logistic_learner
from poisoning.attacks.subpopulation import (
    ClusterMatch,
    FeatureMatch,
    adult_feature_match,
    kmeans,
    run_subpopulation_attack,
    subpopulation_label_flip,
)

CENTERS = np.array([[-2.0, 0.0], [-2.0, 3.0], [2.0, 0.0], [2.0, 3.0]])
LABELS = np.array([-1.0, -1.0, 1.0, 1.0])


def _four_blobs(n, seed, noise=0.6):
    rng = np.random.default_rng(seed)
    c = rng.integers(0, 4, n)
    return CENTERS[c] + noise * rng.standard_normal((n, 2)), LABELS[c], c


def test_kmeans_deterministic_and_recovers_blobs():
    X, _, c = _four_blobs(300, 0, noise=0.4)
    a, b = kmeans(X, 4, seed=1), kmeans(X, 4, seed=1)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centers, b.centers)
    # each found cluster is (almost) one true blob (up to relabeling), centres near the true ones
    for j in range(4):
        counts = np.bincount(c[a.labels == j], minlength=4)
        assert counts.max() >= 0.98 * counts.sum()
    d = np.linalg.norm(a.centers[:, None, :] - CENTERS[None], axis=-1).min(1)
    assert np.all(d < 0.2)
    np.testing.assert_array_equal(a.predict(X), a.labels)
    assert np.isclose(a.inertia, ((X - a.centers[a.labels]) ** 2).sum())
    with pytest.raises(ValueError, match="k"):
        kmeans(X, 0)


def test_feature_match_mask():
    X = np.array([[1, 0, 0.3], [0, 1, 0.7], [1, 1, 0.5], [1, 0, 0.9]], float)
    y = np.array([1, -1, 1, -1.0])
    np.testing.assert_array_equal(FeatureMatch((0,), values=(1,)).mask(X), [True, False, True, True])
    np.testing.assert_array_equal(FeatureMatch((0, 1), values=(1, 0)).mask(X), [True, False, False, True])
    np.testing.assert_array_equal(FeatureMatch((0, 1), values=(1, 0), label=1).mask(X, y), [True, False, False, False])
    np.testing.assert_array_equal(FeatureMatch((2,), bins=((0.4, 0.8),)).mask(X), [False, True, True, False])
    with pytest.raises(ValueError):
        FeatureMatch((0,), values=(1,), label=1).mask(X)
    with pytest.raises(ValueError):
        FeatureMatch((0, 1), values=(1,))
    ds = types.SimpleNamespace(meta={"feature_names": ("age", "race=Black", "race=White", "sex=Female", "sex=Male")})
    fm = adult_feature_match(ds, {"race": "Black", "sex": "Female"})
    assert fm.columns == (1, 3) and fm.values == (1.0, 1.0)
    with pytest.raises(ValueError, match="unknown"):
        adult_feature_match(ds, {"race": "Martian"})


def test_poison_points_are_flipped_copies():
    X, y, _ = _four_blobs(100, 0)
    mask = np.arange(100) < 10
    Xp, yp = subpopulation_label_flip(X, y, mask, 25, seed=0)
    assert Xp.shape == (25, 2)
    src = [int(np.flatnonzero((X == row).all(1))[0]) for row in Xp]
    assert all(mask[i] for i in src)
    np.testing.assert_array_equal(yp, -y[src])
    assert len(set(src[:10])) == 10                          # every point used before any repeats
    Xq, yq = subpopulation_label_flip(X, y, mask, 25, seed=0)
    np.testing.assert_array_equal(Xp, Xq)


def test_cluster_attack_damages_target_more_than_rest():
    X, y, _ = _four_blobs(400, 0)
    Xt, yt, _ = _four_blobs(400, 1)
    cm = ClusterMatch.fit(X, 4, seed=0)
    target = int(np.argmin(((cm.clustering.centers - CENTERS[3]) ** 2).sum(1)))
    cm = ClusterMatch(cm.clustering, target)
    n_sub = int(cm.mask(X).sum())
    rep, Xp, yp = run_subpopulation_attack(cm, X, y, Xt, yt, n_sub, learner=logistic_learner(1e-2), seed=0)
    assert rep.n_poison == n_sub and rep.n_target_test == int(cm.mask(Xt).sum())
    assert rep.clean_target_acc > 0.95 and rep.clean_rest_acc > 0.95
    assert rep.target_damage > 0.3
    assert rep.target_damage > rep.collateral + 0.25
    assert abs(rep.collateral) < 0.05
