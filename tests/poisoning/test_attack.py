"""The attack driver: hypergradients of every victim through it vs finite differences, one objective
against three victims, modes, results, and bad input naming the argument."""

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bilevel import CG, Implicit
from bilevel.solvers import LBFGS
from bilevel.stackelberg import Backtrack, fixed_step
from poisoning import victims
from poisoning.attack import PoisoningAttack, PoisonPoints, attack_value, hypergradient, run
from poisoning.feasible import Box, Product
from poisoning.objectives import error_generic


def _blobs(n=24, d=3, seed=0, k=2):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    centers = 0.5 + 0.15 * np.eye(k, d)[y] - 0.15 * (y == 0)[:, None]
    X = centers + 0.12 * rng.standard_normal((n, d))
    return X, y


@pytest.fixture(scope="module")
def problem():
    X, y = _blobs(30, 3, 0)
    Xv, yv = _blobs(40, 3, 1)
    return X, y, X[:2].copy() + 0.01, 1 - y[:2], Xv, yv


def _central_fd(f, x, eps):
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = eps
        g[idx] = (f(x + e) - f(x - e)) / (2 * eps)
    return g


class TinyNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2)(jnp.tanh(nn.Dense(4)(x)))


SMOOTH = {
    "logistic": lambda: victims.logistic(1e-2),
    "adaline": lambda: victims.adaline(1e-2),
    "softmax": lambda: victims.softmax(2, 1e-2, solver=LBFGS(tol=1e-12, maxiter=2000)),
    "smooth_svm": lambda: victims.smooth_svm(0.05, 0.1, tol=1e-12),
    "mlp": lambda: victims.mlp(2, 3, 1e-2, solver=LBFGS(tol=1e-12, maxiter=3000), method=Implicit(linear_solver=CG(tol=1e-13))),
    "network_unrolled": lambda: victims.network(TinyNet(), 2, steps=15, learning_rate=0.5),
    "network_backgradient": lambda: victims.network(TinyNet(), 2, steps=15, learning_rate=0.3, momentum=0.9,
                                                    reverse="backgradient"),
}


@pytest.mark.parametrize("name", list(SMOOTH))
def test_hypergradient_through_the_driver_matches_finite_differences(problem, name):
    X, y, Xp, yp, Xv, yv = problem
    att = PoisoningAttack(SMOOTH[name](), error_generic)
    hg = jax.jit(lambda xp: hypergradient(att, X, y, PoisonPoints(xp, yp), (Xv, yv)))  # one compilation
    _, g, _ = hg(Xp)
    fd = _central_fd(lambda xp: float(hg(xp)[0]), Xp, 1e-5)
    assert np.max(np.abs(fd)) > 1e-6
    rtol = 2e-3 if name == "network_backgradient" else 1e-5  # exact reversal of a fixed-point trajectory
    np.testing.assert_allclose(np.asarray(g), fd, rtol=rtol, atol=1e-8 if rtol < 1e-4 else 1e-6)


def test_hypergradient_svm_through_the_kkt_map(problem):
    """Exact SVM dual: a small perturbation keeps the active set, where the KKT map is differentiable."""
    X, y, Xp, yp, Xv, yv = problem
    att = PoisoningAttack(victims.svm(1.0), error_generic)
    hg = jax.jit(lambda xp: hypergradient(att, X, y, PoisonPoints(xp, yp), (Xv, yv)))
    _, g, p = hg(Xp)
    fd = _central_fd(lambda xp: float(hg(xp)[0]), Xp, 1e-6)
    active = lambda xp: np.asarray(hg(xp)[2].margin_sv)
    assert np.array_equal(active(Xp + 1e-6), active(Xp))
    np.testing.assert_allclose(np.asarray(g), fd, rtol=1e-4, atol=1e-7)
    # the one-vs-rest ensemble (3 classes)
    X3, y3 = _blobs(30, 3, 2, k=3)
    att3 = PoisoningAttack(victims.ovr_svm(3, 1.0), error_generic)
    hg3 = jax.jit(lambda xp: hypergradient(att3, X3, y3, PoisonPoints(xp, (y3[:1] + 1) % 3), (X3, y3)))
    _, g3, _ = hg3(X3[:1] + 0.01)
    fd3 = _central_fd(lambda xp: float(hg3(xp)[0]), X3[:1] + 0.01, 1e-6)
    np.testing.assert_allclose(np.asarray(g3), fd3, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("victim", ["ridge", "elastic_net"])
def test_hypergradient_in_features_and_real_labels(victim):
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(25, 3))
    y = np.clip(X @ np.array([0.5, -0.3, 0.2]) + 0.3 + 0.05 * rng.standard_normal(25), 0, 1)
    v = victims.ridge(1e-2) if victim == "ridge" else victims.elastic_net(1e-3, 0.5, tol=1e-14)
    att = PoisoningAttack(v, error_generic, Product({"X": Box(0, 1), "y": Box(0, 1)}))
    poison = PoisonPoints(X[:2] * 0.9 + 0.05, 1.0 - y[:2], optimize_labels=True)

    def f(flat):
        lead = {"X": flat[:6].reshape(2, 3), "y": flat[6:]}
        return attack_value(att, X, y, poison.with_leader(lead), (X, y))[0]

    f = jax.jit(f)
    x0 = np.concatenate([np.asarray(poison.X).ravel(), np.asarray(poison.y)])
    g = np.asarray(jax.grad(f)(x0))
    fd = _central_fd(lambda z: float(f(z)), x0, 1e-6)
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-9)


