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

Failures (policy ``on_failure`` of :class:`ImplicitConfig`: raise a
:class:`~bilevel.ConvergenceError`, also under ``jit``, warn, or ignore):

- *Not a root.* The solver's output :math:`x` is checked: with the affine model
  :math:`F(x) = Jx + c` at :math:`x` (:math:`J = \partial_x F`, one JVP), the residual must satisfy

  .. math:: \lVert F(x)\rVert \le \texttt{root\_tol}\cdot
            \max\bigl(\lVert F(x_0)\rVert,\ \lVert Jx\rVert + \lVert F(x) - Jx\rVert\bigr),

  i.e. be small relative to the sizes of the two terms of :math:`F` (and to the initial residual at
  ``init``, which sets the scale of a root at zero). ``root_tol`` defaults to
  :math:`\varepsilon^{1/3}` of the dtype (6.1e-6 in float64, 4.9e-3 in float32). Two Newton steps for
  :math:`x^2 - 100` from 1 (:math:`x = 26.2`) fail with a relative residual of 0.27.
- *Adjoint solve.* The linear solve of the tangent system is checked by
  :func:`bilevel.linear_solve.check_solution` (relative residual above the solver's
  :meth:`~bilevel.linear_solve.LinearSolver.failure_tol`, or NaN/inf).

References: Krantz & Parks, *The Implicit Function Theorem* (2002); Blondel et al., *Efficient and
Modular Implicit Differentiation*, NeurIPS 2022; Rader et al., *Optimistix* (2024).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax.tree_utils as otu
from jax.flatten_util import ravel_pytree

from bilevel._checks import ConvergenceError, OnFailure, check_on_failure, error_if
from bilevel.linear_solve import (
    CG,
    GMRES,
    LinearSolver,
    LinearSolverLike,
    as_linear_solver,
    check_solution,
    failure_floor,
)
from bilevel.linear_solve.base import _norm

__all__ = [
    "ImplicitConfig",
    "root_solve",
    "fixed_point_solve",
    "custom_root",
    "custom_fixed_point",
]


@dataclasses.dataclass(frozen=True)
class ImplicitConfig:
    r"""How the tangent system of the IFT is solved, and how failures are handled.

    Attributes:
      linear_solver: the adjoint solver: a solver object of :mod:`bilevel.linear_solve`
        (``CG(ridge=1e-3)``, ``GMRES(restart=30)``, ``LU()``, ...), a name (``"cg"``, ``"lu"``, ...), or a
        callable ``solve(matvec, b) -> LinearSolution``. Its tolerance, iteration cap and ridge
        (Tikhonov damping of :math:`\partial_x F`) are its own fields. ``None`` (default): ``CG()`` when
        ``symmetric`` else ``GMRES()``.
      symmetric: whether :math:`\partial_x F` is symmetric (true for gradients of a loss: the
        Hessian); lets the transpose reuse the same solve.
      on_failure: ``"raise"``, ``"warn"`` or ``"ignore"`` when the solver's output is not a root or
        the adjoint solve fails.
      root_tol: relative tolerance of the root check (see the module docstring); ``None``:
        :math:`\varepsilon^{1/3}` of the root's dtype; ``math.inf`` turns the check off.
    """

    linear_solver: LinearSolverLike | None = None
    symmetric: bool = False
    on_failure: OnFailure = "raise"
    root_tol: float | None = None

    def __post_init__(self):
        if self.linear_solver is not None:
            as_linear_solver(self.linear_solver)  # validates the name / type early
        if not isinstance(self.symmetric, (bool, np.bool_)):
            raise ValueError(f"argument 'symmetric' must be a bool, got {self.symmetric!r}")
        check_on_failure(self.on_failure)
        if self.root_tol is not None:
            if isinstance(self.root_tol, bool) or not isinstance(self.root_tol, (int, float, np.floating)):
                raise ValueError(f"argument 'root_tol' must be a number > 0 or None, got {self.root_tol!r}")
            if not self.root_tol > 0:  # NaN fails too
                raise ValueError(f"argument 'root_tol' must be > 0 (math.inf: no check), got {self.root_tol!r}")

    @property
    def solver(self) -> LinearSolver:
        """The adjoint solver object (``linear_solver`` resolved)."""
        if self.linear_solver is None:
            return CG() if self.symmetric else GMRES()
        return as_linear_solver(self.linear_solver)

    def linear_solve(self, matvec, b):
        """Solve ``(A + ridge I) x = b`` and check the result (the ``solve`` of custom_linear_solve)."""
        solver = self.solver
        return check_solution(
            solver(matvec, b), solver, b, on_failure=self.on_failure, context="implicit differentiation: the adjoint linear solve"
        )




