r"""Series solvers: the truncated Neumann series (Richardson iteration) and LiSSA, its stochastic,
repeated variant for influence functions."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax.tree_utils as otu

from bilevel.linear_solve.base import (
    LinearSolution,
    LinearSolver,
    Matvec,
    _axpy,
    _check_count,
    _check_number,
    _is_concrete_number,
    _norm,
    _scalar_like,
    _scale,
    failure_floor,
)

__all__ = ["Neumann", "LiSSA"]


@dataclasses.dataclass(frozen=True)
class Neumann(LinearSolver):
    r"""Truncated Neumann series :math:`x = \alpha\sum_{k=0}^{K}(I - \alpha A_\rho)^k b`, :math:`A_\rho = A + \rho I`.

    Equivalent to Richardson iteration :math:`x_{k+1} = x_k + \alpha(b - A_\rho x_k)` from
    :math:`x_0 = 0`. With ``x0`` given, the series is applied to the initial residual:
    :math:`x = x_0 + \alpha\sum_k (I-\alpha A_\rho)^k (b - A_\rho x_0)`. The loop stops early once the
    norm of the latest term is below ``tol * ||x||``.

    Attributes:
      tol: relative size of the last term at which to stop (``None``: :func:`default_tol`; 0: always
        sum ``maxiter`` terms).
      maxiter: ``K``, the number of terms after the first (``None``: 100).
      ridge: :math:`\rho \ge 0`.
      alpha: the step :math:`\alpha > 0` (take :math:`\alpha \approx 1/\lambda_{\max}`).

    Convergence: iff the spectral radius of :math:`I - \alpha A_\rho` is below 1; for symmetric
    :math:`A_\rho` this means :math:`0 < \alpha\lambda_{\min}` and :math:`\alpha\lambda_{\max} < 2`.
    The error contracts by :math:`\max_i|1 - \alpha\lambda_i|` per term. With too large ``alpha`` the
    series diverges to inf/NaN, which shows in ``residual``.

    When to use: cheap, approximate adjoints with a fixed budget (e.g. hyperparameter
    optimisation, Lorraine et al. 2020), or operators where Krylov methods are unstable.

    Cost: one matvec per term (+1 when ``x0`` is given, +1 for the residual), memory :math:`O(n)`.
    """

    tol: float | None = None
    maxiter: int | None = None
    ridge: float = 0.0
    alpha: float = 1.0

    def __post_init__(self):
        self._validate_common()
        _check_number("Neumann", "alpha", self.alpha, positive=True)

    def _solve(self, op, b, x0, tol):
        maxiter = 100 if self.maxiter is None else int(self.maxiter)
        alpha = self.alpha
        if x0 is None:
            start = jax.tree_util.tree_map(jnp.zeros_like, b)
            r0 = b
        else:
            start = x0
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
        return jax.lax.while_loop(cond, body, state)[1]


@dataclasses.dataclass(frozen=True)
class LiSSA(LinearSolver):
    r"""LiSSA: stochastic truncated Neumann series for :math:`(A + \rho I)x = b`.

    Recursion (Agarwal, Bullins & Hazan 2017; Koh & Liang 2017):

    .. math:: x_0 = b,\qquad x_j = b + \bigl(I - \tilde A_{\rho,j}/s\bigr)\,x_{j-1},\quad j = 1..J,
       \qquad x = x_J / s,

    with :math:`s` = ``scale``, :math:`J` = ``depth`` and :math:`\tilde A_{\rho,j} v = \widetilde{A v} +
    \rho v`, where :math:`\widetilde{Av}` is ``sample_matvec(v, key_j)`` (an unbiased mini-batch estimate
    of :math:`A v`, with a fresh key split from ``key`` at every step) or the exact ``matvec(v)`` when no
    ``sample_matvec`` is given to the call. The result is averaged over ``repeats`` independent
    recursions (with exact products all repeats are identical, so it is computed once). The exact
    ``matvec`` is used for the final ``residual``. ``x0`` is ignored (exactly ``depth`` steps are taken).

    Attributes:
      scale: :math:`s > \lambda_{\max}(A_\rho)`.
      depth: :math:`J`, the number of recursion steps.
      repeats: independent recursions averaged (stochastic mode).
      ridge: :math:`\rho \ge 0`.
      batch_size: for the influence functions of :mod:`bilevel.influence`: estimate every Hessian-vector
        product on ``batch_size`` training examples drawn without replacement (Koh & Liang, Sec. 3);
        they build the ``sample_matvec`` from their training data. ``None``: exact products.
      key: PRNG key of the sampling (needed with ``batch_size`` or ``sample_matvec``).

    Call: ``LiSSA(...)(matvec, b, x0=None, *, sample_matvec=None)``, ``sample_matvec(v, key) -> A v``
    estimate.

    Convergence: :math:`x_J/s = \frac1s\sum_{k=0}^{J}(I - A_\rho/s)^k b \to A_\rho^{-1} b` when
    :math:`A_\rho` is positive definite and ``scale`` :math:`> \lambda_{\max}(A_\rho)` (so that
    :math:`0 \preceq I - A_\rho/s \prec I`; the deterministic recursion tolerates up to
    :math:`s > \lambda_{\max}/2`, the stochastic one needs :math:`s` above the largest eigenvalue of
    the *sampled* operators). The error contracts by :math:`1 - \lambda_{\min}(A_\rho)/s` per step,
    so ``depth`` should be several times :math:`s/\lambda_{\min}`; the stochastic variance
    shrinks like ``1/repeats``. A stochastic estimate is noisy by design, so with ``batch_size`` set
    :meth:`failure_tol` is 1 (the residual of ``x = 0``): only a diverging recursion counts as failed.

    When to use: influence functions / implicit gradients of large empirical-risk problems where
    even one exact Hessian-vector product over all data is expensive.

    Cost: ``repeats * depth`` (sampled) matvecs + 1 exact matvec for the residual; memory
    :math:`O(n)`.
    """

    scale: float = 10.0
    depth: int = 1000
    repeats: int = 1
    ridge: float = 0.0
    batch_size: int | None = None
    key: Any = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        self._validate_common()
        _check_number("LiSSA", "scale", self.scale, positive=True)
        _check_count("LiSSA", "depth", self.depth, allow_none=False)
        _check_count("LiSSA", "repeats", self.repeats, allow_none=False)
        _check_count("LiSSA", "batch_size", self.batch_size)

    def __call__(self, matvec: Matvec, b, x0=None, *, sample_matvec: Callable | None = None) -> LinearSolution:
        if sample_matvec is not None and not callable(sample_matvec):
            raise ValueError(f"LiSSA: sample_matvec must be callable or None, got {sample_matvec!r}")
        if sample_matvec is not None and self.key is None:
            raise ValueError("LiSSA: a PRNG key (field 'key') is required with sample_matvec")
        return self._run(matvec, b, x0, sample_matvec=sample_matvec)

    def _settings(self):
        return (self.scale, self.depth, self.repeats, self.ridge, self.batch_size)

    def __eq__(self, other):  # the key compares by identity (an array has no boolean ==)
        return type(other) is LiSSA and self._settings() == other._settings() and self.key is other.key

    def __hash__(self):
        return hash((LiSSA, self._settings(), id(self.key)))

    def resolved_tol(self, dtype) -> float:
        return 0.0

    def failure_tol(self, dtype) -> float:
        return 1.0 if self.batch_size is not None else failure_floor(dtype)

    def _solve(self, op, b, x0, tol, sample_matvec=None):
        depth, repeats, ridge = int(self.depth), int(self.repeats), self.ridge
        scale = self.scale
        inv_scale = 1.0 / scale if _is_concrete_number(scale) else 1.0 / jnp.asarray(scale)

        def step(x, key_j):
            if sample_matvec is None:
                ax = op(x)
            else:
                ax = jax.tree_util.tree_map(lambda av, v: av + _scalar_like(ridge, v) * v, sample_matvec(x, key_j), x)
            return otu.tree_add(b, _axpy(x, -inv_scale, ax))  # x_j = b + x_{j-1} - A x_{j-1} / s

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
            return one_recursion(None)
        keys = jax.random.split(self.key, repeats)

        def accumulate(r, total):
            return otu.tree_add(total, one_recursion(keys[r]))

        total = jax.lax.fori_loop(0, repeats, accumulate, jax.tree_util.tree_map(jnp.zeros_like, b))
        return _scale(total, 1.0 / repeats)

