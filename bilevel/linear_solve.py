r"""Linear solvers for the adjoint systems of implicit differentiation.

Implicit differentiation of an inner solution :math:`x^\star(\theta)` needs one solve per outer
gradient: with :math:`A = \partial_x^2 g` (the inner Hessian) or, more generally, the Jacobian of the
optimality map, the adjoint :math:`v` solves :math:`(A + \rho I)\,v = b`. ``A`` is only available as a
matrix-free linear function ``matvec`` (a Hessian- or Jacobian-vector product) acting on pytrees.

Every solver here has the same signature, so the solver is an argument of the caller::

    solve(matvec, b, *, ridge=0.0, tol=1e-10, maxiter=None, x0=None, **options) -> LinearSolution

and solves :math:`(A + \rho I)\,x = b` with :math:`\rho` = ``ridge``. ``b`` is any pytree of real float
arrays and ``matvec`` maps such a pytree to one of the same structure. No solver raises on
non-convergence (they run inside :func:`jax.lax.custom_linear_solve`, :func:`jax.jit` and
:func:`jax.vmap`); each returns the relative residual

.. math:: r = \frac{\lVert (A + \rho I)x - b \rVert_2}{\max(\lVert b \rVert_2, \text{tiny})}

computed with one extra ``matvec``, and the caller compares it with its own tolerance. NaN or inf in
``x`` is never masked: it shows as a non-finite residual.

Solvers (:math:`A_\rho = A + \rho I`, :math:`n` = total size of ``b``):

``cg``
    Conjugate gradients (Hestenes & Stiefel, 1952) for symmetric positive definite :math:`A_\rho`;
    one matvec per iteration, error contracts like
    :math:`\big((\sqrt{\kappa}-1)/(\sqrt{\kappa}+1)\big)^k`.
``normal_cg``
    CG on the normal equations :math:`A_\rho^\top A_\rho x = A_\rho^\top b` (CGNR), :math:`A_\rho^\top`
    from :func:`jax.linear_transpose`. Any non-singular (also non-symmetric) operator; two matvecs per
    iteration; the condition number is squared.
``gmres``
    Restarted GMRES(m) (Saad & Schultz, 1986): minimises :math:`\lVert A_\rho x - b\rVert` over a Krylov
    space of dimension ``restart`` and restarts. Any non-singular operator.
``bicgstab``
    BiCGSTAB (van der Vorst, 1992): short-recurrence Krylov method for non-symmetric operators, two
    matvecs per iteration, no optimality guarantee (may break down).
``cholesky`` / ``lu``
    Dense direct solves: the :math:`n\times n` matrix is materialised with :math:`n` matvecs (vmapped over
    the identity), then factored (:math:`O(n^3)` flops, :math:`O(n^2)` memory). Exact up to rounding; only
    for small :math:`n` (a few thousand at most). Cholesky needs SPD, LU any non-singular matrix.
``neumann``
    Truncated Neumann series / Richardson iteration
    :math:`x = \alpha\sum_{k=0}^{K}(I - \alpha A_\rho)^k b`, converging when the spectral radius of
    :math:`I - \alpha A_\rho` is below one (for SPD: :math:`0 < \alpha\lambda_{\max}(A_\rho) < 2`).
    Used for implicit differentiation by Lorraine, Vicol & Duvenaud (2020), "Optimizing millions of
    hyperparameters by implicit differentiation", AISTATS.
``lissa``
    LiSSA (Agarwal, Bullins & Hazan, 2017, "Second-order stochastic optimization for machine learning
    in linear time", JMLR 18), as used for influence functions by Koh & Liang (2017, ICML): the
    recursion :math:`x_j = b + (I - A_\rho/s)\,x_{j-1}`, :math:`x_0 = b`, returning :math:`x_J/s`,
    optionally with a stochastic (mini-batch) estimate of :math:`A v` at each step and averaged over
    independent repeats. Requires :math:`s > \lambda_{\max}(A_\rho)`.

References: Y. Saad, *Iterative Methods for Sparse Linear Systems*, 2nd ed., SIAM 2003 (CG, CGNR,
GMRES, BiCGSTAB, Richardson/Neumann); G. H. Golub & C. F. Van Loan, *Matrix Computations*, 4th ed.
(Cholesky, LU).
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import jax.scipy.sparse.linalg as jsp
import numpy as np
import optax.tree_utils as otu
from jax.flatten_util import ravel_pytree

__all__ = [
    "LinearSolution",
    "SOLVERS",
    "get_solver",
    "solve_bicgstab",
    "solve_cg",
    "solve_cholesky",
    "solve_gmres",
    "solve_lissa",
    "solve_lu",
    "solve_neumann",
    "solve_normal_cg",
]

Matvec = Callable[[Any], Any]


class LinearSolution(NamedTuple):
    """Result of a linear solve (a pytree).

    Attributes:
      x: the approximate solution, a pytree with the structure of ``b``.
      residual: 0-d array, the relative residual ``||(A + ridge I) x - b|| / max(||b||, tiny)``.
        NaN/inf when ``x`` is not finite. Compare it with your tolerance to decide convergence.
    """

    x: Any
    residual: jax.Array


# --------------------------------------------------------------------------------------------------
# argument validation (only on concrete values: traced values pass through unchecked)


def _is_concrete_number(value) -> bool:
    if isinstance(value, jax.core.Tracer):
        return False
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Number):
        return True
    try:
        arr = np.asarray(value)
    except Exception:  # tracer inside some wrapper
        return False
    return arr.ndim == 0 and arr.dtype.kind in "iuf"


def _check_nonneg(name: str, value) -> None:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    if _is_concrete_number(value):
        v = float(value)
        if not np.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if _is_concrete_number(value):
        v = float(value)
        if not np.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _check_count(name: str, value, *, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise ValueError(f"{name} must be a positive integer{' or None' if allow_none else ''}, got {value!r}")
    if int(value) < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")


def _check_common(b, ridge, tol, maxiter, x0) -> None:
    leaves = jax.tree_util.tree_leaves(b)
    if not leaves:
        raise ValueError("b must be a pytree with at least one array leaf")
    for leaf in leaves:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(f"b must hold real floating-point arrays, got a leaf of dtype {dtype}")
    _check_nonneg("ridge", ridge)
    _check_nonneg("tol", tol)
    _check_count("maxiter", maxiter)
    if x0 is not None:
        if jax.tree_util.tree_structure(x0) != jax.tree_util.tree_structure(b):
            raise ValueError(
                "x0 must have the tree structure of b: "
                f"{jax.tree_util.tree_structure(x0)} vs {jax.tree_util.tree_structure(b)}"
            )
        shapes_x0 = [jnp.shape(l) for l in jax.tree_util.tree_leaves(x0)]
        shapes_b = [jnp.shape(l) for l in leaves]
        if shapes_x0 != shapes_b:
            raise ValueError(f"x0 must have the leaf shapes of b: {shapes_x0} vs {shapes_b}")


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


def _axpy(x, s, y):
    """``x + s * y`` with ``s`` cast to each leaf's dtype."""
    return jax.tree_util.tree_map(lambda a, c: a + _scalar_like(s, c) * c, x, y)


