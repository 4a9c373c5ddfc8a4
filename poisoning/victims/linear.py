r"""Smooth victims: a training loss, an inner solver and a hypergradient method.

:func:`smooth_victim` is the one builder: the victim minimizes a weighted training loss
:math:`\mathcal L(\theta; X, y, s)` (weights rescaled to sum to :math:`n`, so :math:`s_i = 0` removes an
example and the mean runs over the present ones) with a :mod:`bilevel.solvers` inner solver, and
derivatives flow by a :func:`bilevel.minimize` method:

- :class:`bilevel.Implicit` (default): train to convergence (warm-started from the previous fit) and
  differentiate the stationarity condition (the implicit function theorem);
- :class:`bilevel.unroll.Unrolled` / :class:`bilevel.unroll.BackGradient`: the victim *is* ``T`` steps
  of its (optax) training from a fixed initialization, and the derivative goes through, or reverses,
  those steps (Domke 2012; Maclaurin et al. 2015; Muñoz-González et al. 2017) — no warm start.

The victims of the literature built on it:

- :func:`logistic` (binary, labels 0/1), :func:`softmax` (multiclass logistic regression),
  :func:`adaline` (binary least squares on :math:`\pm1` targets, Muñoz-González et al. 2017);
- :func:`ridge` and :func:`ols` (regression, closed form; Jagielski et al. 2018);
- :func:`lasso` / :func:`elastic_net` (regression, the fixed point of the proximal-gradient map, exact
  on the support; Jagielski et al. 2018) are in :mod:`poisoning.victims.sparse`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from bilevel import CG, Cholesky, Direct, Implicit, minimize
from bilevel.problems import adaline_loss, logistic_loss, multiclass_logistic_loss, ridge_closed_form, ridge_loss
from bilevel.solvers import LBFGS, ClosedForm, InnerSolver, Newton
from poisoning.victims.base import Victim, normalized_weights

__all__ = ["smooth_victim", "logistic", "softmax", "adaline", "ridge", "ols"]


def _linear_scores(params, X):
    return jnp.asarray(X) @ params["w"] + params["b"]


def _zeros_linear(n, d, dtype, k=None):
    shape_w, shape_b = ((d,), ()) if k is None else ((d, k), (k,))
    return {"w": jnp.zeros(shape_w, dtype), "b": jnp.zeros(shape_b, dtype)}


def _warm(method) -> bool:
    return isinstance(method, (Implicit, Direct))


def smooth_victim(name: str, task: str, n_classes: int | None, loss: Callable, per_example: Callable,
                  decision: Callable, init: Callable, *, solver: InnerSolver, method: Any = None,
                  reparam: Callable | None = None) -> Victim:
    """A :class:`~poisoning.victims.base.Victim` minimizing ``loss(params, y, X, weights)``.

    Args:
      loss: the training objective (weights already rescaled to sum to ``n``), labels encoded.
      per_example: ``(params, X, y) -> (n,)``, the victim's surrogate loss.
      decision: ``(params, X) -> scores``.
      init: ``(n, d, dtype) -> params``: the cold start (also the fixed start of unrolled victims).
      solver: a :mod:`bilevel.solvers` inner solver (for unrolled methods: the optimizer whose steps are
        unrolled, e.g. ``GradientDescent`` or ``OptaxSolver``).
      method: a :func:`bilevel.minimize` strategy (default :class:`~bilevel.Implicit`).
      reparam: ``(w0, X, weights) -> (to_params, from_params)``, a constant invertible change of
        variables for the implicit solve (a preconditioner; same minimizer, same derivative).
    """
    method = Implicit() if method is None else method
    warm = _warm(method)
    kind = "implicit" if isinstance(method, Implicit) else type(method).__name__.lower()

    def fit(X, y, weights, warm_start):
        n, d = X.shape
        w0 = init(n, d, X.dtype) if (warm_start is None or not warm) else jax.lax.stop_gradient(warm_start)
        sw = normalized_weights(weights, n, X.dtype)
        if reparam is None or not warm:
            return minimize(loss, w0, y, X, sw, solver=solver, method=method)
        to_params, from_params = reparam(w0, X, sw)
        theta = minimize(lambda th, *a: loss(to_params(th), *a), from_params(w0), y, X, sw, solver=solver,
                         method=method)
        return to_params(theta)

    def train_loss(params, X, y, weights=None):
        return loss(params, y, X, normalized_weights(weights, X.shape[0], X.dtype))

    return Victim(name=name, task=task, n_classes=n_classes, fit_fn=fit, decision_fn=decision,
                  loss_fn=per_example, init_fn=init, train_loss=train_loss, method=kind, warm_starts=warm)


def _default_tol(dtype_tol: float):
    """A gradient-norm tolerance that float32 can reach: ``dtype_tol`` in float64, ~1e-5 in float32."""
    return dtype_tol if jnp.zeros(()).dtype == jnp.float64 else max(dtype_tol, 1e-5)


@functools.lru_cache(maxsize=None)
def logistic(reg: float = 1e-2, *, solver: InnerSolver | None = None, method=None) -> Victim:
    r"""Binary L2 logistic regression :math:`\frac{1}{\sum s}\sum_i s_i \log(1 + e^{-y_i f(x_i)}) +
    \frac{\lambda}{2}\|w\|^2` (:func:`bilevel.problems.logistic_loss`), labels 0/1; damped Newton (to a
    gradient norm that the default float dtype can reach) + the IFT."""
    reg = float(reg)
    solver = Newton(tol=_default_tol(1e-9), maxiter=100) if solver is None else solver

    def loss(params, y_pm, X, sw):
        return logistic_loss(params, reg, X, (y_pm + 1) / 2, sw)

    def per_example(params, X, y_pm):
        return jax.nn.softplus(-y_pm * _linear_scores(params, X))

    return smooth_victim(f"logistic(reg={reg:g})", "binary", 2, loss, per_example, _linear_scores, _zeros_linear,
                         solver=solver, method=method)


@functools.lru_cache(maxsize=None)
def softmax(n_classes: int = 10, reg: float = 1e-3, *, solver: InnerSolver | None = None, method=None,
            reparam: Callable | None = None) -> Victim:
    r"""Multiclass L2 logistic regression :math:`\frac1{\sum s}\sum_i s_i\,\mathrm{CE}(y_i, x_i W + b) +
    \frac{\text{reg}}2\|W\|^2` (:func:`bilevel.problems.multiclass_logistic_loss`), ``params = {"w": (d, K),
    "b": (K,)}``. Default: L-BFGS + the IFT with conjugate gradients (the Hessian is singular only along
    the common bias shift, a direction the right-hand side never has). ``reparam``: see
    :func:`smooth_victim` (e.g. the K-FAC basis of :mod:`poisoning.attacks.munoz2017`)."""
    K, reg = int(n_classes), float(reg)

    def loss(params, y, X, sw):
        return multiclass_logistic_loss(params, reg, X, y, sw)

    def per_example(params, X, y):
        return optax.losses.softmax_cross_entropy_with_integer_labels(_linear_scores(params, X), y)

    solver = LBFGS(maxiter=500, tol=_default_tol(1e-7), on_failure="ignore") if solver is None else solver
    method = Implicit(linear_solver=CG(), on_failure="ignore") if method is None else method
    return smooth_victim(f"softmax(K={K}, reg={reg:g})", "multiclass", K, loss, per_example, _linear_scores,
                         lambda n, d, dtype: _zeros_linear(n, d, dtype, K), solver=solver, method=method,
                         reparam=reparam)


@functools.lru_cache(maxsize=None)
def adaline(reg: float = 1e-3, *, solver: InnerSolver | None = None, method=None) -> Victim:
    r"""Adaline (binary, labels 0/1 mapped to :math:`\pm1` targets):
    :math:`\frac1{\sum s}\sum_i s_i \frac12(x_i^\top w + b - y_i)^2 + \frac{\text{reg}}2\|w\|^2`
    (:func:`bilevel.problems.adaline_loss`); ``loss`` is the per-example squared error, ``predict`` the sign."""
    reg = float(reg)

    def loss(params, y_pm, X, sw):
        return adaline_loss(params, reg, X, y_pm, sw)

    def per_example(params, X, y_pm):
        return 0.5 * jnp.square(_linear_scores(params, X) - y_pm)

    solver = Newton(tol=_default_tol(1e-9), maxiter=50, on_failure="ignore") if solver is None else solver
    return smooth_victim(f"adaline(reg={reg:g})", "binary", 2, loss, per_example, _linear_scores, _zeros_linear,
                         solver=solver, method=method)


@functools.lru_cache(maxsize=None)
def ridge(reg: float = 1e-2, *, method=None) -> Victim:
    r"""Ridge regression :math:`\frac{1}{2\sum s}\sum_i s_i (x_i^\top w + b - y_i)^2 + \frac{reg}{2}\|w\|^2`
    (intercept free; :func:`bilevel.problems.ridge_loss`), solved in closed form; derivatives by the IFT
    with a Cholesky adjoint (``method=Direct()`` differentiates the normal equations instead).
    Real targets; ``loss`` is half the squared error, ``predict`` the regression value."""
    reg = float(reg)

    def loss(params, y, X, sw):
        return ridge_loss(params, reg, X, y, sw)

    def per_example(params, X, y):
        return 0.5 * jnp.square(_linear_scores(params, X) - y)

    solver = ClosedForm(fn=lambda y, X, sw: ridge_closed_form(reg, X, y, sw), tol=1e-6, on_failure="ignore")
    method = Implicit(linear_solver=Cholesky()) if method is None else method
    return smooth_victim(f"ridge(reg={reg:g})", "regression", None, loss, per_example, _linear_scores,
                         _zeros_linear, solver=solver, method=method)


def ols(*, method=None) -> Victim:
    """Ordinary least squares: :func:`ridge` with a tiny ``reg = 1e-6`` (keeps the normal equations well posed)."""
    return ridge(1e-6, method=method)
