"""Koh, Steinhardt & Liang (2022): influence attack constrained to the sanitizers' feasible set."""

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
    # with the loss-defense halfspaces of a model: hinge below the clean percentile, sphere/slab still hold
    params = K.train_svm(X, y, None, K.SVMConfig())
    tau = np.asarray(K.hinge_thresholds(params, X, y, 90.0))
    Xh = np.asarray(K.project_feasible(X_far, y_loc, counts, X, y, percentile=90.0,
                                       halfspaces=K.loss_halfspaces(params, y_loc, tau)))
    hinge = np.maximum(0, 1 - y_loc * (Xh @ np.asarray(params["w"]) + float(params["b"])))
    assert np.all(hinge <= tau[(y_loc > 0).astype(int)] + 1e-9)
    hinge_far = np.maximum(0, 1 - y_loc * (np.clip(X_far, 0, 1) @ np.asarray(params["w"]) + float(params["b"])))
    assert np.any(hinge_far > tau[(y_loc > 0).astype(int)])  # the constraint was active
    Xs, ys, is_p = K.expand_copies(X, y, Xh, y_loc, counts)
    keep, _ = SphereDefense(num_classes=2).sanitize(Xs, pm1_to_index(ys), 0.05)
    assert np.all(np.asarray(keep)[is_p]) and Xh.min() >= 0.0 and Xh.max() <= 1.0
    # the unprojected points are removed
    Xs0, ys0, is_p0 = K.expand_copies(X, y, np.clip(X_far, 0, 1), y_loc, counts)
    keep0, _ = SphereDefense(num_classes=2).sanitize(Xs0, pm1_to_index(ys0), 0.05)
    assert not np.any(np.asarray(keep0)[is_p0])


def test_kkt_target_gradient_and_residual_gradient():
    X, y, _, _ = _tiny(seed=1)
    cfg = K.SVMConfig(wd=0.05, t=0.1)
    rng = np.random.default_rng(1)
    params = {"w": jnp.asarray(rng.standard_normal(X.shape[1])), "b": jnp.asarray(0.3)}
    n_poison = 5

    # G is the gradient of sum_clean sh + N wd/2 |w|^2 (N = n + n_poison)
    def scaled(p):
        z = jnp.asarray(y, float) * (jnp.asarray(X) @ p["w"] + p["b"])
        return jnp.sum(K._sh(z, cfg.t)) + 0.5 * (len(y) + n_poison) * cfg.wd * jnp.sum(p["w"] ** 2)

    Gw, Gb = K.kkt_target_gradient(params, X, y, n_poison, cfg)
    h = 1e-6
    fd_w = np.array([(scaled({"w": params["w"].at[j].add(h), "b": params["b"]})
                      - scaled({"w": params["w"].at[j].add(-h), "b": params["b"]})) / (2 * h)
                     for j in range(X.shape[1])])
    fd_b = (scaled({"w": params["w"], "b": params["b"] + h})
            - scaled({"w": params["w"], "b": params["b"] - h})) / (2 * h)
    np.testing.assert_allclose(np.asarray(Gw), fd_w, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(float(Gb), float(fd_b), rtol=1e-6, atol=1e-8)

    # closed-form gradient of the KKT residual vs central differences
    X_loc = rng.uniform(0, 1, (3, X.shape[1]))
    y_loc, counts = np.array([1, -1, 1]), np.array([2.0, 3.0, 1.0])
    g = np.asarray(K.kkt_residual_grad(X_loc, y_loc, counts, Gw))
    fd = np.zeros_like(X_loc)
    for i in range(X_loc.shape[0]):
        for j in range(X_loc.shape[1]):
            e = np.zeros_like(X_loc)
            e[i, j] = h
            fd[i, j] = (float(K.kkt_residual(X_loc + e, y_loc, counts, Gw))
                        - float(K.kkt_residual(X_loc - e, y_loc, counts, Gw))) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-6)


def test_kkt_exact_poison_makes_decoy_optimal():
    """Unconstrained KKT check: poison solving sum_j c_j y_j (x_j, 1) = G on the active hinge makes the
    decoy the retrained optimum."""
    X, y, Xt, yt = _tiny(seed=2)
    cfg = K.SVMConfig(wd=0.01, t=0.01, tol=1e-11)
    clean = K.train_svm(X, y, None, cfg)
    decoy = {"w": clean["w"], "b": clean["b"] + 0.5}  # a shifted intercept
    n_pos, n_neg = 10, 10
    Gw, Gb = K.kkt_target_gradient(decoy, X, y, n_pos + n_neg, cfg)
    w, b = np.asarray(decoy["w"]), float(decoy["b"])
    x_neg = (-0.5 - b) * w / (w @ w)  # margin y (w'x + b) = 0.5 for y = -1: on the linear part
    # choose counts solving c_pos - c_neg = Gb with c_pos + c_neg = 20 (real-valued multiplicities)
    c_pos, c_neg = (20 + float(Gb)) / 2, (20 - float(Gb)) / 2
    x_pos = (np.asarray(Gw) + c_neg * x_neg) / c_pos
    X_loc, y_loc, counts = np.stack([x_pos, x_neg]), np.array([1, -1]), np.array([c_pos, c_neg])
    z = y_loc * (X_loc @ w + b)
    assert np.all(z < 1 - 10 * cfg.t)  # both poison locations on the linear part of the hinge
    Xs = np.concatenate([X, X_loc])
    ys = np.concatenate([y, y_loc])
    c = np.concatenate([np.ones(len(y)), counts])
    p = K.train_svm(Xs, ys, c, cfg)
    np.testing.assert_allclose(np.asarray(p["w"]), np.asarray(decoy["w"]), atol=1e-5)
    np.testing.assert_allclose(float(p["b"]), float(decoy["b"]), atol=1e-5)


