r"""Poisons: how the attacker's leader enters the victim's training set.

A poison is a small registered pytree dataclass that carries its data (arrays are pytree leaves, so
one compiled attack loop serves every value) and knows three things:

- ``leader()``: the pytree the attack driver optimizes (its start), ``with_leader(leader)``: the poison
  with the leader replaced;
- ``num_blocks()``: the entries along the leading axis (points, labels, candidates) that the
  ``"sequential"`` and ``"coordinate"`` modes of :func:`poisoning.attack.run` sweep;
- ``fit(victim, leader, clean, active, warm)``: the victim trained on the clean set with the poison,
  entries flagged inactive being absent — differentiable in the leader.

:class:`PoisonPoints` (new points: features, optionally real labels), :class:`LabelFlips` (relaxed flips
of the binary training labels) and :class:`PoisonWeights` (copies of candidate points) cover the convex
attacks of the literature; a new way in (a trigger stamped on training images, say) is one more class
with these methods.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from poisoning.victims.base import Victim, check_features, check_labels

__all__ = ["CleanData", "PoisonPoints", "LabelFlips", "PoisonWeights"]


# ----------------------------------------------------------------------------------------------------
# how the leader enters the training set
# ----------------------------------------------------------------------------------------------------
class CleanData(NamedTuple):
    """The victim's clean training set (public labels), the victim's cache of it (a pytree) and the
    rows' weights (``None``: all 1)."""

    X: jax.Array
    y: jax.Array
    cache: Any
    weights: Any = None


def _dataclass_pytree(cls, data, meta=()):
    return jax.tree_util.register_dataclass(cls, data_fields=list(data), meta_fields=list(meta))


@functools.partial(_dataclass_pytree, data=("X", "y", "counts"), meta=("optimize_labels",))
@dataclasses.dataclass(frozen=True)
class PoisonPoints:
    r"""``m`` new training points :math:`(x_j, y_j)` with multiplicities :math:`c_j` (``counts``, default 1):
    the leader is their features ``X`` ``(m, ...)`` — or ``{"X": X, "y": y}`` with ``optimize_labels``
    (real targets of a regression victim, Jagielski et al. 2018). Labels are public labels of the
    victim (classes ``0..K-1`` or real targets). The training set is :math:`D_{tr} \cup D_p` with the
    poison rows weighted by ``counts`` (times the driver's ``active`` flags)."""

    X: Any
    y: Any
    counts: Any = None
    optimize_labels: bool = False

    def leader(self):
        return {"X": self.X, "y": self.y} if self.optimize_labels else self.X

    def with_leader(self, leader) -> "PoisonPoints":
        if self.optimize_labels:
            return dataclasses.replace(self, X=leader["X"], y=leader["y"])
        return dataclasses.replace(self, X=leader)

    def num_blocks(self) -> int:
        return int(np.shape(self.X)[0])

    def num_rows(self, n_train: int) -> int:
        return n_train + self.num_blocks()

    def validate(self, victim: Victim, X_train, name="poison"):
        X = check_features(self.X, f"{name}.X", tuple(np.shape(X_train)[1:]))
        y = check_labels(self.y, victim.task, victim.n_classes, f"{name}.y", X.shape[0])
        if self.optimize_labels and victim.task != "regression":
            raise ValueError(f"argument '{name}': optimize_labels needs a regression victim, got {victim.name}")
        counts = None
        if self.counts is not None:
            counts = np.asarray(self.counts, float)
            if counts.shape != (X.shape[0],) or np.any(counts < 0) or not np.all(np.isfinite(counts)):
                raise ValueError(f"argument '{name}.counts' must be {X.shape[0]} finite non-negative numbers")
        return dataclasses.replace(self, X=X, y=y, counts=counts)

    def training_weights(self, clean: CleanData, active, dtype):
        c = active.astype(dtype) if self.counts is None else active.astype(dtype) * jnp.asarray(self.counts, dtype)
        w = jnp.ones((clean.X.shape[0],), dtype) if clean.weights is None else clean.weights.astype(dtype)
        return jnp.concatenate([w, c])

    def one_point_problem(self, i, victim: Victim, clean: CleanData, active):
        r"""Block ``i`` of the sequential mode posed as a one-point problem: the victim's training set is the
        clean set plus every poison row as *fixed* rows, weighted by its count where ``active`` and the
        row is not ``i`` (the points already placed) and 0 elsewhere, plus row ``i`` of the leader
        appended (a :class:`PoisonRow`). The same training set as the masked ``m``-row problem, but the
        victim's cache covers the fixed rows, so a Gram-cached victim recomputes one row per step
        instead of ``m``. Returns ``(PoisonRow, clean_i)``; traceable in ``i``."""
        dtype = clean.X.dtype
        others = active & (jnp.arange(self.num_blocks()) != i)
        Xa = jnp.concatenate([clean.X, self.X.astype(dtype)], axis=0)
        ya = jnp.concatenate([clean.y, jnp.asarray(self.y, clean.y.dtype)])
        clean_i = CleanData(Xa, ya, jax.lax.stop_gradient(victim.prepare(Xa, ya)),
                            self.training_weights(clean, others, dtype))
        return PoisonRow(self, jnp.asarray(i, jnp.int32)), clean_i

    def fit(self, victim: Victim, leader, clean: CleanData, active, warm):
        Xp, yp = (leader["X"], leader["y"]) if self.optimize_labels else (leader, self.y)
        dtype = clean.X.dtype
        weights = self.training_weights(clean, active, dtype)
        return victim.fit_appended_fn(clean.cache, clean.X, victim.encode(clean.y, dtype), Xp.astype(dtype),
                                      victim.encode(yp, dtype), weights, warm)


