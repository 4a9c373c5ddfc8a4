r"""Linear solvers for the adjoint systems of implicit differentiation, as small frozen objects.

Implicit differentiation of an inner solution :math:`x^\star(\theta)` needs one solve per outer
gradient: with :math:`A = \partial_x^2 g` (the inner Hessian) or, more generally, the Jacobian of the
optimality map, the adjoint :math:`v` solves :math:`(A + \rho I)\,v = b`. ``A`` is only available as a
matrix-free linear function ``matvec`` (a Hessian- or Jacobian-vector product) acting on pytrees.

A solver is a frozen dataclass that carries its own settings (in the style of lineax); every solver is
called the same way::

    solver = CG(tol=None, maxiter=None, ridge=0.0)
    sol = solver(matvec, b, x0=None)          # -> LinearSolution(x, residual)

and solves :math:`(A + \rho I)\,x = b` with :math:`\rho` = ``ridge``. ``b`` is any pytree of real float
arrays and ``matvec`` maps such a pytree to one of the same structure. Wherever a linear solve is
configured (:class:`bilevel.ImplicitConfig`, :class:`bilevel.Implicit`, :func:`bilevel.custom_root`,
the influence functions) the argument is called ``linear_solver`` and accepts

- a solver object (``CG(ridge=1e-3)``, ``LiSSA(scale=20.0, depth=500)``, ...),
- a name, shorthand for the solver with default settings (``"cg"`` is ``CG()``; see :data:`SOLVERS`),
- a solver class (``CG`` is ``CG()``), or
- any callable ``solve(matvec, b) -> LinearSolution`` (or returning just ``x``: the residual is then
  measured here with one extra ``matvec``), e.g. ``jaxopt.linear_solve.solve_cg``.

:func:`as_linear_solver` turns any of these into a solver object.

Conventions shared by every solver
----------------------------------
- **Tolerances follow the dtype.** ``tol=None`` (the default) means :math:`\varepsilon^{2/3}` for the
  machine epsilon :math:`\varepsilon` of ``b``'s dtype: 3.7e-11 in float64, 2.4e-5 in float32.
  ``tol`` is relative to :math:`\lVert b\rVert`.
- **Scale invariance.** ``b`` (and ``x0``) are divided by :math:`\lVert b\rVert` before the iteration
  and the solution multiplied back, so a right-hand side of norm 1e-30 (a tiny tangent) is solved like
  one of norm 1 (``jax.scipy``'s GMRES treats an initial residual below machine epsilon as zero, and
  BiCGSTAB's scalars underflow in float32). ``b = 0`` gives ``x = 0`` with residual 0.
- **No solver raises on non-convergence** (they run inside :func:`jax.lax.custom_linear_solve`,
  :func:`jax.jit` and :func:`jax.vmap`); each returns the relative residual

  .. math:: r = \frac{\lVert (A + \rho I)x - b \rVert_2}{\max(\lVert b \rVert_2, \text{tiny})}

  computed with one extra ``matvec``. NaN or inf in ``x`` is never masked: it shows as a non-finite
  residual. The callers compare it with :meth:`LinearSolver.failure_tol` through the one convergence
  check :func:`check_solution`: a solve fails when :math:`r > \max(100\,\text{tol},
  \varepsilon^{1/3})` (6.1e-6 in float64, 4.9e-3 in float32), when :math:`r` is not finite, or, for a
  direct solver, when :math:`r > \varepsilon^{1/3}`.

Solvers (:math:`A_\rho = A + \rho I`, :math:`n` = total size of ``b``):

:class:`CG`
    Conjugate gradients (Hestenes & Stiefel, 1952) for symmetric positive definite :math:`A_\rho`;
    one matvec per iteration, error contracts like
    :math:`\big((\sqrt{\kappa}-1)/(\sqrt{\kappa}+1)\big)^k`.
:class:`NormalCG`
    CG on the normal equations :math:`A_\rho^\top A_\rho x = A_\rho^\top b` (CGNR), :math:`A_\rho^\top`
    from :func:`jax.linear_transpose`. Any non-singular (also non-symmetric) operator; two matvecs per
    iteration; the condition number is squared.
:class:`GMRES`
    Restarted GMRES(m) (Saad & Schultz, 1986): minimises :math:`\lVert A_\rho x - b\rVert` over a Krylov
    space of dimension ``restart`` and restarts. Any non-singular operator.
:class:`BiCGStab`
    BiCGSTAB (van der Vorst, 1992): short-recurrence Krylov method for non-symmetric operators, two
    matvecs per iteration, no optimality guarantee (may break down).
:class:`Cholesky` / :class:`LU`
    Dense direct solves: the :math:`n\times n` matrix is materialised with :math:`n` matvecs (vmapped over
    the identity), then factored (:math:`O(n^3)` flops, :math:`O(n^2)` memory). Exact up to rounding; only
    for small :math:`n` (a few thousand at most). Cholesky needs SPD, LU any non-singular matrix.
:class:`Neumann`
    Truncated Neumann series / Richardson iteration
    :math:`x = \alpha\sum_{k=0}^{K}(I - \alpha A_\rho)^k b`, converging when the spectral radius of
    :math:`I - \alpha A_\rho` is below one (for SPD: :math:`0 < \alpha\lambda_{\max}(A_\rho) < 2`).
    Used for implicit differentiation by Lorraine, Vicol & Duvenaud (2020), "Optimizing millions of
    hyperparameters by implicit differentiation", AISTATS.
:class:`LiSSA`
    LiSSA (Agarwal, Bullins & Hazan, 2017, "Second-order stochastic optimization for machine learning
    in linear time", JMLR 18), as used for influence functions by Koh & Liang (2017, ICML): the
    recursion :math:`x_j = b + (I - A_\rho/s)\,x_{j-1}`, :math:`x_0 = b`, returning :math:`x_J/s`,
    optionally with a stochastic (mini-batch) estimate of :math:`A v` at each step and averaged over
    independent repeats. Requires :math:`s > \lambda_{\max}(A_\rho)`.

Modules: :mod:`~bilevel.linear_solve.base` (the protocol, tolerances, :func:`check_solution`),
:mod:`~bilevel.linear_solve.krylov`, :mod:`~bilevel.linear_solve.direct`,
:mod:`~bilevel.linear_solve.series` and :mod:`~bilevel.linear_solve.function` (user-written solvers).

References: Y. Saad, *Iterative Methods for Sparse Linear Systems*, 2nd ed., SIAM 2003 (CG, CGNR,
GMRES, BiCGSTAB, Richardson/Neumann); G. H. Golub & C. F. Van Loan, *Matrix Computations*, 4th ed.
(Cholesky, LU).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from bilevel.linear_solve.base import LinearSolution, LinearSolver, check_solution, default_tol, failure_floor
from bilevel.linear_solve.direct import LU, Cholesky
from bilevel.linear_solve.function import FunctionSolver
from bilevel.linear_solve.krylov import CG, GMRES, BiCGStab, NormalCG
from bilevel.linear_solve.series import LiSSA, Neumann

__all__ = [
    "LinearSolution",
    "LinearSolver",
    "CG",
    "NormalCG",
    "GMRES",
    "BiCGStab",
    "Cholesky",
    "LU",
    "Neumann",
    "LiSSA",
    "FunctionSolver",
    "SOLVERS",
    "as_linear_solver",
    "check_solution",
    "default_tol",
    "failure_floor",
]

SOLVERS: dict[str, type[LinearSolver]] = {
    "cg": CG,
    "normal_cg": NormalCG,
    "gmres": GMRES,
    "bicgstab": BiCGStab,
    "cholesky": Cholesky,
    "lu": LU,
    "neumann": Neumann,
    "lissa": LiSSA,
}

LinearSolverLike = LinearSolver | str | type | Callable


def as_linear_solver(linear_solver: LinearSolverLike) -> LinearSolver:
    """The solver object for a name of :data:`SOLVERS`, a solver class, a solver object or a callable.

    A name or a class gives the solver with default settings (``"cg"`` -> ``CG()``); a solver object
    is returned as is; any other callable ``fn(matvec, b)`` is wrapped in :class:`FunctionSolver`.

    Raises:
      ValueError: ``linear_solver`` is a string that is not a key of :data:`SOLVERS`.
      TypeError: ``linear_solver`` is none of the above.
    """
    if isinstance(linear_solver, LinearSolver):
        return linear_solver
    if isinstance(linear_solver, str):
        try:
            return SOLVERS[linear_solver]()
        except KeyError:
            raise ValueError(
                f"unknown linear_solver {linear_solver!r}; valid names are {sorted(SOLVERS)}, or pass a solver "
                "object such as bilevel.CG(ridge=1e-3)"
            ) from None
    if isinstance(linear_solver, type) and issubclass(linear_solver, LinearSolver):
        return linear_solver()
    if callable(linear_solver) and not isinstance(linear_solver, type):
        return FunctionSolver(linear_solver)
    raise TypeError(
        f"linear_solver must be a solver object (e.g. bilevel.CG()), a name ({sorted(SOLVERS)}) or a "
        f"callable fn(matvec, b), got {linear_solver!r}"
    )



def get_solver(linear_solver: LinearSolverLike) -> Callable[..., LinearSolution]:
    """Legacy adapter: ``solve(matvec, b, *, ridge=, tol=, maxiter=, x0=)`` for any solver spec.

    Kept for callers written before the solver objects (it builds the object with those settings on
    every call); new code should use :func:`as_linear_solver` and put the settings in the object.
    """
    solver = as_linear_solver(linear_solver)

    fields = {f.name for f in dataclasses.fields(solver)}

    def solve(matvec, b, *, x0=None, **settings):
        unknown = set(settings) - fields - {"tol", "maxiter"}
        if unknown:
            raise ValueError(f"{type(solver).__name__} has no setting(s) {sorted(unknown)}")
        # as before the solver objects: direct solvers accept and ignore tol / maxiter
        settings = {k: v for k, v in settings.items() if k in fields}
        return dataclasses.replace(solver, **settings)(matvec, b, x0)

    return solve
