r"""RONI, reject on negative impact (Nelson et al. 2008; Barreno, Nelson, Joseph & Tygar 2010), for any
victim.

Assumption: a poison point hurts the model it joins, measurably, even when it looks ordinary. For a
candidate :math:`(x, y)` and ``trials`` random draws :math:`t` of a small base training set :math:`B_t`
and a disjoint validation set :math:`V_t` from the (untrusted) pool,

.. math::  \Delta(x, y) = \frac1T\sum_{t=1}^T \Big[ M\big(\theta(B_t \cup \{(x, y)\});\, V_t\big)
           - M\big(\theta(B_t);\, V_t\big) \Big],

where :math:`\theta(S)` is the victim trained on :math:`S` and :math:`M` the validation metric
(``"error"``, the default: the 0-1 error as in Nelson et al., or the squared error of a regression victim;
``"loss"``: the victim's mean per-example surrogate loss). The validation sets come from the untrusted
pool, and a classifier's log loss there is dominated by the mislabeled validation points: a mislabeled
candidate makes the model less confident and *lowers* it (measured on two blobs with 10 % flips: the
flipped points' mean impact under ``"loss"`` is about -0.06, under ``"error"`` +0.04). Use ``"loss"`` for
regression, or when the pool is mostly clean. :math:`\Delta > 0` is a negative impact: the point makes the model worse.
RONI rejects candidates with :math:`\Delta` above a threshold (:func:`roni`), or, as a sanitizer with the
:class:`~poisoning.defenses.sanitizers.Sanitizer` protocol (:class:`RONIDefense`), removes the top
fraction of each class by :math:`\Delta`.

A point of the pool is scored against draws that leave it out of :math:`V_t` (and, for the "without"
model, out of :math:`B_t`). The base sets are example weights over the pool, so the :math:`2nT` fits are one
compiled body (the victim's ``fit`` with 0/1 weights) mapped over the (candidate, draw) pairs: by
``jax.lax.map`` by default, or by ``jax.vmap`` (``vectorize=True``, for accelerators; on CPU, XLA takes
about 10x longer to compile the vmapped Newton solve of :func:`~poisoning.victims.logistic`, 18 s against
2 s measured here, and runs it no faster). Small bases make one point's effect
visible (Nelson et al. use bases of a few dozen messages); the draws average out their noise.

References: B. Nelson, M. Barreno, F. J. Chi, A. D. Joseph, B. I. P. Rubinstein, U. Saini, C. Sutton,
J. D. Tygar, K. Xia, *Exploiting machine learning to subvert your spam filter*, LEET 2008; M. Barreno,
B. Nelson, A. D. Joseph, J. D. Tygar, *The security of machine learning*, Machine Learning 81 (2010).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from poisoning.defenses.sanitizers import _SanitizerMixin, remove_fraction_per_class
from poisoning.victims.base import Victim, check_features

__all__ = ["RONIState", "RONIDefense", "roni_draws", "roni_scores", "roni"]

Metric = Literal["loss", "error"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RONIState:
    """The pool ``(X, y)`` (public labels) and the draws: ``base`` and ``val`` ``(T, n)`` bool masks
    (disjoint in every row)."""

    X: jax.Array
    y: jax.Array
    base: jax.Array
    val: jax.Array


def _check_int(value, name: str, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo or (hi is not None
                                                                                              and value > hi):
        bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"argument {name!r} must be an int {bound}, got {value!r}")
    return int(value)


def roni_draws(key, n: int, n_base: int, n_val: int, trials: int):
    """``trials`` random disjoint (base, validation) subsets of ``range(n)`` as ``(T, n)`` bool masks."""
    n = _check_int(n, "n", 2)
    n_base = _check_int(n_base, "n_base", 2, n - 1)          # the "without" fit of a base point needs another
    n_val = _check_int(n_val, "n_val", 1, n - n_base)
    trials = _check_int(trials, "trials", 1)

    def one(k):
        perm = jax.random.permutation(k, n)
        rank = jnp.zeros(n, jnp.int32).at[perm].set(jnp.arange(n, dtype=jnp.int32))
        return rank < n_base, (rank >= n_base) & (rank < n_base + n_val)

    return jax.vmap(one)(jax.random.split(key, trials))


def _metric(victim, metric, params, X, y_pub, y_enc, w):
    if metric == "loss":
        per = victim.loss_fn(params, X, y_enc)
    elif victim.task == "regression":
        per = jnp.square(victim.decision_fn(params, X) - y_enc)
    else:
        s = victim.decision_fn(params, X)
        pred = (s >= 0).astype(jnp.int32) if victim.task == "binary" else jnp.argmax(s, -1).astype(jnp.int32)
        per = (pred != y_pub).astype(X.dtype)
    return jnp.sum(w * per) / jnp.maximum(jnp.sum(w), 1.0)


def _batched(fn, args, vectorize: bool):
    """``fn`` over the leading axis of ``args``: ``jax.vmap`` or ``jax.lax.map`` (one compiled body)."""
    return jax.vmap(fn)(*args) if vectorize else jax.lax.map(lambda a: fn(*a), args)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _internal(victim, metric, vectorize, X, y_pub, y_enc, base, val):
    """Scores of the pool's own points: candidate i toggled in base row t, left out of val row t."""
    n, T = X.shape[0], base.shape[0]
    dtype = X.dtype

    def value(i, t, present):                  # one fit per (candidate, draw, with/without): one compiled body
        w = base[t].astype(dtype).at[i].set(present)
        p = victim.fit_fn(X, y_enc, w, None)
        return _metric(victim, metric, p, X, y_pub, y_enc, val[t].astype(dtype).at[i].set(0.0))

    i = jnp.repeat(jnp.arange(n), 2 * T)
    t = jnp.tile(jnp.repeat(jnp.arange(T), 2), n)
    present = jnp.tile(jnp.array([1.0, 0.0], dtype), n * T)
    vals = _batched(value, (i, t, present), vectorize).reshape(n, T, 2)
    return (vals[..., 0] - vals[..., 1]).mean(axis=1)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _external(victim, metric, vectorize, X, y_pub, y_enc, base, val, Xc, yc_enc):
    """Scores of new candidates against the pool's draws: the candidate is an extra row of weight 1 (with)
    or 0 (without)."""
    dtype = X.dtype
    m, T = Xc.shape[0], base.shape[0]

    def value(c, t, present):
        X1 = jnp.concatenate([X, Xc[c][None]])
        y1 = jnp.concatenate([y_enc, yc_enc[c][None]])
        w = jnp.concatenate([base[t].astype(dtype), present[None]])
        p = victim.fit_fn(X1, y1, w, None)
        return _metric(victim, metric, p, X, y_pub, y_enc, val[t].astype(dtype))

    # per candidate: T "with" fits; the T "without" fits are shared by all candidates (candidate 0, weight 0)
    c = jnp.concatenate([jnp.repeat(jnp.arange(m), T), jnp.zeros(T, jnp.int32)])
    t = jnp.concatenate([jnp.tile(jnp.arange(T), m), jnp.arange(T)])
    present = jnp.concatenate([jnp.ones(m * T, dtype), jnp.zeros(T, dtype)])
    vals = _batched(value, (c, t, present), vectorize)
    with_ = vals[: m * T].reshape(m, T)
    return (with_ - vals[m * T:][None, :]).mean(axis=1)


