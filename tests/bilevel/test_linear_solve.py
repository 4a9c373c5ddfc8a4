"""Tests of the adjoint linear solvers in :mod:`bilevel.linear_solve`.

Compilation dominates the run time, so most tests go through one cached, jitted runner per solver
(``runner(name)``: the matrix, right-hand side, ridge and the series scale are traced arguments), and
the loops/vmap comparisons reuse it.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilevel import linear_solve as ls
from bilevel.linear_solve import LinearSolution, as_linear_solver

N = 20  # total size of the system
W_SHAPE = (4, 3)  # the pytree: {"w": (4, 3), "bias": (8,)}
K = int(np.prod(W_SHAPE))

ALL = ["cg", "normal_cg", "gmres", "bicgstab", "cholesky", "lu", "neumann", "lissa"]
GENERAL = ["normal_cg", "gmres", "bicgstab", "lu"]  # non-symmetric systems
TOL = {  # on the relative error vs numpy.linalg.solve (float64)
    "cg": 1e-7,
    "normal_cg": 1e-7,
    "gmres": 1e-7,
    "bicgstab": 1e-7,
    "cholesky": 1e-10,
    "lu": 1e-10,
    "neumann": 1e-6,
    "lissa": 1e-6,
}
STATIC = {"neumann": {"maxiter": 500, "tol": 1e-13}, "lissa": {"depth": 600}}


def make(name, **settings):
    """The solver ``name`` with the given settings, dropping those it does not have (e.g. tol for LU)."""
    cls = ls.SOLVERS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in settings.items() if k in fields})


# --------------------------------------------------------------------------------------------------
# helpers: systems given as pytrees


def to_tree(v):
    return {"w": v[:K].reshape(W_SHAPE), "bias": v[K:]}


def to_flat(t):
    return jnp.concatenate([t["w"].ravel(), t["bias"]])


def tree_matvec(a):
    a = jnp.asarray(a)
    return lambda t: to_tree(a @ to_flat(t))


def spd_matrix(seed, n=N):
    """A = M M^T / n + I: SPD with eigenvalues in [1, ~5]."""
    m = np.random.default_rng(seed).standard_normal((n, n))
    return m @ m.T / n + np.eye(n)


def nonsym_matrix(seed, n=N):
    """SPD part plus a sizeable skew-symmetric part: non-symmetric, non-singular."""
    k = np.random.default_rng(seed).standard_normal((n, n))
    return spd_matrix(seed + 1000, n) + (k - k.T) / np.sqrt(n)


def lam_max(a):
    return float(np.max(np.abs(np.linalg.eigvals(a))))


def dyn_kwargs(name, a_ridged):
    """Traced options of the series solvers, adapted to the (ridged) matrix."""
    if name == "neumann":
        return {"alpha": 1.0 / lam_max(a_ridged)}
    if name == "lissa":
        return {"scale": 1.1 * lam_max(a_ridged)}
    return {}


@functools.lru_cache(maxsize=None)
def runner(name, static=()):
    """jit(a, b_flat, ridge, dyn, x0_flat=None) -> (x_flat, residual), solving on the dict pytree."""
    kw = {**STATIC.get(name, {}), **dict(static)}

    def run(a, b_flat, ridge, dyn, x0_flat=None):
        x0 = None if x0_flat is None else to_tree(x0_flat)
        solver = make(name, ridge=ridge, **dyn, **kw)
        sol = solver(lambda t: to_tree(a @ to_flat(t)), to_tree(b_flat), x0)
        assert isinstance(sol, LinearSolution)
        assert jax.tree_util.tree_structure(sol.x) == jax.tree_util.tree_structure(to_tree(b_flat))
        assert sol.x["w"].shape == W_SHAPE and sol.x["bias"].shape == (N - K,)
        assert sol.residual.shape == ()
        return to_flat(sol.x), sol.residual

    return jax.jit(run)


def rel_err(x, x_ref):
    return np.linalg.norm(np.asarray(x) - x_ref) / np.linalg.norm(x_ref)


# --------------------------------------------------------------------------------------------------
# accuracy on SPD and non-symmetric systems


@pytest.mark.parametrize("name", ALL)
def test_spd_pytree_matches_numpy(name):
    a = spd_matrix(0)
    b = np.random.default_rng(1).standard_normal(N)
    for ridge in (0.0, 0.5):
        a_ridged = a + ridge * np.eye(N)
        x_ref = np.linalg.solve(a_ridged, b)
        x, res = runner(name)(a, b, ridge, dyn_kwargs(name, a_ridged))
        assert rel_err(x, x_ref) < TOL[name], ridge
        assert float(res) < TOL[name], ridge
        # the reported residual is the true relative residual of the ridged system
        true_res = np.linalg.norm(a_ridged @ np.asarray(x) - b) / np.linalg.norm(b)
        np.testing.assert_allclose(float(res), true_res, rtol=1e-3, atol=1e-15)


@pytest.mark.parametrize("name", GENERAL)
def test_nonsymmetric_matches_numpy(name):
    a = nonsym_matrix(2)
    assert np.abs(a - a.T).max() > 0.1
    b = np.random.default_rng(3).standard_normal(N)
    for ridge in (0.0, 0.5):
        x_ref = np.linalg.solve(a + ridge * np.eye(N), b)
        x, res = runner(name)(a, b, ridge, {})
        assert rel_err(x, x_ref) < TOL[name]
        assert float(res) < TOL[name]


@pytest.mark.parametrize("name", ["cg", "cholesky"])
def test_symmetric_solvers_fail_visibly_on_nonsymmetric(name):
    """Sanity check that the non-symmetric test system discriminates; the residual shows it."""
    a = nonsym_matrix(2)
    b = np.random.default_rng(3).standard_normal(N)
    x, res = runner(name)(a, b, 0.0, {})
    assert not rel_err(x, np.linalg.solve(a, b)) < 1e-3
    assert not float(res) < 1e-3


@pytest.mark.parametrize("name", ALL)
def test_float32(name):
    a = spd_matrix(6)
    b = np.random.default_rng(7).standard_normal(N)
    x_ref = np.linalg.solve(a, b)
    x, res = runner(name, (("tol", 1e-6),))(
        jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), 0.0, dyn_kwargs(name, a)
    )
    assert x.dtype == jnp.float32 and res.dtype == jnp.float32
    assert rel_err(x, x_ref) < 1e-4
    assert float(res) < 1e-4


@pytest.mark.parametrize("name", ALL)
def test_zero_rhs_gives_zero(name):
    a = spd_matrix(8)
    x, res = runner(name)(a, np.zeros(N), 0.0, dyn_kwargs(name, a))
    np.testing.assert_array_equal(x, np.zeros(N))
    assert float(res) == 0.0


@pytest.mark.parametrize("name", ["cholesky", "lissa"])
def test_single_array_and_tuple_rhs(name):
    a = spd_matrix(4)
    b = np.random.default_rng(5).standard_normal(N)
    x_ref = np.linalg.solve(a, b)
    solver = make(name, **STATIC.get(name, {}), **dyn_kwargs(name, a))

    def run(a, b):
        single = solver(lambda v: a @ v, b)
        tup = solver(lambda t: (lambda y: (y[:7], y[7:]))(a @ jnp.concatenate(t)), (b[:7], b[7:]))
        return single, tup

    single, tup = jax.jit(run)(a, b)
    assert single.x.shape == (N,)
    assert rel_err(single.x, x_ref) < TOL[name]
    assert isinstance(tup.x, tuple) and tup.x[0].shape == (7,) and tup.x[1].shape == (N - 7,)
    assert rel_err(jnp.concatenate(tup.x), x_ref) < TOL[name]


@pytest.mark.parametrize("name", ["cg", "neumann"])
def test_x0_at_solution_is_kept(name):
    a = spd_matrix(9)
    b = np.random.default_rng(10).standard_normal(N)
    x_ref = np.linalg.solve(a, b)
    x, res = runner(name, (("maxiter", 1),))(a, b, 0.0, dyn_kwargs(name, a), x_ref)
    assert rel_err(x, x_ref) < 1e-12
    assert float(res) < 1e-12


def test_neumann_x0_helps():
    a = spd_matrix(9)
    b = np.random.default_rng(10).standard_normal(N)
    x_ref = np.linalg.solve(a, b)
    near = x_ref + 1e-3 * np.random.default_rng(11).standard_normal(N)
    run = runner("neumann", (("maxiter", 1),))
    cold, _ = run(a, b, 0.0, dyn_kwargs("neumann", a))
    warm, _ = run(a, b, 0.0, dyn_kwargs("neumann", a), near)
    assert rel_err(warm, x_ref) < 1e-2 * rel_err(cold, x_ref)


def test_neumann_is_the_truncated_series():
    a = spd_matrix(12)
    b = np.random.default_rng(13).standard_normal(N)
    alpha, k = 0.1, 5
    m = np.eye(N) - alpha * a
    expected = alpha * sum(np.linalg.matrix_power(m, j) @ b for j in range(k + 1))
    sol = ls.Neumann(alpha=alpha, maxiter=k, tol=0.0)(lambda v: jnp.asarray(a) @ v, jnp.asarray(b))
    np.testing.assert_allclose(sol.x, expected, rtol=1e-12)


def test_neumann_stops_early():
    """With a loose tol the early stop triggers: fewer terms than maxiter are summed."""
    a = 0.5 * np.eye(4)
    b = jnp.ones(4)
    # alpha = 1: terms are 0.5^k, the k-th term is below 1e-3 * ||x|| (~2) after ~11 terms
    early = ls.Neumann(alpha=1.0, maxiter=100, tol=1e-3)(lambda v: jnp.asarray(a) @ v, b)
    full = ls.Neumann(alpha=1.0, maxiter=100, tol=0.0)(lambda v: jnp.asarray(a) @ v, b)
    assert 1e-5 < float(early.residual) < 1e-2
    assert float(full.residual) < 1e-14


def test_lissa_is_the_recursion():
    a = spd_matrix(12)
    b = np.random.default_rng(13).standard_normal(N)
    s, depth, ridge = 7.0, 6, 0.3
    ar = a + ridge * np.eye(N)
    x = b.copy()
    for _ in range(depth):
        x = b + x - ar @ x / s
    mv = lambda v: jnp.asarray(a) @ v
    sol = ls.LiSSA(ridge=ridge, scale=s, depth=depth)(mv, jnp.asarray(b))
    np.testing.assert_allclose(sol.x, x / s, rtol=1e-12)


# --------------------------------------------------------------------------------------------------
# LiSSA stochastic mode


def test_lissa_stochastic_minibatch_hessian():
    """Mini-batch Hessian estimates of a least-squares problem; also jit + vmap over keys, traced ridge."""
    rng = np.random.default_rng(0)
    n_samples, dim, batch, ridge = 400, 6, 40, 0.1
    feats = jnp.asarray(rng.standard_normal((n_samples, dim)) * np.linspace(0.7, 1.3, dim))
    hess = feats.T @ feats / n_samples  # Hessian of 1/(2N) ||X w - y||^2

    def sample_matvec(v, key):
        idx = jax.random.randint(key, (batch,), 0, n_samples)  # uniform with replacement: unbiased
        xb = feats[idx]
        return xb.T @ (xb @ v) / batch

    b = jnp.asarray(rng.standard_normal(dim))
    x_ref = np.linalg.solve(np.asarray(hess) + ridge * np.eye(dim), np.asarray(b))

    @jax.jit
    def run(key, ridge):
        kw = dict(ridge=ridge, scale=10.0, depth=300)
        sto = ls.LiSSA(key=key, repeats=8, **kw)(lambda v: hess @ v, b, sample_matvec=sample_matvec)
        det = ls.LiSSA(**kw)(lambda v: hess @ v, b)
        return sto, det

    sol, det = run(jax.random.PRNGKey(0), ridge)
    assert rel_err(sol.x, x_ref) < 0.05
    assert float(sol.residual) < 0.1
    # the deterministic recursion converges; the stochastic one really used the samples
    assert rel_err(det.x, x_ref) < 1e-6
    assert not np.allclose(sol.x, det.x, rtol=1e-6)
    # vmap over keys = loop over keys; different keys give different (still close) estimates
    keys = jnp.stack([jax.random.PRNGKey(0), jax.random.PRNGKey(1)])
    batched, _ = jax.vmap(run, in_axes=(0, None))(keys, ridge)
    np.testing.assert_allclose(batched.x[0], sol.x, rtol=1e-9)
    np.testing.assert_allclose(batched.residual[0], sol.residual, rtol=1e-9)
    assert not np.allclose(batched.x[0], batched.x[1])
    assert rel_err(batched.x[1], x_ref) < 0.05


def test_mixed_precision_pytree():
    """Leaves of different float dtypes keep their dtypes (Krylov methods run in the promoted dtype)."""
    a = spd_matrix(40, n=5)
    b = {"lo": jnp.ones(2, jnp.float32), "hi": jnp.arange(1.0, 4.0)}

    def mv(t):
        y = jnp.asarray(a) @ jnp.concatenate([t["lo"].astype(jnp.float64), t["hi"]])
        return {"lo": y[:2].astype(jnp.float32), "hi": y[2:]}

    sol = jax.jit(lambda b: ls.CG(tol=1e-12)(mv, b))(b)
    assert sol.x["lo"].dtype == jnp.float32 and sol.x["hi"].dtype == jnp.float64
    x_ref = np.linalg.solve(a, np.r_[1.0, 1.0, 1.0, 2.0, 3.0])
    assert rel_err(np.r_[sol.x["lo"], sol.x["hi"]], x_ref) < 1e-6
    assert float(sol.residual) < 1e-6


def test_lissa_uses_sample_matvec_and_fresh_keys():
    """Every step sees a new key; a biased sampler gives the biased answer and a large exact residual."""
    a = jnp.asarray(spd_matrix(20, n=5))
    b = jnp.ones(5)
    seen = []

    def sample_matvec(v, key):
        jax.debug.callback(lambda k: seen.append(np.asarray(k).tobytes()), jax.random.key_data(key))
        return 2.0 * (a @ v)

    sol = ls.LiSSA(key=jax.random.PRNGKey(3), scale=25.0, depth=400, repeats=2)(
        lambda v: a @ v, b, sample_matvec=sample_matvec
    )
    jax.effects_barrier()
    assert len(seen) == 800 and len(set(seen)) == 800
    np.testing.assert_allclose(sol.x, np.linalg.solve(2 * np.asarray(a), np.ones(5)), rtol=1e-6)
    assert float(sol.residual) > 0.4  # residual is measured with the exact matvec


# --------------------------------------------------------------------------------------------------
# jit / vmap


@pytest.mark.parametrize("name", ALL)
def test_jit_and_vmap_match_loop(name):
    a = spd_matrix(14)
    dyn = dyn_kwargs(name, a + 0.5 * np.eye(N))
    bs = np.random.default_rng(15).standard_normal((4, N))
    run = runner(name)

    loop_x = np.stack([np.asarray(run(a, b, 0.5, dyn)[0]) for b in bs])

    vm_x, vm_r = jax.vmap(run, in_axes=(None, 0, None, None))(a, bs, 0.5, dyn)
    assert vm_x.shape == (4, N) and vm_r.shape == (4,)
    np.testing.assert_allclose(vm_x, loop_x, rtol=1e-8, atol=1e-10)
    assert np.all(np.asarray(vm_r) < TOL[name])
    for b, x in zip(bs, loop_x):
        assert rel_err(x, np.linalg.solve(a + 0.5 * np.eye(N), b)) < TOL[name]


@pytest.mark.parametrize("name", [n for n in ALL if n != "gmres"])  # gmres: slowest to compile, JAX's own loop
def test_vmap_over_batched_operators(name):
    """vmap over matvecs that close over batched arrays (and batched right-hand sides)."""
    mats = np.stack([spd_matrix(30 + i) for i in range(4)])
    bs = np.random.default_rng(16).standard_normal((4, N))
    dyn = dyn_kwargs(name, np.eye(N) * 6.0)  # all eigenvalues are below 6: one alpha/scale for all
    xs, res = jax.vmap(runner(name), in_axes=(0, 0, None, None))(mats, bs, 0.1, dyn)
    for i in range(4):
        x_ref = np.linalg.solve(mats[i] + 0.1 * np.eye(N), bs[i])
        assert rel_err(xs[i], x_ref) < TOL[name]
        assert res[i] < TOL[name]


@pytest.mark.parametrize("name", ["cg", "cholesky"])
def test_inside_custom_linear_solve_and_grad(name):
    """The solvers serve as the ``solve`` of ``lax.custom_linear_solve``; gradients flow through."""
    a = jnp.asarray(spd_matrix(21))
    solver = ls.SOLVERS[name]()

    def f(b):
        x = jax.lax.custom_linear_solve(lambda v: a @ v, b, solve=lambda mv, rhs: solver(mv, rhs).x, symmetric=True)
        return jnp.sum(x**2)

    b = jnp.asarray(np.random.default_rng(22).standard_normal(N))
    ainv = np.linalg.inv(np.asarray(a))
    np.testing.assert_allclose(jax.jit(jax.grad(f))(b), 2 * ainv.T @ (ainv @ np.asarray(b)), rtol=1e-7)


# --------------------------------------------------------------------------------------------------
# non-convergence is reported, not hidden


def ill_conditioned(n=N, cond=1e6, seed=23):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return q @ np.diag(np.logspace(0, np.log10(cond), n)) @ q.T


def test_cg_few_iterations_reports_large_residual():
    a = ill_conditioned()
    b = np.random.default_rng(24).standard_normal(N)
    x, res = runner("cg", (("maxiter", 2),))(a, b, 0.0, {})
    assert np.isfinite(float(res)) and float(res) > 1e-3
    # with enough iterations it converges, so the check above is meaningful
    x, res = runner("cg")(a, b, 0.0, {})
    assert float(res) < 1e-6


def test_gmres_few_restarts_reports_large_residual():
    a = ill_conditioned()
    b = np.random.default_rng(24).standard_normal(N)
    sol = ls.GMRES(maxiter=1, restart=2)(lambda v: jnp.asarray(a) @ v, jnp.asarray(b))
    assert float(sol.residual) > 1e-3


def test_series_solvers_diverge_visibly():
    a = spd_matrix(25)
    b = np.random.default_rng(26).standard_normal(N)
    lam = lam_max(a)
    # |1 - alpha * lam_max| = 9: the terms overflow to inf within the 500 terms
    _, res = runner("neumann")(a, b, 0.0, {"alpha": 10.0 / lam})
    assert not np.isfinite(float(res))
    _, res = runner("lissa")(a, b, 0.0, {"scale": 0.1 * lam})
    assert not np.isfinite(float(res))
    # mildly too large alpha, few terms: finite but large residual
    _, res = runner("neumann", (("maxiter", 30),))(a, b, 0.0, {"alpha": 2.5 / lam})
    assert np.isfinite(float(res)) and float(res) > 1.0


def test_direct_solvers_report_failure_as_non_finite():
    b = np.random.default_rng(27).standard_normal(N)
    indefinite = np.diag(np.r_[-np.ones(5), np.ones(N - 5)])
    _, res = runner("cholesky")(indefinite, b, 0.0, {})
    assert not np.isfinite(float(res))
    _, res = runner("lu")(np.zeros((N, N)), b, 0.0, {})
    assert not np.isfinite(float(res))


@pytest.mark.parametrize("name", ALL)
def test_nan_operator_gives_nan_residual(name):
    a = np.full((N, N), np.nan)
    _, res = runner(name)(a, np.ones(N), 0.0, dyn_kwargs(name, np.eye(N)))
    assert np.isnan(float(res))


# --------------------------------------------------------------------------------------------------
# argument validation and registry


def test_solvers_registry_and_as_linear_solver():
    assert list(ls.SOLVERS) == ALL
    assert as_linear_solver("cg") == ls.CG() and as_linear_solver("lissa") == ls.LiSSA()
    assert as_linear_solver(ls.GMRES) == ls.GMRES()
    obj = ls.CG(tol=1e-6, ridge=0.1)
    assert as_linear_solver(obj) is obj
    custom = lambda matvec, b: LinearSolution(b, jnp.asarray(0.0))
    wrapped = as_linear_solver(custom)
    assert isinstance(wrapped, ls.FunctionSolver) and wrapped.fn is custom
    with pytest.raises(ValueError, match="linear_solver") as info:
        as_linear_solver("conjugate_gradient")
    assert "'cg'" in str(info.value) and "'lissa'" in str(info.value)
    with pytest.raises(TypeError, match="linear_solver"):
        as_linear_solver(3)


def test_function_solver_may_return_a_bare_solution():
    """A jaxopt-style solve function returning x only gets its residual measured here."""
    a = jnp.asarray(spd_matrix(3, n=5))
    b = jnp.arange(1.0, 6.0)
    solver = as_linear_solver(lambda mv, rhs: jnp.linalg.solve(a, rhs))
    sol = solver(lambda v: a @ v, b)
    np.testing.assert_allclose(sol.x, np.linalg.solve(np.asarray(a), np.asarray(b)), rtol=1e-12)
    assert float(sol.residual) < 1e-13
    wrong = as_linear_solver(lambda mv, rhs: rhs[:2])
    with pytest.raises(ValueError, match="LinearSolution or a pytree like b"):
        wrong(lambda v: a @ v, b)


@pytest.mark.parametrize("name", ALL)
def test_field_validation(name):
    cls = ls.SOLVERS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    with pytest.raises(ValueError, match="ridge"):
        cls(ridge=-0.1)
    with pytest.raises(ValueError, match="ridge"):
        cls(ridge=np.float64(-1.0))
    with pytest.raises(ValueError, match="ridge"):
        cls(ridge=float("nan"))
    if "maxiter" in fields:
        with pytest.raises(ValueError, match="maxiter"):
            cls(maxiter=0)
        with pytest.raises(ValueError, match="maxiter"):
            cls(maxiter=2.5)
    if "tol" in fields:
        with pytest.raises(ValueError, match="tol"):
            cls(tol=-1.0)
        with pytest.raises(ValueError, match="tol"):
            cls(tol="small")
    solver = cls()
    mv = lambda v: v
    with pytest.raises(ValueError, match="x0"):
        solver(mv, jnp.ones(3), jnp.ones(4))
    with pytest.raises(ValueError, match="'b' must"):
        solver(mv, jnp.ones(3, dtype=jnp.int32))
    with pytest.raises(TypeError, match="matvec"):
        solver(None, jnp.ones(3))
    with pytest.raises(dataclasses.FrozenInstanceError):
        solver.ridge = 1.0


def test_solver_specific_validation():
    with pytest.raises(ValueError, match="alpha"):
        ls.Neumann(alpha=0.0)
    with pytest.raises(ValueError, match="scale"):
        ls.LiSSA(scale=-1.0)
    with pytest.raises(ValueError, match="depth"):
        ls.LiSSA(depth=0)
    with pytest.raises(ValueError, match="repeats"):
        ls.LiSSA(repeats=0)
    with pytest.raises(ValueError, match="batch_size"):
        ls.LiSSA(batch_size=0)
    with pytest.raises(ValueError, match="key"):
        ls.LiSSA()(lambda v: v, jnp.ones(3), sample_matvec=lambda v, k: v)
    with pytest.raises(ValueError, match="restart"):
        ls.GMRES(restart=0)
    with pytest.raises(ValueError, match="solve_method"):
        ls.GMRES(solve_method="qr")


def test_tolerances_follow_the_dtype():
    """tol=None resolves to eps**(2/3) of b's dtype; the failure threshold to max(100 tol, eps**(1/3))."""
    for dtype, tol, floor in ((jnp.float64, 3.7e-11, 6.1e-6), (jnp.float32, 2.4e-5, 4.9e-3)):
        assert ls.default_tol(dtype) == pytest.approx(tol, rel=0.02)
        assert ls.failure_floor(dtype) == pytest.approx(floor, rel=0.02)
        assert ls.CG().resolved_tol(dtype) == ls.default_tol(dtype)
        assert ls.CG().failure_tol(dtype) == pytest.approx(max(100 * tol, floor), rel=0.02)
        assert ls.CG(tol=1e-3).failure_tol(dtype) == pytest.approx(0.1)
        assert ls.Cholesky().failure_tol(dtype) == ls.failure_floor(dtype)
    assert ls.LiSSA(batch_size=4).failure_tol(jnp.float64) == 1.0
    assert ls.LiSSA().failure_tol(jnp.float64) == ls.failure_floor(jnp.float64)


def test_legacy_get_solver_adapter():
    """The pre-object signature solve(matvec, b, *, ridge, tol, maxiter) still works (for old callers)."""
    a = jnp.asarray(spd_matrix(5, n=6))
    b = jnp.ones(6)
    ref = np.linalg.solve(np.asarray(a) + 0.5 * np.eye(6), np.ones(6))
    for name in ("cg", "cholesky"):
        sol = ls.get_solver(name)(lambda v: a @ v, b, ridge=0.5, tol=1e-12, maxiter=50)
        np.testing.assert_allclose(sol.x, ref, rtol=1e-9)
    with pytest.raises(ValueError, match="restart"):
        ls.get_solver("cg")(lambda v: a @ v, b, restart=3)
