r"""The SVD sanitizer of Koh, Steinhardt & Liang (2022): remove points far from a low-rank subspace.

Assumption (Rubinstein et al. 2009; Koh et al. 2022, Sec. 3 "SVD defense"): the clean data lie close to
a low-dimensional subspace, so a poison point that the sphere and slab defenses keep can still carry a
large component *orthogonal* to that subspace. With class centroids :math:`\mu_c` and the top ``rank``
right singular vectors :math:`V_k \in \mathbb R^{d \times k}` of the (clean-estimate) data matrix,

.. math::  s(x, y) = \big\|(I - V_k V_k^\top)(x - \mu_y)\big\|_2
           = \sqrt{\|x - \mu_y\|^2 - \|V_k^\top (x - \mu_y)\|^2},

the residual norm of the centred point outside the subspace (Koh et al.'s release computes the right-hand
side; we form the residual explicitly, which does not cancel in floating point). The defense then removes
the ``fraction`` of highest scores **per class** (:func:`~poisoning.defenses.sanitizers.remove_fraction_per_class`),
like the sphere / slab / loss / k-NN sanitizers of :mod:`poisoning.defenses.sanitizers`, whose
:class:`~poisoning.defenses.sanitizers.Sanitizer` protocol it follows (``fit``, ``score``, ``sanitize``,
``thresholds``).

The subspace is the SVD of the class-centred matrix :math:`[x_i - \mu_{y_i}]_i` (``center=True``, the
default: the directions in which the clean points vary around their centroids) or of the raw matrix
:math:`X` (``center=False``, as in Koh et al.'s code, where the top direction mostly tracks the mean).
Fitting on the poisoned set is the data-dependent defense; fitting on clean data (or passing
``state=SVDState(...)`` built from it) is the oracle defense.

Reference: P. W. Koh, J. Steinhardt, P. Liang, *Stronger data poisoning attacks break data sanitization
defenses*, Machine Learning 111 (2022), arXiv:1811.00741; B. Rubinstein et al., *ANTIDOTE: understanding
and defending against poisoning of anomaly detectors*, IMC 2009.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from poisoning.defenses.sanitizers import _check_X, _check_y, _concrete, _SanitizerMixin, class_centroids

__all__ = ["SVDState", "SVDDefense", "svd_subspace", "svd_scores"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SVDState:
    """Fitted state of the SVD defense: class centroids ``(K, d)`` and orthonormal ``components``
    ``(rank, d)`` (rows: the top right singular vectors)."""

    centroids: jax.Array
    components: jax.Array


def _check_rank(rank, d: int | None = None) -> int:
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
        raise ValueError(f"argument 'rank' must be a positive int, got {rank!r}")
    if d is not None and rank >= d:
        raise ValueError(f"argument 'rank' must be < the dimension d={d} (a rank-d subspace leaves no residual), "
                         f"got {rank}")
    return int(rank)


@partial(jax.jit, static_argnums=(3, 4))
def _subspace_kernel(X, y, centroids, rank, center):
    Z = X - centroids[y] if center else X
    _, _, Vt = jnp.linalg.svd(Z, full_matrices=False)
    return Vt[:rank]


@jax.jit
def _residual_kernel(X, y, centroids, components):
    Z = X - centroids[y]
    R = Z - (Z @ components.T) @ components
    return jnp.linalg.norm(R, axis=-1)


def svd_subspace(X, y, rank: int, *, center: bool = True, num_classes: int | None = None) -> SVDState:
    r"""Class centroids and the top ``rank`` right singular vectors of :math:`[x_i - \mu_{y_i}]` (``center``)
    or of :math:`X`. ``rank`` must be below the dimension ``d`` and at most the number of rows."""
    X = _check_X(X)
    y, K = _check_y(y, X.shape[0], num_classes)
    rank = _check_rank(rank, X.shape[1])
    if rank > X.shape[0]:
        raise ValueError(f"argument 'rank' ({rank}) exceeds the number of rows of X ({X.shape[0]})")
    Xc = _concrete(X)
    if Xc is not None and Xc.size and not np.all(np.isfinite(Xc)):
        raise ValueError("argument 'X' contains NaN or inf")
    X = jnp.asarray(X, jnp.result_type(X, float))
    centroids = class_centroids(X, y, K)
    return SVDState(centroids, _subspace_kernel(X, y, centroids, rank, bool(center)))


def svd_scores(X, y, state: SVDState):
    r"""Residual norms :math:`\|(I - V_k V_k^\top)(x_i - \mu_{y_i})\|_2`, shape ``(n,)``."""
    X = _check_X(X)
    centroids, comps = jnp.asarray(state.centroids), jnp.asarray(state.components)
    if centroids.ndim != 2 or centroids.shape[1] != X.shape[1]:
        raise ValueError(f"state.centroids must have shape (K, {X.shape[1]}), got {centroids.shape}")
    if comps.ndim != 2 or comps.shape[1] != X.shape[1]:
        raise ValueError(f"state.components must have shape (rank, {X.shape[1]}), got {comps.shape}")
    y, _ = _check_y(y, X.shape[0], centroids.shape[0])
    dtype = jnp.result_type(X, centroids, float)
    return _residual_kernel(jnp.asarray(X, dtype), y, centroids.astype(dtype), comps.astype(dtype))


@dataclasses.dataclass(frozen=True)
class SVDDefense(_SanitizerMixin):
    r"""SVD sanitizer (Koh et al. 2022): score by the residual outside the top-``rank`` subspace
    (:func:`svd_scores`), remove the top ``fraction`` of each class (``sanitize``).

    ``fit(X, y)`` estimates the subspace from the data it is given (the data-dependent defense); pass
    ``state=defense.fit(X_clean, y_clean)`` to ``sanitize`` for the oracle defense.
    """

    rank: int = 10
    center: bool = True
    num_classes: int | None = None

    def __post_init__(self):
        _check_rank(self.rank)

    def fit(self, X, y) -> SVDState:
        return svd_subspace(X, y, self.rank, center=self.center, num_classes=self.num_classes)

    def score(self, state: SVDState, X, y):
        return svd_scores(X, y, state)

    def _k(self, state):
        return state.centroids.shape[0]
