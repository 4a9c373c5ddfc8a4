"""A regression suite ported from two peer projects' tests of implicit differentiation (written here).

The problems and tolerances are those of

- jaxopt's ``tests/implicit_diff_test.py`` (ridge regression on ``make_regression(10, 3, random_state=0)``,
  ``lam = 5``, a closed-form solver, Jacobians against central finite differences with ``eps = 1e-4`` and
  ``atol = 5e-2``; ``custom_root`` with ``has_aux``, with keyword arguments in any order, ``init=None``,
  under ``jit``; ``custom_fixed_point``) and ``tests/linear_solve_test.py`` (dense, PSD, tensor-shaped,
  ridge and 1-d systems drawn with ``numpy.random.RandomState(0)``, ``atol = 1e-4`` / ``1e-2``);
- optimistix's ``test_root_find_jvp`` / ``test_fixed_point_jvp`` (the fixed-point problem set of its
  ``tests/helpers.py``: ``cos``, ``exp(-x)``, a 0.1-scaled softplus MLP, one Crank-Nicolson step of a
  nonlinear heat equation, linear and Robertson implicit-midpoint steps in y-, f- and k-space; JVPs
  against finite differences at ``atol = rtol = 1e-3``) and ``test_minimise_jvp`` (bowl, Himmelblau,
  Matyas, Beale, ``||x||^2 - 1``).

Here every problem runs in forward *and* reverse mode (reverse checked against forward by
``<u, J v> = <J^T u, v>``), in float64 (against central differences) and float32 (against float64).

Not ported, and why:

- jaxopt's ``root_vjp`` / ``root_jvp`` (low-level functions taking a solution): here the derivative rule
  is only reachable through ``root_solve`` (one ``custom_jvp``), whose ``jax.vjp`` / ``jax.jvp`` are tested
  on the same problem instead.
- jaxopt's ``solve_qr``, ``solve_inv``, ``solve_iterative_refinement`` and the internal helpers
  ``_materialize_array`` / ``_make_rmatvec`` / ``_normal_matvec``: no such solvers here (dense solves are
  ``Cholesky`` and ``LU``); the materialisation is exercised through them on tensor-shaped systems.
- jaxopt's ``solve_normal_cg`` on a *non-square* operator (least squares): every solver here solves a
  square system ``(A + ridge I) x = b``, and a non-square ``matvec`` raises a ``ValueError`` naming it
  (tested). jaxopt's ``ridge`` of ``solve_normal_cg`` regularises ``A^T A``; ours regularises ``A``
  (``NormalCG(ridge=r)`` solves ``(A + r I) x = b``), tested with that meaning.
- optimistix's complex128 variants (real floating point only here) and its ``PiggybackAdjoint``
  (differentiating the solver's iterations: :mod:`bilevel.unroll` does that, separately tested).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from sklearn import datasets

from bilevel import (
    CG,
    GMRES,
    LU,
    BiCGStab,
    Cholesky,
    ImplicitConfig,
    Implicit,
    Newton,
    NormalCG,
    custom_fixed_point,
    custom_root,
    fixed_point_solve,
    minimize,
    root_solve,
)

# ==================================================================================================
# jaxopt: implicit_diff_test.py


def ridge_objective(params, lam, X, y):
    residuals = jnp.dot(X, params) - y
    return 0.5 * jnp.mean(residuals**2) + 0.5 * lam * jnp.sum(params**2)


def ridge_solver(init_params, lam, X, y):
    del init_params  # not used
    XX = jnp.dot(X.T, X)
    Xy = jnp.dot(X.T, y)
    return jnp.linalg.solve(XX + lam * len(y) * jnp.eye(X.shape[1], dtype=XX.dtype), Xy)


def ridge_solver_with_kwargs(init_params, **kw):
    return ridge_solver(init_params, kw["lam"], kw["X"], kw["y"])


def ridge_solver_jac(X, y, lam, eps=1e-4):
    return (ridge_solver(None, lam + eps, X, y) - ridge_solver(None, lam - eps, X, y)) / (2 * eps)


@pytest.fixture(scope="module")
def regression():
    X, y = datasets.make_regression(n_samples=10, n_features=3, random_state=0)
    return jnp.asarray(X), jnp.asarray(y), 5.0


def test_jaxopt_root_vjp_and_jvp(regression):
    X, y, lam = regression
    F = jax.grad(ridge_objective)
    J_num = ridge_solver_jac(X, y, lam)
    J_exact = jax.jacobian(lambda l: ridge_solver(None, l, X, y))(lam)

    def sol(l):
        return root_solve(F, ridge_solver, None, l, X, y)

    @jax.jit
    def jacobians(l):
        _, pullback = jax.vjp(sol, l)
        return jax.vmap(lambda g: pullback(g)[0])(jnp.eye(3)), jax.jvp(sol, (l,), (1.0,))[1]

    J_rev, J_fwd = jacobians(lam)
    for J in (J_rev, J_fwd):
        np.testing.assert_allclose(J, J_num, atol=5e-2)  # their tolerance
        np.testing.assert_allclose(J, J_exact, rtol=1e-9)  # ours, against the differentiated closed form


@pytest.mark.parametrize("has_aux", [False, True])
def test_jaxopt_custom_root(regression, has_aux):
    X, y, lam = regression
    solver = (lambda init, lam, X, y: (ridge_solver(init, lam, X, y), None)) if has_aux else ridge_solver
    decorated = custom_root(jax.grad(ridge_objective), has_aux=has_aux)(solver)
    out = decorated(None, lam=lam, X=X, y=y)
    sol = out[0] if has_aux else out
    np.testing.assert_allclose(sol, ridge_solver(None, lam, X, y), atol=1e-4)
    J = jax.jit(jax.jacrev(decorated, argnums=1))(None, lam, X=X, y=y)
    J = J[0] if has_aux else J
    np.testing.assert_allclose(J, ridge_solver_jac(X, y, lam), atol=5e-2)
    np.testing.assert_allclose(J, jax.jacobian(lambda l: ridge_solver(None, l, X, y))(lam), rtol=1e-9)


def test_jaxopt_has_aux_arrays_pass_through_with_zero_derivative(regression):
    X, y, lam = regression

    def solver(init, lam, X, y):
        w = ridge_solver(init, lam, X, y)
        return w, {"residual": X @ w - y, "steps": jnp.asarray(1)}

    decorated = custom_root(jax.grad(ridge_objective), has_aux=True)(solver)
    (w, aux), (tw, taux) = jax.jvp(lambda l: decorated(None, l, X, y), (lam,), (1.0,))
    np.testing.assert_allclose(aux["residual"], X @ w - y)
    assert aux["steps"].dtype == jnp.int32 or aux["steps"].dtype == jnp.int64
    assert np.all(np.asarray(taux["residual"]) == 0)
    np.testing.assert_allclose(tw, jax.jacobian(lambda l: ridge_solver(None, l, X, y))(lam), rtol=1e-9)
    with pytest.raises(ValueError, match="has_aux"):
        custom_root(jax.grad(ridge_objective), has_aux=True)(ridge_solver)(None, lam, X, y)


def test_jaxopt_custom_fixed_point(regression):
    X, y, lam = regression
    grad_fun = jax.grad(ridge_objective)
    fp_fun = functools.wraps(grad_fun)(lambda x, *args: x - grad_fun(x, *args))
    decorated = custom_fixed_point(fp_fun)(ridge_solver)
    np.testing.assert_allclose(decorated(None, lam=lam, X=X, y=y), ridge_solver(None, lam, X, y), atol=1e-4)
    J = jax.jacrev(decorated, argnums=1)(None, lam, X=X, y=y)
    np.testing.assert_allclose(J, ridge_solver_jac(X, y, lam), atol=5e-2)


def test_jaxopt_custom_root_with_kwargs(regression):
    for order in ("ordered", "unordered"):
        _check_custom_root_with_kwargs(regression, order)


def _check_custom_root_with_kwargs(regression, order):
    X, y, lam = regression
    w_ref = ridge_solver(None, lam, X, y)
    lam_grad_ref = jax.grad(lambda l: ridge_solver(None, l, X, y)[0])(lam)
    cr_solver = custom_root(jax.grad(ridge_objective))(ridge_solver_with_kwargs)
    kw = {"lam": lam, "X": X, "y": y} if order == "ordered" else {"X": X, "lam": lam, "y": y}
    w = cr_solver(None, **kw)
    w_jit = jax.jit(cr_solver)(None, **kw)
    np.testing.assert_allclose(w_ref, w, atol=5e-2)
    np.testing.assert_allclose(w_jit, w, atol=5e-2)

    def first(l):
        return cr_solver(None, **{**kw, "lam": l})[0]

    lam_grad = jax.grad(first)(lam)
    np.testing.assert_allclose(lam_grad, lam_grad_ref, atol=5e-2)
    np.testing.assert_allclose(jax.jit(jax.grad(first))(lam), lam_grad, atol=5e-2)
    np.testing.assert_allclose(lam_grad, lam_grad_ref, rtol=1e-9)
    # keyword arguments are differentiable like positional ones (here X, by name)
    gX = jax.jit(jax.grad(lambda X_: cr_solver(None, **{**kw, "X": X_})[0]))(X)
    np.testing.assert_allclose(gX, jax.grad(lambda X_: ridge_solver(None, lam, X_, y)[0])(X), rtol=1e-8, atol=1e-12)


# ==================================================================================================
# jaxopt: linear_solve_test.py (float32 and float64)

DTYPES = [jnp.float32, jnp.float64]


def _close(a, b, dtype, atol, rtol=1e-7):
    """jaxopt's assertArraysAllClose widens its tolerances in float32; here float32 gets 100x."""
    scale = 100.0 if dtype == jnp.float32 else 1.0
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), atol=atol * scale, rtol=rtol * scale)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_jaxopt_solve_dense_and_tensor(dtype):
    rng = np.random.RandomState(0)
    A = jnp.asarray(rng.randn(5, 5), dtype)
    b = jnp.asarray(rng.randn(5), dtype)
    ref = np.linalg.solve(np.asarray(A, np.float64), np.asarray(b, np.float64))
    _close(LU()(lambda x: A @ x, b).x, ref, dtype, atol=1e-6)
    # tensor case: a (5, 3) unknown
    A4 = jnp.asarray(rng.randn(5, 3, 5, 3), dtype)
    A_mat = A4.reshape(15, 15)
    b2 = jnp.asarray(rng.randn(5, 3), dtype)

    def matvec(x):
        return (A_mat @ x.ravel()).reshape(5, 3)

    ref2 = np.linalg.solve(np.asarray(A_mat, np.float64), np.asarray(b2, np.float64).ravel()).reshape(5, 3)
    _close(LU()(matvec, b2).x, ref2, dtype, atol=1e-4)
    _close(GMRES(tol=1e-10 if dtype == jnp.float64 else None)(matvec, b2).x, ref2, dtype, atol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_jaxopt_solve_dense_psd(dtype):
    rng = np.random.RandomState(0)
    A = rng.randn(5, 5)
    A = jnp.asarray(A.T @ A, dtype)
    b = jnp.asarray(rng.randn(5), dtype)
    ref = np.linalg.solve(np.asarray(A, np.float64), np.asarray(b, np.float64))
    _close(Cholesky()(lambda x: A @ x, b).x, ref, dtype, atol=1e-2)
    _close(CG()(lambda x: A @ x, b).x, ref, dtype, atol=1e-2)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_jaxopt_solve_sparse_and_ridge(dtype):
    rng = np.random.RandomState(0)
    A = jnp.asarray(rng.randn(5, 5), dtype)
    b = jnp.asarray(rng.randn(5), dtype)
    A64, b64 = np.asarray(A, np.float64), np.asarray(b, np.float64)

    def matvec(x):
        return A @ x

    ref = np.linalg.solve(A64, b64)
    for solver in (LU(), NormalCG(), GMRES(), BiCGStab()):
        _close(solver(matvec, b).x, ref, dtype, atol=1e-4, rtol=1e-4)
    # ridge = 1: (A + I) x = b
    ref_r = np.linalg.solve(A64 + np.eye(5), b64)
    for solver in (LU(ridge=1.0), GMRES(ridge=1.0), BiCGStab(ridge=1.0), NormalCG(ridge=1.0)):
        _close(solver(matvec, b).x, ref_r, dtype, atol=1e-4)
    # CG with a ridge on the Gram matrix K = A^T A: (K + I) x = b
    K = A.T @ A
    ref_k = np.linalg.solve(np.asarray(K, np.float64) + np.eye(5), b64)
    _close(CG(ridge=1.0)(lambda x: K @ x, b).x, ref_k, dtype, atol=1e-4)


def test_jaxopt_solve_1d_and_non_square():
    rng = np.random.RandomState(0)
    A = rng.randn(1, 1)
    b = jnp.asarray(rng.randn(1))
    np.testing.assert_allclose(LU()(lambda x: jnp.asarray(A) @ x, b).x, np.asarray(b) / A[0, 0], rtol=1e-12)
    # jaxopt's normal CG solves a 2x3 least-squares system; here systems are square, and a non-square
    # matvec is rejected with a clear error naming it
    A32 = jnp.asarray(rng.randn(3, 2))
    with pytest.raises(ValueError, match="matvec"):
        NormalCG()(lambda x: A32 @ x, jnp.ones(2))


# ==================================================================================================
# optimistix: the fixed-point / root-find problem set, and the minimisation problem set


def _tree_ones(value):
    return ({"a": value * jnp.ones((3, 2, 4))}, value * jnp.ones(4))


ONES_TREE = _tree_ones(0.5)
SIZE = 28
MATRIX = np.asarray(jax.random.normal(jax.random.PRNGKey(19), (SIZE, SIZE)))


def _softplus_mlp_weights():
    """An MLP size -> 8 -> size with softplus, initialised like a default ``Linear`` (U(+-1/sqrt(fan_in)))."""
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(42), 4)
    lim1, lim2 = 1.0 / np.sqrt(SIZE), 1.0 / np.sqrt(8)
    return (
        np.asarray(jax.random.uniform(k1, (8, SIZE), minval=-lim1, maxval=lim1)),
        np.asarray(jax.random.uniform(k2, (8,), minval=-lim1, maxval=lim1)),
        np.asarray(jax.random.uniform(k3, (SIZE, 8), minval=-lim2, maxval=lim2)),
        np.asarray(jax.random.uniform(k4, (SIZE,), minval=-lim2, maxval=lim2)),
    )


