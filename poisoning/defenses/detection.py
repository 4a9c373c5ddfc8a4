r"""What the backdoor-detection defenses return, and how a detection is scored.

Each defense of :mod:`~poisoning.defenses.spectral_signatures`,
:mod:`~poisoning.defenses.activation_clustering` and :mod:`~poisoning.defenses.cluster_impurity` maps
per-sample features (and labels) of a possibly poisoned training set to a :class:`Detection`: the
boolean mask of samples it flags as poison, a per-sample score (higher = more suspicious) and
per-class details. :func:`detection_rates` scores a mask against the true poison mask:

.. math::  \mathrm{TPR} = \frac{|\text{flagged} \cap \text{poison}|}{|\text{poison}|}, \qquad
           \mathrm{FPR} = \frac{|\text{flagged} \setminus \text{poison}|}{|\text{clean}|}

(``None`` where the denominator is 0, e.g. the TPR of a clean training set).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

__all__ = ["Detection", "DetectionRates", "detection_rates", "check_features"]


class Detection(NamedTuple):
    """``flagged`` ``(n,)`` bool, ``scores`` ``(n,)`` float (higher = more suspicious), ``per_class``
    (class -> details of the defense's decision on that class)."""

    flagged: np.ndarray
    scores: np.ndarray
    per_class: dict[int, dict[str, Any]]


class DetectionRates(NamedTuple):
    """True- and false-positive rates of a detection (``None`` when undefined) and the counts behind them."""

    tpr: float | None
    fpr: float | None
    true_positives: int
    false_positives: int
    n_poison: int
    n_clean: int


def detection_rates(flagged, is_poison) -> DetectionRates:
    """TPR and FPR of the boolean mask ``flagged`` against the true mask ``is_poison`` (same shape)."""
    f = np.asarray(flagged)
    p = np.asarray(is_poison)
    if f.dtype != bool or p.dtype != bool:
        raise TypeError(f"arguments 'flagged' and 'is_poison' must be boolean masks, got {f.dtype} and {p.dtype}")
    if f.shape != p.shape or f.ndim != 1:
        raise ValueError(f"arguments 'flagged' {f.shape} and 'is_poison' {p.shape} must be 1-D of the same shape")
    tp, fp = int(np.sum(f & p)), int(np.sum(f & ~p))
    n_poison, n_clean = int(p.sum()), int((~p).sum())
    return DetectionRates(tp / n_poison if n_poison else None, fp / n_clean if n_clean else None, tp, fp,
                          n_poison, n_clean)


def check_features(features, labels) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``features`` ``(n, d)`` (finite) and ``labels`` ``(n,)`` (integers >= 0); float64 / int copies."""
    F = np.asarray(features)
    y = np.asarray(labels)
    if F.ndim != 2:
        raise ValueError(f"argument 'features' must be (n, d), got shape {F.shape}")
    if not np.issubdtype(F.dtype, np.number) or not np.all(np.isfinite(F)):
        raise ValueError("argument 'features' must be finite numbers")
    if y.ndim != 1 or len(y) != len(F):
        raise ValueError(f"argument 'labels' must have shape ({len(F)},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"argument 'labels' must hold integer classes, got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise ValueError(f"argument 'labels' must be >= 0, found {y.min()}")
    return F.astype(np.float64), y.astype(np.int64)
