r"""Defense-aware (adaptive) poisoning: one door, an attack + a sanitizer -> an attack whose poison survives it.

The sanitizers of :mod:`poisoning.defenses` (:data:`poisoning.defenses.evaluate.DEFENSES`) remove the
training points whose score exceeds a per-class cut-off. An attacker who knows the defense keeps its points
where the score stays below the attacker's estimate of that cut-off, the ``percentile``-th percentile of the
*clean* scores (times ``shrink``, a margin for the drift of a data-dependent defense): Steinhardt, Koh & Liang
(2017) and Koh, Steinhardt & Liang (2022, Sec. 3) put the defense's feasible region into the attacker's
feasible set. :func:`adaptive_attack` does that for any attack of the driver (:mod:`poisoning.attack`):

- a poison of **new points** (:class:`~poisoning.attack.PoisonPoints`: Biggio, Muñoz-González, Koh's
  influence and KKT attacks): the attack's feasible set becomes the defense's region
  (:func:`defense_region`), projected at every step by the driver; the start is projected into it;
- a poison of **candidate copies** (:class:`~poisoning.attack.PoisonWeights`: label flips added as
  copies, the subpopulation attack): the candidates are restricted to those the defense, fitted on the
  clean data, scores below the cut-off (:func:`survivors`); the attack itself is unchanged.

The regions, per defense (``REGION_OF``):

- ``sphere``, ``slab``: :class:`~poisoning.defenses.regions.SanitizerRegion`, sphere :math:`\cap` slab
  :math:`\cap` box around the data-dependent (poisoned) centroids (the machinery of Koh et al.'s
  sanitizer-aware influence attack, :mod:`poisoning.attacks.koh2022`);
- ``loss``, ``sever``, ``roni``: the same with the loss-defense halfspace of the linear model retrained at
  the current iterate, :math:`\ell_{hinge}(\theta; x_j, y_j) \le \tau_{y_j}` (iterates that break it under
  their own model are never returned: Koh et al.'s ``select``). SEVER filters by the top singular
  direction of the per-example gradients and a point of small smoothed-hinge loss has a gradient near
  zero; RONI rejects points of negative impact, which a point the model already fits hardly has: neither
  has a region of its own here, the loss region stands in for both (a heuristic, documented as such);
- ``svd``: :class:`SVDRegion`, :math:`\|(I - V_k V_k^\top)(x - \mu_y)\| \le s_y` (the residual outside the
  top-``rank`` subspace of the clean class-centred data, Koh et al.'s SVD defense) :math:`\cap` box;
- ``knn``, ``label_sanitization``: :class:`AnchorRegion`, a ball around a clean *anchor* of the point's
  class. With the k-NN defense's score :math:`S(x) = \sum_{j \le k} \|x - a_{(j)}\|` (sum of the distances to
  the ``k`` nearest same-class points), a point within :math:`r` of an anchor :math:`a` has
  :math:`S(x) \le \sum_j (\|a - a_{(j)}\| + r) = S(a) + k r` (triangle inequality), so
  :math:`r = (\tau - S(a)) / k` keeps :math:`S(x) \le \tau`; anchors are the clean points of the class
  whose own score is below :math:`\tau` and whose ``k`` neighbours all share its label (so the k-NN label
  sanitizer of Paudice et al. 2018, which votes among neighbours, sees a label-consistent neighbourhood),
  the nearest such to each starting point.

The region alone often costs the attack its strength (the loss region above all), and a naive poison with
enough copies per location already passes the neighbour defenses. The defense in the loop
(:mod:`poisoning.attacks.defense_loop`, re-exported here) goes further: :class:`DefenseSimulation` runs the
sanitizer on clean + poison as the attacker can, :func:`defense_in_the_loop` ascends against the victim trained
on its survivors, :func:`concentrate` puts >= :func:`copies_to_survive` copies on each location (``k + 1``
for k-NN, ``label_k // 2 + 2`` for label sanitization; ``adaptive_attack(..., concentrate_copies=True)``), and
:func:`select_poison` keeps the candidate (naive poison included) of the highest simulated defended error on
the attacker's validation set (:func:`confirm_choice` re-scores it on fresh draws of a random defense).
``experiments.defense_matrix`` composes them.

Every region contains its class centroid (or anchor) and is convex; the projection ends with a radial pull
toward that centre, so the returned points lie in the region exactly (:meth:`FeasibleSet.contains`).

References: J. Steinhardt, P. W. Koh, P. Liang, *Certified defenses for data poisoning attacks*, NeurIPS 2017;
P. W. Koh, J. Steinhardt, P. Liang, *Stronger data poisoning attacks break data sanitization defenses*,
Machine Learning 111, 2022; A. Paudice, L. Muñoz-González, E. C. Lupu, *Label sanitization against label
flipping poisoning attacks*, 2018; I. Diakonikolas et al., *Sever*, ICML 2019; B. Nelson et al., LEET 2008
(RONI).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from poisoning.attack import PoisoningAttack, PoisonPoints, PoisonWeights
from poisoning.attacks.defense_loop import (
    Confirmation,
    DefenseSimulation,
    LoopResult,
    SurvivorPoison,
    concentrate,
    confirm_choice,
    copies_to_survive,
    defense_in_the_loop,
    select_poison,
)
from poisoning.defenses.evaluate import fit_victim, hinge_score
from poisoning.defenses.label_sanitization import KNNLabelSanitizer
from poisoning.defenses.regions import SanitizerRegion
from poisoning.defenses.sanitizers import (
    KNNDefense,
    SlabDefense,
    SphereDefense,
    knn_scores,
    percentile_thresholds,
)
from poisoning.defenses.svd import SVDDefense
from poisoning.feasible import Box, FeasibleSet

__all__ = ["REGION_OF", "SVDRegion", "AnchorRegion", "defense_region", "survival_margins", "survivors",
           "adaptive_attack", "DefenseSimulation", "LoopResult", "SurvivorPoison", "concentrate", "copies_to_survive",
           "Confirmation", "confirm_choice", "defense_in_the_loop", "select_poison"]

# the region that makes a poison point survive each sanitizer (module docstring)
REGION_OF = {"sphere": "sphere_slab", "slab": "sphere_slab", "loss": "loss", "sever": "loss", "roni": "loss",
             "svd": "svd", "knn": "neighbours", "label_sanitization": "neighbours"}


def _check_defense(defense):
    if defense not in REGION_OF:
        raise ValueError(f"argument 'defense': unknown defense {defense!r}; choose from {tuple(REGION_OF)}")


def _box_of(attack: PoisoningAttack | None, box):
    """The attack's own box (a scalar :class:`~poisoning.feasible.Box`), else ``box``."""
    f = None if attack is None else attack.feasible
    if isinstance(f, Box) and np.ndim(f.lo) == 0 and np.ndim(f.hi) == 0:
        return float(f.lo), float(f.hi)
    return None if box is None else (float(box[0]), float(box[1]))