@dataclasses.dataclass(frozen=True)
class _Problem:
    """Static description of one implicit solution (a nondiff argument of the custom_jvp)."""

    config: ImplicitConfig
    has_aux: bool
    check_root: bool
    has_init: bool


def _zero_tangent(leaf):
    leaf = jnp.asarray(leaf)
    if jnp.issubdtype(leaf.dtype, jnp.inexact):
        return jnp.zeros_like(leaf)
    return np.zeros(leaf.shape, dtype=jax.dtypes.float0)


def _root_check(problem: _Problem, residual_fn, x, init):
    """Apply ``on_failure`` when ``x`` is not a root of ``residual_fn`` relative to the problem's scale."""
    cfg = problem.config
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(x))
    tol = failure_floor(dtype) if cfg.root_tol is None else float(cfg.root_tol)
    if not problem.check_root or math.isinf(tol) or cfg.on_failure == "ignore":
        return x
    fx, jx = jax.jvp(residual_fn, (x,), (x,))
    size = _norm(fx)
    scale = _norm(jx) + _norm(otu.tree_sub(fx, jx))
    if problem.has_init:
        scale = jnp.maximum(scale, _norm(residual_fn(init)))
    failed = jnp.logical_not(size <= tol * scale)  # NaN counts as failed
    rel = size / jnp.maximum(scale, jnp.finfo(dtype).tiny)
    return error_if(
        x,
        failed,
        "implicit differentiation: the solver did not return a root of the optimality function: "
        "||F(x)|| = {size:.3e} is {rel:.2e} of the problem's scale (root_tol {tol:.1e}; NaN means "
        "non-finite values). Run the solver to convergence, or raise root_tol.",
        on_failure=cfg.on_failure,
        error=ConvergenceError,
        fmt_args={"size": size, "rel": rel, "tol": tol},
    )


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _implicit_solution(optimality_fn, solver_fn, problem, init, args, fn_consts, solver_consts):
    out = solver_fn(init, *args, *jax.lax.stop_gradient(solver_consts))
    x = out[0] if problem.has_aux else out

    def residual(x_):
        return optimality_fn(x_, *args, *fn_consts)

    x = _root_check(problem, residual, x, init)
    return (x, out[1]) if problem.has_aux else x


@_implicit_solution.defjvp
def _implicit_solution_jvp(optimality_fn, solver_fn, problem, primals, tangents):
    init, args, fn_consts, solver_consts = primals
    _, t_args, t_fn_consts, _ = tangents
    # Recursive call: the primal solution stays differentiable, so higher derivatives work.
    out = _implicit_solution(optimality_fn, solver_fn, problem, init, args, fn_consts, solver_consts)
    x = out[0] if problem.has_aux else out

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

    config = problem.config
    t_flat = jax.lax.custom_linear_solve(
        matvec,
        -flat_rhs.astype(flat_x.dtype),
        solve=config.linear_solve,
        transpose_solve=config.linear_solve,
        symmetric=config.symmetric,
    )
    t_x = unravel(t_flat)
    if problem.has_aux:
        return out, (t_x, jax.tree_util.tree_map(_zero_tangent, out[1]))
    return x, t_x


def _as_jax_args(args):
    def conv(a):
        if isinstance(a, (bool, int, float, complex)):
            return jnp.asarray(a)
        return a

    return jax.tree_util.tree_map(conv, args)


