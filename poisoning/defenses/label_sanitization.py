r"""k-NN label sanitization against label flipping (Paudice, Muñoz-González & Lupu 2018).

Assumption: label flips are sparse and the classes are locally consistent, so a flipped point sits among
neighbours of the other class. For every training point :math:`x_i` (Algorithm 1 of the paper):

1. find its ``k`` nearest neighbours :math:`N_k(i)` in the training set (Euclidean, the point itself
   excluded);
2. let :math:`\hat c_i = \arg\max_c |\{j \in N_k(i): y_j = c\}|` be their most common label (ties to the
   smaller class) and :math:`p_i = |\{j \in N_k(i): y_j = \hat c_i\}| / k` its fraction;
3. if :math:`p_i \ge \eta`, relabel :math:`y_i \leftarrow \hat c_i` (a point whose label is already the
   majority keeps it).

One pass, with the neighbours' *original* labels (:func:`knn_relabel`). :math:`\eta` trades missed flips
for false relabellings: with :math:`\eta > 1/2` only a clear majority relabels; the paper uses
:math:`k = 10` and :math:`\eta \in [0.5, 1]`.

As a removal sanitizer (the :class:`~poisoning.defenses.sanitizers.Sanitizer` protocol, so that the attack
driver and :mod:`poisoning.defenses.evaluate` can use it), :class:`KNNLabelSanitizer` scores a point by the
fraction of its ``k`` nearest reference neighbours whose label differs from its own,
:math:`1 - |\{j \in N_k(i): y_j = y_i\}|/k`, and ``sanitize`` removes the top fraction per class;
``relabel`` is the paper's defense.

Distances are brute force, :math:`O(n^2 d)`, in blocks of ``block_size`` query rows (``jax.lax.map``).

Reference: A. Paudice, L. Muñoz-González, E. C. Lupu, *Label sanitization against label flipping
poisoning attacks*, ECML PKDD 2018 workshops (Nemesis), arXiv:1803.00992.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from poisoning.defenses.sanitizers import KNNState, _check_X, _check_y, _concrete, _pairwise_dist, _SanitizerMixin

__all__ = ["LabelSanitization", "KNNLabelSanitizer", "knn_label_votes", "knn_relabel"]


class LabelSanitization(NamedTuple):
    """``labels`` after sanitization ``(n,)``; ``changed`` ``(n,)`` bool (relabelled points);
    ``majority`` ``(n,)`` the neighbours' most common label; ``confidence`` ``(n,)`` its fraction."""

    labels: jax.Array
    changed: jax.Array
    majority: jax.Array
    confidence: jax.Array


@partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _votes_kernel(X, X_ref, y_ref, k, K, exclude_self, block_size):
    n = X.shape[0]

    def block(Xb, idx):
        D = _pairwise_dist(Xb, X_ref)
        if exclude_self:
            D = jnp.where(idx[:, None] == jnp.arange(X_ref.shape[0])[None, :], jnp.inf, D)
        nbrs = jax.lax.top_k(-D, k)[1]                                  # (b, k) nearest (ties: lower index)
        return jax.nn.one_hot(y_ref[nbrs], K, dtype=jnp.int32).sum(1)   # (b, K) label counts

    idx = jnp.arange(n)
    if block_size is None or block_size >= n:
        return block(X, idx)
    return jax.lax.map(lambda a: block(a[0][None], a[1][None])[0], (X, idx), batch_size=block_size)


def _check_k(k, n_ref: int, exclude_self: bool) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"argument 'k' must be a positive int, got {k!r}")
    if k + (1 if exclude_self else 0) > n_ref:
        raise ValueError(f"argument 'k' ({k}) needs at least {k + int(exclude_self)} reference points, got {n_ref}")
    return int(k)


def _check_eta(eta) -> None:
    e = _concrete(eta)
    if e is not None and (e.ndim != 0 or not np.isfinite(e) or not 0.0 < float(e) <= 1.0):
        raise ValueError(f"argument 'eta' must be a scalar in (0, 1], got {eta!r}")


