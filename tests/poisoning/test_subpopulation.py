"""Subpopulation poisoning (Jagielski et al. 2021): k-means, FeatureMatch / ClusterMatch masks, the
label-flip attack's target damage vs collateral on a small synthetic problem, and the influence-guided
flip (PoisonWeights + Greedy through the driver; its hypergradient vs finite differences). Labels 0/1."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from poisoning import victims
from poisoning.attack import PoisoningAttack, PoisonWeights, attack_value, hypergradient
from poisoning.attacks.subpopulation import (
    ClusterMatch,
    FeatureMatch,
    adult_feature_match,
    kmeans,
    run_subpopulation_attack,
    subpopulation_label_flip,
)

CENTERS = np.array([[-2.0, 0.0], [-2.0, 3.0], [2.0, 0.0], [2.0, 3.0]])
LABELS = np.array([0, 0, 1, 1], np.int32)


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
    y = np.array([1, 0, 1, 0])
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
    np.testing.assert_array_equal(yp, 1 - y[src])
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
    rep, Xp, yp = run_subpopulation_attack(cm, X, y, Xt, yt, n_sub, victim=victims.logistic(1e-2), seed=0)
    assert rep.n_poison == n_sub and rep.n_target_test == int(cm.mask(Xt).sum())
    assert rep.clean_target_acc > 0.95 and rep.clean_rest_acc > 0.95
    assert rep.target_damage > 0.3
    assert rep.target_damage > rep.collateral + 0.25
    assert abs(rep.collateral) < 0.05


# ----------------------------------------------------------------------------------------------------
# copy counts, weighted evaluation, hypergradient and the influence-guided flip
# ----------------------------------------------------------------------------------------------------
from poisoning.attacks.subpopulation import (  # noqa: E402
    adult_attributes,
    enumerate_feature_matches,
    evaluate_subpopulation,
    fit_with_poison,
    label_flip_counts,
    pca_projection,
    quantile_attributes,
    subpopulation_influence_flip,
    subpopulation_loss,
)


def test_label_flip_counts_match_the_copies():
    X, y, _ = _four_blobs(60, 0)
    mask = np.arange(60) % 4 == 1
    for budget in (0, 7, 15, 33):
        idx, counts = label_flip_counts(mask, budget, seed=3)
        np.testing.assert_array_equal(idx, np.flatnonzero(mask))
        assert counts.sum() == budget and counts.max(initial=0) - counts.min() <= 1
        Xp, yp = subpopulation_label_flip(X, y, mask, budget, seed=3)
        src = [int(np.flatnonzero((X == row).all(1))[0]) for row in Xp]
        np.testing.assert_array_equal(np.bincount(src, minlength=60)[idx], counts)
    with pytest.raises(ValueError, match="budget"):
        label_flip_counts(mask, -1)
    with pytest.raises(ValueError, match="train_mask"):
        label_flip_counts(np.zeros(60, bool), 3)
    with pytest.raises(ValueError, match="y_train"):
        subpopulation_label_flip(X, 2 * y - 1, mask, 3)


def test_weighted_poison_equals_copies():
    X, y, _ = _four_blobs(80, 0)
    Xt, yt, _ = _four_blobs(80, 1)
    V = victims.logistic(1e-2)
    Xc, yc = X[:3], 1 - y[:3]
    copies = fit_with_poison(V, X, y, np.repeat(Xc, [2, 0, 3], axis=0), np.repeat(yc, [2, 0, 3]))
    weighted = fit_with_poison(V, X, y, Xc, yc, np.array([2.0, 0.0, 3.0]))
    np.testing.assert_allclose(copies["w"], weighted["w"], atol=1e-8)
    np.testing.assert_allclose(copies["b"], weighted["b"], atol=1e-8)
    tm = Xt[:, 0] > 0
    a = evaluate_subpopulation(V, X, y, np.repeat(Xc, [2, 0, 3], axis=0), np.repeat(yc, [2, 0, 3]), Xt, yt, tm)
    b = evaluate_subpopulation(V, X, y, Xc, yc, Xt, yt, tm, poison_weights=[2, 0, 3],
                               clean_params=fit_with_poison(V, X, y, Xc, yc, np.zeros(3)))
    assert a == b and b.n_poison == 5
    with pytest.raises(ValueError, match="poison_weights"):
        evaluate_subpopulation(V, X, y, Xc, yc, Xt, yt, tm, poison_weights=[1, -1, 0])
    with pytest.raises(ValueError, match="poison_weights"):
        evaluate_subpopulation(V, X, y, Xc, yc, Xt, yt, tm, poison_weights=[1, 1])
    with pytest.raises(ValueError, match="y_poison"):
        fit_with_poison(V, X, y, Xc, 2 * yc - 1)
    with pytest.raises(ValueError, match="X_poison"):
        fit_with_poison(V, X, y, np.full_like(Xc, np.nan), yc)


def test_poison_weight_hypergradient_matches_finite_differences():
    """d J / d c (the influence of one more flipped copy) through the driver's hypergradient."""
    X, y, _ = _four_blobs(40, 0)
    V = victims.logistic(1e-2)
    mask = X[:, 0] > 0
    Xc, yc = X[mask][:5], 1 - y[mask][:5]
    t = mask.astype(float)
    att = PoisoningAttack(V, subpopulation_loss, None)
    hg = jax.jit(lambda c: hypergradient(att, X, y, PoisonWeights(Xc, yc, c), (X, y, t)))
    for c in (np.zeros(5), np.array([0.0, 1.0, 2.0, 0.5, 3.0])):
        value, grad, params = hg(jnp.asarray(c))
        # the objective is the mean logistic loss over the target rows of the victim trained with the copies
        s = X @ np.asarray(params["w"]) + float(params["b"])
        np.testing.assert_allclose(value, np.sum(t * np.logaddexp(0.0, -(2 * y - 1) * s)) / t.sum(), rtol=1e-10)
        eps = 1e-4
        fd = [(float(hg(jnp.asarray(c).at[j].add(eps))[0]) - float(hg(jnp.asarray(c).at[j].add(-eps))[0])) / (2 * eps)
              for j in range(5)]
        np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-9)
        assert np.all(np.asarray(grad) > 0)  # every flipped copy of a target point raises the target's loss