# one objective, three victims: the README's example, run as written (with its assertions) by
# tests/test_readme.py::test_readme_attack_and_stochastic_examples_run_as_written
# ----------------------------------------------------------------------------------------------------
# modes and results
# ----------------------------------------------------------------------------------------------------
def test_modes_and_result_fields(problem):
    X, y, Xp, yp, Xv, yv = problem
    att = PoisoningAttack(victims.logistic(1e-2), error_generic, Box(0, 1), step=fixed_step(0.3))
    seq = run(att, X, y, PoisonPoints(Xp, yp), (Xv, yv), steps=6, mode="sequential")
    assert len(seq.history) == 2 and len(seq.block_params) == 2 and seq.n_steps.shape == (2,)
    assert np.all(np.diff(seq.seconds) >= 0) and seq.compile_seconds > 0
    assert seq.objective == pytest.approx(seq.block_objective[-1])
    # the first block trains with one poison point: its params equal a plain fit with that point
    p1 = victims.logistic(1e-2).fit(np.concatenate([X, seq.poison.X[:1]]), np.concatenate([y, yp[:1]]))
    np.testing.assert_allclose(np.asarray(seq.block_params[0]["w"]), np.asarray(p1["w"]), atol=1e-6)
    joint = run(att, X, y, PoisonPoints(Xp, yp), (Xv, yv), steps=6, mode="joint")
    coord = run(att, X, y, PoisonPoints(Xp, yp), (Xv, yv), steps=6, mode="coordinate")
    for r in (seq, joint, coord):
        assert r.objective >= r.objective_clean and r.poison.X.shape == Xp.shape
        assert float(attack_value(att, X, y, r.poison, (Xv, yv))[0]) == pytest.approx(r.objective, rel=1e-6)
    # same inputs, same numbers
    again = run(att, X, y, PoisonPoints(Xp, yp), (Xv, yv), steps=6, mode="sequential")
    np.testing.assert_array_equal(again.poison.X, seq.poison.X)


@pytest.mark.parametrize("victim", ["svm", "logistic"])
def test_sequential_one_point_blocks_train_on_the_placed_points(problem, victim):
    """Sequential mode poses block k as a one-point problem (the k placed points join the victim's cached
    training set, row k is appended): after every block, the objective it reports is the plain
    ``m``-row problem's value with the first k + 1 points present (counts included), and the reported
    victim is the plain fit."""
    X, y, _, _, Xv, yv = problem
    Xp = np.clip(X[:3] + 0.02, 0, 1)
    yp = 1 - y[:3]
    counts = np.array([2.0, 1.0, 3.0])
    v = victims.svm(1.0) if victim == "svm" else victims.logistic(1e-2)
    att = PoisoningAttack(v, error_generic, Box(0, 1), step=fixed_step(0.1))
    res = run(att, X, y, PoisonPoints(Xp, yp, counts), (Xv, yv), steps=5, mode="sequential")
    assert res.n_steps.min() >= 1
    # the plain problem with the first k + 1 points present = all points, the others with count 0
    plain = jax.jit(lambda c: attack_value(att, X, y, PoisonPoints(res.poison.X, yp, c), (Xv, yv)))
    for k in range(3):
        value, params = plain(counts * (np.arange(3) <= k))
        np.testing.assert_allclose(res.block_objective[k], float(value), rtol=1e-7, atol=1e-10)
        w = res.block_params[k].w if victim == "svm" else res.block_params[k]["w"]
        w_ref = params.w if victim == "svm" else params["w"]
        np.testing.assert_allclose(np.asarray(w), np.asarray(w_ref), atol=1e-6)


