r"""Krylov solvers (jax.scipy.sparse.linalg, on a normalised right-hand side): CG, CG on the normal
equations, restarted GMRES and BiCGSTAB."""

from __future__ import annotations

import dataclasses

import jax
import jax.scipy.sparse.linalg as jsp

from bilevel.linear_solve.base import LinearSolver, _check_count, _common_dtype

__all__ = ["CG", "NormalCG", "GMRES", "BiCGStab"]


@dataclasses.dataclass(frozen=True)
class _Krylov(LinearSolver):
    """The settings every Krylov solver shares (``tol`` relative, ``maxiter``, ``ridge``) and the dtype
    alignment of operator, right-hand side and initial guess; a subclass implements ``_krylov``."""

    tol: float | None = None
    maxiter: int | None = None
    ridge: float = 0.0

    def __post_init__(self):
        self._validate_common()

    def _solve(self, op, b, x0, tol):
        return self._krylov(*_common_dtype(op, b, x0), tol)


@dataclasses.dataclass(frozen=True)
class CG(_Krylov):
    r"""Conjugate gradients for :math:`(A + \rho I)x = b` with :math:`A + \rho I` symmetric positive definite.

    Wraps :func:`jax.scipy.sparse.linalg.cg` with ``tol`` relative (stops when
    ``||r|| <= tol * ||b||``) and ``atol = 0``.

    Attributes:
      tol: relative tolerance; ``None``: :func:`default_tol` of ``b``'s dtype.
      maxiter: iteration cap (``None``: ``10 n``).
      ridge: :math:`\rho \ge 0`, Tikhonov damping added to ``A``.

    When to use: the default for Hessians of (strongly) convex inner problems, with ``ridge > 0`` to
    make a merely PSD Hessian definite. Not for non-symmetric or indefinite operators (it may diverge
    silently; the residual then shows it).

    Cost: one ``matvec`` per iteration, at most ``maxiter`` iterations, plus one for the residual;
    memory :math:`O(n)`. The error contracts like :math:`((\sqrt\kappa - 1)/(\sqrt\kappa + 1))^k`,
    :math:`\kappa` the condition number.
    """

    def _krylov(self, op, b, x0, tol):
        return jsp.cg(op, b, x0=x0, tol=tol, atol=0.0, maxiter=self.maxiter)[0]


@dataclasses.dataclass(frozen=True)
class NormalCG(_Krylov):
    r"""CG on the normal equations :math:`A_\rho^\top A_\rho x = A_\rho^\top b`, :math:`A_\rho = A + \rho I`.

    :math:`A_\rho^\top` is obtained with :func:`jax.linear_transpose` (``b`` serves as the example
    input), so ``matvec`` must be transposable by JAX (true for JVPs/VJPs and array code). The ridge is
    applied to the operator *before* forming the normal equations, i.e. the solution solves
    :math:`(A + \rho I)x = b`, not a Tikhonov least-squares problem (jaxopt's ``solve_normal_cg`` adds
    its ridge to :math:`A^\top A` instead). ``tol`` is relative to :math:`\lVert A_\rho^\top b\rVert` on
    the normal residual. Fields as in :class:`CG`.

    When to use: non-symmetric (e.g. Jacobians of fixed-point maps) but well-conditioned
    operators, where CG's robustness matters more than speed.

    Cost: two operator applications (``matvec`` and its transpose) per iteration; the condition
    number is squared, so convergence is slower than CG on SPD systems. Memory :math:`O(n)`.
    """

    def _krylov(self, op, b, x0, tol):
        op_t = jax.linear_transpose(op, b)

        def normal_op(v):
            return op_t(op(v))[0]

        return jsp.cg(normal_op, op_t(b)[0], x0=x0, tol=tol, atol=0.0, maxiter=self.maxiter)[0]


@dataclasses.dataclass(frozen=True)
class GMRES(_Krylov):
    r"""Restarted GMRES(``restart``) for a general non-singular :math:`(A + \rho I)x = b`.

    Wraps :func:`jax.scipy.sparse.linalg.gmres` (``tol`` relative, ``atol = 0``).

    Attributes:
      tol, ridge: as in :class:`CG`.
      maxiter: number of *restarts* (outer cycles, ``None``: ``10 n``), each building a Krylov space of
        dimension ``min(restart, n)``.
      restart: Krylov dimension per cycle.
      solve_method: ``"batched"`` (GPU friendly) or ``"incremental"`` (Givens rotations, can stop
        inside a cycle).

    When to use: non-symmetric or indefinite operators (Jacobians of fixed-point or
    stationarity maps of non-convex problems); monotone decrease of the residual norm.

    Cost: ``restart`` matvecs per cycle plus :math:`O(n\cdot\text{restart})` memory for the Krylov
    basis and :math:`O(n\cdot\text{restart}^2)` orthogonalisation flops per cycle.
    """

    restart: int = 20
    solve_method: str = "batched"

    def __post_init__(self):
        super().__post_init__()
        _check_count("GMRES", "restart", self.restart, allow_none=False)
        if self.solve_method not in ("batched", "incremental"):
            raise ValueError(f"GMRES: solve_method must be 'batched' or 'incremental', got {self.solve_method!r}")

    def _krylov(self, op, b, x0, tol):
        return jsp.gmres(
            op, b, x0=x0, tol=tol, atol=0.0, restart=int(self.restart), maxiter=self.maxiter,
            solve_method=self.solve_method,
        )[0]


@dataclasses.dataclass(frozen=True)
class BiCGStab(_Krylov):
    r"""BiCGSTAB for a general non-singular :math:`(A + \rho I)x = b`.

    Wraps :func:`jax.scipy.sparse.linalg.bicgstab` (``tol`` relative, ``atol = 0``). Fields as in
    :class:`CG`.

    When to use: non-symmetric operators when GMRES's memory is too large; short recurrences but
    no residual-minimisation guarantee (it can stagnate or break down — check ``residual``).

    Cost: two matvecs per iteration, at most ``maxiter`` iterations (default ``10 n``); memory
    :math:`O(n)`.
    """

    def _krylov(self, op, b, x0, tol):
        return jsp.bicgstab(op, b, x0=x0, tol=tol, atol=0.0, maxiter=self.maxiter)[0]