def _norm(tree) -> jax.Array:
    """Euclidean norm of a pytree, scaled by the max-abs entry to avoid overflow/underflow.

    NaN anywhere gives NaN, inf anywhere gives NaN or inf (never a finite number).
    """
    m = otu.tree_norm(tree, ord="inf")
    safe_m = jnp.where(m > 0, m, jnp.ones_like(m))
    return safe_m * otu.tree_norm(_scale(tree, 1.0 / safe_m))


def _tiny(tree):
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(tree))
    return jnp.finfo(dtype).tiny


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


# --------------------------------------------------------------------------------------------------
# Krylov solvers


def solve_cg(matvec: Matvec, b, *, ridge=0.0, tol=1e-10, maxiter=None, x0=None) -> LinearSolution:
    r"""Conjugate gradients for :math:`(A + \rho I)x = b` with :math:`A + \rho I` symmetric positive definite.

    Wraps :func:`jax.scipy.sparse.linalg.cg` with ``tol`` relative (stops when
    ``||r|| <= tol * ||b||``) and ``atol = 0``.

    When to use: the default for Hessians of (strongly) convex inner problems, with ``ridge > 0`` to
    make a merely PSD Hessian definite. Not for non-symmetric or indefinite operators (it may diverge
    silently; the residual then shows it).

    Cost: one ``matvec`` per iteration, at most ``maxiter`` iterations (default ``10 n``), plus one for
    the residual; memory :math:`O(n)`. The error contracts like
    :math:`((\sqrt\kappa - 1)/(\sqrt\kappa + 1))^k`, :math:`\kappa` the condition number.
    """
    _check_common(b, ridge, tol, maxiter, x0)
    op = _ridged(matvec, ridge)
    op_k, b_k, x0_k = _common_dtype(op, b, x0)
    x, _ = jsp.cg(op_k, b_k, x0=x0_k, tol=tol, atol=0.0, maxiter=maxiter)
    return _finish(op, x, b)


