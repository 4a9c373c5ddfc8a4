"""The poisoning-attack abstraction: hypergradients vs finite differences, feasible sets, run modes."""

import re

import jax
import numpy as np
import pytest

import poisoning.attack as attack_mod
from poisoning.attack import (
    AttackResult,
    PoisoningAttack,
    hypergradient,
    linear_svm_learner,
    logistic_learner,
    ridge_learner,
    run,
    run_stackelberg,
)
from poisoning.feasible import Box, Intersection, L2Ball, LinfBall
from poisoning.objectives import classification_error, error_generic, error_specific


def _blobs(n=24, d=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    X = 0.5 + 0.15 * y[:, None] * np.ones(d) + 0.12 * rng.standard_normal((n, d))
    return X, y


@pytest.fixture(scope="module")
def problem():
    X, y = _blobs(30, 3, 0)
    Xv, yv = _blobs(40, 3, 1)
    Xp = X[:2].copy() + 0.01
    yp = -y[:2]
    return X, y, Xp, yp, Xv, yv


def _central_fd(f, x, eps):
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = eps
        g[idx] = (f(x + e) - f(x - e)) / (2 * eps)
    return g


@pytest.mark.parametrize("learner", [logistic_learner(1e-2), ridge_learner(1e-1)], ids=["logistic", "ridge"])
def test_hypergradient_matches_finite_differences_smooth(problem, learner):
    X, y, Xp, yp, Xv, yv = problem
    att = PoisoningAttack(learner)
    hg = jax.jit(lambda xp: hypergradient(att, xp, X, y, yp, Xv, yv))  # one compilation for both
    _, g, _ = hg(Xp)
    fd = _central_fd(lambda xp: float(hg(xp)[0]), Xp, 1e-5)
    np.testing.assert_allclose(np.asarray(g), fd, rtol=1e-5, atol=1e-8)


def test_hypergradient_matches_finite_differences_svm(problem):
    """Through the SVM dual's KKT map; a small perturbation keeps the active set (checked)."""
    X, y, Xp, yp, Xv, yv = problem
    att = PoisoningAttack(linear_svm_learner(1.0), objective=error_generic)
    hg = jax.jit(lambda xp: hypergradient(att, xp, X, y, yp, Xv, yv))  # one compilation for both
    _, g, params = hg(Xp)
    eps = 1e-6

    def f(xp):
        val, _, p = hg(xp)
        assert np.array_equal(np.asarray(p.margin_sv), np.asarray(params.margin_sv))
        assert np.array_equal(np.asarray(p.bound_sv), np.asarray(params.bound_sv))
        return float(val)

    fd = _central_fd(f, Xp, eps)
    assert np.abs(fd).max() > 1e-4  # the poison points influence the victim
    np.testing.assert_allclose(np.asarray(g), fd, rtol=1e-4, atol=1e-7)


def test_feasible_sets_project_and_contain():
    rng = np.random.default_rng(0)
    x = 2 * rng.standard_normal((5, 4))
    box = Box(0.0, 1.0)
    px = box.project(x)
    assert box.contains(px) and not box.contains(x)
    np.testing.assert_allclose(px, np.clip(x, 0, 1))
    c = np.full(4, 0.5)
    ball = L2Ball(c, 0.3)
    pb = np.asarray(ball.project(x))
    assert np.all(np.linalg.norm(pb - c, axis=1) <= 0.3 + 1e-12) and ball.contains(pb)
    inside = c + 0.01
    np.testing.assert_allclose(ball.project(inside), inside)
    linf = LinfBall(c, 0.2)
    assert np.all(np.abs(np.asarray(linf.project(x)) - c) <= 0.2 + 1e-12)
    both = Intersection((L2Ball(np.zeros(4), 1.0), Box(0.2, 1.0)), iters=200)
    pi = np.asarray(both.project(x))
    assert Box(0.2, 1.0).contains(pi) and np.all(np.linalg.norm(pi, axis=1) <= 1.0 + 1e-6)
    assert isinstance(Box() & L2Ball(0.0, 1.0), Intersection)
    with pytest.raises(ValueError):
        Box(1.0, 0.0)


def test_objectives_signs():
    learner = ridge_learner(1e-1)
    X, y = _blobs(20, 2, 3)
    p = learner.fit(X, y)
    assert float(error_generic(p, X, y, learner)) > 0
    assert float(error_specific(p, X, -y, learner)) < -float(error_generic(p, X, y, learner))
    assert 0.0 <= float(classification_error(p, X, y, learner)) <= 1.0
    with pytest.raises(ValueError):
        error_generic(p, X, y, learner, reduction="median")


@pytest.mark.parametrize("mode", ["sequential", "joint"])
@pytest.mark.parametrize("rule", ["fixed", "backtrack"])
def test_run_modes_feasible_and_fields(problem, mode, rule):
    X, y, Xp, yp, Xv, yv = problem
    att = PoisoningAttack(ridge_learner(1e-1), feasible=Box(0.0, 1.0), step_size=0.1, step_rule=rule)
    res = run(att, X, y, Xp, yp, Xv, yv, steps=15, mode=mode)
    assert isinstance(res, AttackResult) and res.mode == mode
    assert res.X_poison.shape == Xp.shape and np.array_equal(res.y_poison, yp)
    assert Box(0.0, 1.0).contains(res.X_poison)
    assert len(res.block_history) == (2 if mode == "sequential" else 1)
    assert res.objective_history.ndim == 1 and np.all(np.isfinite(res.objective_history))
    assert res.objective_poisoned > res.objective_clean
    # the returned points are the best seen: never worse than the start of the last block
    assert res.objective_poisoned >= res.block_history[-1][0] - 1e-12
    assert res.compile_seconds >= 0 and np.all(np.diff(res.seconds) >= 0)
    # params_poisoned is the learner trained on the poisoned set
    direct = att.learner.fit(np.concatenate([X, res.X_poison]), np.concatenate([y, yp]))
    np.testing.assert_allclose(res.params_poisoned["w"], direct["w"], rtol=1e-6, atol=1e-9)


def test_run_l2_ball_and_stackelberg(problem):
    X, y, Xp, yp, Xv, yv = problem
    ball = L2Ball(Xp, 0.2)  # one ball around each starting point (unhashable center: uncached path)
    att = PoisoningAttack(ridge_learner(1e-1), feasible=ball, step_size=0.05)
    res = run(att, X, y, Xp, yp, Xv, yv, steps=10, mode="joint")
    assert np.all(np.linalg.norm(res.X_poison - Xp, axis=1) <= 0.2 + 1e-9)
    assert res.objective_poisoned > res.objective_clean
    sres = run_stackelberg(att, X, y, Xp, yp, Xv, yv, steps=5)
    assert np.all(np.linalg.norm(np.asarray(sres.leader) - Xp, axis=1) <= 0.2 + 1e-9)
    hist = np.asarray(sres.history.objective)
    assert hist[-1] >= hist[0]


def test_module_docstring_example_runs(capsys):
    code = re.search(r"Example.*?::\n\n(.*?)\n\n[A-Z]", attack_mod.__doc__, re.S).group(1)
    exec(compile("\n".join(line[4:] for line in code.splitlines()), "attack_example", "exec"), {})
    first, last = (float(v) for v in capsys.readouterr().out.split("->"))
    assert last > first
