r"""Linear support vector machines: exact dual through the differentiable KKT map, and a smoothed primal.

Dual (with intercept)
---------------------
For labels ``y_i in {-1, +1}`` and (per-example) costs ``C_i > 0``::

    min_a  1/2 a'Qa - 1'a   s.t.  y'a = 0,  0 <= a_i <= C_i,     Q = diag(y) X X' diag(y),

solved by :func:`bilevel.kkt.solve_qp`.  Then ``w = X'(a * y)``.  On a margin support vector
(``0 < a_i < C_i``) stationarity reads ``(Qa)_i - 1 + nu y_i = 0``, i.e. ``y_i (w'x_i + nu) = 1``: the
multiplier ``nu`` of the equality ``y'a = 0`` *is* the intercept ``b`` (every margin SV gives
``b = y_i - w'x_i`` exactly after the KKT polish, so ``nu`` equals their mean, which is what LIBSVM
returns).  When there is no margin SV, ``b`` is the midpoint of the interval allowed by the bound SVs
(also LIBSVM's choice).  Because ``a`` and ``nu`` come out of the linear KKT system on the active set,
``(w, b)`` are differentiable w.r.t. ``X`` (through ``Q`` and ``w = X'(a y)``) and ``C``: margin SVs
move, points at ``a_i = 0`` or ``a_i = C_i`` stay there — exactly the derivative used by the
poisoning attack of Biggio, Nelson & Laskov (2012), "Poisoning Attacks against Support Vector
Machines", ICML.  Per-example ``C_i`` (a vector) weights examples as in ``C sum_i s_i hinge_i``.

Smoothed primal
---------------
Koh & Liang (2017, "Understanding Black-box Predictions via Influence Functions") SmoothHinge::

    smooth_hinge(z, t) = t * softplus((1 - z) / t)    ->  max(0, 1 - z)  as  t -> 0

(``0 <= smooth_hinge - hinge <= t log 2``).  :func:`svm_primal_loss` is the mean (optionally weighted)
smoothed hinge of the margins ``y (X w + b)`` plus ``0.5 * sum(reg * w**2)`` (intercept not
regularised); with ``reg`` scalar it approximates the dual problem with ``C = 1 / (n reg)``.

Conventions of this project's problems: ``loss(params, hyperparams, X, y, weights=None)``, mean over
the ``n`` examples, ``weights`` an optional ``(n,)`` vector multiplying each example's loss (the result
is ``mean(weights * loss_i)``).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from bilevel._checks import _is_concrete, validate_finite
from bilevel.kkt import QPSolution, solve_qp
from bilevel.problems._common import (
    Params,
    check_binary_labels,
    check_linear_params,
    check_reg,
    check_weights,
    check_X,
    l2_penalty,
    linear_decision,
    weighted_mean,
)

__all__ = [
    "SVMDualSolution",
    "svm_dual_fit",
    "svm_dual_fit_blocks",
    "svm_gram_block",
    "svm_decision",
    "hinge_loss",
    "smooth_hinge",
    "svm_primal_loss",
    "validate_labels",
]


class SVMDualSolution(NamedTuple):
    """Result of :func:`svm_dual_fit`.

    Attributes:
      w: ``(d,)`` weights (differentiable).
      b: ``()`` intercept (differentiable; the equality multiplier of the dual QP).
      alpha: ``(n,)`` dual coefficients (differentiable).
      margin_sv: bool ``(n,)``, margin support vectors ``0 < alpha_i < C_i``.
      bound_sv: bool ``(n,)``, bound support vectors ``alpha_i = C_i``.
      residual: scaled KKT residual of the dual QP.
      qp: the underlying :class:`~bilevel.kkt.QPSolution` (usable as ``warm_start``).
    """

    w: jax.Array
    b: jax.Array
    alpha: jax.Array
    margin_sv: jax.Array
    bound_sv: jax.Array
    residual: jax.Array
    qp: QPSolution

    @property
    def params(self) -> dict:
        """``{"w": w, "b": b}``, the parameter format of :func:`svm_decision` and the primal losses."""
        return {"w": self.w, "b": self.b}


def validate_labels(y, n: int, name: str = "y") -> None:
    """Labels must have shape ``(n,)`` and (when concrete) values in ``{-1, +1}``; ``ValueError`` otherwise."""
    check_binary_labels(y, n, name, values=(-1, 1))


def svm_dual_fit(
    X,
    y,
    C=1.0,
    *,
    tol: Optional[float] = None,
    maxiter: int = 100,
    active_set_maxiter: int = 50,
    warm_start=None,
    on_failure: str = "raise",
) -> SVMDualSolution:
    r"""Fit a linear SVM with intercept by solving its dual exactly (differentiably).

    Args:
      X: ``(n, d)`` features.
      y: ``(n,)`` labels in ``{-1, +1}``.
      C: scalar or per-example ``(n,)`` box constraint (``C_i >= 0``; ``C_i = 0`` forces ``alpha_i = 0``,
        i.e. removes example ``i``).
      tol, maxiter, active_set_maxiter, on_failure: passed to :func:`bilevel.kkt.solve_qp`.
      warm_start: a previous :class:`SVMDualSolution` (or :class:`~bilevel.kkt.QPSolution`) of a
        nearby problem, e.g. the previous step of a poisoning attack.

    Returns:
      :class:`SVMDualSolution`; ``w``, ``b``, ``alpha`` are differentiable w.r.t. ``X``, ``C`` (and ``y``
      as a real vector, though labels are normally held fixed).
    """
    n, _ = check_X(X)
    validate_labels(y, n)
    X = jnp.asarray(X)
    dtype = jnp.result_type(X, float)
    X = X.astype(dtype)
    y = jnp.asarray(y).astype(dtype)
    C = jnp.asarray(C, dtype)
    if C.ndim == 0:
        C = jnp.broadcast_to(C, (n,))
    if C.shape != (n,):
        raise ValueError(f"argument 'C' has shape {tuple(C.shape)}, expected () or ({n},)")
    validate_finite("C", C)
    if _is_concrete(C) and (np.any(np.asarray(C) < 0) or not np.any(np.asarray(C) > 0)):
        raise ValueError("argument 'C' must be non-negative with a positive entry (C_i = 0 removes example i)")
    if isinstance(warm_start, SVMDualSolution):
        warm_start = warm_start.qp

    Z = y[:, None] * X
    return _svm_dual_from_gram(X, y, C, Z @ Z.T, tol=tol, maxiter=maxiter, active_set_maxiter=active_set_maxiter,
                               warm_start=warm_start, on_failure=on_failure)


def svm_gram_block(X, y):
    r"""The loop-invariant pieces of a fixed training block: ``(Q_tt, Z_t)`` with ``Z_t = diag(y) X`` and
    ``Q_tt = Z_t Z_t'`` (labels in ``{-1, +1}``); the ``cache`` of :func:`svm_dual_fit_blocks`."""
    X = jnp.asarray(X)
    Z = jnp.asarray(y, X.dtype)[:, None] * X
    return Z @ Z.T, Z


