r"""TRIM: iteratively trimmed loss minimization (Jagielski et al. 2018, Algorithm 2), for any victim.

Given :math:`N` training points of which at most :math:`N - n` are poisoned, TRIM estimates

.. math::  \min_{\theta,\; I \subset [N],\, |I| = n} \; \mathcal L(\theta; D_I)
           = \frac1n \sum_{i \in I} \ell(\theta; x_i, y_i) + \Omega(\theta)

by alternating the two blocks, each solved exactly:

1. :math:`\theta^{(t)} = \arg\min_\theta \mathcal L(\theta; D_{I^{(t)}})` (the victim's ``fit`` with 0/1
   example weights: ridge in closed form, logistic regression by Newton, any smooth victim);
2. :math:`I^{(t+1)}` = the :math:`n` points of smallest loss :math:`\ell(\theta^{(t)}; x_i, y_i)`
   (ties to the smaller index).

Neither step increases the trimmed objective, and there are finitely many subsets, so the iteration
stops at a fixed point :math:`I^{(t+1)} = I^{(t)}` (checked; ``max_iter`` caps it, and ``converged``
says which happened). A fixed point is only a *local* minimum: the paper starts from a random subset
(``key``); the default starts from the fit on all :math:`N` points (deterministic); ``restarts`` random
starts run at once (``vmap``) and the one of smallest trimmed loss wins. The TRIM step is the
"C-step" of least trimmed squares (Rousseeuw & Van Driessen 2006), whose small random starts
(``start_size = d + 1``) escape the poison's basin far more often than large ones (tested).

The loss :math:`\ell` is the victim's per-example surrogate (``victim.loss``): half the squared residual
for :func:`poisoning.victims.ridge` (the paper's regression setting), the logistic loss for
:func:`poisoning.victims.logistic` / :func:`~poisoning.victims.softmax` (a classification variant:
mislabeled or far-away points have large loss and are trimmed).

Everything is one ``jax.lax.while_loop`` (jit-able; ``victim``, ``n_keep`` and ``max_iter`` are static).
:func:`removal_rates` measures a defense's false positive rate (clean points removed) and its detection
rate (poison points removed).

Reference: M. Jagielski, A. Oprea, B. Biggio, C. Liu, C. Nita-Rotaru, B. Li, *Manipulating Machine
Learning: Poisoning Attacks and Countermeasures for Regression Learning*, IEEE S&P 2018, Sec. V.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from poisoning.victims.base import Victim, check_features

__all__ = ["TrimResult", "trim", "removal_rates"]


class TrimResult(NamedTuple):
    """``params`` fitted on the kept points; ``keep`` ``(N,)`` bool (exactly ``n_keep`` True);
    ``iterations`` (refits after the first); ``trimmed_loss`` (mean per-example loss of the kept points);
    ``converged`` (the kept set reached a fixed point before ``max_iter``)."""

    params: Any
    keep: jax.Array
    iterations: jax.Array
    trimmed_loss: jax.Array
    converged: jax.Array


def _select(losses, n_keep):
    idx = jnp.argsort(losses, stable=True)[:n_keep]
    return jnp.zeros(losses.shape, bool).at[idx].set(True)


def _trim_one(victim, X, y, n_keep, max_iter, w0):
    v = victim.trusted

    def fit(keep_w, warm):
        return v.fit(X, y, weights=keep_w, warm_start=warm)

    params = fit(w0, None)
    keep = _select(v.loss(params, X, y), n_keep)
    params = fit(keep.astype(X.dtype), params)

    def cond(state):
        _, _, it, done = state
        return (~done) & (it < max_iter)

    def body(state):
        params, keep, it, _ = state
        new = _select(v.loss(params, X, y), n_keep)
        done = jnp.all(new == keep)
        return fit(new.astype(X.dtype), params), new, it + 1, done

    params, keep, it, done = jax.lax.while_loop(cond, body, (params, keep, jnp.zeros((), jnp.int32),
                                                             jnp.zeros((), bool)))
    losses = v.loss(params, X, y)
    trimmed = jnp.sum(jnp.where(keep, losses, 0.0)) / n_keep
    return TrimResult(params, keep, it, trimmed, done)


@functools.partial(jax.jit, static_argnames=("victim", "n_keep", "max_iter"))
def _trim(victim, X, y, n_keep, max_iter, W0):
    runs = jax.vmap(lambda w0: _trim_one(victim, X, y, n_keep, max_iter, w0))(W0)   # every start at once
    best = jnp.argmin(runs.trimmed_loss)                                            # ties: the first start
    return jax.tree_util.tree_map(lambda a: a[best], runs)


def trim(victim: Victim, X, y, n_keep: int, *, max_iter: int = 50, key=None, restarts: int = 1,
         start_size: int | None = None) -> TrimResult:
    """TRIM (see the module docstring): keep the ``n_keep`` points the victim fits best, refit, repeat.

    Args:
      victim: a :mod:`poisoning.victims` learner that accepts example weights (ridge, logistic,
        softmax, ...).
      X, y: the (possibly poisoned) training set, ``(N, d)`` and ``(N,)``.
      n_keep: :math:`n`, the number of points to trust (e.g. ``N - n_poison`` when the poison budget is
        known, the paper's setting); an int in ``[1, N]``.
      max_iter: cap on the alternations.
      key: ``None``: one start, the fit on all points (deterministic). A PRNG key: ``restarts`` random
        starting subsets of ``start_size`` points (default ``n_keep``, the paper's start), run at once
        with ``vmap``; the run of smallest trimmed loss is returned. TRIM only reaches a local minimum
        (a fixed point of the alternation): with a large poison fraction the start matters, and small
        random starts (``start_size = d + 1``, the elemental sets of FAST-LTS, Rousseeuw & Van Driessen
        2006) are more often poison-free than large ones.
      restarts: number of random starts (with ``key``).
      start_size: points in each random start (with ``key``).
    """
    if not isinstance(victim, Victim):
        raise TypeError(f"argument 'victim' must be a poisoning.victims Victim, got {type(victim).__name__}")
    X = check_features(X)
    n = X.shape[0]
    y = victim.check_labels(y, n=n)
    if isinstance(n_keep, bool) or not isinstance(n_keep, (int, np.integer)) or not 1 <= n_keep <= n:
        raise ValueError(f"argument 'n_keep' must be an int in [1, {n}], got {n_keep!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"argument 'max_iter' must be an int >= 1, got {max_iter!r}")
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise ValueError(f"argument 'restarts' must be an int >= 1, got {restarts!r}")
    start_size = n_keep if start_size is None else start_size
    if isinstance(start_size, bool) or not isinstance(start_size, (int, np.integer)) or not 1 <= start_size <= n:
        raise ValueError(f"argument 'start_size' must be an int in [1, {n}], got {start_size!r}")
    if key is None and restarts != 1:
        raise ValueError("argument 'restarts' > 1 needs a PRNG 'key' (random starting subsets)")
    X = jnp.asarray(X, jnp.result_type(X, float))
    if key is None:
        W0 = jnp.ones((1, n), X.dtype)
    else:
        def start(k):
            return jnp.zeros((n,), X.dtype).at[jax.random.permutation(k, n)[:start_size]].set(1.0)

        W0 = jax.vmap(start)(jax.random.split(key, restarts))
    return _trim(victim, X, jnp.asarray(y), int(n_keep), max_iter, W0)


def removal_rates(keep, is_poison) -> dict[str, float]:
    """``{"false_positive_rate": clean points removed / clean points, "detection_rate": poison points
    removed / poison points}`` (NaN where a group is empty)."""
    keep, is_poison = np.asarray(keep, bool), np.asarray(is_poison, bool)
    if keep.shape != is_poison.shape or keep.ndim != 1:
        raise ValueError(f"arguments 'keep' and 'is_poison' must be 1-d of one length, got {keep.shape}, "
                         f"{is_poison.shape}")
    clean, poison = ~is_poison, is_poison
    fpr = float(np.mean(~keep[clean])) if clean.any() else float("nan")
    det = float(np.mean(~keep[poison])) if poison.any() else float("nan")
    return {"false_positive_rate": fpr, "detection_rate": det}