def solve_normal_cg(matvec: Matvec, b, *, ridge=0.0, tol=1e-10, maxiter=None, x0=None) -> LinearSolution:
    r"""CG on the normal equations :math:`A_\rho^\top A_\rho x = A_\rho^\top b`, :math:`A_\rho = A + \rho I`.

    :math:`A_\rho^\top` is obtained with :func:`jax.linear_transpose` (``b`` serves as the example
    input), so ``matvec`` must be transposable by JAX (true for JVPs/VJPs and array code). The ridge is
    applied to the operator *before* forming the normal equations, i.e. the solution solves
    :math:`(A + \rho I)x = b`, not a Tikhonov least-squares problem. ``tol`` is relative to
    :math:`\lVert A_\rho^\top b\rVert` on the normal residual.

    When to use: non-symmetric (e.g. Jacobians of fixed-point maps) but well-conditioned
    operators, where CG's robustness matters more than speed.

    Cost: two operator applications (``matvec`` and its transpose) per iteration; the condition
    number is squared, so convergence is slower than CG on SPD systems. Memory :math:`O(n)`.
    """
    _check_common(b, ridge, tol, maxiter, x0)
    op = _ridged(matvec, ridge)
    op_k, b_k, x0_k = _common_dtype(op, b, x0)
    op_t_tuple = jax.linear_transpose(op_k, b_k)

    def op_t(v):
        return op_t_tuple(v)[0]

    def normal_op(v):
        return op_t(op_k(v))

    rhs = op_t(b_k)
    x, _ = jsp.cg(normal_op, rhs, x0=x0_k, tol=tol, atol=0.0, maxiter=maxiter)
    return _finish(op, x, b)


def solve_gmres(
    matvec: Matvec,
    b,
    *,
    ridge=0.0,
    tol=1e-10,
    maxiter=None,
    x0=None,
    restart: int = 20,
    solve_method: str = "batched",
) -> LinearSolution:
    r"""Restarted GMRES(``restart``) for a general non-singular :math:`(A + \rho I)x = b`.

    Wraps :func:`jax.scipy.sparse.linalg.gmres` (``tol`` relative, ``atol = 0``). Note that there
    ``maxiter`` counts *restarts* (outer cycles, default ``10 n``), each building a Krylov space of
    dimension ``min(restart, n)``; ``solve_method`` is ``"batched"`` (GPU friendly) or
    ``"incremental"`` (Givens rotations, can stop inside a cycle).

    When to use: non-symmetric or indefinite operators (Jacobians of fixed-point or
    stationarity maps of non-convex problems); monotone decrease of the residual norm.

    Cost: ``restart`` matvecs per cycle plus :math:`O(n\cdot\text{restart})` memory for the Krylov
    basis and :math:`O(n\cdot\text{restart}^2)` orthogonalisation flops per cycle.
    """
    _check_common(b, ridge, tol, maxiter, x0)
    _check_count("restart", restart, allow_none=False)
    if solve_method not in ("batched", "incremental"):
        raise ValueError(f"solve_method must be 'batched' or 'incremental', got {solve_method!r}")
    op = _ridged(matvec, ridge)
    op_k, b_k, x0_k = _common_dtype(op, b, x0)
    x, _ = jsp.gmres(
        op_k, b_k, x0=x0_k, tol=tol, atol=0.0, restart=int(restart), maxiter=maxiter, solve_method=solve_method
    )
    return _finish(op, x, b)


