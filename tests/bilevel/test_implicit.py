"""Implicit differentiation (custom_jvp): closed forms, both AD modes, higher order, closures, failures."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilevel import (
    CG,
    GMRES,
    LU,
    ConvergenceError,
    Implicit,
    ImplicitConfig,
    custom_fixed_point,
    custom_root,
    fixed_point_solve,
    root_solve,
)


def _newton_sqrt(init, a):
    def body(_, x):
        return 0.5 * (x + a / x)

    return jax.lax.fori_loop(0, 60, body, jnp.ones_like(a) * init)


@custom_root(lambda x, a: x**2 - a, linear_solver="lu")
def sqrt_root(init, a):
    return _newton_sqrt(init, a)


def test_root_closed_form_all_modes():
    a = jnp.asarray(4.0)
    expected = 1.0 / (2.0 * jnp.sqrt(a))  # d sqrt(a)/da
    assert jnp.allclose(sqrt_root(1.0, a), 2.0, rtol=1e-12)
    assert jnp.allclose(jax.grad(lambda a: sqrt_root(1.0, a))(a), expected, rtol=1e-12)
    assert jnp.allclose(jax.jacfwd(lambda a: sqrt_root(1.0, a))(a), expected, rtol=1e-12)
    assert jnp.allclose(jax.jacrev(lambda a: sqrt_root(1.0, a))(a), expected, rtol=1e-12)
    # Second derivative: d^2 sqrt(a)/da^2 = -1/4 a^{-3/2}, in every composition of modes.
    d2 = -0.25 * a**-1.5
    assert jnp.allclose(jax.grad(jax.grad(lambda a: sqrt_root(1.0, a)))(a), d2, rtol=1e-10)
    assert jnp.allclose(jax.jacfwd(jax.jacrev(lambda a: sqrt_root(1.0, a)))(a), d2, rtol=1e-10)
    assert jnp.allclose(jax.jacfwd(jax.jacfwd(lambda a: sqrt_root(1.0, a)))(a), d2, rtol=1e-10)


def test_root_vector_jit_vmap():
    a = jnp.array([1.0, 4.0, 9.0, 2.0])
    jac = jax.jacrev(lambda a: sqrt_root(1.0, a))(a)
    assert jnp.allclose(jac, jnp.diag(0.5 / jnp.sqrt(a)), atol=1e-12)
    jac_fwd = jax.jit(jax.jacfwd(lambda a: sqrt_root(1.0, a)))(a)
    assert jnp.allclose(jac_fwd, jac, atol=1e-12)
    per_elem = jax.vmap(jax.grad(lambda s: sqrt_root(1.0, s)))(a)
    loop = jnp.stack([jax.grad(lambda s: sqrt_root(1.0, s))(s) for s in a])
    assert jnp.allclose(per_elem, loop, atol=1e-14)


def test_fixed_point_pytree():
    # x = T(x, theta) with T(x) = 0.5 * A x + b (contraction): x* = (I - 0.5 A)^{-1} b.
    rng = np.random.default_rng(0)
    A = jnp.asarray(rng.normal(size=(4, 4)) * 0.3)
    b = {"u": jnp.asarray(rng.normal(size=2)), "v": jnp.asarray(rng.normal(size=2))}

    def T(x, A, b):
        flat = jnp.concatenate([x["u"], x["v"]])
        out = 0.5 * A @ flat
        return {"u": out[:2] + b["u"], "v": out[2:] + b["v"]}

    def iterate(x0, A, b):
        return jax.lax.fori_loop(0, 200, lambda _, x: T(x, A, b), x0)

    def closed(A, b):
        bb = jnp.concatenate([b["u"], b["v"]])
        return jnp.linalg.solve(jnp.eye(4) - 0.5 * A, bb)

    x0 = jax.tree_util.tree_map(jnp.zeros_like, b)

    def f_ours(A, b):
        x = fixed_point_solve(T, iterate, x0, A, b, config=ImplicitConfig(linear_solver="gmres"))
        return jnp.sum(jnp.concatenate([x["u"], x["v"]]) ** 3)

    def f_ref(A, b):
        return jnp.sum(closed(A, b) ** 3)

    g1, g2 = jax.grad(f_ours, argnums=(0, 1))(A, b), jax.grad(f_ref, argnums=(0, 1))(A, b)
    for l1, l2 in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
        np.testing.assert_allclose(l1, l2, rtol=1e-9, atol=1e-12)

    # The decorator form gives the same numbers.
    deco = custom_fixed_point(T, linear_solver="lu")(iterate)
    x_dec = deco(x0, A, b)
    np.testing.assert_allclose(jnp.concatenate([x_dec["u"], x_dec["v"]]), closed(A, b), rtol=1e-10)


def test_closure_gets_correct_derivative():
    """Arrays captured by closure in the optimality function get real derivatives, not zeros."""
    rng = np.random.default_rng(1)
    M = jnp.asarray(rng.normal(size=(3, 3)))
    H0 = M @ M.T + jnp.eye(3)
    c = jnp.asarray(rng.normal(size=3))

    def solution(H):
        # Quadratic 0.5 x'Hx - c'x: optimality Hx - c, H captured by closure (not an argument).
        def F(x, c_):
            return H @ x - c_

        def solver(x0, c_):
            return jnp.linalg.solve(H, c_)

        return root_solve(F, solver, jnp.zeros(3), c, config=ImplicitConfig(linear_solver="lu"))

    g = jax.grad(lambda H: jnp.sum(solution(H) ** 2))(H0)
    g_ref = jax.grad(lambda H: jnp.sum(jnp.linalg.solve(H, c) ** 2))(H0)
    assert jnp.max(jnp.abs(g)) > 1e-3  # not silently zero
    np.testing.assert_allclose(g, g_ref, rtol=1e-10, atol=1e-12)
    gf = jax.jacfwd(lambda H: jnp.sum(solution(H) ** 2))(H0)
    np.testing.assert_allclose(gf, g_ref, rtol=1e-10, atol=1e-12)


def test_solver_closure_is_not_differentiated():
    """A solver that captures a traced array is fine: the root depends on it only through F."""

    def f(a):
        scale = a * 0.0 + 1.0  # a traced value the solver captures

        def solver(x0, a_):
            return jnp.sqrt(a_) * scale

        return root_solve(lambda x, a_: x**2 - a_, solver, 1.0, a, config=ImplicitConfig(linear_solver="lu"))

    np.testing.assert_allclose(jax.grad(f)(9.0), 1.0 / 6.0, rtol=1e-12)


def test_adjoint_failure_raises_eager_and_jit():
    # Singular Jacobian: F(x, a) = (x - a)^3 has dF/dx = 0 at the root.
    def F(x, a):
        return (x - a) ** 3

    def solver(x0, a):
        return a

    cfg = ImplicitConfig(linear_solver="lu")

    def f(a):
        return root_solve(F, solver, jnp.zeros(2), a, config=cfg).sum()

    a = jnp.array([1.0, 2.0])
    with pytest.raises(ConvergenceError, match="adjoint linear solve"):
        jax.grad(f)(a)
    with pytest.raises(Exception, match="adjoint linear solve"):
        jax.jit(jax.grad(f))(a).block_until_ready()
    # "warn" returns a flagged (non-finite) result with a warning instead.
    cfg_warn = ImplicitConfig(linear_solver="lu", on_failure="warn")
    with pytest.warns(RuntimeWarning, match="adjoint linear solve"):
        jax.grad(lambda a: root_solve(F, solver, jnp.zeros(2), a, config=cfg_warn).sum())(a)


def test_config_validation():
    with pytest.raises(ValueError, match="linear_solver"):
        ImplicitConfig(linear_solver="nope")
    with pytest.raises(TypeError, match="linear_solver"):
        ImplicitConfig(linear_solver=3)
    with pytest.raises(ValueError, match="on_failure"):
        ImplicitConfig(on_failure="explode")
    with pytest.raises(ValueError, match="ridge"):
        ImplicitConfig(linear_solver=CG(ridge=-1.0))
    with pytest.raises(ValueError, match="root_tol"):
        ImplicitConfig(root_tol=0.0)
    with pytest.raises(ValueError, match="root_tol"):
        ImplicitConfig(root_tol=float("nan"))
    with pytest.raises(ValueError, match="symmetric"):
        ImplicitConfig(symmetric="yes")


def test_one_config_object():
    """Implicit is an ImplicitConfig (no copied fields); the default adjoint solver follows symmetry."""
    assert issubclass(Implicit, ImplicitConfig)
    assert [f.name for f in dataclasses.fields(Implicit)] == [f.name for f in dataclasses.fields(ImplicitConfig)]
    assert Implicit().symmetric and Implicit().solver == CG()
    assert ImplicitConfig().solver == GMRES() and ImplicitConfig(symmetric=True).solver == CG()
    assert ImplicitConfig(linear_solver="lu").solver == LU()
    solver = CG(tol=1e-8, maxiter=7, ridge=1e-3)
    assert Implicit(linear_solver=solver).solver is solver


def test_settings_live_in_the_solver_object_only():
    """One place per setting: the adjoint solver's tol / maxiter / ridge are not keywords of Implicit."""
    for kw in ("tol", "maxiter", "ridge", "adjoint_tol"):
        with pytest.raises(TypeError):
            Implicit(**{kw: 1e-3})
        with pytest.raises(TypeError):
            ImplicitConfig(**{kw: 1e-3})
