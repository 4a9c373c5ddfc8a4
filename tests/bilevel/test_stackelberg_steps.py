"""Step rules, masks, stopping rules, best-iterate selection and response followers of the leader loop.

Each rule is checked against an independent Python loop written from its definition (same iterates
to rounding), on a problem with a closed-form best response: w*(x) = x / (1 + MU).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bilevel.solvers import Newton
from bilevel.stackelberg import (
    ArgminFollower,
    Backtrack,
    Greedy,
    LineSearch,
    ResponseFollower,
    StackelbergConfig,
    StackelbergSolver,
    fixed_step,
    normalize,
    solve_stackelberg,
)

MU = 0.5
T = jnp.asarray([[0.3, -0.2, 0.8], [1.5, 0.1, -0.4]])


def follower_loss(w, x):
    return 0.5 * jnp.sum((w - x) ** 2) + 0.5 * MU * jnp.sum(w**2)


def closed_form(x, warm):
    return x / (1.0 + MU)


def leader(x, w):
    return jnp.sum((w - T) ** 2)


def F(x):  # the leader objective with the exact best response
    return float(jnp.sum((x / (1 + MU) - T) ** 2))


def gradF(x):
    return np.asarray(2.0 * (x / (1 + MU) - T) / (1 + MU))


ARGMIN = ArgminFollower(follower_loss, Newton(tol=1e-12))
CLOSED = ResponseFollower(closed_form, residual_fn=lambda w, x: jnp.linalg.norm(w * (1 + MU) - x))
X0 = jnp.asarray([[2.0, -1.0, 0.5], [0.0, 0.3, 0.2]])


def test_response_follower_matches_argmin_follower():
    kw = dict(leader_optimizer=optax.sgd(0.5), steps=25)
    a = solve_stackelberg(leader, ARGMIN, X0, jnp.zeros_like(X0), **kw)
    b = solve_stackelberg(leader, CLOSED, X0, jnp.zeros_like(X0), **kw)
    np.testing.assert_allclose(a.leader, b.leader, atol=1e-9)
    np.testing.assert_allclose(a.history.objective, b.history.objective, rtol=1e-9)
    assert np.all(np.asarray(b.history.follower_residual) <= 1e-12)
    assert int(a.n_iterates) == 26


@pytest.mark.parametrize("patience", [1, 2])
def test_fixed_step_with_gain_rule_matches_reference_loop(patience):
    t, tol, steps = 0.3, 1e-3, 40
    res = solve_stackelberg(leader, CLOSED, X0, jnp.zeros_like(X0), leader_optimizer=fixed_step(t),
                            gain_tol=tol, patience=patience, steps=steps, return_best=True)
    # reference: evaluate, stop when the gain is below tol `patience` times in a row, else unit step
    x, prev, bad, vals = np.asarray(X0), np.inf, 0, []
    for k in range(steps + 1):
        v = F(x)
        vals.append(v)
        bad = bad + 1 if (prev - v) < tol else 0
        if bad >= patience or k == steps:
            break
        g = gradF(x)
        x = x - t * g / np.linalg.norm(g)
        prev = v
    n = len(vals)
    assert int(res.n_iterates) == n
    np.testing.assert_allclose(np.asarray(res.history.objective)[:n], vals, rtol=1e-10)
    assert not np.any(np.asarray(res.history.active)[n:])
    # the fixed-length steps oscillate around the optimum: several iterates tie to rounding
    np.testing.assert_allclose(vals[int(res.best_step)], min(vals), rtol=1e-10)
    np.testing.assert_allclose(float(res.objective), min(vals), rtol=1e-10)


def test_backtrack_matches_reference_loop():
    rule = Backtrack(init_step=2.0, shrink=0.5, min_step=1e-3, tol=1e-9)
    res = solve_stackelberg(leader, CLOSED, X0, jnp.zeros_like(X0), leader_optimizer=rule, steps=200,
                            return_best=True)
    x = np.asarray(X0)
    acc_x, acc_d, acc_v, eta, vals = None, None, np.inf, 2.0, []
    for k in range(201):
        v = F(x)
        vals.append(v)
        gain = acc_v - v
        ok = gain > 0
        if ok:
            g = gradF(x)
            acc_x, acc_d, acc_v = x, -g / np.linalg.norm(g), v
        else:
            eta *= 0.5
        if eta < 1e-3 or (ok and gain < 1e-9):
            break
        x = acc_x + eta * acc_d
    n = len(vals)
    assert 5 < n < 200
    assert int(res.n_iterates) == n
    np.testing.assert_allclose(np.asarray(res.history.objective)[:n], vals, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(float(res.objective), min(vals), rtol=1e-9, atol=1e-14)


def test_mask_freezes_rows_and_skips_their_projection():
    proj = lambda x: optax.projections.projection_box(x, -0.5, 0.5)
    x0 = X0.at[1].set(jnp.asarray([3.0, 3.0, 3.0]))  # frozen row outside the box stays there
    mask = jnp.asarray([True, False])
    res = solve_stackelberg(leader, CLOSED, x0, jnp.zeros_like(x0), leader_optimizer=optax.sgd(0.5),
                            projection=proj, steps=30, mask=mask)
    np.testing.assert_array_equal(res.leader[1], x0[1])
    expected0 = np.clip((1 + MU) * np.asarray(T[0]), -0.5, 0.5)
    np.testing.assert_allclose(res.leader[0], expected0, atol=1e-6)
    # nothing free: one evaluation, no move
    none = solve_stackelberg(leader, CLOSED, x0, jnp.zeros_like(x0), leader_optimizer=optax.sgd(0.5),
                             steps=30, mask=jnp.asarray([False, False]))
    assert int(none.n_iterates) == 1
    np.testing.assert_array_equal(none.leader, x0)


def test_line_search_rows_normalization_and_grow_next():
    ls = LineSearch(init_step=0.05, grow=2.0, shrink=0.5, max_grow=0, max_shrink=10, normalization="rows",
                    grow_next=1 / 0.9)
    res = solve_stackelberg(leader, CLOSED, X0, jnp.zeros_like(X0), leader_optimizer=ls, steps=60,
                            gain_rtol=1e-6)
    x, t, vals = np.asarray(X0), 0.05, []
    for k in range(61):
        v = F(x)
        vals.append(v)
        if k > 0 and (vals[-2] - v) < 1e-6 * abs(vals[-2]):
            break
        if k == 60:
            break
        g = gradF(x)
        u = -g / np.linalg.norm(g, axis=1, keepdims=True)
        for _ in range(10):
            if F(x + t * u) < v:
                x = x + t * u
                t = t / 0.9
                break
            t *= 0.5
        else:
            break
    n = len(vals)
    np.testing.assert_allclose(np.asarray(res.history.objective)[:n], vals, rtol=1e-9, atol=1e-15)
    assert int(res.n_iterates) in (n, n + 1)


def test_greedy_rounds_pick_largest_decrease():
    # leader q in [0, 1]^5, objective sum(c * q) with the follower irrelevant: minimizing picks the most
    # negative c first; three rounds of 2, never a coordinate twice
    c = jnp.asarray([0.5, -2.0, -1.0, -3.0, 0.1])
    f = lambda q, w: jnp.sum(c * q) + 0.0 * jnp.sum(w)
    resp = ResponseFollower(lambda q, warm: jnp.zeros(1))
    res = solve_stackelberg(f, resp, jnp.zeros(5), jnp.zeros(1),
                            leader_optimizer=Greedy(shares=(2, 2), exclude_active=True), steps=10)
    np.testing.assert_array_equal(res.leader, [0.0, 1.0, 1.0, 1.0, 1.0])
    assert int(res.n_iterates) == 3
    # counts: shares above the cycle length give every eligible coordinate share // cycle
    res2 = solve_stackelberg(f, resp, jnp.zeros(5), jnp.zeros(1), leader_optimizer=Greedy(shares=(7,), cycle=3),
                             steps=10)
    np.testing.assert_array_equal(res2.leader, [2.0, 3.0, 2.0, 0.0, 0.0])


def test_select_scores_iterates_for_return_best():
    # a score that is not the objective: the smallest |x[0, 0]| (the iterates move x[0, 0] from 2.0 to 0.45)
    res = solve_stackelberg(leader, CLOSED, X0, jnp.zeros_like(X0), leader_optimizer=optax.sgd(0.5),
                            steps=20, return_best=True, select=lambda x, w: jnp.abs(x[0, 0] - 1.0))
    scores = np.asarray(res.history.score)
    best = int(np.argmin(scores))
    assert 0 < best < 20
    assert int(res.best_step) == best
    assert abs(float(res.leader[0, 0]) - 1.0) == pytest.approx(scores[best], rel=1e-9)


def test_update_protocol_steps_like_run():
    solver = StackelbergSolver(leader, CLOSED, StackelbergConfig(leader_optimizer=optax.sgd(0.5), steps=5))
    state = solver.init(X0, jnp.zeros_like(X0))
    step = jax.jit(solver.update)
    objs = []
    for _ in range(6):
        state, info = step(state)
        objs.append(float(info.objective))
    run = solver.run(X0, jnp.zeros_like(X0))
    np.testing.assert_allclose(objs, np.asarray(run.history.objective), rtol=1e-12)
    assert bool(state.done)


def test_vmap_over_masks_and_leaders():
    masks = jnp.asarray([[True, False], [False, True], [True, True]])
    solver = StackelbergSolver(leader, CLOSED, StackelbergConfig(leader_optimizer=optax.sgd(0.5), steps=20))
    batched = jax.vmap(lambda m: solver.run(X0, jnp.zeros_like(X0), mask=m))(masks)
    for i in range(3):
        single = solver.run(X0, jnp.zeros_like(X0), mask=masks[i])
        np.testing.assert_allclose(batched.leader[i], single.leader, atol=1e-12)


def test_normalize_kinds():
    g = {"a": jnp.asarray([[3.0, 4.0], [0.0, 0.0]]), "b": jnp.asarray([[0.0], [2.0]])}
    for kind, expect_a, expect_b in [
        ("global", np.asarray([[3, 4], [0, 0]]) / np.sqrt(29), np.asarray([[0], [2]]) / np.sqrt(29)),
        ("rows", np.asarray([[0.6, 0.8], [0, 0]]), np.asarray([[0], [1.0]])),
        ("inf", np.asarray([[0.75, 1.0], [0, 0]]), np.asarray([[0], [0.5]])),
    ]:
        u, _ = normalize(kind).update(g, (), None)
        np.testing.assert_allclose(u["a"], expect_a, rtol=1e-6)
        np.testing.assert_allclose(u["b"], expect_b, rtol=1e-6)
    z, _ = normalize("rows").update(jnp.zeros((2, 3)), (), None)
    assert np.all(np.asarray(z) == 0)
    with pytest.raises(ValueError, match="kind"):
        normalize("l1")
    with pytest.raises(ValueError, match="shrink"):
        Backtrack(shrink=1.5)
    with pytest.raises(ValueError, match="step_size"):
        fixed_step(0.0)