def test_influence_flip_beats_random_flip_on_the_target():
    X, y, _ = _four_blobs(160, 0, noise=0.8)
    Xt, yt, _ = _four_blobs(200, 1, noise=0.8)
    V = victims.logistic(1e-2)
    cm = ClusterMatch.fit(X, 4, seed=0)
    target = int(np.argmin(((cm.clustering.centers - CENTERS[3]) ** 2).sum(1)))
    tr, te = cm.clustering.labels == target, cm.clustering.predict(Xt) == target
    idx_all = np.flatnonzero(tr)
    budget = idx_all.size // 2
    idx, counts, hist = subpopulation_influence_flip(V, X, y, tr, budget, rounds=3, return_history=True)
    # zero-weight padding rows change nothing
    np.testing.assert_array_equal(subpopulation_influence_flip(V, X, y, tr, budget, rounds=3,
                                                               pad_to=idx_all.size + 7)[1], counts)
    np.testing.assert_array_equal(idx, idx_all)
    assert counts.sum() == budget and counts.min() >= 0
    assert len(hist) == 4 and np.all(np.diff(hist) > 0)  # each round raises the target's training loss
    t = tr.astype(float)
    att = PoisoningAttack(V, subpopulation_loss, None)
    J = jax.jit(lambda c: attack_value(att, X, y, PoisonWeights(X[idx], 1 - y[idx], c), (X, y, t))[0])
    j_infl = float(J(jnp.asarray(counts, float)))
    assert j_infl == pytest.approx(hist[-1], rel=1e-8)
    for seed in range(3):
        _, c_flip = label_flip_counts(tr, budget, seed)
        assert j_infl > float(J(jnp.asarray(c_flip, float)))
    rep = evaluate_subpopulation(V, X, y, X[idx], 1 - y[idx], Xt, yt, te, poison_weights=counts)
    assert rep.n_poison == budget and rep.target_damage > rep.collateral + 0.1
    # budget beyond the subpopulation: every point gets budget // size copies first
    _, c2 = subpopulation_influence_flip(V, X, y, tr, 2 * idx_all.size + 3, rounds=1)
    assert c2.min() == 2 and c2.max() == 3 and c2.sum() == 2 * idx_all.size + 3
    for kw, match in (({"rounds": 0}, "rounds"), ({"pad_to": 3}, "pad_to")):
        with pytest.raises(ValueError, match=match):
            subpopulation_influence_flip(V, X, y, tr, 5, **kw)
    with pytest.raises(ValueError, match="budget"):
        subpopulation_influence_flip(V, X, y, tr, -1)
    with pytest.raises(ValueError, match="y_train"):
        subpopulation_influence_flip(V, X, 2 * y - 1, tr, 5)
    with pytest.raises(ValueError, match="train_mask"):
        subpopulation_influence_flip(V, X, y, tr[:-1], 5)


