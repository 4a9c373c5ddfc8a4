"""Tests of the data-sanitization defenses (poisoning/defenses/sanitizers.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from poisoning.feasible import project_slab, project_sphere, project_sphere_slab
from poisoning.defenses import (
    CentroidState,
    KNNDefense,
    LossDefense,
    Sanitizer,
    SlabDefense,
    SphereDefense,
    class_centroids,
    knn_scores,
    linear_hinge_losses,
    percentile_thresholds,
    remove_fraction_per_class,
    slab_directions,
    slab_scores,
    sphere_scores,
)


def _data(seed=0, n=40, d=5, K=2, sep=3.0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % K
    rng.shuffle(y)
    means = rng.normal(size=(K, d)) * sep
    X = means[y] + rng.normal(size=(n, d))
    return X, y


def _np_centroids(X, y, K):
    return np.stack([X[y == c].mean(0) for c in range(K)])


# ------------------------------------------------------------------ scores vs numpy references


@pytest.mark.parametrize("K", [2, 3])
def test_sphere_and_slab_scores_match_numpy(K):
    X, y = _data(1, n=30, d=4, K=K)
    mu = _np_centroids(X, y, K)
    np.testing.assert_allclose(class_centroids(X, y), mu, rtol=1e-12)
    np.testing.assert_allclose(sphere_scores(X, y, mu), np.linalg.norm(X - mu[y], axis=1), rtol=1e-12)
    if K == 2:
        v = mu[1] - mu[0]
        ref = np.abs(np.sum((X - mu[y]) * v, axis=1)) / np.linalg.norm(v)
    else:  # documented one-vs-rest extension
        u = np.stack([mu[c] - np.delete(mu, c, 0).mean(0) for c in range(K)])
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        ref = np.abs(np.sum((X - mu[y]) * u[y], axis=1))
    np.testing.assert_allclose(slab_scores(X, y, mu), ref, rtol=1e-10, atol=1e-12)
    st = SphereDefense().fit(X, y)
    np.testing.assert_allclose(SlabDefense().score(st, X, y), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("within_class", [True, False])
@pytest.mark.parametrize("reduction", ["sum", "mean", "kth"])
def test_knn_scores_match_bruteforce(within_class, reduction):
    X, y = _data(2, n=25, d=3, K=2)
    k = 3
    D = np.linalg.norm(X[:, None] - X[None], axis=-1)
    np.fill_diagonal(D, np.inf)  # exclude self
    if within_class:
        D = np.where(y[:, None] == y[None], D, np.inf)
    near = np.sort(D, axis=1)[:, :k]
    ref = {"sum": near.sum(1), "mean": near.mean(1), "kth": near[:, -1]}[reduction]
    dfn = KNNDefense(k=k, reduction=reduction, within_class=within_class)
    mask, s = dfn.sanitize(X, y, 0.0)
    np.testing.assert_allclose(s, ref, rtol=1e-9, atol=1e-9)
    assert mask.all()
    # blocked evaluation agrees; scoring new queries (no self exclusion)
    st = dfn.fit(X, y)
    s_blk = knn_scores(X, y, X, y, k, reduction=reduction, within_class=within_class,
                       exclude_self=True, block_size=7)
    np.testing.assert_allclose(s_blk, ref, rtol=1e-9, atol=1e-9)
    Q = X[:4] + 0.1
    Dq = np.linalg.norm(Q[:, None] - X[None], axis=-1)
    if within_class:
        Dq = np.where(y[:4, None] == y[None], Dq, np.inf)
    nq = np.sort(Dq, axis=1)[:, :k]
    refq = {"sum": nq.sum(1), "mean": nq.mean(1), "kth": nq[:, -1]}[reduction]
    np.testing.assert_allclose(dfn.score(st, Q, y[:4]), refq, rtol=1e-9, atol=1e-9)


def test_loss_defense_hinge():
    X, y = _data(3, n=20, d=3)
    w, b = np.array([0.5, -1.0, 0.2]), 0.3
    ref = np.maximum(0, 1 - (2 * y - 1) * (X @ w + b))
    np.testing.assert_allclose(linear_hinge_losses(w, b, X, y), ref, rtol=1e-12)

    def loss(params, x, yy):
        return jnp.maximum(0.0, 1.0 - (2 * yy - 1) * (x @ params[0] + params[1]))

    dfn = LossDefense(loss, train_fn=lambda X, y: (jnp.asarray(w), b))
    mask, s = dfn.sanitize(X, y, 0.2)
    np.testing.assert_allclose(s, ref, rtol=1e-12)
    np.testing.assert_array_equal(mask, remove_fraction_per_class(ref, y, 0.2))
    # caller-computed losses
    mask2, _ = LossDefense(loss).sanitize(X, y, 0.2, scores=ref)
    np.testing.assert_array_equal(mask, mask2)
    with pytest.raises(ValueError, match="params"):
        LossDefense(loss).fit(X, y)


# ------------------------------------------------------------------ per-class removal


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5, 0.9])
def test_remove_fraction_per_class_exact(fraction):
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, size=57)
    s = rng.normal(size=57)
    keep = np.asarray(remove_fraction_per_class(s, y, fraction))
    for c in range(3):
        idx = np.flatnonzero(y == c)
        n_rm = round(fraction * len(idx))
        removed = idx[~keep[idx]]
        assert len(removed) == n_rm
        top = idx[np.argsort(-s[idx], kind="stable")[:n_rm]]
        assert set(removed) == set(top)


def test_remove_ties_nan_and_jit():
    s = np.array([1.0, 1.0, 1.0, 1.0, np.nan, 0.0])
    y = np.array([0, 0, 0, 0, 1, 1])
    keep = remove_fraction_per_class(s, y, 0.5)
    # ties: lower index removed first; NaN counts as +inf
    np.testing.assert_array_equal(keep, [False, False, True, True, False, True])
    f = jax.jit(remove_fraction_per_class, static_argnums=3)
    np.testing.assert_array_equal(f(s, y, 0.5, 2), keep)
    # traced fraction
    fv = jax.vmap(lambda fr: remove_fraction_per_class(s, y, fr, 2))(jnp.array([0.0, 0.5]))
    np.testing.assert_array_equal(fv[1], keep)
    assert fv[0].all()


# ------------------------------------------------------------------ planted outliers


def test_planted_outliers_removed_by_sphere_and_knn():
    X, y = _data(5, n=60, d=4, K=2, sep=4.0)
    mu = _np_centroids(X, y, 2)
    out_idx = np.array([3, 10, 20])
    Xp = X.copy()
    Xp[out_idx] = mu[y[out_idx]] + 25.0 * np.eye(4)[:3]
    frac = 0.05  # round(0.05 * 30) = 2 per class >= outliers of each class
    assert all(np.sum(y[out_idx] == c) <= round(frac * 30) for c in range(2))
    for dfn in (SphereDefense(), KNNDefense(k=3)):
        keep, _ = dfn.sanitize(Xp, y, frac)
        assert not np.asarray(keep)[out_idx].any(), type(dfn).__name__


def test_flipped_point_caught_by_slab_and_sphere():
    X, y = _data(6, n=60, d=4, K=2, sep=4.0)
    mu = _np_centroids(X, y, 2)
    i = int(np.flatnonzero(y == 0)[0])
    Xp = X.copy()
    Xp[i] = mu[1]  # a class-0 point sitting at the class-1 centroid
    for dfn in (SlabDefense(), SphereDefense()):
        keep, s = dfn.sanitize(Xp, y, 1 / 30)  # removes exactly one point per class
        assert not bool(keep[i]), type(dfn).__name__
        assert int(np.sum(~np.asarray(keep))) == 2


def test_oracle_state_and_protocol():
    X, y = _data(7, n=30, d=3)
    st = CentroidState(jnp.asarray(_np_centroids(X, y, 2)))
    keep, s = SphereDefense().sanitize(X, y, 0.2, state=st)
    np.testing.assert_allclose(s, sphere_scores(X, y, st.centroids))
    for d in (SphereDefense(), SlabDefense(), KNNDefense(), LossDefense(lambda p, x, y: 0.0)):
        assert isinstance(d, Sanitizer)


# ------------------------------------------------------------------ projections / feasible sets


def test_thresholds_and_projections():
    X, y = _data(8, n=50, d=5, K=2)
    sph, slb = SphereDefense(), SlabDefense()
    st = sph.fit(X, y)
    r = sph.thresholds(st, X, y, 70.0)
    s = slb.thresholds(st, X, y, 70.0)
    sc = np.asarray(sphere_scores(X, y, st.centroids))
    np.testing.assert_allclose(r, [np.percentile(sc[y == c], 70) for c in range(2)], rtol=1e-12)
    np.testing.assert_allclose(percentile_thresholds(sc, y, 70.0), r)

    rng = np.random.default_rng(9)
    Z = rng.normal(size=(200, 5)) * 6
    yz = rng.integers(0, 2, size=200)
    mu = np.asarray(st.centroids)

    reg = sph.feasible_region(st, r)
    P = np.asarray(reg.project(Z, yz))
    assert np.all(np.asarray(sphere_scores(P, yz, mu)) <= np.asarray(r)[yz] + 1e-9)
    assert np.asarray(reg.contains(P, yz)).all()
    # closed form: the closest point of the ball lies on the ray from mu to z
    dz = Z - mu[yz]
    nz = np.linalg.norm(dz, axis=1, keepdims=True)
    ref = mu[yz] + dz * np.minimum(1, np.asarray(r)[yz][:, None] / nz)
    np.testing.assert_allclose(P, ref, rtol=1e-12, atol=1e-12)
    # points inside are unchanged; and no sampled feasible point is closer
    inside = np.asarray(reg.contains(Z, yz))
    np.testing.assert_allclose(P[inside], Z[inside])
    cand = np.asarray(project_sphere(Z[:1] + rng.normal(size=(500, 5)) * 3, np.full(500, yz[0]), mu, r))
    assert np.all(np.linalg.norm(cand - Z[0], axis=1) >= np.linalg.norm(P[0] - Z[0]) - 1e-9)

    sreg = slb.feasible_region(st, s)
    Ps = np.asarray(sreg.project(Z, yz))
    assert np.all(np.asarray(slab_scores(Ps, yz, mu)) <= np.asarray(s)[yz] + 1e-9)
    # slab projection moves only along the slab direction, by the excess
    u = np.asarray(slab_directions(mu))
    step = Z - Ps
    t = np.abs(np.sum(dz * u[yz], 1))
    np.testing.assert_allclose(np.linalg.norm(step, axis=1), np.maximum(t - np.asarray(s)[yz], 0), atol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(step - np.sum(step * u[yz], 1, keepdims=True) * u[yz], axis=1), 0,
                               atol=1e-10)
    np.testing.assert_allclose(project_slab(Z, yz, mu, u, s), Ps)


def _dykstra(z, proj_a, proj_b, iters=3000):
    x, p, q = z.copy(), np.zeros_like(z), np.zeros_like(z)
    for _ in range(iters):
        yv = proj_a(x + p)
        p = x + p - yv
        x = proj_b(yv + q)
        q = yv + q - x
    return x


def test_project_sphere_slab_exact():
    rng = np.random.default_rng(10)
    mu = rng.normal(size=(2, 4))
    u = np.asarray(slab_directions(mu))
    R, S = np.array([2.0, 3.0]), np.array([0.7, 1.5])
    Z = mu[rng.integers(0, 2, 40) * 0] + rng.normal(size=(40, 4)) * 3
    yz = np.zeros(40, dtype=int)
    Z[0] = mu[0] + 0.1 * u[0]  # already feasible
    P = np.asarray(project_sphere_slab(Z, yz, mu, u, R, S))
    assert np.all(np.asarray(sphere_scores(P, yz, mu)) <= R[0] + 1e-9)
    assert np.all(np.asarray(slab_scores(P, yz, mu, u)) <= S[0] + 1e-9)
    np.testing.assert_allclose(P[0], Z[0])
    def pa(x):  # numpy ball projection (class 0)
        z = x - mu[0]
        return mu[0] + z * min(1.0, R[0] / np.linalg.norm(z))

    def pb(x):  # numpy slab projection (class 0)
        t = (x - mu[0]) @ u[0]
        return x - (t - np.clip(t, -S[0], S[0])) * u[0]

    for i in range(1, 8):
        ref = _dykstra(Z[i], pa, pb)
        np.testing.assert_allclose(P[i], ref, atol=1e-6)


# ------------------------------------------------------------------ jit / vmap


def test_jit_vmap_consistency():
    X, y = _data(11, n=24, d=3)
    mu = class_centroids(X, y)
    np.testing.assert_allclose(jax.jit(sphere_scores)(X, y, mu), sphere_scores(X, y, mu), rtol=1e-12)
    np.testing.assert_allclose(jax.jit(slab_scores)(X, y, mu), slab_scores(X, y, mu), rtol=1e-12)
    single = jax.vmap(lambda x, yy: sphere_scores(x[None], yy[None], mu)[0])(jnp.asarray(X), jnp.asarray(y))
    np.testing.assert_allclose(single, sphere_scores(X, y, mu), rtol=1e-12)
    kf = jax.jit(lambda X, y: knn_scores(X, y, X, y, 3, exclude_self=True, num_classes=2))
    np.testing.assert_allclose(kf(X, y), KNNDefense(k=3).sanitize(X, y, 0.0)[1], rtol=1e-10)

    dfn = SphereDefense(num_classes=2)
    jm, js = jax.jit(lambda X, y: dfn.sanitize(X, y, 0.25))(X, y)
    m, s = dfn.sanitize(X, y, 0.25)
    np.testing.assert_array_equal(jm, m)
    np.testing.assert_allclose(js, s, rtol=1e-12)

    r = jnp.array([1.0, 1.5])
    pj = jax.jit(project_sphere)(X, y, mu, r)
    pv = jax.vmap(project_sphere, in_axes=(0, 0, None, None))(jnp.asarray(X), jnp.asarray(y), mu, r)
    np.testing.assert_allclose(pj, pv, rtol=1e-12)
    u = slab_directions(mu)
    a = jax.vmap(project_sphere_slab, in_axes=(0, 0, None, None, None, None))(X, y, mu, u, r, 0.5)
    np.testing.assert_allclose(a, jax.jit(project_sphere_slab)(X, y, mu, u, r, 0.5), rtol=1e-12)
    # gradients of a projection are finite (attacks differentiate through them)
    g = jax.jit(jax.grad(lambda x: jnp.sum(project_sphere_slab(x, y, mu, u, r, 0.5) ** 2)))(jnp.asarray(X))
    assert np.isfinite(np.asarray(g)).all()


# ------------------------------------------------------------------ errors


def test_errors():
    X, y = _data(12, n=20, d=3)
    with pytest.raises(ValueError, match="fraction"):
        SphereDefense().sanitize(X, y, 1.0)
    with pytest.raises(ValueError, match="fraction"):
        remove_fraction_per_class(np.zeros(20), y, -0.1)
    with pytest.raises(ValueError, match="y has label 2"):
        SphereDefense(num_classes=2).fit(X, np.where(y == 1, 2, y))
    with pytest.raises(ValueError, match="not -1/\\+1"):
        sphere_scores(X, 2 * y - 1, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="y has 19 labels"):
        class_centroids(X, y[:-1])
    with pytest.raises(ValueError, match=r"X must have shape \(n, d\)"):
        sphere_scores(X[0], y, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="centroids has dimension 4"):
        sphere_scores(X, y, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="scores must have shape"):
        SphereDefense().sanitize(X, y, 0.1, scores=np.zeros(5))
    with pytest.raises(ValueError, match="k must be"):
        KNNDefense(k=0)
    with pytest.raises(ValueError, match="k=25"):
        KNNDefense(k=25).fit(X, y)
    with pytest.raises(ValueError, match="at least 2 classes"):
        slab_directions(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="no examples"):
        class_centroids(X, y, num_classes=3)
    with pytest.raises(ValueError, match="radii"):
        project_sphere(X, y, np.zeros((2, 3)), np.ones(3))
    with pytest.raises(ValueError, match="percentile"):
        percentile_thresholds(np.zeros(20), y, 120)
    with pytest.raises(ValueError, match="num_classes must be given"):
        jax.jit(lambda s, y: remove_fraction_per_class(s, y, 0.1))(np.zeros(20), y)


def test_projection_gradient_finite_at_centroid():
    mu = jnp.array([[0.0, 0.0], [3.0, 1.0]])
    u = slab_directions(mu)
    f = jax.jit(jax.grad(lambda x: jnp.sum(project_sphere_slab(x, 0, mu, u, 1.0, 0.5))
                         + jnp.sum(project_sphere(x, 0, mu, 1.0))))
    assert np.isfinite(np.asarray(f(jnp.zeros(2)))).all()
