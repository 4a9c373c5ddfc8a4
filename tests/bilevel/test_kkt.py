"""Tests of the differentiable QP/KKT map :mod:`bilevel.kkt`.

All QPs here have n = 8 variables and m = 1 equality row (except the m = 0 test) so that the jitted
solver is compiled once and reused.
"""

import itertools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilevel._checks import ConvergenceError
from bilevel.kkt import QPSolution, solve_qp

N = 8


# --------------------------------------------------------------------------------------------------
# reference: exact enumeration of the 3^n partitions (free / lower / upper)

_PARTS = np.array(list(itertools.product(range(3), repeat=N)))  # (3^N, N)


def enumerate_qp(Q, c, A, b, l, u, tol=1e-9):
    """Exact solution of a small strictly convex QP by enumerating the active sets (vectorised)."""
    Q, c, A, b, l, u = (np.asarray(v, float) for v in (Q, c, A, b, l, u))
    m = A.shape[0]
    S = _PARTS
    F = S == 0
    xB = np.where(S == 1, l, np.where(S == 2, u, 0.0))  # (P, N)
    f = F.astype(float)
    K = np.zeros((len(S), N + m, N + m))
    K[:, :N, :N] = f[:, :, None] * Q * f[:, None, :] + np.eye(N) * (1 - f)[:, :, None]
    K[:, :N, N:] = (f[:, :, None] * A.T[None])
    K[:, N:, :N] = A[None] * f[:, None, :]
    rhs = np.concatenate([f * (-c - xB @ Q.T) + (1 - f) * xB, b - xB @ A.T], axis=1)
    ok = np.abs(np.linalg.det(K)) > 1e-12
    z = np.zeros((len(S), N + m))
    z[ok] = np.linalg.solve(K[ok], rhs[ok][..., None])[..., 0]
    x, nu = z[:, :N], z[:, N:]
    g = x @ Q.T + c + nu @ A
    feas = ok & np.all(x >= l - tol, 1) & np.all(x <= u + tol, 1) & np.all(np.abs(x @ A.T - b) < tol, 1)
    dual = np.all(np.where(S == 1, g >= -tol, True), 1) & np.all(np.where(S == 2, g <= tol, True), 1)
    idx = np.nonzero(feas & dual)[0]
    assert idx.size >= 1, "reference enumeration found no KKT point"
    i = idx[0]
    return x[i], nu[i], S[i]


def random_qp(seed, box=0.5):
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(N, N))
    c = 2.0 * rng.normal(size=N)
    A = rng.normal(size=(1, N))
    b = 0.3 * rng.normal(size=1)
    l = -box * np.ones(N) - 0.2 * rng.random(N)
    u = box * np.ones(N) + 0.2 * rng.random(N)
    return M, c, A, b, l, u


def q_of(M):
    return M @ M.T / N + 0.1 * jnp.eye(N)


def qp_vec(Q, c, A, b, l, u):
    s = solve_qp(Q, c, A, b, l, u)
    return jnp.concatenate([s.x, s.eq_multipliers])


def qp_out(M, c, A, b, l, u):
    return qp_vec(q_of(M), c, A, b, l, u)


# Derivatives are always taken w.r.t. all six arguments: the solver's differentiable stage is a jitted
# function whose transformed versions are compiled once per (shape, set of differentiated inputs).
ALL = tuple(range(6))


def jac(f, *args):
    return jax.jacrev(f, argnums=ALL)(*(jnp.asarray(a, float) for a in args))


def rel_err(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12)


# --------------------------------------------------------------------------------------------------
# forward accuracy


@pytest.mark.parametrize("seed", range(4))
def test_matches_enumeration(seed):
    M, c, A, b, l, u = random_qp(seed)
    Q = np.asarray(q_of(M))
    s = solve_qp(Q, c, A, b, l, u)
    assert isinstance(s, QPSolution)
    x_ref, nu_ref, S = enumerate_qp(Q, c, A, b, l, u)
    np.testing.assert_allclose(s.x, x_ref, atol=1e-10)
    np.testing.assert_allclose(s.eq_multipliers, nu_ref, atol=1e-10)
    np.testing.assert_array_equal(np.asarray(s.active_lower), S == 1)
    np.testing.assert_array_equal(np.asarray(s.active_upper), S == 2)
    assert float(s.residual) < 1e-12
    assert 0 < np.sum(S != 0) < N  # the test problems have active bounds and free variables


def test_no_equality_and_infinite_bounds():
    rng = np.random.default_rng(7)
    M = rng.normal(size=(N, N))
    Q = M @ M.T / N + 0.1 * np.eye(N)
    c = 2 * rng.normal(size=N)
    l = np.where(np.arange(N) % 2 == 0, -0.3, -np.inf)
    u = np.where(np.arange(N) % 3 == 0, np.inf, 0.4)
    s = solve_qp(Q, c, lower=l, upper=u)
    assert s.eq_multipliers.shape == (0,)
    # reference: the same problem with big finite bounds, by enumeration
    x_ref, _, _ = enumerate_qp(Q, c, np.zeros((0, N)), np.zeros(0), np.maximum(l, -1e3), np.minimum(u, 1e3))
    np.testing.assert_allclose(s.x, x_ref, atol=1e-10)
    J = jac(qp_vec, Q, c, np.zeros((0, N)), np.zeros(0), l, u)
    assert all(np.all(np.isfinite(j)) for j in J)
    assert np.allclose(np.asarray(J[4])[:, np.isinf(l)], 0.0) and np.allclose(np.asarray(J[5])[:, np.isinf(u)], 0.0)


