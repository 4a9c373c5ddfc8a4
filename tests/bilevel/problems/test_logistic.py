"""Tests of bilevel.problems.logistic against scikit-learn on a small digits subset (float64)."""

import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from bilevel.problems.logistic import (
    init_params,
    logistic_accuracy,
    logistic_error,
    logistic_init_params,
    logistic_loss,
    logistic_optimality,
    logistic_predict,
    logistic_predict_proba,
    multiclass_accuracy,
    multiclass_error,
    multiclass_init_params,
    multiclass_logistic_loss,
    multiclass_logistic_optimality,
    multiclass_predict,
    multiclass_predict_proba,
)

REG = 1e-2


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X / 16.0, y


@pytest.fixture(scope="module")
def multi_data(digits):
    X, y = digits
    m = np.isin(y, [0, 1, 2])
    return X[m][:120], y[m][:120]


@pytest.fixture(scope="module")
def binary_data(digits):
    X, y = digits
    m = np.isin(y, [1, 7])
    return X[m][:100], (y[m][:100] == 7).astype(np.int64)


def _unflat(v, d, k):
    if isinstance(v, np.ndarray):
        v = jnp.asarray(v)
    if k is None:
        return {"w": v[:d], "b": v[d]}
    return {"w": v[: d * k].reshape(d, k), "b": v[d * k :]}


@partial(jax.jit, static_argnames=("loss", "k"))
def _fgh(loss, k, v, reg, X, y, s):
    """Loss, gradient and Hessian on the flat parameter vector (one compile per problem/shape)."""
    f = lambda u: loss(_unflat(u, X.shape[1], k), reg, X, y, s)  # noqa: E731
    return f(v), jax.grad(f)(v), jax.hessian(f)(v)


def _newton_minimize(loss, k, reg, X, y, s=None, iters=30, tol=1e-11):
    """Damped Newton with Armijo backtracking; lstsq handles the flat softmax-intercept direction."""
    d = X.shape[1]
    size = d + 1 if k is None else (d + 1) * k
    x = np.zeros(size)
    # scalar reg == constant per-feature reg and no weights == unit weights: one compile per problem
    reg = np.broadcast_to(np.asarray(reg, float), (d,))
    s = np.ones(X.shape[0]) if s is None else np.asarray(s, float)
    args = (reg, np.asarray(X, float), np.asarray(y), s)
    for _ in range(iters):
        fx, grad, hess = (np.asarray(a) for a in _fgh(loss, k, x, *args))
        if np.max(np.abs(grad)) < tol:
            break
        step = np.linalg.lstsq(hess, -grad, rcond=1e-12)[0]
        t = 1.0
        while float(_fgh(loss, k, x + t * step, *args)[0]) > fx + 1e-4 * t * grad @ step and t > 1e-8:
            t *= 0.5
        x = x + t * step
    return {"w": x[:d], "b": x[d]} if k is None else {"w": x[: d * k].reshape(d, k), "b": x[d * k :]}


def _sklearn(X, y, C, sample_weight=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = LogisticRegression(C=C, tol=1e-12, max_iter=1000, solver="newton-cholesky")
        return clf.fit(X, y, sample_weight=sample_weight)


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(l)) for l in jax.tree_util.tree_leaves(tree)])