def test_backtrack_rule_and_stall_warning(problem):
    X, y, Xp, yp, Xv, yv = problem
    att = PoisoningAttack(victims.logistic(1e-2), error_generic, Box(0, 1), gain_tol=None,
                          step=Backtrack(init_step=1.0, min_step=1e-3))
    res = run(att, X, y, PoisonPoints(Xp, yp), (Xv, yv), steps=30)
    assert res.objective >= res.history[0][0] and not res.stalled.any()
    # a step that can only make things worse (descent on the objective) stalls: said in the result and a warning
    worse = PoisoningAttack(victims.logistic(1e-2), error_generic, Box(0, 1), step=optax.sgd(-1.0))
    with pytest.warns(RuntimeWarning, match="stalled"):
        bad = run(worse, X, y, PoisonPoints(Xp, yp), (Xv, yv), steps=5)
    assert bad.stalled.all() and bad.objective == pytest.approx(bad.history[0][0])


# ----------------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------------
def test_bad_input_names_the_argument(problem):
    X, y, Xp, yp, Xv, yv = problem
    att = PoisoningAttack(victims.svm(1.0), error_generic)
    ok = PoisonPoints(Xp, yp)
    with pytest.raises(ValueError, match="y_train.*not -1/\\+1"):
        run(att, X, 2 * y - 1, ok, (Xv, yv), steps=2)
    with pytest.raises(ValueError, match="y_train"):
        run(att, X, np.where(y == 1, 2, 0), ok, (Xv, yv), steps=2)
    with pytest.raises(ValueError, match="y_train"):
        run(att, X, y + 0.5, ok, (Xv, yv), steps=2)
    with pytest.raises(ValueError, match="poison.y"):
        run(att, X, y, PoisonPoints(Xp, np.array([0, 3])), (Xv, yv), steps=2)
    with pytest.raises(ValueError, match="X_train"):
        run(att, np.where(np.eye(*X.shape) > 0, np.nan, X), y, ok, (Xv, yv), steps=2)
    with pytest.raises(ValueError, match="poison.X"):
        run(att, X, y, PoisonPoints(np.full_like(Xp, np.inf), yp), (Xv, yv), steps=2)
    with pytest.raises(ValueError, match="poison.X"):
        run(att, X, y, PoisonPoints(Xp[:, :2], yp), (Xv, yv), steps=2)
    with pytest.raises(ValueError, match="target\\[0\\]"):
        run(att, X, y, ok, (np.full_like(Xv, np.nan), yv), steps=2)
    with pytest.raises(ValueError, match="steps"):
        run(att, X, y, ok, (Xv, yv), steps=0)
    with pytest.raises(ValueError, match="mode"):
        run(att, X, y, ok, (Xv, yv), mode="greedy")
    with pytest.raises(ValueError, match="empty"):
        run(att, X, y, PoisonPoints(Xp[:0], yp[:0]), (Xv, yv))
    with pytest.raises(ValueError, match="lo"):
        Box(np.nan, 1.0)
    with pytest.raises(ValueError, match="victim"):
        PoisoningAttack("svm", error_generic)
    with pytest.raises(ValueError, match="optimize_labels"):
        run(att, X, y, PoisonPoints(Xp, yp, optimize_labels=True), (Xv, yv))


def test_victim_labels_checked_under_jit(problem):
    X, y = problem[0], problem[1]
    v = victims.logistic(1e-2)
    fit = jax.jit(lambda labels: v.fit(X, labels)["w"])
    np.testing.assert_allclose(np.asarray(fit(jnp.asarray(y))), np.asarray(v.fit(X, y)["w"]), atol=1e-10)
    with pytest.raises(Exception, match="argument 'y' must hold integer class labels"):
        jax.block_until_ready(fit(jnp.asarray(2 * y - 1)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        v.fit(X, y.astype(float))  # integral floats are fine