def solve_bicgstab(matvec: Matvec, b, *, ridge=0.0, tol=1e-10, maxiter=None, x0=None) -> LinearSolution:
    r"""BiCGSTAB for a general non-singular :math:`(A + \rho I)x = b`.

    Wraps :func:`jax.scipy.sparse.linalg.bicgstab` (``tol`` relative, ``atol = 0``).

    When to use: non-symmetric operators when GMRES's memory is too large; short recurrences but
    no residual-minimisation guarantee (it can stagnate or break down — check ``residual``).

    Cost: two matvecs per iteration, at most ``maxiter`` iterations (default ``10 n``); memory
    :math:`O(n)`.
    """
    _check_common(b, ridge, tol, maxiter, x0)
    op = _ridged(matvec, ridge)
    op_k, b_k, x0_k = _common_dtype(op, b, x0)
    x, _ = jsp.bicgstab(op_k, b_k, x0=x0_k, tol=tol, atol=0.0, maxiter=maxiter)
    return _finish(op, x, b)


# --------------------------------------------------------------------------------------------------
# dense direct solvers


def _materialize(matvec: Matvec, b, ridge):
    """Dense matrix of ``matvec + ridge I`` in the flat coordinates of ``b``, and the unravel map."""
    flat_b, unravel = ravel_pytree(b)
    n = flat_b.shape[0]

    def flat_matvec(v):
        return ravel_pytree(matvec(unravel(v)))[0]

    # rows of the vmapped result are A e_i, i.e. the columns of A
    a = jax.vmap(flat_matvec)(jnp.eye(n, dtype=flat_b.dtype)).T
    a = a + _scalar_like(ridge, a) * jnp.eye(n, dtype=a.dtype)
    return a, flat_b, unravel


def solve_cholesky(matvec: Matvec, b, *, ridge=0.0, tol=1e-10, maxiter=None, x0=None) -> LinearSolution:
    r"""Dense Cholesky solve of :math:`(A + \rho I)x = b`, :math:`A + \rho I` symmetric positive definite.

    The matrix is materialised by vmapping ``matvec`` over the identity of the flattened ``b``
    (:func:`jax.flatten_util.ravel_pytree`), factored with :func:`jax.scipy.linalg.cho_factor`
    (only its lower triangle is read) and solved with :func:`jax.scipy.linalg.cho_solve`. ``tol``,
    ``maxiter`` and ``x0`` are accepted for signature compatibility and ignored. A matrix that is
    not positive definite gives NaN (a non-finite ``residual``), not an exception.

    When to use: small problems (:math:`n` up to a few thousand) where an exact adjoint is wanted,
    and as a reference for the iterative solvers.

    Cost: :math:`n` matvecs (batched) + :math:`n^3/3` flops + :math:`O(n^2)` memory.
    """
    _check_common(b, ridge, tol, maxiter, x0)
    a, flat_b, unravel = _materialize(matvec, b, ridge)
    factor = jsl.cho_factor(a, lower=True)
    x = unravel(jsl.cho_solve(factor, flat_b))
    return _finish(_ridged(matvec, ridge), x, b)


def solve_lu(matvec: Matvec, b, *, ridge=0.0, tol=1e-10, maxiter=None, x0=None) -> LinearSolution:
    r"""Dense LU (partial pivoting) solve of a general non-singular :math:`(A + \rho I)x = b`.

    Materialises the matrix like :func:`solve_cholesky`, then :func:`jax.scipy.linalg.lu_factor` /
    :func:`jax.scipy.linalg.lu_solve`. ``tol``, ``maxiter`` and ``x0`` are accepted and ignored. A
    singular matrix gives inf/NaN (a non-finite ``residual``), not an exception.

    When to use: small non-symmetric problems; exact reference for GMRES/BiCGSTAB.

    Cost: :math:`n` matvecs (batched) + :math:`2n^3/3` flops + :math:`O(n^2)` memory.
    """
    _check_common(b, ridge, tol, maxiter, x0)
    a, flat_b, unravel = _materialize(matvec, b, ridge)
    factor = jsl.lu_factor(a)
    x = unravel(jsl.lu_solve(factor, flat_b))
    return _finish(_ridged(matvec, ridge), x, b)


# --------------------------------------------------------------------------------------------------
# series solvers