def _map_flat(fn):
    """Lift ``fn(flat_y, args) -> flat`` to pytrees."""

    def lifted(tree, args):
        flat, unravel = ravel_pytree(tree)
        return unravel(fn(flat, args).astype(flat.dtype))

    return lifted


def fp_cos(tree, c):
    return jax.tree_util.tree_map(lambda x: jnp.cos(c * x), tree)


def fp_exponential(tree, c):
    return jax.tree_util.tree_map(lambda x: jnp.exp(-c * x), tree)


@_map_flat
def fp_nn(y, weights):
    w1, b1, w2, b2 = weights
    return 0.1 * (w2 @ jax.nn.softplus(w1 @ y + b1) + b2)


_HEAT_X = np.linspace(-1.0, 1.0, 100)


def fp_heat(y, c):
    """One Crank-Nicolson step of y_t = (1 - y) L(y) from t = 0 to 1, with optimistix's Laplacian helper
    (which returns its argument unchanged, so L = identity here: we keep the problem as it is)."""
    y0 = jnp.asarray(_HEAT_X**2, y.dtype)
    f0 = (1 - y0) * y0
    return c * (y0 + 0.5 * ((1 - y) * y + f0))


def _midpoint(space, f, dt):
    def step(y, args):
        y0 = jnp.zeros_like(y)
        if space == "y":
            return y0 + dt * f(0.5 * (y0 + y), args)
        if space == "f":
            return f(y0 + dt * y, args)
        return dt * f(y0 + y, args)

    return _map_flat(step)


