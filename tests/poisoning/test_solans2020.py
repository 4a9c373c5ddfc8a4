"""Solans, Biggio & Castillo (2020) fairness poisoning: metrics, surrogate, feasible set, the hypergradient
through the driver (vs central finite differences), the attack. Labels 0/1, groups 0/1."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilevel.solvers import Newton
from poisoning import victims
from poisoning.attack import PoisonPoints, hypergradient
from poisoning.attacks.solans2020 import (
    disparate_impact_objective,
    init_poison,
    poison_fairness,
    solans_attack,
    solans_split,
    zafar_synthetic,
)
from poisoning.fairness import (
    accuracy,
    average_odds_difference,
    check_groups,
    demographic_parity_difference,
    disparate_impact_ratio,
    fairness_report,
    group_rates,
    positive_rate,
)
from poisoning.feasible import Box, BoxL1Ball, Intersection, L1Ball

# a hand-checked example: groups 0 = unprivileged (first four), 1 = privileged (last four)
Y_TRUE = np.array([1, 1, -1, -1, 1, -1, 1, -1])
Y_PRED = np.array([1, -1, 1, -1, 1, 1, 1, -1])
GROUPS = np.array([0, 0, 0, 0, 1, 1, 1, 1])


# ----------------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("zero_one", [False, True])
def test_metrics_closed_form(zero_one):
    yt, yp = (Y_TRUE, Y_PRED) if not zero_one else ((Y_TRUE + 1) // 2, (Y_PRED + 1) // 2)
    # unprivileged: P(+) = 2/4, TPR = 1/2, FPR = 1/2, acc 2/4; privileged: P(+) = 3/4, TPR = 1, FPR = 1/2
    assert float(demographic_parity_difference(yp, GROUPS)) == pytest.approx(0.5 - 0.75)
    assert float(average_odds_difference(yt, yp, GROUPS)) == pytest.approx(0.5 * ((0.5 - 0.5) + (0.5 - 1.0)))
    assert float(accuracy(yt, yp)) == pytest.approx(5 / 8)
    r = group_rates(yt, yp, GROUPS)
    assert float(r["unprivileged"]["fnr"]) == pytest.approx(0.5)
    # no privileged positive prediction: the disparate-impact ratio is undefined
    assert np.isnan(float(disparate_impact_ratio(np.array([1, -1, -1]), np.array([0, 1, 1]))))
    assert float(r["privileged"]["fnr"]) == pytest.approx(0.0)
    assert float(r["privileged"]["fpr"]) == pytest.approx(0.5)
    assert float(r["unprivileged"]["accuracy"]) == pytest.approx(0.5)
    assert float(r["privileged"]["accuracy"]) == pytest.approx(0.75)
    assert float(positive_rate(yp, GROUPS, 1)) == pytest.approx(0.75)
    assert float(positive_rate(yp)) == pytest.approx(5 / 8)
    assert float(disparate_impact_ratio(yp, GROUPS)) == pytest.approx(0.5 / 0.75)
    rep = fairness_report(yt, yp, GROUPS)
    assert rep["dp_difference"] == pytest.approx(-0.25) and rep["average_odds_difference"] == pytest.approx(-0.25)
    assert rep["fpr_unprivileged"] == pytest.approx(0.5) and rep["fnr_unprivileged"] == pytest.approx(0.5)
    assert rep["disparate_impact_ratio"] == pytest.approx(2 / 3)
    # swapping which group is privileged negates the differences
    assert float(demographic_parity_difference(yp, GROUPS, privileged=0)) == pytest.approx(0.25)
    # jit-able
    assert float(jax.jit(demographic_parity_difference)(yp, GROUPS)) == pytest.approx(-0.25)


def test_metrics_empty_condition_is_nan():
    # the unprivileged group has no negatives: its FPR (and hence the AOD) is undefined
    r = group_rates(np.array([1, 1, -1, 1]), np.array([1, -1, 1, 1]), np.array([0, 0, 1, 1]))
    assert np.isnan(float(r["unprivileged"]["fpr"]))
    assert float(r["unprivileged"]["fnr"]) == pytest.approx(0.5)
    # no privileged positive prediction: the disparate-impact ratio is undefined
    assert np.isnan(float(disparate_impact_ratio(np.array([1, -1, -1]), np.array([0, 1, 1]))))


def test_metrics_reject_bad_groups():
    with pytest.raises(ValueError, match="groups"):
        demographic_parity_difference(Y_PRED, np.array([0, 0, 0, 0, 1, 1, 1, 2]))
    with pytest.raises(ValueError, match="groups"):
        demographic_parity_difference(Y_PRED, GROUPS.reshape(2, 4))
    with pytest.raises(ValueError, match="groups"):
        average_odds_difference(Y_TRUE, Y_PRED, GROUPS[:5])
    with pytest.raises(ValueError, match="y_true"):
        accuracy(Y_TRUE[:3], Y_PRED)
    with pytest.raises(ValueError, match="both groups"):
        check_groups(np.ones(4, int), require_both=True)
    check_groups(GROUPS.astype(bool))  # booleans are fine


# ----------------------------------------------------------------------------------------------------
# surrogate objective
# ----------------------------------------------------------------------------------------------------
def _softplus(v):
    return np.log1p(np.exp(v))


def test_disparate_impact_objective_closed_form():
    X = np.array([[0.5, -1.0], [2.0, 0.0], [-1.0, 1.0], [0.0, 0.3], [1.0, 1.0]])
    y = np.array([1, 0, 1, 0, 1])
    g = np.array([1, 0, 1, 1, 0])  # privileged: 0, 2, 3; unprivileged: 1, 4
    params = {"w": jnp.array([0.7, -0.4]), "b": jnp.array(0.2)}
    s = X @ np.array([0.7, -0.4]) + 0.2
    lam = (3 / 5) / (2 / 5)
    victim = victims.logistic(0.1)
    # authors' code: group as label (+1 unprivileged, -1 privileged), unprivileged losses times -p_priv/p_unpriv
    priv, unpriv = g == 1, g == 0
    expected = (np.sum(_softplus(s[priv])) - lam * np.sum(_softplus(-s[unpriv]))) / 5
    obj = disparate_impact_objective(g)
    assert obj.unpriv_weight == pytest.approx(-lam)
    assert float(obj(victim, params, X, y)) == pytest.approx(expected, rel=1e-12)
    # y_val does not enter the code's surrogate
    assert float(obj(victim, params, X, 1 - y)) == pytest.approx(expected, rel=1e-12)
    # the true-label reading: privileged loss minus rescaled unprivileged loss on (x, y), y as +-1
    ypm = 2 * y - 1
    expected_true = (np.sum(_softplus(-ypm[priv] * s[priv])) - lam * np.sum(_softplus(-ypm[unpriv] * s[unpriv]))) / 5
    obj_true = disparate_impact_objective(g, labels="true", reduction="sum")
    assert float(obj_true(victim, params, X, y)) == pytest.approx(5 * expected_true, rel=1e-12)


def test_disparate_impact_objective_errors():
    with pytest.raises(ValueError, match="groups_val"):
        disparate_impact_objective(np.ones(5, int))  # one group only
    with pytest.raises(ValueError, match="groups_val"):
        disparate_impact_objective(np.array([0, 1, 3]))
    with pytest.raises(ValueError, match="groups_val"):
        disparate_impact_objective(np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="labels"):
        disparate_impact_objective(np.array([0, 1]), labels="both")
    obj = disparate_impact_objective(np.array([0, 1, 1]))
    params = {"w": jnp.zeros(2), "b": jnp.array(0.0)}
    with pytest.raises(ValueError, match="groups_val"):
        obj(victims.logistic(0.1), params, np.zeros((4, 2)), np.ones(4, int))
    with pytest.raises(ValueError, match="'dmax' needs 'center'"):
        solans_attack(np.array([0, 1]), lb=0.0, ub=1.0, dmax=1.0)


# ----------------------------------------------------------------------------------------------------
# feasible set
# ----------------------------------------------------------------------------------------------------
def test_l1_ball_projection_and_intersection():
    rng = np.random.default_rng(0)
    c = rng.normal(size=(5, 3))
    x = c + 3.0 * rng.normal(size=(5, 3))
    ball = L1Ball(jnp.asarray(c), 1.5)
    proj = jax.jit(ball.project)
    p = np.asarray(proj(x))
    assert np.all(np.abs(p - c).sum(1) <= 1.5 + 1e-9)
    inside = c + 0.1
    np.testing.assert_allclose(np.asarray(proj(inside)), inside)  # already feasible: unchanged
    # optimality of the Euclidean projection: <x - P(x), z - P(x)> <= 0 for feasible z
    for _ in range(20):
        z = np.asarray(proj(c + rng.normal(size=c.shape)))
        assert np.all(np.sum((x - p) * (z - p), axis=1) <= 1e-9)
    # box ∩ ball (centers inside the box, so the intersection is not empty), Dykstra's projection
    c_in = rng.uniform(-0.4, 0.4, size=(5, 3))
    both = Intersection((L1Ball(jnp.asarray(c_in), 0.3), Box(-0.5, 0.5)), iters=200)
    q = np.asarray(jax.jit(both.project)(x))
    assert np.all(q >= -0.5 - 1e-12) and np.all(q <= 0.5 + 1e-12)
    assert np.all(np.abs(q - c_in).sum(1) <= 0.3 + 1e-6)
    # the one-pass exact projection onto box ∩ ball agrees with Dykstra's alternating projections
    for r in (0.05, 0.3):
        fast = np.asarray(jax.jit(BoxL1Ball(-0.5, 0.5, jnp.asarray(c_in), r).project)(x))
        slow = np.asarray(jax.jit(Intersection((L1Ball(jnp.asarray(c_in), r), Box(-0.5, 0.5)), iters=1000).project)(x))
        np.testing.assert_allclose(fast, slow, atol=1e-9)
        assert np.all(np.abs(fast - c_in).sum(1) <= r + 1e-9)
    with pytest.raises(ValueError, match="radius"):
        L1Ball(0.0, 0.0)
    with pytest.raises(ValueError, match="radius"):
        BoxL1Ball(0.0, 1.0, 0.5, -1.0)


# ----------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------
def test_zafar_synthetic_and_split():
    X, y, g = zafar_synthetic(200, 6.0, seed=3)
    X2, y2, g2 = zafar_synthetic(200, 6.0, seed=3)
    assert np.array_equal(X, X2) and np.array_equal(y, y2) and np.array_equal(g, g2)
    assert X.shape == (400, 2) and set(np.unique(y)) == {0, 1} and set(np.unique(g)) == {0, 1}
    assert np.sum(y == 1) == 200
    # the sensitive attribute is correlated with the favorable label, more so when the means are apart
    corr = lambda d: np.corrcoef(*zafar_synthetic(400, d, seed=0)[1:])[0, 1]
    assert corr(6.0) > 0.1 and corr(6.0) > corr(0.0)
    sp = solans_split(X, y, g, seed=0)
    assert len(sp["y_test"]) == 80 and len(sp["y_train"]) == 160 and len(sp["y_val"]) == 160
    assert not np.any(np.all(sp["X_train"][:, None] == sp["X_test"][None], axis=-1))
    with pytest.raises(ValueError, match="distance"):
        zafar_synthetic(10, -1.0)
    with pytest.raises(ValueError, match="groups"):
        solans_split(X, y, g[:10])


def test_init_poison():
    X, y, g = zafar_synthetic(50, 4.0, seed=0)
    X0, y0, idx = init_poison(X, y, 7, seed=1, noise=1e-3)
    np.testing.assert_array_equal(y0, 1 - y[idx])
    assert np.max(np.abs(X0 - X[idx])) <= 1e-3
    X0, y0, idx = init_poison(X, y, 5, groups_val=g, group=0, label=1, seed=2)
    assert np.all(g[idx] == 0) and np.all(y[idx] == 1) and np.all(y0 == 0)
    with pytest.raises(ValueError, match="'group' needs groups_val"):
        init_poison(X, y, 3, group=0)
    with pytest.raises(ValueError, match="y_val"):
        init_poison(X, 2 * y - 1, 3)


# ----------------------------------------------------------------------------------------------------
# hypergradient through the driver vs central finite differences (exact retraining, float64)
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("labels", ["group", "true"])
def test_hypergradient_matches_finite_differences(labels):
    X, y, g = zafar_synthetic(12, 4.0, seed=1)
    sp = solans_split(X, y, g, seed=1)
    X0, y0, _ = init_poison(sp["X_val"], sp["y_val"], 2, seed=0)
    attack = solans_attack(sp["g_val"], lb=-20.0, ub=20.0, reg=0.05, labels=labels)
    attack = dataclasses.replace(attack, victim=victims.logistic(0.05, solver=Newton(tol=1e-13, maxiter=200)))
    target = (sp["X_val"], sp["y_val"])
    hg = jax.jit(lambda Xp: hypergradient(attack, sp["X_train"], sp["y_train"], PoisonPoints(Xp, y0), target)[:2])
    value = lambda Xp: hg(jnp.asarray(Xp))[0]
    grad = np.asarray(hg(jnp.asarray(X0))[1])
    h = 1e-5
    fd = np.zeros_like(X0)
    for i in range(X0.shape[0]):
        for j in range(X0.shape[1]):
            e = np.zeros_like(X0)
            e[i, j] = h
            fd[i, j] = (float(value(X0 + e)) - float(value(X0 - e))) / (2 * h)
    assert np.max(np.abs(grad)) > 1e-4  # the poison points do move the objective
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-9)


# ----------------------------------------------------------------------------------------------------
# the attack
# ----------------------------------------------------------------------------------------------------
def test_attack_increases_demographic_disparity():
    X, y, g = zafar_synthetic(100, 4.0, seed=0)
    sp = solans_split(X, y, g, seed=0)
    n_tr = len(sp["y_train"])
    res, X0, attack = poison_fairness(sp["X_train"], sp["y_train"], sp["X_val"], sp["y_val"], sp["g_val"], 12,
                                      steps=40, reg=1.0 / n_tr, dmax=10.0, seed=0)
    victim = attack.victim
    dp = lambda p, Xs, gs: float(demographic_parity_difference(np.asarray(victim.predict(p, Xs)), gs))
    # the surrogate went up, and with it the measured disparity against the unprivileged group
    assert res.objective > res.objective_clean
    for h in res.history:
        assert np.max(h) >= h[0]
    dp_clean = dp(res.params_clean, sp["X_val"], sp["g_val"])
    dp_pois = dp(res.params, sp["X_val"], sp["g_val"])
    assert dp_pois < dp_clean and abs(dp_pois) > abs(dp_clean)
    # more than the same points without the feature optimization (flipped-label injection)
    inject = victim.fit(np.concatenate([sp["X_train"], X0]), np.concatenate([sp["y_train"], res.poison.y]))
    assert dp_pois < dp(inject, sp["X_val"], sp["g_val"])
    # the poison stays feasible: box [min X_val, max X_val] and the l1 ball of radius 10 around its start
    lo, hi = sp["X_val"].min(), sp["X_val"].max()
    assert np.all(res.poison.X >= lo - 1e-9) and np.all(res.poison.X <= hi + 1e-9)
    assert np.all(np.abs(res.poison.X - X0).sum(1) <= 10.0 + 1e-4)