def solve_neumann(
    matvec: Matvec, b, *, ridge=0.0, tol=1e-10, maxiter=None, x0=None, alpha=1.0
) -> LinearSolution:
    r"""Truncated Neumann series :math:`x = \alpha\sum_{k=0}^{K}(I - \alpha A_\rho)^k b`, :math:`A_\rho = A + \rho I`.

    Equivalent to Richardson iteration :math:`x_{k+1} = x_k + \alpha(b - A_\rho x_k)` from
    :math:`x_0 = 0`. With ``x0`` given, the series is applied to the initial residual:
    :math:`x = x_0 + \alpha\sum_k (I-\alpha A_\rho)^k (b - A_\rho x_0)`. ``K = maxiter`` (default 100);
    the loop stops early once the norm of the latest term is below ``tol * ||x||``.

    Convergence: iff the spectral radius of :math:`I - \alpha A_\rho` is below 1; for symmetric
    :math:`A_\rho` this means :math:`0 < \alpha\lambda_{\min}` and :math:`\alpha\lambda_{\max} < 2`
    (take :math:`\alpha \approx 1/\lambda_{\max}`). The error contracts by
    :math:`\max_i|1 - \alpha\lambda_i|` per term. With too large ``alpha`` the series diverges to
    inf/NaN, which shows in ``residual``.

    When to use: cheap, approximate adjoints with a fixed budget (e.g. hyperparameter
    optimisation, Lorraine et al. 2020), or operators where Krylov methods are unstable.

    Cost: one matvec per term (+1 when ``x0`` is given, +1 for the residual), memory :math:`O(n)`.
    """
    _check_common(b, ridge, tol, maxiter, x0)
    _check_positive("alpha", alpha)
    maxiter = 100 if maxiter is None else int(maxiter)
    op = _ridged(matvec, ridge)

    if x0 is None:
        start = jax.tree_util.tree_map(jnp.zeros_like, b)
        r0 = b
    else:
        start = jax.tree_util.tree_map(lambda a, c: jnp.asarray(a, dtype=jnp.result_type(c)), x0, b)
        r0 = otu.tree_sub(b, op(start))

    term0 = _scale(r0, alpha)
    x_init = otu.tree_add(start, term0)

    def cond(state):
        k, _, _, term_norm, x_norm = state
        return (k < maxiter) & (term_norm >= tol * x_norm)

    def body(state):
        k, x, term, _, _ = state
        term = _axpy(term, -alpha, op(term))  # term <- (I - alpha A) term
        x = otu.tree_add(x, term)
        return k + 1, x, term, _norm(term), _norm(x)

    state = (jnp.asarray(0), x_init, term0, _norm(term0), _norm(x_init))
    _, x, _, _, _ = jax.lax.while_loop(cond, body, state)
    return _finish(op, x, b)


