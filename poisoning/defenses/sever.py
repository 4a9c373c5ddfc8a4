r"""SEVER (Diakonikolas, Kamath, Kane, Li, Steinhardt & Stewart 2019): filter by the top singular direction
of the centred per-example gradients, for any victim.

Assumption: poison points that move the fit must push it in a common direction, so their loss gradients
at the fitted parameters share a large component that clean gradients (bounded covariance) lack. One
round, with :math:`S` the points kept so far:

1. fit the victim on :math:`S`: :math:`\hat\theta = \arg\min_\theta \frac1{|S|}\sum_{i\in S}\ell(\theta; x_i, y_i)
   + \Omega(\theta)`;
2. per-example gradients :math:`g_i = \nabla_\theta \ell(\hat\theta; x_i, y_i)` (``jax.vmap(jax.grad)``,
   flattened over the parameter pytree), centred on :math:`S`: :math:`G = [g_i - \bar g_S]_{i\in S}`;
3. :math:`v` = the top right singular vector of :math:`G`; outlier scores :math:`\tau_i = \langle g_i - \bar g_S,
   v\rangle^2` (their sum over :math:`S` is :math:`\sigma_1(G)^2`);
4. remove points of :math:`S` with the largest :math:`\tau_i`: either the next share of a total ``fraction``
   (``round(fraction * n)`` points over all rounds, spread evenly), or those whose *normalized* score
   :math:`\tau_i / \operatorname{mean}_{j\in S}\tau_j` exceeds ``threshold`` (mean 1 by construction; for
   Gaussian gradients the tail is :math:`\chi^2_1`-like, but a classifier's gradients are heavy-tailed --
   well-fit points have gradient near 0 -- so calibrate the threshold on clean data: tested).

Repeat for ``rounds`` rounds and refit on the survivors. The paper's filter (its Algorithm 2) removes
points at random, with probability proportional to :math:`\tau_i`, once the scores exceed a threshold;
ours is deterministic (the top share of a fixed budget, or every score above a threshold), so the same
data give the same kept set. Everything is one ``jit`` (the rounds a ``lax.scan``, compiled once; only
``victim`` is static): removed points get example weight 0, so shapes never change, and a round that
removes nothing skips its refit (with ``threshold``, the filter has then reached its fixed point).

Reference: I. Diakonikolas, G. Kamath, D. Kane, J. Li, J. Steinhardt, A. Stewart, *Sever: A robust
meta-algorithm for stochastic optimization*, ICML 2019, arXiv:1803.02815, Algorithms 1-2.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from poisoning.defenses.sanitizers import LossState, _check_fraction, _SanitizerMixin, remove_fraction_per_class
from poisoning.victims.base import Victim, check_features

__all__ = ["SeverResult", "SeverDefense", "per_example_gradients", "sever_scores", "sever"]


class SeverResult(NamedTuple):
    """``params`` refit on the kept points; ``keep`` ``(n,)`` bool; ``scores`` ``(n,)`` the last round's
    :math:`\\tau_i` (0 for points removed before it); ``removed_per_round`` ``(rounds,)``."""

    params: Any
    keep: jax.Array
    scores: jax.Array
    removed_per_round: jax.Array


def per_example_gradients(victim: Victim, params, X, y):
    r"""Flattened gradients :math:`\nabla_\theta \ell(\theta; x_i, y_i)` of the victim's per-example loss,
    shape ``(n, p)`` (``jax.vmap(jax.grad)``); ``y`` public labels."""
    X = jnp.asarray(X)
    y_enc = victim.encode(victim.check_labels(y, n=X.shape[0]), jnp.result_type(X, float))
    return _grads(victim.trusted, params, X, y_enc)


def _grads(victim, params, X, y_enc):
    def one(p, x, t):
        return victim.loss_fn(p, x[None], t[None])[0]

    g = jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(params, X, y_enc)
    return jax.vmap(lambda t: ravel_pytree(t)[0])(g)


def _scores(G, mask):
    m = mask.astype(G.dtype)
    mean = (m @ G) / jnp.maximum(m.sum(), 1.0)
    C = (G - mean) * m[:, None]
    _, _, Vt = jnp.linalg.svd(C, full_matrices=False)
    return jnp.square(C @ Vt[0])


@functools.partial(jax.jit, static_argnums=0)
def _scores_kernel(victim, params, X, y_enc, mask):
    return _scores(_grads(victim, params, X, y_enc), mask)


def sever_scores(victim: Victim, params, X, y, mask=None):
    r"""SEVER's outlier scores :math:`\tau_i = \langle g_i - \bar g, v\rangle^2` at ``params`` (module
    docstring); ``mask`` ``(n,)`` bool restricts the centring and the SVD to those points (others score 0)."""
    if not isinstance(victim, Victim):
        raise TypeError(f"argument 'victim' must be a poisoning.victims Victim, got {type(victim).__name__}")
    X = check_features(X)
    n = X.shape[0]
    y = victim.check_labels(y, n=n)
    mask = jnp.ones(n, bool) if mask is None else jnp.asarray(mask, bool)
    if mask.shape != (n,):
        raise ValueError(f"argument 'mask' must have shape ({n},), got {mask.shape}")
    X = jnp.asarray(X, jnp.result_type(X, float))
    return _scores_kernel(victim.trusted, params, X, victim.encode(y, X.dtype), mask)


def _per_round_counts(n_remove: int, rounds: int) -> tuple[int, ...]:
    cum = [round(n_remove * (r + 1) / rounds) for r in range(rounds)]
    return tuple(b - a for a, b in zip([0] + cum[:-1], cum))


@functools.partial(jax.jit, static_argnames=("victim", "by_count"))
def _sever(victim, X, y_enc, counts, threshold, by_count):
    n = X.shape[0]
    params = victim.fit_fn(X, y_enc, None, None)

    def one_round(carry, count):
        params, keep, _ = carry
        tau = _scores(_grads(victim, params, X, y_enc), keep)
        if by_count:       # the `count` largest scores among the kept points (ties: the smaller index)
            order = jnp.argsort(jnp.where(keep, -tau, jnp.inf), stable=True)
            rank = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
            drop = keep & (rank < count)
        else:
            mean = jnp.sum(jnp.where(keep, tau, 0.0)) / jnp.maximum(keep.sum(), 1)
            drop = keep & (tau > threshold * mean)
        keep = keep & ~drop
        params = jax.lax.cond(jnp.any(drop), lambda: victim.fit_fn(X, y_enc, keep.astype(X.dtype), params),
                              lambda: params)
        return (params, keep, jnp.where(keep, tau, 0.0)), drop.sum().astype(jnp.int32)

    (params, keep, tau), removed = jax.lax.scan(one_round, (params, jnp.ones(n, bool), jnp.zeros(n, X.dtype)),
                                                counts)
    return SeverResult(params, keep, tau, removed)


def sever(victim: Victim, X, y, *, fraction: float | None = None, threshold: float | None = None,
          rounds: int = 4) -> SeverResult:
    """SEVER (module docstring): fit, score the centred per-example gradients along their top singular
    direction, remove the largest, refit; ``rounds`` times.

    Args:
      victim: a :mod:`poisoning.victims` learner accepting example weights (ridge, logistic, softmax,
        smooth SVM, ...); its per-example ``loss`` is differentiated.
      X, y: the (possibly poisoned) training set.
      fraction: remove ``round(fraction * n)`` points in all, spread over the rounds (the budget a defender
        sets from the poison rate it expects); exclusive with ``threshold``.
      threshold: remove, each round, the kept points whose score exceeds ``threshold`` times the kept
        points' mean score (> 1).
      rounds: number of filter rounds (>= 1).
    """
    if not isinstance(victim, Victim):
        raise TypeError(f"argument 'victim' must be a poisoning.victims Victim, got {type(victim).__name__}")
    X = check_features(X)
    n = X.shape[0]
    y = victim.check_labels(y, n=n)
    if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 1:
        raise ValueError(f"argument 'rounds' must be an int >= 1, got {rounds!r}")
    if (fraction is None) == (threshold is None):
        raise ValueError("give exactly one of the arguments 'fraction' and 'threshold'")
    counts = np.zeros(int(rounds), np.int32)
    if fraction is not None:
        _check_fraction(fraction)
        counts = np.asarray(_per_round_counts(int(round(float(fraction) * n)), int(rounds)), np.int32)
        threshold = 0.0
    else:
        if not np.isfinite(threshold) or not float(threshold) > 1.0:
            raise ValueError(f"argument 'threshold' must be a finite number > 1 (the mean score is 1), "
                             f"got {threshold!r}")
    X = jnp.asarray(X, jnp.result_type(X, float))
    return _sever(victim.trusted, X, victim.encode(y, X.dtype), jnp.asarray(counts), jnp.asarray(threshold, X.dtype),
                  fraction is not None)


@dataclasses.dataclass(frozen=True)
class SeverDefense(_SanitizerMixin):
    r"""SEVER with the sanitizers' protocol. ``fit(X, y)`` trains the victim (a
    :class:`~poisoning.defenses.sanitizers.LossState`); ``score(state, X, y)`` is one round's :math:`\tau_i`;
    ``sanitize(X, y, fraction)`` runs :func:`sever` for ``rounds`` rounds (a global budget, not per class)
    and returns ``(keep, scores)``; given ``scores=`` it removes the top fraction of each class by them, as
    the other sanitizers do.
    """

    victim: Victim
    rounds: int = 4

    def __post_init__(self):
        if not isinstance(self.victim, Victim):
            raise TypeError(f"argument 'victim' must be a poisoning.victims Victim, got "
                            f"{type(self.victim).__name__}")
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise ValueError(f"argument 'rounds' must be an int >= 1, got {self.rounds!r}")

    @property
    def num_classes(self):
        return self.victim.n_classes

    def fit(self, X, y) -> LossState:
        return LossState(self.victim.fit(X, y))

    def score(self, state: LossState, X, y):
        return sever_scores(self.victim, state.params, X, y)

    def sanitize(self, X, y, fraction, *, state=None, scores=None):
        if scores is not None or state is not None:
            if scores is None:
                scores = self.score(state, X, y)
            y = self.victim.check_labels(y, n=np.shape(X)[0])
            scores = jnp.asarray(scores)
            if self.victim.task == "regression":          # one group: real targets are not classes
                return remove_fraction_per_class(scores, jnp.zeros(scores.shape[0], jnp.int32), fraction, 1), scores
            return remove_fraction_per_class(scores, y, fraction, self.victim.n_classes), scores
        res = sever(self.victim, X, y, fraction=fraction, rounds=self.rounds)
        return res.keep, res.scores
