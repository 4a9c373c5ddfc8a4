r"""Where a poison point survives the sanitizers: the defenses' feasible region as a :class:`FeasibleSet`.

A sanitizer fit on the poisoned training set removes the points whose score exceeds a per-class
threshold (:mod:`poisoning.defenses.sanitizers`). A sanitizer-aware attacker keeps its points inside
the region the defenses leave (Steinhardt, Koh & Liang 2017; Koh, Steinhardt & Liang 2022, Sec. 3):

.. math::

    F_y(\theta) = \underbrace{\{x : \|x - \mu_y\|_2 \le r_y\}}_{\text{sphere}}
    \cap \underbrace{\{x : |\langle x - \mu_y, u_y\rangle| \le s_y\}}_{\text{slab}}
    \cap \underbrace{[lo, hi]^d}_{\text{box}}
    \cap \underbrace{\{x : \ell_{\text{hinge}}(\theta; x, y) \le \tau_y - m\}}_{\text{loss defense}},

with :math:`\mu_y` the class centroids (of the *poisoned* data for the data-dependent defense, which
the poison itself moves; of the clean data for the oracle defense), :math:`u_y` the slab directions
(:func:`~poisoning.defenses.sanitizers.slab_directions`), :math:`r_y, s_y` the ``percentile``-th
percentile of the clean class-:math:`y` sphere and slab scores times ``shrink`` (the attacker's estimate
of the cut-offs, kept a little inside), and the optional loss-defense halfspace of a linear model
:math:`\theta = (w, b)`: :math:`1 - \sigma_y (w^\top x + b) \le \tau_y - m` (:math:`\sigma_y = \pm1`,
:math:`\tau_y` the ``loss_percentile`` of the clean hinge losses under :math:`\theta`), i.e.
:math:`a^\top x \ge \beta` with :math:`a = \sigma_y w` (:func:`loss_halfspaces`). The loss halfspace
depends on the model trained at the current poison: :class:`SanitizerRegion` then has
``uses_params = True`` and the attack driver projects with ``project(x, params=w)``.

Projection (:func:`project_region`, for fixed centroids): alternate the exact sphere-slab projection
(:func:`poisoning.feasible.project_sphere_slab`), the box clip and the halfspace projection
(:func:`optax.projections.projection_halfspace`) ``pocs_iters`` times, then pull the point radially
toward :math:`\mu_y` until it is in every set (all are convex and contain :math:`\mu_y` when the centroid
meets the loss constraint), so the result is feasible exactly, though not always the nearest
feasible point. With data-dependent centroids :class:`SanitizerRegion` repeats this for ``rounds``
fixed-point rounds (the centroid moves with the poison); the drift of the last round is covered by
``shrink``.

References: J. Steinhardt, P. W. Koh, P. Liang, "Certified defenses for data poisoning attacks",
NeurIPS 2017. P. W. Koh, J. Steinhardt, P. Liang, "Stronger data poisoning attacks break data
sanitization defenses", Machine Learning 111, 2022 (arXiv:1811.00741).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from poisoning.defenses.sanitizers import (
    linear_hinge_losses,
    percentile_thresholds,
    slab_directions,
    slab_scores,
    sphere_scores,
)
from poisoning.feasible import FeasibleSet, project_sphere_slab

__all__ = [
    "SanitizerRegion",
    "class_thresholds",
    "hinge_thresholds",
    "loss_halfspaces",
    "project_region",
]


def class_thresholds(X_clean, y_clean, centroids, percentile=90.0):
    """Per-class sphere radii and slab half-widths around ``centroids``: the ``percentile``-th percentile
    of the clean sphere / slab scores (labels ``0..K-1``). Returns ``(radii (K,), slab (K,), directions (K, d))``."""
    K = centroids.shape[0]
    u = slab_directions(centroids)
    r = percentile_thresholds(sphere_scores(X_clean, y_clean, centroids), y_clean, percentile, K)
    s = percentile_thresholds(slab_scores(X_clean, y_clean, centroids, u), y_clean, percentile, K)
    return r, s, u


def hinge_thresholds(params, X_clean, y_clean, percentile=90.0):
    """Per-class ``percentile`` of the clean hinge losses of the linear model ``params = {"w", "b"}``
    (labels 0/1): the attacker's estimate of the loss defense's cut-off, shape ``(2,)``."""
    losses = linear_hinge_losses(params["w"], params["b"], X_clean, y_clean)
    return percentile_thresholds(losses, y_clean, percentile, 2)


def loss_halfspaces(params, labels, thresholds, margin: float = 0.0):
    r"""The loss-defense constraint :math:`\max(0, 1 - \sigma_j(w^\top x_j + b)) \le \tau_{y_j} - m` of a
    linear model as halfspaces :math:`a_j^\top x_j \ge \beta_j`: :math:`a_j = \sigma_j w`,
    :math:`\beta_j = 1 - \tau_{y_j} + m - \sigma_j b`, :math:`\sigma_j = 2 y_j - 1` (labels 0/1;
    ``thresholds`` indexed by class). Returns ``(A (m, d), beta (m,))``."""
    labels = jnp.asarray(labels)
    w, b = jnp.asarray(params["w"]), jnp.asarray(params["b"])
    sign = (2 * labels - 1).astype(w.dtype)
    tau = jnp.asarray(thresholds, w.dtype)[labels]
    return sign[:, None] * w[None, :], 1.0 - tau + margin - sign * b


def _concrete(a) -> bool:
    return isinstance(a, (np.ndarray, list, tuple)) or (isinstance(a, jax.Array)
                                                         and not isinstance(a, jax.core.Tracer))


def _project_halfspaces(x, A, beta):
    """Each row onto its halfspace ``a_j'x >= beta_j`` (rows with ``a_j = 0`` are left alone)."""
    proj = jax.vmap(optax.projections.projection_halfspace)(x, -A, -beta)
    return jnp.where((jnp.sum(A * A, axis=1) > 0)[:, None], proj, x)