def _prepare(victim, X, y, name_X="X", name_y="y"):
    X = check_features(X, name_X)
    y = victim.check_labels(y, name_y, n=X.shape[0])
    X = jnp.asarray(X, jnp.result_type(X, float))
    return X, jnp.asarray(y), victim.encode(y, X.dtype)


def _check_victim_metric(victim, metric):
    if not isinstance(victim, Victim):
        raise TypeError(f"argument 'victim' must be a poisoning.victims Victim, got {type(victim).__name__}")
    if metric not in ("loss", "error"):
        raise ValueError(f"argument 'metric' must be 'loss' or 'error', got {metric!r}")


def roni_scores(victim: Victim, state: RONIState, X=None, y=None, *, metric: Metric = "error",
                vectorize: bool = False):
    r"""Impacts :math:`\Delta` (module docstring), shape ``(m,)``: of the candidates ``(X, y)`` against the
    pool's draws, or (``X=None``) of the pool's own points. ``vectorize``: ``jax.vmap`` over the
    (candidate, draw) pairs instead of ``jax.lax.map`` (see the module docstring)."""
    _check_victim_metric(victim, metric)
    Xp, yp, yp_enc = _prepare(victim, state.X, state.y, "state.X", "state.y")
    base, val = jnp.asarray(state.base, bool), jnp.asarray(state.val, bool)
    if base.ndim != 2 or base.shape[1] != Xp.shape[0] or val.shape != base.shape:
        raise ValueError(f"state.base and state.val must have shape (trials, {Xp.shape[0]}), got {base.shape}, "
                         f"{val.shape}")
    v = victim.trusted
    if X is None:
        return _internal(v, metric, bool(vectorize), Xp, yp, yp_enc, base, val)
    Xc, yc, yc_enc = _prepare(victim, X, y)
    if Xc.shape[1:] != Xp.shape[1:]:
        raise ValueError(f"argument 'X' has feature shape {Xc.shape[1:]} but the pool has {Xp.shape[1:]}")
    return _external(v, metric, bool(vectorize), Xp, yp, yp_enc, base, val, Xc.astype(Xp.dtype), yc_enc)