def _linear(y, m):
    return m @ y


def _robertson(y, k):
    k1, k2, k3 = k
    return jnp.stack([-k1 * y[0] + k3 * y[1] * y[2], k1 * y[0] - k2 * y[1] ** 2 - k3 * y[1] * y[2], k2 * y[1] ** 2])


ROBERTSON_INIT = (jnp.ones(2), {"b": jnp.asarray(1.0)})
ROBERTSON_ARGS = (0.04, 3e7, 1e4)

FIXED_POINT_PROBLEMS = {
    "cos": (fp_cos, ONES_TREE, 1.0),
    "exponential": (fp_exponential, ONES_TREE, 1.0),
    "nn": (fp_nn, ONES_TREE, _softplus_mlp_weights()),
    "heat": (fp_heat, jnp.ones(100), 1.0),
    "midpoint_y_linear": (_midpoint("y", _linear, 1 / 16), ONES_TREE, MATRIX),
    "midpoint_f_linear": (_midpoint("f", _linear, 1 / 16), ONES_TREE, MATRIX),
    "midpoint_k_linear": (_midpoint("k", _linear, 1 / 16), ONES_TREE, MATRIX),
    "midpoint_y_robertson": (_midpoint("y", _robertson, 1e-8), ROBERTSON_INIT, ROBERTSON_ARGS),
    "midpoint_f_robertson": (_midpoint("f", _robertson, 1e-8), ROBERTSON_INIT, ROBERTSON_ARGS),
    "midpoint_k_robertson": (_midpoint("k", _robertson, 1e-8), ROBERTSON_INIT, ROBERTSON_ARGS),
}