def svm_dual_fit_blocks(cache, X_fixed, y_fixed, X_new, y_new, C=1.0, *, tol: Optional[float] = None,
                        maxiter: int = 100, active_set_maxiter: int = 50, warm_start=None,
                        on_failure: str = "raise") -> SVMDualSolution:
    r""":func:`svm_dual_fit` on the rows of ``X_fixed`` followed by those of ``X_new``, reusing the fixed
    block's Gram matrix ``cache = svm_gram_block(X_fixed, y_fixed)``.

    The dual's :math:`Q = \mathrm{diag}(y) X X^\top \mathrm{diag}(y)` is assembled blockwise,

    .. math::  Q = \begin{pmatrix} Q_{tt} & Z_t Z_p^\top \\ Z_p Z_t^\top & Z_p Z_p^\top \end{pmatrix},

    so a caller that changes only the new rows (a poisoning attack moving its points) recomputes and
    differentiates only the :math:`(m, n_t)` and :math:`(m, m)` blocks, and :math:`w = X^\top(\alpha y)` is
    computed blockwise without re-laying out the constant block. Same solution as :func:`svm_dual_fit`
    on the concatenated data; differentiable in ``X_new`` (and ``C``) through the KKT map. ``C`` is a
    scalar or one entry per row of both blocks. Labels in ``{-1, +1}``; the caller validates.
    """
    Q_tt, Z_t = cache
    dtype = jnp.result_type(X_fixed, float)
    X_fixed = jnp.asarray(X_fixed, dtype)
    X_new = jnp.asarray(X_new, dtype)
    y_fixed, y_new = jnp.asarray(y_fixed, dtype), jnp.asarray(y_new, dtype)
    Z_p = y_new[:, None] * X_new
    Q_pt = (Z_t @ Z_p.T).T  # (m, n_t); Z_t in its stored layout (no per-step transpose of the constant)
    Q = jnp.concatenate([jnp.concatenate([Q_tt, Q_pt.T], axis=1),
                         jnp.concatenate([Q_pt, Z_p @ Z_p.T], axis=1)], axis=0)
    X = jnp.concatenate([X_fixed, X_new], axis=0)
    y = jnp.concatenate([y_fixed, y_new])
    n, n_t = X.shape[0], X_fixed.shape[0]
    C = jnp.asarray(C, dtype)
    if C.ndim == 0:
        C = jnp.broadcast_to(C, (n,))
    if isinstance(warm_start, SVMDualSolution):
        warm_start = warm_start.qp

    def primal(v):  # X' v blockwise
        return v[:n_t] @ X_fixed + v[n_t:] @ X_new

    return _svm_dual_from_gram(X, y, C, Q, tol=tol, maxiter=maxiter, active_set_maxiter=active_set_maxiter,
                               warm_start=warm_start, on_failure=on_failure, primal=primal)


