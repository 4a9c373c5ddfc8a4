"""SEVER, RONI, k-NN label sanitization and the SVD sanitizer (poisoning.defenses.{sever, roni,
label_sanitization, svd}): each against an independent implementation (numpy SVD, closed-form ridge
gradients, scikit-learn's KNeighborsClassifier and Ridge), its false positive rate on clean data, the planted
attack it is designed to catch, jit, and bad input."""

import jax
import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.neighbors import KNeighborsClassifier

from poisoning import victims
from poisoning.defenses.label_sanitization import KNNLabelSanitizer, knn_relabel
from poisoning.defenses.roni import RONIDefense, RONIState, roni, roni_draws, roni_scores
from poisoning.defenses.sanitizers import Sanitizer
from poisoning.defenses.sever import SeverDefense, per_example_gradients, sever, sever_scores
from poisoning.defenses.svd import SVDDefense, svd_scores, svd_subspace
from poisoning.defenses.trim import removal_rates


def _blobs(n_per=40, d=2, sep=3.0, seed=0, K=2):
    rng = np.random.default_rng(seed)
    centres = sep * np.eye(K, d) if d >= K else sep * rng.standard_normal((K, d))
    X = np.concatenate([c + rng.standard_normal((n_per, d)) for c in centres])
    return X, np.repeat(np.arange(K), n_per)


def _low_rank(n_per=100, d=10, r=2, seed=0, noise=0.05, basis_seed=0):
    """Two classes near a shared r-dimensional subspace of R^d (the subspace fixed by ``basis_seed``)."""
    basis = np.linalg.qr(np.random.default_rng(basis_seed).standard_normal((d, r)))[0]
    rng = np.random.default_rng(seed)
    X, y = [], []
    for c in range(2):
        Z = rng.standard_normal((n_per, r)) @ basis.T + 3.0 * c * basis[:, 0]
        X.append(Z + noise * rng.standard_normal((n_per, d)))
        y.append(np.full(n_per, c))
    return np.concatenate(X), np.concatenate(y), basis


# ---------------------------------------------------------------------------------------------------------
# SVD sanitizer (Koh et al. 2022)
# ---------------------------------------------------------------------------------------------------------
def test_svd_scores_match_numpy_and_flag_off_subspace_points():
    X, y, basis = _low_rank()
    state = svd_subspace(X, y, 2)
    # numpy: centroids, SVD of the class-centred matrix, residual outside the top-2 right singular vectors
    mu = np.stack([X[y == c].mean(0) for c in range(2)])
    V = np.linalg.svd(X - mu[y], full_matrices=False)[2][:2]
    Z = X - mu[y]
    ref = np.linalg.norm(Z - Z @ V.T @ V, axis=1)
    np.testing.assert_allclose(np.asarray(svd_scores(X, y, state)), ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.abs(np.asarray(state.components) @ V.T), np.eye(2), atol=1e-9)   # same subspace
    # planted: 10 poison points at the centroid of class 1 plus an off-subspace offset of norm 1 -- inside the
    # sphere of radius ~ the clean spread, invisible to the sphere defense but not to the SVD defense
    rng = np.random.default_rng(1)
    off = rng.standard_normal((10, 10))
    off -= off @ basis @ basis.T
    Xp = mu[1] + off / np.linalg.norm(off, axis=1, keepdims=True)
    Xa, ya = np.r_[X, Xp], np.r_[y, np.ones(10, int)]
    is_poison = np.r_[np.zeros(len(y), bool), np.ones(10, bool)]
    defense = SVDDefense(rank=2)
    assert isinstance(defense, Sanitizer)
    keep, scores = defense.sanitize(Xa, ya, 0.1)
    rates = removal_rates(keep, is_poison)
    assert rates["detection_rate"] == 1.0 and rates["false_positive_rate"] < 0.06
    # oracle state from clean data gives the same decision; jit agrees
    keep_o, _ = defense.sanitize(Xa, ya, 0.1, state=defense.fit(X, y))
    assert removal_rates(keep_o, is_poison)["detection_rate"] == 1.0
    jitted = jax.jit(lambda X, y: svd_scores(X, y, svd_subspace(X, y, 2, num_classes=2)))(Xa, ya)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(scores), rtol=1e-9)