def _cast(tree, dtype):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), tree)


def fixed_point_iteration(T, tol):
    """Plain fixed-point iteration to ``||T(y) - y|| <= tol (1 + ||y||)`` (optimistix's FixedPointIteration)."""

    def solve(y0, args):
        def cond(c):
            y, k, err = c
            return (k < 10_000) & (err > tol)

        def body(c):
            y, k, _ = c
            new = T(y, args)
            flat_new, flat_y = ravel_pytree(new)[0], ravel_pytree(y)[0]
            err = jnp.linalg.norm(flat_new - flat_y) / (1 + jnp.linalg.norm(flat_y))
            return new, k + 1, err.astype(flat_y.dtype)

        inf = jnp.asarray(jnp.inf, ravel_pytree(y0)[0].dtype)
        return jax.lax.while_loop(cond, body, (y0, 0, inf))[0]

    return solve


def newton_root(F, tol):
    """Dense Newton on ``F(y, args) = 0`` (optimistix's Newton root finder), to ``||F|| <= tol``."""

    def solve(y0, args):
        flat0, unravel = ravel_pytree(y0)

        def f(z):
            return ravel_pytree(F(unravel(z), args))[0]

        def cond(c):
            z, k = c
            return (k < 100) & (jnp.linalg.norm(f(z)) > tol * (1 + jnp.linalg.norm(z)))

        def body(c):
            z, k = c
            return z - jnp.linalg.solve(jax.jacfwd(f)(z), f(z)), k + 1

        return unravel(jax.lax.while_loop(cond, body, (flat0, 0))[0])

    return solve