def _pull(x, center, excess_ratio):
    """``center + lam (x - center)`` with ``lam = min(1, 1 / excess_ratio)`` per row (``excess_ratio`` =
    the constraint's value over its bound)."""
    lam = jnp.minimum(1.0, 1.0 / jnp.maximum(excess_ratio, 1e-30))
    return center + lam[:, None] * (x - center)


# ------------------------------------------------------------------------------------------------
# the SVD defense's region
# ------------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("iters",))
def _project_svd(x, labels, centroids, components, radii, lo, hi, iters=10):
    mu = centroids[labels]
    r = radii[labels]

    def residual(v):
        z = v - mu
        return z - (z @ components.T) @ components

    def one(_, v):
        res = residual(v)
        nr = jnp.linalg.norm(res, axis=1)
        v = v - (1.0 - jnp.minimum(1.0, r / jnp.maximum(nr, 1e-30)))[:, None] * res   # onto the cylinder
        return jnp.clip(v, lo, hi)                                                       # onto the box

    x = jax.lax.fori_loop(0, iters, one, jnp.clip(x, lo, hi))
    nr = jnp.linalg.norm(residual(x), axis=1)
    return _pull(x, mu, nr / jnp.maximum(r, 1e-30))     # exact: the residual scales with the pull, mu is in the box


