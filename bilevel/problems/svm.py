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

__all__ = [
    "SVMDualSolution",
    "svm_dual_fit",
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


def validate_labels(y, name: str = "y") -> None:
    """Raise ``ValueError`` naming the argument if concrete labels are not all in ``{-1, +1}``."""
    if _is_concrete(y):
        a = np.asarray(y)
        if a.size and not np.all((a == 1) | (a == -1)):
            bad = np.unique(a[(a != 1) & (a != -1)])[:5]
            raise ValueError(f"argument {name!r} must contain only -1/+1 labels, found {bad.tolist()}")


def _check_xy(X, y):
    X = jnp.asarray(X)
    y = jnp.asarray(y)
    if X.ndim != 2:
        raise ValueError(f"argument 'X' has shape {tuple(X.shape)}, expected (n, d)")
    if y.shape != (X.shape[0],):
        raise ValueError(f"argument 'y' has shape {tuple(y.shape)}, expected ({X.shape[0]},)")
    validate_finite("X", X)
    validate_labels(y)
    return X, y


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
      C: scalar or per-example ``(n,)`` box constraint (``C_i > 0``).
      tol, maxiter, active_set_maxiter, on_failure: passed to :func:`bilevel.kkt.solve_qp`.
      warm_start: a previous :class:`SVMDualSolution` (or :class:`~bilevel.kkt.QPSolution`) of a
        nearby problem, e.g. the previous step of a poisoning attack.

    Returns:
      :class:`SVMDualSolution`; ``w``, ``b``, ``alpha`` are differentiable w.r.t. ``X``, ``C`` (and ``y``
      as a real vector, though labels are normally held fixed).
    """
    X, y = _check_xy(X, y)
    n = X.shape[0]
    dtype = jnp.result_type(X, float)
    X = X.astype(dtype)
    y = y.astype(dtype)
    C = jnp.asarray(C, dtype)
    if C.ndim == 0:
        C = jnp.broadcast_to(C, (n,))
    if C.shape != (n,):
        raise ValueError(f"argument 'C' has shape {tuple(C.shape)}, expected () or ({n},)")
    validate_finite("C", C)
    if _is_concrete(C) and np.any(np.asarray(C) <= 0):
        raise ValueError("argument 'C' must be positive")
    if isinstance(warm_start, SVMDualSolution):
        warm_start = warm_start.qp

    Z = y[:, None] * X
    Q = Z @ Z.T
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
    w = X.T @ (alpha * y)
    b = sol.eq_multipliers[0]
    margin = ~(sol.active_lower | sol.active_upper)
    return SVMDualSolution(
        w=w, b=b, alpha=alpha, margin_sv=margin, bound_sv=sol.active_upper, residual=sol.residual, qp=sol
    )


def _wb(params):
    if isinstance(params, dict):
        return params["w"], params["b"]
    return params.w, params.b


def svm_decision(params, X):
    """Decision values ``X w + b`` for ``params = {"w": (d,), "b": ()}`` (or an :class:`SVMDualSolution`)."""
    w, b = _wb(params)
    return jnp.asarray(X) @ w + b


def _weighted_mean(per_example, weights):
    if weights is None:
        return jnp.mean(per_example)
    weights = jnp.asarray(weights)
    if weights.shape != per_example.shape:
        raise ValueError(f"argument 'weights' has shape {tuple(weights.shape)}, expected {tuple(per_example.shape)}")
    return jnp.mean(weights * per_example)


def hinge_loss(params, X, y, weights=None):
    """Mean (optionally weighted) hinge loss ``max(0, 1 - y (X w + b))``."""
    validate_labels(y)
    return _weighted_mean(jnp.maximum(0.0, 1.0 - jnp.asarray(y) * svm_decision(params, X)), weights)


def smooth_hinge(z, t=0.001):
    """Koh & Liang (2017) SmoothHinge ``t * softplus((1 - z) / t)``; tends to ``max(0, 1 - z)`` as ``t -> 0``."""
    if _is_concrete(t) and not np.all(np.asarray(t) > 0):
        raise ValueError(f"argument 't' must be positive, got {t}")
    return t * jax.nn.softplus((1.0 - z) / t)


def svm_primal_loss(params, reg, X, y, weights=None, t=0.001):
    """Smoothed-hinge linear SVM objective.

    ``mean_i weights_i * smooth_hinge(y_i (x_i'w + b), t) + 0.5 * sum(reg * w**2)``.

    Args:
      params: ``{"w": (d,), "b": ()}``.
      reg: L2 strength, scalar or per-feature ``(d,)`` (the intercept is not regularised).
      X: ``(n, d)``; y: ``(n,)`` labels in ``{-1, +1}``; weights: optional ``(n,)`` per-example weights.
      t: smoothing temperature (``t -> 0`` recovers the hinge).
    """
    validate_labels(y)
    w, _ = _wb(params)
    reg = jnp.asarray(reg)
    if reg.ndim not in (0, 1) or (reg.ndim == 1 and reg.shape != w.shape):
        raise ValueError(f"argument 'reg' has shape {tuple(reg.shape)}, expected () or {tuple(w.shape)}")
    margins = jnp.asarray(y) * svm_decision(params, X)
    return _weighted_mean(smooth_hinge(margins, t), weights) + 0.5 * jnp.sum(reg * w**2)
