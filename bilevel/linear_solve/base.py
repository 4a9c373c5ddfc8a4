r"""The solver protocol shared by every linear solver: the result type, the base class (validation,
normalisation of the right-hand side, the residual), tolerances that follow the dtype, and the one
convergence check :func:`check_solution`."""

from __future__ import annotations

import numbers
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax.tree_utils as otu
from jax.flatten_util import ravel_pytree

from bilevel._checks import ConvergenceError, OnFailure, error_if

__all__ = ["LinearSolution", "LinearSolver", "check_solution", "default_tol", "failure_floor"]

Matvec = Callable[[Any], Any]


class LinearSolution(NamedTuple):
    """Result of a linear solve (a pytree).

    Attributes:
      x: the approximate solution, a pytree with the structure of ``b``.
      residual: 0-d array, the relative residual ``||(A + ridge I) x - b|| / max(||b||, tiny)``.
        NaN/inf when ``x`` is not finite. Compare it with the solver's :meth:`~LinearSolver.failure_tol`
        (or use :func:`check_solution`) to decide convergence.
    """

    x: Any
    residual: jax.Array


# --------------------------------------------------------------------------------------------------
# tolerances that follow the dtype


def _eps(dtype) -> float:
    return float(jnp.finfo(dtype).eps)


def default_tol(dtype) -> float:
    r"""The iterative solvers' default relative tolerance :math:`\varepsilon^{2/3}` for ``dtype``.

    3.7e-11 in float64, 2.4e-5 in float32, 9.9e-3 in float16.
    """
    return _eps(dtype) ** (2.0 / 3.0)


def failure_floor(dtype) -> float:
    r"""The smallest relative residual that counts as a failed solve, :math:`\varepsilon^{1/3}`.

    6.1e-6 in float64, 4.9e-3 in float32: a solve more accurate than this is never reported as failed,
    since rounding alone (the condition number times :math:`\varepsilon`) can reach it.
    """
    return _eps(dtype) ** (1.0 / 3.0)


def _dtype_of(tree):
    return jnp.result_type(*jax.tree_util.tree_leaves(tree))


# --------------------------------------------------------------------------------------------------
# field validation (concrete values only: traced values pass through unchecked)


def _is_concrete_number(value) -> bool:
    if isinstance(value, (jax.core.Tracer, bool)):
        return False
    if isinstance(value, numbers.Number):
        return True
    try:
        arr = np.asarray(value)
    except Exception:  # tracer inside some wrapper
        return False
    return arr.ndim == 0 and arr.dtype.kind in "iuf"


