r"""Finite Aggregation (Wang, Levine & Feizi, ICML 2022): DPA with every sample in :math:`d` base learners.

DPA (:mod:`poisoning.certify.aggregate`) gives each training sample to one of :math:`k` base learners.
Finite Aggregation (FA) hashes each sample into one of :math:`kd` small *buckets*,
:math:`b(x) = (\text{pixel sum}) \bmod kd` (:func:`~poisoning.certify.partition.partition_indices`
with :math:`kd` partitions), and spreads each bucket over :math:`d` of the :math:`kd` base learners
with :math:`d` distinct cyclic shifts :math:`s_1, \dots, s_d`:

.. math::  \mathrm{spread}(b) = \{(b + s_t) \bmod kd : t = 1..d\},

so base learner :math:`i` trains on the :math:`d` buckets :math:`(i - s_t) \bmod kd` (about
:math:`n / k` samples, as many as a DPA learner with :math:`k` partitions), and each sample reaches
:math:`d` learners. The prediction is the plurality of the :math:`kd` votes, ties to the smaller class.

**Certificate** (the paper's Theorem; the authors' code computes it this way). Let :math:`c` be the
prediction, :math:`N_{c'}` the votes for :math:`c'` and, for a rival :math:`c' \ne c`,

.. math::  g_{c'} = N_c - N_{c'} - \mathbb 1[c' < c] \ \ (\ge 0: c \text{ beats } c'), \qquad
           \delta_i(c') = 1 + \mathbb 1[f_i(x) = c] - \mathbb 1[f_i(x) = c'] \in \{0, 1, 2\},

the most by which re-training learner :math:`i` can close the gap, and
:math:`w_b(c') = \sum_{i \in \mathrm{spread}(b)} \delta_i(c')` the most by which corrupting bucket
:math:`b` can. One inserted or deleted sample changes one bucket, so :math:`r` poisoned samples
close :math:`g_{c'}` by at most the sum :math:`S_r(c')` of the :math:`r` largest :math:`w_b(c')` (a learner
shared by two chosen buckets is counted twice: an over-estimate, hence sound). The radius

.. math::  \rho(x) = \min_{c' \ne c} \max\{r : S_r(c') \le g_{c'}\}

is certified: with at most :math:`\rho(x)` insertions or deletions (and, the hash ignoring labels, at
most :math:`\rho(x)` label flips) the prediction stays :math:`c`. With :math:`d = 1` it is DPA's
:math:`\lfloor \min_{c'} g_{c'} / 2 \rfloor` exactly (tested). The :math:`w_b` take values in
:math:`0..2d`, so :math:`S_r` comes from a histogram (no sort of the :math:`kd` buckets).

Reference: W. Wang, A. Levine, S. Feizi, *Improved Certified Defenses against Data Poisoning with
(Deterministic) Finite Aggregation*, ICML 2022 (the shifts are a seeded sample of :math:`d` distinct
values of :math:`0..kd-1`, as in the authors' code; any fixed, label-free choice keeps the certificate).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from poisoning.certify.aggregate import _check_num_classes, vote_counts
from poisoning.certify.partition import check_num_partitions, partition_indices, partition_layout

__all__ = ["spread_shifts", "bucket_learners", "fa_layout", "fa_certified_radius"]


def _check_d(d) -> int:
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
        raise ValueError(f"argument 'd' (learners per sample) must be an int >= 1, got {d!r}")
    return int(d)


def spread_shifts(k: int, d: int, seed: int = 0) -> np.ndarray:
    """``d`` distinct shifts in ``0..k*d-1`` (sorted, int32), a function of ``seed`` only."""
    k, d = check_num_partitions(k), _check_d(d)
    return np.sort(np.random.default_rng(seed).choice(k * d, size=d, replace=False)).astype(np.int32)


def _check_shifts(shifts, n_learners: int) -> np.ndarray:
    s = np.asarray(shifts)
    if s.ndim != 1 or s.size < 1 or not np.issubdtype(s.dtype, np.integer):
        raise ValueError(f"argument 'shifts' must be a 1-d integer array, got {s.dtype}{s.shape}")
    if np.any((s < 0) | (s >= n_learners)) or len(np.unique(s)) != len(s):
        raise ValueError(f"argument 'shifts' must hold distinct values in [0, {n_learners}), got {s.tolist()}")
    return s.astype(np.int32)


def bucket_learners(shifts, n_learners: int) -> np.ndarray:
    """``(kd, d)`` int32: row ``b`` lists the base learners that train on bucket ``b``."""
    s = _check_shifts(shifts, n_learners)
    return ((np.arange(n_learners, dtype=np.int64)[:, None] + s[None, :]) % n_learners).astype(np.int32)


def fa_layout(images, k: int, d: int, *, shifts=None, seed: int = 0, size: int | None = None):
    """The training sets of the ``k*d`` FA base learners as padded, masked rows.

    Args:
      images: ``(n, ...)`` training images (floats in [0, 1] or ``uint8``): the bucket is
        ``pixel sum mod k*d``, a function of the image alone.
      k, d: FA's parameters (``d = 1`` is DPA's partition with ``k`` parts).
      shifts: the ``d`` shifts (default :func:`spread_shifts` ``(k, d, seed)``).
      size: the padded row size (default: the largest training set of a learner).

    Returns ``(index, mask, shifts)``: ``index`` ``(k*d, size)`` int32 training-set rows (padding 0),
    ``mask`` ``(k*d, size)`` bool, ready for :func:`~poisoning.certify.dpa.train_and_vote`.
    """
    k, d = check_num_partitions(k), _check_d(d)
    n = int(jnp.shape(images)[0])
    m = check_num_partitions(k * d, n)
    shifts = spread_shifts(k, d, seed) if shifts is None else _check_shifts(shifts, m)
    if len(shifts) != d:
        raise ValueError(f"argument 'shifts' must hold d = {d} shifts, got {len(shifts)}")
    bucket = np.asarray(partition_indices(images, m)).astype(np.int64)
    learner = ((bucket[:, None] + shifts[None, :].astype(np.int64)) % m).reshape(-1).astype(np.int32)
    sample = np.repeat(np.arange(n, dtype=np.int32), d)       # the copies keep the training order
    rows, mask = partition_layout(jnp.asarray(learner), m, size=size)
    index = np.where(np.asarray(mask), sample[np.asarray(rows)], 0).astype(np.int32)
    return jnp.asarray(index), mask, shifts


def _radius_from_histogram(hist, gap):
    """``max{r : S_r <= gap}`` where ``S_r`` sums the ``r`` largest values of a multiset given by its
    histogram ``hist`` ``(..., V)`` over the values ``0..V-1``; ``gap`` ``(...)`` >= 0."""
    V = hist.shape[-1]

    def take(carry, v):
        rem, r, open_ = carry
        h = hist[..., v]
        fit = jnp.where(v > 0, rem // jnp.maximum(v, 1), h).astype(h.dtype)   # value-0 buckets are free
        m = jnp.where(open_, jnp.minimum(h, fit), jnp.zeros_like(h))
        return (rem - m * v, r + m, open_ & (m == h)), None

    gap = gap.astype(hist.dtype)
    init = (gap, jnp.zeros_like(gap), jnp.ones(gap.shape, bool))
    (_, r, _), _ = jax.lax.scan(take, init, jnp.arange(V - 1, -1, -1, dtype=hist.dtype))
    return r


@functools.partial(jax.jit, static_argnames=("num_classes", "d", "batch_size"))
def _fa_radius(votes, buckets, num_classes, d, batch_size):
    counts = vote_counts(votes, num_classes)                       # (n, C)
    pred = jnp.argmax(counts, axis=1).astype(jnp.int32)
    classes = jnp.arange(num_classes, dtype=jnp.int32)
    m = votes.shape[0]

    def one(args):
        v, c, cnt = args                                           # (m,), (), (C,)
        delta = 1 + (v == c)[None, :].astype(jnp.int32) - (v[None, :] == classes[:, None]).astype(jnp.int32)
        w = jnp.sum(delta[:, buckets], axis=-1)                    # (C, m) in 0..2d
        hist = jnp.sum(w[..., None] == jnp.arange(2 * d + 1, dtype=w.dtype), axis=1, dtype=jnp.int32)
        gap = cnt[c] - cnt - (classes < c).astype(jnp.int32)      # (C,)
        r = _radius_from_histogram(hist, jnp.maximum(gap, 0))
        return jnp.min(jnp.where(classes == c, m, r)).astype(jnp.int32)

    radius = jax.lax.map(one, (votes.T, pred, counts), batch_size=batch_size)
    return pred, radius


def fa_certified_radius(votes, num_classes: int, shifts, *, batch_size: int = 16):
    """``(prediction, radius)``, both ``(n,)`` int32, of the FA ensemble from ``votes`` ``(k*d, n)``
    (learner ``i``'s class for test point ``j``) and the ``shifts`` the learners were trained with
    (module docstring). ``batch_size`` test points are processed at once (memory ``~ C k d^2`` each)."""
    num_classes = _check_num_classes(num_classes)
    votes = jnp.asarray(votes)
    if votes.ndim != 2 or not jnp.issubdtype(votes.dtype, jnp.integer):
        raise ValueError(f"argument 'votes' must be a (k*d, n) integer array, got {votes.dtype}{votes.shape}")
    if not isinstance(votes, jax.core.Tracer) and bool(jnp.any((votes < 0) | (votes >= num_classes))):
        raise ValueError(f"argument 'votes': classes must be in [0, {num_classes})")
    buckets = bucket_learners(shifts, votes.shape[0])
    return _fa_radius(votes.astype(jnp.int32), jnp.asarray(buckets), num_classes, buckets.shape[1],
                      max(1, min(int(batch_size), votes.shape[1])))
