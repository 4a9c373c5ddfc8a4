r"""Label-flipping attacks under a budget: random flips, a relaxed bilevel attack and a greedy baseline.

The attacker may change the labels of at most ``budget`` training points (binary labels 0/1; a flip
is :math:`y \mapsto 1 - y`) and wants the *retrained* victim to do badly on validation data. With
per-example flip variables :math:`q_i \in \{0, 1\}` the problem is

.. math::

    \max_{q \in \{0,1\}^n,\ \sum_i q_i \le B} \; A\big(w^\star(q)\big), \qquad
    w^\star(q) = \arg\min_w \sum_i (1 - q_i)\,\ell(w; x_i, y_i) + q_i\,\ell(w; x_i, 1 - y_i) + \Omega(w),

(Biggio, Nelson & Laskov 2011; Xiao, Xiao & Eckert 2012, "ALFA"). Relaxing :math:`q` to
:math:`[0, 1]^n` turns the training loss into a weighted loss over the doubled set
:math:`\{(x_i, y_i)\} \cup \{(x_i, 1 - y_i)\}` with weights :math:`(1 - q, q)`: the poison
:class:`~poisoning.attack.LabelFlips`, whose hypergradient :math:`\nabla_q A` comes through the
victim's training (the implicit function theorem for a smooth victim, e.g.
:func:`poisoning.victims.logistic`). Composed here:

- :func:`optimized_label_flip`: projected ascent on the capped simplex
  :math:`\{q \in [0,1]^n, \sum q \le B\}` (:class:`~poisoning.feasible.CappedSimplex`) with the
  accept-or-halve rule :class:`~bilevel.stackelberg.Backtrack` (steps :math:`t\,g/\|g\|_\infty`; a
  step that lowers the relaxed objective is retried from the last accepted point with half the
  length); every iterate is scored by the objective of the victim *retrained on its top-``B``
  rounding* (the attack's ``select``), so the best rounding seen is returned;
- :func:`greedy_label_flip`: the first-order greedy baseline, :class:`~bilevel.stackelberg.Greedy` on
  the same poison: at the current hard flip set every unflipped point is scored by
  :math:`\partial A / \partial q_i` (an influence-function estimate of the gain of flipping it) and the
  ``rescore_every`` best are flipped, then re-scored;
- :func:`random_label_flip`: the random baseline (binary or multiclass).

References
----------
- B. Biggio, B. Nelson, P. Laskov, "Support vector machines under adversarial label noise", ACML 2011.
- H. Xiao, H. Xiao, C. Eckert, "Adversarial label flips attack on support vector machines", ECAI 2012.
- P. W. Koh, P. Liang, "Understanding black-box predictions via influence functions", ICML 2017.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from bilevel.stackelberg import Backtrack, Greedy
from poisoning.attack import AttackResult, LabelFlips, PoisoningAttack, run
from poisoning.feasible import Box, CappedSimplex
from poisoning.objectives import error_generic
from poisoning.victims import Victim, check_features

__all__ = [
    "random_label_flip",
    "flipped_labels",
    "top_flips",
    "optimized_flip_attack",
    "greedy_flip_attack",
    "optimized_label_flip",
    "greedy_label_flip",
]


def _check_budget(budget, n, minimum=0):
    if isinstance(budget, bool) or int(budget) != budget:
        raise ValueError(f"argument 'budget' must be an integer, got {budget!r}")
    budget = int(budget)
    if budget < minimum or budget > n:
        raise ValueError(f"argument 'budget' must be in [{minimum}, {n}] (the number of training labels), got {budget}")
    return budget


# ----------------------------------------------------------------------------------------------------
# random flips
# ----------------------------------------------------------------------------------------------------
def random_label_flip(y, budget: int, key, n_classes: int | None = None, *, return_indices: bool = False):
    """Flip exactly ``budget`` labels of ``y`` chosen uniformly at random without replacement.

    Binary (``n_classes=None``): labels 0/1 and a flip is ``1 - y``. Multiclass (``n_classes=K``):
    labels in ``{0, ..., K-1}``; each chosen label moves to a different class drawn uniformly among the
    other ``K - 1``. Deterministic given ``key``. Returns the new labels (same dtype as ``y``), and the
    flipped indices (sorted) when ``return_indices``.
    """
    y = jnp.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"argument 'y' must be a 1-D array of labels, got shape {tuple(y.shape)}")
    n = y.shape[0]
    budget = _check_budget(budget, n)
    if n_classes is not None and (isinstance(n_classes, bool) or int(n_classes) < 2):
        raise ValueError(f"argument 'n_classes' must be an integer >= 2 or None, got {n_classes!r}")
    K = 2 if n_classes is None else int(n_classes)
    a = np.asarray(y)
    if a.size and (np.any(a != np.round(a)) or a.min() < 0 or a.max() > K - 1):
        hint = " (binary labels are 0/1 here, not -1/+1)" if K == 2 and np.any(a == -1) else ""
        raise ValueError(f"argument 'y' must hold integer class labels in {{0, ..., {K - 1}}}{hint}")
    k_idx, k_cls = jax.random.split(key)
    idx = jnp.sort(jax.random.choice(k_idx, n, (budget,), replace=False))
    if n_classes is None:
        y_new = y.at[idx].set((1 - y[idx]).astype(y.dtype))
    else:
        shift = jax.random.randint(k_cls, (budget,), 1, K)
        y_new = y.at[idx].set(((y[idx] + shift) % K).astype(y.dtype))
    return (y_new, idx) if return_indices else y_new


def flipped_labels(y, flip_mask):
    """Binary labels ``y`` (0/1) with the labels at ``flip_mask`` (bool or 0/1, ``(n,)``) flipped to ``1 - y``."""
    y = np.asarray(y)
    return np.where(np.asarray(flip_mask) > 0.5, 1 - y, y)


def top_flips(q, budget: int):
    """The hard flip set of relaxed flips ``q``: 1 at the ``budget`` largest entries (ties: the lower
    index first), 0 elsewhere. jit-able (``budget`` static)."""
    q = jnp.asarray(q)
    _, idx = jax.lax.top_k(q, int(budget))
    return jnp.zeros_like(q).at[idx].set(1.0)


# ----------------------------------------------------------------------------------------------------
# the attacks
# ----------------------------------------------------------------------------------------------------
def _fit_flips(victim: Victim, flips, X, y):
    """The victim retrained (cold start) on ``(X, y)`` with the labels at ``flips`` (0/1) flipped."""
    dtype = X.dtype
    X2 = jnp.concatenate([X, X], axis=0)
    y2 = victim.encode(jnp.concatenate([y, 1 - y]), dtype)
    return victim.fit_fn(X2, y2, jnp.concatenate([1.0 - flips, flips]).astype(dtype), None)


def _validation_only(objective):
    """``objective(victim, params, X_val, y_val)`` accepting (and ignoring) the training set that the
    optimized attack also passes as target (its ``select`` retrains on it)."""

    def on_validation(victim, params, X_val, y_val, X_train, y_train):
        return objective(victim, params, X_val, y_val)

    return on_validation


@functools.lru_cache(maxsize=32)
def optimized_flip_attack(victim: Victim, budget: int, objective: Callable = error_generic, *,
                          step_size: float = 0.5, min_step: float = 1e-4) -> PoisoningAttack:
    r"""The relaxed label-flip attack: poison :class:`~poisoning.attack.LabelFlips`, feasible set
    ``CappedSimplex(budget)``, step rule ``Backtrack(step_size, normalization="inf", strict=False,
    min_step=min_step)`` (accept an iterate that does not lower the relaxed objective, else halve the
    step from the last accepted one; stop once the step is below ``min_step``), no gain tolerance, and
    ``select`` = ``objective`` of the victim retrained on the top-``budget`` rounding of each iterate.
    Its target is ``(X_val, y_val, X_train, y_train)`` (the rounding retrains on the training set).
    Memoized: equal settings share one attack."""
    budget = int(budget)
    if budget < 1:
        raise ValueError(f"argument 'budget' must be >= 1, got {budget}")
    rule = Backtrack(init_step=float(step_size), shrink=0.5, min_step=float(min_step), tol=0.0,
                     normalization="inf", strict=False)

    def rounded(victim, params, q, X_val, y_val, X_train, y_train):
        return objective(victim, _fit_flips(victim, top_flips(q, budget), X_train, y_train), X_val, y_val)

    return PoisoningAttack(victim, _validation_only(objective), CappedSimplex(float(budget)), step=rule,
                           gain_tol=None, select=rounded)


def _greedy_shares(budget: int, k: int) -> tuple:
    # rounds of k flips, the last one what is left (the driver evaluates the flip set after every round)
    return (k,) * (budget // k) + ((budget % k,) if budget % k else ())


@functools.lru_cache(maxsize=32)
def greedy_flip_attack(victim: Victim, budget: int, objective: Callable = error_generic, *,
                       rescore_every: int = 1) -> PoisoningAttack:
    """The greedy label-flip attack: poison :class:`~poisoning.attack.LabelFlips` started at no flips,
    step rule ``Greedy(shares=(k, k, ..., rest), exclude_active=True)`` with ``k = rescore_every`` (each
    round flips the ``k`` unflipped points of largest :math:`\\partial A/\\partial q_i`), feasible set
    ``Box(0, 1)``, the last iterate returned (``return_best=False``). Target ``(X_val, y_val)``."""
    budget, k = int(budget), int(rescore_every)
    if budget < 1:
        raise ValueError(f"argument 'budget' must be >= 1, got {budget}")
    if k < 1:
        raise ValueError(f"argument 'rescore_every' must be >= 1, got {rescore_every}")
    return PoisoningAttack(victim, objective, Box(0.0, 1.0),
                           step=Greedy(shares=_greedy_shares(budget, k), exclude_active=True),
                           gain_tol=None, return_best=False)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _hard_value(victim, objective, flips, X, y, X_val, y_val):
    params = _fit_flips(victim, flips, X, y)
    return objective(victim, params, X_val, y_val), params


def _check_inputs(victim, fn, X_val, y_val):
    if not isinstance(victim, Victim):
        raise ValueError(f"argument 'victim' must be a poisoning.victims.Victim, got {type(victim).__name__}")
    if victim.task != "binary" or victim.train_loss is None:
        raise ValueError(f"{fn} needs a smooth binary victim (e.g. poisoning.victims.logistic), got {victim.name}")
    X_val = check_features(np.asarray(X_val), "X_val")
    victim.check_labels(np.asarray(y_val), "y_val", X_val.shape[0])


def _hard_result(res: AttackResult, victim, objective, flips, X_train, y_train, X_val, y_val) -> AttackResult:
    """``res`` with the hard flips: poison, params and objective of the victim retrained on them, and the
    clean victim (no flips)."""
    X, y = jnp.asarray(np.asarray(X_train), jnp.result_type(float)), jnp.asarray(np.asarray(y_train))
    Xv, yv = jnp.asarray(np.asarray(X_val), X.dtype), jnp.asarray(np.asarray(y_val))
    f = jnp.asarray(flips, X.dtype)
    value, params = _hard_value(victim, objective, f, X, y, Xv, yv)
    clean, params_clean = _hard_value(victim, objective, jnp.zeros_like(f), X, y, Xv, yv)
    return res._replace(poison=LabelFlips(np.asarray(f)), params=params, objective=float(value),
                        params_clean=params_clean, objective_clean=float(clean))


def optimized_label_flip(X_train, y_train, X_val, y_val, budget: int, victim: Victim, *,
                         objective: Callable = error_generic, steps: int = 50, step_size: float = 0.5,
                         q_init=None) -> AttackResult:
    r"""Relaxed bilevel label flipping (:func:`optimized_flip_attack` run by :func:`poisoning.attack.run`).

    Starts at ``q_init`` (default uniform ``budget / n``), at most ``steps`` steps. Returns an
    :class:`~poisoning.attack.AttackResult` whose ``poison`` is the best *hard* flip set seen (``poison.q``
    0/1, exactly ``budget`` ones), ``params`` / ``objective`` the victim retrained on it,
    ``params_clean`` / ``objective_clean`` the victim without flips; ``history`` is the relaxed
    objective at every evaluated iterate (rejected ones included). Labels 0/1;
    :func:`flipped_labels` gives the poisoned labels."""
    _check_inputs(victim, "optimized_label_flip", X_val, y_val)
    n = int(np.shape(X_train)[0])
    B = _check_budget(budget, n, minimum=1)
    attack = optimized_flip_attack(victim, B, objective, step_size=float(step_size))
    q0 = np.full((n,), B / n) if q_init is None else np.asarray(q_init, float)
    res = run(attack, X_train, y_train, LabelFlips(q0), (X_val, y_val, X_train, y_train), steps=int(steps))
    flips = top_flips(jnp.asarray(res.poison.q), B)
    return _hard_result(res, victim, objective, flips, X_train, y_train, X_val, y_val)


def greedy_label_flip(X_train, y_train, X_val, y_val, budget: int, victim: Victim, *,
                      objective: Callable = error_generic, rescore_every: int = 1) -> AttackResult:
    r"""Greedy first-order label flipping (:func:`greedy_flip_attack` run by :func:`poisoning.attack.run`):
    from no flips, flip the ``rescore_every`` unflipped points of largest :math:`\partial A/\partial q_i`
    at the current hard flip set, re-score, until ``budget`` flips. Returns an
    :class:`~poisoning.attack.AttackResult`: ``poison.q`` the 0/1 flips, ``params`` / ``objective`` the
    victim retrained on them; ``history[0]`` the objective after each round (its first entry: no flips)."""
    _check_inputs(victim, "greedy_label_flip", X_val, y_val)
    n = int(np.shape(X_train)[0])
    B = _check_budget(budget, n, minimum=1)
    attack = greedy_flip_attack(victim, B, objective, rescore_every=int(rescore_every))
    res = run(attack, X_train, y_train, LabelFlips(np.zeros(n)), (X_val, y_val), steps=len(attack.step.shares))
    return _hard_result(res, victim, objective, jnp.asarray(res.poison.q), X_train, y_train, X_val, y_val)
