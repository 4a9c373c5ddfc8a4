r"""Differentiable solution map of a convex quadratic program with box and equality constraints.

Problem
-------
For ``Q`` symmetric positive semidefinite (``n x n``), ``A`` (``m x n``, ``m`` may be 0)::

    x*(Q, c, A, b, l, u) = argmin_x  1/2 x'Qx + c'x    s.t.  A x = b,   l <= x <= u.

KKT conditions
--------------
With multipliers ``nu`` (equality, free sign) and ``lam_l, lam_u >= 0`` (bounds), and the Lagrangian
``L = 1/2 x'Qx + c'x + nu'(Ax - b) - lam_l'(x - l) + lam_u'(x - u)``, a point ``x`` is optimal iff::

    g := Q x + c + A' nu = lam_l - lam_u          (stationarity)
    A x = b,  l <= x <= u                         (primal feasibility)
    lam_l, lam_u >= 0                             (dual feasibility)
    lam_l * (x - l) = 0,  lam_u * (u - x) = 0     (complementarity)

Split the variables into the *lower-active* set ``L`` (``x_i = l_i``, ``g_i >= 0``), the *upper-active*
set ``U`` (``x_i = u_i``, ``g_i <= 0``) and the *free* set ``F`` (``g_i = 0``); write ``B = L u U``.
Given the active set, the free variables and ``nu`` solve the linear (equality-constrained) KKT system::

    [ Q_FF  A_F' ] [ x_F ]   [ -c_F - Q_FB x_B ]
    [ A_F   0    ] [ nu  ] = [  b   - A_B x_B  ],        x_B = l_B or u_B.

Active-set derivative
---------------------
When the active set is locally constant (strict complementarity), the system above holds on a
neighbourhood of the data, so ``x*`` is differentiable and its derivative is that of the linear solve
with the partition frozen (Amos & Kolter, 2017, "OptNet: Differentiable Optimization as a Layer in
Neural Networks", ICML): for a perturbation ``d`` of the data,
``K [dx_F; dnu] = d(rhs) - dK [x_F; nu]``, ``dx_B = dl_B`` or ``du_B``.  Bound variables stay on
their bounds and only the free ones move.  This module builds the system at *fixed size* ``n + m``
with masks (rows and columns of bound variables replaced by identity rows ``x_i = bound_i``) so that
the same code runs under ``jit`` and ``vmap``, freezes the masks with ``jax.lax.stop_gradient`` and lets
JAX differentiate the dense solve, which gives forward (``jvp``/``jacfwd``) and reverse
(``vjp``/``grad``/``jacrev``) derivatives with respect to ``Q, c, A, b, l, u`` — and thus to any data
that builds ``Q``, e.g. ``Q = diag(y) X X' diag(y)`` in the SVM dual (Biggio, Nelson & Laskov, 2012,
"Poisoning Attacks against Support Vector Machines", ICML).  At a degenerate point (a variable on its
bound with zero multiplier) the map is only directionally differentiable; we return the derivative for
the active set found by the solver (ties are resolved towards the bound).

Forward solve
-------------
1. An infeasible primal-dual interior-point method (Mehrotra predictor-corrector; one Cholesky
   factorisation of ``Q + D`` and an ``m x m`` Schur complement per iteration), run until the scaled
   residuals and the duality measure are below ``ipm_tol`` (typically 15-30 iterations).  It is only
   used to *identify* the active set, by the box rule ``x_i - gamma g_i <= l_i`` (resp. ``>= u_i``).
2. Primal-dual active-set iterations (Hintermueller, Ito & Kunisch, 2002): solve the reduced KKT system
   exactly on the current partition ("polish", as in OSQP), update the partition from the multiplier
   signs and bound violations, stop as soon as the KKT residual is below ``tol`` (normally after the
   first solve).  With ``warm_start`` these iterations start from a previous solution's partition and
   the interior-point method runs only if they fail.
3. A last polish on the final partition, differentiable in the data (the iterative stages run on
   ``stop_gradient`` inputs, in a separately jitted function whose compilation is reused by
   ``jax.jvp``/``jax.grad`` calls outside ``jit``).

Degenerate KKT matrices
-----------------------
* An equality row with no free variable: its multiplier is not fixed by the linear system.  The row
  is replaced by ``nu_j = 0`` in the solve and ``nu_j`` is then set to the midpoint of the interval
  allowed by the sign conditions of the bound variables (what LIBSVM does for the SVM intercept when
  there is no free support vector).
* Singular ``Q_FF`` on the null space of ``A_F`` or linearly dependent rows of ``A_F``: the solve uses
  the quasi-definite regularisation ``K + delta diag(I_F, -I_m)`` (``delta ~ 1e-10 * scale`` in
  float64), which is always nonsingular, followed by iterative refinement against the unregularised
  ``K`` starting from the solver's iterate; on nonsingular systems this converges to the exact solve
  (and derivative), on singular ones it picks the solution nearest to the starting iterate.  Nothing
  returns NaN for finite data.

Failures
--------
The KKT residual of the returned point is measured (scaled: primal parts divided by
``1 + max(|x|, |b|)``, dual parts by ``1 + max(|c|, |Qx|, |A'nu|)``).  If it exceeds ``tol`` (e.g. an
infeasible problem, or too few iterations) the result is flagged according to ``on_failure`` through
:func:`bilevel._checks.error_if`, which also works under ``jit``/``vmap``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np

from bilevel._checks import ConvergenceError, _is_concrete, check_on_failure, error_if, validate_finite

__all__ = ["QPSolution", "solve_qp", "kkt_residual", "ConvergenceError"]


class QPSolution(NamedTuple):
    """Solution of :func:`solve_qp`.

    Attributes:
      x: primal solution, shape ``(n,)`` — differentiable in the QP data.
      eq_multipliers: multipliers ``nu`` of ``A x = b``, shape ``(m,)`` (sign: ``Qx + c + A'nu = lam_l - lam_u``)
        — differentiable.
      active_lower: bool ``(n,)``, variables fixed at their lower bound.
      active_upper: bool ``(n,)``, variables fixed at their upper bound (never both true).
      residual: scaled KKT residual of ``x`` (scalar, not differentiated).
    """

    x: jax.Array
    eq_multipliers: jax.Array
    active_lower: jax.Array
    active_upper: jax.Array
    residual: jax.Array


# --------------------------------------------------------------------------------------------------
# input handling


def _float_dtype(*arrays):
    dt = jnp.result_type(*arrays)
    if not jnp.issubdtype(dt, jnp.floating):
        dt = jnp.result_type(float)
    return dt


def _check_shape(name, arr, expected):
    if tuple(arr.shape) != tuple(expected):
        raise ValueError(f"argument {name!r} has shape {tuple(arr.shape)}, expected {tuple(expected)}")


def _default_tol(dtype):
    return 1e-9 if jnp.finfo(dtype).bits >= 64 else 1e-4


def _reg_delta(dtype):
    return 1e-10 if jnp.finfo(dtype).bits >= 64 else 1e-5


def _prepare(Q, c, A, b, lower, upper):
    """Validate shapes/values and return float arrays ``Q, c, A, b, l, u`` (``A`` is ``(m, n)``)."""
    Q = jnp.asarray(Q)
    c = jnp.asarray(c)
    if Q.ndim != 2 or Q.shape[0] != Q.shape[1]:
        raise ValueError(f"argument 'Q' has shape {tuple(Q.shape)}, expected a square (n, n) matrix")
    n = Q.shape[0]
    _check_shape("c", c, (n,))
    if A is None:
        if b is not None and np.size(b) != 0:
            raise ValueError("argument 'b' was given without 'A'")
        A = jnp.zeros((0, n), dtype=Q.dtype)
        b = jnp.zeros((0,), dtype=Q.dtype)
    else:
        A = jnp.asarray(A)
        if A.ndim == 1:
            A = A[None, :]
        if A.ndim != 2 or A.shape[1] != n:
            raise ValueError(f"argument 'A' has shape {tuple(A.shape)}, expected (m, {n})")
        if b is None:
            raise ValueError("argument 'b' is required when 'A' is given")
        b = jnp.asarray(b)
        if b.ndim == 0 and A.shape[0] == 1:
            b = b[None]
        _check_shape("b", b, (A.shape[0],))
    bounds = []
    for name, v, fill in (("lower", lower, -jnp.inf), ("upper", upper, jnp.inf)):
        if v is None:
            v = jnp.full((n,), fill)
        else:
            v = jnp.asarray(v)
            if v.ndim == 0:
                v = jnp.broadcast_to(v, (n,))
            _check_shape(name, v, (n,))
        bounds.append(v)
    lower, upper = bounds
    dtype = _float_dtype(Q, c, A, b, lower, upper)
    Q, c, A, b, lower, upper = (jnp.asarray(v, dtype) for v in (Q, c, A, b, lower, upper))
    # values (only when concrete): NaN/inf in the data, NaN in the bounds, empty boxes
    for name, v in (("Q", Q), ("c", c), ("A", A), ("b", b)):
        validate_finite(name, v)
    Q = 0.5 * (Q + Q.T)  # only the symmetric part enters the objective
    for name, v in (("lower", lower), ("upper", upper)):
        if _is_concrete(v) and np.any(np.isnan(np.asarray(v))):
            raise ValueError(f"argument {name!r} contains NaN")
    if _is_concrete(lower) and np.any(np.asarray(lower) == np.inf):
        raise ValueError("argument 'lower' contains +inf")
    if _is_concrete(upper) and np.any(np.asarray(upper) == -np.inf):
        raise ValueError("argument 'upper' contains -inf")
    if _is_concrete(lower) and _is_concrete(upper):
        bad = np.nonzero(np.asarray(lower) > np.asarray(upper))[0]
        if bad.size:
            raise ValueError(f"lower > upper at indices {bad[:10].tolist()} (empty feasible box)")
    return Q, c, A, b, lower, upper


# --------------------------------------------------------------------------------------------------
# reduced KKT system on a fixed partition


def _diag_matrix(v):
    """``diag(v)`` as an elementwise product with the identity (cheaper to compile than ``jnp.diag``)."""
    return jnp.eye(v.shape[0], dtype=v.dtype) * v[None, :]


def _diagonal(M):
    n = M.shape[0]
    return M.reshape(-1)[:: n + 1]


def _row_has_free(A, free):
    """Bool ``(m,)``: equality row ``j`` involves at least one free variable (not differentiated)."""
    A = jax.lax.stop_gradient(A)
    absA = jnp.abs(A)
    row_norm = jnp.max(absA, axis=1, initial=0.0)
    free_norm = jnp.max(absA * free[None, :], axis=1, initial=0.0)
    return free_norm > 1e-12 * row_norm


def _bound_values(lo, up, l, u):
    # ``where`` (not products) so that infinite bounds of free variables never enter arithmetic.
    return jnp.where(lo, l, jnp.where(up, u, 0.0))


def _quasidefinite_factor(Q, A, f, hf, delta):
    r"""Factorise the regularised reduced KKT matrix by two Choleskys; returns ``(L, W, Ls)``.

    With ``f`` the free variables and ``hf`` the equality rows that involve one, the (masked,
    fixed-size) regularised matrix is

    .. math::  K_\delta = \begin{pmatrix} H & B^\top \\ B & -E \end{pmatrix},\quad
        H = F Q F + (I - F) + \delta F,\quad B = \mathrm{diag}(h) A F,\quad
        E = \delta\,\mathrm{diag}(h) - (I - \mathrm{diag}(h)),

    (``F = diag(f)``; bound variables and rows without free variables are identity rows). ``H`` is
    SPD for PSD ``Q`` and the Schur complement :math:`S = B H^{-1} B^\top + |E|` is SPD, so
    :math:`K_\delta z = r` is solved (:func:`_quasidefinite_solve`) as
    :math:`S\nu = B H^{-1} r_1 - \sigma r_2` (:math:`\sigma = \pm 1` for kept/identity rows),
    :math:`x = H^{-1}(r_1 - B^\top \nu)` — the quasi-definite factorisation of Vanderbei (1995).
    ``L = chol(H)``, ``W = H^{-1} B'`` and ``Ls = chol(S)``. Unlike a pivoted LU this needs no
    permutation (which costs a sequential loop of ``n`` steps per factorisation and per solve on CPU).
    """
    m = A.shape[0]
    H = f[:, None] * Q * f[None, :] + _diag_matrix(1.0 - f + delta * f)
    L = jsl.cho_factor(H, lower=True)[0]
    B = hf[:, None] * A * f[None, :]
    W = jsl.cho_solve((L, True), B.T)  # (n, m)
    Ls = jsl.cho_factor(B @ W + _diag_matrix(delta * hf + (1.0 - hf)), lower=True)[0] if m else W[:0, :0]
    return L, W, Ls


def _quasidefinite_solve(factors, hf, r):
    """Solve ``K_delta z = r`` with the factors of :func:`_quasidefinite_factor`."""
    L, W, Ls = factors
    n, m = W.shape
    r1, r2 = r[:n], r[n:]
    t = jsl.cho_solve((L, True), r1)
    if not m:
        return t
    nu = jsl.cho_solve((Ls, True), W.T @ r1 - (2.0 * hf - 1.0) * r2)
    return jnp.concatenate([t - W @ nu, nu])


def _empty_factors(n, m, dtype):
    return jnp.zeros((n, n), dtype), jnp.zeros((n, m), dtype), jnp.zeros((m, m), dtype)


def _invariants(Q, c, A, b):
    """The pieces of the reduced KKT system that do not depend on the partition: the full matrix
    ``[[Q, A'], [A, 0]]``, the right-hand side ``[-c; b]`` and the regularisation ``delta`` (computed
    once per solve, outside the active-set loop)."""
    m = A.shape[0]
    dtype = Q.dtype
    Kfull = jnp.concatenate(
        [jnp.concatenate([Q, A.T], axis=1), jnp.concatenate([A, jnp.zeros((m, m), dtype)], axis=1)], axis=0
    )
    scale = jax.lax.stop_gradient(jnp.maximum(1.0, jnp.max(jnp.abs(Kfull))))
    return Kfull, jnp.concatenate([-c, b]), _reg_delta(dtype) * scale


def _polish(Q, c, A, b, l, u, lo, up, x0, nu0, n_refine, differentiable=True, factors=None, inv=None):
    """Solve the reduced KKT system on the partition ``(lo, up)``; differentiable in the data.

    Fixed-size ``(n + m)`` system: bound variables get identity rows ``x_i = bound_i``; equality rows
    without free variables get ``nu_j = 0`` (fixed afterwards by :func:`_fix_free_multipliers`).
    Solved with a quasi-definite regularisation and ``n_refine`` steps of iterative refinement started
    at ``(x0, nu0)`` (which must be ``stop_gradient``-ed). ``factors``: the factorisation of this
    partition's matrix when already known (from the forward solve); computed otherwise. ``inv``: the
    partition-independent pieces from :func:`_invariants` (computed here when not given). Returns
    ``(x, nu, hf, factors)``.
    """
    n = Q.shape[0]
    m = A.shape[0]
    dtype = Q.dtype
    lo = jax.lax.stop_gradient(lo)
    up = jax.lax.stop_gradient(up)
    f = (~(lo | up)).astype(dtype)
    hf = _row_has_free(A, f).astype(dtype)
    xB = _bound_values(lo, up, l, u)
    keep = jnp.concatenate([f, hf])
    Kfull, cb, delta = _invariants(Q, c, A, b) if inv is None else inv
    K = keep[:, None] * Kfull * keep[None, :] + _diag_matrix(1.0 - keep)
    rhs = keep * (cb - Kfull[:, :n] @ xB)
    rhs = rhs + jnp.concatenate([(1.0 - f) * xB, jnp.zeros((m,), dtype)])

    sg = jax.lax.stop_gradient
    # The factorisation is never differentiated: the derivative of the solve is the implicit one,
    # K dz = d(rhs) - dK z, obtained by ``custom_linear_solve`` with the same (regularised + refined)
    # factorisation, for tangents and cotangents alike (``K`` is symmetric).  This reuses the forward
    # factorisation in the backward pass instead of differentiating through it and the refinement loop.
    Ks = sg(K)
    if factors is None:
        factors = _quasidefinite_factor(sg(Q), sg(A), f, hf, delta)
    factors = tuple(sg(v) for v in factors)

    def refine(r, z):  # a few steps, unrolled (a while loop costs more than its two iterations on CPU)
        for _ in range(n_refine):
            z = z + _quasidefinite_solve(factors, hf, r - Ks @ z)
        return z

    z0 = sg(jnp.concatenate([x0, nu0]))
    zp = refine(sg(rhs), z0)  # primal iterate (nearest solution to z0 on singular systems)
    if differentiable:
        solve = lambda _, r: refine(r, jnp.zeros_like(r))
        z = zp + jax.lax.custom_linear_solve(lambda v: K @ v, rhs - K @ zp, solve, symmetric=True)
    else:  # the iterative stages (inputs already stop_gradient-ed)
        z = zp
    x, nu = z[:n], z[n:]
    return x, nu, hf, factors


def _fix_free_multipliers(Q, c, A, l, u, x, nu, lo, up, hf):
    """Multipliers of equality rows that involve no free variable.

    For such a row ``j`` every ``nu_j`` in an interval keeps the sign conditions of the bound
    variables (``g_i >= 0`` on the lower set, ``<= 0`` on the upper set); take its midpoint (or the
    finite end, or 0).  Rows are treated one at a time with the other multipliers fixed (exact for
    ``m = 1``).
    """
    m = A.shape[0]
    if m == 0:
        return nu
    dtype = x.dtype
    fixed = jax.lax.stop_gradient(l == u)
    nu0 = nu * hf  # rows without free vars currently hold 0
    g = Q @ x + c + A.T @ nu0  # (n,)
    pos = A > 0
    neg = A < 0
    safeA = jnp.where(A != 0, A, 1.0)
    ratio = -g[None, :] / safeA  # (m, n)
    lo_b = (lo & ~fixed)[None, :]
    up_b = (up & ~fixed)[None, :]
    # nu >= ratio: lower & A>0, upper & A<0 ;  nu <= ratio: lower & A<0, upper & A>0
    ge = (lo_b & pos) | (up_b & neg)
    le = (lo_b & neg) | (up_b & pos)
    big = jnp.asarray(jnp.inf, dtype)
    nu_lo = jnp.max(jnp.where(ge, ratio, -big), axis=1)
    nu_hi = jnp.min(jnp.where(le, ratio, big), axis=1)
    lo_fin = jnp.isfinite(nu_lo)
    hi_fin = jnp.isfinite(nu_hi)
    nu_lo_s = jnp.where(lo_fin, nu_lo, 0.0)
    nu_hi_s = jnp.where(hi_fin, nu_hi, 0.0)
    mid = jnp.where(
        lo_fin & hi_fin, 0.5 * (nu_lo_s + nu_hi_s), jnp.where(lo_fin, nu_lo_s, jnp.where(hi_fin, nu_hi_s, 0.0))
    )
    return jnp.where(hf > 0, nu, mid)


def kkt_residual(Q, c, A, b, l, u, x, nu, lo, up):
    """Scaled KKT residual of ``(x, nu)`` for the partition ``(lo, up)`` (see module docstring)."""
    fixed = l == u
    free = ~(lo | up)
    Qx = Q @ x
    Atnu = A.T @ nu
    g = Qx + c + Atnu
    sign_viol = jnp.where(lo, jnp.maximum(-g, 0.0), jnp.maximum(g, 0.0))
    dual = jnp.where(fixed, 0.0, jnp.where(free, jnp.abs(g), sign_viol))
    comp = jnp.where(lo, jnp.abs(x - jnp.where(lo, l, 0.0)), 0.0)
    comp = comp + jnp.where(up, jnp.abs(x - jnp.where(up, u, 0.0)), 0.0)
    box = jnp.maximum(jnp.maximum(l - x, x - u), 0.0)
    eq = jnp.abs(A @ x - b)
    sp = 1.0 + jnp.maximum(jnp.max(jnp.abs(x), initial=0.0), jnp.max(jnp.abs(b), initial=0.0))
    sd = 1.0 + jnp.maximum(
        jnp.max(jnp.abs(c), initial=0.0),
        jnp.maximum(jnp.max(jnp.abs(Qx), initial=0.0), jnp.max(jnp.abs(Atnu), initial=0.0)),
    )
    rp = jnp.maximum(jnp.maximum(jnp.max(box, initial=0.0), jnp.max(eq, initial=0.0)), jnp.max(comp, initial=0.0))
    rd = jnp.max(dual, initial=0.0)
    res = jnp.maximum(rp / sp, rd / sd)
    return jnp.where(jnp.isnan(res), jnp.inf, res)


# --------------------------------------------------------------------------------------------------
# forward solver (all inputs are stop_gradient-ed by the caller)


def _ipm(Q, c, A, b, l, u, *, maxiter, eps):
    """Infeasible primal-dual interior-point method (Mehrotra predictor-corrector).

    Variables with ``l_i == u_i`` are fixed and eliminated; infinite bounds carry no slack.  Each
    iteration factors ``M = Q + D + delta I`` (``D`` the barrier Hessian, ``M`` SPD for PSD ``Q``) by
    Cholesky and eliminates the equality block through the ``m x m`` Schur complement
    ``A M^-1 A' + delta I``.  Returns ``(x, nu)`` once the scaled residuals and the duality measure are
    below ``eps`` (or after ``maxiter`` iterations); accuracy only matters for identifying the active set.
    """
    n = Q.shape[0]
    m = A.shape[0]
    dtype = Q.dtype
    fixed = l == u
    hl = jnp.isfinite(l) & ~fixed
    hu = jnp.isfinite(u) & ~fixed
    fl = hl.astype(dtype)
    fu = hu.astype(dtype)
    fr = (~fixed).astype(dtype)
    ls = jnp.where(hl, l, 0.0)
    us = jnp.where(hu, u, 0.0)
    nb = jnp.maximum(jnp.sum(fl) + jnp.sum(fu), 1.0)
    Qf = Q * fr[:, None] * fr[None, :]
    Af = A * fr[None, :]
    scale = jnp.maximum(1.0, jnp.maximum(jnp.max(jnp.abs(Q), initial=0.0), jnp.max(jnp.abs(A), initial=0.0)))
    delta = 1e3 * jnp.finfo(dtype).eps * scale
    sc = 1.0 + jnp.max(jnp.abs(c), initial=0.0)
    sb = 1.0 + jnp.max(jnp.abs(b), initial=0.0)
    eta = 0.995

    x0 = jnp.where(
        fixed,
        jnp.where(jnp.isfinite(l), l, 0.0),
        jnp.where(hl & hu, 0.5 * (ls + us), jnp.where(hl, ls + 1.0, jnp.where(hu, us - 1.0, 0.0))),
    )
    z0 = sc
    state0 = (x0, jnp.zeros((m,), dtype), fl * z0, fu * z0, jnp.asarray(0), jnp.asarray(False))

    def parts(x, nu, zl, zu):
        sl = jnp.where(hl, x - ls, 1.0)
        su = jnp.where(hu, us - x, 1.0)
        Qx = Q @ x
        rd = fr * (Qx + c + A.T @ nu - zl + zu)
        rp = A @ x - b
        mu = (jnp.sum(fl * sl * zl) + jnp.sum(fu * su * zu)) / nb
        return sl, su, Qx, rd, rp, mu

    def max_step(v, dv, mask):
        # largest a <= 1/eta with v + a dv >= 0 on mask
        r = jnp.where(mask & (dv < 0), -v / jnp.where(dv < 0, dv, -1.0), jnp.inf)
        return jnp.minimum(jnp.min(r, initial=jnp.inf), 1.0 / eta)

    def body(state):
        x, nu, zl, zu, it, _ = state
        sl, su, Qx, rd, rp, mu = parts(x, nu, zl, zu)
        D = fl * zl / sl + fu * zu / su
        M = Qf + _diag_matrix(jnp.where(fixed, 1.0, D + delta))
        L = jsl.cho_factor(M, lower=True)
        if m:
            W = jsl.cho_solve(L, Af.T)
            Ls = jsl.cho_factor(Af @ W + delta * jnp.eye(m, dtype=dtype), lower=True)

        def newton(rcl, rcu):
            r1 = fr * (-rd + fl * rcl / sl - fu * rcu / su)
            t = jsl.cho_solve(L, r1)
            if m:
                dnu = jsl.cho_solve(Ls, Af @ t + rp)
                dx = t - W @ dnu
            else:
                dnu = jnp.zeros((0,), dtype)
                dx = t
            dzl = fl * (rcl - zl * dx) / sl
            dzu = fu * (rcu + zu * dx) / su
            return dx, dnu, dzl, dzu

        def step_len(dx, dzl, dzu):
            a = jnp.minimum(
                jnp.minimum(max_step(sl, dx, hl), max_step(su, -dx, hu)),
                jnp.minimum(max_step(zl, dzl, hl), max_step(zu, dzu, hu)),
            )
            return a

        # predictor (affine scaling)
        dxa, _, dzla, dzua = newton(-sl * zl, -su * zu)
        aa = jnp.minimum(1.0, step_len(dxa, dzla, dzua))
        mu_aff = (
            jnp.sum(fl * (sl + aa * dxa) * (zl + aa * dzla)) + jnp.sum(fu * (su - aa * dxa) * (zu + aa * dzua))
        ) / nb
        sigma = jnp.clip((mu_aff / jnp.maximum(mu, 1e-300)) ** 3, 0.0, 1.0)
        # corrector
        rcl = sigma * mu - sl * zl - dxa * dzla
        rcu = sigma * mu - su * zu + dxa * dzua
        dx, dnu, dzl, dzu = newton(rcl, rcu)
        a = jnp.minimum(1.0, eta * step_len(dx, dzl, dzu))
        xn, nun, zln, zun = x + a * dx, nu + a * dnu, zl + a * dzl, zu + a * dzu

        ok = jnp.all(jnp.isfinite(jnp.concatenate([xn, nun, zln, zun])))
        xn, nun, zln, zun = (jnp.where(ok, new, old) for new, old in ((xn, x), (nun, nu), (zln, zl), (zun, zu)))
        _, _, Qx, rd, rp, mu = parts(xn, nun, zln, zun)
        sd = sc + jnp.max(jnp.abs(Qx), initial=0.0)
        conv = (
            (jnp.max(jnp.abs(rd), initial=0.0) <= eps * sd)
            & (jnp.max(jnp.abs(rp), initial=0.0) <= eps * sb)
            & (mu <= eps * sd)
        )
        return xn, nun, zln, zun, it + 1, conv | ~ok

    def cond(state):
        return (state[4] < maxiter) & ~state[5]

    x, nu, zl, zu, *_ = jax.lax.while_loop(cond, body, state0)
    return x, nu


def _partition(x, g, l, u, gamma, atol):
    """Box rule: lower iff ``x - gamma g <= l`` (+tolerance); upper likewise; fixed vars -> lower."""
    t = x - gamma * g
    lthr = jnp.where(jnp.isfinite(l), l + atol * (1.0 + jnp.abs(l)), -jnp.inf)
    uthr = jnp.where(jnp.isfinite(u), u - atol * (1.0 + jnp.abs(u)), jnp.inf)
    lower = (t <= lthr) | (l == u)
    upper = (t >= uthr) & ~lower
    return lower, upper


def _active_set_loop(Q, c, A, b, l, u, lo, up, x, nu, *, tol, maxiter, gamma, atol):
    """Primal-dual active-set iterations, starting by solving on the partition ``(lo, up)``.

    Returns ``(lo, up, x, nu, factors)`` with ``(x, nu)`` the polished solution on the returned
    partition and ``factors`` that partition's factorisation (reused by :func:`_final`).
    """

    inv = _invariants(Q, c, A, b)  # loop invariant

    def body(state):
        lo, up, x, nu, _, it, _ = state
        g = Q @ x + c + A.T @ nu
        nlo, nup = _partition(x, g, l, u, gamma, atol)
        first = it == 0
        nlo = jnp.where(first, lo, nlo)
        nup = jnp.where(first, up, nup)
        same = jnp.all(nlo == lo) & jnp.all(nup == up) & ~first
        xn, nun, hf, fac = _polish(Q, c, A, b, l, u, nlo, nup, x, nu, n_refine=2, differentiable=False, inv=inv)
        nun = _fix_free_multipliers(Q, c, A, l, u, xn, nun, nlo, nup, hf)
        res = kkt_residual(Q, c, A, b, l, u, xn, nun, nlo, nup)
        stop = (res <= tol) | same
        return nlo, nup, xn, nun, fac, it + 1, stop

    def cond(state):
        return (state[5] < maxiter) & ~state[6]

    state = (lo, up, x, nu, _empty_factors(Q.shape[0], A.shape[0], Q.dtype), jnp.asarray(0), jnp.asarray(False))
    lo, up, x, nu, factors, *_ = jax.lax.while_loop(cond, body, state)
    return lo, up, x, nu, factors


def solve_qp(
    Q,
    c,
    A=None,
    b=None,
    lower=None,
    upper=None,
    *,
    tol: Optional[float] = None,
    maxiter: int = 100,
    active_set_maxiter: int = 50,
    active_tol: Optional[float] = None,
    ipm_tol: float = 1e-10,
    warm_start: Optional[QPSolution] = None,
    on_failure: str = "raise",
) -> QPSolution:
    r"""Solve ``min 1/2 x'Qx + c'x  s.t.  A x = b,  lower <= x <= upper`` differentiably.

    ``x`` and ``eq_multipliers`` of the result are differentiable (forward and reverse mode, and under
    ``vmap``/``jit``) w.r.t. ``Q, c, A, b, lower, upper`` through the KKT system on the (frozen) active
    set.  ``Q`` must be PSD; only its symmetric part ``(Q + Q')/2`` is used (and differentiated).

    Args:
      Q: ``(n, n)`` symmetric PSD matrix.
      c: ``(n,)`` linear term.
      A: ``(m, n)`` equality matrix (a ``(n,)`` vector is one row) or ``None`` for ``m = 0``.
      b: ``(m,)`` right-hand side (required when ``A`` is given).
      lower, upper: ``(n,)`` or scalar bounds, ``None`` = unbounded (``-inf``/``+inf`` allowed).
      tol: tolerance on the scaled KKT residual (default ``1e-9`` in float64, ``1e-4`` in float32).
      maxiter: maximum number of interior-point iterations used to find the initial active set.
      active_set_maxiter: maximum number of primal-dual active-set (polish) iterations.
      active_tol: relative tolerance of the bound test in active-set identification; ties within it
        are put on the bound (default ``1e-10`` in float64, ``1e-5`` in float32).
      ipm_tol: relative accuracy at which the interior-point iterations stop (only used to
        identify the active set; the returned point is the exact solve on that active set).
      warm_start: a previous :class:`QPSolution` of a nearby problem; its active set is tried first,
        and the interior-point method only runs when that does not reach ``tol``.
      on_failure: ``"raise"`` (:class:`ConvergenceError`), ``"warn"`` or ``"ignore"`` when the final
        residual exceeds ``tol`` (works under ``jit``: the error is raised when the computation runs).

    Returns:
      :class:`QPSolution` ``(x, eq_multipliers, active_lower, active_upper, residual)``.
    """
    check_on_failure(on_failure)
    if int(active_set_maxiter) < 1:
        raise ValueError(f"active_set_maxiter must be >= 1, got {active_set_maxiter}")
    Q, c, A, b, l, u = _prepare(Q, c, A, b, lower, upper)
    dtype = Q.dtype
    n, m = Q.shape[0], A.shape[0]
    if tol is None:
        tol = _default_tol(dtype)
    if active_tol is None:
        active_tol = 1e-10 if jnp.finfo(dtype).bits >= 64 else 1e-5

    if warm_start is not None:
        warm = (
            jnp.asarray(warm_start.active_lower, bool),
            jnp.asarray(warm_start.active_upper, bool),
            jnp.asarray(warm_start.x, dtype),
            jnp.asarray(warm_start.eq_multipliers, dtype),
        )
        for name, v, shape in zip(
            ("active_lower", "active_upper", "x", "eq_multipliers"), warm, ((n,), (n,), (n,), (m,))
        ):
            _check_shape(f"warm_start.{name}", v, shape)
    else:
        warm = None
    sg = jax.lax.stop_gradient
    lo, up, x0, nu0, factors = _run_forward(
        tuple(sg(v) for v in (Q, c, A, b, l, u)),
        None if warm is None else tuple(sg(v) for v in warm),
        dict(
            tol=float(tol),
            maxiter=int(maxiter),
            active_set_maxiter=int(active_set_maxiter),
            active_tol=float(active_tol),
            ipm_tol=float(ipm_tol),
        ),
    )
    sol, failed = _final(Q, c, A, b, l, u, lo, up, x0, nu0, factors, tol=float(tol))
    x = error_if(
        sol.x,
        failed,
        f"solve_qp did not converge: scaled KKT residual above tol={tol:g} "
        "(infeasible problem, Q not PSD, or increase maxiter/active_set_maxiter)",
        on_failure=on_failure,
        error=ConvergenceError,
    )
    return sol._replace(x=x)


_FORWARD_EXECUTABLES: dict = {}


def _run_forward(data, warm, static):
    """Call :func:`_forward`; on concrete inputs through a cached ahead-of-time executable.

    The inputs are ``stop_gradient``-ed, so outside ``jit`` they are concrete even under
    ``jax.jvp``/``jax.grad``/``jax.jacfwd``.  Calling the jitted function there would still go through
    the active transformation (``jacfwd``'s ``vmap`` changes the compilation key and would trigger a
    full recompilation of the iterative solver for every new batch size); the AOT executable runs the
    same compiled code directly.
    """
    args = (*data, warm)
    leaves = jax.tree_util.tree_leaves(args)
    if any(isinstance(v, jax.core.Tracer) for v in leaves):
        return _forward(*args, **static)
    key = (
        jax.tree_util.tree_structure(args),
        tuple((v.shape, str(v.dtype), getattr(v, "weak_type", False), getattr(v, "sharding", None)) for v in leaves),
        tuple(sorted(static.items())),
    )
    exe = _FORWARD_EXECUTABLES.get(key)
    if exe is None:
        exe = _FORWARD_EXECUTABLES[key] = _forward.lower(*args, **static).compile()
    return exe(*args)


@functools.partial(
    jax.jit, static_argnames=("tol", "maxiter", "active_set_maxiter", "active_tol", "ipm_tol")
)
def _forward(Q, c, A, b, l, u, warm, *, tol, maxiter, active_set_maxiter, active_tol, ipm_tol):
    """Non-differentiable part: find the active set and a polished solution on it."""
    gamma = 1.0 / jnp.maximum(jnp.max(_diagonal(Q), initial=0.0), 1.0)
    loop = dict(tol=tol, maxiter=active_set_maxiter, gamma=gamma, atol=active_tol)

    def cold():
        x, nu = _ipm(Q, c, A, b, l, u, maxiter=maxiter, eps=ipm_tol)
        g = Q @ x + c + A.T @ nu
        lo, up = _partition(x, g, l, u, gamma, active_tol)
        return _active_set_loop(Q, c, A, b, l, u, lo, up, jnp.clip(x, l, u), nu, **loop)

    if warm is None:
        return cold()
    wlo, wup, wx, wnu = warm
    wx = jnp.clip(wx, l, u)
    # the previous solution's partition, updated by the box rule at the new data (a predictor: when the
    # data moved, e.g. a poison point took a step, this saves about one active-set iteration in six)
    wlo, wup = _partition(wx, Q @ wx + c + A.T @ wnu, l, u, gamma, active_tol)
    wlo = (wlo | (l == u)) & jnp.isfinite(l)
    wup = wup & ~wlo & jnp.isfinite(u)
    # a warm partition far from the solution is abandoned for the interior-point path (20 active-set
    # iterations: from a nearby partition, e.g. the previous step of a poisoning attack, they almost
    # always converge, and each is far cheaper than the interior-point fallback)
    wstate = _active_set_loop(Q, c, A, b, l, u, wlo, wup, wx, wnu, **{**loop, "maxiter": min(active_set_maxiter, 20)})
    wres = kkt_residual(Q, c, A, b, l, u, wstate[2], wstate[3], wstate[0], wstate[1])
    return jax.lax.cond(wres <= tol, lambda: wstate, cold)


@functools.partial(jax.jit, static_argnames=("tol",))
def _final(Q, c, A, b, l, u, lo, up, x0, nu0, factors, *, tol):
    """Differentiable part: the polish on the frozen partition, reusing its factorisation from the
    forward solve (``lo, up, x0, nu0, factors`` carry no gradient)."""
    sg = jax.lax.stop_gradient
    lo, up, x0, nu0 = sg(lo), sg(up), sg(x0), sg(nu0)
    x, nu, hf, _ = _polish(Q, c, A, b, l, u, lo, up, x0, nu0, n_refine=2, factors=factors)
    nu = _fix_free_multipliers(Q, c, A, l, u, x, nu, lo, up, sg(hf))
    res = kkt_residual(*(sg(v) for v in (Q, c, A, b, l, u, x, nu)), lo, up)
    failed = ~(res <= tol)
    return QPSolution(x=x, eq_multipliers=nu, active_lower=lo, active_upper=up, residual=res), failed