@functools.partial(jax.jit, static_argnames=("pocs_iters",))
def project_region(x, labels, centroids, directions, sphere_radii, slab_radii, lo, hi, halfspaces=None, *,
                   pocs_iters: int = 10):
    r"""A point of sphere :math:`\cap` slab :math:`\cap` box :math:`\cap` halfspace of each row's class, for
    fixed centroids (see the module docstring): ``pocs_iters`` rounds of alternating projections, then a
    radial pull toward :math:`\mu_y`. ``halfspaces = (A, beta)`` (:func:`loss_halfspaces`) or ``None``;
    ``lo``/``hi`` the box (``-inf``/``inf`` for none)."""
    def one_pass(x):
        x = jnp.clip(project_sphere_slab(x, labels, centroids, directions, sphere_radii, slab_radii), lo, hi)
        return x if halfspaces is None else _project_halfspaces(x, *halfspaces)

    x = jax.lax.fori_loop(0, pocs_iters, lambda _, v: one_pass(v), x)
    x = jnp.clip(project_sphere_slab(x, labels, centroids, directions, sphere_radii, slab_radii), lo, hi)
    m, u = centroids[labels], directions[labels]
    z = x - m
    nz = jnp.linalg.norm(z, axis=1)
    tz = jnp.abs(jnp.sum(z * u, axis=1))
    lam = jnp.minimum(1.0, jnp.minimum(sphere_radii[labels] / jnp.maximum(nz, 1e-30),
                                       slab_radii[labels] / jnp.maximum(tz, 1e-30)))
    if halfspaces is not None:  # the halfspace along the segment mu + lam z (binding when x violates it)
        A, beta = halfspaces
        am, ax = jnp.sum(A * m, axis=1), jnp.sum(A * x, axis=1)
        lam = jnp.minimum(lam, jnp.where((ax < beta) & (am >= beta), (am - beta) / jnp.maximum(am - ax, 1e-30), 1.0))
    return m + lam[:, None] * z


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["X_clean", "y_clean", "labels", "counts"],
                   meta_fields=["percentile", "shrink", "centroids", "box", "loss_percentile", "loss_margin",
                                "rounds", "pocs_iters", "num_classes"])
