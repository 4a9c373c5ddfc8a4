"""Jagielski et al. 2018 attacks: hypergradients vs finite differences, OptP vs clean/StatP, feasibility."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from poisoning.attacks import jagielski2018 as J


def _problem(n=40, n_val=30, d=4, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=d)

    def draw(k):
        X = rng.uniform(size=(k, d))
        return X, np.clip(0.3 * X @ w + 0.4 + 0.05 * rng.normal(size=k), 0.0, 1.0)

    return (*draw(n), *draw(n_val))


@pytest.mark.parametrize("victim", [J.Victim("ridge"), J.Victim("lasso", reg=1e-3)], ids=str)
def test_hypergradient_matches_central_differences(victim):
    X, y, Xv, yv = _problem()
    W = jax.jit(J.attacker_objective(victim, X, y, Xv, yv))
    Xp, yp = J.init_poison(X, y, 3, "inverse", seed=1)
    Xp = jnp.asarray(0.1 + 0.8 * Xp)  # interior point
    yp = jnp.asarray(yp)
    gx, gy = jax.jit(jax.grad(W, argnums=(0, 1)))(Xp, yp)
    h = 1e-6
    for i, j in [(0, 0), (1, 2), (2, 3)]:
        E = jnp.zeros_like(Xp).at[i, j].set(h)
        fd = (W(Xp + E, yp) - W(Xp - E, yp)) / (2 * h)
        np.testing.assert_allclose(gx[i, j], fd, rtol=1e-5, atol=1e-9)
    for i in range(3):
        e = jnp.zeros_like(yp).at[i].set(h)
        fd = (W(Xp, yp + e) - W(Xp, yp - e)) / (2 * h)
        np.testing.assert_allclose(gy[i], fd, rtol=1e-5, atol=1e-9)


def test_lasso_fit_matches_coordinate_optimum():
    X, y, _, _ = _problem()
    v = J.Victim("lasso", reg=1e-2)
    p = v.fit(jnp.asarray(X), jnp.asarray(y))
    # KKT of (1/2n)||Xw+b-y||^2 + reg ||w||_1
    r = X @ np.asarray(p["w"]) + float(p["b"]) - y
    g = X.T @ r / len(y)
    w = np.asarray(p["w"])
    assert abs(r.mean()) < 1e-9
    nz = w != 0
    np.testing.assert_allclose(g[nz], -1e-2 * np.sign(w[nz]), atol=1e-8)
    assert np.all(np.abs(g[~nz]) <= 1e-2 + 1e-8)


def test_optp_beats_clean_and_statp_and_stays_feasible():
    X, y, Xv, yv = _problem(n=50, n_val=40)
    v = J.Victim("ridge")
    m = J.n_poison_for_rate(0.1, len(y))
    assert m == 6
    clean = float(J.mse(J.poisoned_fit(v, X, y), Xv, yv))
    res = J.optp(X, y, Xv, yv, m, v, init="inverse", steps=30)
    assert res.X_poison.shape == (m, X.shape[1]) and res.y_poison.shape == (m,)
    for a in (res.X_poison, res.y_poison):
        assert a.min() >= 0.0 and a.max() <= 1.0
    assert res.objective >= res.objective_start
    optp_val = float(J.mse(J.poisoned_fit(v, X, y, res.X_poison, res.y_poison), Xv, yv))
    np.testing.assert_allclose(optp_val, res.objective, rtol=1e-8)
    Xs, ys = J.statp(X, y, m, v, seed=0)
    assert set(np.unique(Xs)) <= {0.0, 1.0} and set(np.unique(ys)) <= {0.0, 1.0}
    statp_val = float(J.mse(J.poisoned_fit(v, X, y, Xs, ys), Xv, yv))
    assert optp_val > 1.5 * clean
    assert optp_val >= statp_val

    # BGD keeps the responses fixed at the (inverse-flipped) start
    rb = J.bgd(X, y, Xv, yv, m, v, objective="val", steps=10)  # same shapes: reuses the compiled loop
    _, y0 = J.init_poison(X, y, m, "inverse", seed=0)
    np.testing.assert_allclose(rb.y_poison, y0)
    assert rb.X_poison.min() >= 0.0 and rb.X_poison.max() <= 1.0


def test_init_poison_and_trim():
    X, y, _, _ = _problem()
    Xb, yb = J.init_poison(X, y, 5, "boundary", seed=0)
    assert set(np.unique(yb)) <= {0.0, 1.0}
    Xi, yi = J.init_poison(X, y, 5, "inverse", seed=0)
    np.testing.assert_allclose(Xb, Xi)
    assert np.all(np.abs(yb - yi) <= 0.5 + 1e-12)
    # TRIM drops gross outliers
    Xp, yp = X[:6].copy(), 1.0 - np.round(y[:6])
    Xa, ya = np.vstack([X, Xp]), np.concatenate([y, yp])
    _, keep, _ = J.trim(Xa, ya, len(y), J.Victim("ridge"))
    assert np.sum(keep >= len(y)) <= 1
