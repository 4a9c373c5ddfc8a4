"""Tests of bilevel.problems.adaline (float64 via tests/conftest.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilevel.problems.adaline import (
    adaline_accuracy,
    adaline_closed_form,
    adaline_decision_function,
    adaline_error,
    adaline_init_params,
    adaline_loss,
    adaline_optimality,
    adaline_predict,
    init_params,
)
from bilevel.problems.ridge import ridge_closed_form

N, D = 60, 5


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(l)) for l in jax.tree_util.tree_leaves(tree)])


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, D))
    w_true = np.array([2.0, -1.0, 0.5, 0.0, 1.0])
    y = np.where(X @ w_true + 0.3 > 0, 1, -1)
    return X, y, rng.uniform(0.2, 2.0, N), np.linspace(0.01, 0.3, D)


def test_loss_value_by_hand(data):
    X, y, s, reg = data
    w, b = np.linspace(-1, 1, D), 0.25
    r = X @ w + b - y
    expected = np.mean(s * 0.5 * r**2) + 0.5 * np.sum(reg * w**2)
    got = adaline_loss({"w": jnp.asarray(w), "b": jnp.asarray(b)}, reg, X, y, s)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    np.testing.assert_allclose(adaline_loss(init_params(D), 0.1, X, y), 0.5, rtol=1e-12)  # mean 0.5*y^2


def test_gradient_matches_central_finite_differences(data):
    X, y, s, reg = data
    rng = np.random.default_rng(1)
    params = {"w": jnp.asarray(rng.normal(size=D)), "b": jnp.asarray(-0.4)}
    g_flat = _flat(adaline_optimality(params, reg, X, y, s))
    assert np.all(np.isfinite(g_flat)) and np.isfinite(float(adaline_loss(params, reg, X, y, s)))
    flat = _flat(params)  # leaves in key order: b, w
    eps = 1e-6
    E = eps * np.eye(D + 1)
    f = jax.jit(jax.vmap(lambda v: adaline_loss({"b": v[0], "w": v[1:]}, reg, X, y, s)))
    fd = (np.asarray(f(flat + E)) - np.asarray(f(flat - E))) / (2 * eps)
    np.testing.assert_allclose(g_flat, fd, rtol=1e-7, atol=1e-10)
    # gradient w.r.t. a training point (what a poisoning attack differentiates), at a few coordinates
    gX = np.asarray(jax.jit(jax.grad(adaline_loss, argnums=2))(params, reg, X, y, s))
    fX = jax.jit(jax.vmap(lambda dx: adaline_loss(params, reg, X + dx, y, s)))
    idx = [(0, 0), (7, 3), (59, 4)]
    dX = np.zeros((len(idx), N, D))
    for m, (i, j) in enumerate(idx):
        dX[m, i, j] = eps
    fdX = (np.asarray(fX(dX)) - np.asarray(fX(-dX))) / (2 * eps)
    np.testing.assert_allclose([gX[i, j] for i, j in idx], fdX, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("per_feature", [False, True])
def test_closed_form_is_stationary_and_equals_ridge(data, per_feature):
    X, y, s, reg_vec = data
    reg = reg_vec if per_feature else 0.05
    sol = adaline_closed_form(reg, X, y, s)
    assert np.max(np.abs(_flat(adaline_optimality(sol, reg, X, y, s)))) < 1e-10
    ref = ridge_closed_form(reg, X, y.astype(float), s)
    np.testing.assert_allclose(sol["w"], ref["w"], rtol=1e-12, atol=1e-14)
    # a separable-ish problem: the least-squares classifier gets most points right
    assert float(adaline_accuracy(sol, X, y)) > 0.9
    np.testing.assert_allclose(float(adaline_error(sol, X, y)), 1 - float(adaline_accuracy(sol, X, y)))


def test_predict_is_sign_with_zero_to_plus_one():
    X = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 5.0]])
    params = {"w": jnp.array([2.0, 0.0]), "b": jnp.asarray(0.0)}
    np.testing.assert_array_equal(adaline_decision_function(params, X), [2.0, -2.0, 0.0])
    np.testing.assert_array_equal(adaline_predict(params, X), [1, -1, 1])


def test_vmap_over_reg_and_jit(data):
    X, y, s, _ = data
    regs = np.array([1e-3, 1e-1, 1.0, 10.0])
    sols = jax.jit(jax.vmap(lambda r: adaline_closed_form(r, X, y, s)))(regs)
    assert sols["w"].shape == (4, D)
    norms = np.linalg.norm(np.asarray(sols["w"]), axis=1)
    assert np.all(np.diff(norms) < 0)  # more regularization, smaller weights
    losses = jax.jit(jax.vmap(adaline_loss, in_axes=(0, 0, None, None, None)))(sols, regs, X, y, s)
    for i in (0, 3):
        single = adaline_closed_form(regs[i], X, y, s)
        np.testing.assert_allclose(np.asarray(sols["w"])[i], single["w"], rtol=1e-10)
        np.testing.assert_allclose(losses[i], adaline_loss(single, regs[i], X, y, s), rtol=1e-10)
    vgrad = jax.jit(jax.vmap(jax.grad(adaline_loss), in_axes=(None, 0, None, None)))
    grads = vgrad(adaline_init_params(D), regs, X, y)
    assert grads["w"].shape == (4, D) and np.all(np.isfinite(np.asarray(grads["w"])))


def test_float32(data):
    X, y, _, _ = data
    p = adaline_init_params(D, dtype=jnp.float32)
    assert adaline_loss(p, np.float32(0.1), X.astype(np.float32), y).dtype == jnp.float32
    sol = adaline_closed_form(np.float32(0.1), X.astype(np.float32), y)
    assert sol["w"].dtype == jnp.float32


def test_validation_errors_name_the_argument(data):
    X, y, s, reg = data
    p = init_params(D)
    with pytest.raises(ValueError, match="'y'.*labels"):
        adaline_loss(p, 0.1, X, (y + 1) // 2)  # {0, 1} labels rejected: Adaline uses {-1, +1}
    with pytest.raises(ValueError, match="'y'"):
        adaline_closed_form(0.1, X, np.where(y > 0, 1.0, np.nan))
    with pytest.raises(ValueError, match="'y'"):
        adaline_loss(p, 0.1, X, y[:10])
    with pytest.raises(ValueError, match="'y'"):
        adaline_accuracy(p, X, 2 * y)
    Xbad = X.copy()
    Xbad[1, 1] = np.nan
    with pytest.raises(ValueError, match="'X'"):
        adaline_loss(p, 0.1, Xbad, y)
    with pytest.raises(ValueError, match="'params'"):
        adaline_loss({"w": jnp.zeros((D, 2)), "b": jnp.zeros(2)}, 0.1, X, y)
    with pytest.raises(ValueError, match="'reg'"):
        adaline_loss(p, np.ones((D, 1)), X, y)
    with pytest.raises(ValueError, match="'reg'"):
        adaline_loss(p, np.nan, X, y)
    with pytest.raises(ValueError, match="'weights'"):
        adaline_loss(p, 0.1, X, y, s[:, None])