@dataclasses.dataclass(frozen=True, eq=False)
class SanitizerRegion(FeasibleSet):
    r"""The points (one row per poison location, class ``labels[j]``, multiplicity ``counts[j]``) that the
    sphere, slab and, with ``loss_percentile``, loss defenses keep (module docstring).

    Attributes:
      X_clean, y_clean: the clean training set (labels ``0..K-1``): the percentiles of its scores set the
        thresholds, and it enters the data-dependent centroids.
      labels: ``(m,)`` class of each poison row; counts: ``(m,)`` multiplicities (default 1).
      percentile, shrink: thresholds at the ``percentile``-th percentile of clean scores, times ``shrink``.
      centroids: ``"poisoned"`` (data-dependent defense: centroids of clean + poison, reached by
        ``rounds`` fixed-point rounds) or ``"clean"`` (oracle defense).
      box: ``(lo, hi)`` or ``None``.
      loss_percentile: ``None`` (no loss defense) or the percentile of clean hinge losses under the
        current model that the poison's hinge loss must stay below (minus ``loss_margin``); then
        ``uses_params`` is true and :meth:`project` needs ``params`` (a linear model ``{"w", "b"}``).
      rounds, pocs_iters: fixed-point rounds (data-dependent centroids) and alternating-projection sweeps.

    :meth:`project` ``(x, params=None)`` drops the loss halfspaces when ``params`` is ``None``;
    :meth:`contains` / :meth:`violation` measure against the defenses' own cut-offs (no ``shrink``). A
    registered pytree (the arrays are its leaves), so it can be passed to jitted functions.
    """

    X_clean: Any
    y_clean: Any
    labels: Any
    counts: Any = None
    percentile: float = 90.0
    shrink: float = 0.98
    centroids: Literal["poisoned", "clean"] = "poisoned"
    box: tuple | None = (0.0, 1.0)
    loss_percentile: float | None = None
    loss_margin: float = 0.0
    rounds: int = 5
    pocs_iters: int = 10
    num_classes: int = 2

    def __post_init__(self):
        if self.box is not None and not isinstance(self.box, tuple):  # meta fields must be hashable
            object.__setattr__(self, "box", tuple(float(b) for b in self.box))
        if self.centroids not in ("poisoned", "clean"):
            raise ValueError(f"SanitizerRegion: 'centroids' must be 'poisoned' or 'clean', got {self.centroids!r}")
        if not all(_concrete(a) for a in (self.X_clean, self.y_clean, self.labels)):
            return  # rebuilt from its leaves under a transformation (tracers): validated when built
        if not 0.0 <= float(self.percentile) <= 100.0:
            raise ValueError(f"SanitizerRegion: 'percentile' must be in [0, 100], got {self.percentile!r}")
        if not 0.0 < float(self.shrink) <= 1.0:
            raise ValueError(f"SanitizerRegion: 'shrink' must be in (0, 1], got {self.shrink!r}")
        if self.loss_percentile is not None:
            if not 0.0 <= float(self.loss_percentile) <= 100.0:
                raise ValueError(f"SanitizerRegion: 'loss_percentile' must be in [0, 100], got "
                                 f"{self.loss_percentile!r}")
            if int(self.num_classes) != 2:
                raise ValueError("SanitizerRegion: the loss defense's halfspaces need binary labels (num_classes=2)")
        if self.box is not None and not float(self.box[0]) <= float(self.box[1]):
            raise ValueError(f"SanitizerRegion: 'box' must be (lo, hi) with lo <= hi, got {self.box!r}")
        if int(self.rounds) < 1 or int(self.pocs_iters) < 0:
            raise ValueError("SanitizerRegion: 'rounds' must be >= 1 and 'pocs_iters' >= 0")
        X = np.asarray(self.X_clean)
        y, lab = np.asarray(self.y_clean), np.asarray(self.labels)
        K = int(self.num_classes)
        if X.ndim != 2 or y.shape != (X.shape[0],):
            raise ValueError(f"SanitizerRegion: 'X_clean' must be (n, d) and 'y_clean' (n,), got {X.shape}, {y.shape}")
        if not np.all(np.isfinite(X)):
            raise ValueError("SanitizerRegion: 'X_clean' contains NaN or inf")
        for name, a in (("y_clean", y), ("labels", lab)):
            if a.size and (a.min() < 0 or a.max() > K - 1 or np.any(a != np.round(a))):
                raise ValueError(f"SanitizerRegion: {name!r} must hold class labels in 0..{K - 1}, "
                                 f"got {np.unique(a)[:8].tolist()}")
        if np.any(np.bincount(y.astype(int), minlength=K) == 0):
            raise ValueError("SanitizerRegion: every class needs clean points in 'y_clean'")
        if lab.ndim != 1:
            raise ValueError(f"SanitizerRegion: 'labels' must be (m,), got {lab.shape}")
        if self.counts is not None:
            c = np.asarray(self.counts, float)
            if c.shape != lab.shape or np.any(c < 0) or not np.all(np.isfinite(c)):
                raise ValueError(f"SanitizerRegion: 'counts' must be {lab.shape[0]} finite non-negative numbers")
        dtype = jnp.result_type(float)
        object.__setattr__(self, "X_clean", jnp.asarray(X, dtype))
        object.__setattr__(self, "y_clean", jnp.asarray(y, jnp.int32))
        object.__setattr__(self, "labels", jnp.asarray(lab, jnp.int32))
        if self.counts is not None:
            object.__setattr__(self, "counts", jnp.asarray(self.counts, dtype))

    @property
    def uses_params(self) -> bool:
        """Whether the region depends on the trained model (the loss defense is on)."""
        return self.loss_percentile is not None

    # -- pieces ------------------------------------------------------------------------------------
    def centroids_of(self, x):
        r"""Class centroids :math:`\mu_y` of the clean data plus, for ``"poisoned"``, the rows ``x`` with
        their multiplicities, shape ``(K, d)``."""
        K, Xc = int(self.num_classes), self.X_clean
        S = jax.ops.segment_sum(Xc, self.y_clean, num_segments=K)
        n = jax.ops.segment_sum(jnp.ones(Xc.shape[0], Xc.dtype), self.y_clean, num_segments=K)
        if self.centroids == "poisoned":
            c = jnp.ones(x.shape[0], x.dtype) if self.counts is None else self.counts.astype(x.dtype)
            S = S + jax.ops.segment_sum(x * c[:, None], self.labels, num_segments=K)
            n = n + jax.ops.segment_sum(c, self.labels, num_segments=K)
        return S / n[:, None]

    def halfspaces(self, params):
        """The loss-defense halfspaces ``(A, beta)`` under the model ``params`` (``None`` when the loss
        defense is off or no model is given)."""
        if self.loss_percentile is None or params is None:
            return None
        tau = hinge_thresholds(params, self.X_clean, self.y_clean, self.loss_percentile)
        return loss_halfspaces(params, self.labels, tau, self.loss_margin)

    def _bounds(self, dtype):
        lo, hi = (-jnp.inf, jnp.inf) if self.box is None else self.box
        return jnp.asarray(lo, dtype), jnp.asarray(hi, dtype)

    def thresholds(self, centroids):
        """``(directions, sphere radii, slab radii)`` around ``centroids``, the radii times ``shrink``."""
        r, s, u = class_thresholds(self.X_clean, self.y_clean, centroids, self.percentile)
        return u, self.shrink * r, self.shrink * s

    def project_around(self, x, centroids, halfspaces=None, *, thresholds=None, pocs_iters: int | None = None):
        """:func:`project_region` around fixed ``centroids`` (``thresholds``: a precomputed
        :meth:`thresholds` for them)."""
        u, r, s = self.thresholds(centroids) if thresholds is None else thresholds
        lo, hi = self._bounds(x.dtype)
        return project_region(x, self.labels, centroids, u, r, s, lo, hi, halfspaces,
                              pocs_iters=int(self.pocs_iters if pocs_iters is None else pocs_iters))

    # -- FeasibleSet -------------------------------------------------------------------------------
    def project(self, x, params=None):
        """Rows of ``x`` moved into the region (the loss halfspaces under ``params`` when given); compiled
        once per settings and shapes."""
        return _project(self, jnp.asarray(x, self.X_clean.dtype), params)

    def violation(self, x, params=None):
        """Per row, the largest excess over the *defenses'* cut-offs (sphere and slab at the ``percentile``
        without ``shrink``, around the centroids of ``x`` itself; box; loss under ``params``): ``<= 0`` means
        the sanitizers with these thresholds keep the point. :meth:`project` lands inside with the
        ``shrink`` margin, which covers the drift of the data-dependent centroids."""
        return _violation(self, jnp.asarray(x, self.X_clean.dtype), params)

    def _violation(self, x, params):
        mu = self.centroids_of(x)
        r, s, u = class_thresholds(self.X_clean, self.y_clean, mu, self.percentile)
        z = x - mu[self.labels]
        parts = [jnp.linalg.norm(z, axis=1) - r[self.labels],
                 jnp.abs(jnp.sum(z * u[self.labels], axis=1)) - s[self.labels]]
        if self.box is not None:
            lo, hi = self._bounds(x.dtype)
            parts.append(jnp.max(jnp.maximum(lo - x, x - hi), axis=1))
        hs = self.halfspaces(params)
        if hs is not None:
            parts.append(hs[1] - jnp.sum(hs[0] * x, axis=1))
        return jnp.max(jnp.stack(parts), axis=0)

    def contains(self, x, atol: float = 1e-9, params=None) -> bool:
        return bool(jnp.all(self.violation(x, params) <= atol))


@jax.jit
def _project(region: SanitizerRegion, x, params):
    hs = region.halfspaces(params)
    rounds = int(region.rounds) if region.centroids == "poisoned" else 1
    return jax.lax.fori_loop(0, rounds, lambda _, v: region.project_around(v, region.centroids_of(v), hs), x)


@jax.jit
def _violation(region: SanitizerRegion, x, params):
    return region._violation(x, params)
