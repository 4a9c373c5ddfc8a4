r"""Cluster impurity (Xiang, Miller & Kesidis, IEEE MLSP 2019): Gaussian-mixture clusters of each class's
features, and a blur test of whether a cluster's decisions hang on a few pixels.

For every class :math:`c`:

1. fit Gaussian mixtures with full covariances to the class's features (optionally projected on their
   first ``n_dims`` principal components, see below) with :math:`K = 1, 2, \dots` components, growing
   :math:`K` until the BIC stops improving (``bic_patience`` failures in a row; the author's code
   allows two), and keep the best;
2. assign every sample to its maximum a posteriori component;
3. for every cluster :math:`k`, blur its images (by default a 2x2 average filter) and let
   :math:`p_k` be the fraction of them whose predicted class is unchanged by the blur; the cluster's
   *impurity* is

   .. math::  S_k = \mathrm{KL}\big([1, 0] \,\|\, [p_k, 1 - p_k]\big) = -\log p_k ;

4. flag every sample of a cluster with :math:`S_k > \tau` (:math:`\tau = 0.5` by default, i.e.
   :math:`p_k < e^{-0.5} \approx 0.61`).

A backdoor trigger of a few pixels is destroyed by the blur, so triggered images go back to their
source class and their cluster is impure; clean clusters keep their decisions.

``fit_samples``: the PCA and the mixtures are fitted on at most this many random samples of each
class (2000 by default; every sample is then assigned), which keeps the BIC search to seconds per
class on a CPU; ``None`` fits on all of them.

``n_dims``: a full-covariance mixture of :math:`d` -dimensional features has :math:`O(K d^2)`
parameters, which the BIC penalizes by :math:`\tfrac12 \log n` each; on 512-dimensional penultimate
features of a few thousand samples per class no second component would ever pay for itself. We
therefore fit the mixture on the first ``n_dims`` (default 10) principal components of the class
(scikit-learn's :class:`~sklearn.decomposition.PCA`); ``n_dims=None`` uses the raw features.

Uses scikit-learn's :class:`~sklearn.mixture.GaussianMixture` (its ``bic``).

Reference: Z. Xiang, D. J. Miller, G. Kesidis, *A Benchmark Study of Backdoor Data Poisoning Defenses
for Deep Neural Network Classifiers and a Novel Defense*, IEEE MLSP 2019.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Callable

import jax.numpy as jnp
import numpy as np

from poisoning.defenses.detection import Detection, check_features

__all__ = ["cluster_impurity", "impurity", "impurity_detection", "prediction_unchanged", "fit_gmm_bic",
           "average_filter", "median_filter"]


# ----------------------------------------------------------------------------------------------------
# filters
# ----------------------------------------------------------------------------------------------------
def _shifted_windows(images, size: int):
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"argument 'size' must be an int >= 1, got {size!r}")
    x = jnp.asarray(images)
    squeezed = x.ndim == 3
    if squeezed:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"argument 'images' must be (N, H, W, C) or (N, H, W), got shape {x.shape}")
    before, after = (size - 1) // 2, size // 2
    xp = jnp.pad(x, ((0, 0), (before, after), (before, after), (0, 0)), mode="edge")
    H, W = x.shape[1:3]
    return [xp[:, i:i + H, j:j + W, :] for i in range(size) for j in range(size)], squeezed


def average_filter(images, size: int = 2):
    """``size`` x ``size`` moving average of each channel (edge-replicated border; for even sizes the
    window reaches one more pixel down / right): the 2x2 blur of the cluster-impurity defense."""
    windows, squeezed = _shifted_windows(images, size)
    out = sum(windows) / (size * size)
    return out[..., 0] if squeezed else out


def median_filter(images, size: int = 3):
    """``size`` x ``size`` median filter of each channel (edge-replicated border)."""
    windows, squeezed = _shifted_windows(images, size)
    out = jnp.median(jnp.stack(windows), axis=0)
    return out[..., 0] if squeezed else out


# ----------------------------------------------------------------------------------------------------
# the pieces
# ----------------------------------------------------------------------------------------------------
def impurity(unchanged) -> float:
    """:math:`-\\log p` with :math:`p` the fraction of ``True`` in ``unchanged`` (``inf`` when 0)."""
    u = np.asarray(unchanged, bool)
    if u.size == 0:
        raise ValueError("argument 'unchanged' is empty")
    p = u.mean()
    return math.inf if p == 0 else float(-np.log(p))


def fit_gmm_bic(Z, *, max_components: int = 10, seed: int = 0, covariance_type: str = "full",
                reg_covar: float = 1e-4, init_params: str = "k-means++", patience: int = 1):
    """Fit ``GaussianMixture`` with 1, 2, ... components until the BIC has failed to improve on the best
    so far ``patience`` times in a row (or ``max_components``); returns ``(best_model, bics)``, the model
    of lowest BIC. ``patience=2`` is the author's released code (grow until the BIC fails twice).
    ``init_params``: scikit-learn's initialization of the responsibilities (``"k-means++"`` seeds, no
    Lloyd iterations)."""
    from sklearn.mixture import GaussianMixture

    if not isinstance(patience, int) or patience < 1:
        raise ValueError(f"argument 'patience' must be an int >= 1, got {patience!r}")
    best, best_bic, bics, fails = None, math.inf, [], 0
    for k in range(1, min(max_components, len(Z)) + 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gmm = GaussianMixture(k, covariance_type=covariance_type, reg_covar=reg_covar, random_state=seed,
                                  init_params=init_params, n_init=1).fit(Z)
        bics.append(float(gmm.bic(Z)))
        if bics[-1] < best_bic:
            best, best_bic, fails = gmm, bics[-1], 0
        else:
            fails += 1
            if fails >= patience:
                break
    return best, bics


def _project(F: np.ndarray, fit_rows: np.ndarray, n_dims: int | None, seed: int):
    """``F`` on the first ``n_dims`` principal components of ``F[fit_rows]`` (and the fitted PCA)."""
    if n_dims is None or F.shape[1] <= n_dims:
        return F, None
    from sklearn.decomposition import PCA

    k = min(n_dims, len(fit_rows) - 1)
    pca = PCA(n_components=max(k, 1), random_state=seed).fit(F[fit_rows])
    return pca.transform(F), pca


def cluster_impurity(features, labels, images, predict_fn: Callable, *, threshold: float = 0.5,
                     image_filter: Callable | None = None, n_dims: int | None = 10, max_components: int = 10,
                     min_cluster: int = 1, fit_samples: int | None = 2000, seed: int = 0,
                     batch_size: int = 1000, bic_patience: int = 1) -> Detection:
    """Flag the samples of every cluster whose impurity exceeds ``threshold`` (see the module docstring).

    Args:
      features: ``(n, d)`` per-sample representations (e.g. penultimate activations).
      labels: ``(n,)`` the (possibly poisoned) training labels.
      images: ``(n, ...)`` the images of the samples (what ``image_filter`` and ``predict_fn`` take).
      predict_fn: images -> predicted classes ``(m,)`` (or logits ``(m, K)``).
      threshold: :math:`\\tau`, flag clusters with :math:`S > \\tau`.
      image_filter: images -> filtered images (default :func:`average_filter` with ``size=2``).
      n_dims: principal components the mixture is fitted on (``None``: the raw features).
      max_components: the largest number of mixture components tried per class.
      min_cluster: clusters with fewer samples are never flagged.
      fit_samples: fit the PCA and the mixtures (and compute the BIC) on at most this many random samples
        of a class, then assign every sample (``None``: all; a CPU-time knob, the paper fits all).
      seed: seeds PCA, the subsample and the mixtures.
      batch_size: images per call of ``predict_fn``.
      bic_patience: the mixture search stops after the BIC failed to improve this many times in a row
        (1: at the first failure; 2: the author's code).
    """
    F, y = check_features(features, labels)
    if len(images) != len(y):
        raise ValueError(f"argument 'images' must have {len(y)} rows (one per label), got {len(images)}")
    if not callable(predict_fn):
        raise TypeError("argument 'predict_fn' must be callable (images -> predicted classes)")
    if not (isinstance(threshold, (int, float)) and threshold >= 0):
        raise ValueError(f"argument 'threshold' must be a number >= 0, got {threshold!r}")
    if not isinstance(max_components, int) or max_components < 1:
        raise ValueError(f"argument 'max_components' must be an int >= 1, got {max_components!r}")
    if n_dims is not None and (not isinstance(n_dims, int) or n_dims < 1):
        raise ValueError(f"argument 'n_dims' must be None or an int >= 1, got {n_dims!r}")
    image_filter = image_filter or functools.partial(average_filter, size=2)

    unchanged = prediction_unchanged(predict_fn, images, image_filter, batch_size)
    assignments, per_class = {}, {}
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        fit_rows = np.arange(len(idx))
        if fit_samples is not None and len(idx) > fit_samples:
            fit_rows = np.sort(np.random.default_rng(seed).choice(len(idx), fit_samples, replace=False))
        Z, project = _project(F[idx], fit_rows, n_dims, seed)
        gmm, bics = fit_gmm_bic(Z[fit_rows], max_components=max_components, seed=seed, patience=bic_patience)
        assignments[int(c)] = gmm.predict(Z)
        per_class[int(c)] = {"n": int(len(idx)), "n_components": int(gmm.n_components), "bics": bics}
    det = impurity_detection(y, assignments, unchanged, threshold=threshold, min_cluster=min_cluster)
    for c, info in det.per_class.items():
        info.update(per_class[c])
    return det


def prediction_unchanged(predict_fn: Callable, images, image_filter: Callable, batch_size: int = 1000) -> np.ndarray:
    """``(n,)`` bool: whether ``predict_fn``'s class of each image is the same after ``image_filter``."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"argument 'batch_size' must be an int >= 1, got {batch_size!r}")

    def classes(x):
        out = []
        for i in range(0, len(x), batch_size):
            p = np.asarray(predict_fn(x[i:i + batch_size]))
            out.append(p.argmax(-1) if p.ndim == 2 else p)
        return np.concatenate(out)

    x = np.asarray(images)
    return classes(x) == classes(np.asarray(image_filter(x)))


def impurity_detection(labels, assignments, unchanged, *, threshold: float = 0.5, min_cluster: int = 1) -> Detection:
    r"""Steps 3-4 of the defense on given clusters: flag every cluster whose impurity :math:`-\log p_k`
    exceeds ``threshold``.

    Args:
      labels: ``(n,)`` the training labels.
      assignments: class ``c`` -> ``(n_c,)`` cluster index of each sample of class ``c`` (in the order of
        ``np.flatnonzero(labels == c)``), e.g. a previous detection's ``per_class[c]["assignment"]``: the
        same mixtures judged under another image filter without refitting them.
      unchanged: ``(n,)`` bool, whether each sample's decision survives the image filter
        (:func:`prediction_unchanged`).
    """
    y = np.asarray(labels)
    u = np.asarray(unchanged, bool)
    if u.shape != y.shape:
        raise ValueError(f"argument 'unchanged' must have shape {y.shape}, got {u.shape}")
    flagged = np.zeros(len(y), bool)
    scores = np.zeros(len(y))
    per_class = {}
    for c, assign in assignments.items():
        idx = np.flatnonzero(y == c)
        assign = np.asarray(assign)
        if assign.shape != idx.shape:
            raise ValueError(f"argument 'assignments'[{c}] must have shape {idx.shape} (one per sample of class "
                             f"{c}), got {assign.shape}")
        clusters = []
        for k in np.unique(assign):
            members = idx[assign == k]
            s = impurity(u[members])
            bad = s > threshold and len(members) >= min_cluster
            flagged[members] |= bad
            scores[members] = s
            clusters.append({"component": int(k), "size": int(len(members)), "impurity": s, "flagged": bool(bad)})
        per_class[int(c)] = {"clusters": clusters, "assignment": assign}
    return Detection(flagged, scores, per_class)
