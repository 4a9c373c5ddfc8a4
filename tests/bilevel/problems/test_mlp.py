"""Tests of bilevel.problems.mlp (float64 via tests/conftest.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from bilevel.problems.mlp import (
    MLP,
    mlp_accuracy,
    mlp_apply,
    mlp_error,
    mlp_init,
    mlp_loss,
    mlp_optimality,
    mlp_predict,
    mlp_predict_proba,
)

N, D, H, K = 50, 6, 10, 3


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(l)) for l in jax.tree_util.tree_leaves(tree)])


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, D))
    y = (np.argmax(X[:, :K] + 0.3 * rng.normal(size=(N, K)), axis=1)).astype(np.int32)
    return X, y, rng.uniform(0.2, 2.0, N)


@pytest.fixture(scope="module")
def params():
    return mlp_init(jax.random.PRNGKey(0), D, H, K)


def test_init_and_output_shapes(data, params):
    X, y, _ = data
    assert set(params) == {"hidden_0", "output"}
    assert params["hidden_0"]["kernel"].shape == (D, H) and params["hidden_0"]["bias"].shape == (H,)
    assert params["output"]["kernel"].shape == (H, K) and params["output"]["bias"].shape == (K,)
    assert params["output"]["kernel"].dtype == jnp.float64
    logits = mlp_apply(params, X)
    assert logits.shape == (N, K)
    proba = mlp_predict_proba(params, X)
    np.testing.assert_allclose(np.sum(proba, axis=1), 1.0, rtol=1e-12)
    pred = mlp_predict(params, X)
    assert pred.shape == (N,)
    np.testing.assert_array_equal(pred, np.argmax(np.asarray(logits), axis=1))
    np.testing.assert_allclose(mlp_accuracy(params, X, y) + mlp_error(params, X, y), 1.0)
    # the forward pass is what it says: tanh hidden layer, affine output
    P = jax.tree.map(np.asarray, params)
    h = np.tanh(X @ P["hidden_0"]["kernel"] + P["hidden_0"]["bias"])
    np.testing.assert_allclose(logits, h @ P["output"]["kernel"] + P["output"]["bias"], rtol=1e-12)
    deep = mlp_init(jax.random.PRNGKey(1), D, (8, 4), 2, dtype=jnp.float32)
    assert sorted(deep) == ["hidden_0", "hidden_1", "output"]
    out = mlp_apply(deep, X.astype(np.float32))
    assert out.shape == (N, 2) and out.dtype == jnp.float32
    linear = mlp_init(jax.random.PRNGKey(2), D, (), K)
    assert sorted(linear) == ["output"] and mlp_apply(linear, X).shape == (N, K)
    # the flax module itself agrees with the wrapper
    module_out = jax.jit(MLP(hidden=(H,), n_classes=K).apply)({"params": params}, X)
    np.testing.assert_allclose(module_out, logits, rtol=1e-12)


def test_loss_value_and_penalty(data, params):
    X, y, s = data
    logits = np.asarray(mlp_apply(params, X))
    z = logits - logits.max(1, keepdims=True)
    ce = -(z - np.log(np.exp(z).sum(1, keepdims=True)))[np.arange(N), y]
    K1, K2 = (np.asarray(params[l]["kernel"]) for l in ("hidden_0", "output"))
    np.testing.assert_allclose(mlp_loss(params, 0.0, X, y), ce.mean(), rtol=1e-12)
    np.testing.assert_allclose(
        mlp_loss(params, 0.3, X, y, s), np.mean(s * ce) + 0.15 * (np.sum(K1**2) + np.sum(K2**2)), rtol=1e-12
    )
    reg = np.linspace(0.0, 1.0, D)
    np.testing.assert_allclose(
        mlp_loss(params, reg, X, y), ce.mean() + 0.5 * np.sum(reg[:, None] * K1**2), rtol=1e-12
    )
    np.testing.assert_allclose(
        mlp_loss(params, reg, X, y, reg_deep=0.2),
        ce.mean() + 0.5 * np.sum(reg[:, None] * K1**2) + 0.1 * np.sum(K2**2),
        rtol=1e-12,
    )


@pytest.mark.parametrize("per_feature", [False, True])
def test_gradient_matches_central_finite_differences(data, params, per_feature):
    X, y, s = data
    reg = np.linspace(0.01, 0.5, D) if per_feature else 0.1
    g_flat = _flat(mlp_optimality(params, reg, X, y, s))
    assert np.all(np.isfinite(g_flat)) and np.isfinite(float(mlp_loss(params, reg, X, y, s)))
    flat, unravel = ravel_pytree(params)
    coords = np.array([0, 5, 9, 25, 60, 69, 70, 99, flat.size - 1])  # touches every leaf
    eps = 1e-6
    E = eps * np.eye(flat.size)[coords]
    f = jax.jit(lambda v: jax.vmap(lambda u: mlp_loss(unravel(u), reg, X, y, s))(v))
    fd = (np.asarray(f(_flat(params) + E)) - np.asarray(f(_flat(params) - E))) / (2 * eps)
    np.testing.assert_allclose(g_flat[coords], fd, rtol=1e-6, atol=1e-9)
    if not per_feature:  # plain jax.grad of the public loss gives the same
        np.testing.assert_allclose(_flat(jax.grad(mlp_loss)(params, reg, X, y, s)), g_flat, rtol=1e-12)


def test_vmap_over_reg_batch(data, params):
    X, y, _ = data
    regs = jnp.array([0.0, 0.01, 0.1, 1.0])
    losses = np.asarray(jax.jit(jax.vmap(mlp_loss, in_axes=(None, 0, None, None)))(params, regs, X, y))
    P = jax.tree.map(np.asarray, params)
    sq = sum(np.sum(P[l]["kernel"] ** 2) for l in P)
    np.testing.assert_allclose(losses - losses[0], 0.5 * np.asarray(regs) * sq, rtol=1e-10)
    grads = jax.tree.map(
        np.asarray, jax.jit(jax.vmap(jax.grad(mlp_loss), in_axes=(None, 0, None, None)))(params, regs, X, y)
    )
    gk = grads["output"]["kernel"]
    np.testing.assert_allclose(gk[3] - gk[0], P["output"]["kernel"], rtol=1e-10)  # d/dK of 0.5*reg*|K|^2
    np.testing.assert_allclose(grads["output"]["bias"][3], grads["output"]["bias"][0], rtol=1e-12)
    reg_rows = np.ones((2, D)) * np.asarray(regs[:2])[:, None]
    per_feature = jax.jit(jax.vmap(mlp_loss, in_axes=(None, 0, None, None)))(params, reg_rows, X, y)
    assert per_feature.shape == (2,)
    pf = np.asarray(per_feature)
    np.testing.assert_allclose(pf[1] - pf[0], 0.005 * np.sum(P["hidden_0"]["kernel"] ** 2), rtol=1e-10)


def test_short_training_reduces_loss_and_fits(data, params):
    X, y, _ = data
    opt = optax.adam(0.05)

    @jax.jit
    def train(p):
        def step(carry, _):
            p, state = carry
            g = jax.grad(mlp_loss)(p, 1e-3, X, y)
            upd, state = opt.update(g, state, p)
            return (optax.apply_updates(p, upd), state), None

        return jax.lax.scan(step, (p, opt.init(p)), None, length=200)[0][0]

    trained = train(params)
    assert float(mlp_loss(trained, 1e-3, X, y)) < 0.5 * float(mlp_loss(params, 1e-3, X, y))
    assert float(mlp_accuracy(trained, X, y)) > 0.9


def test_validation_errors_name_the_argument(data, params):
    X, y, s = data
    with pytest.raises(ValueError, match="'y'"):
        mlp_loss(params, 0.1, X, np.where(y == 0, K, y))  # class index >= n_classes
    with pytest.raises(ValueError, match="'y'.*integer"):
        mlp_loss(params, 0.1, X, y.astype(float))
    with pytest.raises(ValueError, match="'X'"):
        mlp_loss(params, 0.1, X[:, :-1], y)
    Xbad = X.copy()
    Xbad[2, 2] = np.inf
    with pytest.raises(ValueError, match="'X'"):
        mlp_apply(params, Xbad)
    with pytest.raises(ValueError, match="'reg'"):
        mlp_loss(params, np.ones(D + 1), X, y)
    with pytest.raises(ValueError, match="'reg_deep'"):
        mlp_loss(params, np.ones(D), X, y, reg_deep=np.ones(3))
    with pytest.raises(ValueError, match="'weights'"):
        mlp_loss(params, 0.1, X, y, s[:-1])
    with pytest.raises(ValueError, match="'params'"):
        mlp_loss({"hidden_0": params["hidden_0"]}, 0.1, X, y)
    with pytest.raises(ValueError, match="'n_classes'"):
        mlp_init(jax.random.PRNGKey(0), D, H, 1)
    with pytest.raises(ValueError, match="'hidden'"):
        mlp_init(jax.random.PRNGKey(0), D, 0, K)
