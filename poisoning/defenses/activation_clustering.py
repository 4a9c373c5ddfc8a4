r"""Activation clustering (Chen et al. 2018): split each class's activations in two and flag the
cluster that looks like a planted sub-population.

For every class :math:`c`: reduce the representations of its samples to ``n_components`` (10)
independent components with FastICA, cluster them with 2-means, and decide whether the class is
poisoned by

- ``"relative_size"`` (default): the smaller cluster holds less than ``size_threshold`` (0.35) of
  the class (poison is a minority of its labelled class);
- ``"silhouette"``: the silhouette score of the 2-clustering exceeds ``silhouette_threshold``
  (two clusters fit the class well);
- ``"both"``: both at once (fewer false positives on clean classes);
- ``"exclusionary"``: Chen et al.'s exclusionary reclassification. The smaller cluster of *every*
  class is a candidate; one model is retrained without all the candidates (``retrain(keep)`` returns
  its classifier), and classifies each candidate cluster. A legitimate cluster is still classified as
  its label by a model that never saw it; a poisoned one goes to its source class. With :math:`l` the
  cluster's images classified as their label and :math:`p` those classified as the most frequent
  other class, the cluster is poison when :math:`l < T p` (``reclass_threshold`` :math:`T = 1`).
  (The paper retrains once per candidate; one retraining without all of them is our economy, sound
  when the candidates are a small part of the data.)

``reduction``: FastICA's sources have unit variance and are an orthogonal rotation of the whitened
first ``n_components`` principal components, and k-means (Euclidean) does not see rotations: the
paper's ICA step is, for the clustering, a *whitening* that gives each of the 10 directions the same
weight. A poison sub-population that carries most of its class's variance along one direction (the
direction spectral signatures ranks on) is then weighed like any direction of handwriting style, and
2-means may split the class by style instead, with the poison inside a large mixed cluster (MNIST
BadNets 3 -> 8 on the BadNets CNN: a 2,831-sample cluster holding all 613 poisons). ``"pca"`` keeps the
principal components' variances (no whitening), and 2-means isolates the poison there (722 samples,
607 of them poison, same features). The default stays the paper's ``"ica"``.

In a class judged poisoned the smaller cluster is flagged. Per-sample score: one minus the relative
size of the sample's cluster (higher = smaller cluster). The thresholds are not given in the paper;
0.35 is the relative-size default of IBM's Adversarial Robustness Toolbox, 0.15 for the silhouette
is ours.

Uses scikit-learn's :class:`~sklearn.decomposition.FastICA`, :class:`~sklearn.cluster.KMeans` and
:func:`~sklearn.metrics.silhouette_score` (on at most ``silhouette_samples`` random samples).

Reference: B. Chen, W. Carvalho, N. Baracaldo, H. Ludwig, B. Edwards, T. Lee, I. Molloy,
B. Srivastava, *Detecting Backdoor Attacks on Deep Neural Networks by Activation Clustering*,
AAAI SafeAI workshop 2019, arXiv:1811.03728 (2018).
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np

from poisoning.defenses.detection import Detection, check_features

__all__ = ["activation_clustering", "CRITERIA", "REDUCTIONS"]

CRITERIA = ("relative_size", "silhouette", "both", "exclusionary")
REDUCTIONS = ("ica", "pca")


def _reduce(F: np.ndarray, n_components: int, seed: int, reduction: str = "ica") -> np.ndarray:
    F = F[:, F.std(axis=0) > 0]  # dead units carry nothing and make ICA's whitening singular
    k = min(n_components, F.shape[1], len(F) - 1)
    if k < 1:
        return np.zeros((len(F), 1))
    if reduction == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=k, random_state=seed).fit_transform(F)
    from sklearn.decomposition import FastICA

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FastICA's convergence warning: the clustering is what matters
        ica = FastICA(n_components=k, whiten="unit-variance", max_iter=400, tol=5e-3,
                      whiten_solver="eigh" if len(F) > F.shape[1] else "svd", random_state=seed)
        return ica.fit_transform(F)


def activation_clustering(features, labels, *, n_components: int = 10, criterion: str = "relative_size",
                          size_threshold: float = 0.35, silhouette_threshold: float = 0.15,
                          silhouette_samples: int = 2000, seed: int = 0, images=None,
                          retrain: Callable | None = None, reclass_threshold: float = 1.0,
                          batch_size: int = 1000, reduction: str = "ica") -> Detection:
    """Flag the smaller 2-means cluster of each class judged poisoned (see the module docstring).

    Args:
      features: ``(n, d)`` per-sample representations (e.g. penultimate activations).
      labels: ``(n,)`` the (possibly poisoned) training labels.
      n_components: ICA components per class (fewer when the features have fewer dimensions).
      criterion: one of :data:`CRITERIA`.
      size_threshold: relative size in (0, 0.5] below which the smaller cluster is poison.
      silhouette_threshold: silhouette score in (-1, 1) above which the class is split.
      silhouette_samples: the silhouette is computed on at most this many samples of the class.
      seed: seeds ICA, k-means and the silhouette's subsample.
      images: ``(n, ...)`` the samples' inputs (``"exclusionary"`` only: what the retrained model classifies).
      retrain: ``keep -> predict_fn`` (``"exclusionary"`` only): trains a model on the samples where the
        boolean ``keep`` is true and returns its ``images -> classes (or logits)``.
      reclass_threshold: :math:`T` of the exclusionary criterion (poison when :math:`l < T p`).
      batch_size: images per call of the retrained ``predict_fn``.
      reduction: ``"ica"`` (the paper's: unit-variance FastICA sources) or ``"pca"`` (the first
        ``n_components`` principal components, their variances kept; see the module docstring).
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    F, y = check_features(features, labels)
    if reduction not in REDUCTIONS:
        raise ValueError(f"argument 'reduction' must be one of {REDUCTIONS}, got {reduction!r}")
    if criterion not in CRITERIA:
        raise ValueError(f"argument 'criterion' must be one of {CRITERIA}, got {criterion!r}")
    if not isinstance(n_components, int) or n_components < 1:
        raise ValueError(f"argument 'n_components' must be an int >= 1, got {n_components!r}")
    if not 0 < size_threshold <= 0.5:
        raise ValueError(f"argument 'size_threshold' must be in (0, 0.5], got {size_threshold!r}")
    if not -1 < silhouette_threshold < 1:
        raise ValueError(f"argument 'silhouette_threshold' must be in (-1, 1), got {silhouette_threshold!r}")
    exclusionary = criterion == "exclusionary"
    if exclusionary:
        if not callable(retrain):
            raise TypeError("criterion 'exclusionary' needs argument 'retrain' (keep -> predict_fn)")
        if images is None or len(images) != len(y):
            raise ValueError(f"criterion 'exclusionary' needs argument 'images' with {len(y)} rows (one per label)")
        if not (isinstance(reclass_threshold, (int, float)) and reclass_threshold > 0):
            raise ValueError(f"argument 'reclass_threshold' must be a number > 0, got {reclass_threshold!r}")
    flagged = np.zeros(len(y), bool)
    candidates = {}
    scores = np.zeros(len(y))
    per_class = {}
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) < 4:
            per_class[int(c)] = {"n": int(len(idx)), "skipped": "fewer than 4 samples"}
            continue
        Z = _reduce(F[idx], n_components, seed, reduction)
        assign = KMeans(n_clusters=2, n_init=10, random_state=seed).fit_predict(Z)
        sizes = np.bincount(assign, minlength=2) / len(idx)
        small = int(np.argmin(sizes))
        if len(np.unique(assign)) < 2:
            sil = 0.0
        else:
            sil = float(silhouette_score(Z, assign, sample_size=min(silhouette_samples, len(idx)),
                                         random_state=seed))
        by_size = bool(sizes[small] < size_threshold)
        by_sil = sil > silhouette_threshold
        if exclusionary:
            candidates[int(c)] = idx[assign == small]
            poisoned = False  # decided below, after the retraining
        else:
            poisoned = {"relative_size": by_size, "silhouette": by_sil, "both": by_size and by_sil}[criterion]
        if poisoned:
            flagged[idx[assign == small]] = True
        scores[idx] = 1.0 - sizes[assign]
        per_class[int(c)] = {"n": int(len(idx)), "relative_size": float(sizes[small]), "silhouette": sil,
                             "poisoned": bool(poisoned), "flagged": int(np.sum(assign == small)) if poisoned else 0}
    if exclusionary and candidates:
        _reclassify(candidates, y, np.asarray(images), retrain, reclass_threshold, batch_size, flagged, per_class)
    return Detection(flagged, scores, per_class)


def _reclassify(candidates, y, images, retrain, threshold, batch_size, flagged, per_class):
    """Exclusionary reclassification of every class's candidate cluster (see the module docstring)."""
    keep = np.ones(len(y), bool)
    for members in candidates.values():
        keep[members] = False
    if not keep.any():
        raise ValueError("exclusionary reclassification: the candidate clusters hold every sample")
    predict_fn = retrain(keep)
    for c, members in candidates.items():
        if len(members) == 0:
            continue
        out = [np.asarray(predict_fn(images[members[i:i + batch_size]])) for i in range(0, len(members), batch_size)]
        pred = np.concatenate([o.argmax(-1) if o.ndim == 2 else o for o in out])
        counts = np.bincount(pred, minlength=int(max(pred.max(), c)) + 1)
        l = int(counts[c])
        counts[c] = 0
        p = int(counts.max())
        poisoned = l < threshold * p
        if poisoned:
            flagged[members] = True
        per_class[c].update(poisoned=bool(poisoned), flagged=int(len(members)) if poisoned else 0,
                            reclass_own=l, reclass_other=p, reclass_other_class=int(counts.argmax()))
