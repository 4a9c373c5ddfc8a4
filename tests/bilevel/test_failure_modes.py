"""Issue 8, the bilevel part: no silent failure in the solvers, float32 first-class, typed errors under jit.

Each test names the class of problem it guards against (the issue's item in brackets).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bilevel
from bilevel import (
    CG,
    LBFGS,
    ClosedForm,
    ConvergenceError,
    GradientDescent,
    ImplicitConfig,
    Newton,
    OptaxSolver,
    custom_fixed_point,
    fixed_point_solve,
    minimize,
    root_solve,
    typed_errors,
)
from bilevel import linear_solve as ls

ITERATIVE = ["gmres", "bicgstab", "cg", "normal_cg", "neumann", "lissa"]
DIRECT = ["cholesky", "lu"]
N = 6
A64 = np.diag(np.linspace(1.0, 3.0, N)) + 0.1 * np.ones((N, N))  # SPD, eigenvalues in [1, 3.6]
B_DIR = np.random.default_rng(0).standard_normal(N)
X_REF = np.linalg.solve(A64, B_DIR)  # the solution for b = B_DIR; linear in b


@functools.lru_cache(maxsize=None)
def scaled_runner(name, dtype):
    settings = {"neumann": {"alpha": 0.5, "maxiter": 400}, "lissa": {"scale": 4.0, "depth": 400}}.get(name, {})
    solver = ls.SOLVERS[name](**settings)
    a = jnp.asarray(A64, dtype)

    @jax.jit
    def run(size):
        return solver(lambda v: a @ v, size * jnp.asarray(B_DIR, dtype))

    return run


# --------------------------------------------------------------------------------------------------
# [1] iterative adjoint solvers with tiny right-hand sides


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", ITERATIVE + DIRECT)
def test_solution_is_scale_invariant(name, dtype):
    """|b| ~ 1e-17, 1e-30 or ordinary: the same relative accuracy (jax.scipy's GMRES returned 0 below eps)."""
    run = scaled_runner(name, dtype)
    rtol = 2e-4 if dtype == jnp.float32 else 1e-8
    for size in (1.0, 1e-17, 1e-30, 3e5):
        sol = run(jnp.asarray(size, dtype))
        x = np.asarray(sol.x, np.float64) / size
        assert sol.x.dtype == dtype
        assert np.linalg.norm(x - X_REF) / np.linalg.norm(X_REF) < rtol, (size, x)
        assert float(sol.residual) < rtol, size
    zero = run(jnp.asarray(0.0, dtype))  # b = 0: x = 0 exactly, residual 0
    assert np.all(np.asarray(zero.x) == 0) and float(zero.residual) == 0.0


def _cube_root(x0, a):
    return jax.lax.fori_loop(0, 60, lambda _, x: x - (x**3 - a) / (3 * x**2), x0)


def test_tiny_tangents_through_custom_root_float32_and_float64():
    """Forward tangents ~1e-30 and float32 cotangents ~1e-8 (GMRES, the default adjoint of custom_root)."""
    for dtype in (jnp.float32, jnp.float64):
        a = jnp.asarray([1.0, 8.0, 27.0], dtype)
        init = jnp.ones(3, dtype)
        expected = 1.0 / (3.0 * np.cbrt(np.asarray(a, np.float64)) ** 2)

        def root(a_):
            return root_solve(lambda x, a__: x**3 - a__, _cube_root, init, a_)

        _, t = jax.jit(lambda a_: jax.jvp(root, (a_,), (jnp.full(3, 1e-30, dtype),)))(a)
        np.testing.assert_allclose(np.asarray(t, np.float64) / 1e-30, expected, rtol=1e-4)
        g = jax.jit(jax.grad(lambda a_: 1e-8 * jnp.sum(root(a_))))(a)
        np.testing.assert_allclose(np.asarray(g, np.float64) / 1e-8, expected, rtol=1e-4)


# --------------------------------------------------------------------------------------------------
# [2] root_solve / custom_root check the returned point


def _newton_steps(k):
    def solve(x0, a):
        x = x0
        for _ in range(k):
            x = x - (x**2 - a) / (2 * x)
        return x

    return solve


def test_two_newton_steps_are_not_a_root():
    """The issue's example: two Newton steps for x**2 - 100 from 1 return 26.24; that must not pass."""
    def F(x, a):
        return x**2 - a

    with pytest.raises(ConvergenceError, match="did not return a root"):
        root_solve(F, _newton_steps(2), 1.0, 100.0)
    with pytest.raises(ConvergenceError, match="did not return a root"):
        jax.grad(lambda a: root_solve(F, _newton_steps(2), 1.0, a))(100.0)
    with pytest.raises(ConvergenceError, match="did not return a root"), typed_errors():
        jax.block_until_ready(jax.jit(lambda a: root_solve(F, _newton_steps(2), 1.0, a))(100.0))
    with pytest.warns(RuntimeWarning, match="did not return a root"):
        x = root_solve(F, _newton_steps(2), 1.0, 100.0, config=ImplicitConfig(on_failure="warn"))
    assert abs(float(x) - 26.24) < 0.01
    # converged: passes, with the right derivative; root_tol=inf switches the check off
    np.testing.assert_allclose(root_solve(F, _newton_steps(12), 1.0, 100.0), 10.0, rtol=1e-12)
    np.testing.assert_allclose(jax.grad(lambda a: root_solve(F, _newton_steps(12), 1.0, a))(100.0), 0.05)
    loose = ImplicitConfig(root_tol=float("inf"))
    assert abs(float(root_solve(F, _newton_steps(2), 1.0, 100.0, config=loose)) - 26.24) < 0.01
    # the decorators check too
    with pytest.raises(ConvergenceError, match="did not return a root"):
        bilevel.custom_root(F)(_newton_steps(2))(1.0, 100.0)


def test_root_check_scale_and_fixed_points_at_zero():
    """Relative to the problem's scale: a root at 0 reached to 1e-30 is fine; so are huge scales."""
    def T(x, theta):  # contraction towards theta * 0 = 0
        return 0.5 * x + 0.0 * theta

    def iterate(x0, theta):
        return jax.lax.fori_loop(0, 100, lambda _, x: T(x, theta), x0)

    x = fixed_point_solve(T, iterate, jnp.ones(3), 2.0)
    assert float(jnp.max(jnp.abs(x))) < 1e-25
    # a scale of 1e12: converged roots pass, x = 0.99 * root fails
    def F(x, a):
        return x - a

    big = jnp.asarray([1e12, -3e12])
    np.testing.assert_allclose(root_solve(F, lambda x0, a: a, jnp.zeros(2), big), big)
    with pytest.raises(ConvergenceError):
        root_solve(F, lambda x0, a: 0.99 * a, jnp.zeros(2), big)
    # under vmap one bad element is enough
    with pytest.raises(ConvergenceError):
        jax.vmap(lambda a: custom_fixed_point(T)(lambda x0, t: x0 + t)(jnp.ones(2), a))(jnp.arange(3.0))


# --------------------------------------------------------------------------------------------------
# [3] float32: default tolerances follow the dtype


def _ridge(w, lam, X, y):
    return 0.5 * jnp.mean((X @ w - y) ** 2) + 0.5 * lam * jnp.sum(w**2)


def test_inner_solvers_default_tolerances_work_in_float32():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((40, 5))
    y = X @ rng.standard_normal(5) + 0.1 * rng.standard_normal(40)
    lam = 0.1
    w_ref = np.linalg.solve(X.T @ X / 40 + lam * np.eye(5), X.T @ y / 40)
    X32, y32 = jnp.asarray(X, jnp.float32), jnp.asarray(y, jnp.float32)
    closed = ClosedForm(fn=lambda lam_, X_, y_: jnp.linalg.solve(X_.T @ X_ / 40 + lam_ * jnp.eye(5), X_.T @ y_ / 40))
    import optax

    for solver in (LBFGS(), Newton(), GradientDescent(learning_rate=0.5, maxiter=2000),
                   OptaxSolver(optimizer=optax.adam(0.05), maxiter=3000), closed):
        assert solver.tol is None and solver.resolved_tol(jnp.float32) == pytest.approx(3.45e-4, rel=0.01)
        assert solver.resolved_tol(jnp.float64) == 1e-6
        def fit(l, solver=solver):
            return minimize(_ridge, jnp.zeros(5, jnp.float32), l, X32, y32, solver=solver)

        w, g = jax.jit(lambda l: (fit(l), jax.grad(lambda l_: jnp.sum(fit(l_)))(l)))(jnp.float32(lam))
        assert w.dtype == jnp.float32 and g.dtype == jnp.float32
        np.testing.assert_allclose(w, w_ref, rtol=2e-3, atol=2e-3, err_msg=type(solver).__name__)
        # and the hypergradient, against the closed form in float64
        h = X.T @ X / 40 + lam * np.eye(5)
        np.testing.assert_allclose(g, -np.sum(np.linalg.solve(h, w_ref)), rtol=5e-3, err_msg=type(solver).__name__)


README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")


def _readme_block(marker):
    """The README's python block that contains ``marker`` (the test runs the README's own text)."""
    text = open(README).read()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"README: expected one python block with {marker!r}, found {len(found)}"
    return found[0]


def test_readme_examples_run_in_a_fresh_float32_interpreter():
    """The README's first block (the ridge hypergradient) and its ``custom_root`` block, read from
    README.md and run as written in a fresh interpreter without jax_enable_x64 (one interpreter for
    both: each block is self-contained); the numbers match the float64 closed forms."""
    probe = _readme_block("load_diabetes") + textwrap.dedent(
        """
        assert not jax.config.jax_enable_x64 and log_lam.dtype == jnp.float32
        print("END")
        """
    ) + _readme_block("custom_root")
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    first, second = out.stdout.split("END", 1)
    # the first printed array is the reverse-mode hypergradient; the custom_root block prints 3 numbers
    grad32 = np.asarray(first.split("]", 1)[0].strip(" \n[").split(), dtype=float)
    np.testing.assert_allclose(np.asarray(second.split(), dtype=float), [np.sqrt(2.0), 0.5 / np.sqrt(2.0), 0.5 / np.sqrt(2.0)],
                               rtol=1e-6)

    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    y = y / y.std()
    Xtr, ytr, Xva, yva = X[:300], y[:300], X[300:], y[300:]

    def closed(log_lam):
        w = jnp.linalg.solve(Xtr.T @ Xtr / 300 + jnp.diag(jnp.exp(log_lam)), Xtr.T @ ytr / 300)
        return 0.5 * jnp.mean((Xva @ w - yva) ** 2)

    ref = jax.grad(closed)(jnp.full(10, -3.0))
    np.testing.assert_allclose(grad32, ref, rtol=2e-3, atol=1e-3 * np.abs(ref).max())


# --------------------------------------------------------------------------------------------------
# [4] ConvergenceError under jit


def test_typed_errors_under_jit():
    X = jnp.asarray(np.random.default_rng(2).standard_normal((20, 4)))
    y = jnp.ones(20)

    @jax.jit
    def fit(lam):
        return minimize(_ridge, jnp.zeros(4), lam, X, y, solver=LBFGS(maxiter=1, tol=1e-12))

    with pytest.raises(jax.errors.JaxRuntimeError, match="did not converge"):  # what JAX raises by itself
        jax.block_until_ready(fit(0.1))
    with pytest.raises(ConvergenceError, match="did not converge") as info, typed_errors():
        jax.block_until_ready(fit(0.1))
    assert isinstance(info.value.__cause__, jax.errors.JaxRuntimeError)
    # decorator form, on an adjoint failure inside a jitted gradient
    safe = typed_errors()(jax.jit(jax.grad(
        lambda lam: jnp.sum(minimize(_ridge, jnp.zeros(4), lam, X, y, solver=Newton(),
                                     method=bilevel.Implicit(linear_solver=CG(maxiter=1))))
    )))
    with pytest.raises(ConvergenceError, match="adjoint linear solve"):
        jax.block_until_ready(safe(1e-3))
    # other errors from compiled code pass through untouched
    def boom(x):
        raise ValueError("not ours")

    with pytest.raises(jax.errors.JaxRuntimeError, match="not ours"), typed_errors():
        jax.block_until_ready(jax.jit(lambda x: jax.debug.callback(boom, x) or x)(1.0))


# --------------------------------------------------------------------------------------------------
# [5] mixed float32 / float64 inputs


@pytest.mark.parametrize("solver", [LBFGS(), Newton(), GradientDescent(learning_rate=0.5, maxiter=3000)],
                         ids=["lbfgs", "newton", "gd"])
def test_mixed_precision_inputs(solver):
    """float32 params with float64 data (optax's line search crashed) and the reverse."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((30, 3))
    y = rng.standard_normal(30)
    w_ref = np.linalg.solve(X.T @ X / 30 + 0.1 * np.eye(3), X.T @ y / 30)
    for init, Xa in ((jnp.zeros(3, jnp.float32), jnp.asarray(X)), (jnp.zeros(3), jnp.asarray(X, jnp.float32))):
        def fit(X_, init=init):
            return minimize(_ridge, init, 0.1, X_, jnp.asarray(y), solver=solver)

        w, g = jax.jit(lambda X_: (fit(X_), jax.grad(lambda X__: jnp.sum(fit(X__)))(X_)))(Xa)
        assert w.dtype == init.dtype
        np.testing.assert_allclose(w, w_ref, rtol=2e-3, atol=1e-4)
        assert g.shape == X.shape and bool(jnp.all(jnp.isfinite(g)))
