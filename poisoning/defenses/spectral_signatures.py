r"""Spectral signatures (Tran, Li & Madry 2018): remove the samples most aligned with the top singular
direction of each class's centred representations.

For every class :math:`c` with representations :math:`R_c = \{r_i : y_i = c\}` (``n_c`` rows), centre
them, :math:`\tilde r_i = r_i - \bar r_c`, take the top right singular vector :math:`v` of the matrix
:math:`[\tilde r_i]` and score :math:`s_i = \langle \tilde r_i, v\rangle^2`. The
:math:`\lfloor 1.5\,\varepsilon\, n_c \rceil` highest scores of *every* class are removed, where
:math:`\varepsilon` is the defender's upper bound on the fraction of a class that is poisoned (Tran et
al., Algorithm 1). On a clean class the defense therefore still removes that many samples: its
false-positive rate on clean data is about :math:`1.5\varepsilon` by construction.

Reference: B. Tran, J. Li, A. Madry, *Spectral Signatures in Backdoor Attacks*, NeurIPS 2018.
"""

from __future__ import annotations

import math

import numpy as np

from poisoning.defenses.detection import Detection, check_features

__all__ = ["spectral_signatures", "spectral_scores"]


def spectral_scores(features) -> np.ndarray:
    """:math:`\\langle r_i - \\bar r, v\\rangle^2` for the rows of ``features`` (one class), ``v`` the top
    right singular vector of the centred rows."""
    R = np.asarray(features, np.float64)
    R = R - R.mean(axis=0)
    if len(R) < 2:
        return np.zeros(len(R))
    if R.shape[1] <= R.shape[0]:
        # the top right singular vector of R is the top eigenvector of R^T R (d x d: cheaper than the SVD)
        v = np.linalg.eigh(R.T @ R)[1][:, -1]
    else:
        v = np.linalg.svd(R, full_matrices=False)[2][0]
    return (R @ v) ** 2


def spectral_signatures(features, labels, *, eps: float = 0.1, multiplier: float = 1.5) -> Detection:
    """Flag the ``round(multiplier * eps * n_c)`` highest spectral scores of every class ``c``.

    Args:
      features: ``(n, d)`` per-sample representations (e.g. penultimate activations).
      labels: ``(n,)`` the (possibly poisoned) training labels.
      eps: upper bound on the poisoned fraction of a class, in (0, 1).
      multiplier: Tran et al.'s 1.5.
    """
    F, y = check_features(features, labels)
    if not (isinstance(eps, (int, float)) and 0 < eps < 1):
        raise ValueError(f"argument 'eps' must be in (0, 1), got {eps!r}")
    if not (isinstance(multiplier, (int, float)) and multiplier > 0 and math.isfinite(multiplier)):
        raise ValueError(f"argument 'multiplier' must be a finite number > 0, got {multiplier!r}")
    flagged = np.zeros(len(y), bool)
    scores = np.zeros(len(y))
    per_class = {}
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        s = spectral_scores(F[idx])
        k = min(int(round(multiplier * eps * len(idx))), len(idx))
        top = idx[np.argsort(-s, kind="stable")[:k]]
        flagged[top] = True
        scores[idx] = s
        per_class[int(c)] = {"n": int(len(idx)), "removed": int(k)}
    return Detection(flagged, scores, per_class)