@dataclasses.dataclass(frozen=True, eq=False)
class SVDRegion(FeasibleSet):
    r"""Rows (class ``labels[j]``) with :math:`\|(I - V^\top V)(x - \mu_y)\|_2 \le s_y` inside ``box``: the
    points the SVD sanitizer (:class:`~poisoning.defenses.svd.SVDDefense`) with centroids ``centroids``
    ``(K, d)``, components ``(rank, d)`` (orthonormal rows) and per-class cut-offs ``radii`` ``(K,)`` keeps.
    :meth:`project`: ``iters`` alternating projections onto the cylinder and the box, then a radial pull
    toward :math:`\mu_y` (exactly feasible when :math:`\mu_y` is in the box)."""

    labels: Any
    centroids: Any
    components: Any
    radii: Any
    box: tuple | None = (0.0, 1.0)
    iters: int = 10

    def _bounds(self, dtype):
        lo, hi = (-jnp.inf, jnp.inf) if self.box is None else self.box
        return jnp.asarray(lo, dtype), jnp.asarray(hi, dtype)

    def project(self, x):
        x = jnp.asarray(x)
        lo, hi = self._bounds(x.dtype)
        return _project_svd(x, jnp.asarray(self.labels), jnp.asarray(self.centroids, x.dtype),
                            jnp.asarray(self.components, x.dtype), jnp.asarray(self.radii, x.dtype), lo, hi,
                            iters=int(self.iters))

    def violation(self, x):
        """Per row, the residual norm minus its cut-off (``<= 0``: kept), or the box excess if larger."""
        x = jnp.asarray(x)
        z = x - jnp.asarray(self.centroids, x.dtype)[jnp.asarray(self.labels)]
        V = jnp.asarray(self.components, x.dtype)
        v = jnp.linalg.norm(z - (z @ V.T) @ V, axis=1) - jnp.asarray(self.radii, x.dtype)[jnp.asarray(self.labels)]
        if self.box is not None:
            lo, hi = self._bounds(x.dtype)
            v = jnp.maximum(v, jnp.max(jnp.maximum(lo - x, x - hi), axis=1))
        return v

    def contains(self, x, atol: float = 1e-9) -> bool:
        return bool(jnp.all(self.violation(x) <= atol))


# ------------------------------------------------------------------------------------------------
# the neighbour defenses' region
# ------------------------------------------------------------------------------------------------
@jax.jit
def _project_anchor(x, anchors, radii, lo, hi):
    z = x - anchors
    x = anchors + z * jnp.minimum(1.0, radii / jnp.maximum(jnp.linalg.norm(z, axis=1), 1e-30))[:, None]
    x = jnp.clip(x, lo, hi)
    return _pull(x, anchors, jnp.linalg.norm(x - anchors, axis=1) / jnp.maximum(radii, 1e-30))


@dataclasses.dataclass(frozen=True, eq=False)
class AnchorRegion(FeasibleSet):
    r"""Row ``j`` inside the ball :math:`\|x_j - a_j\| \le r_j` around its anchor ``anchors[j]`` (a clean point
    of its class), inside ``box``: by the triangle inequality the k-NN defense's score of the row is at most
    the anchor's plus :math:`k r_j` (module docstring). Exact projection onto the ball, then the box, then a
    radial pull toward the anchor (which is in the box)."""

    anchors: Any
    radii: Any
    box: tuple | None = (0.0, 1.0)

    def project(self, x):
        x = jnp.asarray(x)
        lo, hi = (-jnp.inf, jnp.inf) if self.box is None else self.box
        return _project_anchor(x, jnp.asarray(self.anchors, x.dtype), jnp.asarray(self.radii, x.dtype),
                               jnp.asarray(lo, x.dtype), jnp.asarray(hi, x.dtype))

    def violation(self, x):
        x = jnp.asarray(x)
        v = jnp.linalg.norm(x - jnp.asarray(self.anchors, x.dtype), axis=1) - jnp.asarray(self.radii, x.dtype)
        if self.box is not None:
            v = jnp.maximum(v, jnp.max(jnp.maximum(self.box[0] - x, x - self.box[1]), axis=1))
        return v

    def contains(self, x, atol: float = 1e-9) -> bool:
        return bool(jnp.all(self.violation(x) <= atol))


def _anchors(X_clean, y_clean, X_start, labels, *, k, percentile, shrink, label_k):
    """Anchor and radius per row of ``X_start`` (class ``labels``) for :class:`AnchorRegion`."""
    X_clean, y_clean = np.asarray(X_clean, float), np.asarray(y_clean).astype(int)
    K = int(max(y_clean.max(), np.max(labels)) + 1)
    S = np.asarray(knn_scores(X_clean, y_clean, X_clean, y_clean, k, exclude_self=True, num_classes=K))
    tau = np.asarray(percentile_thresholds(S, y_clean, percentile, K))
    labeller = KNNLabelSanitizer(k=label_k, num_classes=K)
    votes = np.asarray(labeller.score_train(labeller.fit(X_clean, y_clean), X_clean, y_clean))
    anchors, radii = [], []
    for x, lab in zip(np.asarray(X_start, float), np.asarray(labels).astype(int)):
        ok = (y_clean == lab) & (S < tau[lab]) & (votes == 0.0)
        if not ok.any():
            ok = (y_clean == lab) & (S <= tau[lab])
        idx = np.flatnonzero(ok)
        j = idx[np.argmin(np.sum((X_clean[idx] - x) ** 2, axis=1))]
        anchors.append(X_clean[j])
        radii.append(max(0.0, shrink * (tau[lab] - S[j]) / k))
    return np.stack(anchors), np.asarray(radii)