def _same_layout(a, b) -> bool:
    if jax.tree_util.tree_structure(a) != jax.tree_util.tree_structure(b):
        return False
    return all(
        jnp.shape(u) == jnp.shape(v) for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )


def _bind_keywords(fn, args, kwargs):
    """Keyword arguments that name positional parameters of ``fn`` become positional (as in jaxopt), so an
    optimality function ``F(x, lam, X, y)`` serves a solver called with ``lam=..., X=..., y=...``."""
    if not kwargs:
        return args, kwargs
    try:
        bound = inspect.signature(fn).bind(None, *args, **kwargs)
    except (TypeError, ValueError):  # no signature, or it does not bind: pass the keywords through
        return args, kwargs
    return bound.args[1:], bound.kwargs


def _solve(optimality_fn, solver, init, args, kwargs, config, has_aux, check_root, root_like_init=False):
    if not callable(optimality_fn):
        raise TypeError(f"argument 'optimality_fn' must be callable, got {type(optimality_fn).__name__}")
    if not callable(solver):
        raise TypeError(f"argument 'solver' must be callable, got {type(solver).__name__}")
    if config is None:
        config = ImplicitConfig()
    if not isinstance(config, ImplicitConfig):
        raise TypeError(f"argument 'config' must be an ImplicitConfig or None, got {type(config).__name__}")
    if not isinstance(has_aux, (bool, np.bool_)):
        raise ValueError(f"argument 'has_aux' must be a bool, got {has_aux!r}")
    args = (tuple(_as_jax_args(tuple(args))), _as_jax_args(dict(kwargs)))
    init = _as_jax_args(init)

    def fn(x, a, kw):
        pa, pkw = _bind_keywords(optimality_fn, a, kw)
        return optimality_fn(x, *pa, **pkw)

    def run(x0, a, kw):
        return solver(x0, *a, **kw)

    if root_like_init:
        x_shape = jax.eval_shape(lambda x: x, init)  # an optimizer's iterates keep init's layout
    else:
        out_shape = jax.eval_shape(run, init, *args)
        if has_aux and not (isinstance(out_shape, (tuple, list)) and len(out_shape) == 2):
            raise ValueError("argument 'solver': with has_aux=True it must return a pair (solution, aux)")
        x_shape = out_shape[0] if has_aux else out_shape
    x_leaves = jax.tree_util.tree_leaves(x_shape)
    if not x_leaves or not all(jnp.issubdtype(l.dtype, jnp.floating) for l in x_leaves):
        if root_like_init:
            raise ValueError("argument 'init' must be a pytree of real floating-point arrays")
        raise ValueError(
            "argument 'solver' must return a pytree of real floating-point arrays (the root)"
            + ("" if has_aux else "; if it also returns auxiliary output, pass has_aux=True")
        )
    x_example = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), x_shape)
    f_shape = jax.eval_shape(fn, x_example, *args)
    if not _same_layout(f_shape, x_shape):
        raise ValueError(
            "argument 'optimality_fn' must return a pytree with the structure and shapes of the root: got "
            f"{jax.tree_util.tree_structure(f_shape)} for {jax.tree_util.tree_structure(x_shape)}"
        )
    has_init = init is not None and _same_layout(init, x_shape)
    fn_conv, fn_consts = jax.closure_convert(fn, x_example, *args)
    solver_conv, solver_consts = jax.closure_convert(run, init, *args)
    problem = _Problem(config, bool(has_aux), bool(check_root), bool(has_init))
    return _implicit_solution(fn_conv, solver_conv, problem, init, args, tuple(fn_consts), tuple(solver_consts))