def knn_label_votes(X, X_ref, y_ref, k: int = 10, *, exclude_self: bool = False, num_classes: int | None = None,
                    block_size: int | None = None):
    """Counts ``(n, K)`` of each label among the ``k`` nearest reference points of every row of ``X``
    (``exclude_self=True`` when ``X`` is the reference set: a point is not its own neighbour)."""
    X = _check_X(X)
    X_ref = _check_X(X_ref, "X_ref")
    if X_ref.shape[1] != X.shape[1]:
        raise ValueError(f"X_ref has dimension {X_ref.shape[1]} but X has dimension {X.shape[1]}")
    y_ref, K = _check_y(y_ref, X_ref.shape[0], num_classes, "y_ref")
    k = _check_k(k, X_ref.shape[0], exclude_self)
    if exclude_self and X.shape[0] != X_ref.shape[0]:
        raise ValueError("exclude_self=True requires X to be the reference set X_ref")
    dtype = jnp.result_type(X, X_ref, float)
    return _votes_kernel(jnp.asarray(X, dtype), jnp.asarray(X_ref, dtype), y_ref, k, K, bool(exclude_self),
                         None if block_size is None else int(block_size))


@partial(jax.jit, static_argnums=3)
def _relabel_kernel(votes, y, eta, k):
    majority = jnp.argmax(votes, axis=1).astype(y.dtype)                # ties: the smaller class
    confidence = votes.max(axis=1) / k
    relabel = confidence >= eta
    labels = jnp.where(relabel, majority, y)
    return LabelSanitization(labels, labels != y, majority, confidence)


def knn_relabel(X, y, k: int = 10, eta: float = 0.5, *, num_classes: int | None = None,
                block_size: int | None = None) -> LabelSanitization:
    r"""Paudice et al.'s label sanitization (module docstring): relabel :math:`x_i` to its ``k`` nearest
    neighbours' majority label :math:`\hat c_i` when that label's fraction is at least ``eta``."""
    X = _check_X(X)
    y, K = _check_y(y, X.shape[0], num_classes)
    _check_eta(eta)
    votes = knn_label_votes(X, X, y, k, exclude_self=True, num_classes=K, block_size=block_size)
    return _relabel_kernel(votes, y, jnp.asarray(eta, jnp.result_type(float)), int(k))


@dataclasses.dataclass(frozen=True)
class KNNLabelSanitizer(_SanitizerMixin):
    r"""k-NN label sanitization (Paudice et al. 2018) with the sanitizers' protocol.

    ``relabel(X, y)``: the paper's defense (:func:`knn_relabel`). ``score(state, X, y)``: the fraction of
    the ``k`` nearest reference points (``state = fit(X_ref, y_ref)``) with another label;
    ``sanitize(X, y, fraction)``: remove the top ``fraction`` of each class by that score.
    """

    k: int = 10
    eta: float = 0.5
    num_classes: int | None = None
    block_size: int | None = None

    def __post_init__(self):
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k < 1:
            raise ValueError(f"argument 'k' must be a positive int, got {self.k!r}")
        _check_eta(self.eta)

    def fit(self, X, y) -> KNNState:
        X = _check_X(X)
        y, _ = _check_y(y, X.shape[0], self.num_classes)
        return KNNState(X, y)

    def _score(self, state: KNNState, X, y, exclude_self: bool):
        X = _check_X(X)
        y, K = _check_y(y, X.shape[0], self.num_classes)
        _, K = _check_y(state.y_ref, state.X_ref.shape[0], K, "state.y_ref")
        votes = knn_label_votes(X, state.X_ref, state.y_ref, self.k, exclude_self=exclude_self, num_classes=K,
                                block_size=self.block_size)
        agree = jnp.take_along_axis(votes, y[:, None].astype(jnp.int32), axis=1)[:, 0]
        return 1.0 - agree / self.k

    def score(self, state: KNNState, X, y):
        return self._score(state, X, y, False)

    def score_train(self, state, X, y):
        return self._score(state, X, y, True)

    def relabel(self, X, y) -> LabelSanitization:
        return knn_relabel(X, y, self.k, self.eta, num_classes=self.num_classes, block_size=self.block_size)
