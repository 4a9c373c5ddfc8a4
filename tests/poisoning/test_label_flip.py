"""Label flipping: random flips, the capped-simplex projection, the relaxed hypergradient w.r.t. the
flip variables (vs central finite differences) and optimized/greedy flips vs random flips."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize as sp_minimize

from poisoning.attack import logistic_learner, ridge_learner
from poisoning.attacks import label_flip as lf
from poisoning.attacks.label_flip import (
    flip_objective,
    greedy_label_flip,
    optimized_label_flip,
    project_capped_simplex,
    random_label_flip,
)


def _blobs(n, d, seed):
    rng = np.random.default_rng(seed)
    y = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    X = 0.6 * y[:, None] * np.ones(d) / np.sqrt(d) + 0.5 * rng.standard_normal((n, d))
    return X, y


# ---------------------------------------------------------------------------------------------------
# random flips
# ---------------------------------------------------------------------------------------------------
def test_random_flip_binary_exact_count_and_deterministic():
    y = jnp.asarray(np.where(np.arange(50) % 3 == 0, 1.0, -1.0))
    key = jax.random.PRNGKey(3)
    y1, idx = random_label_flip(y, 7, key, return_indices=True)
    assert int(jnp.sum(y1 != y)) == 7
    assert len(set(np.asarray(idx).tolist())) == 7
    np.testing.assert_array_equal(np.asarray(y1 != y), np.isin(np.arange(50), np.asarray(idx)))
    np.testing.assert_array_equal(np.asarray(random_label_flip(y, 7, key)), np.asarray(y1))
    y2 = random_label_flip(y, 7, jax.random.PRNGKey(4))
    assert not np.array_equal(np.asarray(y1), np.asarray(y2))
    assert int(jnp.sum(random_label_flip(y, 0, key) != y)) == 0
    assert int(jnp.sum(random_label_flip(y, 50, key) != y)) == 50


def test_random_flip_multiclass():
    y = jnp.asarray(np.arange(40) % 4)
    key = jax.random.PRNGKey(0)
    y1 = random_label_flip(y, 15, key, n_classes=4)
    assert int(jnp.sum(y1 != y)) == 15                      # always to a *different* class
    assert set(np.unique(np.asarray(y1)).tolist()) <= {0, 1, 2, 3}
    assert y1.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(random_label_flip(y, 15, key, n_classes=4)), np.asarray(y1))


def test_random_flip_budget_too_large():
    with pytest.raises(ValueError, match="budget"):
        random_label_flip(jnp.ones(5), 6, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="budget"):
        random_label_flip(jnp.ones(5), -1, jax.random.PRNGKey(0))


# ---------------------------------------------------------------------------------------------------
# projection
# ---------------------------------------------------------------------------------------------------
def _reference_projection(v, B):
    """Brute-force reference: the QP min ||q - v||^2 s.t. 0 <= q <= 1, sum q <= B, by SLSQP."""
    cons = [{"type": "ineq", "fun": lambda q: B - q.sum(), "jac": lambda q: -np.ones_like(q)}]
    res = sp_minimize(lambda q: 0.5 * np.sum((q - v) ** 2), np.clip(v, 0, 1) * 0 + min(B, 1) / 2,
                      jac=lambda q: q - v, bounds=[(0, 1)] * len(v), constraints=cons, method="SLSQP",
                      options={"ftol": 1e-14, "maxiter": 500})
    return res.x


@pytest.mark.parametrize("seed", range(6))
def test_capped_simplex_projection(seed):
    rng = np.random.default_rng(seed)
    n = 8
    v = rng.normal(0.4, 1.0, n) * (1 + seed % 3)
    B = [0.5, 1.0, 2.5, 3.0, 7.9, 8.0][seed]
    p = np.asarray(project_capped_simplex(jnp.asarray(v), B))
    assert np.all(p >= -1e-12) and np.all(p <= 1 + 1e-12) and p.sum() <= B + 1e-9
    ref = _reference_projection(v, B)
    np.testing.assert_allclose(p, ref, atol=1e-6)
    # closest point: no random feasible point is closer, and the variational inequality holds
    Z = rng.uniform(0, 1, (2000, n))
    Z = Z * np.minimum(1.0, B / Z.sum(1))[:, None]
    assert np.all(((Z - v) ** 2).sum(1) >= ((p - v) ** 2).sum() - 1e-10)
    assert np.all((Z - p) @ (v - p) <= 1e-9)


def test_projection_inactive_budget_is_clip_and_idempotent():
    v = jnp.asarray([-0.5, 0.2, 1.7, 0.1])
    np.testing.assert_allclose(project_capped_simplex(v, 3.0), [0.0, 0.2, 1.0, 0.1])
    p = project_capped_simplex(jnp.asarray([0.9, 0.8, 0.7, 0.2]), 1.5)
    np.testing.assert_allclose(float(p.sum()), 1.5, atol=1e-12)
    np.testing.assert_allclose(project_capped_simplex(p, 1.5), p, atol=1e-12)


# ---------------------------------------------------------------------------------------------------
# hypergradient w.r.t. the flip variables
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("learner", [logistic_learner(1e-2), ridge_learner(1e-2)], ids=["logistic", "ridge"])
def test_flip_hypergradient_matches_finite_differences(learner):
    X, y = _blobs(40, 4, 0)        # the shapes of the optimized-attack test: one compile serves both
    Xv, yv = _blobs(60, 4, 1)
    q = jnp.asarray(np.random.default_rng(0).uniform(0.1, 0.9, 40))
    args = tuple(jnp.asarray(a) for a in (X, y, Xv, yv))
    v, g = lf._value_and_grad(q, *args, learner, lf.error_generic)
    assert np.isclose(float(v), float(flip_objective(q, X, y, Xv, yv, learner)[0]), rtol=1e-10)
    eps = 1e-5
    fd = np.array([(float(lf._value_and_grad(q.at[i].add(eps), *args, learner, lf.error_generic)[0])
                    - float(lf._value_and_grad(q.at[i].add(-eps), *args, learner, lf.error_generic)[0])) / (2 * eps)
                   for i in range(40)])
    np.testing.assert_allclose(np.asarray(g), fd, rtol=1e-5, atol=1e-8)


def test_flip_variables_mean_flips():
    """q = 0 is the clean problem and q = e_i trains on the labels with label i flipped."""
    learner = ridge_learner(1e-2)
    X, y = _blobs(40, 4, 0)
    Xv, yv = _blobs(60, 4, 1)
    args = tuple(jnp.asarray(a) for a in (X, y, Xv, yv))
    plain = jax.jit(lambda X, y: lf.error_generic(learner.fit(X, y), args[2], args[3], learner))
    v0 = lf._value_and_grad(jnp.zeros(40), *args, learner, lf.error_generic)[0]
    np.testing.assert_allclose(float(v0), float(plain(args[0], args[1])), rtol=1e-8)
    yf = y.copy()
    yf[3] = -yf[3]
    v3 = lf._value_and_grad(jnp.zeros(40).at[3].set(1.0), *args, learner, lf.error_generic)[0]
    np.testing.assert_allclose(float(v3), float(plain(args[0], jnp.asarray(yf))), rtol=1e-8)


# ---------------------------------------------------------------------------------------------------
# optimized vs random
# ---------------------------------------------------------------------------------------------------
def test_optimized_and_greedy_beat_random_flips():
    learner = logistic_learner(1e-2)
    X, y = _blobs(40, 4, 0)
    Xv, yv = _blobs(60, 4, 1)
    B = 5
    res = optimized_label_flip(X, y, Xv, yv, B, learner, steps=25)
    gr = greedy_label_flip(X, y, Xv, yv, B, learner, rescore_every=1)
    for r in (res, gr):
        assert r.flip_mask.sum() == B
        assert np.sum(r.y_poisoned != y) == B
        assert r.objective_poisoned > r.objective_clean
    # the reported value is the retrained victim on the hard flips
    args = tuple(jnp.asarray(a) for a in (X, y, Xv, yv))
    hv = float(lf._value_and_grad(jnp.asarray(res.flip_mask, float), *args, learner, lf.error_generic)[0])
    np.testing.assert_allclose(res.objective_poisoned, hv, rtol=1e-10)
    rand = []
    for s in range(4):
        yr = np.asarray(random_label_flip(jnp.asarray(y), B, jax.random.PRNGKey(s)))
        rand.append(float(lf._value_and_grad(jnp.asarray(yr != y, float), *args, learner, lf.error_generic)[0]))
    assert res.objective_poisoned >= np.mean(rand)
    assert gr.objective_poisoned >= np.mean(rand)
    assert res.objective_poisoned >= res.rounded_history[0]   # never worse than the rounded start


def test_optimized_flip_rejects_bad_input():
    X, y = _blobs(10, 2, 0)
    with pytest.raises(ValueError, match="budget"):
        optimized_label_flip(X, y, X, y, 11, logistic_learner(1e-2))
    with pytest.raises(ValueError, match="binary"):
        greedy_label_flip(X, (y + 1) / 2, X, y, 2, logistic_learner(1e-2))