@pytest.fixture(scope="module")
def digits_attacks(digits):
    """eps = 3 %: naive attack and the sanitizer-aware one (KKT start + influence ascent projected onto
    sphere ∩ slab ∩ box ∩ loss constraint)."""
    X, y, Xt, yt = digits
    n_poison = int(round(0.03 * len(y)))
    cfg = K.SVMConfig()
    naive = K.koh_attack(X, y, Xt, yt, n_poison, aware=False, steps=20, cfg=cfg)
    decoys = K.decoy_parameters(X, y, Xt, yt, cfg, weights=(0.2,)) + [naive.params]
    kkt = K.kkt_attack(X, y, Xt, yt, n_poison, decoys, cfg=cfg, iters=100, min_copies=6)
    aware = K.koh_attack(X, y, Xt, yt, n_poison, aware=True, steps=20, cfg=cfg, loss_percentile=90.0,
                         schedule="cosine", init=(kkt.X_loc, kkt.y_loc, kkt.counts))
    return naive, kkt, aware


def test_kkt_and_aware_poison_survive_every_sanitizer(digits, digits_attacks):
    X, y, Xt, yt = digits
    naive, kkt, aware = digits_attacks
    used = kkt.counts[kkt.counts > 0]
    assert used.sum() == naive.counts.sum() and np.all(used >= 6)  # k-NN: every copy has k = 5 twins
    assert aware.best_value >= aware.history[0] - 1e-12
    rows = K.evaluate_defenses(X, y, Xt, yt, naive, aware, extra={"kkt": kkt})
    for r in rows:  # the defenses are fit on the poisoned data and keep every poison copy
        assert r["aware_poison_kept"] == 1.0, r
        assert r["kkt_poison_kept"] == 1.0, r
    # the loss constraint holds for the returned point under its own retrained model
    tau = np.asarray(K.hinge_thresholds(aware.params, X, y, 90.0))
    h = np.maximum(0, 1 - aware.y_loc * (aware.X_loc @ np.asarray(aware.params["w"]) + float(aware.params["b"])))
    assert np.all(h <= tau[(aware.y_loc > 0).astype(int)] + 1e-9)


def test_aware_beats_naive_after_sphere_defense(digits, digits_attacks):
    """The sphere defense (fit on the poisoned data) removes the naive poison but keeps the aware
    poison, which then does more damage (measured here, not hard-coded)."""
    X, y, Xt, yt = digits
    naive, _, aware = digits_attacks
    cfg = K.SVMConfig()
    out = {}
    for name, res in (("naive", naive), ("aware", aware)):
        Xs, ys, is_p = K.expand_copies(X, y, res.X_loc, res.y_loc, res.counts)
        params, keep = K.sanitize_and_train(Xs, ys, "sphere", 0.05, cfg)
        out[name] = (float(K.target_loss(params, Xt, yt, cfg.t)), K.test_error(params, Xt, yt), keep[is_p].mean())
    assert out["aware"][2] == 1.0 and out["naive"][2] < 1.0
    assert out["aware"][0] > out["naive"][0]  # test hinge loss after the defense
    assert out["aware"][1] >= out["naive"][1]  # test 0-1 error after the defense


def test_bad_arguments_raise_value_errors(digits):
    X, y, Xt, yt = digits
    with pytest.raises(ValueError, match="schedule"):
        K.koh_attack(X, y, Xt, yt, 4, schedule="linear")
    with pytest.raises(ValueError, match="centroids"):
        K.project_feasible(X[:2], np.array([1, -1]), np.array([1, 1]), X, y, centroids="oracle")
    with pytest.raises(ValueError, match="weights"):
        K.decoy_parameters(X, y, Xt, yt, weights=(-1.0,))
    with pytest.raises(ValueError, match="min_copies"):
        K.kkt_attack(X, y, Xt, yt, 4, [{"w": np.zeros(X.shape[1]), "b": 0.0}], min_copies=0)
    with pytest.raises(ValueError, match="decoys"):
        K.kkt_attack(X, y, Xt, yt, 4, [])
    with pytest.raises(ValueError, match="fraction"):
        K.evaluate_defenses(X, y, Xt, yt, None, None, fraction=1.5)
