r"""Label-flipping attacks under a budget: random flips, a relaxed bilevel attack and a greedy baseline.

The attacker may change the labels of at most ``budget`` training points (binary labels :math:`\pm1`)
and wants the *retrained* victim to do badly on validation data. With per-example flip variables
:math:`q_i \in \{0, 1\}` the problem is

.. math::

    \max_{q \in \{0,1\}^n,\ \sum_i q_i \le B} \; A\big(w^\star(q)\big), \qquad
    w^\star(q) = \arg\min_w \sum_i (1 - q_i)\,\ell(w; x_i, y_i) + q_i\,\ell(w; x_i, -y_i) + \Omega(w),

(Biggio, Nelson & Laskov 2011; Xiao, Xiao & Eckert 2012, "ALFA"). Relaxing :math:`q` to
:math:`[0, 1]^n` turns the training loss into a weighted loss over the doubled set
:math:`\{(x_i, y_i)\} \cup \{(x_i, -y_i)\}` with weights :math:`(1 - q, q)`; ``Learner.fit`` accepts
example weights, so :math:`w^\star(q)` comes from :func:`bilevel.minimize` with
:class:`~bilevel.Implicit` (logistic or ridge victim) and :math:`\nabla_q A` from the implicit function
theorem. :func:`optimized_label_flip` runs projected gradient ascent on the capped simplex
:math:`\{q \in [0,1]^n, \sum q \le B\}` (:func:`project_capped_simplex`) and rounds the top-``B``
entries to flips (keeping the best rounding seen along the path). :func:`greedy_label_flip` is the
first-order greedy baseline: at the current hard flip set it scores every unflipped point by
:math:`\partial A / \partial q_i` (an influence-function estimate of the gain of flipping it) and
flips the ``rescore_every`` best, then re-scores.

References
----------
- B. Biggio, B. Nelson, P. Laskov, "Support vector machines under adversarial label noise", ACML 2011.
- H. Xiao, H. Xiao, C. Eckert, "Adversarial label flips attack on support vector machines", ECAI 2012.
- P. W. Koh, P. Liang, "Understanding black-box predictions via influence functions", ICML 2017.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from poisoning.attack import Learner
from poisoning.objectives import error_generic

__all__ = [
    "random_label_flip",
    "project_capped_simplex",
    "flip_objective",
    "flipped_labels",
    "LabelFlipResult",
    "optimized_label_flip",
    "greedy_label_flip",
]


# ----------------------------------------------------------------------------------------------------
# random flips
# ----------------------------------------------------------------------------------------------------
def _check_budget(budget, n):
    if isinstance(budget, bool) or int(budget) != budget:
        raise ValueError(f"budget must be an integer, got {budget!r}")
    budget = int(budget)
    if budget < 0 or budget > n:
        raise ValueError(f"budget must be in [0, {n}] (the number of training labels), got {budget}")
    return budget


def random_label_flip(y, budget: int, key, n_classes: int | None = None, *, return_indices: bool = False):
    """Flip exactly ``budget`` labels of ``y`` chosen uniformly at random without replacement.

    Binary (``n_classes=None``): labels are :math:`\\pm1` and a flip changes the sign. Multiclass
    (``n_classes=K``): labels in ``{0, ..., K-1}``; each chosen label moves to a different class drawn
    uniformly among the other ``K - 1``. Deterministic given ``key``. Returns the new labels (same
    dtype as ``y``), and the flipped indices (sorted) when ``return_indices``.
    """
    y = jnp.asarray(y)
    n = y.shape[0]
    budget = _check_budget(budget, n)
    k_idx, k_cls = jax.random.split(key)
    idx = jnp.sort(jax.random.choice(k_idx, n, (budget,), replace=False))
    if n_classes is None:
        y_new = y.at[idx].set(-y[idx])
    else:
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        shift = jax.random.randint(k_cls, (budget,), 1, n_classes)
        y_new = y.at[idx].set(((y[idx] + shift) % n_classes).astype(y.dtype))
    return (y_new, idx) if return_indices else y_new


# ----------------------------------------------------------------------------------------------------
# capped simplex projection
# ----------------------------------------------------------------------------------------------------
def project_capped_simplex(v, budget, *, iters: int = 100):
    r"""Euclidean projection of ``v`` onto :math:`\{q \in [0, 1]^n : \sum_i q_i \le B\}`.

    If :math:`\mathrm{clip}(v, 0, 1)` already satisfies the budget it is the answer; otherwise the
    budget is active and the projection is :math:`\mathrm{clip}(v - \tau, 0, 1)` with the threshold
    :math:`\tau > 0` solving :math:`\sum_i \mathrm{clip}(v_i - \tau, 0, 1) = B` (a monotone scalar
    equation, solved by ``iters`` bisection steps and a final exact step on the identified free set).
    Pure jnp; jit-able.
    """
    v = jnp.asarray(v)
    dtype = jnp.result_type(v, float)
    v = v.astype(dtype)
    B = jnp.asarray(budget, dtype)
    clipped = jnp.clip(v, 0.0, 1.0)
    s = lambda tau: jnp.sum(jnp.clip(v - tau, 0.0, 1.0))

    lo = jnp.asarray(0.0, dtype)                      # s(lo) > B when the budget is active
    hi = jnp.maximum(jnp.max(v), 0.0)                 # s(hi) = 0 <= B

    def body(_, c):
        lo, hi = c
        mid = 0.5 * (lo + hi)
        big = s(mid) > B
        return jnp.where(big, mid, lo), jnp.where(big, hi, mid)

    lo, hi = jax.lax.fori_loop(0, iters, body, (lo, hi))
    tau = 0.5 * (lo + hi)
    # exact refinement: with the saturated/zero sets fixed, sum = n_one + sum_free (v - tau) = B
    one = v - tau >= 1.0
    free = (v - tau > 0.0) & ~one
    n_free = jnp.sum(free)
    tau_exact = (jnp.sum(jnp.where(free, v, 0.0)) + jnp.sum(one) - B) / jnp.maximum(n_free, 1)
    q_exact = jnp.clip(v - tau_exact, 0.0, 1.0)
    ok = (n_free > 0) & (jnp.abs(jnp.sum(q_exact) - B) <= jnp.abs(s(tau) - B))
    q_active = jnp.where(ok, q_exact, jnp.clip(v - tau, 0.0, 1.0))
    return jnp.where(jnp.sum(clipped) <= B, clipped, q_active)


# ----------------------------------------------------------------------------------------------------
# the relaxed bilevel objective
# ----------------------------------------------------------------------------------------------------
_project_jit = jax.jit(project_capped_simplex, static_argnames=("iters",))


def _check_binary(y):
    y = np.asarray(y)
    if not np.all(np.isin(y, (-1, 1))):
        raise ValueError("label flipping by optimization needs binary labels in {-1, +1}")


def flip_objective(q, X_train, y_train, X_val, y_val, learner: Learner, objective: Callable = error_generic):
    r"""The relaxed attack objective :math:`A(w^\star(q))`: the victim trained on the doubled set
    :math:`[X; X]`, labels :math:`[y; -y]`, weights :math:`[1 - q; q]` (``q = 0`` is the clean
    problem, ``q_i = 1`` flips label ``i``), scored by ``objective(params, X_val, y_val, learner)``
    (default: mean validation loss). Differentiable in ``q`` (``learner.fit`` runs
    :func:`bilevel.minimize` with :class:`~bilevel.Implicit` for the logistic and ridge learners).
    Returns ``(value, params)``."""
    X = jnp.asarray(X_train)
    y = jnp.asarray(y_train, X.dtype)
    q = jnp.asarray(q, X.dtype)
    X2 = jnp.concatenate([X, X], axis=0)
    y2 = jnp.concatenate([y, -y])
    sw = jnp.concatenate([1.0 - q, q])
    params = learner.fit(X2, y2, sw)
    return objective(params, jnp.asarray(X_val, X.dtype), jnp.asarray(y_val, X.dtype), learner), params


def flipped_labels(y, flip_mask):
    """``y`` with the labels at ``flip_mask`` (bool ``(n,)``) negated."""
    y = np.asarray(y)
    return np.where(np.asarray(flip_mask, bool), -y, y)


def _top_mask(scores, k, allowed=None):
    scores = np.asarray(scores, np.float64).copy()
    if allowed is not None:
        scores[~allowed] = -np.inf
    order = np.argsort(-scores, kind="stable")[:k]
    mask = np.zeros(scores.shape[0], bool)
    mask[order] = True
    return mask


@dataclasses.dataclass(frozen=True)
class LabelFlipResult:
    """Outcome of an optimized label-flip attack.

    Attributes:
      flip_mask: bool ``(n,)``, exactly ``budget`` True entries (the flipped training points).
      y_poisoned: training labels after the flips.
      objective_clean: the attack objective of the victim trained on clean labels.
      objective_poisoned: the objective of the victim retrained on ``y_poisoned`` (hard flips).
      q: the relaxed flip variables at the end (``optimized``) or the 0/1 mask (``greedy``).
      relaxed_history: relaxed objective per ascent step (``optimized``; empty for ``greedy``).
      rounded_history: hard (rounded, retrained) objective per step / per greedy round.
      seconds: wall time of the attack (including compilation).
    """

    flip_mask: np.ndarray
    y_poisoned: np.ndarray
    objective_clean: float
    objective_poisoned: float
    q: np.ndarray
    relaxed_history: np.ndarray
    rounded_history: np.ndarray
    seconds: float


def _flip_value(q, X, y, Xv, yv, learner, objective):
    return flip_objective(q, X, y, Xv, yv, learner, objective)[0]


# compiled once per (learner, objective, shapes): the data are arguments, not constants
_value = jax.jit(_flip_value, static_argnums=(5, 6))
_value_and_grad = jax.jit(jax.value_and_grad(_flip_value), static_argnums=(5, 6))


def _make_fns(learner, objective, X, y, Xv, yv):
    vg = lambda q: _value_and_grad(q, X, y, Xv, yv, learner, objective)
    val = lambda q: vg(q)[0]  # one compiled function for both (saves a compile on small problems)
    return vg, val


def _prep(X_train, y_train, X_val, y_val, budget):
    _check_binary(y_train)
    dtype = jnp.result_type(float)
    X, Xv = jnp.asarray(X_train, dtype), jnp.asarray(X_val, dtype)
    y, yv = jnp.asarray(y_train, dtype), jnp.asarray(y_val, dtype)
    return X, y, Xv, yv, _check_budget(budget, X.shape[0])


def optimized_label_flip(X_train, y_train, X_val, y_val, budget: int, learner: Learner, *,
                         objective: Callable = error_generic, steps: int = 50, step_size: float = 0.5,
                         q_init=None) -> LabelFlipResult:
    r"""Relaxed bilevel label flipping: projected gradient ascent on :math:`q` over the capped simplex.

    Each step moves :math:`q \leftarrow P(q + t\, g / \|g\|_\infty)` with :math:`g = \nabla_q A`
    (implicit hypergradient through the retrained ``learner``, a smooth one: logistic or ridge) and
    :math:`P` = :func:`project_capped_simplex`; the step ``t`` halves whenever the relaxed objective
    does not improve. After every step the top-``budget`` entries of :math:`q` are rounded to hard
    flips and the victim is retrained on them; the best rounding seen is returned (so the result is
    never worse than the rounding of the start, ``q_init``, default uniform ``budget / n``).
    """
    t0 = time.perf_counter()
    X, y, Xv, yv, B = _prep(X_train, y_train, X_val, y_val, budget)
    n = X.shape[0]
    if learner.train_loss is None:
        raise ValueError(f"optimized_label_flip needs a smooth learner (logistic/ridge), got {learner.name}")
    vg, val = _make_fns(learner, objective, X, y, Xv, yv)
    proj = lambda v: _project_jit(v, B)
    obj_clean = float(val(jnp.zeros((n,), X.dtype)))
    if B == 0:
        z = np.zeros(n, bool)
        return LabelFlipResult(z, np.asarray(y), obj_clean, obj_clean, np.zeros(n), np.zeros(0), np.zeros(0),
                               time.perf_counter() - t0)

    q = jnp.full((n,), B / n, X.dtype) if q_init is None else proj(jnp.asarray(q_init, X.dtype))
    relaxed, rounded = [], []
    best_mask, best_val = None, -np.inf
    eta = float(step_size)
    prev = -np.inf
    q_prev, g_prev = q, None
    for _ in range(int(steps) + 1):
        v, g = vg(q)
        v = float(v)
        if v < prev and g_prev is not None:  # no improvement: back off from the previous point
            eta *= 0.5
            q, g = q_prev, g_prev
            v = prev
        else:
            relaxed.append(v)
            mask = _top_mask(np.asarray(q), B)
            hv = float(val(jnp.asarray(mask, X.dtype)))
            rounded.append(hv)
            if hv > best_val:
                best_val, best_mask = hv, mask
        prev, q_prev, g_prev = v, q, g
        gn = float(jnp.max(jnp.abs(g)))
        if not np.isfinite(gn) or gn == 0.0 or eta < 1e-4:
            break
        q = proj(q + eta * g / gn)

    return LabelFlipResult(
        flip_mask=best_mask,
        y_poisoned=flipped_labels(y, best_mask),
        objective_clean=obj_clean,
        objective_poisoned=best_val,
        q=np.asarray(q_prev),
        relaxed_history=np.asarray(relaxed),
        rounded_history=np.asarray(rounded),
        seconds=time.perf_counter() - t0,
    )


def greedy_label_flip(X_train, y_train, X_val, y_val, budget: int, learner: Learner, *,
                      objective: Callable = error_generic, rescore_every: int = 1) -> LabelFlipResult:
    r"""Greedy first-order label flipping (influence-style baseline).

    Starting from no flips, score every unflipped point by :math:`\partial A/\partial q_i` at the
    current hard flip set (the linearized gain of flipping it, from one implicit hypergradient),
    flip the ``rescore_every`` best-scoring points, and re-score; stop at ``budget`` flips.
    """
    t0 = time.perf_counter()
    X, y, Xv, yv, B = _prep(X_train, y_train, X_val, y_val, budget)
    n = X.shape[0]
    k = int(rescore_every)
    if k < 1:
        raise ValueError(f"rescore_every must be >= 1, got {rescore_every}")
    if learner.train_loss is None:
        raise ValueError(f"greedy_label_flip needs a smooth learner (logistic/ridge), got {learner.name}")
    vg, _ = _make_fns(learner, objective, X, y, Xv, yv)
    mask = np.zeros(n, bool)
    v, g = vg(jnp.zeros((n,), X.dtype))
    obj_clean = float(v)
    rounded = []
    while mask.sum() < B:
        take = min(k, B - int(mask.sum()))
        mask |= _top_mask(np.asarray(g), take, allowed=~mask)
        v, g = vg(jnp.asarray(mask, X.dtype))
        rounded.append(float(v))
    final = rounded[-1] if rounded else obj_clean
    return LabelFlipResult(
        flip_mask=mask,
        y_poisoned=flipped_labels(y, mask),
        objective_clean=obj_clean,
        objective_poisoned=final,
        q=mask.astype(np.float64),
        relaxed_history=np.zeros(0),
        rounded_history=np.asarray(rounded),
        seconds=time.perf_counter() - t0,
    )
