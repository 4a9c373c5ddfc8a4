r"""Dense direct solvers: the matrix is materialised with one vmapped ``matvec`` per column, then
factored (Cholesky for SPD, LU with partial pivoting otherwise)."""

from __future__ import annotations

import dataclasses

import jax.scipy.linalg as jsl

from bilevel.linear_solve.base import LinearSolver, _materialize, failure_floor

__all__ = ["Cholesky", "LU"]


class _Direct(LinearSolver):
    def resolved_tol(self, dtype) -> float:
        return 0.0

    def failure_tol(self, dtype) -> float:
        r"""A direct solve fails when its relative residual exceeds :math:`\varepsilon^{1/3}` or is not finite."""
        return failure_floor(dtype)


@dataclasses.dataclass(frozen=True)
class Cholesky(_Direct):
    r"""Dense Cholesky solve of :math:`(A + \rho I)x = b`, :math:`A + \rho I` symmetric positive definite.

    The matrix is materialised by vmapping ``matvec`` over the identity of the flattened ``b``
    (:func:`jax.flatten_util.ravel_pytree`), factored with :func:`jax.scipy.linalg.cho_factor`
    (only its lower triangle is read) and solved with :func:`jax.scipy.linalg.cho_solve`. ``x0`` is
    ignored. A matrix that is not positive definite gives NaN (a non-finite ``residual``), not an
    exception.

    Attributes:
      ridge: :math:`\rho \ge 0`.

    When to use: small problems (:math:`n` up to a few thousand) where an exact adjoint is wanted,
    and as a reference for the iterative solvers.

    Cost: :math:`n` matvecs (batched) + :math:`n^3/3` flops + :math:`O(n^2)` memory.
    """

    ridge: float = 0.0

    def __post_init__(self):
        self._validate_common()

    def _solve(self, op, b, x0, tol):
        a, flat_b, unravel = _materialize(op, b)
        return unravel(jsl.cho_solve(jsl.cho_factor(a, lower=True), flat_b))


@dataclasses.dataclass(frozen=True)
class LU(_Direct):
    r"""Dense LU (partial pivoting) solve of a general non-singular :math:`(A + \rho I)x = b`.

    Materialises the matrix like :class:`Cholesky`, then :func:`jax.scipy.linalg.lu_factor` /
    :func:`jax.scipy.linalg.lu_solve`. ``x0`` is ignored. A singular matrix gives inf/NaN (a non-finite
    ``residual``), not an exception.

    Attributes:
      ridge: :math:`\rho \ge 0`.

    When to use: small non-symmetric problems; exact reference for GMRES/BiCGSTAB.

    Cost: :math:`n` matvecs (batched) + :math:`2n^3/3` flops + :math:`O(n^2)` memory.
    """

    ridge: float = 0.0

    def __post_init__(self):
        self._validate_common()

    def _solve(self, op, b, x0, tol):
        a, flat_b, unravel = _materialize(op, b)
        return unravel(jsl.lu_solve(jsl.lu_factor(a), flat_b))

