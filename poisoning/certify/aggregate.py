r"""Plurality vote of the base classifiers and the DPA / SS-DPA certificate (Levine & Feizi 2021).

Let :math:`f_1, \dots, f_k` be the base classifiers (``f_i`` trained on partition :math:`P_i` only) and,
for a test input :math:`x`, :math:`n_c = |\{i : f_i(x) = c\}|` the votes for class :math:`c`. The
aggregate prediction is the plurality with ties broken toward the smaller class index:

.. math::  g(x) = \arg\max_c n_c \quad(\text{smallest } c \text{ among the maxima}).

**Theorem 1 (DPA).** With :math:`c = g(x)`,

.. math::  \rho(x) = \Big\lfloor \frac{n_c - \max_{c' \ne c}\big(n_{c'} + \mathbb 1[c' < c]\big)}{2} \Big\rfloor

is a certified radius: for every poisoned training set :math:`U` with :math:`|T \ominus U| \le \rho(x)`
(the symmetric difference: insertions plus deletions; a modified sample counts twice) the prediction
of the DPA ensemble trained on :math:`U` is still :math:`c`. Proof: the hash partitions each sample by
its own content, so each inserted or deleted sample changes one partition, hence at most one vote; a
changed vote moves one unit from :math:`n_c` to some :math:`n_{c'}`, closing the gap to :math:`c'` by
at most 2. :math:`c` keeps winning against :math:`c' > c` while :math:`n_c - r \ge n_{c'} + r` and
against :math:`c' < c` while :math:`n_c - r \ge n_{c'} + 1 + r`, i.e. for every
:math:`r \le \rho(x)`. The bound is tight *at the level of votes*: :math:`\rho(x) + 1` changed votes
(all moved from :math:`c` to the best runner-up) flip :math:`g(x)`; whether a poison can change a
base classifier's vote to a chosen class is another matter, so :math:`\rho` is a lower bound on the
real attack size.

**Theorem 2 (SS-DPA, label flips).** The hash ignores labels, so flipping the label of one sample
changes the labels of one partition, hence at most one base classifier; with
:math:`|T \ominus_L U| \le \rho(x)` flipped labels the prediction is unchanged, with the same
:math:`\rho(x)`. (In the paper the base classifiers of SS-DPA also see the whole *unlabeled* training
set, which a label flip does not change.)

The **certified accuracy** at radius :math:`r` is the fraction of test points with
:math:`g(x) = y` and :math:`\rho(x) \ge r`; the **median certified robustness** is the largest
:math:`r` at which it is at least 1/2 (-1 when the clean accuracy is below 1/2).

Every function is pure and jit-able; bad input (fewer than two classes, votes or labels out of range,
counts of the wrong shape) raises a ``ValueError`` naming the argument.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bilevel._checks import error_if

__all__ = [
    "vote_counts",
    "plurality",
    "certified_radius",
    "certify_votes",
    "certified_accuracy",
    "median_certified",
]


def _check_num_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"argument 'num_classes' must be an int >= 2, got {num_classes!r}")
    return int(num_classes)


def vote_counts(votes, num_classes: int) -> jax.Array:
    """Votes per class, ``(n, num_classes)`` int32, from ``votes`` ``(k, n)``: base classifier ``i``'s
    predicted class for test point ``j`` (integers in ``[0, num_classes)``)."""
    num_classes = _check_num_classes(num_classes)
    votes = jnp.asarray(votes)
    if votes.ndim != 2 or not jnp.issubdtype(votes.dtype, jnp.integer):
        raise ValueError(f"argument 'votes' must be a (k, n) integer array, got {votes.dtype}{votes.shape}")
    error_if(None, jnp.any((votes < 0) | (votes >= num_classes)),
             f"argument 'votes': classes must be in [0, {num_classes})", error=ValueError)
    onehot = votes[..., None] == jnp.arange(num_classes, dtype=votes.dtype)
    return jnp.sum(onehot, axis=0, dtype=jnp.int32)


def _check_counts(counts):
    counts = jnp.asarray(counts)
    if counts.ndim != 2 or counts.shape[1] < 2 or not jnp.issubdtype(counts.dtype, jnp.integer):
        raise ValueError(f"argument 'counts' must be an (n, C >= 2) integer array of votes, got "
                         f"{counts.dtype}{counts.shape}")
    error_if(None, jnp.any(counts < 0), "argument 'counts' holds negative vote counts", error=ValueError)
    return counts


def plurality(counts) -> jax.Array:
    """The plurality class of each row of ``counts`` ``(n, C)``, ties to the smaller class, ``(n,)``."""
    counts = _check_counts(counts)
    return jnp.argmax(counts, axis=1).astype(jnp.int32)  # argmax returns the first maximum


def certified_radius(counts):
    """``(prediction, radius)``, both ``(n,)`` int32, from vote counts ``(n, C)``:

    :math:`\\rho = \\lfloor (n_c - \\max_{c' \\ne c}(n_{c'} + [c' < c])) / 2 \\rfloor` at the plurality
    class :math:`c` (see the module docstring). The radius is ``>= 0``.
    """
    counts = _check_counts(counts)
    num_classes = counts.shape[1]
    pred = jnp.argmax(counts, axis=1).astype(jnp.int32)
    classes = jnp.arange(num_classes, dtype=jnp.int32)
    n_c = jnp.take_along_axis(counts, pred[:, None], axis=1)[:, 0]
    rival = counts + (classes[None, :] < pred[:, None]).astype(counts.dtype)
    rival = jnp.where(classes[None, :] == pred[:, None], jnp.iinfo(jnp.int32).min, rival)
    gap = n_c - jnp.max(rival, axis=1)
    return pred, (gap // 2).astype(jnp.int32)


def certify_votes(votes, num_classes: int):
    """``(prediction, radius)`` of the plurality of ``votes`` ``(k, n)`` (:func:`vote_counts` then
    :func:`certified_radius`)."""
    return certified_radius(vote_counts(votes, num_classes))


def _check_labels(pred, radius, y):
    pred, radius, y = jnp.asarray(pred), jnp.asarray(radius), jnp.asarray(y)
    if pred.ndim != 1 or radius.shape != pred.shape or y.shape != pred.shape:
        raise ValueError(f"arguments 'pred', 'radius', 'y' must be 1-d of one length, got "
                         f"{pred.shape}, {radius.shape}, {y.shape}")
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(f"argument 'y' must hold integer class labels, got dtype {y.dtype}")
    if pred.shape[0] == 0:
        raise ValueError("argument 'y' holds no test points")
    error_if(None, jnp.any(y < 0), "argument 'y' holds negative labels", error=ValueError)
    return pred, radius, y


def certified_accuracy(pred, radius, y, radii) -> jax.Array:
    """Fraction of test points correctly classified with a certified radius ``>= r``, for each ``r`` in
    ``radii``; ``(len(radii),)`` float32. At ``r = 0`` it is the clean accuracy of the ensemble."""
    pred, radius, y = _check_labels(pred, radius, y)
    radii = jnp.asarray(radii)
    ok = (pred == y)[None, :] & (radius[None, :] >= radii.reshape(-1, 1))
    return jnp.mean(ok, axis=1, dtype=jnp.float32)


def median_certified(pred, radius, y) -> jax.Array:
    """The largest ``r`` with :func:`certified_accuracy` ``>= 1/2`` (int32; -1 when the clean accuracy
    is below 1/2): the median of the per-point robustness, ``radius`` if correct else -1."""
    pred, radius, y = _check_labels(pred, radius, y)
    robust = jnp.where(pred == y, radius, -1)
    n = robust.shape[0]
    return jnp.sort(robust)[::-1][(n + 1) // 2 - 1].astype(jnp.int32)