def roni(victim: Victim, X, y, *, threshold: float = 0.0, n_base: int = 20, n_val: int = 50, trials: int = 10,
         metric: Metric = "error", key=None, vectorize: bool = False):
    r"""RONI on a training set: score every point (:func:`roni_scores`) and keep those with impact
    :math:`\Delta \le` ``threshold``. Returns ``(keep, scores)``. ``key``: the draws' PRNG key
    (default ``jax.random.key(0)``)."""
    state = RONIDefense(victim, n_base=n_base, n_val=n_val, trials=trials, metric=metric).fit(X, y, key=key)
    scores = roni_scores(victim, state, metric=metric, vectorize=vectorize)
    return scores <= threshold, scores


@dataclasses.dataclass(frozen=True)
class RONIDefense(_SanitizerMixin):
    r"""RONI as a sanitizer: ``fit(X, y)`` draws the base / validation sets from the pool
    (:class:`RONIState`); ``score(state, X, y)`` is the impact of new candidates; ``sanitize(X, y, fraction)``
    removes the top ``fraction`` of each class by the impact of the pool's own points."""

    victim: Victim
    n_base: int = 20
    n_val: int = 50
    trials: int = 10
    metric: Metric = "error"
    seed: int = 0
    vectorize: bool = False

    def __post_init__(self):
        _check_victim_metric(self.victim, self.metric)
        _check_int(self.n_base, "n_base", 2)
        _check_int(self.n_val, "n_val", 1)
        _check_int(self.trials, "trials", 1)

    @property
    def num_classes(self):
        return self.victim.n_classes

    def fit(self, X, y, *, key=None) -> RONIState:
        X = check_features(X)
        y = self.victim.check_labels(y, n=X.shape[0])
        base, val = roni_draws(jax.random.key(self.seed) if key is None else key, X.shape[0], self.n_base,
                               self.n_val, self.trials)
        return RONIState(jnp.asarray(X), jnp.asarray(y), base, val)

    def score(self, state: RONIState, X, y):
        return roni_scores(self.victim, state, X, y, metric=self.metric, vectorize=self.vectorize)

    def score_train(self, state, X, y):
        """Impacts of the pool's own points when ``(X, y)`` is the pool, else of ``(X, y)`` as new candidates."""
        same = np.shape(X) == np.shape(state.X) and np.array_equal(np.asarray(X), np.asarray(state.X))
        if same:
            return roni_scores(self.victim, state, metric=self.metric, vectorize=self.vectorize)
        return self.score(state, X, y)

    def sanitize(self, X, y, fraction, *, state=None, scores=None):
        if self.victim.task != "regression":
            return super().sanitize(X, y, fraction, state=state, scores=scores)
        if scores is None:
            scores = self.score_train(self.fit(X, y) if state is None else state, X, y)
        scores = jnp.asarray(scores)
        return remove_fraction_per_class(scores, jnp.zeros(scores.shape[0], jnp.int32), fraction, 1), scores