# ----------------------------------------------------------------------------------------------------
# enumerating subpopulations
# ----------------------------------------------------------------------------------------------------
def test_enumerate_feature_matches_one_hot():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 3, 200), rng.integers(0, 2, 200)   # attribute A (3 values), B (2 values)
    X = np.concatenate([np.eye(3)[a], np.eye(2)[b], rng.random((200, 1))], axis=1)
    attrs = {"A": [(f"a{k}", k, 1.0) for k in range(3)], "B": [("b0", 3, 1.0), ("b1", 4, 1.0)]}
    Xtr, Xte = X[:150], X[150:]
    out = enumerate_feature_matches(attrs, Xtr, Xte)
    assert len(out) == 5 + 3 * 2                                # singles + cross-attribute pairs only
    for c in out:
        assert c["n_train"] == int(c["subpopulation"].mask(Xtr).sum()) > 0
        assert c["n_test"] == int(c["subpopulation"].mask(Xte).sum())
    pair = next(c for c in out if c["name"] == "A=a2 & B=b1")
    assert pair["n_train"] == int(((a[:150] == 2) & (b[:150] == 1)).sum())
    filt = enumerate_feature_matches(attrs, Xtr, Xte, min_train=30, max_train=60, min_test=8)
    assert filt and all(30 <= c["n_train"] <= 60 and c["n_test"] >= 8 for c in filt)
    assert len(enumerate_feature_matches(attrs, Xtr, Xte, max_order=1)) == 5
    with pytest.raises(ValueError, match="max_order"):
        enumerate_feature_matches(attrs, Xtr, Xte, max_order=3)
    ds = types.SimpleNamespace(meta={"feature_names": ("age", "race=Black", "race=White", "sex=Female", "sex=Male"),
                                     "attribute_columns": {"age": (0, 1), "race": (1, 3), "sex": (3, 5)}})
    assert adult_attributes(ds) == {"race": [("Black", 1, 1.0), ("White", 2, 1.0)],
                                    "sex": [("Female", 3, 1.0), ("Male", 4, 1.0)]}
    assert list(adult_attributes(ds, exclude=("sex",))) == ["race"]


def test_quantile_attributes_partition_and_bins_enumerate():
    rng = np.random.default_rng(1)
    X = rng.random((120, 4))
    attrs = quantile_attributes(X, [0, 2], n_bins=3, names=["f0", "f2"])
    assert list(attrs) == ["f0", "f2"]
    for name, atoms in attrs.items():
        members = np.stack([FeatureMatch((c,), bins=(spec,)).mask(X) for _, c, spec in atoms])
        np.testing.assert_array_equal(members.sum(0), 1)          # every row in exactly one bin
        assert np.all(np.abs(members.sum(1) - 40) <= 1)          # quantile bins: equal sizes
    out = enumerate_feature_matches(attrs, X, X[:30])
    assert len(out) == 6 + 9
    mixed = {"f0": attrs["f0"], "g": [("one", 1, 1.0)]}
    with pytest.raises(ValueError, match="mix"):
        enumerate_feature_matches(mixed, X, X)
    with pytest.raises(ValueError, match="n_bins"):
        quantile_attributes(X, [0], n_bins=1)
    with pytest.raises(ValueError, match="columns"):
        quantile_attributes(X, [9])


def test_pca_projection():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((200, 3)) @ np.diag([5.0, 2.0, 0.1]) @ np.linalg.qr(rng.standard_normal((3, 3)))[0]
    mean, V = pca_projection(X, 2)
    np.testing.assert_allclose(V.T @ V, np.eye(2), atol=1e-12)
    evals = np.linalg.eigvalsh(np.cov(X.T, bias=True))[::-1]
    np.testing.assert_allclose(np.var((X - mean) @ V, axis=0), evals[:2], rtol=1e-10)
    with pytest.raises(ValueError, match="dim"):
        pca_projection(X, 4)


def test_adult_attributes_on_real_adult(shared_data_dir):
    from poisoning.datasets import load_adult

    ds = load_adult(shared_data_dir)
    attrs = adult_attributes(ds)
    assert set(attrs) == {"workclass", "education", "marital-status", "occupation", "relationship", "race",
                          "sex", "native-country"}
    for atoms in attrs.values():                                   # one-hot: one value per row and attribute
        cols = [c for _, c, _ in atoms]
        np.testing.assert_array_equal(ds.X_train[:, cols].sum(1), 1)
    out = enumerate_feature_matches({"race": attrs["race"], "sex": attrs["sex"]}, ds.X_train, ds.X_test,
                                    min_train=100)
    bf = next(c for c in out if c["name"] == "race=Black & sex=Female")
    assert bf["n_train"] == int(((ds.X_train[:, ds.meta["feature_names"].index("race=Black")] == 1)
                                 & (ds.meta["sex_train"] == 0)).sum())
