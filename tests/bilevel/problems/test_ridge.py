"""Tests of bilevel.problems.ridge (float64 via tests/conftest.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import Ridge

from bilevel.problems.ridge import (
    init_params,
    ridge_closed_form,
    ridge_init_params,
    ridge_loss,
    ridge_mse,
    ridge_optimality,
    ridge_predict,
)

N, D = 40, 6


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, D)) * np.linspace(0.5, 2.0, D) + 0.7
    w_true = rng.normal(size=D)
    y = X @ w_true + 1.5 + 0.3 * rng.normal(size=N)
    weights = rng.uniform(0.2, 2.0, size=N)
    reg_vec = np.linspace(0.01, 0.5, D)
    return X, y, weights, reg_vec


def _lstsq_solution(reg, X, y, weights, fit_intercept):
    """Minimize (1/n) sum s_i 0.5 r_i^2 + 0.5 sum reg_j w_j^2 as one augmented least-squares problem."""
    n, d = X.shape
    s = np.ones(n) if weights is None else np.asarray(weights)
    reg = np.broadcast_to(np.asarray(reg, float), (d,))
    root = np.sqrt(s / n)[:, None]
    design = np.hstack([X, np.ones((n, 1))]) if fit_intercept else X
    p = design.shape[1]
    pen = np.zeros((d, p))
    pen[:, :d] = np.diag(np.sqrt(reg))
    A = np.vstack([root * design, pen])
    rhs = np.concatenate([root[:, 0] * y, np.zeros(d)])
    sol = np.linalg.lstsq(A, rhs, rcond=None)[0]
    return sol[:d], (sol[d] if fit_intercept else 0.0)


def _max_abs(tree):
    return max(float(np.max(np.abs(np.asarray(l)))) for l in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize(
    "per_feature, use_weights, fit_intercept",
    [(False, False, True), (True, True, True), (True, False, True), (False, True, False), (True, True, False)],
)
def test_closed_form_is_the_minimizer(data, per_feature, use_weights, fit_intercept):
    X, y, weights, reg_vec = data
    reg = reg_vec if per_feature else 0.1
    wts = weights if use_weights else None
    sol = ridge_closed_form(reg, X, y, wts, fit_intercept=fit_intercept)
    w_ref, b_ref = _lstsq_solution(reg, X, y, wts, fit_intercept)
    np.testing.assert_allclose(sol["w"], w_ref, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(sol["b"], b_ref, rtol=1e-9, atol=1e-10)
    grad = ridge_optimality(sol, reg, X, y, wts)
    if fit_intercept:
        assert _max_abs(grad) < 1e-10
    else:
        assert _max_abs(grad["w"]) < 1e-10
        assert float(sol["b"]) == 0.0
    # any perturbation increases the loss (strict convexity)
    bumped = {"w": np.asarray(sol["w"]) + 1e-3 * (np.arange(D) == 0), "b": sol["b"]}
    assert ridge_loss(bumped, reg, X, y, wts) > ridge_loss(sol, reg, X, y, wts)


def test_multi_output_closed_form(data):
    X, y, weights, reg_vec = data
    Y = np.stack([y, -2 * y + 1.0, np.sin(y)], axis=1)
    sol = ridge_closed_form(reg_vec, X, Y, weights)
    assert sol["w"].shape == (D, 3) and sol["b"].shape == (3,)
    for c in range(3):
        w_ref, b_ref = _lstsq_solution(reg_vec, X, Y[:, c], weights, True)
        np.testing.assert_allclose(sol["w"][:, c], w_ref, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(sol["b"][c], b_ref, rtol=1e-9, atol=1e-10)
    assert _max_abs(ridge_optimality(sol, reg_vec, X, Y, weights)) < 1e-10
    assert ridge_predict(sol, X).shape == (N, 3)


@pytest.mark.parametrize("use_weights", [False, True])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_matches_sklearn_ridge(data, use_weights, fit_intercept):
    X, y, weights, _ = data
    reg = 0.05
    wts = weights if use_weights else None
    # sklearn: sum_i s_i (y_i - x_i w - b)^2 + alpha ||w||^2  ==  2n * ours  with alpha = n * reg
    sk = Ridge(alpha=N * reg, fit_intercept=fit_intercept, solver="cholesky", tol=1e-12)
    sk.fit(X, y, sample_weight=wts)
    sol = ridge_closed_form(reg, X, y, wts, fit_intercept=fit_intercept)
    np.testing.assert_allclose(sol["w"], sk.coef_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(sol["b"], sk.intercept_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(ridge_predict(sol, X), sk.predict(X), rtol=1e-8, atol=1e-10)


def test_loss_value_by_hand(data):
    X, y, weights, reg_vec = data
    rng = np.random.default_rng(1)
    params = {"w": jnp.asarray(rng.normal(size=D)), "b": jnp.asarray(0.3)}
    r = X @ np.asarray(params["w"]) + 0.3 - y
    expected = np.mean(weights * 0.5 * r**2) + 0.5 * np.sum(reg_vec * np.asarray(params["w"]) ** 2)
    np.testing.assert_allclose(ridge_loss(params, reg_vec, X, y, weights), expected, rtol=1e-12)
    np.testing.assert_allclose(ridge_mse(params, X, y), np.mean(r**2), rtol=1e-12)


@jax.jit
def outer_w(s, X, y, X_val, y_val):
    return ridge_mse(ridge_closed_form(0.1, X, y, s), X_val, y_val)


def test_hypergradient_through_solve_matches_finite_differences(data):
    X, y, weights, reg_vec = data
    X_val, y_val = X[:15] + 0.1, y[:15]

    def outer(log_reg):
        sol = ridge_closed_form(jnp.exp(log_reg), X, y, weights)
        return ridge_mse(sol, X_val, y_val)

    log_reg = np.log(reg_vec)
    g = np.asarray(jax.jit(jax.grad(outer))(log_reg))
    eps = 1e-6
    steps = eps * np.eye(D)
    outer_batched = jax.jit(jax.vmap(outer))
    fd = (np.asarray(outer_batched(log_reg + steps)) - np.asarray(outer_batched(log_reg - steps))) / (2 * eps)
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-9)
    assert np.max(np.abs(g)) > 1e-6  # non-trivial hypergradient
    # gradient w.r.t. the sample weights too (data poisoning use), eagerly through the public API
    gw = jax.grad(lambda s: ridge_mse(ridge_closed_form(0.1, X, y, s), X_val, y_val))(weights)
    assert gw.shape == (N,) and np.all(np.isfinite(np.asarray(gw)))
    i = 3
    e = np.zeros(N)
    e[i] = eps
    fd_w = (outer_w(weights + e, X, y, X_val, y_val) - outer_w(weights - e, X, y, X_val, y_val)) / (2 * eps)
    np.testing.assert_allclose(gw[i], fd_w, rtol=1e-5, atol=1e-10)


def test_vmap_over_reg_and_jit(data):
    X, y, weights, _ = data
    regs = np.array([1e-3, 1e-2, 1e-1, 1.0])
    batched = jax.vmap(lambda r: ridge_closed_form(r, X, y, weights))(regs)
    assert batched["w"].shape == (4, D) and batched["b"].shape == (4,)
    W = np.asarray(batched["w"])
    for i in (0, 3):
        single = ridge_closed_form(regs[i], X, y, weights)
        np.testing.assert_allclose(W[i], single["w"], rtol=1e-10, atol=1e-12)
    losses = jax.jit(jax.vmap(ridge_loss, in_axes=(0, 0, None, None, None)))(batched, regs, X, y, weights)
    assert losses.shape == (4,)
    np.testing.assert_allclose(losses[3], ridge_loss(single, regs[3], X, y, weights), rtol=1e-10)
    # per-feature reg batch, jitted
    per_feat = jax.jit(jax.vmap(lambda r: ridge_closed_form(r, X, y, weights)))(np.ones((2, D)) * regs[[0, 3], None])
    np.testing.assert_allclose(np.asarray(per_feat["w"])[1], single["w"], rtol=1e-10)


def test_float32(data):
    X, y, _, reg_vec = data
    X32, y32, reg32 = (np.asarray(a, np.float32) for a in (X, y, reg_vec))
    sol = ridge_closed_form(reg32, X32, y32)
    assert sol["w"].dtype == jnp.float32 and sol["b"].dtype == jnp.float32
    ref = ridge_closed_form(reg_vec, X, y)
    np.testing.assert_allclose(sol["w"], ref["w"], rtol=1e-3, atol=1e-4)
    assert ridge_loss(sol, 0.1, X32, y32).dtype == jnp.float32
    p = init_params(D, dtype=jnp.float32)
    assert p["w"].dtype == jnp.float32


def test_init_params_shapes():
    p = init_params(4)
    assert p["w"].shape == (4,) and p["b"].shape == () and p["w"].dtype == jnp.float64
    q = ridge_init_params(4, 3)
    assert q["w"].shape == (4, 3) and q["b"].shape == (3,)
    assert float(jnp.sum(jnp.abs(q["w"]))) == 0.0


def test_validation_errors_name_the_argument(data):
    X, y, weights, reg_vec = data
    params = init_params(D)
    Xnan = X.copy()
    Xnan[3, 2] = np.nan
    with pytest.raises(ValueError, match="'X'"):
        ridge_loss(params, 0.1, Xnan, y)
    with pytest.raises(ValueError, match="'X'"):
        ridge_closed_form(0.1, Xnan, y)
    with pytest.raises(ValueError, match="'X'"):
        ridge_loss(params, 0.1, X[0], y)
    yinf = y.copy()
    yinf[0] = np.inf
    with pytest.raises(ValueError, match="'y'"):
        ridge_closed_form(0.1, X, yinf)
    with pytest.raises(ValueError, match="'y'"):
        ridge_loss(params, 0.1, X, y[:-1])
    with pytest.raises(ValueError, match="'weights'"):
        ridge_loss(params, 0.1, X, y, weights[:-1])
    with pytest.raises(ValueError, match="'weights'"):
        ridge_closed_form(0.1, X, y, np.full(N, np.nan))
    with pytest.raises(ValueError, match="'reg'"):
        ridge_loss(params, reg_vec[:-1], X, y)
    with pytest.raises(ValueError, match="'reg'"):
        ridge_closed_form(-1.0, X, y)
    with pytest.raises(ValueError, match="'params'"):
        ridge_loss(init_params(D + 1), 0.1, X, y)
    with pytest.raises(ValueError, match="'params'"):
        ridge_loss({"w": jnp.zeros(D)}, 0.1, X, y)
    with pytest.raises(ValueError, match="'y'"):  # (n, k) targets with (d,) weights
        ridge_loss(params, 0.1, X, np.stack([y, y], 1))


def test_value_checks_are_skipped_on_tracers(data):
    X, y, _, _ = data
    Xnan = X.copy()
    Xnan[0, 0] = np.nan
    # under jit the values are tracers: no exception, NaN propagates
    out = jax.jit(ridge_loss)(init_params(D), 0.1, Xnan, y)
    assert np.isnan(float(out))
    # negative reg as a traced hyperparameter is not checked either
    assert np.isfinite(float(jax.jit(ridge_loss)(init_params(D), -0.1, X, y)))
