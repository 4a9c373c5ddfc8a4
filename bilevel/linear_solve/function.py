r"""User-written solve functions (e.g. jaxopt's ``solve_cg``) as solver objects."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from bilevel.linear_solve.base import (
    LinearSolution,
    LinearSolver,
    Matvec,
    _check_rhs,
    _check_square,
    _finish,
    _ridged,
    failure_floor,
)

__all__ = ["FunctionSolver"]


@dataclasses.dataclass(frozen=True)
class FunctionSolver(LinearSolver):
    """A user-written solve function ``fn(matvec, b) -> LinearSolution`` (or ``-> x``) as a solver object.

    The function receives the caller's ``matvec`` and ``b`` unchanged (no ridge, no normalisation:
    it is in charge). If it returns a bare ``x`` (a pytree like ``b``, e.g. jaxopt's
    ``jaxopt.linear_solve.solve_cg``), the relative residual is measured here with one ``matvec``. A
    solve fails when that residual exceeds ``failure_floor`` of the dtype (:math:`\\varepsilon^{1/3}`).
    """

    fn: Callable = None
    ridge: float = 0.0

    def __post_init__(self):
        if not callable(self.fn):
            raise TypeError(f"FunctionSolver: fn must be callable, got {self.fn!r}")
        self._validate_common()

    def __call__(self, matvec: Matvec, b, x0=None) -> LinearSolution:
        _check_rhs(b, None)
        _check_square(matvec, b)
        op = _ridged(matvec, self.ridge)
        out = self.fn(op, b)
        if isinstance(out, LinearSolution):
            return out
        shapes = [jnp.shape(l) for l in jax.tree_util.tree_leaves(out)]
        if jax.tree_util.tree_structure(out) != jax.tree_util.tree_structure(b) or shapes != [
            jnp.shape(l) for l in jax.tree_util.tree_leaves(b)
        ]:
            raise ValueError(
                f"linear_solver {getattr(self.fn, '__name__', self.fn)!r} must return a LinearSolution or a "
                f"pytree like b; got {jax.tree_util.tree_structure(out)} with shapes {shapes} for "
                f"{jax.tree_util.tree_structure(b)}"
            )
        return _finish(op, out, b)

    def resolved_tol(self, dtype) -> float:
        return 0.0

    def failure_tol(self, dtype) -> float:
        return failure_floor(dtype)

    def describe(self) -> str:
        return getattr(self.fn, "__name__", type(self.fn).__name__)

