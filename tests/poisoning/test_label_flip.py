"""Label flipping: random flips, the capped-simplex projection, the relaxed hypergradient w.r.t. the
flip variables through the driver (vs central finite differences) and optimized/greedy flips vs random
flips. Labels 0/1."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize as sp_minimize

from poisoning import victims
from poisoning.attack import LabelFlips, PoisoningAttack, attack_value, hypergradient
from poisoning.attacks.label_flip import (
    flipped_labels,
    greedy_label_flip,
    optimized_label_flip,
    random_label_flip,
    top_flips,
)
from poisoning.feasible import CappedSimplex, project_capped_simplex
from poisoning.objectives import error_generic


def _blobs(n, d, seed):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2 == 0
    X = 0.6 * np.where(y, 1.0, -1.0)[:, None] * np.ones(d) / np.sqrt(d) + 0.5 * rng.standard_normal((n, d))
    return X, y.astype(np.int32)


# ---------------------------------------------------------------------------------------------------
# random flips
# ---------------------------------------------------------------------------------------------------
def test_random_flip_binary_exact_count_and_deterministic():
    y = jnp.asarray((np.arange(50) % 3 == 0).astype(np.int32))
    key = jax.random.PRNGKey(3)
    y1, idx = random_label_flip(y, 7, key, return_indices=True)
    assert int(jnp.sum(y1 != y)) == 7 and set(np.unique(np.asarray(y1)).tolist()) <= {0, 1}
    assert len(set(np.asarray(idx).tolist())) == 7
    np.testing.assert_array_equal(np.asarray(y1 != y), np.isin(np.arange(50), np.asarray(idx)))
    np.testing.assert_array_equal(np.asarray(y1), flipped_labels(y, np.asarray(y1 != y)))
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


def test_random_flip_rejects_bad_input():
    with pytest.raises(ValueError, match="budget"):
        random_label_flip(jnp.ones(5, int), 6, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="budget"):
        random_label_flip(jnp.ones(5, int), -1, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="0/1"):
        random_label_flip(jnp.asarray([1, -1, 1]), 1, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="n_classes"):
        random_label_flip(jnp.asarray([0, 1]), 1, jax.random.PRNGKey(0), n_classes=1)


# ---------------------------------------------------------------------------------------------------
# projection onto the capped simplex (poisoning.feasible) and rounding
# ---------------------------------------------------------------------------------------------------
def _reference_projection(v, B):
    """Brute-force reference: the QP min ||q - v||^2 s.t. 0 <= q <= 1, sum q <= B, by SLSQP."""
    cons = [{"type": "ineq", "fun": lambda q: B - q.sum(), "jac": lambda q: -np.ones_like(q)}]
    res = sp_minimize(lambda q: 0.5 * np.sum((q - v) ** 2), np.full_like(v, min(B, 1) / 2),
                      jac=lambda q: q - v, bounds=[(0, 1)] * len(v), constraints=cons, method="SLSQP",
                      options={"ftol": 1e-14, "maxiter": 500})
    return res.x


@pytest.mark.parametrize("seed", range(6))
def test_capped_simplex_projection(seed):
    rng = np.random.default_rng(seed)
    n = 8
    v = rng.normal(0.4, 1.0, n) * (1 + seed % 3)
    B = [0.5, 1.0, 2.5, 3.0, 7.9, 8.0][seed]
    p = np.asarray(CappedSimplex(B).project(jnp.asarray(v)))
    assert np.all(p >= -1e-12) and np.all(p <= 1 + 1e-12) and p.sum() <= B + 1e-9
    np.testing.assert_allclose(p, _reference_projection(v, B), atol=1e-6)
    # closest point: no random feasible point is closer, and the variational inequality holds
    Z = rng.uniform(0, 1, (2000, n))
    Z = Z * np.minimum(1.0, B / Z.sum(1))[:, None]
    assert np.all(((Z - v) ** 2).sum(1) >= ((p - v) ** 2).sum() - 1e-10)
    assert np.all((Z - p) @ (v - p) <= 1e-9)


def test_projection_inactive_budget_is_clip_and_idempotent_and_rounding():
    v = jnp.asarray([-0.5, 0.2, 1.7, 0.1])
    np.testing.assert_allclose(project_capped_simplex(v, 3.0), [0.0, 0.2, 1.0, 0.1])
    p = project_capped_simplex(jnp.asarray([0.9, 0.8, 0.7, 0.2]), 1.5)
    np.testing.assert_allclose(float(p.sum()), 1.5, atol=1e-12)
    np.testing.assert_allclose(project_capped_simplex(p, 1.5), p, atol=1e-12)
    np.testing.assert_array_equal(top_flips(jnp.asarray([0.2, 0.9, 0.2, 0.5]), 2), [0, 1, 0, 1])
    np.testing.assert_array_equal(top_flips(jnp.full(4, 0.5), 2), [1, 1, 0, 0])   # ties: lower index first


# ---------------------------------------------------------------------------------------------------
# the hypergradient w.r.t. the flip variables, through the driver
# ---------------------------------------------------------------------------------------------------
def test_flip_hypergradient_matches_finite_differences_and_flips_mean_flips():
    """d A / d q through the driver's hypergradient (logistic victim, the implicit function theorem) vs
    central differences; q = 0 is the clean problem and q = e_i trains with label i flipped."""
    victim = victims.logistic(1e-2)
    X, y = _blobs(16, 3, 0)
    Xv, yv = _blobs(30, 3, 1)
    att = PoisoningAttack(victim, error_generic, CappedSimplex(4.0))
    # one compile for everything: the labels are an argument too
    hg = jax.jit(lambda q, labels: hypergradient(att, X, labels, LabelFlips(q), (Xv, yv))[:2])
    q = jnp.asarray(np.random.default_rng(0).uniform(0.1, 0.9, 16))
    _, g = hg(q, y)
    eps = 1e-5
    fd = np.array([(float(hg(q.at[i].add(eps), y)[0]) - float(hg(q.at[i].add(-eps), y)[0])) / (2 * eps)
                   for i in range(16)])
    assert np.abs(fd).max() > 1e-4
    np.testing.assert_allclose(np.asarray(g), fd, rtol=1e-5, atol=1e-8)
    # the meaning of the flip variables
    zero, e3 = jnp.zeros(16), jnp.zeros(16).at[3].set(1.0)
    np.testing.assert_allclose(float(hg(zero, y)[0]), float(error_generic(victim, victim.fit(X, y), Xv, yv)), rtol=1e-8)
    np.testing.assert_allclose(float(hg(e3, y)[0]), float(hg(zero, flipped_labels(y, np.asarray(e3)))[0]), rtol=1e-8)


# ---------------------------------------------------------------------------------------------------
# optimized and greedy vs random
# ---------------------------------------------------------------------------------------------------
def test_optimized_and_greedy_beat_random_flips():
    victim = victims.logistic(1e-2)
    X, y = _blobs(40, 4, 0)
    Xv, yv = _blobs(60, 4, 1)
    B = 5
    res = optimized_label_flip(X, y, Xv, yv, B, victim, steps=15)
    gr = greedy_label_flip(X, y, Xv, yv, B, victim, rescore_every=2)
    att = PoisoningAttack(victim, error_generic)
    value = jax.jit(lambda q: attack_value(att, X, y, LabelFlips(q), (Xv, yv))[0])
    hard = lambda q: float(value(jnp.asarray(q, float)))
    for r in (res, gr):
        q = np.asarray(r.poison.q)
        assert set(np.unique(q).tolist()) == {0.0, 1.0} and q.sum() == B
        assert np.sum(flipped_labels(y, q) != y) == B
        assert r.objective > r.objective_clean
        # the reported value is the victim retrained on the hard flips; the clean one has none
        np.testing.assert_allclose(r.objective, hard(q), rtol=1e-9)
        np.testing.assert_allclose(r.objective_clean, hard(np.zeros(40)), rtol=1e-9)
    rand = [hard(np.asarray(random_label_flip(jnp.asarray(y), B, jax.random.PRNGKey(s))) != y) for s in range(4)]
    assert res.objective >= np.mean(rand) and gr.objective >= np.mean(rand)
    # never worse than the rounding of the start (uniform q: the first B points flipped)
    assert res.objective >= hard(np.arange(40) < B)
    # greedy: rounds of 2, 2, 1 flips, each evaluated (history: no flips, then after each round)
    assert gr.history[0].shape == (4,) and gr.history[0][0] == pytest.approx(gr.objective_clean, rel=1e-9)
    np.testing.assert_allclose(gr.history[0][-1], gr.objective, rtol=1e-6)
    # the relaxed history of the optimized attack starts at the uniform q and never ends below it
    assert res.history[0].shape[0] >= 2 and np.max(res.history[0]) >= res.history[0][0]


def test_label_flip_rejects_bad_input():
    X, y = _blobs(10, 2, 0)
    with pytest.raises(ValueError, match="budget"):
        optimized_label_flip(X, y, X, y, 11, victims.logistic(1e-2))
    with pytest.raises(ValueError, match="budget"):
        greedy_label_flip(X, y, X, y, 0, victims.logistic(1e-2))
    with pytest.raises(ValueError, match="y_train"):
        greedy_label_flip(X, 2 * y - 1, X, y, 2, victims.logistic(1e-2))
    with pytest.raises(ValueError, match="y_val"):
        optimized_label_flip(X, y, X, 2 * y - 1, 2, victims.logistic(1e-2))
    with pytest.raises(ValueError, match="X_train"):
        optimized_label_flip(np.full_like(X, np.nan), y, X, y, 2, victims.logistic(1e-2))
    with pytest.raises(ValueError, match="smooth binary victim"):
        greedy_label_flip(X, y, X, y, 2, victims.svm(1.0))
