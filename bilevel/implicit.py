r"""Implicit differentiation of a root or fixed point, as a ``jax.custom_jvp``.

Let :math:`x^\star(\theta)` solve :math:`F(x^\star, \theta) = 0` with :math:`\partial_x F` invertible.
The implicit function theorem gives the tangent of the solution along :math:`\dot\theta`:

.. math::  \partial_x F \, \dot x = -\,\partial_\theta F \, \dot\theta .

We state *only* this JVP. The linear solve in it is a :func:`jax.lax.custom_linear_solve`, which JAX
knows how to transpose (using the adjoint system :math:`(\partial_x F)^\top u = \bar x`), so reverse mode
(``grad``, ``jacrev``, VJPs) is derived from the same rule, forward mode (``jvp``, ``jacfwd``) comes for
free, and higher derivatives (Hessians, hypergradients of hypergradients) work because the rule is
itself written in differentiable JAX and calls the differentiable solution map recursively. This is the
design of optimistix's ``implicit_jvp``; jaxopt's ``custom_root`` uses a reverse-only ``custom_vjp``.

Closures. The optimality function is closure-converted (:func:`jax.closure_convert`): any tracer it
captures (e.g. training data being differentiated by an outer ``grad``) becomes an explicit,
differentiable argument, so captured arrays get correct derivatives instead of silent zeros. The solver
is closure-converted too, but its captured tracers are treated as constants: by the implicit function
theorem the solution depends on them only through :math:`F`.

Failures. When the adjoint linear solve does not reach ``adjoint_tol`` (relative residual) or returns
NaN/inf, a :class:`~bilevel._checks.ConvergenceError` is raised (``on_failure="raise"``), under ``jit``
too, or a warning is issued (``"warn"``).

References: Krantz & Parks, *The Implicit Function Theorem* (2002); Blondel et al., *Efficient and
Modular Implicit Differentiation*, NeurIPS 2022; Rader et al., *Optimistix* (2024).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from bilevel._checks import ConvergenceError, OnFailure, check_on_failure, error_if
from bilevel.linear_solve import get_solver

__all__ = [
    "ImplicitConfig",
    "root_solve",
    "fixed_point_solve",
    "custom_root",
    "custom_fixed_point",
]


@dataclasses.dataclass(frozen=True)
class ImplicitConfig:
    r"""How the adjoint (tangent) linear system of the IFT is solved.

    Attributes:
      linear_solver: a name from :data:`bilevel.linear_solve.SOLVERS` or a callable with the shared
        signature ``solve(matvec, b, *, ridge, tol, maxiter) -> LinearSolution``.
      symmetric: whether :math:`\partial_x F` is symmetric (true for gradients of a loss: the
        Hessian); lets the transpose reuse the same solve.
      ridge: Tikhonov damping added to :math:`\partial_x F` (use for nearly singular Hessians).
      tol: relative-residual tolerance passed to iterative solvers.
      adjoint_tol: relative residual above which the solve counts as failed (defaults to
        ``max(100 * tol, 1e-5)``; direct solvers hit ~1e-12 anyway).
      maxiter: iteration cap for iterative solvers (``None``: the solver's default).
      on_failure: ``"raise"``, ``"warn"`` or ``"ignore"`` when the adjoint solve fails.
    """

    linear_solver: str | Callable = "gmres"
    symmetric: bool = False
    ridge: float = 0.0
    tol: float = 1e-10
    adjoint_tol: float | None = None
    maxiter: int | None = None
    on_failure: OnFailure = "raise"

    def __post_init__(self):
        get_solver(self.linear_solver)  # validates the name early
        check_on_failure(self.on_failure)
        if self.ridge < 0:
            raise ValueError(f"ridge must be >= 0, got {self.ridge}")

    @property
    def failure_tol(self) -> float:
        return self.adjoint_tol if self.adjoint_tol is not None else max(100.0 * self.tol, 1e-5)

    def linear_solve(self, matvec, b):
        """Solve ``(A + ridge I) x = b`` and check the result (the ``solve`` of custom_linear_solve)."""
        solver = get_solver(self.linear_solver)
        kwargs = {"ridge": self.ridge, "tol": self.tol}
        if self.maxiter is not None:
            kwargs["maxiter"] = self.maxiter
        sol = solver(matvec, b, **kwargs)
        failed = jnp.logical_not(sol.residual <= self.failure_tol)  # NaN counts as failed
        name = getattr(solver, "__name__", repr(solver))
        return error_if(
            sol.x,
            failed,
            "implicit differentiation: the adjoint linear solve ({solver}) did not converge: relative "
            "residual {residual:.3e} > adjoint_tol {tol:.1e} (NaN means non-finite values). Try another "
            "linear_solver, more maxiter, or ridge > 0 for a (nearly) singular Jacobian.",
            on_failure=self.on_failure,
            error=ConvergenceError,
            fmt_args={"solver": name, "residual": sol.residual, "tol": self.failure_tol},
        )


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _implicit_solution(optimality_fn, solver_fn, config, init, args, fn_consts, solver_consts):
    del optimality_fn, config, fn_consts
    return solver_fn(init, *args, *jax.lax.stop_gradient(solver_consts))


@_implicit_solution.defjvp
def _implicit_solution_jvp(optimality_fn, solver_fn, config, primals, tangents):
    init, args, fn_consts, solver_consts = primals
    _, t_args, t_fn_consts, _ = tangents
    # Recursive call: the primal solution stays differentiable, so higher derivatives work.
    x = _implicit_solution(optimality_fn, solver_fn, config, init, args, fn_consts, solver_consts)

    def residual(x_, args_, consts_):
        return optimality_fn(x_, *args_, *consts_)

    # -d_theta F . theta_dot  (linear in the tangents, hence transposable for reverse mode)
    _, rhs = jax.jvp(lambda a, c: residual(x, a, c), (args, fn_consts), (t_args, t_fn_consts))

    # The system is solved on flat vectors: custom_linear_solve's transpose rule needs every leaf of
    # the right-hand side to be linear in the tangents, and a pytree can mix linear leaves with
    # constant-zero ones (e.g. an intercept whose gradient does not depend on a regularizer).
    flat_x, unravel = ravel_pytree(x)
    flat_rhs = ravel_pytree(rhs)[0]

    def matvec(v):
        tangent = jax.jvp(lambda x_: residual(x_, args, fn_consts), (x,), (unravel(v),))[1]
        return ravel_pytree(tangent)[0]

    t_flat = jax.lax.custom_linear_solve(
        matvec,
        -flat_rhs.astype(flat_x.dtype),
        solve=config.linear_solve,
        transpose_solve=config.linear_solve,
        symmetric=config.symmetric,
    )
    return x, unravel(t_flat)


def _as_jax_args(args):
    def conv(a):
        if isinstance(a, (bool, int, float, complex)):
            return jnp.asarray(a)
        return a

    return jax.tree_util.tree_map(conv, args)


def root_solve(
    optimality_fn: Callable,
    solver: Callable,
    init: Any,
    *args: Any,
    config: ImplicitConfig | None = None,
):
    r"""Solve :math:`F(x, \theta) = 0` with ``solver`` and differentiate the root implicitly.

    Args:
      optimality_fn: ``F(x, *args) -> pytree`` with the structure of ``x``.
      solver: ``solver(init, *args) -> x`` returning a root of ``F`` (any algorithm, even
        non-differentiable ones: its internals are never differentiated).
      init: initial guess (gets no derivative).
      *args: the differentiable parameters :math:`\theta` (pytrees of arrays).
      config: :class:`ImplicitConfig` for the adjoint solve.

    Returns:
      The root, differentiable in ``args`` (and in any arrays ``optimality_fn`` closes over) in
      forward and reverse mode, to any order.
    """
    config = config or ImplicitConfig()
    args = _as_jax_args(args)
    fn_conv, fn_consts = jax.closure_convert(optimality_fn, init, *args)
    solver_conv, solver_consts = jax.closure_convert(solver, init, *args)
    return _implicit_solution(
        fn_conv, solver_conv, config, init, tuple(args), tuple(fn_consts), tuple(solver_consts)
    )


def fixed_point_solve(
    fixed_point_fn: Callable,
    solver: Callable,
    init: Any,
    *args: Any,
    config: ImplicitConfig | None = None,
):
    r"""Like :func:`root_solve` for a fixed point :math:`x = T(x, \theta)`, i.e. :math:`F = T(x,\theta) - x`."""

    def optimality_fn(x, *a):
        return jax.tree_util.tree_map(jnp.subtract, fixed_point_fn(x, *a), x)

    return root_solve(optimality_fn, solver, init, *args, config=config)


def custom_root(optimality_fn: Callable, **config_kwargs):
    """Decorator: make ``solver(init, *args) -> x`` implicitly differentiable through ``F(x, *args) = 0``.

    In the style of jaxopt's ``custom_root``, but forward and reverse mode both work::

        @custom_root(lambda x, a: x**2 - a, linear_solver="lu")
        def sqrt(init, a):
            return newton_iterations(init, a)   # any algorithm

        jax.jacfwd(lambda a: sqrt(1.0, a))(4.0)  # == 1 / (2 * sqrt(4))

    ``config_kwargs`` are the fields of :class:`ImplicitConfig`.
    """
    config = ImplicitConfig(**config_kwargs)

    def decorator(solver):
        @functools.wraps(solver)
        def wrapped(init, *args):
            return root_solve(optimality_fn, solver, init, *args, config=config)

        return wrapped

    return decorator


def custom_fixed_point(fixed_point_fn: Callable, **config_kwargs):
    """Decorator: like :func:`custom_root` for fixed points ``x = T(x, *args)``."""
    config = ImplicitConfig(**config_kwargs)

    def decorator(solver):
        @functools.wraps(solver)
        def wrapped(init, *args):
            return fixed_point_solve(fixed_point_fn, solver, init, *args, config=config)

        return wrapped

    return decorator
