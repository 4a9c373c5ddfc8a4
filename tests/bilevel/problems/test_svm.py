"""Tests of :mod:`bilevel.problems.svm`: the exact dual through the KKT map, and the smoothed primal.

All dual problems have n = 100 training points so that the jitted QP solver is compiled once.
"""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from sklearn.datasets import load_digits
from sklearn.svm import SVC

from bilevel.problems.svm import (
    SVMDualSolution,
    hinge_loss,
    smooth_hinge,
    svm_decision,
    svm_dual_fit,
    svm_primal_loss,
)

N = 100
D = 10


@pytest.fixture(scope="module")
def gaussians():
    """Two overlapping Gaussian classes in 10-d (not linearly separable; fewer margin SVs than d + 1,
    so that bound SVs also influence the solution)."""
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(size=(N // 2, D)) + 0.4, rng.normal(size=(N // 2, D)) - 0.4])
    y = np.r_[np.ones(N // 2), -np.ones(N // 2)]
    perm = rng.permutation(N)
    return X[perm], y[perm]


@pytest.fixture(scope="module")
def digits17():
    """Digits 1 vs 7 scaled to [0, 1], 100 points."""
    d = load_digits()
    mask = (d.target == 1) | (d.target == 7)
    X = d.data[mask] / 16.0
    y = np.where(d.target[mask] == 1, 1.0, -1.0)
    idx = np.random.default_rng(0).choice(len(X), N, replace=False)
    return X[idx], y[idx]


def sk_fit(X, y, C=1.0, sample_weight=None):
    clf = SVC(kernel="linear", C=C, tol=1e-8).fit(X, y, sample_weight=sample_weight)
    return clf.coef_[0], clf.intercept_[0]


# --------------------------------------------------------------------------------------------------
# dual: agreement with LIBSVM


@pytest.mark.parametrize("C", [1.0, 0.05])
def test_dual_matches_sklearn_gaussians(gaussians, C):
    X, y = gaussians
    sol = svm_dual_fit(X, y, C)
    assert isinstance(sol, SVMDualSolution)
    w_ref, b_ref = sk_fit(X, y, C)
    np.testing.assert_allclose(sol.w, w_ref, atol=1e-4)
    assert float(sol.b) == pytest.approx(b_ref, abs=1e-4)
    assert int(sol.bound_sv.sum()) > 0 and int(sol.margin_sv.sum()) > 0  # not separable: both kinds of SV
    # the intercept is the equality multiplier and equals the mean of y_i - w'x_i over margin SVs
    m = np.asarray(sol.margin_sv)
    assert float(sol.b) == pytest.approx(float(np.mean(y[m] - X[m] @ np.asarray(sol.w))), abs=1e-10)
    # KKT in terms of margins: alpha = 0 -> y f >= 1, alpha = C -> y f <= 1, margin SV -> y f = 1
    yf = y * np.asarray(svm_decision(sol.params, X))
    a = np.asarray(sol.alpha)
    assert np.all(yf[a == 0] >= 1 - 1e-9) and np.all(yf[np.asarray(sol.bound_sv)] <= 1 + 1e-9)
    np.testing.assert_allclose(yf[m], 1.0, atol=1e-9)
    np.testing.assert_allclose(np.asarray(sol.alpha)[np.asarray(sol.bound_sv)], C)


def test_dual_matches_sklearn_digits(digits17):
    X, y = digits17
    for C in (1.0, 0.02):
        sol = svm_dual_fit(X, y, C)
        w_ref, b_ref = sk_fit(X, y, C)
        np.testing.assert_allclose(sol.w, w_ref, atol=1e-4)
        assert float(sol.b) == pytest.approx(b_ref, abs=1e-4)


def test_per_example_C_matches_sklearn_sample_weight(gaussians):
    X, y = gaussians
    s = np.random.default_rng(2).uniform(0.2, 2.0, size=N)
    sol = svm_dual_fit(X, y, 0.5 * s)
    w_ref, b_ref = sk_fit(X, y, 0.5, sample_weight=s)
    np.testing.assert_allclose(sol.w, w_ref, atol=1e-4)
    assert float(sol.b) == pytest.approx(b_ref, abs=1e-4)


def test_no_margin_support_vector(gaussians):
    # tiny C on balanced classes: every alpha sits at C, the intercept comes from the bound SVs
    # (midpoint of the admissible interval, as in LIBSVM)
    X, y = gaussians
    sol = svm_dual_fit(X, y, 1e-3)
    assert int(sol.margin_sv.sum()) == 0
    w_ref, b_ref = sk_fit(X, y, 1e-3)
    np.testing.assert_allclose(sol.w, w_ref, atol=1e-6)
    assert float(sol.b) == pytest.approx(b_ref, abs=1e-4)
    assert np.isfinite(float(sol.b))


# --------------------------------------------------------------------------------------------------
# dual: derivatives w.r.t. a training point (Biggio et al. 2012) and w.r.t. C


def _wb_of_point(X, y, c, C=1.0):
    def f(xc, Cvec):
        sol = svm_dual_fit(jnp.asarray(X).at[c].set(xc), y, Cvec)
        return jnp.concatenate([sol.w, sol.b[None]])

    return f


def _fd(f, x, eps):
    cols = []
    for k in range(x.size):
        e = np.zeros_like(x)
        e.flat[k] = eps
        cols.append((np.asarray(f(x + e)) - np.asarray(f(x - e))) / (2 * eps))
    return np.stack(cols, axis=-1)


def test_derivative_wrt_training_points(gaussians):
    X, y = gaussians
    C = 1.0
    sol = svm_dual_fit(X, y, C)
    a = np.asarray(sol.alpha)
    margin = np.nonzero(np.asarray(sol.margin_sv) & (a > 0.1 * C) & (a < 0.9 * C))[0]
    bound = np.nonzero(np.asarray(sol.bound_sv))[0]
    assert margin.size and bound.size
    Cvec = jnp.full((N,), C)
    for c in (margin[0], bound[0]):
        f = _wb_of_point(X, y, c)
        J, JC = jax.jacrev(f, argnums=(0, 1))(jnp.asarray(X[c]), Cvec)
        eps = 1e-6
        for sgn in (1, -1):  # the perturbation keeps the active set
            s2 = svm_dual_fit(X + sgn * eps * (np.arange(N) == c)[:, None], y, C)
            assert np.array_equal(np.asarray(s2.margin_sv), np.asarray(sol.margin_sv))
            assert np.array_equal(np.asarray(s2.bound_sv), np.asarray(sol.bound_sv))
        fd = _fd(lambda xc: f(xc, Cvec), np.asarray(X[c]), eps)
        err = np.max(np.abs(J - fd)) / np.max(np.abs(fd))
        assert err < 1e-4, (c, err)
        assert np.max(np.abs(J)) > 1e-3
        # derivative w.r.t. the point's own C_c: zero unless the point is at its upper bound
        fdC = _fd(lambda Cc: f(jnp.asarray(X[c]), Cvec.at[c].set(Cc[0])), np.array([C]), eps)[:, 0]
        if c in bound:
            assert np.max(np.abs(JC[:, c] - fdC)) / np.max(np.abs(fdC)) < 1e-4
        else:
            np.testing.assert_allclose(JC[:, c], 0.0, atol=1e-10)
            np.testing.assert_allclose(fdC, 0.0, atol=1e-6)


def test_dual_validation(gaussians):
    X, y = gaussians
    with pytest.raises(ValueError, match="argument 'y'"):
        svm_dual_fit(X, np.where(y > 0, 1.0, 0.0), 1.0)
    with pytest.raises(ValueError, match="argument 'y' must have shape"):
        svm_dual_fit(X, y[:10], 1.0)
    with pytest.raises(ValueError, match="argument 'C'"):
        svm_dual_fit(X, y, np.ones(3))
    with pytest.raises(ValueError, match="argument 'C' must be non-negative"):
        svm_dual_fit(X, y, 0.0)
    with pytest.raises(ValueError, match="argument 'C' must be non-negative"):
        svm_dual_fit(X, y, -np.ones(N))
    with pytest.raises(ValueError, match="argument 'X' contains NaN"):
        svm_dual_fit(np.where(np.arange(N)[:, None] == 3, np.nan, X), y, 1.0)


# --------------------------------------------------------------------------------------------------
# smoothed-hinge primal


def test_smooth_hinge_tends_to_hinge():
    z = jnp.linspace(-3.0, 4.0, 141)
    hinge = jnp.maximum(0.0, 1.0 - z)
    prev = np.inf
    for t in (1.0, 0.1, 0.01, 1e-3, 1e-5):
        gap = np.asarray(smooth_hinge(z, t) - hinge)
        assert np.all(gap >= -1e-15) and np.max(gap) <= t * np.log(2) + 1e-12
        assert np.max(gap) < prev
        prev = np.max(gap)
    assert np.all(np.isfinite(np.asarray(jax.vmap(jax.grad(smooth_hinge))(z, jnp.full_like(z, 1e-6)))))
    with pytest.raises(ValueError, match="'t'"):
        smooth_hinge(z, 0.0)


def test_primal_loss_and_gradient(gaussians):
    X, y = gaussians
    rng = np.random.default_rng(4)
    params = {"w": jnp.asarray(0.3 * rng.normal(size=D)), "b": jnp.asarray(0.1)}
    weights = jnp.asarray(rng.uniform(0.5, 1.5, size=N))
    reg = jnp.asarray(rng.uniform(0.01, 0.1, size=D))  # per-feature
    t = 0.05
    val = svm_primal_loss(params, reg, X, y, weights, t)
    z = y * (X @ np.asarray(params["w"]) + 0.1)
    manual = np.mean(np.asarray(weights) * t * np.logaddexp(0.0, (1 - z) / t))
    manual += 0.5 * np.sum(np.asarray(reg) * np.asarray(params["w"]) ** 2)
    assert float(val) == pytest.approx(manual, rel=1e-12)
    # gradient w.r.t. params, reg, X and weights against central differences
    f = lambda p, r, Xa, wt: svm_primal_loss(p, r, Xa, y, wt, t)  # noqa: E731
    g = jax.grad(f, argnums=(0, 1, 2, 3))(params, reg, jnp.asarray(X), weights)
    flat0, unravel = jax.flatten_util.ravel_pytree((params, reg, jnp.asarray(X), weights))
    gflat, _ = jax.flatten_util.ravel_pytree(g)
    assert np.all(np.isfinite(gflat))
    idx = np.random.default_rng(5).choice(flat0.size, 40, replace=False)
    idx = np.unique(np.r_[idx, np.arange(D + 1 + D)])  # all of w, b, reg
    eps = 1e-6
    fflat = jax.jit(lambda v: f(*unravel(v)))
    for k in idx:
        e = jnp.zeros_like(flat0).at[k].set(eps)
        fd = (fflat(flat0 + e) - fflat(flat0 - e)) / (2 * eps)
        assert float(gflat[k]) == pytest.approx(float(fd), rel=1e-5, abs=1e-9)
    # intercept not regularised; scalar reg = per-feature constant reg
    p0 = {"w": jnp.zeros(D), "b": jnp.asarray(0.0)}
    assert float(svm_primal_loss(p0, 1.0, X, y, t=t)) == pytest.approx(t * np.log1p(np.exp(1 / t)), rel=1e-12)
    assert float(svm_primal_loss(params, 0.07, X, y, t=t)) == pytest.approx(
        float(svm_primal_loss(params, jnp.full(D, 0.07), X, y, t=t)), rel=1e-14
    )
    # t -> 0 recovers the (unsmoothed) hinge objective
    h = hinge_loss(params, X, y, weights) + 0.5 * jnp.sum(reg * params["w"] ** 2)
    assert float(svm_primal_loss(params, reg, X, y, weights, 1e-7)) == pytest.approx(float(h), abs=1e-6)


def test_primal_validation(gaussians):
    X, y = gaussians
    params = {"w": jnp.zeros(D), "b": jnp.asarray(0.0)}
    with pytest.raises(ValueError, match="argument 'y'"):
        svm_primal_loss(params, 0.1, X, np.where(y > 0, 1.0, 2.0))
    with pytest.raises(ValueError, match="argument 'y'"):
        hinge_loss(params, X, np.zeros(N))
    with pytest.raises(ValueError, match="argument 'weights'"):
        svm_primal_loss(params, 0.1, X, y, weights=np.ones(3))
    with pytest.raises(ValueError, match="argument 'reg'"):
        svm_primal_loss(params, np.ones(3), X, y)


def test_primal_minimiser_approaches_dual_solution(gaussians):
    # mean smoothed hinge + reg/2 |w|^2  ~  C sum hinge + 1/2 |w|^2  with  C = 1 / (n reg)
    X, y = gaussians
    reg = 1.0 / N  # C = 1

    f = jax.jit(jax.value_and_grad(lambda v: svm_primal_loss({"w": v[:D], "b": v[D]}, reg, X, y, t=1e-3)))
    res = scipy.optimize.minimize(
        lambda v: tuple(np.asarray(o, float) for o in f(jnp.asarray(v))),
        np.zeros(D + 1),
        jac=True,
        method="L-BFGS-B",
        options={"gtol": 1e-9, "maxiter": 2000},
    )
    dual = svm_dual_fit(X, y, 1.0)
    np.testing.assert_allclose(res.x[:D], dual.w, atol=1e-2)
    assert res.x[D] == pytest.approx(float(dual.b), abs=1e-2)


def test_float32_fit_and_gradient_match_float64(gaussians):
    """The quasi-definite Cholesky factorisation of the KKT map also holds in float32 (regularisation
    1e-5 relative): weights, intercept and d(||w||^2)/dX agree with float64 to float32 accuracy."""
    X, y = gaussians
    out = {}
    for dt in (jnp.float64, jnp.float32):
        Xd, yd = jnp.asarray(X, dt), jnp.asarray(y, dt)
        sol = svm_dual_fit(Xd, yd, 1.0, on_failure="raise")
        g = jax.grad(lambda Z: jnp.sum(svm_dual_fit(Z, yd, 1.0).w ** 2))(Xd)
        assert sol.w.dtype == dt and bool(jnp.all(jnp.isfinite(g)))
        out[dt] = (np.asarray(sol.w, float), float(sol.b), np.asarray(g, float))
    (w64, b64, g64), (w32, b32, g32) = out[jnp.float64], out[jnp.float32]
    np.testing.assert_allclose(w32, w64, rtol=1e-3, atol=1e-4)
    assert abs(b32 - b64) < 1e-3
    np.testing.assert_allclose(g32, g64, rtol=1e-2, atol=1e-3 * np.abs(g64).max())
