r"""Support vector machines as victims: the exact dual (KKT map), one-vs-rest ensembles, the smoothed primal.

- :func:`svm`: linear SVM :math:`\min_{w,b} \frac12\|w\|^2 + C\sum_i s_i (1 - y_i(w^\top x_i + b))_+`,
  solved exactly in the dual by :func:`bilevel.problems.svm_dual_fit` (per-example box
  :math:`C s_i`; :math:`s_i = 0` removes example :math:`i`). ``params`` is the
  :class:`~bilevel.problems.SVMDualSolution` (its active set is the warm start); ``w, b`` are
  differentiable w.r.t. ``X`` through the KKT map on the active set, the derivative of Biggio, Nelson
  & Laskov (2012, eq. 9-10). ``loss`` is the hinge loss. Its fixed-block fast path caches the Gram
  block :math:`Q_{tt} = Z_t Z_t^\top`, :math:`Z_t = \mathrm{diag}(y_t) X_t`, of the clean training set,
  so a poisoning step only recomputes the poison rows' blocks (:func:`bilevel.problems.svm_dual_fit_blocks`).
- :func:`ovr_svm`: :math:`K` such SVMs, one per class against the rest (vmapped); ``decision`` is
  ``(n, K)``, ``loss`` the sum over classes of the one-vs-rest hinge losses, ``predict`` the arg-max.
- :func:`smooth_svm`: the smoothed-hinge primal of Koh & Liang (2017) used by Koh, Steinhardt & Liang
  (2022): :math:`\frac{1}{\sum s}\sum_i s_i\, t\,\mathrm{softplus}\big((1 - y_i f(x_i))/t\big) +
  \frac{wd}{2}\|w\|^2` (intercept free), trained by damped Newton and differentiated by the implicit
  function theorem with a Cholesky adjoint — exactly the influence-function derivative
  :math:`\mathcal I_{\text{pert,loss}}` of Koh & Liang for this strictly convex objective.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from bilevel import Cholesky, Implicit
from bilevel.kkt import QPSolution
from bilevel.problems import svm_dual_fit, svm_dual_fit_blocks, svm_gram_block
from bilevel.solvers import Newton
from poisoning.victims.base import Victim
from poisoning.victims.linear import _linear_scores, smooth_victim

__all__ = ["svm", "ovr_svm", "smooth_svm"]


def _decision(params, X):
    return jnp.asarray(X) @ params.w + params.b


def _hinge(params, X, y):
    return jnp.maximum(0.0, 1.0 - y * _decision(params, X))


def _cold_qp(n, dtype, batch=()):
    """An all-at-lower-bound partition: the warm attempt fails and the solver starts cold."""
    return QPSolution(x=jnp.zeros(batch + (n,), dtype), eq_multipliers=jnp.zeros(batch + (1,), dtype),
                      active_lower=jnp.ones(batch + (n,), bool), active_upper=jnp.zeros(batch + (n,), bool),
                      residual=jnp.full(batch, jnp.inf, dtype))


def _cold_solution(n, d, dtype, batch=()):
    from bilevel.problems import SVMDualSolution

    qp = _cold_qp(n, dtype, batch)
    z = jnp.zeros(batch + (n,), dtype)
    return SVMDualSolution(w=jnp.zeros(batch + (d,), dtype), b=jnp.zeros(batch, dtype), alpha=z,
                           margin_sv=jnp.zeros(batch + (n,), bool), bound_sv=jnp.zeros(batch + (n,), bool),
                           residual=qp.residual, qp=qp)


def _warm_qp(warm_start):
    return None if warm_start is None else warm_start.qp


@functools.lru_cache(maxsize=None)
def svm(C: float = 1.0, *, tol: float | None = None) -> Victim:
    """Linear SVM solved exactly in the dual (see the module docstring); binary labels 0/1."""
    C = float(C)
    if not C > 0:
        raise ValueError(f"argument 'C' must be > 0, got {C}")

    def box(n, weights, dtype):
        return C * (jnp.ones((n,), dtype) if weights is None else jnp.asarray(weights, dtype))

    def fit(X, y, weights, warm_start):
        return svm_dual_fit(X, y, box(X.shape[0], weights, X.dtype), tol=tol, warm_start=_warm_qp(warm_start),
                            on_failure="ignore")

    def fit_appended(cache, X_fixed, y_fixed, X_new, y_new, weights, warm_start):
        if cache is None:
            cache = svm_gram_block(X_fixed, y_fixed)
        n = X_fixed.shape[0] + X_new.shape[0]
        return svm_dual_fit_blocks(cache, X_fixed, y_fixed, X_new, y_new, box(n, weights, X_fixed.dtype), tol=tol,
                                   warm_start=_warm_qp(warm_start), on_failure="ignore")

    return Victim(name=f"svm(C={C:g})", task="binary", n_classes=2, fit_fn=fit, decision_fn=_decision,
                  loss_fn=_hinge, init_fn=lambda n, d, dtype: _cold_solution(n, d, dtype),
                  residual_fn=lambda p: p.residual, prepare_fn=svm_gram_block, fit_appended_fn=fit_appended, method="kkt")


@functools.lru_cache(maxsize=None)
def ovr_svm(n_classes: int, C: float = 1.0) -> Victim:
    """One-vs-rest ensemble of ``n_classes`` linear SVMs (labels ``0..K-1``), each an exact,
    differentiable dual solve (vmapped over classes)."""
    K, C = int(n_classes), float(C)
    if K < 2:
        raise ValueError(f"argument 'n_classes' must be >= 2, got {n_classes}")

    def ovr_labels(y, dtype):
        return jnp.where(jnp.asarray(y)[None, :] == jnp.arange(K)[:, None], 1.0, -1.0).astype(dtype)  # (K, n)

    def fit(X, y, weights, warm_start):
        Ci = C * (jnp.ones((X.shape[0],), X.dtype) if weights is None else jnp.asarray(weights, X.dtype))
        Y = ovr_labels(y, X.dtype)
        if warm_start is None:
            return jax.vmap(lambda yk: svm_dual_fit(X, yk, Ci, on_failure="ignore"))(Y)
        return jax.vmap(lambda yk, ws: svm_dual_fit(X, yk, Ci, warm_start=ws, on_failure="ignore"))(Y, warm_start.qp)

    def decision(params, X):
        return jnp.asarray(X) @ params.w.T + params.b  # (n, K)

    def loss(params, X, y):
        Y = ovr_labels(y, X.dtype).T  # (n, K)
        return jnp.sum(jnp.maximum(0.0, 1.0 - Y * decision(params, X)), axis=1)

    return Victim(name=f"ovr-svm(K={K}, C={C:g})", task="multiclass", n_classes=K, fit_fn=fit,
                  decision_fn=decision, loss_fn=loss, init_fn=lambda n, d, dtype: _cold_solution(n, d, dtype, (K,)),
                  residual_fn=lambda p: jnp.max(p.residual), method="kkt")


@functools.lru_cache(maxsize=None)
def smooth_svm(wd: float = 0.01, t: float = 0.01, *, tol: float = 1e-8, maxiter: int = 50,
               max_step: float = 10.0) -> Victim:
    """Smoothed-hinge linear SVM with weight decay ``wd`` on ``w`` (``C = 1 / (N wd)``), temperature
    ``t``; damped Newton with steps capped at ``max_step`` (at ``w = 0`` every margin is saturated, the
    Hessian is nearly singular in ``b`` and the raw step diverges) + the IFT with a Cholesky adjoint.
    Binary labels 0/1; ``loss`` is the smoothed hinge."""
    wd, t = float(wd), float(t)
    if not (wd > 0 and t > 0):
        raise ValueError(f"arguments 'wd' and 't' must be > 0, got {wd}, {t}")

    def per_example(params, X, y):
        return t * jax.nn.softplus((1.0 - y * _linear_scores(params, X)) / t)

    def loss(params, y, X, sw):
        return jnp.mean(sw * per_example(params, X, y)) + 0.5 * wd * jnp.sum(params["w"] ** 2)

    solver = Newton(tol=tol, maxiter=int(maxiter), max_step=float(max_step), on_failure="ignore")
    return smooth_victim(f"smooth-svm(wd={wd:g}, t={t:g})", "binary", 2, loss, per_example, _linear_scores,
                         _zeros_linear, solver=solver, method=Implicit(linear_solver=Cholesky()))


def _zeros_linear(n, d, dtype):
    return {"w": jnp.zeros((d,), dtype), "b": jnp.zeros((), dtype)}