# ------------------------------------------------------------------------------------------------
# the door
# ------------------------------------------------------------------------------------------------
def defense_region(defense: str, X_clean, y_clean, poison: PoisonPoints, *, percentile: float = 90.0,
                   shrink: float = 0.95, box=(0.0, 1.0), k: int = 5, rank: int = 10, label_k: int = 10,
                   loss_percentile: float | None = None) -> FeasibleSet:
    """The feasible set that makes ``poison``'s rows (their labels, copies and, for the neighbour region,
    their current positions as the anchors' choice) survive ``defense`` (module docstring; ``REGION_OF``).
    Cut-offs at the ``percentile`` of the clean scores times ``shrink``; ``k`` the k-NN defense's
    neighbours, ``label_k`` the label sanitizer's, ``rank`` the SVD defense's; ``loss_percentile``
    (default ``percentile``) the loss region's."""
    _check_defense(defense)
    if not 0.0 < float(shrink) <= 1.0:
        raise ValueError(f"argument 'shrink' must be in (0, 1], got {shrink!r}")
    if not isinstance(poison, PoisonPoints):
        raise ValueError(f"argument 'poison' must be a PoisonPoints, got {type(poison).__name__}")
    X_clean, y_clean = np.asarray(X_clean, float), np.asarray(y_clean).astype(int)
    labels = np.asarray(poison.y).astype(int)
    K = int(max(y_clean.max(), labels.max()) + 1)
    box = None if box is None else (float(box[0]), float(box[1]))
    kind = REGION_OF[defense]
    if kind in ("sphere_slab", "loss"):
        lp = None if kind == "sphere_slab" else float(percentile if loss_percentile is None else loss_percentile)
        return SanitizerRegion(X_clean, y_clean, labels, poison.counts, percentile=percentile, shrink=shrink,
                               centroids="poisoned", box=box, loss_percentile=lp, num_classes=K)
    if kind == "svd":
        d = SVDDefense(rank=min(int(rank), X_clean.shape[1] - 1), num_classes=K)
        state = d.fit(X_clean, y_clean)
        radii = shrink * np.asarray(d.thresholds(state, X_clean, y_clean, percentile))
        return SVDRegion(labels, np.asarray(state.centroids), np.asarray(state.components), radii, box)
    anchors, radii = _anchors(X_clean, y_clean, poison.X, labels, k=k, percentile=percentile, shrink=shrink,
                              label_k=label_k)
    return AnchorRegion(anchors, radii, box)


def survival_margins(defense: str, X_clean, y_clean, X_cand, y_cand, *, victim=None, percentile: float = 90.0,
                     k: int = 5, rank: int = 10, label_k: int = 10, params=None) -> np.ndarray:
    """Each candidate's score under ``defense`` fitted on the clean data minus the ``percentile`` of the clean
    scores of its class, ``(m,)``: ``<= 0`` survives. The ``loss`` region (``loss``, ``sever``, ``roni``)
    scores by the hinge loss under ``victim`` trained on the clean data (or ``params``)."""
    _check_defense(defense)
    X_clean, y_clean = np.asarray(X_clean, float), np.asarray(y_clean).astype(int)
    X_cand, y_cand = np.asarray(X_cand, float), np.asarray(y_cand).astype(int)
    K = int(max(y_clean.max(), y_cand.max()) + 1)
    kind = REGION_OF[defense]
    if kind == "loss":
        if params is None:
            if victim is None:
                raise ValueError(f"survivors({defense!r}) needs 'victim' (or 'params'): it scores by the hinge loss")
            params = fit_victim(victim, X_clean, y_clean)
        s_clean = np.asarray(hinge_score(victim, params, X_clean, y_clean))
        s_cand = np.asarray(hinge_score(victim, params, X_cand, y_cand))
        tau = np.asarray(percentile_thresholds(s_clean, y_clean, percentile, K))
        return s_cand - tau[y_cand]
    if defense == "label_sanitization":
        d = KNNLabelSanitizer(k=label_k, num_classes=K)
    elif kind == "neighbours":
        d = KNNDefense(k=k, num_classes=K)
    elif defense == "sphere":
        d = SphereDefense(num_classes=K)
    elif defense == "slab":
        d = SlabDefense(num_classes=K)
    else:
        d = SVDDefense(rank=min(int(rank), X_clean.shape[1] - 1), num_classes=K)
    state = d.fit(X_clean, y_clean)
    tau = np.asarray(percentile_thresholds(d.score_train(state, X_clean, y_clean), y_clean, percentile, K))
    return np.asarray(d.score(state, X_cand, y_cand)) - tau[y_cand]