def _svm_dual_from_gram(X, y, C, Q, *, tol=None, maxiter=100, active_set_maxiter=50, warm_start=None,
                        on_failure="raise", primal=None) -> SVMDualSolution:
    """:func:`svm_dual_fit` given its (validated, float) ``X, y, C`` and the matrix
    ``Q = diag(y) X X' diag(y)`` computed by the caller (e.g. blockwise, with the constant block of a
    poisoning attack's training set computed once). ``primal(v)`` computes ``X' v`` (default
    ``v @ X``; a caller with a constant block of ``X`` passes a blockwise product)."""
    n = X.shape[0]
    dtype = X.dtype
    if isinstance(warm_start, SVMDualSolution):
        warm_start = warm_start.qp
    sol = solve_qp(
        Q,
        -jnp.ones((n,), dtype),
        y[None, :],
        jnp.zeros((1,), dtype),
        jnp.zeros((n,), dtype),
        C,
        tol=tol,
        maxiter=maxiter,
        active_set_maxiter=active_set_maxiter,
        warm_start=warm_start,
        on_failure=on_failure,
    )
    alpha = sol.x
    w = (alpha * y) @ X if primal is None else primal(alpha * y)
    b = sol.eq_multipliers[0]
    margin = ~(sol.active_lower | sol.active_upper)
    return SVMDualSolution(
        w=w, b=b, alpha=alpha, margin_sv=margin, bound_sv=sol.active_upper, residual=sol.residual, qp=sol
    )


def _as_params(params) -> Params:
    if isinstance(params, dict):
        return params
    if hasattr(params, "w") and hasattr(params, "b"):  # e.g. an SVMDualSolution
        return {"w": params.w, "b": params.b}
    raise ValueError(f"argument 'params' must be a dict with keys 'w' and 'b', got {type(params).__name__}")


def _single_output(params, d) -> None:
    if check_linear_params(params, d) is not None:
        raise ValueError("argument 'params': the binary SVM expects 'w' of shape (d,) and a scalar 'b'")


def _margins(params, X, y):
    return jnp.asarray(y) * linear_decision(params, X)


def _smooth_hinge(z, t):
    return t * jax.nn.softplus((1.0 - z) / t)


@jax.jit
def _hinge_loss(params, X, y, weights):
    return weighted_mean(jnp.maximum(0.0, 1.0 - _margins(params, X, y)), weights)


@jax.jit
def _primal_loss(params, reg, X, y, weights, t):
    return weighted_mean(_smooth_hinge(_margins(params, X, y), t), weights) + l2_penalty(params["w"], reg)


_decision = jax.jit(linear_decision)


def _check_t(t) -> None:
    if jnp.ndim(t) != 0:
        raise ValueError(f"argument 't' must be a scalar, got shape {jnp.shape(t)}")
    if _is_concrete(t) and not float(np.asarray(t)) > 0:
        raise ValueError(f"argument 't' must be positive, got {t}")


def svm_decision(params, X) -> jax.Array:
    """Decision values ``X w + b`` for ``params = {"w": (d,), "b": ()}`` (or an :class:`SVMDualSolution`)."""
    params = _as_params(params)
    _, d = check_X(X)
    _single_output(params, d)
    return _decision(params, X)


def hinge_loss(params, X, y, weights=None) -> jax.Array:
    """Mean (optionally weighted) hinge loss ``max(0, 1 - y (X w + b))``, labels in ``{-1, +1}``."""
    params = _as_params(params)
    n, d = check_X(X)
    _single_output(params, d)
    validate_labels(y, n)
    check_weights(weights, n)
    return _hinge_loss(params, X, y, weights)


def smooth_hinge(z, t=0.001) -> jax.Array:
    """Koh & Liang (2017) SmoothHinge ``t * softplus((1 - z) / t)``; tends to ``max(0, 1 - z)`` as ``t -> 0``."""
    _check_t(t)
    return _smooth_hinge(z, t)


def svm_primal_loss(params, reg, X, y, weights=None, t=0.001) -> jax.Array:
    """Smoothed-hinge linear SVM objective.

    ``mean_i weights_i * smooth_hinge(y_i (x_i'w + b), t) + 0.5 * sum(reg * w**2)``.

    Args:
      params: ``{"w": (d,), "b": ()}``.
      reg: L2 strength, scalar or per-feature ``(d,)`` (the intercept is not regularised).
      X: ``(n, d)``; y: ``(n,)`` labels in ``{-1, +1}``; weights: optional ``(n,)`` per-example weights.
      t: smoothing temperature (``t -> 0`` recovers the hinge).
    """
    params = _as_params(params)
    n, d = check_X(X)
    _single_output(params, d)
    check_reg(reg, d)
    validate_labels(y, n)
    check_weights(weights, n)
    _check_t(t)
    return _primal_loss(params, reg, X, y, weights, t)
