"""Stackelberg (leader/follower) solver: known optima, vmap, coordinate mode, gradient play, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bilevel.problems.ridge import init_params, ridge_closed_form, ridge_loss, ridge_mse
from bilevel.solvers import GradientDescent, Newton
from bilevel.stackelberg import (
    ArgminFollower,
    LineSearch,
    StackelbergConfig,
    StackelbergSolver,
    solve_gradient_play,
    solve_stackelberg,
    solve_stackelberg_batched,
)
from bilevel.unroll import Unrolled

D, N_TR, N_VAL = 6, 20, 60


def _ridge_data(seed):
    rng = np.random.default_rng(seed)
    w_true = rng.normal(size=D)
    X_tr = rng.normal(size=(N_TR, D))
    y_tr = X_tr @ w_true + 1.5 * rng.normal(size=N_TR)
    X_val = rng.normal(size=(N_VAL, D))
    y_val = X_val @ w_true + 1.5 * rng.normal(size=N_VAL)
    return jnp.asarray(X_tr), jnp.asarray(y_tr), jnp.asarray(X_val), jnp.asarray(y_val)


X_TR, Y_TR, X_VAL, Y_VAL = _ridge_data(0)


# Module-level functions: repeated solves with the same functions reuse one compilation.
def val_error(loglam, params, X_val, y_val):
    return ridge_mse(params, X_val, y_val)


def train_loss(params, loglam, X_val, y_val):
    del X_val, y_val  # the follower only sees the training set
    return ridge_loss(params, jnp.exp(loglam), X_TR, Y_TR)


RIDGE_CONFIG = StackelbergConfig(leader_optimizer=LineSearch(init_step=1.0), steps=30)
RIDGE_FOLLOWER = ArgminFollower(train_loss, Newton(tol=1e-9))


def box(lo, hi):
    return lambda x: optax.projections.projection_box(x, lo, hi)


def _grid(X_val, y_val, lo=-8.0, hi=4.0, num=4001):
    grid = np.linspace(lo, hi, num)
    vals = jax.vmap(lambda l: ridge_mse(ridge_closed_form(jnp.exp(l), X_TR, Y_TR), X_val, y_val))(grid)
    i = int(np.argmin(vals))
    return grid, np.asarray(vals), i


def test_ridge_hyperparameter_matches_grid_search():
    grid, vals, i = _grid(X_VAL, Y_VAL)
    assert 0 < i < len(grid) - 1, "the optimum must be interior for this test to mean something"
    res = solve_stackelberg(val_error, RIDGE_FOLLOWER, jnp.asarray(0.0), init_params(D), X_VAL, Y_VAL, config=RIDGE_CONFIG)
    resolution = grid[1] - grid[0]
    assert abs(float(res.leader) - grid[i]) <= resolution
    assert abs(float(res.objective) - vals[i]) <= 1e-6
    assert float(res.objective) <= vals[i] + 1e-9  # the continuous optimum is at least as good as the grid's
    # the follower is the exact ridge solution at the learned leader
    exact = ridge_closed_form(jnp.exp(res.leader), X_TR, Y_TR)
    np.testing.assert_allclose(res.follower["w"], exact["w"], atol=1e-7)
    h = res.history
    assert h.objective.shape == (RIDGE_CONFIG.steps + 1,)
    assert np.all(np.diff(np.asarray(h.objective)[np.asarray(h.active)]) <= 1e-12)  # line search: monotone
    assert np.all(np.asarray(h.follower_residual)[np.asarray(h.active)] <= 1e-9)
    assert np.all(np.asarray(h.block) == -1)

    # an optax leader optimizer reaches the same optimum
    res_adam = solve_stackelberg(
        val_error, RIDGE_FOLLOWER, jnp.asarray(0.0), init_params(D), X_VAL, Y_VAL,
        config=RIDGE_CONFIG, leader_optimizer=optax.adam(0.3), steps=150,
    )
    assert abs(float(res_adam.leader) - grid[i]) <= 5 * resolution
    assert abs(float(res_adam.objective) - vals[i]) <= 1e-6


def test_vmapped_leaders_match_python_loop():
    data = [_ridge_data(s)[2:] for s in range(1, 5)]
    X_vals = jnp.stack([d[0] for d in data])
    y_vals = jnp.stack([d[1] for d in data])
    inits = jnp.asarray([-3.0, 0.0, 1.0, 2.5])
    batched = solve_stackelberg_batched(
        val_error, RIDGE_FOLLOWER, inits, init_params(D), X_vals, y_vals, in_axes=(0, None, (0, 0)),
        config=RIDGE_CONFIG,
    )
    assert batched.leader.shape == (4,)
    assert batched.history.objective.shape == (4, RIDGE_CONFIG.steps + 1)
    for b in range(4):
        single = solve_stackelberg(val_error, RIDGE_FOLLOWER, inits[b], init_params(D), X_vals[b], y_vals[b],
                                   config=RIDGE_CONFIG)
        # identical up to rounding (the line search may accept rounding-level improvements differently)
        np.testing.assert_allclose(batched.leader[b], single.leader, atol=1e-6)
        np.testing.assert_allclose(batched.objective[b], single.objective, rtol=1e-11)
        both = np.asarray(batched.history.active[b]) & np.asarray(single.history.active)
        assert both.sum() >= 5
        np.testing.assert_allclose(np.asarray(batched.history.objective[b])[both],
                                   np.asarray(single.history.objective)[both], rtol=1e-8)
        grid, vals, i = _grid(X_vals[b], y_vals[b])
        assert abs(float(single.objective) - vals[i]) <= 1e-6


# ----------------------------------------------------------------------------------------------------
# coordinate mode on a separable toy problem: w*(X) = X / (1 + mu), leader minimizes ||w* - T||^2 in a box
# ----------------------------------------------------------------------------------------------------
MU = 0.5
TARGETS = jnp.asarray([[0.2, -0.3], [0.9, 0.1], [-0.5, 0.6]])  # (1 + mu) * T leaves the box in two coords


def toy_follower(w, X):
    return 0.5 * jnp.sum((w - X) ** 2) + 0.5 * MU * jnp.sum(w**2)


def toy_leader(X, w):
    return jnp.sum((w - TARGETS) ** 2)


def test_coordinate_mode_reaches_box_constrained_optimum():
    expected = np.clip((1 + MU) * np.asarray(TARGETS), -0.8, 0.8)
    assert np.any(np.abs((1 + MU) * np.asarray(TARGETS)) > 0.8)  # the box is active
    x0 = jnp.asarray([[2.0, 2.0], [0.0, 0.0], [-0.3, 0.1]])  # first block starts infeasible
    config = StackelbergConfig(
        leader_optimizer=optax.sgd(1.0),
        projection=box(-0.8, 0.8),
        mode="coordinate",
        block_steps=5,
        steps=3 * 5 * 4,  # 4 passes over the 3 blocks
    )
    follower = ArgminFollower(toy_follower, Newton(tol=1e-12))
    solver = StackelbergSolver(toy_leader, follower, config)
    res = solver.run(x0, jnp.zeros((3, 2)))
    np.testing.assert_allclose(res.leader, expected, atol=1e-6)
    np.testing.assert_allclose(res.follower, expected / (1 + MU), atol=1e-6)
    assert np.all(np.abs(np.asarray(res.leader)) <= 0.8 + 1e-12)
    np.testing.assert_array_equal(np.asarray(res.history.block)[:15], np.repeat([0, 1, 2], 5))

    # one block at a time: after block_steps steps only block 0 moved (and was projected into the box)
    state = solver.init(x0, jnp.zeros((3, 2)))
    assert np.all(np.abs(np.asarray(state.leader)) <= 0.8)
    step = jax.jit(solver.update)
    for _ in range(5):
        state, info = step(state)
        assert np.all(np.abs(np.asarray(state.leader)) <= 0.8 + 1e-12)
    np.testing.assert_array_equal(state.leader[1:], x0[1:])
    assert not np.allclose(state.leader[0], jnp.clip(x0[0], -0.8, 0.8))

    # the line search in coordinate mode too
    res_ls = solve_stackelberg(toy_leader, follower, x0, jnp.zeros((3, 2)), config=config, leader_optimizer="line_search")
    np.testing.assert_allclose(res_ls.leader, expected, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# two-timescale gradient play
# ----------------------------------------------------------------------------------------------------
def _quadratic_game(seed=0, n=3, m=2):
    rng = np.random.default_rng(seed)
    Q = rng.normal(size=(n, n))
    A = jnp.asarray(Q @ Q.T + n * np.eye(n))  # follower Hessian, SPD
    B = jnp.asarray(rng.normal(size=(n, m)))
    return A, B, jnp.asarray(rng.normal(size=n)), jnp.asarray(rng.normal(size=m)), jnp.asarray(rng.normal(size=n))


A, B, A_LIN, C_LIN, T = _quadratic_game()
C = 1.5 * jnp.eye(2)


def saddle_g(w, x):
    """Strongly convex in w, strongly concave in x: the follower minimizes it, the leader maximizes it."""
    return 0.5 * w @ A @ w + w @ B @ x - 0.5 * x @ C @ x + A_LIN @ w + C_LIN @ x


def saddle_f(x, w):
    return saddle_g(w, x)


def bilevel_g(w, x):
    return 0.5 * w @ A @ w - w @ B @ x


def bilevel_f(x, w):
    return 0.5 * jnp.sum((w - T) ** 2) + 0.05 * jnp.sum(x**2)


def test_gradient_play_zero_sum_saddle():
    # saddle point: A w + B x + a = 0, B^T w - C x + c = 0
    K = jnp.block([[A, B], [B.T, -C]])
    sol = jnp.linalg.solve(K, -jnp.concatenate([A_LIN, C_LIN]))
    w_star, x_star = sol[:3], sol[3:]
    res = solve_gradient_play(
        saddle_f, saddle_g, jnp.zeros(2), jnp.zeros(3),
        lr_leader=0.02, lr_follower=0.1, steps=3000, leader_gradient="partial", maximize=True,
    )
    np.testing.assert_allclose(res.leader, x_star, atol=1e-6)
    np.testing.assert_allclose(res.follower, w_star, atol=1e-6)
    assert res.history.objective.shape == (3000,)
    # exact best response + hypergradient ascent agrees
    exact = solve_stackelberg(
        saddle_f, saddle_g, jnp.zeros(2), jnp.zeros(3),
        follower_solver=Newton(tol=1e-8), leader_optimizer=optax.sgd(0.2), maximize=True, steps=200,
    )
    np.testing.assert_allclose(exact.leader, x_star, atol=1e-6)
    np.testing.assert_allclose(exact.objective, res.objective, atol=1e-8)


def test_gradient_play_implicit_general_quadratic_bilevel():
    # w*(x) = A^{-1} B x; leader minimizes 0.5||M x - t||^2 + 0.05||x||^2 with M = A^{-1} B
    M = jnp.linalg.solve(A, B)
    x_star = jnp.linalg.solve(M.T @ M + 0.1 * jnp.eye(2), M.T @ T)
    res = solve_gradient_play(
        bilevel_f, bilevel_g, jnp.zeros(2), jnp.zeros(3),
        lr_leader=0.5, lr_follower=0.1, follower_steps=2, steps=3000, leader_gradient="implicit",
    )
    np.testing.assert_allclose(res.leader, x_star, atol=1e-6)
    np.testing.assert_allclose(res.follower, M @ x_star, atol=1e-6)
    # the partial gradient ignores the follower's reaction: a different (Nash) point here
    nash = solve_gradient_play(
        bilevel_f, bilevel_g, jnp.zeros(2), jnp.zeros(3),
        lr_leader=0.5, lr_follower=0.1, steps=500, leader_gradient="partial",
    )
    assert np.linalg.norm(np.asarray(nash.leader - x_star)) > 1e-2
    exact = solve_stackelberg(
        bilevel_f, bilevel_g, jnp.zeros(2), jnp.zeros(3), follower_solver=Newton(tol=1e-8), steps=40
    )
    np.testing.assert_allclose(exact.leader, x_star, atol=1e-6)
    # an unrolled hypergradient (through warm-started gradient descent) in place of Implicit
    unrolled = solve_stackelberg(
        bilevel_f, bilevel_g, jnp.zeros(2), jnp.zeros(3),
        follower_solver=GradientDescent(learning_rate=0.1, tol=1e-8), method=Unrolled(steps=60),
        leader_optimizer=optax.sgd(0.5), steps=300,
    )
    np.testing.assert_allclose(unrolled.leader, x_star, atol=1e-5)


# ----------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------
def test_errors_name_the_argument():
    x0, w0 = jnp.zeros(2), jnp.zeros(3)
    with pytest.raises(ValueError, match="leader_objective"):
        solve_stackelberg("f", bilevel_g, x0, w0)
    with pytest.raises(ValueError, match="follower"):
        solve_stackelberg(bilevel_f, None, x0, w0)
    with pytest.raises(ValueError, match="steps"):
        solve_stackelberg(bilevel_f, bilevel_g, x0, w0, steps=-1)
    with pytest.raises(ValueError, match="patience"):
        StackelbergConfig(patience=0)
    with pytest.raises(ValueError, match="gain_tol"):
        StackelbergConfig(gain_tol=-1.0)
    with pytest.raises(ValueError, match="follower_solver"):
        solve_stackelberg(bilevel_f, ArgminFollower(bilevel_g), x0, w0, follower_solver=Newton())
    with pytest.raises(ValueError, match="block_steps"):
        StackelbergConfig(block_steps=0)
    with pytest.raises(ValueError, match="leader_optimizer"):
        StackelbergConfig(leader_optimizer="newton")
    with pytest.raises(ValueError, match="leader_objective"):
        solve_stackelberg(lambda x, w: w, bilevel_g, x0, w0)  # not a scalar
    with pytest.raises(ValueError, match="follower_loss"):
        solve_stackelberg(bilevel_f, lambda w, x: w * 2.0, x0, w0)
    with pytest.raises(ValueError, match="projection"):
        solve_stackelberg(bilevel_f, bilevel_g, x0, w0, projection=lambda x: x[:1])
    with pytest.raises(ValueError, match="leader_init"):
        solve_stackelberg(bilevel_f, bilevel_g, jnp.zeros(2, jnp.int32), w0)
    with pytest.raises(ValueError, match="leader_init"):
        solve_stackelberg(bilevel_f, bilevel_g, jnp.asarray([0.0, jnp.nan]), w0)
    with pytest.raises(ValueError, match="leader_init"):
        solve_stackelberg(lambda x, w: jnp.sum(w), lambda w, x: jnp.sum((w - x) ** 2), jnp.asarray(1.0),
                          jnp.zeros(()), mode="coordinate")
    with pytest.raises(ValueError, match="lr_leader"):
        solve_gradient_play(bilevel_f, bilevel_g, x0, w0, lr_leader=-1.0, lr_follower=0.1)
    with pytest.raises(ValueError, match="steps"):
        solve_gradient_play(bilevel_f, bilevel_g, x0, w0, lr_leader=0.1, lr_follower=0.1, steps=0)
    with pytest.raises(ValueError, match="leader_gradient"):
        solve_gradient_play(bilevel_f, bilevel_g, x0, w0, lr_leader=0.1, lr_follower=0.1, leader_gradient="x")
