r"""Poisoning attacks, composed: victim learner + upper-level objective + feasible set + step rule.

Example — a new attack is one objective (runs as written; see ``tests/poisoning/test_attack.py``)::

    import jax.numpy as jnp
    from poisoning.attack import PoisoningAttack, ridge_learner, run
    from poisoning.data import biggio_protocol, load_digits
    from poisoning.feasible import Box

    def flip_first(params, X_val, y_val, learner):           # the whole new attack:
        return -y_val[0] * learner.decision(params, X_val[:1])[0]   # push one target across

    split = biggio_protocol(load_digits(), 1, 7, n_train=60, n_val=50, seed=0)
    attack = PoisoningAttack(ridge_learner(reg=1e-1), flip_first, Box(0.0, 1.0), step_size=0.2)
    res = run(attack, split.X_train, split.y_train,
              split.X_train[:2], -split.y_train[:2],          # clone two points, flip labels
              split.X_val, split.y_val, steps=20, mode="sequential")
    print(res.objective_history[0], "->", res.objective_history[-1])

Problem
-------
The attacker adds poison points :math:`D_p = \{(x_j, y_j)\}_{j=1}^m` (labels fixed, features free in
a feasible set :math:`\Phi`) to the victim's training set and solves the bilevel problem

.. math::

    \max_{X_p \in \Phi^m} A(X_p) = \mathcal A\big(w^\star(X_p), D_{val}\big),
    \qquad w^\star(X_p) = \arg\min_w \mathcal L\big(w; D_{tr} \cup D_p\big),

(Biggio, Nelson, Laskov 2012; Mei & Zhu 2015; Muñoz-González et al. 2017). The hypergradient
:math:`\nabla_{X_p} A = (\partial w^\star / \partial X_p)^\top \nabla_w \mathcal A` comes from implicit
differentiation of the learner's optimality conditions: the KKT system of the SVM dual on its active
set (:func:`bilevel.problems.svm_dual_fit`, the derivative of Biggio et al. eq. 9-10), or the
stationarity condition of a smooth training loss (:func:`bilevel.minimize` with
:class:`~bilevel.Implicit`). The pieces are independent and composable:

- :class:`Learner` — ``fit(X, y, weights=None, warm_start=None) -> params`` (differentiable in ``X``),
  ``decision``/``predict(params, X)`` and the per-example surrogate ``loss(params, X, y)``; built by
  :func:`linear_svm_learner`, :func:`logistic_learner`, :func:`ridge_learner`. Binary labels are
  :math:`\pm 1`. ``weights`` multiply examples in the training loss; weight 0 means *absent* (this is
  how sequential mode keeps shapes fixed, so one compiled loop serves every poison point).
- objective ``(params, X_val, y_val, learner) -> scalar`` to **maximize** (:mod:`poisoning.objectives`).
- feasible set with ``project`` (:mod:`poisoning.feasible`).
- :class:`PoisoningAttack` — the three above plus the step rule; :func:`run` executes it.

Step rule (Biggio et al. 2012, §3): projected ascent along the *unit* hypergradient,
:math:`x \leftarrow P_\Phi(x + t\, \nabla A / \|\nabla A\|)` with fixed length ``step_size`` :math:`t`,
stopped when the gain :math:`A(x_{k+1}) - A(x_k) < \varepsilon` (``tol``) for ``patience`` steps in a
row, or after ``steps`` steps. ``step_rule="backtrack"`` instead rejects a step that does not
improve and halves :math:`t` (a basic line search; stops once :math:`t <` ``min_step``). The best
iterate seen is returned, so the objective of the returned points never falls below the start.

Modes: ``"joint"`` moves all poison points at once along the hypergradient w.r.t. all of them (one
unit step for the whole ``(m, d)`` array); ``"sequential"`` adds the points one at a time and
optimizes only the newest with the earlier ones frozen in the training set (greedy scheme of
Biggio et al. 2012 and Muñoz-González et al. 2017). Each single-point/joint ascent is one
:func:`jax.lax.while_loop` inside one :func:`jax.jit` (the SVM is warm-started from the previous
iterate's active set, playing the role of the incremental Cauwenberghs-Poggio update of the paper).

Why not :func:`bilevel.solve_stackelberg`? Its follower must be a :class:`bilevel.solvers.InnerSolver`
minimizing a smooth loss; the exact SVM dual is a QP solved by an active-set method and
differentiated through :mod:`bilevel.kkt`, which does not fit that interface. The loop here is the
same projected-ascent scheme specialised to ``fit``-style learners (and reports wall times without
compilation). For smooth learners :func:`run_stackelberg` hands the same attack to
:func:`bilevel.solve_stackelberg` (line search, coordinate mode).

References
----------
- B. Biggio, B. Nelson, P. Laskov, "Poisoning attacks against support vector machines", ICML 2012.
- S. Mei, X. Zhu, "Using machine teaching to identify optimal training-set attacks on machine
  learners", AAAI 2015.
- L. Muñoz-González et al., "Towards poisoning of deep learning algorithms with back-gradient
  optimization", AISec 2017.
- G. Cauwenberghs, T. Poggio, "Incremental and decremental support vector machine learning", NIPS 2000.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bilevel import Implicit, minimize
from bilevel.kkt import QPSolution
from bilevel.problems import logistic_loss, ridge_closed_form, ridge_loss, svm_dual_fit
from bilevel.solvers import ClosedForm, InnerSolver, Newton
from poisoning.feasible import Box, FeasibleSet, Unconstrained
from poisoning.objectives import error_generic

__all__ = [
    "Learner",
    "linear_svm_learner",
    "logistic_learner",
    "ridge_learner",
    "PoisoningAttack",
    "AttackResult",
    "hypergradient",
    "attack_objective",
    "run",
    "run_stackelberg",
]


# ----------------------------------------------------------------------------------------------------
# learners
# ----------------------------------------------------------------------------------------------------
def _linear_decision(params, X):
    w, b = (params.w, params.b) if hasattr(params, "w") else (params["w"], params["b"])
    return jnp.asarray(X) @ w + b


@dataclasses.dataclass(frozen=True, eq=False)
class Learner:
    """How the victim trains and scores. Pure functions; binary labels in ``{-1, +1}``.

    Attributes:
      name: a label for reports.
      fit_fn: ``(X, y, weights, warm_start) -> params``; differentiable w.r.t. ``X`` (and
        ``weights``). ``weights`` is an ``(n,)`` array (0 = example absent) or ``None``;
        ``warm_start`` is ``None`` or a previous ``params``.
      decision_fn: ``(params, X) -> (n,)`` real scores.
      loss_fn: ``(params, X, y) -> (n,)`` per-example surrogate loss (used by objectives).
      train_loss: for smooth learners, the training objective ``g(params, X, y, weights)`` that
        ``fit_fn`` minimizes (used by :func:`run_stackelberg`); ``None`` for the SVM dual.
      solver: the inner solver of ``train_loss`` (``None`` for the SVM).
      init_fn: ``d -> params`` (a starting point for ``fit`` without warm start).
      null_warm: ``(n, d, dtype) -> warm_start`` placeholder with the structure of a real warm start
        that makes ``fit`` start cold (lets one compiled loop handle the first solve too).
      to_warm: ``params -> warm_start`` for the next, nearby fit.
    """

    name: str
    fit_fn: Callable
    decision_fn: Callable
    loss_fn: Callable
    train_loss: Callable | None = None
    solver: InnerSolver | None = None
    init_fn: Callable | None = None
    null_warm: Callable = lambda n, d, dtype: None
    to_warm: Callable = lambda params: params

    def fit(self, X, y, weights=None, warm_start=None):
        """Train on ``(X, y)`` (optionally weighted); the result is differentiable in ``X``."""
        return self.fit_fn(jnp.asarray(X), jnp.asarray(y), weights, warm_start)

    def decision(self, params, X):
        return self.decision_fn(params, jnp.asarray(X))

    def predict(self, params, X):
        """Labels in ``{-1, +1}`` (``+1`` on ties)."""
        return jnp.where(self.decision(params, X) >= 0, 1, -1)

    def loss(self, params, X, y):
        """Per-example surrogate loss, shape ``(n,)``."""
        return self.loss_fn(params, jnp.asarray(X), jnp.asarray(y))


def _hinge(params, X, y):
    return jnp.maximum(0.0, 1.0 - y * _linear_decision(params, X))


@functools.lru_cache(maxsize=None)
def linear_svm_learner(C: float = 1.0, *, tol: float | None = None, on_failure: str = "ignore") -> Learner:
    r"""Linear SVM :math:`\min_{w,b} \frac12\|w\|^2 + C\sum_i s_i (1 - y_i(w^\top x_i + b))_+`, solved
    exactly in the dual by :func:`bilevel.problems.svm_dual_fit` (per-example box :math:`C s_i`;
    :math:`s_i = 0` removes example :math:`i`). ``params`` is the :class:`SVMDualSolution` (it carries
    the active set used as warm start); its ``w, b`` are differentiable w.r.t. ``X`` through the KKT
    map, as in Biggio et al. (2012). ``loss`` is the hinge loss.

    ``on_failure`` of the QP solve defaults to ``"ignore"`` inside attack loops (the residual is kept in
    ``params.residual``); use ``"raise"`` for a checked fit.
    """
    if not C > 0:
        raise ValueError(f"C must be > 0, got {C}")

    def fit(X, y, weights, warm_start):
        Ci = C if weights is None else C * jnp.asarray(weights, X.dtype)
        return svm_dual_fit(X, y, Ci, tol=tol, warm_start=warm_start, on_failure=on_failure)

    def null_warm(n, d, dtype):  # an all-at-lower-bound partition: the warm attempt fails, cold IPM runs
        return QPSolution(x=jnp.zeros((n,), dtype), eq_multipliers=jnp.zeros((1,), dtype),
                          active_lower=jnp.ones((n,), bool), active_upper=jnp.zeros((n,), bool),
                          residual=jnp.asarray(jnp.inf, dtype))

    learner = Learner(name=f"linear-svm(C={C:g})", fit_fn=fit, decision_fn=_linear_decision, loss_fn=_hinge,
                      null_warm=null_warm, to_warm=lambda params: params.qp)
    # private fast path of the attack loop (same solution as ``fit`` on the concatenated data): the
    # dual's matrix Q = diag(y) X X' diag(y) is assembled blockwise, its training block computed once
    # per ascent, so a step only recomputes (and differentiates) the poison rows' blocks.
    split_fit = functools.partial(_svm_split_fit, C, tol, on_failure)
    object.__setattr__(learner, "_split_fit", (_svm_gram_prepare, split_fit))
    return learner


def _svm_gram_prepare(X_tr, y_tr):
    """Loop-invariant pieces of the training block: ``(Q_tt, Z_t)`` with ``Z_t = diag(y_t) X_t``."""
    Z = y_tr[:, None] * X_tr
    return Z @ Z.T, Z


def _svm_split_fit(C, tol, on_failure, cache, X_tr, y_tr, X_p, y_p, weights, warm_start):
    """``fit(concat(X_tr, X_p), concat(y_tr, y_p), weights, warm_start)`` given the training block's
    ``cache = (Q_tt, Z_t)`` from :func:`_svm_gram_prepare`."""
    from bilevel.problems.svm import _svm_dual_from_gram

    Q_tt, Z_t = cache
    Z_p = y_p[:, None] * X_p
    Q_pt = (Z_t @ Z_p.T).T  # (m, n_tr); Z_t in its stored layout (no per-step transpose of the constant)
    Q = jnp.concatenate([jnp.concatenate([Q_tt, Q_pt.T], axis=1),
                         jnp.concatenate([Q_pt, Z_p @ Z_p.T], axis=1)], axis=0)
    X = jnp.concatenate([X_tr, X_p], axis=0)
    y = jnp.concatenate([y_tr, y_p])
    n = X.shape[0]
    Ci = C * (jnp.ones((n,), X.dtype) if weights is None else jnp.asarray(weights, X.dtype))
    n_tr = X_tr.shape[0]
    primal = lambda v: v[:n_tr] @ X_tr + v[n_tr:] @ X_p  # X' v without re-laying out the constant X_tr
    return _svm_dual_from_gram(X, y, Ci, Q, tol=tol, warm_start=warm_start, on_failure=on_failure, primal=primal)


def _normalized(weights, n, dtype):
    """Weights rescaled to sum to ``n`` (so a weighted mean is the mean over the present examples)."""
    if weights is None:
        return jnp.ones((n,), dtype)
    w = jnp.asarray(weights, dtype)
    return w * (n / jnp.sum(w))


def _smooth_learner(name, loss, per_example, solver, label_map=lambda y: y, method=None):
    method = Implicit() if method is None else method

    def init(d, dtype=jnp.float32):
        return {"w": jnp.zeros((d,), dtype), "b": jnp.zeros((), dtype)}

    def train_loss(params, X, y, weights=None):
        return loss(params, label_map(y).astype(X.dtype), X, _normalized(weights, X.shape[0], X.dtype))

    def fit(X, y, weights, warm_start):
        w0 = init(X.shape[1], X.dtype) if warm_start is None else jax.lax.stop_gradient(warm_start)
        sw = _normalized(weights, X.shape[0], X.dtype)
        return minimize(loss, w0, label_map(y).astype(X.dtype), X, sw, solver=solver, method=method)

    return Learner(name=name, fit_fn=fit, decision_fn=_linear_decision, loss_fn=per_example,
                   train_loss=train_loss, solver=solver, init_fn=init,
                   null_warm=lambda n, d, dtype: init(d, dtype))


@functools.lru_cache(maxsize=None)
def logistic_learner(reg: float = 1e-2, *, solver: InnerSolver | None = None, method=None) -> Learner:
    r"""L2-regularized logistic regression :math:`\frac{1}{\sum s}\sum_i s_i \log(1 + e^{-y_i f(x_i)})
    + \frac{\lambda}{2}\|w\|^2` (:func:`bilevel.problems.logistic_loss`), trained by damped Newton,
    differentiated by the IFT (:class:`~bilevel.Implicit`). ``loss`` is the per-example logistic loss."""
    solver = Newton(tol=1e-9, maxiter=100) if solver is None else solver

    def loss(params, y01, X, sw):
        return logistic_loss(params, reg, X, y01, sw)

    def per_example(params, X, y):
        return jax.nn.softplus(-y * _linear_decision(params, X))

    # minimize(loss, w0, y01, X, sw): reorder to the problem's (params, reg, X, y, weights)
    return _smooth_learner(f"logistic(reg={reg:g})", loss, per_example, solver,
                           label_map=lambda y: (y + 1) / 2, method=method)


@functools.lru_cache(maxsize=None)
def ridge_learner(reg: float = 1e-2, *, solver: InnerSolver | None = None, method=None) -> Learner:
    r"""Ridge regression on :math:`\pm1` targets (least-squares classifier, Adaline-like),
    :math:`\frac{1}{\sum s}\sum_i s_i \tfrac12 (f(x_i) - y_i)^2 + \frac{\lambda}{2}\|w\|^2`
    (:func:`bilevel.problems.ridge_loss`), solved in closed form and differentiated by the IFT.
    ``loss`` is the per-example squared error."""

    def loss(params, y, X, sw):
        return ridge_loss(params, reg, X, y, sw)

    if solver is None:
        solver = ClosedForm(fn=lambda y, X, sw: ridge_closed_form(reg, X, y, sw), tol=1e-6, on_failure="ignore")

    def per_example(params, X, y):
        return 0.5 * jnp.square(_linear_decision(params, X) - y)

    return _smooth_learner(f"ridge(reg={reg:g})", loss, per_example, solver, method=method)


# ----------------------------------------------------------------------------------------------------
# attack configuration and result
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PoisoningAttack:
    """A poisoning attack: ``learner`` + ``objective`` (maximized) + ``feasible`` set + step rule.

    Attributes:
      learner: the victim (:class:`Learner`).
      objective: ``(params, X_val, y_val, learner) -> scalar`` to maximize (default
        :func:`~poisoning.objectives.error_generic`).
      feasible: a :class:`~poisoning.feasible.FeasibleSet` (default ``Box(0, 1)``, pixel range).
      step_size: the step length :math:`t` (0.05 in Biggio et al.'s MNIST code).
      normalize: step along the unit hypergradient (Biggio et al.) instead of the raw one.
      step_rule: ``"fixed"`` or ``"backtrack"`` (see the module docstring).
      tol: minimal gain :math:`\\varepsilon` (fixed rule) counted as progress.
      patience: stop after this many consecutive steps without progress (fixed rule).
      min_step: the backtrack rule stops once the step is below it.
    """

    learner: Learner
    objective: Callable = error_generic
    feasible: FeasibleSet = dataclasses.field(default_factory=lambda: Box(0.0, 1.0))
    step_size: float = 0.05
    normalize: bool = True
    step_rule: Literal["fixed", "backtrack"] = "fixed"
    tol: float = 1e-6
    patience: int = 1
    min_step: float = 1e-4

    def __post_init__(self):
        if not isinstance(self.learner, Learner):
            raise ValueError(f"learner must be a Learner, got {type(self.learner).__name__}")
        if not callable(self.objective):
            raise ValueError("objective must be callable (params, X_val, y_val, learner) -> scalar")
        if self.feasible is None:
            object.__setattr__(self, "feasible", Unconstrained())
        if not isinstance(self.feasible, FeasibleSet):
            raise ValueError(f"feasible must be a FeasibleSet, got {type(self.feasible).__name__}")
        if not self.step_size > 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size}")
        if self.step_rule not in ("fixed", "backtrack"):
            raise ValueError(f"step_rule must be 'fixed' or 'backtrack', got {self.step_rule!r}")
        if int(self.patience) < 1:
            raise ValueError("patience must be >= 1")


class AttackResult(NamedTuple):
    """Output of :func:`run`.

    Attributes:
      X_poison, y_poison: the optimized poison points ``(m, d)`` and their labels ``(m,)``.
      objective_history: objective after each step, all blocks concatenated (its first entry is the
        value at the initial poison; NaN-free).
      block_history: one array of objective values per block (per point in sequential mode).
      params_poisoned: the learner trained on ``D_tr ∪ D_p``; params_clean: trained on ``D_tr``.
      objective_clean, objective_poisoned: the objective before (no poison) and after.
      n_steps: steps taken per block; seconds: attack wall time per block (cumulative, compiled code
        only); compile_seconds: one-time tracing + compilation.
      mode: ``"joint"`` or ``"sequential"``.
      block_params, block_objective: the learner and the objective after each block; in sequential
        mode entry ``i`` is the victim trained on ``D_tr`` plus the first ``i + 1`` poison points
        (so every smaller budget is read off one run without retraining).
    """

    X_poison: np.ndarray
    y_poison: np.ndarray
    objective_history: np.ndarray
    block_history: tuple
    params_poisoned: Any
    params_clean: Any
    objective_clean: float
    objective_poisoned: float
    n_steps: np.ndarray
    seconds: np.ndarray
    compile_seconds: float
    mode: str
    block_params: tuple = ()
    block_objective: np.ndarray = np.zeros(0)


# ----------------------------------------------------------------------------------------------------
# hypergradient
# ----------------------------------------------------------------------------------------------------
def attack_objective(attack: PoisoningAttack, X_poison, X_train, y_train, y_poison, X_val, y_val,
                     weights=None, warm_start=None):
    """``(A(X_poison), params)``: retrain on ``D_tr ∪ D_p`` (poison rows weighted by ``weights``,
    ``(m,)``, default all 1) and evaluate the objective. Differentiable in ``X_poison``."""
    X = jnp.concatenate([jnp.asarray(X_train), X_poison], axis=0)
    y = jnp.concatenate([jnp.asarray(y_train), jnp.asarray(y_poison)]).astype(X.dtype)
    sw = None
    if weights is not None:
        sw = jnp.concatenate([jnp.ones((X_train.shape[0],), X.dtype), jnp.asarray(weights, X.dtype)])
    params = attack.learner.fit(X, y, sw, warm_start)
    return attack.objective(params, X_val, y_val, attack.learner), params


def hypergradient(attack: PoisoningAttack, X_poison, X_train, y_train, y_poison, X_val, y_val,
                  weights=None, warm_start=None):
    """``(value, dA/dX_poison, params)`` — the exact gradient :func:`run` steps along (before the
    block mask and normalization)."""
    f = lambda Xp: attack_objective(attack, Xp, X_train, y_train, y_poison, X_val, y_val, weights, warm_start)
    (val, params), g = jax.value_and_grad(f, has_aux=True)(jnp.asarray(X_poison))
    return val, g, params


# ----------------------------------------------------------------------------------------------------
# the ascent loop (one block: some rows free, the rest fixed)
# ----------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=32)
def _cached_block_ascent(attack, steps):
    return _build_block_ascent(attack, steps)


def _make_block_ascent(attack: PoisoningAttack, steps: int):
    """The jitted ascent for ``(attack, steps)``; cached when the attack is hashable, so equal attacks
    (the learner constructors are memoized) share one compiled loop per shape."""
    try:
        hash(attack)
    except TypeError:
        return _build_block_ascent(attack, steps)
    return _cached_block_ascent(attack, steps)


def _build_block_ascent(attack: PoisoningAttack, steps: int):
    """A jitted ``ascend(Xp, free, active, X_tr, y_tr, y_p, X_val, y_val)`` running one projected ascent
    on the rows ``free`` (bool ``(m,)``) with the poison rows weighted by ``active`` in training.

    The retrain + hypergradient appears once in the loop body (the first iteration evaluates the start
    point; the learner's ``null_warm`` placeholder makes its warm start fall back to a cold solve), so
    the solver is traced and compiled once. Returns ``(best X, best value, history, evaluations,
    params at the best X)``.
    """
    sg = jax.lax.stop_gradient
    project = attack.feasible.project
    fixed_rule = attack.step_rule == "fixed"
    learner = attack.learner
    where = lambda c, a, b: jax.tree_util.tree_map(lambda u, v: jnp.where(c, u, v), a, b)

    def ascend(Xp, free, active, X_tr, y_tr, y_p, X_val, y_val):
        dtype = jnp.result_type(Xp, X_tr, float)
        Xp, X_tr, X_val = Xp.astype(dtype), X_tr.astype(dtype), X_val.astype(dtype)
        n, d = X_tr.shape[0] + Xp.shape[0], Xp.shape[1]
        Xp = jnp.where(free[:, None], project(Xp), Xp)
        warm0 = learner.null_warm(n, d, dtype)
        p_shape = jax.eval_shape(
            lambda X: attack_objective(attack, X, X_tr, y_tr, y_p, X_val, y_val, active, warm0)[1], Xp)
        p0 = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), p_shape)
        hist = jnp.full((steps + 1,), jnp.nan, dtype)
        neg_inf = jnp.asarray(-jnp.inf, dtype)
        any_free = jnp.any(free)

        def direction(g):
            g = jnp.where(free[:, None], g, 0.0)
            if attack.normalize:
                g = g / jnp.maximum(jnp.linalg.norm(g), jnp.finfo(dtype).tiny)
            return g

        def cond(c):
            return (c[0] <= steps) & ~c[-1]

        split = getattr(learner, "_split_fit", None)
        if split is not None:  # training block of the learner's data computed once, outside the loop
            prepare, split_fit = split
            y_tr_f, y_p_f = y_tr.astype(dtype), y_p.astype(dtype)
            cache = sg(prepare(X_tr, y_tr_f))
            sw = jnp.concatenate([jnp.ones((X_tr.shape[0],), dtype), active.astype(dtype)])

            def hypergrad(X, warm):
                def f(Xp):
                    params = split_fit(cache, X_tr, y_tr_f, Xp, y_p_f, sw, warm)
                    return attack.objective(params, X_val, y_val, learner), params

                (v, params), g = jax.value_and_grad(f, has_aux=True)(X)
                return v, g, params
        else:
            def hypergrad(X, warm):
                return hypergradient(attack, X, X_tr, y_tr, y_p, X_val, y_val, active, warm)

        def body(c):
            k, X, warm, prev_v, bestX, bestv, bestp, accX, acc_d, eta, bad, hist, done = c
            v, g, p = hypergrad(X, sg(warm))
            v = jnp.where(jnp.isfinite(v), v, neg_inf)
            hist = hist.at[k].set(v)
            better = (v > bestv) | (k == 0)
            bestX, bestv, bestp = where(better, (X, v, p), (bestX, bestv, bestp))
            gain = jnp.where(k == 0, jnp.inf, v - prev_v)
            warm = learner.to_warm(sg(p))
            if fixed_rule:
                bad = jnp.where(gain < attack.tol, bad + 1, 0)
                done = (bad >= attack.patience) | ~any_free
                Xn = jnp.where(free[:, None], project(X + eta * direction(g)), X)
                prev_v = v
            else:  # backtrack: accept an improving point, else halve the step from the last accepted one
                ok = gain > 0
                done = (eta < attack.min_step) | (ok & (gain < attack.tol)) | ~any_free
                accX = jnp.where(ok, X, accX)
                acc_d = jnp.where(ok, direction(g), acc_d)
                prev_v = jnp.where(ok, v, prev_v)
                eta = jnp.where(ok, eta, 0.5 * eta)
                Xn = jnp.where(free[:, None], project(accX + eta * acc_d), accX)
            return k + 1, Xn, warm, prev_v, bestX, bestv, bestp, accX, acc_d, eta, bad, hist, done

        init = (jnp.asarray(0), Xp, warm0, neg_inf, Xp, neg_inf, p0, Xp, jnp.zeros_like(Xp),
                jnp.asarray(attack.step_size, dtype), jnp.asarray(0), hist, jnp.asarray(False))
        out = jax.lax.while_loop(cond, body, init)
        k, bestX, bestv, bestp, hist = out[0], out[4], out[5], out[6], out[11]
        return bestX, bestv, hist, k, bestp

    return jax.jit(ascend)


def _as_float(a, dtype):
    return jnp.asarray(np.asarray(a), dtype)


def run(attack: PoisoningAttack, X_train, y_train, X_poison_init, y_poison, X_val, y_val, *,
        steps: int = 100, mode: Literal["sequential", "joint"] = "sequential",
        callback: Callable | None = None) -> AttackResult:
    """Run ``attack``: optimize the poison features ``X_poison_init`` ``(m, d)`` (labels ``y_poison``
    fixed) against a victim trained on ``(X_train, y_train) ∪`` poison, maximizing the objective on
    ``(X_val, y_val)``.

    Args:
      steps: maximum ascent steps per block (per point in ``"sequential"`` mode, in all for ``"joint"``).
      mode: ``"sequential"`` (points added and optimized one at a time, earlier ones fixed) or
        ``"joint"`` (all points at once).
      callback: ``callback(i, X_poison)`` after each block (e.g. a progress bar).

    Returns:
      :class:`AttackResult`.
    """
    if mode not in ("sequential", "joint"):
        raise ValueError(f"mode must be 'sequential' or 'joint', got {mode!r}")
    if int(steps) < 1:
        raise ValueError("steps must be >= 1")
    dtype = jnp.result_type(float)
    X_tr, X_p0, X_val_ = (_as_float(a, dtype) for a in (X_train, X_poison_init, X_val))
    if X_p0.ndim == 1:
        X_p0 = X_p0[None, :]
    y_tr, y_p, y_val_ = (_as_float(a, dtype) for a in (y_train, y_poison, y_val))
    y_p = jnp.atleast_1d(y_p)
    m = X_p0.shape[0]
    if X_p0.shape[1] != X_tr.shape[1] or y_p.shape != (m,):
        raise ValueError(f"X_poison_init {X_p0.shape} / y_poison {y_p.shape} do not match X_train {X_tr.shape}")

    ascend = _make_block_ascent(attack, int(steps))
    args = (X_tr, y_tr, y_p, X_val_, y_val_)
    if mode == "joint":
        blocks = [(jnp.ones((m,), bool), jnp.ones((m,), dtype))]
    else:
        blocks = [(jnp.arange(m) == i, (jnp.arange(m) <= i).astype(dtype)) for i in range(m)]

    t0 = time.perf_counter()
    compiled = ascend.lower(X_p0, *blocks[0], *args).compile()
    compile_seconds = time.perf_counter() - t0

    # the clean learner and objective: same compiled loop, no poison present, nothing free
    _, v_clean, _, _, params_clean = compiled(X_p0, jnp.zeros((m,), bool), jnp.zeros((m,), dtype), *args)
    Xp = X_p0
    histories, n_steps, seconds, block_params, block_obj = [], [], [], [], []
    elapsed = 0.0
    params_poisoned, v_poisoned = params_clean, v_clean
    for i, (free, active) in enumerate(blocks):
        t0 = time.perf_counter()
        Xp, v_poisoned, hist, k, params_poisoned = jax.block_until_ready(compiled(Xp, free, active, *args))
        elapsed += time.perf_counter() - t0
        k = int(k)
        histories.append(np.asarray(hist)[:k])
        n_steps.append(k - 1)
        seconds.append(elapsed)
        block_params.append(params_poisoned)
        block_obj.append(float(v_poisoned))
        if callback is not None:
            callback(i, np.asarray(Xp))

    return AttackResult(
        X_poison=np.asarray(Xp),
        y_poison=np.asarray(y_p),
        objective_history=np.concatenate(histories),
        block_history=tuple(histories),
        params_poisoned=params_poisoned,
        params_clean=params_clean,
        objective_clean=float(v_clean),
        objective_poisoned=float(v_poisoned),
        n_steps=np.asarray(n_steps),
        seconds=np.asarray(seconds),
        compile_seconds=compile_seconds,
        mode=mode,
        block_params=tuple(block_params),
        block_objective=np.asarray(block_obj),
    )


def run_stackelberg(attack: PoisoningAttack, X_train, y_train, X_poison_init, y_poison, X_val, y_val, *,
                    steps: int = 100, mode: Literal["joint", "coordinate"] = "joint", **options):
    """The same attack through :func:`bilevel.solve_stackelberg` (smooth learners only): leader = the
    poison features, follower = the learner's ``train_loss``/``solver``, line search along the unit
    hypergradient (secml ``pgd-ls``), projection ``attack.feasible.project``, ``maximize=True``.
    ``mode="coordinate"`` sweeps the points cyclically (all present from the start). ``options``
    override :class:`bilevel.StackelbergConfig` fields. Returns the :class:`bilevel.StackelbergResult`."""
    from bilevel.stackelberg import LineSearch, solve_stackelberg

    learner = attack.learner
    if learner.train_loss is None or learner.solver is None:
        raise ValueError(f"run_stackelberg needs a smooth learner with train_loss and solver, got {learner.name}")
    dtype = jnp.result_type(float)
    X_tr, X_p0, X_val_ = (_as_float(a, dtype) for a in (X_train, X_poison_init, X_val))
    y_tr, y_p, y_val_ = (_as_float(a, dtype) for a in (y_train, y_poison, y_val))

    def leader_objective(Xp, w):
        return attack.objective(w, X_val_, y_val_, learner)

    def follower_loss(w, Xp):
        return learner.train_loss(w, jnp.concatenate([X_tr, Xp]), jnp.concatenate([y_tr, y_p]))

    solver = learner.solver
    if isinstance(solver, ClosedForm):  # a closed form of the learner's own argument order: use Newton
        solver = Newton(tol=1e-9, maxiter=50)
    opts = dict(follower_solver=solver, method=Implicit(),
                leader_optimizer=LineSearch(init_step=attack.step_size, normalize=attack.normalize),
                projection=attack.feasible.project, maximize=True, steps=int(steps), mode=mode)
    opts.update(options)
    w0 = learner.fit(jnp.concatenate([X_tr, X_p0]), jnp.concatenate([y_tr, y_p]))
    return solve_stackelberg(leader_objective, follower_loss, X_p0, w0, **opts)