def root_solve(
    optimality_fn: Callable,
    solver: Callable,
    init: Any,
    *args: Any,
    config: ImplicitConfig | None = None,
    has_aux: bool = False,
    **kwargs: Any,
):
    r"""Solve :math:`F(x, \theta) = 0` with ``solver`` and differentiate the root implicitly.

    Args:
      optimality_fn: ``F(x, *args, **kwargs) -> pytree`` with the structure of ``x``.
      solver: ``solver(init, *args, **kwargs) -> x`` returning a root of ``F`` (any algorithm, even
        non-differentiable ones: its internals are never differentiated); with ``has_aux`` it returns
        ``(x, aux)``.
      init: initial guess (gets no derivative); may be ``None`` for solvers that ignore it.
      *args: the differentiable parameters :math:`\theta` (pytrees of arrays).
      config: :class:`ImplicitConfig` (adjoint solver, failure policy, root tolerance).
      has_aux: the solver returns ``(x, aux)``; ``aux`` (a pytree of arrays) is passed through with a
        zero derivative.
      **kwargs: keyword parameters, passed to ``solver`` as given and differentiated like ``args``;
        ``optimality_fn`` receives those that name its positional parameters positionally (as in
        jaxopt), the others as keywords (names ``config`` and ``has_aux`` are taken).

    Returns:
      The root (or ``(root, aux)``), differentiable in ``args``, ``kwargs`` (and in any arrays
      ``optimality_fn`` closes over) in forward and reverse mode, to any order. A returned point that
      is not a root, or a failed adjoint solve, raises :class:`~bilevel.ConvergenceError` (see the
      module docstring and ``config.on_failure``).
    """
    return _solve(optimality_fn, solver, init, args, kwargs, config, has_aux, check_root=True)


def fixed_point_solve(
    fixed_point_fn: Callable,
    solver: Callable,
    init: Any,
    *args: Any,
    config: ImplicitConfig | None = None,
    has_aux: bool = False,
    **kwargs: Any,
):
    r"""Like :func:`root_solve` for a fixed point :math:`x = T(x, \theta)`, i.e. :math:`F = T(x,\theta) - x`."""
    if not callable(fixed_point_fn):
        raise TypeError(f"argument 'fixed_point_fn' must be callable, got {type(fixed_point_fn).__name__}")

    @functools.wraps(fixed_point_fn)  # keeps its signature, for keyword arguments
    def optimality_fn(x, *a, **kw):
        return jax.tree_util.tree_map(jnp.subtract, fixed_point_fn(x, *a, **kw), x)

    return root_solve(optimality_fn, solver, init, *args, config=config, has_aux=has_aux, **kwargs)


def custom_root(optimality_fn: Callable, *, has_aux: bool = False, **config_kwargs):
    """Decorator: make ``solver(init, *args, **kwargs) -> x`` implicitly differentiable through ``F(x, *args, **kwargs) = 0``.

    In the style of jaxopt's ``custom_root``, but forward and reverse mode both work::

        @custom_root(lambda x, a: x**2 - a, linear_solver="lu")
        def sqrt(init, a):
            return newton_iterations(init, a)   # any algorithm

        jax.jacfwd(lambda a: sqrt(1.0, a))(4.0)  # == 1 / (2 * sqrt(4))

    ``config_kwargs`` are the fields of :class:`ImplicitConfig` (``linear_solver``, ``symmetric``,
    ``on_failure``, ``root_tol``); ``has_aux`` as in :func:`root_solve`.
    """
    config = ImplicitConfig(**config_kwargs)

    def decorator(solver):
        @functools.wraps(solver)
        def wrapped(init, *args, **kwargs):
            return root_solve(optimality_fn, solver, init, *args, config=config, has_aux=has_aux, **kwargs)

        return wrapped

    return decorator


def custom_fixed_point(fixed_point_fn: Callable, *, has_aux: bool = False, **config_kwargs):
    """Decorator: like :func:`custom_root` for fixed points ``x = T(x, *args, **kwargs)``."""
    config = ImplicitConfig(**config_kwargs)

    def decorator(solver):
        @functools.wraps(solver)
        def wrapped(init, *args, **kwargs):
            return fixed_point_solve(
                fixed_point_fn, solver, init, *args, config=config, has_aux=has_aux, **kwargs
            )

        return wrapped

    return decorator