def survivors(defense: str, X_clean, y_clean, X_cand, y_cand, **kw) -> np.ndarray:
    """Which candidates the defense, fitted on the clean data, scores at or below the ``percentile`` of the
    clean scores of their class: ``(m,)`` bool (:func:`survival_margins` ``<= 0``; same keywords)."""
    return survival_margins(defense, X_clean, y_clean, X_cand, y_cand, **kw) <= 0.0


def adaptive_attack(attack: PoisoningAttack, defense: str, X_clean, y_clean, poison, *, victim=None,
                    percentile: float = 90.0, shrink: float = 0.95, box=(0.0, 1.0), k: int = 5, rank: int = 10,
                    label_k: int = 10, warm_start=None, min_candidates: int = 1, concentrate_copies: bool = False):
    """The one door: ``attack`` made aware of ``defense`` (one of :data:`REGION_OF`). Returns
    ``(attack', poison')`` to pass to :func:`poisoning.attack.run` in place of ``(attack, poison)``.

    - :class:`~poisoning.attack.PoisonPoints`: ``attack'`` is ``attack`` with its feasible set replaced by
      :func:`defense_region` (which keeps the attack's own scalar :class:`~poisoning.feasible.Box`, else
      ``box``) and, for the loss region, Koh et al.'s ``select`` (only iterates feasible under their own
      retrained model are returned); ``poison'`` starts projected into the region (for the loss region under
      ``warm_start``, the model of the start, when given).
    - :class:`~poisoning.attack.PoisonWeights`: ``attack'`` is ``attack``; ``poison'`` keeps the candidates
      that survive ``defense`` (:func:`survivors`; ``victim`` defaults to ``attack.victim``) or, when fewer
      than ``min_candidates`` do, the ``min_candidates`` least suspicious ones (smallest
      :func:`survival_margins`: on well-separated data no flipped label may pass a cut-off).

    ``concentrate_copies`` (:class:`~poisoning.attack.PoisonPoints` against ``knn`` or
    ``label_sanitization``): first move the copies onto locations of :func:`copies_to_survive` copies each
    (:func:`concentrate`), which those defenses cannot see; ``poison'`` then has fewer rows.
    """
    _check_defense(defense)
    if not isinstance(attack, PoisoningAttack):
        raise ValueError(f"argument 'attack' must be a PoisoningAttack, got {type(attack).__name__}")
    victim = attack.victim if victim is None else victim
    if isinstance(poison, PoisonWeights):
        margins = survival_margins(defense, X_clean, y_clean, poison.X, poison.y, victim=victim,
                                   percentile=percentile, k=k, rank=rank, label_k=label_k)
        keep = margins <= 0.0
        m = min(int(min_candidates), margins.size)
        if keep.sum() < m:
            keep = np.zeros(margins.size, bool)
            keep[np.argsort(margins, kind="stable")[:m]] = True
        w = np.asarray(poison.weights)
        return attack, PoisonWeights(np.asarray(poison.X)[keep], np.asarray(poison.y)[keep], w[keep])
    if not isinstance(poison, PoisonPoints):
        raise ValueError(f"argument 'poison' must be a PoisonPoints or a PoisonWeights, got {type(poison).__name__}")
    if concentrate_copies and copies_to_survive(defense, k=k, label_k=label_k) > 1:
        poison = concentrate(poison, copies_to_survive(defense, k=k, label_k=label_k))
    region = defense_region(defense, X_clean, y_clean, poison, percentile=percentile, shrink=shrink,
                            box=_box_of(attack, box), k=k, rank=rank, label_k=label_k)
    select = attack.select
    if getattr(region, "uses_params", False):
        from poisoning.attacks.koh2022 import loss_admissible   # Koh et al.: feasible under its own model

        select = loss_admissible(region)
        x0 = region.project(poison.X, params=warm_start)
    else:
        x0 = region.project(poison.X)
    return (dataclasses.replace(attack, feasible=region, select=select),
            poison.with_leader(np.asarray(x0)))