def test_svd_false_positive_rate_on_fresh_clean_data():
    """Thresholds at the 95th percentile of clean scores remove about 5 % of a fresh clean sample of the same
    distribution, and far more of one with twice the off-subspace noise."""
    X, y, _ = _low_rank(n_per=500, seed=2)
    defense = SVDDefense(rank=2)
    state = defense.fit(X, y)
    tau = np.asarray(defense.thresholds(state, X, y, 95.0))
    X2, y2, _ = _low_rank(n_per=500, seed=3)                         # fresh clean data
    fpr = float((np.asarray(defense.score(state, X2, y2)) > tau[y2]).mean())
    assert 0.03 <= fpr <= 0.07
    X3, y3, _ = _low_rank(n_per=500, seed=4, noise=0.1)
    assert float((np.asarray(defense.score(state, X3, y3)) > tau[y3]).mean()) > 0.5
    keep, _ = defense.sanitize(X, y, 0.05)                           # the fraction rule: exactly round(0.05 n_c)
    assert int((~np.asarray(keep)).sum()) == 50


def test_svd_bad_input():
    X, y, _ = _low_rank(n_per=10)
    with pytest.raises(ValueError, match="rank"):
        SVDDefense(rank=0)
    with pytest.raises(ValueError, match="rank"):
        svd_subspace(X, y, 10)                          # rank = d leaves no residual
    with pytest.raises(ValueError, match="X"):
        svd_subspace(X[0], y, 2)
    with pytest.raises(ValueError, match="fraction"):
        SVDDefense(rank=2).sanitize(X, y, 1.5)
    Xn = X.copy()
    Xn[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        svd_subspace(Xn, y, 2)


# ---------------------------------------------------------------------------------------------------------
# k-NN label sanitization (Paudice et al. 2018)
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k, eta", [(5, 0.6), (7, 1.0)])
def test_knn_relabel_matches_scikit_learn(k, eta):
    X, y = _blobs(n_per=50, d=3, sep=1.5, K=3, seed=4)       # overlapping: many points near another class
    res = knn_relabel(X, y, k, eta)
    proba = KNeighborsClassifier(n_neighbors=k).fit(X, y).predict_proba(None)   # leave-self-out neighbours
    majority, conf = proba.argmax(1), proba.max(1)
    expected = np.where(conf >= eta - 1e-12, majority, y)
    np.testing.assert_array_equal(np.asarray(res.labels), expected)
    np.testing.assert_array_equal(np.asarray(res.majority), majority)
    np.testing.assert_allclose(np.asarray(res.confidence), conf)
    assert res.changed.sum() > 0
    # the removal score: fraction of the k neighbours with another label
    d = KNNLabelSanitizer(k=k, eta=eta)
    np.testing.assert_allclose(np.asarray(d.score_train(d.fit(X, y), X, y)), 1.0 - proba[np.arange(len(y)), y])
    if k == 5:                                              # blocked distances and jit: the same labels
        blocked = knn_relabel(X, y, k, eta, block_size=16)
        np.testing.assert_array_equal(np.asarray(blocked.labels), expected)
        jitted = jax.jit(lambda X, y: knn_relabel(X, y, k, eta, num_classes=3).labels)(X, y)
        np.testing.assert_array_equal(np.asarray(jitted), expected)


def test_knn_relabel_fixes_flipped_labels_and_leaves_clean_data_alone():
    X, y = _blobs(n_per=60, d=2, sep=6.0, seed=5)
    clean = knn_relabel(X, y, 10, 0.7)
    assert int(clean.changed.sum()) == 0                                   # false positive rate 0 on clean blobs
    rng = np.random.default_rng(6)
    flip = rng.choice(len(y), 12, replace=False)                          # 10 % label flips
    y_flip = y.copy()
    y_flip[flip] = 1 - y_flip[flip]
    res = knn_relabel(X, y_flip, 10, 0.7)
    np.testing.assert_array_equal(np.asarray(res.labels), y)              # every flip undone, nothing else touched
    np.testing.assert_array_equal(np.flatnonzero(np.asarray(res.changed)), np.sort(flip))
    d = KNNLabelSanitizer(k=10)                                           # as a removal sanitizer: the flipped
    scores = np.asarray(d.score_train(d.fit(X, y_flip), X, y_flip))       # points disagree with their neighbours
    is_flip = np.isin(np.arange(len(y)), flip)
    assert scores[is_flip].min() >= 0.7 > scores[~is_flip].max()


def test_knn_relabel_bad_input():
    X, y = _blobs(n_per=5)
    with pytest.raises(ValueError, match="eta"):
        knn_relabel(X, y, 3, 0.0)
    with pytest.raises(ValueError, match="'k'"):
        knn_relabel(X, y, 10, 0.5)                                         # needs k + 1 points
    with pytest.raises(ValueError, match="'k'"):
        KNNLabelSanitizer(k=0)
    with pytest.raises(ValueError, match="y"):
        knn_relabel(X, -y, 3, 0.5)


# ---------------------------------------------------------------------------------------------------------
# SEVER (Diakonikolas et al. 2019)
# ---------------------------------------------------------------------------------------------------------
def _regression(n=120, d=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 1, (n, d))
    y = X @ np.linspace(1.0, -1.0, d) + 0.2 + 0.05 * rng.standard_normal(n)
    return X, y


def test_sever_removes_gradient_outliers_planted_along_one_direction():
    X, y = _regression(seed=1)
    n_out = 12
    rng = np.random.default_rng(2)
    Xo = rng.uniform(0.9, 1.0, (n_out, X.shape[1]))              # high leverage, one corner
    yo = np.full(n_out, -1.5)                                    # far below the clean plane: one common direction
    Xa, ya = np.r_[X, Xo], np.r_[y, yo]
    is_poison = np.r_[np.zeros(len(y), bool), np.ones(n_out, bool)]
    victim = victims.ridge(1e-3)
    res = sever(victim, Xa, ya, fraction=0.1, rounds=4)          # 13 removals for 12 poison points
    rates = removal_rates(res.keep, is_poison)
    assert rates["detection_rate"] == 1.0 and rates["false_positive_rate"] <= 1 / len(y)
    mse = lambda p: float(np.mean((np.asarray(victim.decision(p, X)) - y) ** 2))
    assert mse(victims.ridge(1e-3).fit(Xa, ya)) > 20 * mse(res.params)      # the naive fit is pulled away
    assert int(np.asarray(res.removed_per_round).sum()) == 13
    keep, _ = SeverDefense(victim, rounds=4).sanitize(Xa, ya, 0.1)          # the protocol: the same filter
    np.testing.assert_array_equal(np.asarray(keep), np.asarray(res.keep))


def test_sever_scores_match_numpy_and_its_threshold_false_positive_rate_on_clean_data():
    """The scores against closed-form ridge gradients and numpy's SVD; a threshold calibrated on one clean
    sample (95th percentile of the normalized scores) removes about 5 % of a fresh clean sample in one round."""
    victim = victims.ridge(1e-3)
    Xc, yc = _regression(n=400, seed=3)
    params = victim.fit(Xc, yc)
    r = np.asarray(victim.decision(params, Xc)) - yc
    G = np.c_[r, r[:, None] * Xc]             # d(0.5 r^2)/d(b, w) = r (1, x); ravel_pytree orders the keys b, w
    np.testing.assert_allclose(np.asarray(per_example_gradients(victim, params, Xc, yc)), G, rtol=1e-9,
                               atol=1e-12)
    C = G - G.mean(0)
    v = np.linalg.svd(C, full_matrices=False)[2][0]
    tau = np.asarray(sever_scores(victim, params, Xc, yc))
    np.testing.assert_allclose(tau, (C @ v) ** 2, rtol=1e-8, atol=1e-14)
    threshold = float(np.percentile(tau / tau.mean(), 95))
    X2, y2 = _regression(n=400, seed=4)
    res = sever(victim, X2, y2, threshold=threshold, rounds=1)
    fpr = 1.0 - float(np.mean(np.asarray(res.keep)))
    assert 0.02 <= fpr <= 0.09


def test_sever_bad_input():
    X, y = _regression(n=20)
    victim = victims.ridge(1e-3)
    with pytest.raises(ValueError, match="exactly one"):
        sever(victim, X, y)
    with pytest.raises(ValueError, match="threshold"):
        sever(victim, X, y, threshold=0.5)
    with pytest.raises(ValueError, match="fraction"):
        sever(victim, X, y, fraction=1.0)
    with pytest.raises(ValueError, match="rounds"):
        sever(victim, X, y, fraction=0.1, rounds=0)
    with pytest.raises(TypeError, match="victim"):
        sever("ridge", X, y, fraction=0.1)
    with pytest.raises(ValueError, match="'y'"):
        sever(victims.logistic(), X, np.full(20, 3), fraction=0.1)


# ---------------------------------------------------------------------------------------------------------
# RONI (Nelson et al. 2008)
# ---------------------------------------------------------------------------------------------------------
def test_roni_impacts_match_brute_force_scikit_learn_ridge():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((24, 3))
    y = X @ np.array([1.0, -1.0, 0.5]) + 0.1 * rng.standard_normal(24)
    y[3] += 4.0                                                                # one corrupted target
    reg, n_base, n_val, T = 1e-2, 8, 10, 3
    victim = victims.ridge(reg)
    defense = RONIDefense(victim, n_base=n_base, n_val=n_val, trials=T, metric="loss", seed=1)
    state = defense.fit(X, y)
    base, val = np.asarray(state.base), np.asarray(state.val)
    assert base.sum(1).tolist() == [n_base] * T and val.sum(1).tolist() == [n_val] * T
    assert not np.any(base & val)

    def val_loss(b, v):                     # victims.ridge on the base rows == sklearn Ridge(alpha = reg * |B|)
        m = Ridge(alpha=reg * b.sum()).fit(X[b], y[b])
        return 0.5 * np.mean((m.predict(X[v]) - y[v]) ** 2)

    ref = np.zeros(len(y))
    for i in range(len(y)):
        for t in range(T):
            v = val[t].copy()
            v[i] = False
            with_i, without_i = base[t].copy(), base[t].copy()
            with_i[i], without_i[i] = True, False
            ref[i] += (val_loss(with_i, v) - val_loss(without_i, v)) / T
    scores = np.asarray(roni_scores(victim, state, metric="loss"))
    np.testing.assert_allclose(scores, ref, rtol=1e-6, atol=1e-10)
    assert int(np.argmax(scores)) == 3                                        # the corrupted point hurts most
    # new candidates against the same draws: a copy of point 3 adds to bases that lack it
    ext = np.asarray(defense.score(state, X[3:4], y[3:4]))

    def val_loss_with(b, v, x, t):
        m = Ridge(alpha=reg * (b.sum() + 1)).fit(np.r_[X[b], x[None]], np.r_[y[b], t])
        return 0.5 * np.mean((m.predict(X[v]) - y[v]) ** 2)

    ref_ext = np.mean([val_loss_with(base[t], val[t], X[3], y[3]) - val_loss(base[t], val[t]) for t in range(T)])
    np.testing.assert_allclose(ext, [ref_ext], rtol=1e-6)
    assert ext[0] > 0


def test_roni_rejects_mislabeled_points_and_calibrates_on_clean_data():
    """The threshold is the 95th percentile of the impacts on a clean pool (5 % false positives by design);
    on the same pool with 10 % of the labels flipped it rejects most flips and few clean points."""
    X, y = _blobs(n_per=40, d=2, sep=2.5, seed=8)
    victim = victims.logistic(1e-2)
    kw = dict(n_base=10, n_val=40, trials=8, metric="error")
    _, clean_scores = roni(victim, X, y, **kw)
    threshold = float(np.percentile(np.asarray(clean_scores), 95))
    rng = np.random.default_rng(9)
    flip = rng.choice(len(y), 8, replace=False)
    y_flip = y.copy()
    y_flip[flip] = 1 - y_flip[flip]
    keep, scores = roni(victim, X, y_flip, threshold=threshold, **kw)          # same shapes: compiled once
    rates = removal_rates(keep, np.isin(np.arange(len(y)), flip))
    assert rates["detection_rate"] >= 0.75 and rates["false_positive_rate"] <= 0.1
    keep_f, _ = RONIDefense(victim, **kw).sanitize(X, y_flip, 0.1)             # the fraction rule, per class
    assert int((~np.asarray(keep_f)).sum()) == 8
    assert removal_rates(keep_f, np.isin(np.arange(len(y)), flip))["detection_rate"] >= 0.75


def test_roni_bad_input():
    X, y = _blobs(n_per=10)
    victim = victims.logistic(1e-2)
    with pytest.raises(ValueError, match="metric"):
        RONIDefense(victim, metric="auc")
    with pytest.raises(ValueError, match="n_base"):
        roni_draws(jax.random.key(0), 20, 20, 5, 2)
    with pytest.raises(ValueError, match="n_val"):
        roni_draws(jax.random.key(0), 20, 10, 11, 2)
    with pytest.raises(TypeError, match="victim"):
        RONIDefense("logistic")
    base = np.zeros((2, 20), bool)
    base[:, :5] = True
    state = RONIState(X, y, base, ~base)
    with pytest.raises(ValueError, match="feature shape"):
        roni_scores(victim, state, X[:, :1], y)
    with pytest.raises(ValueError, match="state.base"):
        roni_scores(victim, RONIState(state.X, state.y, state.base[:, :3], state.val), None)