def _random_like(tree, seed, dtype):
    """Standard normal draws laid out like ``tree`` (drawn in float64, then cast: the same numbers in
    float32 and float64)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef,
        [jax.random.normal(k, jnp.shape(leaf), jnp.float64).astype(dtype) for k, leaf in zip(keys, leaves)],
    )


def _dot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _derivatives(solution, args, dtype):
    """Jitted (x, J t, <u, J t>, <J^T u, t>) at ``args`` for random tangents t and cotangents u."""
    t_args = _random_like(args, 1, dtype)

    @jax.jit
    def run(args):
        x, jvp = jax.linearize(solution, args)  # one trace: forward mode, and its transpose for reverse
        jt = jvp(t_args)
        u = _random_like(x, 2, dtype)
        (jtu,) = jax.linear_transpose(jvp, t_args)(u)
        return x, jt, _dot(u, jt), _dot(jtu, t_args)

    return run, t_args


def _check_problem(make_solution, args, *, rtol=1e-3, fd=True, float32=True):
    """float64: JVP vs central differences (optimistix's tolerance 1e-3) and VJP vs JVP; float32 vs float64."""
    sol64 = make_solution(jnp.float64)
    a64 = _cast(args, jnp.float64)
    run64, t64 = _derivatives(sol64, a64, jnp.float64)
    x64, jt64, ujt64, jtu64 = run64(a64)
    np.testing.assert_allclose(ujt64, jtu64, rtol=1e-8, atol=1e-12)  # reverse mode = forward mode
    if fd:
        primal = jax.jit(sol64)
        eps = 1e-6
        plus = primal(jax.tree_util.tree_map(lambda a, t: a + eps * t, a64, t64))
        minus = primal(jax.tree_util.tree_map(lambda a, t: a - eps * t, a64, t64))
        fd_jt = jax.tree_util.tree_map(lambda p, m: (p - m) / (2 * eps), plus, minus)
        for got, want in zip(jax.tree_util.tree_leaves(jt64), jax.tree_util.tree_leaves(fd_jt)):
            np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol)
    if not float32:
        return jt64
    sol32 = make_solution(jnp.float32)
    a32 = _cast(args, jnp.float32)
    run32, _ = _derivatives(sol32, a32, jnp.float32)
    x32, jt32, ujt32, jtu32 = run32(a32)
    for got, want in zip(jax.tree_util.tree_leaves((x32, jt32)), jax.tree_util.tree_leaves((x64, jt64))):
        assert got.dtype == jnp.float32
        scale = max(1.0, float(np.max(np.abs(want))))
        np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-3 * scale)
    np.testing.assert_allclose(ujt32, jtu32, rtol=1e-3, atol=1e-4 * max(1.0, abs(float(ujt64))))
    return jt64