def _fd_check(loss, grad_fn, params, coords, eps=1e-6, rtol=1e-6, atol=1e-9):
    """Central finite differences (one jitted vmap) on chosen flat coordinates vs the analytic gradient."""
    flat, unravel = ravel_pytree(params)
    g = _flat(grad_fn(params))
    assert np.all(np.isfinite(g))
    E = eps * np.eye(flat.size)[coords]
    f = jax.jit(jax.vmap(lambda v: loss(unravel(v))))
    x = _flat(params)
    fd = (np.asarray(f(x + E)) - np.asarray(f(x - E))) / (2 * eps)
    np.testing.assert_allclose(g[coords], fd, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------------------------------
# binary
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("weighted", [False, True])
def test_binary_matches_sklearn(binary_data, weighted):
    X, y = binary_data
    n, d = X.shape
    s = np.random.default_rng(0).uniform(0.5, 2.0, n) if weighted else None
    sol = _newton_minimize(logistic_loss, None, REG, X, y, s)
    g = logistic_optimality(sol, REG, X, y, s)
    assert max(float(np.max(np.abs(np.asarray(l)))) for l in jax.tree_util.tree_leaves(g)) < 1e-10
    clf = _sklearn(X, y, C=1.0 / (n * REG), sample_weight=s)
    np.testing.assert_allclose(sol["w"], clf.coef_[0], atol=1e-4)
    np.testing.assert_allclose(sol["b"], clf.intercept_[0], atol=1e-4)
    np.testing.assert_allclose(logistic_predict_proba(sol, X), clf.predict_proba(X)[:, 1], atol=1e-5)
    np.testing.assert_array_equal(logistic_predict(sol, X), clf.predict(X))
    np.testing.assert_allclose(logistic_accuracy(sol, X, y), clf.score(X, y), atol=1e-12)
    np.testing.assert_allclose(logistic_error(sol, X, y), 1 - clf.score(X, y), atol=1e-12)


def test_binary_per_feature_reg_matches_rescaled_sklearn(binary_data):
    """reg_j w_j^2 == reg0 u_j^2 with u_j = sqrt(reg_j / reg0) w_j, i.e. features scaled by 1/sqrt(reg_j/reg0)."""
    X, y = binary_data
    n, d = X.shape
    reg = REG * np.exp(np.random.default_rng(1).uniform(-1.5, 1.5, d))
    scale = np.sqrt(reg / REG)
    sol = _newton_minimize(logistic_loss, None, reg, X, y)
    clf = _sklearn(X / scale, y, C=1.0 / (n * REG))
    np.testing.assert_allclose(sol["w"], clf.coef_[0] / scale, atol=1e-4)
    np.testing.assert_allclose(sol["b"], clf.intercept_[0], atol=1e-4)


def test_binary_gradient_vs_finite_differences(binary_data):
    X, y = binary_data
    n, d = X.shape
    rng = np.random.default_rng(2)
    params = {"w": jnp.asarray(rng.normal(size=d)), "b": jnp.asarray(0.2)}
    reg = np.linspace(0.0, 0.1, d)
    s = rng.uniform(0.1, 3.0, n)
    _fd_check(
        lambda p: logistic_loss(p, reg, X, y, s),
        lambda p: logistic_optimality(p, reg, X, y, s),
        params,
        coords=[0, 1, 6, 21, 41, 64],  # flat order: b, then w
    )


def test_binary_loss_value_and_stability(binary_data):
    X, y = binary_data
    n, d = X.shape
    p0 = logistic_init_params(d)
    np.testing.assert_allclose(logistic_loss(p0, REG, X, y), np.log(2.0), rtol=1e-12)
    # huge logits: log_sigmoid keeps the loss finite and exact (= margin for a wrong prediction)
    big = {"w": np.zeros(d), "b": np.asarray(1000.0)}
    val = logistic_loss(big, 0.0, X[:2], np.array([0, 1]))
    np.testing.assert_allclose(val, 500.0, rtol=1e-12)  # (1000 + ~0) / 2
    gb = jax.grad(logistic_loss)(big, 0.0, X[:2], np.array([0, 1]))
    np.testing.assert_allclose(float(gb["b"]), 0.5, rtol=1e-12)


# ----------------------------------------------------------------------------------------------------
# multinomial
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("weighted", [False, True])
def test_multiclass_matches_sklearn(multi_data, weighted):
    X, y = multi_data
    n, d = X.shape
    s = np.random.default_rng(3).uniform(0.5, 2.0, n) if weighted else None
    sol = _newton_minimize(multiclass_logistic_loss, 3, REG, X, y, s)
    g = multiclass_logistic_optimality(sol, REG, X, y, s)
    assert max(float(np.max(np.abs(np.asarray(l)))) for l in jax.tree_util.tree_leaves(g)) < 1e-10
    clf = _sklearn(X, y, C=1.0 / (n * REG), sample_weight=s)
    np.testing.assert_allclose(sol["w"], clf.coef_.T, atol=1e-4)
    # intercepts are only defined up to a common shift: compare centered
    b = np.asarray(sol["b"])
    np.testing.assert_allclose(b - b.mean(), clf.intercept_ - clf.intercept_.mean(), atol=1e-4)
    np.testing.assert_allclose(multiclass_predict_proba(sol, X), clf.predict_proba(X), atol=1e-5)
    np.testing.assert_array_equal(multiclass_predict(sol, X), clf.predict(X))
    np.testing.assert_allclose(multiclass_accuracy(sol, X, y), clf.score(X, y), atol=1e-12)
    np.testing.assert_allclose(multiclass_error(sol, X, y), 1 - clf.score(X, y), atol=1e-12)


def test_multiclass_gradient_vs_finite_differences(multi_data):
    X, y = multi_data
    n, d = X.shape
    rng = np.random.default_rng(4)
    params = {"w": jnp.asarray(rng.normal(size=(d, 3))), "b": jnp.asarray(rng.normal(size=3))}
    reg = np.linspace(0.0, 0.1, d)
    s = rng.uniform(0.1, 3.0, n)
    _fd_check(
        lambda p: multiclass_logistic_loss(p, reg, X, y, s),
        lambda p: multiclass_logistic_optimality(p, reg, X, y, s),
        params,
        coords=[0, 2, 3, 10, 100, 194],  # flat order: b (3), then w
    )


def test_multiclass_loss_value_by_hand(multi_data):
    X, y = multi_data
    n, d = X.shape
    rng = np.random.default_rng(5)
    W, b = rng.normal(size=(d, 3)) * 0.3, rng.normal(size=3)
    Z = X @ W + b
    Z = Z - Z.max(1, keepdims=True)
    logp = Z - np.log(np.exp(Z).sum(1, keepdims=True))
    reg = np.linspace(0.01, 0.2, d)
    expected = -np.mean(logp[np.arange(n), y]) + 0.5 * np.sum(reg[:, None] * W**2)
    got = multiclass_logistic_loss({"w": jnp.asarray(W), "b": jnp.asarray(b)}, reg, X, y)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_vmap_over_reg_jit_and_float32(multi_data, binary_data):
    X, y = multi_data
    n, d = X.shape
    params = {"w": np.full((d, 3), 0.1), "b": np.zeros(3)}
    regs = np.array([0.0, 0.1, 1.0])
    out = np.asarray(jax.jit(jax.vmap(multiclass_logistic_loss, in_axes=(None, 0, None, None)))(params, regs, X, y))
    pen = 0.5 * np.sum(params["w"] ** 2)
    np.testing.assert_allclose(out - out[0], regs * pen, rtol=1e-10)
    grads = jax.jit(jax.vmap(jax.grad(multiclass_logistic_loss), in_axes=(None, 0, None, None)))(params, regs, X, y)
    gw = np.asarray(grads["w"])
    np.testing.assert_allclose(gw[2] - gw[0], params["w"], rtol=1e-10)  # d/dW of 0.5*reg*|W|^2
    assert grads["w"].shape == (3, d, 3)
    Xb, yb = binary_data
    f32 = logistic_loss(logistic_init_params(d, dtype=jnp.float32), np.float32(0.1), Xb.astype(np.float32), yb)
    assert f32.dtype == jnp.float32
    np.testing.assert_allclose(f32, np.log(2.0), rtol=1e-6)


def test_init_params():
    p = init_params(5)
    assert p["w"].shape == (5,) and p["b"].shape == ()
    q = init_params(5, 4)
    assert q["w"].shape == (5, 4) and q["b"].shape == (4,)


def test_validation_errors_name_the_argument(binary_data, multi_data):
    Xb, yb = binary_data
    Xm, ym = multi_data
    d = Xb.shape[1]
    pb, pm = logistic_init_params(d), multiclass_init_params(d, 3)
    with pytest.raises(ValueError, match="'y'.*labels"):
        logistic_loss(pb, REG, Xb, 2 * yb - 1)  # {-1,+1} labels are rejected: binary uses {0, 1}
    with pytest.raises(ValueError, match="'y'"):
        logistic_loss(pb, REG, Xb, yb + 0.5)
    with pytest.raises(ValueError, match="'y'"):
        multiclass_logistic_loss(pm, REG, Xm, np.where(ym == 2, 3, ym))  # index >= n_classes
    with pytest.raises(ValueError, match="'y'"):
        multiclass_logistic_loss(pm, REG, Xm, -np.ones_like(ym))
    with pytest.raises(ValueError, match="'y'.*integer"):
        multiclass_logistic_loss(pm, REG, Xm, ym.astype(float))
    with pytest.raises(ValueError, match="'y'"):
        multiclass_accuracy(pm, Xm, np.full_like(ym, 7))
    Xnan = Xb.copy()
    Xnan[0, 0] = np.inf
    with pytest.raises(ValueError, match="'X'"):
        logistic_loss(pb, REG, Xnan, yb)
    with pytest.raises(ValueError, match="'params'"):
        logistic_loss(pm, REG, Xb, yb)  # multiclass params to the binary loss
    with pytest.raises(ValueError, match="'params'"):
        multiclass_logistic_loss(pb, REG, Xm, ym)
    with pytest.raises(ValueError, match="'params'"):
        logistic_loss(logistic_init_params(d - 1), REG, Xb, yb)
    with pytest.raises(ValueError, match="'reg'"):
        logistic_loss(pb, np.ones(d + 1), Xb, yb)
    with pytest.raises(ValueError, match="'weights'"):
        multiclass_logistic_loss(pm, REG, Xm, ym, np.ones(3))
    # traced labels are not value-checked (no error under jit)
    out = jax.jit(logistic_loss)(pb, REG, Xb, 2 * yb - 1)
    assert np.isfinite(float(out))
