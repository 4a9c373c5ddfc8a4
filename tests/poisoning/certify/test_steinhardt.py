"""Steinhardt, Koh & Liang 2017 (poisoning.certify.steinhardt): the closed-form inner maximisation against
brute force, the bound against attacks retrained by an independent solver (HiGHS on the constrained
hinge problem's LP with cutting planes for the ball), the clean limit, monotonicity, jit / vmap, and the errors
(the end-to-end run: tests/experiments/test_steinhardt2017.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linprog, minimize

from poisoning.certify import steinhardt as S

RHO = 1.5
STEPS = 300


@pytest.fixture(scope="module")
def toy():
    """Two overlapping Gaussian classes in 2-D (labels 0/1), n = 40, and the oracle region at 70 %."""
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal([0.6, 0.3], 0.6, (20, 2)), rng.normal([-0.6, -0.3], 0.6, (20, 2))])
    y = np.array([1] * 20 + [0] * 20)
    return X, y, S.oracle_region(X, y, 70.0)


def constrained_hinge_min(X, y, rho, n_norm, tol=1e-7):
    """min over ||(w, b)|| <= rho of sum_i hinge_i / n_norm, independently of the library: the slack LP
    solved by HiGHS (scipy's linprog) with the ball replaced by cutting planes a.theta <= rho, refined at
    each LP solution until the LP value (a lower bound on the minimum: the polytope contains the ball)
    and the loss of the LP solution scaled into the ball (an upper bound) agree within ``tol``. Returns the
    upper value (>= the true minimum), so ``value <= U*`` certifies ``minimum <= U*``."""
    N, d = X.shape
    s = 2.0 * y - 1.0
    Z = np.hstack([X, np.ones((N, 1))])
    A_margin = np.hstack([-s[:, None] * Z, -np.eye(N)])          # xi_i >= 1 - s_i <theta, (x_i, 1)>
    c = np.concatenate([np.zeros(d + 1), np.full(N, 1.0 / n_norm)])
    cuts = list(np.vstack([np.eye(d + 1), -np.eye(d + 1)]))
    for _ in range(200):
        A_cut = np.hstack([np.asarray(cuts), np.zeros((len(cuts), N))])
        res = linprog(c, A_ub=np.vstack([A_margin, A_cut]), b_ub=np.concatenate([-np.ones(N), np.full(len(cuts), rho)]),
                      bounds=[(None, None)] * (d + 1) + [(0, None)] * N, method="highs")
        assert res.status == 0, res.message
        theta = res.x[: d + 1]
        norm = np.linalg.norm(theta)
        inside = theta * min(1.0, rho / norm)
        upper = np.sum(np.maximum(0.0, 1.0 - s * (Z @ inside))) / n_norm
        if upper - res.fun <= tol:
            return upper
        cuts.append(theta / norm)
    raise AssertionError("cutting planes did not converge")


# --------------------------------------------------------------------------------------------------
# the inner maximisation


def _boundary_samples(center, u, r, tau, m=20000):
    """Dense samples of the boundary of ball(center, r) ∩ slab(|<x - center, u>| <= tau) in 2-D: the
    circle's points inside the slab and the slab lines' points inside the ball."""
    a = np.linspace(0, 2 * np.pi, m, endpoint=False)
    circle = center + r * np.stack([np.cos(a), np.sin(a)], 1)
    circle = circle[np.abs((circle - center) @ u) <= tau]
    perp = np.array([-u[1], u[0]])
    t = np.linspace(-r, r, m)
    lines = [center + side * min(tau, r) * u + t[:, None] * perp for side in (-1.0, 1.0)]
    lines = np.concatenate(lines)
    lines = lines[np.linalg.norm(lines - center, axis=1) <= r]
    return np.concatenate([circle, lines])


def test_minimize_linear_sphere_slab_matches_brute_force_in_2d():
    rng = np.random.default_rng(1)
    cases = []
    for k in range(40):
        c = rng.normal(size=2)
        center = rng.normal(size=2)
        u = rng.normal(size=2)
        u /= np.linalg.norm(u)
        r = rng.uniform(0.5, 2.0)
        tau = r * rng.choice([0.05, 0.3, 0.7, 0.99, 1.5])         # active and inactive slabs
        if k == 0:
            c = 2.0 * u                                            # c along u: the slab corner case
        if k == 1:
            c = np.array([-u[1], u[0]])                            # c orthogonal to u
        cases.append((c, center, u, r, tau))
    fn = jax.jit(S.minimize_linear_sphere_slab)
    for c, center, u, r, tau in cases:
        x = np.asarray(fn(c, center, u, r, tau))
        assert np.linalg.norm(x - center) <= r * (1 + 1e-9) and abs((x - center) @ u) <= tau * (1 + 1e-9) + 1e-12
        brute = (_boundary_samples(center, u, r, tau) @ c).min()
        # the closed form is feasible, so never below the true minimum; sampling misses it by O(r |c| / m)
        assert c @ x <= brute + 1e-9
        assert c @ x >= brute - 1e-3 * r * np.linalg.norm(c)
    # c = 0: every point is optimal; the centre is returned (never NaN)
    x0 = np.asarray(fn(np.zeros(2), np.ones(2), np.array([1.0, 0.0]), 1.0, 0.5))
    np.testing.assert_allclose(x0, np.ones(2))


def test_minimize_linear_sphere_slab_matches_slsqp_in_5d():
    rng = np.random.default_rng(2)
    for _ in range(6):
        c, center, u = rng.normal(size=5), rng.normal(size=5), rng.normal(size=5)
        u /= np.linalg.norm(u)
        r, tau = 1.3, rng.choice([0.1, 0.6, 2.0])
        cons = [{"type": "ineq", "fun": lambda x: r ** 2 - (x - center) @ (x - center)},
                {"type": "ineq", "fun": lambda x: tau - (x - center) @ u},
                {"type": "ineq", "fun": lambda x: tau + (x - center) @ u}]
        ref = minimize(lambda x: c @ x, center, method="SLSQP", constraints=cons, options={"ftol": 1e-12})
        x = np.asarray(jax.jit(S.minimize_linear_sphere_slab)(c, center, u, r, tau))
        assert c @ x == pytest.approx(ref.fun, abs=1e-6)


def test_worst_feasible_point_is_the_largest_hinge_over_both_classes(toy):
    X, y, region = toy
    w, b = jnp.array([0.8, -0.5]), 0.1
    x, k, h = S.worst_feasible_point(w, b, region)
    s = 2.0 * int(k) - 1.0
    assert float(h) == pytest.approx(max(0.0, 1.0 - s * (float(w @ x) + b)))
    assert bool(region.contains(x, k)[0])
    # brute force over dense samples of both classes' regions (boundary and interior rays)
    best = 0.0
    for cls in (0, 1):
        mu, u = np.asarray(region.centroids[cls]), np.asarray(region.directions[cls])
        pts = _boundary_samples(mu, u, float(region.sphere_radii[cls]), float(region.slab_radii[cls]), 5000)
        sc = 2.0 * cls - 1.0
        best = max(best, np.max(np.maximum(0.0, 1.0 - sc * (pts @ np.asarray(w) + b))))
    assert float(h) >= best - 1e-9 and float(h) <= best + 1e-3


# --------------------------------------------------------------------------------------------------
# the certificate


@pytest.fixture(scope="module")
def clean_minimum(toy):
    X, y, _ = toy
    return constrained_hinge_min(X, y, RHO, len(y))


@pytest.mark.parametrize("eps,attacks", [(0.1, ("candidate",)), (0.3, ("candidate", "paper", "random"))])
def test_bound_dominates_every_attack_retrained_by_an_independent_solver(toy, eps, attacks):
    """U* >= min_theta (1/n) L(theta; D_c ∪ D_p) for the candidate attack of a long run, of the paper's
    eps*n-step run, and of random feasible points with flipped labels; the candidate nearly matches U*."""
    X, y, region = toy
    n = len(y)
    m = int(round(eps * n))
    cert = S.certify(X, y, eps, region, S.CertifyConfig(rho=RHO, steps=STEPS))
    assert float(cert.upper_bound) == pytest.approx(float(cert.clean_loss + eps * cert.poison_loss))
    assert bool(jnp.all(region.contains(cert.X_iterates, cert.y_iterates)))
    bounds = [float(cert.upper_bound)]
    candidates = {"candidate": lambda: S.candidate_attack(cert, m)}
    if "paper" in attacks:
        short = S.certify(X, y, eps, region, S.CertifyConfig(rho=RHO))             # Algorithm 1 as printed
        assert short.X_iterates.shape == (m, 2)
        bounds.append(float(short.upper_bound))
        candidates["paper"] = lambda: S.candidate_attack(short, m)
    if "random" in attacks:
        rng = np.random.default_rng(3)
        y_rand = 1 - y[rng.choice(n, m)]
        candidates["random"] = lambda: (np.asarray(_project(region, X[rng.choice(n, m)] * 3.0, y_rand)), y_rand)
    values = {}
    for name in attacks:
        Xp, yp = candidates[name]()
        assert bool(jnp.all(region.contains(Xp, yp))), name
        values[name] = constrained_hinge_min(np.vstack([X, Xp]), np.concatenate([y, yp]), RHO, n)
        for b in bounds:
            assert values[name] <= b + 1e-7, name
    assert bounds[0] - values["candidate"] < 0.1          # the bound is nearly attained by its own attack


def _project(region, x, k):
    from poisoning.feasible import project_sphere_slab

    return project_sphere_slab(x, k, region.centroids, region.directions, region.sphere_radii, region.slab_radii)


def test_bound_is_monotone_in_eps_and_tends_to_the_clean_minimum(toy, clean_minimum):
    X, y, region = toy
    cfg = S.CertifyConfig(rho=RHO, steps=STEPS)
    grid = np.array([1e-4, 0.05, 0.1, 0.2, 0.3])
    sweep = S.certify_sweep(X, y, grid, region, cfg)
    runs = [S.certify(X, y, e, region, cfg) for e in grid]
    own = np.array([float(r.upper_bound) for r in runs])
    # vmap = a loop of runs; the sweep only tightens
    np.testing.assert_allclose(np.asarray(sweep.clean_losses[2]), np.asarray(runs[2].clean_losses), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(sweep.X_iterates[4]), np.asarray(runs[4].X_iterates), rtol=1e-10)
    ub = np.asarray(sweep.upper_bound)
    assert np.all(ub <= own + 1e-12) and np.all(np.diff(ub) >= 0)
    assert np.all(np.diff(own) >= -2e-3)                                   # each run alone, nearly monotone
    assert ub[-1] - ub[0] > 0.1                                            # and not flat: poison costs
    assert clean_minimum - 1e-7 <= ub[0] <= clean_minimum + 2e-3


def test_constrained_hinge_svm_matches_the_lp(toy, clean_minimum):
    X, y, _ = toy
    for rho, ref in ((RHO, clean_minimum), (0.3, None), (50.0, None)):       # active, tight, inactive
        w, b, C = S.constrained_hinge_svm(X, y, rho, return_C=True)
        value = np.mean(np.maximum(0.0, 1.0 - (2.0 * y - 1.0) * (X @ w + b)))
        ref = constrained_hinge_min(X, y, rho, len(y)) if ref is None else ref
        assert np.hypot(np.linalg.norm(w), b) <= rho * (1 + 1e-9) and C > 0
        assert ref - 1e-7 <= value <= ref + 2e-3, rho
    w2, b2 = S.constrained_hinge_svm(X, y, RHO, C_hint=1e-3)               # a hint only changes the search
    assert np.mean(np.maximum(0.0, 1.0 - (2.0 * y - 1.0) * (X @ w2 + b2))) <= clean_minimum + 2e-3


def test_certify_under_jit_equals_eager(toy):
    X, y, region = toy
    cfg = S.CertifyConfig(rho=RHO, steps=STEPS)
    eager = S.certify(X, y, 0.2, region, cfg)
    jitted = jax.jit(S.certify, static_argnames="config")(X, y, 0.2, region, config=cfg)
    np.testing.assert_allclose(float(jitted.upper_bound), float(eager.upper_bound), rtol=1e-12)
    default_region = S.certify(X, y, 0.2, config=cfg)                     # the oracle region by default
    assert float(default_region.upper_bound) == pytest.approx(float(eager.upper_bound))


# --------------------------------------------------------------------------------------------------
# errors


def test_bad_arguments_raise_errors_naming_them(toy):
    X, y, region = toy
    cfg = S.CertifyConfig(rho=RHO, steps=STEPS)
    for eps in (0.0, 1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="'eps'"):
            S.certify(X, y, eps, region, cfg)
    with pytest.raises(ValueError, match="'rho'"):
        S.CertifyConfig(rho=0.0)
    with pytest.raises(ValueError, match="'eta'"):
        S.CertifyConfig(eta=-1.0)
    with pytest.raises(ValueError, match="'steps'"):
        S.CertifyConfig(steps=0)
    with pytest.raises(ValueError, match="'percentile'"):
        S.CertifyConfig(percentile=120)
    with pytest.raises(ValueError, match="'X'"):
        S.certify(X[:, 0], y, 0.1, region, cfg)
    with pytest.raises(ValueError, match="'X'"):
        S.certify(np.where(np.arange(80).reshape(40, 2) == 3, np.nan, X), y, 0.1, region, cfg)
    with pytest.raises(ValueError, match="'y'"):
        S.certify(X, y[:-1], 0.1, region, cfg)
    with pytest.raises(ValueError, match="'y'"):
        S.certify(X, 2 * y - 1, 0.1, region, cfg)                          # -1/+1 labels
    with pytest.raises(ValueError, match="'region'"):
        S.certify(X, y, 0.1, S.SphereSlabRegion(region.centroids[:, :1], region.directions[:, :1],
                                                region.sphere_radii, region.slab_radii), cfg)
    with pytest.raises(ValueError, match="'config'"):
        jax.jit(lambda e: S.certify(X, y, e, region, S.CertifyConfig(rho=RHO)).upper_bound)(0.1)
    with pytest.raises(ValueError, match="'eps_grid'"):
        S.certify_sweep(X, y, [0.1, 1.5], region, cfg)
    with pytest.raises(ValueError, match="'n_poison'"):
        S.candidate_attack(S.certify(X, y, 0.1, region, cfg), STEPS + 1)
    with pytest.raises(ValueError, match="'rho'"):
        S.constrained_hinge_svm(X, y, -1.0)
    # a traced eps out of range: raised when the jitted result is computed, never a silent number
    with pytest.raises((ValueError, jax.errors.JaxRuntimeError), match="eps"):
        jax.block_until_ready(jax.jit(lambda e: S.certify(X, y, e, region, cfg).upper_bound)(1.5))


# --------------------------------------------------------------------------------------------------
# the data-dependent defense (Sec. 3.2 / 5)


def test_data_dependent_worst_point_matches_a_grid_and_its_attacks_stay_below_the_estimate(toy):
    """The one-location attacker's worst point against the data-dependent sphere + slab: kept by the defense
    (its centroid moved by the m copies), and no point of a fine 2-d grid that the defense keeps has a
    larger hinge (an independent check of the defense written from its definition). Algorithm 1 with it:
    every iterate's point copied eps n times is kept, and the defender retrained on D_c + those copies
    (HiGHS) stays below the estimate U~* (valid for one-location attacks, up to the grid)."""
    X, y, _ = toy
    region = S.DataDependentRegion.of(X, y, 70.0)
    mu, cnt = np.asarray(region.centroids), np.asarray(region.counts)
    R, T = np.asarray(region.sphere_radii), np.asarray(region.slab_radii)
    g = np.stack(np.meshgrid(np.linspace(-4, 4, 1201), np.linspace(-4, 4, 1201)), -1).reshape(-1, 2)

    def kept(P, k, m):          # the defense, vectorized over candidate points P (class k, m copies each)
        mu_hat = (cnt[k] * mu[k] + m * P) / (cnt[k] + m)
        v = mu_hat - mu[1 - k]
        z = P - mu_hat
        return (np.linalg.norm(z, axis=1) <= R[k]) & (np.abs(np.sum(z * v, 1)) <= T[k] * np.linalg.norm(v, axis=1))

    for (w, b), m in (((np.array([1.2, -0.4]), 0.3), 12.0), ((np.array([-0.3, 0.9]), -0.2), 4.0)):
        x, k, h = S.worst_point_data_dependent(jnp.asarray(w), b, region, m, grid=1024)
        assert region.keeps(x, int(k), m)
        assert float(h) == pytest.approx(1 - (2 * int(k) - 1) * (float(np.asarray(x) @ w) + b), abs=1e-12)
        best = max(np.max(1 - (2 * c - 1) * (g[kept(g, c, m)] @ w + b)) for c in (0, 1))
        assert best - 5e-3 <= float(h) <= best + 2e-2      # the grids' spacings
    eps = 0.3
    m = int(round(eps * len(y)))
    cert = S.certify_data_dependent(X, y, eps, S.CertifyConfig(rho=RHO, eta=0.1, steps=60), grid=1024)
    ub = float(cert.upper_bound)
    assert ub >= float(S.certify(X, y, 1e-9, None, S.CertifyConfig(rho=RHO, steps=60)).upper_bound) - 1e-6
    for t in (0, 59):
        xp, yp = np.asarray(cert.X_iterates[t]), int(cert.y_iterates[t])
        assert region.keeps(xp, yp, m)
        Xa, ya = np.concatenate([X, np.repeat(xp[None], m, 0)]), np.concatenate([y, np.full(m, yp)])
        assert constrained_hinge_min(Xa, ya, RHO, len(y)) <= ub + 1e-3
    with pytest.raises(ValueError, match="grid"):
        S.certify_data_dependent(X, y, eps, grid=1)