# --------------------------------------------------------------------------------------------------
# derivatives


def fd_jacobian(f, args, i, eps=1e-6):
    x = np.asarray(args[i], float)
    cols = []
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = eps
        ap, am = list(args), list(args)
        ap[i], am[i] = x + e, x - e
        cols.append((np.asarray(f(*ap)) - np.asarray(f(*am))) / (2 * eps))
    return np.stack(cols, axis=-1).reshape(cols[0].shape + x.shape)


def active_sets(M, c, A, b, l, u):
    s = solve_qp(q_of(M), c, A, b, l, u)
    return np.asarray(s.active_lower), np.asarray(s.active_upper)


@pytest.mark.parametrize("seed", [0, 1])
def test_derivatives_match_finite_differences(seed):
    args = [jnp.asarray(a) for a in random_qp(seed)]
    J = jac(qp_out, *args)
    lo, up = active_sets(*args)
    for i in range(6):
        # perturbations of size 1e-6 keep the active set of these (strictly complementary) problems
        x = np.asarray(args[i])
        for sgn in (1, -1):
            ap = list(args)
            ap[i] = x + sgn * 1e-6 * np.ones_like(x)
            lo2, up2 = active_sets(*ap)
            assert np.array_equal(lo, lo2) and np.array_equal(up, up2)
        fd = fd_jacobian(qp_out, args, i)
        assert rel_err(J[i], fd) < 1e-5, (i, rel_err(J[i], fd))
    # bound variables do not move with c; they follow their own bound one-to-one
    Jl, Ju = np.asarray(J[4])[:N], np.asarray(J[5])[:N]
    for k in range(N):
        if lo[k]:
            assert Jl[k, k] == pytest.approx(1.0) and np.allclose(np.delete(Jl[k], k), 0) and np.allclose(Ju[k], 0)
        if up[k]:
            assert Ju[k, k] == pytest.approx(1.0) and np.allclose(np.delete(Ju[k], k), 0) and np.allclose(Jl[k], 0)
    assert np.allclose(np.asarray(J[1])[:N][lo | up], 0.0)


def test_forward_mode_equals_reverse_mode():
    args = [jnp.asarray(a) for a in random_qp(2)]
    Jf = jax.jacfwd(qp_out, argnums=ALL)(*args)  # jvp
    Jr = jac(qp_out, *args)  # vjp
    for a, r in zip(Jf, Jr):
        np.testing.assert_allclose(a, r, atol=1e-12)
    assert max(float(jnp.max(jnp.abs(j))) for j in Jr) > 0.1


def test_jit_and_vmap_match_python_loop():
    problems = [random_qp(s) for s in range(3)]
    # an infeasible QP (1'x = 100 with x in a small box) to check the error under jit
    bad = list(problems[0])
    bad[2] = np.ones((1, N))
    bad[3] = np.array([100.0])
    batch = [jnp.asarray(np.stack(z)) for z in zip(*problems)]
    f = jax.jit(jax.vmap(lambda *a: (qp_out(*a), jax.jacrev(qp_out, argnums=1)(*a))))  # jit + vmap + grad
    vals, jacs = f(*batch)
    for k, p in enumerate(problems):
        p = [jnp.asarray(a) for a in p]
        np.testing.assert_allclose(vals[k], qp_out(*p), atol=1e-12)
        np.testing.assert_allclose(jacs[k], jac(qp_out, *p)[1], atol=1e-12)
    bad_batch = [jnp.asarray(np.stack(z)) for z in zip(*(problems[:2] + [bad]))]
    with pytest.raises(Exception, match="did not converge"):
        jax.block_until_ready(f(*bad_batch))


# --------------------------------------------------------------------------------------------------
# degenerate KKT systems


def test_equality_row_without_free_variables():
    # x0 + x1 = 2 with 0 <= x <= 1 forces x0 = x1 = 1: no free variable in the equality row.
    rng = np.random.default_rng(3)
    M = rng.normal(size=(N, N))
    Q = np.asarray(q_of(M))
    c = rng.normal(size=N)
    A = np.zeros((1, N))
    A[0, :2] = 1.0
    b = np.array([2.0])
    l, u = np.zeros(N), np.ones(N)
    s = solve_qp(Q, c, A, b, l, u)
    assert np.all(np.isfinite(s.x)) and np.all(np.isfinite(s.eq_multipliers))
    np.testing.assert_allclose(s.x[:2], 1.0)
    assert bool(s.active_upper[0]) and bool(s.active_upper[1])
    assert float(s.residual) < 1e-9  # the multiplier was chosen inside its admissible interval
    x_ref, _, _ = enumerate_qp(Q, c, A, b, l, u)
    np.testing.assert_allclose(s.x, x_ref, atol=1e-10)
    J = jac(qp_vec, Q, c, A, b, l, u)
    assert all(np.all(np.isfinite(j)) for j in J)
    np.testing.assert_allclose(np.asarray(J[5])[:2, :2], np.eye(2))  # x0, x1 follow their upper bounds