def solve_lissa(
    matvec: Matvec,
    b,
    *,
    ridge=0.0,
    tol=1e-10,
    maxiter=None,
    x0=None,
    scale=10.0,
    depth=None,
    repeats: int = 1,
    key=None,
    sample_matvec: Callable[[Any, jax.Array], Any] | None = None,
) -> LinearSolution:
    r"""LiSSA: stochastic truncated Neumann series for :math:`(A + \rho I)x = b`.

    Recursion (Agarwal, Bullins & Hazan 2017; Koh & Liang 2017):

    .. math:: x_0 = b,\qquad x_j = b + \bigl(I - \tilde A_{\rho,j}/s\bigr)\,x_{j-1},\quad j = 1..J,
       \qquad x = x_J / s,

    with :math:`s` = ``scale``, :math:`J` = ``depth`` (default ``maxiter``, else 1000) and
    :math:`\tilde A_{\rho,j} v = \widetilde{A v} + \rho v`, where :math:`\widetilde{Av}` is
    ``sample_matvec(v, key_j)`` (an unbiased mini-batch estimate of :math:`A v`, with a fresh key
    split from ``key`` at every step) or the exact ``matvec(v)`` when ``sample_matvec`` is None.
    The result is averaged over ``repeats`` independent recursions (with ``sample_matvec=None`` all
    repeats are identical, so it is computed once). The exact ``matvec`` is used for the final
    ``residual``. ``tol`` and ``x0`` are accepted and ignored (exactly ``depth`` steps are taken).

    Convergence: :math:`x_J/s = \frac1s\sum_{k=0}^{J}(I - A_\rho/s)^k b \to A_\rho^{-1} b` when
    :math:`A_\rho` is positive definite and ``scale`` :math:`> \lambda_{\max}(A_\rho)` (so that
    :math:`0 \preceq I - A_\rho/s \prec I`; the deterministic recursion tolerates up to
    :math:`s > \lambda_{\max}/2`, the stochastic one needs :math:`s` above the largest eigenvalue of
    the *sampled* operators). The error contracts by :math:`1 - \lambda_{\min}(A_\rho)/s` per step,
    so ``depth`` should be several times :math:`s/\lambda_{\min}`; the stochastic variance
    shrinks like ``1/repeats``.

    When to use: influence functions / implicit gradients of large empirical-risk problems where
    even one exact Hessian-vector product over all data is expensive.

    Cost: ``repeats * depth`` (sampled) matvecs + 1 exact matvec for the residual; memory
    :math:`O(n)`.
    """
    _check_common(b, ridge, tol, maxiter, x0)
    _check_positive("scale", scale)
    _check_count("depth", depth)
    _check_count("repeats", repeats, allow_none=False)
    if sample_matvec is not None and key is None:
        raise ValueError("solve_lissa: key (a PRNG key) is required when sample_matvec is given")
    if sample_matvec is not None and not callable(sample_matvec):
        raise ValueError(f"sample_matvec must be callable or None, got {sample_matvec!r}")
    if depth is None:
        depth = 1000 if maxiter is None else maxiter
    depth = int(depth)
    repeats = int(repeats)
    op = _ridged(matvec, ridge)
    inv_scale = 1.0 / scale if _is_concrete_number(scale) else 1.0 / jnp.asarray(scale)

    def step(x, key_j):
        if sample_matvec is None:
            ax = op(x)
        else:
            ax = jax.tree_util.tree_map(
                lambda av, v: av + _scalar_like(ridge, v) * v, sample_matvec(x, key_j), x
            )
        # x_j = b + x_{j-1} - A x_{j-1} / s
        return otu.tree_add(b, _axpy(x, -inv_scale, ax))

    def one_recursion(key_r):
        def body(_, carry):
            x, k = carry
            if sample_matvec is None:
                return step(x, None), k
            k, sub = jax.random.split(k)
            return step(x, sub), k

        x, _ = jax.lax.fori_loop(0, depth, body, (b, key_r))
        return _scale(x, inv_scale)

    if sample_matvec is None:
        x = one_recursion(key)
    else:
        keys = jax.random.split(key, repeats)

        def accumulate(r, total):
            return otu.tree_add(total, one_recursion(keys[r]))

        total = jax.lax.fori_loop(0, repeats, accumulate, jax.tree_util.tree_map(jnp.zeros_like, b))
        x = _scale(total, 1.0 / repeats)
    return _finish(op, x, b)


# --------------------------------------------------------------------------------------------------
# registry

SOLVERS: dict[str, Callable[..., LinearSolution]] = {
    "cg": solve_cg,
    "normal_cg": solve_normal_cg,
    "gmres": solve_gmres,
    "bicgstab": solve_bicgstab,
    "cholesky": solve_cholesky,
    "lu": solve_lu,
    "neumann": solve_neumann,
    "lissa": solve_lissa,
}


def get_solver(linear_solver: str | Callable[..., LinearSolution]) -> Callable[..., LinearSolution]:
    """Return the solver function for a name in :data:`SOLVERS`, or ``linear_solver`` itself if callable.

    Raises:
      ValueError: ``linear_solver`` is a string that is not a key of :data:`SOLVERS`.
      TypeError: ``linear_solver`` is neither a string nor callable.
    """
    if isinstance(linear_solver, str):
        try:
            return SOLVERS[linear_solver]
        except KeyError:
            raise ValueError(
                f"unknown linear_solver {linear_solver!r}; valid names are {sorted(SOLVERS)}"
            ) from None
    if callable(linear_solver):
        return linear_solver
    raise TypeError(
        f"linear_solver must be a solver name ({sorted(SOLVERS)}) or a callable, got {linear_solver!r}"
    )
