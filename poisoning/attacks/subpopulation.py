r"""Subpopulation poisoning (Jagielski, Severi, Pousette Harger, Oprea, CCS 2021).

The attacker targets one *subpopulation* of the data distribution and wants the victim to fail on it
while staying accurate elsewhere (so the attack is hard to notice from overall accuracy). A
subpopulation is chosen by

- :class:`FeatureMatch` — the points whose features take given values (e.g. Adult rows with
  ``race=Black`` and ``sex=Female``, one-hot columns; or a class × feature-bin on digits), optionally
  restricted to one class label;
- :class:`ClusterMatch` — the points nearest to one centre of a k-means clustering of the features
  (:func:`kmeans`, deterministic given its seed; the paper clusters a learned representation, here the
  raw or any supplied features).

The attack (:func:`subpopulation_label_flip`) is the paper's label-flipping attack: add ``budget``
poison points copied from the subpopulation's *training* points with flipped labels. The victim is
retrained on the union and evaluated by :func:`evaluate_subpopulation`: *target damage* is the
accuracy drop on the subpopulation's test points, *collateral* the accuracy drop on the rest of the
test set. :func:`run_subpopulation_attack` chains the three steps.

Labels are binary :math:`\pm 1`; the default victim is :func:`poisoning.attack.logistic_learner`
(a weighted fit through :func:`bilevel.minimize`).

Reference: M. Jagielski, G. Severi, N. Pousette Harger, A. Oprea, "Subpopulation data poisoning
attacks", ACM CCS 2021.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from poisoning.attack import Learner, logistic_learner

__all__ = [
    "kmeans",
    "KMeansResult",
    "FeatureMatch",
    "ClusterMatch",
    "adult_feature_match",
    "subpopulation_label_flip",
    "SubpopulationReport",
    "evaluate_subpopulation",
    "run_subpopulation_attack",
]


# ----------------------------------------------------------------------------------------------------
# k-means
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class KMeansResult:
    """``centers`` ``(k, d)``, ``labels`` ``(n,)`` (nearest centre of each input row), ``inertia``
    (sum of squared distances to the nearest centre) and ``n_iter`` (Lloyd iterations run)."""

    centers: np.ndarray
    labels: np.ndarray
    inertia: float
    n_iter: int

    def predict(self, X) -> np.ndarray:
        return _assign(np.asarray(X, np.float64), self.centers)[0]


def _assign(X, C):
    d2 = (X * X).sum(1)[:, None] - 2.0 * X @ C.T + (C * C).sum(1)[None, :]
    d2 = np.maximum(d2, 0.0)
    lab = np.argmin(d2, axis=1)
    return lab, d2[np.arange(X.shape[0]), lab]


def kmeans(X, k: int, seed: int = 0, *, n_iter: int = 100, n_init: int = 4, tol: float = 1e-10) -> KMeansResult:
    """k-means (Lloyd) with k-means++ seeding, in numpy; deterministic given ``seed``.

    Runs ``n_init`` seedings (from ``numpy.random.default_rng(seed)``) and keeps the lowest inertia.
    An empty cluster is re-seeded at the point farthest from its centre.
    """
    X = np.asarray(X, np.float64).reshape(len(X), -1)
    n = X.shape[0]
    if not 1 <= int(k) <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    k = int(k)
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(max(1, int(n_init))):
        # k-means++ seeding
        C = np.empty((k, X.shape[1]))
        C[0] = X[rng.integers(n)]
        d2 = ((X - C[0]) ** 2).sum(1)
        for j in range(1, k):
            tot = d2.sum()
            i = rng.choice(n, p=d2 / tot) if tot > 0 else rng.integers(n)
            C[j] = X[i]
            d2 = np.minimum(d2, ((X - C[j]) ** 2).sum(1))
        prev = np.inf
        it = 0
        for it in range(1, int(n_iter) + 1):
            lab, dist = _assign(X, C)
            for j in range(k):
                members = lab == j
                if members.any():
                    C[j] = X[members].mean(0)
                else:
                    far = int(np.argmax(dist))
                    C[j], dist[far] = X[far], 0.0
            inertia = float(_assign(X, C)[1].sum())
            if prev - inertia <= tol * max(1.0, prev):
                break
            prev = inertia
        lab, dist = _assign(X, C)
        res = KMeansResult(C.copy(), lab, float(dist.sum()), it)
        if best is None or res.inertia < best.inertia:
            best = res
    return best


# ----------------------------------------------------------------------------------------------------
# subpopulations
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FeatureMatch:
    """The points with ``X[:, columns[j]] == values[j]`` for every ``j`` (within ``atol``), and with
    label ``label`` when it is given. With one-hot encoded categorical features (Adult) a
    subpopulation such as ``race=Black ∧ sex=Female`` is ``columns=(c_black, c_female)``,
    ``values=(1, 1)``; ``bins`` instead of ``values`` gives half-open intervals ``[lo, hi)`` per
    column (a feature bin on continuous data, e.g. a digits pixel)."""

    columns: tuple
    values: tuple | None = None
    bins: tuple | None = None
    label: float | None = None
    atol: float = 1e-8

    def __post_init__(self):
        object.__setattr__(self, "columns", tuple(int(c) for c in np.atleast_1d(self.columns)))
        if (self.values is None) == (self.bins is None):
            raise ValueError("FeatureMatch needs exactly one of values= or bins=")
        spec = self.values if self.values is not None else self.bins
        spec = tuple(np.atleast_1d(self.values)) if self.values is not None else tuple(tuple(b) for b in spec)
        if len(spec) != len(self.columns):
            raise ValueError(f"{len(self.columns)} columns but {len(spec)} values/bins")
        object.__setattr__(self, "values" if self.values is not None else "bins", spec)

    def mask(self, X, y=None) -> np.ndarray:
        X = np.asarray(X)
        X = X.reshape(len(X), -1)
        m = np.ones(X.shape[0], bool)
        for j, c in enumerate(self.columns):
            if self.values is not None:
                m &= np.abs(X[:, c] - self.values[j]) <= self.atol
            else:
                lo, hi = self.bins[j]
                m &= (X[:, c] >= lo) & (X[:, c] < hi)
        if self.label is not None:
            if y is None:
                raise ValueError("this FeatureMatch is restricted to a label: pass y")
            m &= np.asarray(y) == self.label
        return m


@dataclasses.dataclass(frozen=True)
class ClusterMatch:
    """The points whose nearest k-means centre is ``target`` (clusters fitted once by :meth:`fit`).
    ``label`` optionally restricts to one class, as :class:`FeatureMatch`."""

    clustering: KMeansResult
    target: int
    label: float | None = None

    @classmethod
    def fit(cls, X, k: int, target: int | None = None, seed: int = 0, *, label=None, y=None,
            min_size: int = 1, **kmeans_kw) -> "ClusterMatch":
        """Cluster ``X`` into ``k``; ``target=None`` picks the largest cluster with at least
        ``min_size`` rows (counting only rows of class ``label`` when given, which needs ``y``)."""
        km = kmeans(X, k, seed, **kmeans_kw)
        if target is None:
            lab = km.labels if label is None else km.labels[np.asarray(y) == label]
            counts = np.bincount(lab, minlength=k)
            if counts.max() < min_size:
                raise ValueError(f"no cluster has {min_size} rows")
            target = int(np.argmax(counts))
        if not 0 <= int(target) < k:
            raise ValueError(f"target must be in [0, {k}), got {target}")
        return cls(km, int(target), label)

    def mask(self, X, y=None) -> np.ndarray:
        m = self.clustering.predict(np.asarray(X).reshape(len(X), -1)) == self.target
        if self.label is not None:
            if y is None:
                raise ValueError("this ClusterMatch is restricted to a label: pass y")
            m &= np.asarray(y) == self.label
        return m


def adult_feature_match(dataset, attributes: Mapping[str, str], label=None) -> FeatureMatch:
    """A :class:`FeatureMatch` on :func:`poisoning.data.load_adult` one-hot columns, e.g.
    ``{"race": "Black", "sex": "Female"}`` (names as in ``dataset.meta["feature_names"]``)."""
    names = list(dataset.meta["feature_names"])
    cols = []
    for attr, val in attributes.items():
        key = f"{attr}={val}"
        if key not in names:
            raise ValueError(f"unknown Adult feature {key!r}")
        cols.append(names.index(key))
    return FeatureMatch(tuple(cols), values=(1.0,) * len(cols), label=label)


# ----------------------------------------------------------------------------------------------------
# the attack and its evaluation
# ----------------------------------------------------------------------------------------------------
def subpopulation_label_flip(X_train, y_train, train_mask, budget: int, seed: int = 0):
    """Poison points for the subpopulation label-flip attack of Jagielski et al. (2021): ``budget``
    copies of the subpopulation's training points (``train_mask``), cycling through them in a
    seeded random order (so every point is used before any is repeated), with labels negated
    (binary :math:`\\pm1`). Returns ``(X_poison, y_poison)``."""
    X_train, y_train = np.asarray(X_train), np.asarray(y_train)
    if not np.all(np.isin(y_train, (-1, 1))):
        raise ValueError("subpopulation_label_flip needs binary labels in {-1, +1}")
    budget = int(budget)
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    idx = np.flatnonzero(np.asarray(train_mask, bool))
    if idx.size == 0:
        raise ValueError("the subpopulation has no training points")
    rng = np.random.default_rng(seed)
    reps = -(-budget // idx.size)
    order = np.concatenate([rng.permutation(idx) for _ in range(max(reps, 1))])[:budget]
    return X_train[order].copy(), -y_train[order]


@dataclasses.dataclass(frozen=True)
class SubpopulationReport:
    """Accuracies of the clean and the poisoned victim on the target subpopulation's test points and
    on the rest; ``target_damage`` / ``collateral`` are the accuracy drops (clean - poisoned)."""

    clean_target_acc: float
    poisoned_target_acc: float
    clean_rest_acc: float
    poisoned_rest_acc: float
    target_damage: float
    collateral: float
    n_target_test: int
    n_rest_test: int
    n_poison: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _acc(learner, params, X, y):
    if len(y) == 0:
        return float("nan")
    return float(np.mean(np.asarray(learner.predict(params, jnp.asarray(X))) == np.asarray(y)))


@functools.partial(jax.jit, static_argnums=3)
def _weighted_fit(X, y, weights, learner):
    return learner.fit(X, y, weights)


def evaluate_subpopulation(learner: Learner, X_train, y_train, X_poison, y_poison, X_test, y_test,
                           test_mask) -> SubpopulationReport:
    """Train ``learner`` on the clean set and on clean + poison; report target damage and collateral.

    Both fits use the same arrays (the poison rows get weight 0 in the clean fit: absent), so one
    compiled ``fit`` serves both."""
    dtype = jnp.result_type(float)
    Xtr, ytr = jnp.asarray(X_train, dtype), jnp.asarray(y_train, dtype)
    Xp = jnp.asarray(X_poison, dtype).reshape(-1, Xtr.shape[1])
    yp = jnp.asarray(y_poison, dtype).reshape(-1)
    n, m = Xtr.shape[0], Xp.shape[0]
    X_all, y_all = jnp.concatenate([Xtr, Xp]), jnp.concatenate([ytr, yp])
    ones = jnp.ones((n + m,), dtype)
    clean = _weighted_fit(X_all, y_all, ones.at[n:].set(0.0), learner)
    poisoned = _weighted_fit(X_all, y_all, ones, learner)
    X_test, y_test = np.asarray(X_test), np.asarray(y_test)
    tm = np.asarray(test_mask, bool)
    a = [_acc(learner, p, X_test[m_], y_test[m_]) for p in (clean, poisoned) for m_ in (tm, ~tm)]
    return SubpopulationReport(a[0], a[2], a[1], a[3], a[0] - a[2], a[1] - a[3], int(tm.sum()),
                               int((~tm).sum()), int(m))


def run_subpopulation_attack(subpopulation, X_train, y_train, X_test, y_test, budget: int, *,
                             learner: Learner | None = None, seed: int = 0):
    """Select the subpopulation (``subpopulation.mask``) in train and test, build the label-flip
    poison and evaluate it. Returns ``(report, X_poison, y_poison)``."""
    learner = logistic_learner(1e-2) if learner is None else learner
    tr = subpopulation.mask(X_train, y_train)
    te = subpopulation.mask(X_test, y_test)
    Xp, yp = subpopulation_label_flip(X_train, y_train, tr, budget, seed)
    return evaluate_subpopulation(learner, X_train, y_train, Xp, yp, X_test, y_test, te), Xp, yp