def test_singular_hessian():
    rng = np.random.default_rng(4)
    A = rng.normal(size=(1, N))
    b = np.array([0.1])
    l, u = -np.ones(N), np.ones(N)
    # LP (Q = 0): vertex solution, compared with the enumeration
    c = rng.normal(size=N)
    s = solve_qp(np.zeros((N, N)), c, A, b, l, u)
    x_ref, _, _ = enumerate_qp(np.zeros((N, N)), c, A, b, l, u)
    np.testing.assert_allclose(s.x, x_ref, atol=1e-9)
    # Q = 0 and c = 0: every feasible point is optimal; the answer must be finite and feasible
    s0 = solve_qp(np.zeros((N, N)), np.zeros(N), A, b, l, u)
    assert np.all(np.isfinite(s0.x)) and float(s0.residual) < 1e-9
    # rank-one Q: derivatives stay finite
    v = rng.normal(size=N)
    J = jac(qp_vec, np.outer(v, v), c, A, b, l, u)
    assert all(np.all(np.isfinite(j)) for j in J)


def test_empty_equality_row():
    # 0'x = 0: a (linearly dependent) equality row without any variable; same answer as with m = 0
    M, c, _, _, l, u = random_qp(5)
    Q = np.asarray(q_of(M))
    s1 = solve_qp(Q, c, np.zeros((1, N)), np.zeros(1), l, u)
    s0 = solve_qp(Q, c, lower=l, upper=u)
    np.testing.assert_allclose(s1.x, s0.x, atol=1e-12)
    assert np.all(np.isfinite(s1.eq_multipliers)) and float(s1.residual) < 1e-9
    J = jac(qp_vec, Q, c, np.zeros((1, N)), np.zeros(1), l, u)
    assert all(np.all(np.isfinite(j)) for j in J)


def test_warm_start():
    M, c, A, b, l, u = random_qp(6)
    Q = np.asarray(q_of(M))
    s = solve_qp(Q, c, A, b, l, u)
    c2 = c + 1e-3
    cold = solve_qp(Q, c2, A, b, l, u)
    warm = solve_qp(Q, c2, A, b, l, u, warm_start=s)
    np.testing.assert_allclose(warm.x, cold.x, atol=1e-12)
    # a useless warm start (everything at the bounds) still gives the right answer
    junk = s._replace(active_lower=jnp.ones(N, bool), active_upper=jnp.zeros(N, bool))
    np.testing.assert_allclose(solve_qp(Q, c2, A, b, l, u, warm_start=junk).x, cold.x, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# input validation and failures


def test_shape_and_value_errors():
    M, c, A, b, l, u = random_qp(0)
    Q = np.asarray(q_of(M))
    with pytest.raises(ValueError, match=r"argument 'c' has shape \(3,\), expected \(8,\)"):
        solve_qp(Q, c[:3], A, b, l, u)
    with pytest.raises(ValueError, match="argument 'Q'"):
        solve_qp(Q[:, :5], c, A, b, l, u)
    with pytest.raises(ValueError, match="argument 'A'"):
        solve_qp(Q, c, np.ones((1, 5)), b, l, u)
    with pytest.raises(ValueError, match="argument 'b'"):
        solve_qp(Q, c, A, np.ones(2), l, u)
    with pytest.raises(ValueError, match="argument 'b'"):
        solve_qp(Q, c, A, None, l, u)
    with pytest.raises(ValueError, match="argument 'lower'"):
        solve_qp(Q, c, A, b, l[:4], u)
    with pytest.raises(ValueError, match="argument 'c' contains NaN"):
        solve_qp(Q, np.where(np.arange(N) == 2, np.nan, c), A, b, l, u)
    with pytest.raises(ValueError, match="argument 'Q' contains NaN or inf"):
        solve_qp(np.where(np.eye(N) > 0, np.inf, Q), c, A, b, l, u)
    with pytest.raises(ValueError, match="argument 'upper' contains NaN"):
        solve_qp(Q, c, A, b, l, np.full(N, np.nan))
    with pytest.raises(ValueError, match="lower > upper"):
        solve_qp(Q, c, A, b, u, l)
    with pytest.raises(ValueError, match="on_failure"):
        solve_qp(Q, c, A, b, l, u, on_failure="explode")


def test_on_failure_policies():
    M, c, _, _, l, u = random_qp(0)
    Q = np.asarray(q_of(M))
    A, b = np.ones((1, N)), np.array([100.0])  # infeasible
    with pytest.raises(ConvergenceError, match="did not converge"):
        solve_qp(Q, c, A, b, l, u)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        solve_qp(Q, c, A, b, l, u, on_failure="warn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = solve_qp(Q, c, A, b, l, u, on_failure="ignore")
    assert not float(s.residual) <= 1e-9