# optimistix's ImplicitAdjoint solves the tangent system with lineax's AutoLinearSolver: LU for these
# dense, square problems (the root-find tests below use GMRES, the default here)
DENSE = ImplicitConfig(linear_solver=LU())


@pytest.mark.parametrize("name", list(FIXED_POINT_PROBLEMS))
def test_optimistix_fixed_point_jvp(name):
    T, init, args = FIXED_POINT_PROBLEMS[name]
    has_aux = name in ("cos", "midpoint_f_linear")  # optimistix draws has_aux at random; here both kinds

    def make(dtype):
        tol = 1e-10 if dtype == jnp.float64 else 1e-6
        y0 = _cast(init, dtype)
        solve = fixed_point_iteration(T, tol)
        if has_aux:
            def solver(y, a):
                return solve(y, a), (jnp.ones((2, 3), dtype), {"smoke_aux": jnp.ones(2, dtype)})

            return lambda a: fixed_point_solve(T, solver, y0, a, config=DENSE, has_aux=True)[0]
        return lambda a: fixed_point_solve(T, solve, y0, a, config=DENSE)

    _check_problem(make, args, float32=name in FLOAT32)


# float32 for a representative subset (compilation dominates the run time)
FLOAT32 = ("cos", "nn", "heat", "midpoint_y_linear", "midpoint_k_robertson")
ROOT_FIND = ["nn", "midpoint_f_linear"]


