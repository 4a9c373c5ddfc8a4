"""Jagielski et al. 2018 through the driver: hypergradients vs finite differences, the line search vs the
paper's loop (a reference written out here), OptP vs clean/StatP, BGD, TRIM."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from poisoning import victims
from poisoning.attack import PoisonPoints, hypergradient
from poisoning.attacks import jagielski2018 as J
from poisoning.defenses.evaluate import fit_poisoned


def _problem(n=30, n_val=20, d=3, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=d)

    def draw(k):
        X = rng.uniform(size=(k, d))
        return X, np.clip(0.3 * X @ w + 0.4 + 0.05 * rng.normal(size=k), 0.0, 1.0)

    return (*draw(n), *draw(n_val))


@pytest.mark.parametrize("victim", [victims.ridge(1e-2), victims.lasso(1e-3)], ids=lambda v: v.name)
def test_hypergradient_matches_central_differences(victim):
    """d W / d (X_p, y_p) through the driver (``optimize_labels``: the leader is {"X", "y"}), float64."""
    X, y, Xv, yv = _problem()
    attack = J.jagielski_attack(victim)
    start = J.init_poison(X, y, 3, "inverse", seed=1)
    leader = {"X": jnp.asarray(0.1 + 0.8 * start.X), "y": jnp.asarray(start.y)}  # interior point
    poison = PoisonPoints(start.X, start.y, optimize_labels=True)
    hg = jax.jit(lambda L: hypergradient(attack, X, y, poison.with_leader(L), (Xv, yv))[:2])
    _, g = hg(leader)
    h = 1e-6

    def fd(key, idx):
        e = jnp.zeros_like(leader[key]).at[idx].set(h)
        plus, minus = dict(leader, **{key: leader[key] + e}), dict(leader, **{key: leader[key] - e})
        return (float(hg(plus)[0]) - float(hg(minus)[0])) / (2 * h)

    for idx in [(0, 0), (1, 2), (2, 1)]:
        np.testing.assert_allclose(g["X"][idx], fd("X", idx), rtol=1e-5, atol=1e-9)
    for i in range(3):
        np.testing.assert_allclose(g["y"][i], fd("y", i), rtol=1e-5, atol=1e-9)
    assert np.max(np.abs(np.asarray(g["y"]))) > 1e-4


def _reference_ascent(victim, X, y, Xe, ye, X0, y0, *, eta, beta, sigma, eps, steps, max_ls, optimize_y=True):
    """The module's loop before the driver: unit steps per point in (x_c, y_c), shrink on rejection, grow
    by 1/sigma on acceptance, stop on a rejected step or a relative gain below eps."""

    def W(Xp, yp):
        p = victim.fit(jnp.concatenate([X, Xp]), jnp.concatenate([y, yp]))
        return jnp.mean(jnp.square(victim.decision(p, Xe) - ye))

    W_jit, vg = jax.jit(W), jax.jit(jax.value_and_grad(W, argnums=(0, 1)))
    Xp, yp = np.clip(X0, 0, 1), np.clip(y0, 0, 1)
    val, t, hist = float(W_jit(Xp, yp)), eta, []
    hist.append(val)
    for _ in range(steps):
        _, (gx, gy) = vg(Xp, yp)
        gy = gy if optimize_y else jnp.zeros_like(gy)
        nrm = jnp.sqrt(jnp.sum(gx**2, axis=1) + gy**2)
        ux, uy = gx / nrm[:, None], gy / nrm
        for _ in range(max_ls):
            Xc, yc = np.clip(Xp + t * ux, 0, 1), np.clip(yp + t * uy, 0, 1)
            wc = float(W_jit(Xc, yc))
            if wc > val:
                break
            t = beta * t
        else:
            break  # rejected: stop
        gain, old = wc - val, val
        Xp, yp, val, t = Xc, yc, wc, t * (1.0 / sigma)
        hist.append(val)
        if gain < eps * abs(old):
            break
    return Xp, yp, np.asarray(hist)


def test_optp_and_bgd_reproduce_the_line_search_loop():
    """The driver's LineSearch (rows normalization over (x_c, y_c), max_grow=0, grow_next=1/sigma, gain_rtol)
    is the paper's loop: same iterates, same stop (a rejected step for OptP here, a small gain for BGD)."""
    X, y, Xv, yv = _problem()
    v = victims.ridge(1e-2)
    m = J.n_poison_for_rate(0.1, len(y))
    assert m == 3
    kw = dict(eta=0.3, beta=0.5, sigma=0.25, eps=1e-3, steps=12, max_ls=2)
    res = J.optp(X, y, Xv, yv, m, v, init="inverse", **kw)
    start = J.init_poison(X, y, m, "inverse", seed=0)
    Xr, yr, hist = _reference_ascent(v, X, y, Xv, yv, start.X, start.y, **kw)
    assert 2 < len(hist) < kw["steps"] + 1  # stopped early
    np.testing.assert_allclose(res.history[0], hist, rtol=1e-12)
    np.testing.assert_allclose(res.poison.X, Xr, atol=1e-12)
    np.testing.assert_allclose(res.poison.y, yr, atol=1e-12)
    for a in (res.poison.X, res.poison.y):
        assert a.min() >= 0.0 and a.max() <= 1.0
    optp_val = float(J.mse(v, fit_poisoned(v, X, y, res.poison), Xv, yv))
    np.testing.assert_allclose(optp_val, res.objective, rtol=1e-10)
    assert optp_val > 1.5 * res.objective_clean
    statp = J.statp(X, y, m, v, seed=0)
    assert set(np.unique(statp.X)) <= {0.0, 1.0} and set(np.unique(statp.y)) <= {0.0, 1.0}
    assert optp_val >= float(J.mse(v, fit_poisoned(v, X, y, statp), Xv, yv))

    # BGD: the responses stay at the (inverse-flipped) start; training objective
    kw = dict(kw, sigma=0.5)
    rb = J.bgd(X, y, Xv, yv, m, v, **kw)
    Xr, _, hist = _reference_ascent(v, X, y, X, y, start.X, start.y, optimize_y=False, **kw)
    assert 2 < len(hist) < kw["steps"] + 1
    np.testing.assert_allclose(rb.poison.y, start.y)
    np.testing.assert_allclose(rb.history[0], hist, rtol=1e-12)
    np.testing.assert_allclose(rb.poison.X, Xr, atol=1e-12)


def test_init_poison_trim_and_bad_arguments():
    X, y, Xv, yv = _problem()
    b = J.init_poison(X, y, 5, "boundary", seed=0)
    i = J.init_poison(X, y, 5, "inverse", seed=0)
    assert set(np.unique(b.y)) <= {0.0, 1.0}
    np.testing.assert_allclose(b.X, i.X)
    assert np.all(np.abs(b.y - i.y) <= 0.5 + 1e-12)
    # TRIM drops gross outliers
    Xa, ya = np.vstack([X, X[:4]]), np.concatenate([y, 1.0 - np.round(y[:4])])
    _, keep, _ = J.trim(Xa, ya, len(y), victims.ridge())
    assert np.sum(keep >= len(y)) <= 1
    with pytest.raises(ValueError, match="regression"):
        J.jagielski_attack(victims.logistic())
    with pytest.raises(ValueError, match="objective"):
        J.optp(X, y, Xv, yv, 3, objective="test")
    with pytest.raises(ValueError, match="n_poison"):
        J.optp(X, y, Xv, yv, 0)
    with pytest.raises(ValueError, match="kind"):
        J.init_poison(X, y, 3, "random")
    with pytest.raises(ValueError, match="n_keep"):
        J.trim(Xa, ya, 0)
