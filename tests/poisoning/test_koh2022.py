"""Koh, Steinhardt & Liang (2022): the influence attack through the driver, the KKT attack, feasibility."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilevel.influence import influence_perturbation
from poisoning import victims
from poisoning.attack import PoisoningAttack, PoisonPoints, attack_value, hypergradient
from poisoning.attacks import koh2022 as K
from poisoning.defenses.evaluate import fit_poisoned, fit_victim, hinge_score
from poisoning.defenses.regions import SanitizerRegion, hinge_thresholds
from poisoning.feasible import Box
from poisoning.objectives import error_generic


def _tiny(seed=0, n=30, d=4, n_tgt=20):
    rng = np.random.default_rng(seed)

    def draw(k):
        y = np.arange(k) % 2
        return np.clip(0.5 + 0.15 * (2 * y[:, None] - 1) + 0.2 * rng.standard_normal((k, d)), 0, 1), y

    return (*draw(n), *draw(n_tgt))


def test_hypergradient_is_influence_and_matches_finite_differences():
    """The driver's implicit hypergradient w.r.t. locations with copies = I_pert * c_j / N (Koh & Liang's
    influence function, the oracle) = central differences of the retrained target loss (float64)."""
    X, y, Xt, yt = _tiny(n=20, d=3, n_tgt=10)
    victim = victims.smooth_svm(0.05, 0.1, tol=1e-12)
    attack = PoisoningAttack(victim, error_generic, Box(0.0, 1.0))
    X_loc = np.array([[0.3, 0.6, 0.4], [0.7, 0.2, 0.6]])
    poison = PoisonPoints(X_loc, np.array([1, 0]), counts=np.array([2.0, 1.0]))
    # one compiled (value, hypergradient) for the point and its finite differences
    hg = jax.jit(lambda Xl: hypergradient(attack, X, y, poison.with_leader(Xl), (Xt, yt)))
    value, g, params = hg(jnp.asarray(X_loc))
    np.testing.assert_allclose(float(attack_value(attack, X, y, poison, (Xt, yt))[0]), float(value), rtol=1e-12)
    h = 1e-5
    fd = np.zeros_like(X_loc)
    for i in range(2):
        for j in range(3):
            e = np.zeros_like(X_loc)
            e[i, j] = h
            fd[i, j] = (float(hg(jnp.asarray(X_loc + e))[0]) - float(hg(jnp.asarray(X_loc - e))[0])) / (2 * h)
    assert np.max(np.abs(fd)) > 1e-3
    np.testing.assert_allclose(np.asarray(g), fd, rtol=1e-6, atol=1e-9)

    # the influence function on the weighted training objective (labels +-1 inside the victim)
    Xa = jnp.concatenate([jnp.asarray(X), jnp.asarray(X_loc)])
    ya = victim.encode(np.concatenate([y, [1, 0]]))
    c = jnp.concatenate([jnp.ones(len(y)), jnp.asarray(poison.counts)])

    def loss(p, ex):
        return victim.loss_fn(p, ex[0][None], ex[1][None])[0]

    ipert = jax.jit(lambda p: influence_perturbation(
        loss, p, (Xa, ya), (jnp.asarray(Xt), victim.encode(yt)), train_points=(jnp.asarray(X_loc), ya[-2:]),
        reduction="mean", objective=lambda q: victim.train_loss(q, Xa, ya, c), linear_solver="cholesky"))(params)
    np.testing.assert_allclose(np.asarray(g), np.asarray(ipert) * (np.asarray(poison.counts) / float(c.sum()))[:, None],
                               rtol=1e-8, atol=1e-12)


def test_kkt_target_gradient_and_exact_kkt_poison():
    """G by autodiff of the victim = the smoothed-hinge closed form; poison solving sum_j c_j s_j (x_j, 1) = G on
    the linear part of the hinge makes the decoy the retrained optimum."""
    X, y, _, _ = _tiny(seed=2)
    wd, t = 0.01, 0.01
    victim = victims.smooth_svm(wd, t, tol=1e-11)
    clean = fit_victim(victim, X, y)
    decoy = {"w": clean["w"], "b": clean["b"] + 0.5}  # a shifted intercept
    n_p = 20
    Gw, Gb = K.kkt_target_gradient(decoy, X, y, n_p, victim=victim)
    s = 2.0 * y - 1.0
    sig = 1.0 / (1.0 + np.exp(-(1.0 - s * (X @ np.asarray(decoy["w"]) + float(decoy["b"]))) / t))
    np.testing.assert_allclose(np.asarray(Gw), -(sig * s) @ X + (len(y) + n_p) * wd * np.asarray(decoy["w"]),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(float(Gb), -np.sum(sig * s), rtol=1e-10)

    w, b = np.asarray(decoy["w"]), float(decoy["b"])
    x_neg = (-0.5 - b) * w / (w @ w)  # margin 0.5 for class 0: on the linear part of the hinge
    c_pos, c_neg = (n_p + float(Gb)) / 2, (n_p - float(Gb)) / 2  # c_pos - c_neg = G_b (real multiplicities)
    x_pos = (np.asarray(Gw) + c_neg * x_neg) / c_pos
    poison = PoisonPoints(np.stack([x_pos, x_neg]), np.array([1, 0]), counts=np.array([c_pos, c_neg]))
    assert np.all(np.array([1, -1]) * (poison.X @ w + b) < 1 - 10 * t)
    np.testing.assert_allclose(float(K.kkt_residual(poison.X, poison.y, poison.counts, Gw)), 0.0, atol=1e-18)
    p = fit_poisoned(victim, X, y, poison, warm_start=clean)
    np.testing.assert_allclose(np.asarray(p["w"]), w, atol=1e-6)
    np.testing.assert_allclose(float(p["b"]), b, atol=1e-6)


def test_kkt_then_aware_attack_meets_the_loss_constraint():
    """KKT warm start + influence ascent projected onto sphere ∩ slab ∩ box ∩ loss halfspace: the KKT
    candidates keep k + 1 copies per used location, and the returned iterate lies in the region and meets
    the loss constraint under its own retrained model (the driver's ``select``). That every sanitizer then
    keeps every copy is checked on the experiment (tests/experiments/test_koh2022.py)."""
    X, y, Xt, yt = _tiny(seed=3, n=40)
    n_poison = 12
    victim = victims.smooth_svm()
    decoys = K.decoy_parameters(X, y, Xt, yt, weights=(0.2,))
    kkt = K.kkt_attack(X, y, Xt, yt, n_poison, decoys, iters=50, min_copies=6)
    used = kkt.poison.counts[kkt.poison.counts > 0]
    assert used.sum() == n_poison and np.all(used >= 6) and kkt.mode == "kkt"
    assert kkt.objective == max(kkt.history[0]) > kkt.objective_clean
    aware = K.koh_attack(X, y, Xt, yt, n_poison, steps=3, loss_percentile=90.0, schedule="cosine", init=kkt.poison)
    res = aware.poison
    assert res.counts.tolist() == kkt.poison.counts.tolist() and aware.objective >= aware.history[0][0] - 1e-12
    np.testing.assert_allclose(aware.objective, float(error_generic(victim, aware.params, Xt, yt)), rtol=1e-12)
    region = SanitizerRegion(X, y, res.y, res.counts, loss_percentile=90.0)
    assert region.contains(res.X, atol=1e-9, params=aware.params)
    tau = np.asarray(hinge_thresholds(aware.params, X, y, 90.0))
    assert np.all(np.asarray(hinge_score(victim, aware.params, res.X, res.y)) <= tau[res.y] + 1e-9)
    # the select score: the objective when admissible, below every admissible score (and ordered) otherwise
    select = K.loss_admissible(region)
    v = float(error_generic(victim, aware.params, Xt, yt))
    assert float(select(victim, aware.params, jnp.asarray(res.X), Xt, yt)) == v
    w = np.asarray(aware.params["w"])
    bad = jnp.asarray(res.X - 10.0 * (2 * res.y - 1)[:, None] * w / np.linalg.norm(w))  # far on the wrong side
    score = float(select(victim, aware.params, bad, Xt, yt))
    assert -1.0 <= score < 0.0 and np.isclose(score, -np.exp(-v), rtol=1e-12, atol=0)


def test_initial_poison_and_bad_arguments():
    X, y, Xt, yt = _tiny()
    p = K.initial_poison(X, y, 5, 2, seed=0)
    assert p.y.tolist() == [1, 0] and p.counts.tolist() == [3, 2]
    rows = [np.flatnonzero(np.all(X == x, axis=1))[0] for x in p.X]
    assert [y[i] for i in rows] == [0, 1]  # label flips of clean points of the other class
    with pytest.raises(ValueError, match="schedule"):
        K.koh_attack(X, y, Xt, yt, 4, schedule="linear")
    with pytest.raises(ValueError, match="init"):
        K.koh_attack(X, y, Xt, yt, 4, init=(X[:2], y[:2], np.ones(2)))
    with pytest.raises(ValueError, match="centroids"):
        K.koh_attack(X, y, Xt, yt, 4, centroids="oracle")
    with pytest.raises(ValueError, match="weights"):
        K.decoy_parameters(X, y, Xt, yt, weights=(-1.0,))
    with pytest.raises(ValueError, match="min_copies"):
        K.kkt_attack(X, y, Xt, yt, 4, [{"w": np.zeros(X.shape[1]), "b": 0.0}], min_copies=0)
    with pytest.raises(ValueError, match="decoys"):
        K.kkt_attack(X, y, Xt, yt, 4, [])
    with pytest.raises(ValueError, match="n_poison"):
        K.initial_poison(X, y, 0)


# ------------------------------------------------------------------------------------------------
# the min-max attack (Sec. 4.3) and the release's decoys
# ------------------------------------------------------------------------------------------------
def test_max_linear_over_region_matches_closed_form_and_brute_force():
    """The inner maximiser: without box and halfspace it is Steinhardt's closed form; with both, no point
    of a fine grid inside sphere ∩ slab ∩ box ∩ halfspace does better, and it is feasible (incl. a flat box
    face at the optimum, where the dual's argmax jumps and the primal point is recovered between)."""
    from poisoning.certify.steinhardt import minimize_linear_sphere_slab

    rng = np.random.default_rng(0)
    m, u = np.array([0.45, 0.55]), np.array([0.6, 0.8])
    r, tau = 0.5, 0.15
    for _ in range(3):
        c = rng.standard_normal(2)
        x = K.max_linear_over_region(jnp.asarray(c), jnp.asarray(m), jnp.asarray(u), r, tau, -jnp.inf, jnp.inf,
                                     jnp.zeros(2), 0.0)
        np.testing.assert_allclose(np.asarray(x), np.asarray(minimize_linear_sphere_slab(-c, m, u, r, tau)),
                                   atol=1e-9)
    g = np.stack(np.meshgrid(np.linspace(0, 1, 801), np.linspace(0, 1, 801)), -1).reshape(-1, 2)
    for c, a, beta in ((np.array([1.0, -0.3]), np.array([0.2, 1.0]), 0.7),      # halfspace and a box face bind
                       (np.array([-0.5, -1.0]), np.array([1.0, 0.0]), 0.0),     # the halfspace does not
                       (np.array([0.3, 1.0]), np.array([-1.0, 0.4]), -0.35)):
        x = np.asarray(K.max_linear_over_region(jnp.asarray(c), jnp.asarray(m), jnp.asarray(u), r, tau, 0.0, 1.0,
                                                jnp.asarray(a), beta))
        z = x - m
        assert np.linalg.norm(z) <= r + 1e-9 and abs(z @ u) <= tau + 1e-9 and a @ x >= beta - 1e-9
        assert np.all(x >= -1e-12) and np.all(x <= 1 + 1e-12)
        zg = g - m
        ok = (np.linalg.norm(zg, axis=1) <= r) & (np.abs(zg @ u) <= tau) & (g @ a >= beta)
        best = np.max(g[ok] @ c)
        assert best - 1e-9 <= c @ x <= best + 2e-3       # the grid's spacing


def test_minmax_attack_stays_feasible_under_its_decoy_and_raises_the_target_loss():
    """Min-max attack with a release-style decoy: every round's point is the worst point (largest hinge
    under that round's model) of sphere ∩ slab ∩ box ∩ {hinge under the decoy <= rho_max}, checked against
    scipy's SLSQP; the attack's points lie there; the retrained victim's target loss exceeds the clean one;
    the decoys form a Pareto front."""
    X, y, Xt, yt = _tiny(seed=3, n=40)
    decoys = K.generate_decoys(X, y, Xt, yt, quantiles=(0.15, 0.3), reps=(2, 6))
    err, loss = [d.dev_error for d in decoys], [d.train_loss for d in decoys]
    assert err == sorted(err, reverse=True) and all(a > b for a, b in zip(loss, loss[1:]))
    res = K.minmax_attack(X, y, Xt, yt, 12, decoys[:1], copies=3, rho_max=0.25)
    assert res.mode == "minmax" and int(res.poison.counts.sum()) == 12 and res.poison.X.shape == (4, 4)
    assert res.objective > res.objective_clean
    setup = K.minmax_setup(X, y)
    mu, u = np.asarray(setup.centroids), np.asarray(setup.directions)
    R, S = np.asarray(setup.sphere_radii), np.asarray(setup.slab_radii)
    dw, db = np.asarray(decoys[0].params["w"]), float(decoys[0].params["b"])

    def feasible(Xp, yp, tol=1e-9):
        z, s = Xp - mu[yp], 2 * yp - 1
        return ((np.linalg.norm(z, axis=1) <= R[yp] + tol) & (np.abs(np.sum(z * u[yp], 1)) <= S[yp] + tol)
                & np.all((Xp >= -tol) & (Xp <= 1 + tol), axis=1) & (1 - s * (Xp @ dw + db) <= 0.25 + tol))

    assert np.all(feasible(res.poison.X, res.poison.y))
    # the scan itself (same compiled call as inside minmax_attack): each round against random search
    clean = fit_victim(victims.smooth_svm(), X, y)
    xs, ks, hs, ws, bs = K._minmax_scan(jnp.asarray(X, float), jnp.asarray(2.0 * y - 1), setup, clean["w"],
                                        clean["b"], jnp.asarray(dw), jnp.asarray(db), jnp.asarray(0.25),
                                        jnp.asarray(12 / 40), jnp.asarray(0.01), jnp.asarray(0.03), rounds=6, iters=60)
    np.testing.assert_allclose(np.asarray(res.poison.X), np.asarray(xs[2:]), atol=1e-12)   # after 2 burn-in rounds
    from scipy.optimize import minimize

    def slsqp(w, b, k):   # an independent solver of the inner problem of class k
        sg = 2 * k - 1
        cons = [{"type": "ineq", "fun": lambda x: R[k] ** 2 - np.sum((x - mu[k]) ** 2)},
                {"type": "ineq", "fun": lambda x: S[k] - (x - mu[k]) @ u[k]},
                {"type": "ineq", "fun": lambda x: S[k] + (x - mu[k]) @ u[k]},
                {"type": "ineq", "fun": lambda x: 0.25 - 1 + sg * (x @ dw + db)}]
        sol = minimize(lambda x: sg * (x @ w), mu[k], jac=lambda x: sg * w, constraints=cons, bounds=[(0, 1)] * 4,
                       method="SLSQP", options={"ftol": 1e-12, "maxiter": 500})
        assert np.all(feasible(sol.x[None], np.array([k]), tol=1e-7))
        return 1 - sg * (sol.x @ w + b)

    for t in (0, 5):
        w, b = np.asarray(ws[t]), float(bs[t])
        best = max(slsqp(w, b, 0), slsqp(w, b, 1))
        assert float(hs[t]) == pytest.approx(best, abs=1e-6)
        assert float(hs[t]) == pytest.approx(1 - (2 * int(ks[t]) - 1) * (float(xs[t] @ ws[t]) + float(bs[t])))
    with pytest.raises(ValueError, match="copies"):
        K.minmax_attack(X, y, Xt, yt, 4, [None], copies=0)
    with pytest.raises(ValueError, match="decoys"):
        K.minmax_attack(X, y, Xt, yt, 4, [])
    with pytest.raises(ValueError, match="quantiles"):
        K.generate_decoys(X, y, Xt, yt, quantiles=(1.5,))