@pytest.mark.parametrize("name", ROOT_FIND)
def test_optimistix_root_find_jvp(name):
    """The same problems as root finds F(y) = T(y) - y, solved by Newton, differentiated by GMRES (default)."""
    T, init, args = FIXED_POINT_PROBLEMS[name]

    def F(y, a):
        return jax.tree_util.tree_map(jnp.subtract, T(y, a), y)

    def make(dtype):
        tol = 1e-12 if dtype == jnp.float64 else 1e-6
        return lambda a: root_solve(F, newton_root(F, tol), _cast(init, dtype), a)

    _check_problem(make, args, float32=False)  # float32 of these problems: test_optimistix_fixed_point_jvp


# -- minimisation ---------------------------------------------------------------------------------

BOWL_INIT = ({"a": 0.05 * jnp.ones((2, 3, 3))}, 0.05 * jnp.ones(2))
_BOWL_N = np.asarray(jax.random.normal(jax.random.PRNGKey(17), (20, 20)))
BOWL_MATRIX = _BOWL_N.T @ _BOWL_N


def bowl(tree, matrix):
    y = ravel_pytree(tree)[0]
    return y @ matrix @ y


def himmelblau(tree, args):
    y, z = tree
    c1, c2 = args
    return (y**2 + z - c1) ** 2 + (y + z**2 - c2) ** 2


def matyas(tree, args):
    y, z = tree
    c1, c2 = args
    return c1 * (y**2 + z**2) - c2 * y * z


def beale(tree, args):
    y, z = tree
    c1, c2, c3 = args
    return (c1 - y + y * z) ** 2 + (c2 - y + y * z**2) ** 2 + (c3 - y + y * z**3) ** 2


def square_minus_one(x, args):
    return jnp.sum(jnp.square(x)) - 1.0 + 0.0 * args


MINIMISATION_PROBLEMS = {
    # name: (loss, init, args, minimum)
    "bowl": (bowl, BOWL_INIT, BOWL_MATRIX, None),
    "himmelblau": (himmelblau, [2.0, 2.5], (11.0, 7.0), [3.0, 2.0]),
    "matyas": (matyas, [6.0, 6.0], (0.26, 0.48), [0.0, 0.0]),
    "beale": (beale, [2.0, 0.0], (1.5, 2.25, 2.625), [3.0, 0.5]),
    "square_minus_one": (square_minus_one, 1.0, 0.0, 0.0),
}


@pytest.mark.parametrize("name", list(MINIMISATION_PROBLEMS))
def test_optimistix_minimise_jvp(name):
    loss, init, args, minimum = MINIMISATION_PROBLEMS[name]

    def make(dtype):
        x0 = _cast(init, dtype)
        solver = Newton(maxiter=100, tol=1e-12 if dtype == jnp.float64 else None)
        return lambda a: minimize(loss, x0, a, solver=solver, method=Implicit(linear_solver=LU()))

    if minimum is not None:
        x = minimize(loss, _cast(init, jnp.float64), _cast(args, jnp.float64), solver=Newton(maxiter=100, tol=1e-12))
        for got, want in zip(jax.tree_util.tree_leaves(x), jax.tree_util.tree_leaves(_cast(minimum, jnp.float64))):
            np.testing.assert_allclose(got, want, atol=1e-6)
    # optimistix skips finite differences on the bowl ("very inaccurate on this problem"): its minimum is
    # 0 for every matrix, so the exact derivative is 0, which the float64 JVP is checked against instead.
    jt = _check_problem(make, args, fd=name != "bowl", float32=name == "beale")
    if name == "bowl":
        assert float(jnp.max(jnp.abs(ravel_pytree(jt)[0]))) < 1e-10


def test_root_solve_config_is_an_implicit_config():
    """The decorators take the ImplicitConfig fields (``linear_solver`` etc.) as keywords."""
    deco = custom_root(lambda x, a: x**2 - a, linear_solver=LU(), root_tol=1e-8)
    f = deco(lambda x0, a: jnp.sqrt(a))
    np.testing.assert_allclose(jax.grad(f, argnums=1)(1.0, 4.0), 0.25)
    with pytest.raises(TypeError):
        custom_root(lambda x, a: x - a, not_a_field=1)
    assert isinstance(ImplicitConfig(), ImplicitConfig)