@functools.partial(_dataclass_pytree, data=("points", "i"), meta=())
@dataclasses.dataclass(frozen=True)
class PoisonRow:
    """Row ``i`` of :class:`PoisonPoints` as the only moving row: the leader is still all ``m`` rows (the
    feasible set and the driver's masks see the full array), the victim trains on a clean set that
    already holds the other rows (:meth:`PoisonPoints.one_point_problem`) plus row ``i``."""

    points: PoisonPoints
    i: Any

    def leader(self):
        return self.points.leader()

    def with_leader(self, leader) -> "PoisonRow":
        return PoisonRow(self.points.with_leader(leader), self.i)

    def num_blocks(self) -> int:
        return self.points.num_blocks()

    def num_rows(self, n_train: int) -> int:
        return n_train + 1

    def fit(self, victim: Victim, leader, clean: CleanData, active, warm):
        row = lambda a: jax.lax.dynamic_slice_in_dim(jnp.asarray(a), self.i, 1)
        p = self.points
        leader_i = jax.tree_util.tree_map(row, leader)
        counts = None if p.counts is None else row(p.counts)
        one = PoisonPoints(row(p.X), row(p.y), counts, p.optimize_labels)
        return one.fit(victim, leader_i, clean, row(active), warm)


@functools.partial(_dataclass_pytree, data=("q",), meta=())
@dataclasses.dataclass(frozen=True)
class LabelFlips:
    r"""Relaxed flips :math:`q \in [0, 1]^n` of the binary training labels (the leader): the victim trains
    on the doubled set :math:`[X; X]`, labels :math:`[y; 1 - y]`, weights :math:`[1 - q; q]` (``q = 0``: the
    clean problem; :math:`q_i = 1` flips label :math:`i`; Biggio et al. 2011, Xiao et al. 2012)."""

    q: Any

    def leader(self):
        return self.q

    def with_leader(self, leader) -> "LabelFlips":
        return LabelFlips(leader)

    def num_blocks(self) -> int:
        return int(np.shape(self.q)[0])

    def num_rows(self, n_train: int) -> int:
        return 2 * n_train

    def validate(self, victim: Victim, X_train, name="poison"):
        if victim.task != "binary":
            raise ValueError(f"argument '{name}': label flips need a binary victim, got {victim.name}")
        q = np.asarray(self.q, float)
        if q.shape != (np.shape(X_train)[0],) or not np.all(np.isfinite(q)):
            raise ValueError(f"argument '{name}.q' must be {np.shape(X_train)[0]} finite numbers")
        return LabelFlips(q)

    def fit(self, victim: Victim, leader, clean: CleanData, active, warm):
        dtype = clean.X.dtype
        q = leader.astype(dtype) * active.astype(dtype)  # an inactive entry is not flipped
        X2 = jnp.concatenate([clean.X, clean.X], axis=0)
        y2 = jnp.concatenate([clean.y, 1 - clean.y])
        return victim.fit_fn(X2, victim.encode(y2, dtype), jnp.concatenate([1.0 - q, q]), warm)


@functools.partial(_dataclass_pytree, data=("X", "y", "weights"), meta=())
@dataclasses.dataclass(frozen=True)
class PoisonWeights:
    r"""Candidate points ``(X, y)`` appended to the training set with weights (copies) ``weights``, the
    leader: :math:`\theta^\star(c) = \arg\min \frac{1}{n + \sum c}(\sum_i \ell_i + \sum_j c_j \tilde\ell_j)`
    (Koh & Liang 2017's up-weighting; Jagielski et al. 2021's influence-guided copies)."""

    X: Any
    y: Any
    weights: Any

    def leader(self):
        return self.weights

    def with_leader(self, leader) -> "PoisonWeights":
        return dataclasses.replace(self, weights=leader)

    def num_blocks(self) -> int:
        return int(np.shape(self.weights)[0])

    def num_rows(self, n_train: int) -> int:
        return n_train + int(np.shape(self.X)[0])

    def validate(self, victim: Victim, X_train, name="poison"):
        X = check_features(self.X, f"{name}.X", tuple(np.shape(X_train)[1:]))
        y = check_labels(self.y, victim.task, victim.n_classes, f"{name}.y", X.shape[0])
        w = np.asarray(self.weights, float)
        if w.shape != (X.shape[0],) or not np.all(np.isfinite(w)):
            raise ValueError(f"argument '{name}.weights' must be {X.shape[0]} finite numbers")
        return PoisonWeights(X, y, w)

    def fit(self, victim: Victim, leader, clean: CleanData, active, warm):
        dtype = clean.X.dtype
        c = leader.astype(dtype) * active.astype(dtype)  # an inactive candidate is absent
        base = jnp.ones((clean.X.shape[0],), dtype) if clean.weights is None else clean.weights.astype(dtype)
        weights = jnp.concatenate([base, c])
        return victim.fit_appended_fn(clean.cache, clean.X, victim.encode(clean.y, dtype),
                                      jnp.asarray(self.X, dtype), victim.encode(self.y, dtype), weights, warm)