def _check_number(owner: str, name: str, value, *, positive: bool, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    what = "a finite number > 0" if positive else "a finite number >= 0"
    if isinstance(value, bool) or isinstance(value, str) or value is None:
        raise ValueError(f"{owner}: {name} must be {what}{' or None' if allow_none else ''}, got {value!r}")
    if isinstance(value, jax.core.Tracer):
        return
    if not _is_concrete_number(value):
        raise ValueError(f"{owner}: {name} must be {what}, got {value!r}")
    v = float(value)
    if not np.isfinite(v) or v < 0 or (positive and v == 0):
        raise ValueError(f"{owner}: {name} must be {what}, got {value!r}")


def _check_count(owner: str, name: str, value, *, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise ValueError(f"{owner}: {name} must be a positive integer{' or None' if allow_none else ''}, got {value!r}")
    if int(value) < 1:
        raise ValueError(f"{owner}: {name} must be >= 1, got {value!r}")


def _check_rhs(b, x0) -> None:
    leaves = jax.tree_util.tree_leaves(b)
    if not leaves:
        raise ValueError("argument 'b' must be a pytree with at least one array leaf")
    for leaf in leaves:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(f"argument 'b' must hold real floating-point arrays, got a leaf of dtype {dtype}")
    if x0 is not None:
        if jax.tree_util.tree_structure(x0) != jax.tree_util.tree_structure(b):
            raise ValueError(
                "argument 'x0' must have the tree structure of b: "
                f"{jax.tree_util.tree_structure(x0)} vs {jax.tree_util.tree_structure(b)}"
            )
        shapes_x0 = [jnp.shape(l) for l in jax.tree_util.tree_leaves(x0)]
        shapes_b = [jnp.shape(l) for l in leaves]
        if shapes_x0 != shapes_b:
            raise ValueError(f"argument 'x0' must have the leaf shapes of b: {shapes_x0} vs {shapes_b}")


def _check_square(matvec, b) -> None:
    """``matvec`` must map a pytree laid out like ``b`` to one laid out like ``b`` (a square system)."""
    try:
        out = jax.eval_shape(matvec, b)
    except (TypeError, ValueError) as err:
        raise type(err)(f"argument 'matvec' cannot be applied to a pytree laid out like argument 'b': {err}") from err
    shapes_b = [jnp.shape(l) for l in jax.tree_util.tree_leaves(b)]
    shapes_out = [jnp.shape(l) for l in jax.tree_util.tree_leaves(out)]
    if jax.tree_util.tree_structure(out) != jax.tree_util.tree_structure(b) or shapes_out != shapes_b:
        raise ValueError(
            "argument 'matvec' must map a pytree laid out like b to one laid out like b (a square system "
            f"(A + ridge I) x = b): got {jax.tree_util.tree_structure(out)} with shapes {shapes_out} for b "
            f"{jax.tree_util.tree_structure(b)} with shapes {shapes_b}"
        )


# --------------------------------------------------------------------------------------------------
# pytree helpers


def _scalar_like(value, leaf):
    """``value`` as a scalar of ``leaf``'s dtype (so float32 systems stay float32)."""
    return jnp.asarray(value, dtype=jnp.result_type(leaf))


def _ridged(matvec: Matvec, ridge) -> Matvec:
    """The operator ``v -> matvec(v) + ridge * v``; plain ``matvec`` when ``ridge`` is a concrete 0."""
    if _is_concrete_number(ridge) and float(ridge) == 0.0:
        return matvec

    def op(v):
        return jax.tree_util.tree_map(lambda av, vv: av + _scalar_like(ridge, vv) * vv, matvec(v), v)

    return op


def _scale(tree, s):
    return jax.tree_util.tree_map(lambda l: _scalar_like(s, l) * l, tree)


def _divide(tree, s):
    """``tree / s`` leaf by leaf (a division, not a product with ``1/s``, which overflows for subnormal ``s``)."""
    return jax.tree_util.tree_map(lambda l: l / _scalar_like(s, l), tree)


def _axpy(x, s, y):
    """``x + s * y`` with ``s`` cast to each leaf's dtype."""
    return jax.tree_util.tree_map(lambda a, c: a + _scalar_like(s, c) * c, x, y)


def _norm(tree) -> jax.Array:
    """Euclidean norm of a pytree, scaled by the max-abs entry to avoid overflow/underflow.

    NaN anywhere gives NaN, inf anywhere gives NaN or inf (never a finite number).
    """
    m = otu.tree_norm(tree, ord="inf")
    safe_m = jnp.where(m > 0, m, jnp.ones_like(m))
    return safe_m * otu.tree_norm(_divide(tree, safe_m))


def _tiny(tree):
    return jnp.finfo(_dtype_of(tree)).tiny


def _relative_residual(op: Matvec, x, b) -> jax.Array:
    r = otu.tree_sub(op(x), b)
    return _norm(r) / jnp.maximum(_norm(b), _tiny(b))


def _finish(op: Matvec, x, b) -> LinearSolution:
    x = jax.tree_util.tree_map(lambda xl, bl: jnp.asarray(xl, dtype=jnp.result_type(bl)), x, b)
    return LinearSolution(x=x, residual=_relative_residual(op, x, b))


def _common_dtype(op: Matvec, b, x0):
    """For mixed-precision pytrees, run a Krylov method in the promoted dtype.

    ``jax.scipy.sparse.linalg`` needs one dtype across leaves (its scalar step sizes would promote
    the narrower leaves inside its loops). The solution is cast back to ``b``'s dtypes by
    :func:`_finish`.
    """
    leaves = jax.tree_util.tree_leaves(b)
    dtype = jnp.result_type(*leaves)
    if all(jnp.result_type(l) == dtype for l in leaves):
        return op, b, x0

    def up(tree):
        return jax.tree_util.tree_map(lambda l: jnp.asarray(l, dtype=dtype), tree)

    def down(tree):
        return jax.tree_util.tree_map(lambda l, ref: jnp.asarray(l, dtype=jnp.result_type(ref)), tree, b)

    return (lambda v: up(op(down(v)))), up(b), (None if x0 is None else up(x0))


def _materialize(op: Matvec, b):
    """Dense matrix of ``op`` in the flat coordinates of ``b``, the flat ``b`` and the unravel map."""
    flat_b, unravel = ravel_pytree(b)
    n = flat_b.shape[0]

    def flat_matvec(v):
        return ravel_pytree(op(unravel(v)))[0]

    # rows of the vmapped result are A e_i, i.e. the columns of A
    a = jax.vmap(flat_matvec)(jnp.eye(n, dtype=flat_b.dtype)).T
    return a, flat_b, unravel


# --------------------------------------------------------------------------------------------------
# the solver protocol


class LinearSolver:
    r"""Base class of the solver objects: ``solver(matvec, b, x0=None) -> LinearSolution``.

    Subclasses are frozen dataclasses whose fields are the solver's settings (validated in
    ``__post_init__``) and implement ``_solve(op, b, x0, tol)`` for the ridged operator ``op`` and a
    right-hand side ``b`` of norm 1. :meth:`__call__` validates ``b`` and ``x0``, normalises them by
    :math:`\lVert b\rVert`, returns ``x = 0`` for ``b = 0``, scales the solution back and measures the
    relative residual of the ridged system.
    """

    ridge: Any = 0.0

    def __call__(self, matvec: Matvec, b, x0=None) -> LinearSolution:
        return self._run(matvec, b, x0)

    def _run(self, matvec: Matvec, b, x0, **solve_kw) -> LinearSolution:
        if not callable(matvec):
            raise TypeError(f"argument 'matvec' must be callable, got {type(matvec).__name__}")
        _check_rhs(b, x0)
        _check_square(matvec, b)
        op = _ridged(matvec, self.ridge)
        size = _norm(b)
        safe = jnp.where(size > 0, size, jnp.ones_like(size))
        b_unit = _divide(b, safe)
        x0_unit = None if x0 is None else _divide(
            jax.tree_util.tree_map(lambda a, c: jnp.asarray(a, dtype=jnp.result_type(c)), x0, b), safe
        )
        x_unit = self._solve(op, b_unit, x0_unit, self.resolved_tol(_dtype_of(b)), **solve_kw)
        # b = 0 exactly: x = 0 (a NaN size keeps the NaN solution, so the residual shows it)
        x = jax.tree_util.tree_map(
            lambda l: jnp.where(size == 0, jnp.zeros_like(l), l * _scalar_like(safe, l)), x_unit
        )
        return _finish(op, x, b)

    def _solve(self, op, b, x0, tol, **solve_kw):
        raise NotImplementedError

    def resolved_tol(self, dtype) -> float:
        """The iteration tolerance for a right-hand side of ``dtype`` (``tol``, or :func:`default_tol`)."""
        tol = getattr(self, "tol", None)
        return default_tol(dtype) if tol is None else tol

    def failure_tol(self, dtype) -> float:
        r"""Relative residual above which a solve counts as failed: :math:`\max(100\,\text{tol}, \varepsilon^{1/3})`."""
        tol = self.resolved_tol(dtype)
        tol = float(tol) if _is_concrete_number(tol) else 0.0
        return max(100.0 * tol, failure_floor(dtype))

    def describe(self) -> str:
        """How the solver is named in error messages (its settings)."""
        return repr(self)

    def _validate_common(self) -> None:
        owner = type(self).__name__
        _check_number(owner, "ridge", self.ridge, positive=False)
        if hasattr(self, "tol"):
            _check_number(owner, "tol", self.tol, positive=False, allow_none=True)
        if hasattr(self, "maxiter"):
            _check_count(owner, "maxiter", self.maxiter)



def check_solution(
    sol: LinearSolution,
    solver: LinearSolver,
    b,
    *,
    on_failure: OnFailure = "raise",
    context: str = "the linear solve",
    failure_tol: float | None = None,
):
    """The one convergence check of a linear solve: return ``sol.x``, or raise/warn when it failed.

    A solve fails when its relative residual is not finite or exceeds ``failure_tol`` (default
    ``solver.failure_tol(dtype of b)``). ``on_failure`` is ``"raise"`` (a
    :class:`~bilevel.ConvergenceError`, also under ``jit``), ``"warn"`` or ``"ignore"``.
    """
    tol = solver.failure_tol(_dtype_of(b)) if failure_tol is None else float(failure_tol)
    failed = jnp.logical_not(sol.residual <= tol)  # NaN counts as failed
    name = solver.describe().replace("{", "{{").replace("}", "}}")
    return error_if(
        sol.x,
        failed,
        f"{context} ({name}) did not converge: relative residual {{residual:.3e}} > "
        f"{tol:.1e} (NaN means non-finite values). Try another linear_solver, a larger maxiter (depth for "
        "LiSSA), ridge > 0 for a (nearly) singular matrix, or (Neumann/LiSSA) alpha below 2/lambda_max / "
        "scale above lambda_max.",
        on_failure=on_failure,
        error=ConvergenceError,
        fmt_args={"residual": sol.residual},
    )


