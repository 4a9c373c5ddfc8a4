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

A stronger variant (:func:`subpopulation_influence_flip`) keeps the candidates — the subpopulation's
training points with flipped labels — but chooses *how many copies of each* greedily by their
influence on the attacker's objective, the victim's mean loss on the subpopulation's (true-labelled)
training points :math:`J(\theta) = \sum_i t_i \ell(\theta; x_i, y_i) / \sum_i t_i`
(:func:`subpopulation_loss`). As composed here: the poison is :class:`~poisoning.attack.PoisonWeights`
(the leader = copy counts :math:`c_j` of the flipped candidates, i.e. example weights of a weighted
ERM), the objective :func:`subpopulation_loss`, the step rule
:class:`~bilevel.stackelberg.Greedy` (round :math:`r` gives its share of the budget to the candidates
of largest :math:`\partial J(\theta^*(c)) / \partial c_j`, the influence of one more copy of
candidate :math:`j`, Koh & Liang 2017, computed by implicit differentiation through the fit). This
follows the paper's point that label flipping can be strengthened with influence functions (the paper
optimizes the poison's continuous features with influence / gradients; here only the choice of which
subpopulation points to flip, and how often, is optimized, so the poison stays copies of real
points).

Subpopulations are enumerated by :func:`enumerate_feature_matches` (every value, and every pair of
values of two different attributes, with at least a minimum number of training and test points, as
the paper's FeatureMatch over categorical attributes) and :func:`pca_projection` + :func:`kmeans`
(ClusterMatch on PCA-reduced features, as the paper's ``--pca_dim`` / ``--n_clusters``).

Labels are binary 0/1; the default victim is :func:`poisoning.victims.logistic` (a weighted fit
through :func:`bilevel.minimize`).

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

from bilevel.stackelberg import Greedy
from poisoning import victims
from poisoning.attack import PoisoningAttack, PoisonWeights, run
from poisoning.victims import Victim, check_features, check_labels

__all__ = [
    "kmeans",
    "KMeansResult",
    "FeatureMatch",
    "ClusterMatch",
    "adult_feature_match",
    "subpopulation_label_flip",
    "SubpopulationReport",
    "evaluate_subpopulation",
    "fit_with_poison",
    "run_subpopulation_attack",
    "pca_projection",
    "adult_attributes",
    "quantile_attributes",
    "enumerate_feature_matches",
    "label_flip_counts",
    "subpopulation_loss",
    "influence_flip_attack",
    "subpopulation_influence_flip",
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
    label: int | None = None
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
    label: int | None = None

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
    """A :class:`FeatureMatch` on :func:`poisoning.datasets.load_adult` one-hot columns, e.g.
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
    seeded random order (so every point is used before any is repeated), with labels flipped
    (binary 0/1: ``1 - y``). Returns ``(X_poison, y_poison)``."""
    X_train, y_train = np.asarray(X_train), _binary_labels(y_train)
    budget = _check_budget(budget)
    order = _flip_order(train_mask, budget, seed)
    return X_train[order].copy(), 1 - y_train[order]


def _binary_labels(y, name="y_train"):
    return np.asarray(check_labels(np.asarray(y), "binary", 2, name))


def _check_budget(budget):
    if isinstance(budget, bool) or int(budget) != budget or int(budget) < 0:
        raise ValueError(f"argument 'budget' must be an integer >= 0, got {budget!r}")
    return int(budget)


def _flip_order(train_mask, budget, seed):
    idx = np.flatnonzero(np.asarray(train_mask, bool))
    if idx.size == 0:
        raise ValueError("train_mask: the subpopulation has no training points")
    rng = np.random.default_rng(seed)
    reps = -(-budget // idx.size)
    return np.concatenate([rng.permutation(idx) for _ in range(max(reps, 1))])[:budget]


def label_flip_counts(train_mask, budget: int, seed: int = 0):
    """The poison of :func:`subpopulation_label_flip` as copy counts: ``(idx, counts)`` with ``idx``
    the subpopulation's training rows (sorted) and ``counts[j]`` the copies of row ``idx[j]`` (with
    flipped label) in the poison; ``counts.sum() == budget``. Training with example weights
    ``counts`` on the flipped rows is the same weighted ERM as training on the copies."""
    budget = _check_budget(budget)
    idx = np.flatnonzero(np.asarray(train_mask, bool))
    order = _flip_order(train_mask, budget, seed)
    return idx, np.bincount(np.searchsorted(idx, order), minlength=idx.size).astype(np.int64)


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


def _acc(victim, params, X, y):
    if len(y) == 0:
        return float("nan")
    return float(np.mean(np.asarray(victim.predict(params, jnp.asarray(X))) == np.asarray(y)))


@functools.partial(jax.jit, static_argnums=0)
def _weighted_fit(victim, X, y, weights):
    return victim.fit_fn(X, victim.encode(y, X.dtype), weights, None)


def _poison_arrays(victim, X_train, y_train, X_poison, y_poison):
    dtype = jnp.result_type(float)
    Xtr = jnp.asarray(check_features(np.asarray(X_train), "X_train"), dtype)
    Xp = np.asarray(X_poison).reshape(-1, Xtr.shape[1])
    Xp = jnp.asarray(check_features(Xp, "X_poison"), dtype)
    ytr = victim.check_labels(np.asarray(y_train), "y_train", Xtr.shape[0])
    yp = victim.check_labels(np.asarray(y_poison).reshape(-1), "y_poison", Xp.shape[0])
    return Xtr, ytr, Xp, yp


def fit_with_poison(victim: Victim, X_train, y_train, X_poison, y_poison, poison_weights=None):
    """``victim`` fitted on the training rows (weight 1) and the poison rows with example weights
    ``poison_weights`` (copies; default 1, 0 = absent). One compiled fit per victim and array shape."""
    Xtr, ytr, Xp, yp = _poison_arrays(victim, X_train, y_train, X_poison, y_poison)
    dtype = Xtr.dtype
    pw = jnp.ones((Xp.shape[0],), dtype) if poison_weights is None else jnp.asarray(poison_weights, dtype).reshape(-1)
    weights = jnp.concatenate([jnp.ones((Xtr.shape[0],), dtype), pw])
    return _weighted_fit(victim, jnp.concatenate([Xtr, Xp]), jnp.concatenate([ytr, yp]), weights)


def evaluate_subpopulation(victim: Victim, X_train, y_train, X_poison, y_poison, X_test, y_test,
                           test_mask, *, poison_weights=None, clean_params=None) -> SubpopulationReport:
    """Train ``victim`` on the clean set and on clean + poison; report target damage and collateral.

    Both fits use the same arrays (the poison rows get weight 0 in the clean fit: absent), so one
    compiled ``fit`` serves both. ``poison_weights`` (non-negative, one per poison row; default 1)
    counts copies: a row of weight ``c`` is ``c`` identical poison points (so a fixed-size padded
    poison array with zero-weight rows compiles once for many budgets); ``n_poison`` is their sum.
    ``clean_params`` skips the clean fit (reuse it across subpopulations)."""
    Xtr, ytr, Xp, yp = _poison_arrays(victim, X_train, y_train, X_poison, y_poison)
    m = Xp.shape[0]
    if poison_weights is None:
        pw = np.ones(m)
    else:
        pw = np.asarray(poison_weights, np.float64).reshape(-1)
        if pw.shape != (m,) or np.any(pw < 0) or not np.all(np.isfinite(pw)):
            raise ValueError(f"argument 'poison_weights' must be {m} finite non-negative numbers, got shape {pw.shape}")
    clean = fit_with_poison(victim, Xtr, ytr, Xp, yp, np.zeros(m)) if clean_params is None else clean_params
    poisoned = fit_with_poison(victim, Xtr, ytr, Xp, yp, pw)
    X_test, y_test = np.asarray(X_test), np.asarray(y_test)
    tm = np.asarray(test_mask, bool)
    a = [_acc(victim, p, X_test[m_], y_test[m_]) for p in (clean, poisoned) for m_ in (tm, ~tm)]
    return SubpopulationReport(a[0], a[2], a[1], a[3], a[0] - a[2], a[1] - a[3], int(tm.sum()),
                               int((~tm).sum()), int(round(float(pw.sum()))))


def run_subpopulation_attack(subpopulation, X_train, y_train, X_test, y_test, budget: int, *,
                             victim: Victim | None = None, seed: int = 0):
    """Select the subpopulation (``subpopulation.mask``) in train and test, build the label-flip
    poison and evaluate it (default victim :func:`poisoning.victims.logistic` with ``reg = 1e-2``).
    Returns ``(report, X_poison, y_poison)``."""
    victim = victims.logistic(1e-2) if victim is None else victim
    tr = subpopulation.mask(X_train, y_train)
    te = subpopulation.mask(X_test, y_test)
    Xp, yp = subpopulation_label_flip(X_train, y_train, tr, budget, seed)
    return evaluate_subpopulation(victim, X_train, y_train, Xp, yp, X_test, y_test, te), Xp, yp


# ----------------------------------------------------------------------------------------------------
# enumerating subpopulations
# ----------------------------------------------------------------------------------------------------
def pca_projection(X_train, dim: int):
    """Principal components of ``X_train``: ``(mean, V)`` with ``V`` ``(d, dim)`` the top right singular
    vectors of the centred data, so the reduced features are ``(X - mean) @ V`` (the paper clusters
    PCA-reduced representations for ClusterMatch)."""
    X = np.asarray(X_train, np.float64).reshape(len(X_train), -1)
    if not 1 <= int(dim) <= min(X.shape):
        raise ValueError(f"dim must be in [1, {min(X.shape)}], got {dim}")
    mean = X.mean(0)
    _, _, Vt = np.linalg.svd(X - mean, full_matrices=False)
    return mean, Vt[: int(dim)].T.copy()


def adult_attributes(dataset, exclude: Sequence[str] = ()) -> dict:
    """The categorical attributes of :func:`poisoning.datasets.load_adult` as FeatureMatch atoms
    ``{attribute: [(value, column, 1.0), ...]}`` (one-hot columns), for
    :func:`enumerate_feature_matches`; numeric attributes (one column each) are skipped."""
    names = list(dataset.meta["feature_names"])
    out = {}
    for attr, (lo, hi) in dataset.meta["attribute_columns"].items():
        if attr in exclude or hi - lo == 1 and names[lo] == attr:
            continue
        out[attr] = [(names[c].split("=", 1)[1], c, 1.0) for c in range(lo, hi)]
    return out


def quantile_attributes(X_train, columns: Sequence[int], n_bins: int = 3, names: Sequence[str] | None = None) -> dict:
    """Continuous columns as categorical attributes: ``n_bins`` training-quantile bins each
    (``{name: [("q0", column, (lo, hi)), ...]}``, outer bins open to ``-inf`` / ``+inf``), for
    :func:`enumerate_feature_matches` on data without categorical features."""
    X = np.asarray(X_train, np.float64).reshape(len(X_train), -1)
    if int(n_bins) < 2:
        raise ValueError(f"n_bins must be >= 2, got {n_bins}")
    out = {}
    for k, c in enumerate(columns):
        if not 0 <= int(c) < X.shape[1]:
            raise ValueError(f"columns: {c} out of range for {X.shape[1]} features")
        edges = np.quantile(X[:, c], np.linspace(0, 1, int(n_bins) + 1)[1:-1])
        edges = np.concatenate([[-np.inf], np.unique(edges), [np.inf]])
        name = str(names[k]) if names is not None else f"x{int(c)}"
        out[name] = [(f"q{j}", int(c), (float(edges[j]), float(edges[j + 1]))) for j in range(len(edges) - 1)]
    return out


def _atom_mask(X, column, spec):
    if isinstance(spec, tuple):
        return (X[:, column] >= spec[0]) & (X[:, column] < spec[1])
    return np.abs(X[:, column] - spec) <= 1e-8


def enumerate_feature_matches(attributes: Mapping[str, Sequence[tuple]], X_train, X_test, *, max_order: int = 2,
                              min_train: int = 1, min_test: int = 1, max_train: int | None = None) -> list:
    """All FeatureMatch subpopulations defined by one value of an attribute, or (``max_order=2``) by
    values of two different attributes, that have at least ``min_train`` training and ``min_test``
    test points (and at most ``max_train`` training points when given).

    ``attributes`` maps an attribute name to its atoms ``(value_name, column, spec)``: ``spec`` a
    number (``X[:, column] == spec``, one-hot) or a ``(lo, hi)`` bin (see :func:`adult_attributes`,
    :func:`quantile_attributes`). Returns a list of dicts ``{"name", "subpopulation", "n_train",
    "n_test"}`` in enumeration order (single atoms first)."""
    if max_order not in (1, 2):
        raise ValueError(f"max_order must be 1 or 2, got {max_order}")
    X_train = np.asarray(X_train).reshape(len(X_train), -1)
    X_test = np.asarray(X_test).reshape(len(X_test), -1)
    atoms = []
    for attr, values in attributes.items():
        for value, column, spec in values:
            spec = tuple(float(v) for v in spec) if isinstance(spec, (tuple, list)) else float(spec)
            atoms.append((attr, f"{attr}={value}", int(column), spec,
                          _atom_mask(X_train, int(column), spec), _atom_mask(X_test, int(column), spec)))
    kinds = {isinstance(a[3], tuple) for a in atoms}
    if len(kinds) > 1:
        raise ValueError("attributes: mix of values and bins; use one kind")

    def make(parts):
        cols = tuple(p[2] for p in parts)
        specs = tuple(p[3] for p in parts)
        return FeatureMatch(cols, bins=specs) if isinstance(specs[0], tuple) else FeatureMatch(cols, values=specs)

    out = []

    def consider(parts, mtr, mte):
        ntr, nte = int(mtr.sum()), int(mte.sum())
        if ntr >= min_train and nte >= min_test and (max_train is None or ntr <= max_train):
            out.append({"name": " & ".join(p[1] for p in parts), "subpopulation": make(parts),
                        "n_train": ntr, "n_test": nte})

    for a in atoms:
        consider((a,), a[4], a[5])
    if max_order == 2:
        for i, a in enumerate(atoms):
            for b in atoms[i + 1:]:
                if a[0] != b[0]:
                    consider((a, b), a[4] & b[4], a[5] & b[5])
    return out


# ----------------------------------------------------------------------------------------------------
# the influence-guided label flip
# ----------------------------------------------------------------------------------------------------
def subpopulation_loss(victim: Victim, params, X, y, target_weights):
    r"""The attacker's objective :math:`J(\theta) = \sum_i t_i\, \ell(\theta; x_i, y_i) / \sum_i t_i`: the
    victim's mean loss over the rows of ``(X, y)`` weighted by ``target_weights`` :math:`t` (e.g. the
    training set and the subpopulation's indicator, so that subpopulations of any size share one
    compiled loop)."""
    t = jnp.asarray(target_weights)
    return jnp.sum(t * victim.loss(params, X, y)) / jnp.sum(t)


@functools.lru_cache(maxsize=64)
def influence_flip_attack(victim: Victim, rounds: int) -> PoisoningAttack:
    """The influence-guided flip as a :class:`~poisoning.attack.PoisoningAttack` on
    :class:`~poisoning.attack.PoisonWeights`: objective :func:`subpopulation_loss` (target
    ``(X_train, y_train, t)``), step rule ``Greedy(rounds=rounds)`` whose schedule — round ``r`` adds one
    copy to the ``shares[r]`` candidates of largest influence among the first ``cycle``; a share beyond
    ``cycle`` gives every candidate ``share // cycle`` copies first — is given at run time
    (``step_state=attack.step.schedule(shares, cycle)``, so every budget and subpopulation share one
    compiled loop), no gain tolerance, the last iterate returned. Memoized per victim and rounds."""
    return PoisoningAttack(victim, subpopulation_loss, None, step=Greedy(rounds=int(rounds)), gain_tol=None,
                           tol=None, return_best=False)


def subpopulation_influence_flip(victim: Victim, X_train, y_train, train_mask, budget: int, *, rounds: int = 4,
                                 pad_to: int | None = None, return_history: bool = False):
    r"""Influence-guided subpopulation label flip: like :func:`subpopulation_label_flip` the poison is
    copies of the subpopulation's training points with flipped labels, but the copies per point are
    chosen greedily to maximize the victim's loss on the subpopulation (:func:`influence_flip_attack`
    run by :func:`poisoning.attack.run`).

    The budget is split into ``rounds`` near-equal shares. In each round the victim is refit on
    train + current poison (copies as example weights) and the hypergradient gives
    :math:`\partial J/\partial c_j`, the influence of one more flipped copy of point :math:`j` on the
    subpopulation's mean training loss :math:`J`; the share ``b`` goes to the ``b`` candidates of
    largest influence (one copy each; ``b`` beyond the subpopulation size gives every point
    ``b // size`` copies and the top ``b % size`` one more). ``rounds=1`` is the one-shot influence
    ranking. ``pad_to`` (>= subpopulation size) pads the candidate array with zero-weight rows so
    subpopulations of different sizes share one array shape.

    Returns ``(idx, counts)`` as :func:`label_flip_counts` (``counts.sum() == budget``), plus the
    objective before each round and after the last one (``return_history``)."""
    X_train = np.asarray(X_train, np.float64).reshape(len(X_train), -1)
    y_train = _binary_labels(y_train)
    budget, rounds = _check_budget(budget), int(rounds)
    if rounds < 1:
        raise ValueError(f"argument 'rounds' must be >= 1, got {rounds}")
    mask = np.asarray(train_mask, bool)
    if mask.shape != (X_train.shape[0],):
        raise ValueError(f"argument 'train_mask' must have shape ({X_train.shape[0]},), got {mask.shape}")
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        raise ValueError("argument 'train_mask': the subpopulation has no training points")
    P = idx.size if pad_to is None else int(pad_to)
    if P < idx.size:
        raise ValueError(f"argument 'pad_to' must be >= the subpopulation size {idx.size}, got {pad_to}")
    Xc = np.zeros((P, X_train.shape[1]))
    Xc[: idx.size] = X_train[idx]
    yc = np.ones(P, np.int32)
    yc[: idx.size] = 1 - y_train[idx]
    shares = np.diff(np.round(np.linspace(0, budget, min(rounds, max(budget, 1)) + 1))).astype(int)
    attack = influence_flip_attack(victim, len(shares))
    res = run(attack, X_train, y_train, PoisonWeights(Xc, yc, np.zeros(P)), (X_train, y_train, mask.astype(float)),
              steps=len(shares) + 1, step_state=attack.step.schedule(shares, idx.size))
    counts = np.rint(np.asarray(res.poison.weights)[: idx.size]).astype(np.int64)
    if return_history:
        return idx, counts, [float(v) for v in res.history[0]]
    return idx, counts
