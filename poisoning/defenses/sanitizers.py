r"""Data-sanitization defenses: sphere (L2), slab, loss and k-NN outlier removal.

Protocol (Koh, Steinhardt & Liang 2022, "Stronger data poisoning attacks break data
sanitization defenses", Machine Learning, arXiv:1811.00741; Steinhardt, Koh & Liang 2017,
"Certified defenses for data poisoning attacks", NeurIPS):

1. *fit* the defense on the (possibly poisoned) training set :math:`D = \{(x_i, y_i)\}` -- class
   centroids :math:`\mu_c`, a reference set for k-NN, or model parameters for the loss defense;
2. *score* every training point; a high score means "looks like an outlier";
3. *remove* a fixed fraction :math:`f` of the highest-scoring points **per class**
   (:func:`remove_fraction_per_class`: :math:`\mathrm{round}(f\, n_c)` points of class :math:`c`);
4. retrain the model on the kept points (the caller's job).

Fitting on the poisoned data is the *data-dependent* defense; passing states built from clean
data (e.g. ``CentroidState(class_centroids(X_clean, y_clean, K))``) gives the *oracle* defense of
Steinhardt et al. 2017.

The attacker's view is the *feasible set* :math:`F` of points a defense keeps. Steinhardt et
al. 2017 (Fig. 1) put the per-class thresholds at the 70th percentile of clean scores
(:meth:`thresholds`, :func:`percentile_thresholds`) and let the attacker project onto

* the sphere  :math:`\{x : \|x - \mu_y\|_2 \le r_y\}` (:func:`project_sphere`),
* the slab    :math:`\{x : |\langle x - \mu_y, u_y\rangle| \le s_y\}` (:func:`project_slab`),
* or both     (:func:`project_sphere_slab`, closed form).

Labels are class indices ``0..K-1`` (the project's one convention, as returned by
:mod:`poisoning.datasets`). All score / projection functions are pure JAX,
``jit``-able when ``num_classes`` (and the k-NN settings) are static, and ``vmap``-able over
points. Input validation (shapes, label range, ``fraction``) raises :class:`ValueError` naming
the argument; checks that need concrete values (label range, empty classes) are skipped on
traced values, where out-of-range labels are the caller's responsibility.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Callable, Literal, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from poisoning.feasible import project_slab, project_sphere  # the regions' projections

__all__ = [
    "Sanitizer",
    "CentroidState",
    "KNNState",
    "LossState",
    "SphereRegion",
    "SlabRegion",
    "SphereDefense",
    "SlabDefense",
    "KNNDefense",
    "LossDefense",
    "class_centroids",
    "slab_directions",
    "sphere_scores",
    "slab_scores",
    "knn_scores",
    "loss_scores",
    "linear_hinge_losses",
    "remove_fraction_per_class",
    "percentile_thresholds",
]

Reduction = Literal["sum", "mean", "kth"]


# ---------------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------------


def _concrete(x) -> np.ndarray | None:
    """``np.asarray(x)`` for concrete values, ``None`` for tracers."""
    if isinstance(x, jax.core.Tracer):
        return None
    try:
        return np.asarray(x)
    except Exception:  # pragma: no cover - other abstract values
        return None


def _check_X(X, name: str = "X"):
    X = jnp.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{name} must have shape (n, d), got shape {X.shape}")
    return X


def _check_y(y, n: int | None, num_classes: int | None, name: str = "y") -> tuple[jax.Array, int]:
    """Validate integer labels; return them and the number of classes."""
    y = jnp.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must have shape (n,), got shape {y.shape}")
    if n is not None and y.shape[0] != n:
        raise ValueError(f"{name} has {y.shape[0]} labels but X has {n} rows")
    if not jnp.issubdtype(y.dtype, jnp.integer):
        yc = _concrete(y)
        if yc is not None and yc.size and np.all(yc == np.round(yc)):
            y = y.astype(jnp.int32)
        else:
            raise ValueError(f"{name} must hold integer class indices 0..K-1, got dtype {y.dtype}")
    if num_classes is not None:
        num_classes = int(num_classes)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    yc = _concrete(y)
    if yc is not None and yc.size:
        lo, hi = int(yc.min()), int(yc.max())
        if lo < 0:
            raise ValueError(
                f"{name} must hold class indices 0..K-1, found label {lo} "
                "(the project's labels are 0..K-1; binary labels are 0/1, not -1/+1)"
            )
        if num_classes is None:
            num_classes = hi + 1
        elif hi >= num_classes:
            raise ValueError(f"{name} has label {hi} out of range for num_classes={num_classes}")
    if num_classes is None:
        raise ValueError(f"num_classes must be given when {name} is traced (e.g. under jit)")
    return y, num_classes


def _check_fraction(fraction) -> None:
    fc = _concrete(fraction)
    if fc is None:
        return
    if fc.ndim != 0 or not np.isfinite(fc) or not (0.0 <= float(fc) < 1.0):
        raise ValueError(f"fraction must be a scalar in [0, 1), got {fraction!r}")


def _check_centroids(centroids, d: int | None = None, name: str = "centroids"):
    centroids = jnp.asarray(centroids)
    if centroids.ndim != 2:
        raise ValueError(f"{name} must have shape (K, d), got shape {centroids.shape}")
    if d is not None and centroids.shape[1] != d:
        raise ValueError(f"{name} has dimension {centroids.shape[1]} but X has dimension {d}")
    return centroids


def _per_class(value, num_classes: int, name: str):
    """Broadcast a scalar or a (K,) array of per-class values to shape (K,)."""
    value = jnp.asarray(value)
    if value.ndim == 0:
        return jnp.broadcast_to(value, (num_classes,))
    if value.shape != (num_classes,):
        raise ValueError(f"{name} must be a scalar or have shape ({num_classes},), got {value.shape}")
    return value


# ---------------------------------------------------------------------------------------------
# scores
# ---------------------------------------------------------------------------------------------



@partial(jax.jit, static_argnums=2)
def _centroid_kernel(X, y, K):
    sums = jax.ops.segment_sum(X, y, num_segments=K)
    counts = jax.ops.segment_sum(jnp.ones(X.shape[0], X.dtype), y, num_segments=K)
    return sums / counts[:, None]


@jax.jit
def _directions_kernel(centroids):
    K = centroids.shape[0]
    others = (centroids.sum(0, keepdims=True) - centroids) / (K - 1)
    v = centroids - others
    return v / jnp.linalg.norm(v, axis=1, keepdims=True)


@jax.jit
def _sphere_kernel(X, y, centroids):
    return jnp.linalg.norm(X - centroids[y], axis=-1)


@jax.jit
def _slab_kernel(X, y, centroids, directions):
    return jnp.abs(jnp.sum((X - centroids[y]) * directions[y], axis=-1))


@partial(jax.jit, static_argnums=3)
def _percentile_kernel(scores, y, percentile, K):
    masked = jnp.where(y[None, :] == jnp.arange(K)[:, None], scores[None, :], jnp.nan)
    return jnp.nanpercentile(masked, percentile, axis=1)


def class_centroids(X, y, num_classes: int | None = None):
    r"""Class means :math:`\mu_c = \frac{1}{n_c}\sum_{i: y_i = c} x_i`, shape ``(K, d)``.

    An empty class raises :class:`ValueError` on concrete labels (its centroid would be NaN);
    under ``jit`` it yields NaN.
    """
    X = _check_X(X)
    y, K = _check_y(y, X.shape[0], num_classes)
    yc = _concrete(y)
    if yc is not None:
        counts_np = np.bincount(yc, minlength=K)
        if np.any(counts_np == 0):
            raise ValueError(f"y has no examples of class(es) {np.flatnonzero(counts_np == 0).tolist()}")
    return _centroid_kernel(X, y, K)


def slab_directions(centroids):
    r"""Unit slab directions :math:`u_c`, shape ``(K, d)``.

    Binary case (Steinhardt et al. 2017): :math:`u = (\mu_1 - \mu_0)/\|\mu_1 - \mu_0\|`; we store
    :math:`u_1 = u` and :math:`u_0 = -u` (the slab score takes an absolute value, so the sign is
    irrelevant). Multiclass extension (ours, not in the papers): one-vs-rest,
    :math:`u_c \propto \mu_c - \frac{1}{K-1}\sum_{c' \ne c}\mu_{c'}`, which reduces to the binary
    definition for :math:`K = 2`. Requires :math:`K \ge 2`; coincident centroids give NaN.
    """
    centroids = _check_centroids(centroids)
    K = centroids.shape[0]
    if K < 2:
        raise ValueError(f"centroids must have at least 2 classes for the slab defense, got {K}")
    return _directions_kernel(centroids)


def sphere_scores(X, y, centroids):
    r"""Sphere (L2) defense score :math:`\|x_i - \mu_{y_i}\|_2` (Koh et al. 2022, "L2")."""
    X = _check_X(X)
    centroids = _check_centroids(centroids, X.shape[1])
    y, _ = _check_y(y, X.shape[0], centroids.shape[0])
    return _sphere_kernel(X, y, centroids)


def slab_scores(X, y, centroids, directions=None):
    r"""Slab defense score :math:`|\langle x_i - \mu_{y_i}, u_{y_i}\rangle|`.

    With the default directions (:func:`slab_directions`) and binary labels this is
    :math:`|\langle x - \mu_y, \mu_1 - \mu_0\rangle| / \|\mu_1 - \mu_0\|`, the distance of
    :math:`x` from its class centroid along the line joining the two centroids.
    """
    X = _check_X(X)
    centroids = _check_centroids(centroids, X.shape[1])
    directions = slab_directions(centroids) if directions is None else _check_centroids(
        directions, X.shape[1], "directions"
    )
    if directions.shape != centroids.shape:
        raise ValueError(f"directions must have shape {centroids.shape}, got {directions.shape}")
    y, _ = _check_y(y, X.shape[0], centroids.shape[0])
    return _slab_kernel(X, y, centroids, directions)


def _pairwise_dist(A, B):
    sq = jnp.sum(A * A, -1)[:, None] + jnp.sum(B * B, -1)[None, :] - 2.0 * A @ B.T
    return jnp.sqrt(jnp.maximum(sq, 0.0))



@partial(jax.jit, static_argnums=(4, 5, 6, 7, 8))
def _knn_kernel(X, y, X_ref, y_ref, m, reduction, within_class, exclude_self, block_size):
    def block(Xb, yb):
        D = _pairwise_dist(Xb, X_ref)
        if within_class:
            D = jnp.where(yb[:, None] == y_ref[None, :], D, jnp.inf)
        near = -jax.lax.top_k(-D, m)[0]  # ascending distances, shape (b, m)
        if exclude_self:
            near = near[:, 1:]
        if reduction == "sum":
            return near.sum(-1)
        if reduction == "mean":
            return near.mean(-1)
        return near[:, -1]

    if block_size is None or block_size >= X.shape[0]:
        return block(X, y)
    return jax.lax.map(lambda a: block(a[0][None], a[1][None])[0], (X, y), batch_size=block_size)


def knn_scores(
    X,
    y,
    X_ref,
    y_ref,
    k: int = 5,
    *,
    reduction: Reduction = "sum",
    within_class: bool = True,
    exclude_self: bool = False,
    num_classes: int | None = None,
    block_size: int | None = None,
):
    r"""k-NN defense score: distances from :math:`x_i` to its ``k`` nearest reference points.

    ``within_class=True`` (default, Koh et al. 2022) searches only reference points of the same
    class :math:`y_i`; ``False`` searches all of them. With :math:`d_{(1)} \le \dots \le d_{(k)}`
    the sorted distances, ``reduction`` gives :math:`\sum_j d_{(j)}` (``"sum"``, the Koh et al.
    release), :math:`\frac1k\sum_j d_{(j)}` (``"mean"``) or :math:`d_{(k)}` (``"kth"``).

    ``exclude_self=True`` is for scoring the reference set itself (``X is X_ref``): the ``k+1``
    nearest are found and the closest one (the point itself, distance 0) is dropped, as in a
    ``NearestNeighbors`` query with ``k+1`` neighbours. Exact duplicates therefore still count as
    neighbours at distance 0. If fewer than ``k`` candidates exist the score is ``inf``.

    Distances are brute force, :math:`O(n\,n_\mathrm{ref}\,d)`; ``block_size`` bounds memory by
    processing that many query rows at a time (``jax.lax.map``).
    """
    X = _check_X(X)
    X_ref = _check_X(X_ref, "X_ref")
    if X_ref.shape[1] != X.shape[1]:
        raise ValueError(f"X_ref has dimension {X_ref.shape[1]} but X has dimension {X.shape[1]}")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if reduction not in ("sum", "mean", "kth"):
        raise ValueError(f"reduction must be 'sum', 'mean' or 'kth', got {reduction!r}")
    y_ref, K = _check_y(y_ref, X_ref.shape[0], num_classes, "y_ref")
    y, _ = _check_y(y, X.shape[0], K)
    m = int(k) + (1 if exclude_self else 0)
    if m > X_ref.shape[0]:
        raise ValueError(f"k={k} (+1 with exclude_self) exceeds the {X_ref.shape[0]} reference points")
    if exclude_self and X.shape[0] != X_ref.shape[0]:
        raise ValueError("exclude_self=True requires X to be the reference set X_ref")

    return _knn_kernel(X, y, X_ref, y_ref, m, reduction, bool(within_class), bool(exclude_self),
                       None if block_size is None else int(block_size))


def loss_scores(loss_fn: Callable[..., Any], params, X, y):
    r"""Loss defense score :math:`\ell(\theta; x_i, y_i)`, with ``loss_fn(params, x, y)`` for one
    example (vmapped here). Koh et al. 2022 use the hinge loss of the SVM trained on the
    poisoned data, see :func:`linear_hinge_losses`."""
    X = _check_X(X)
    y = jnp.asarray(y)
    if y.shape[:1] != X.shape[:1]:
        raise ValueError(f"y has leading dimension {y.shape[:1]} but X has {X.shape[0]} rows")
    return jax.vmap(loss_fn, in_axes=(None, 0, 0))(params, X, y)


def linear_hinge_losses(w, b, X, y):
    r"""Hinge losses :math:`\max(0, 1 - s_i (\langle w, x_i\rangle + b))` of a linear classifier,
    :math:`s_i = 2 y_i - 1 \in \{\pm1\}` for class indices :math:`y_i \in \{0, 1\}`."""
    X = _check_X(X)
    y, _ = _check_y(y, X.shape[0], 2)
    s = 2.0 * y.astype(X.dtype) - 1.0
    return jnp.maximum(0.0, 1.0 - s * (X @ jnp.asarray(w) + b))


# ---------------------------------------------------------------------------------------------
# removal and thresholds
# ---------------------------------------------------------------------------------------------



@partial(jax.jit, static_argnums=3)
def _remove_kernel(scores, y, fraction, K):
    n = scores.shape[0]
    s = jnp.where(jnp.isnan(scores), jnp.inf, scores)
    idx = jnp.arange(n)
    # sort by class, then by descending score, then by ascending index (lexsort: last key primary)
    order = jnp.lexsort((idx, -s, y))
    counts = jnp.bincount(y, length=K)
    starts = jnp.cumsum(counts) - counts
    rank_sorted = jnp.arange(n) - starts[y[order]]
    rank = jnp.zeros(n, dtype=rank_sorted.dtype).at[order].set(rank_sorted)
    n_remove = jnp.round(fraction * counts).astype(rank.dtype)
    return rank >= n_remove[y]


def remove_fraction_per_class(scores, y, fraction, num_classes: int | None = None):
    r"""Keep mask removing the ``round(fraction * n_c)`` highest-scoring points of each class.

    ``round`` is half-to-even (``jnp.round``, like Python's ``round``). Ties are broken by index:
    among equal scores the *lower* index is removed first; NaN scores count as :math:`+\infty`
    (removed first). Returns a boolean array of shape ``(n,)``; ``True`` = kept.
    """
    scores = jnp.asarray(scores)
    if scores.ndim != 1:
        raise ValueError(f"scores must have shape (n,), got shape {scores.shape}")
    _check_fraction(fraction)
    y, K = _check_y(y, scores.shape[0], num_classes)
    return _remove_kernel(scores, y, jnp.asarray(fraction, dtype=jnp.result_type(float)), K)


def percentile_thresholds(scores, y, percentile, num_classes: int | None = None):
    r"""Per-class thresholds :math:`\tau_c` = ``percentile``-th percentile (linear interpolation,
    as :func:`numpy.percentile`) of the scores of class :math:`c`, shape ``(K,)``.

    Steinhardt et al. 2017 (Fig. 1) use the 70th percentile of the clean data. Empty classes
    give NaN.
    """
    scores = jnp.asarray(scores)
    if scores.ndim != 1:
        raise ValueError(f"scores must have shape (n,), got shape {scores.shape}")
    pc = _concrete(percentile)
    if pc is not None and (pc.ndim != 0 or not (0.0 <= float(pc) <= 100.0)):
        raise ValueError(f"percentile must be a scalar in [0, 100], got {percentile!r}")
    y, K = _check_y(y, scores.shape[0], num_classes)
    return _percentile_kernel(scores, y, jnp.asarray(percentile, dtype=jnp.result_type(float)), K)


# ---------------------------------------------------------------------------------------------
# states, regions and defense objects
# ---------------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CentroidState:
    """Fitted state of the sphere / slab defenses: class centroids ``(K, d)``."""

    centroids: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KNNState:
    """Fitted state of the k-NN defense: the reference set."""

    X_ref: jax.Array
    y_ref: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LossState:
    """Fitted state of the loss defense: the model parameters (any pytree)."""

    params: Any


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SphereRegion:
    r"""Feasible set :math:`\{(x, y): \|x - \mu_y\| \le r_y\}` kept by the sphere defense."""

    centroids: jax.Array
    radii: jax.Array

    def project(self, x, y):
        return project_sphere(x, y, self.centroids, self.radii)

    def contains(self, x, y, atol: float = 1e-9):
        return sphere_scores(jnp.atleast_2d(x), jnp.atleast_1d(y), self.centroids) <= self.radii[
            jnp.atleast_1d(y)
        ] + atol


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SlabRegion:
    r"""Feasible set :math:`\{(x, y): |\langle x - \mu_y, u_y\rangle| \le s_y\}` kept by the slab defense."""

    centroids: jax.Array
    directions: jax.Array
    radii: jax.Array

    def project(self, x, y):
        return project_slab(x, y, self.centroids, self.directions, self.radii)

    def contains(self, x, y, atol: float = 1e-9):
        yy = jnp.atleast_1d(y)
        return slab_scores(jnp.atleast_2d(x), yy, self.centroids, self.directions) <= self.radii[yy] + atol


@runtime_checkable
class Sanitizer(Protocol):
    """Common interface of the defenses in this module."""

    def fit(self, X, y): ...

    def score(self, state, X, y): ...

    def sanitize(self, X, y, fraction, *, state=None, scores=None): ...


class _SanitizerMixin:
    num_classes: int | None

    def score_train(self, state, X, y):
        """Scores of the training set the state was fitted on (k-NN drops the point itself)."""
        return self.score(state, X, y)

    def sanitize(self, X, y, fraction, *, state=None, scores=None):
        """Remove the top ``fraction`` of each class by score.

        Fits on ``(X, y)`` unless ``state`` is given (e.g. an oracle state from clean data) and
        scores the training set unless ``scores`` is given. Returns ``(keep_mask, scores)``.
        """
        _check_fraction(fraction)
        X = _check_X(X)
        y, K = _check_y(y, X.shape[0], self.num_classes)
        if scores is None:
            if state is None:
                state = self.fit(X, y)
            scores = self.score_train(state, X, y)
        else:
            scores = jnp.asarray(scores)
            if scores.shape != (X.shape[0],):
                raise ValueError(f"scores must have shape ({X.shape[0]},), got shape {scores.shape}")
        return remove_fraction_per_class(scores, y, fraction, K), scores

    def thresholds(self, state, X, y, percentile: float = 70.0):
        """Per-class ``percentile`` of the scores of ``(X, y)`` (usually clean data), shape ``(K,)``."""
        X = _check_X(X)
        y, K = _check_y(y, X.shape[0], self._k(state))
        return percentile_thresholds(self.score(state, X, y), y, percentile, K)

    def _k(self, state):
        return self.num_classes


@dataclasses.dataclass(frozen=True)
class SphereDefense(_SanitizerMixin):
    r"""L2 / sphere defense: score :math:`\|x - \mu_y\|_2` (:func:`sphere_scores`)."""

    num_classes: int | None = None

    def fit(self, X, y) -> CentroidState:
        return CentroidState(class_centroids(X, y, self.num_classes))

    def score(self, state: CentroidState, X, y):
        return sphere_scores(X, y, state.centroids)

    def feasible_region(self, state: CentroidState, threshold) -> SphereRegion:
        """Ball of radius ``threshold`` (scalar or per class) around each class centroid."""
        return SphereRegion(state.centroids, _per_class(threshold, state.centroids.shape[0], "threshold"))

    def _k(self, state):
        return state.centroids.shape[0]


@dataclasses.dataclass(frozen=True)
class SlabDefense(_SanitizerMixin):
    r"""Slab defense: score :math:`|\langle x - \mu_y, u_y\rangle|` (:func:`slab_scores`)."""

    num_classes: int | None = None

    def fit(self, X, y) -> CentroidState:
        return CentroidState(class_centroids(X, y, self.num_classes))

    def score(self, state: CentroidState, X, y):
        return slab_scores(X, y, state.centroids)

    def feasible_region(self, state: CentroidState, threshold) -> SlabRegion:
        """Slab of half-width ``threshold`` (scalar or per class) around each class centroid."""
        c = state.centroids
        return SlabRegion(c, slab_directions(c), _per_class(threshold, c.shape[0], "threshold"))

    def _k(self, state):
        return state.centroids.shape[0]


@dataclasses.dataclass(frozen=True)
class KNNDefense(_SanitizerMixin):
    r"""k-NN defense: (sum / mean / k-th) distance to the ``k`` nearest same-class points
    (:func:`knn_scores`). No closed-form feasible-set projection is provided."""

    k: int = 5
    reduction: Reduction = "sum"
    within_class: bool = True
    num_classes: int | None = None
    block_size: int | None = None

    def __post_init__(self):
        if not isinstance(self.k, (int, np.integer)) or self.k < 1:
            raise ValueError(f"k must be a positive int, got {self.k!r}")
        if self.reduction not in ("sum", "mean", "kth"):
            raise ValueError(f"reduction must be 'sum', 'mean' or 'kth', got {self.reduction!r}")

    def fit(self, X, y) -> KNNState:
        X = _check_X(X)
        y, K = _check_y(y, X.shape[0], self.num_classes)
        yc = _concrete(y)
        if yc is not None and self.within_class:
            counts = np.bincount(yc, minlength=K)
            small = [c for c in range(K) if 0 < counts[c] <= self.k]
            if small:
                raise ValueError(f"y: class(es) {small} have <= k={self.k} points; k-NN scores need k+1")
        return KNNState(X, y)

    def _kw(self, state):
        return dict(
            reduction=self.reduction,
            within_class=self.within_class,
            num_classes=self.num_classes,
            block_size=self.block_size,
        )

    def score(self, state: KNNState, X, y, *, exclude_self: bool = False):
        return knn_scores(X, y, state.X_ref, state.y_ref, self.k, exclude_self=exclude_self, **self._kw(state))

    def score_train(self, state, X, y):
        return self.score(state, X, y, exclude_self=True)


@dataclasses.dataclass(frozen=True)
class LossDefense(_SanitizerMixin):
    r"""Loss defense: score :math:`\ell(\theta; x, y)` of a model trained on the (poisoned) data.

    ``loss_fn(params, x, y)`` is the per-example loss; ``train_fn(X, y) -> params`` trains the
    model in :meth:`fit` (or pass ``params=`` to :meth:`fit`, or ``state=`` / ``scores=`` to
    :meth:`sanitize` with per-example losses computed by the caller).
    """

    loss_fn: Callable[..., Any]
    train_fn: Callable[..., Any] | None = None
    num_classes: int | None = None

    def fit(self, X, y, *, params=None) -> LossState:
        if params is None:
            if self.train_fn is None:
                raise ValueError("params must be given when LossDefense.train_fn is None")
            params = self.train_fn(X, y)
        return LossState(params)

    def score(self, state: LossState, X, y):
        return loss_scores(self.loss_fn, state.params, X, y)
