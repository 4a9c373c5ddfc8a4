r"""Koh, Steinhardt & Liang (2022), "Stronger data poisoning attacks break data sanitization defenses"
(Machine Learning; arXiv:1811.00741): the *influence attack* constrained to the defenders' feasible set,
and the *KKT attack* that warm-starts it.

Victim
------
:func:`poisoning.victims.smooth_svm` (``wd``, ``t``): the linear SVM with the smoothed hinge of Koh &
Liang (2017), :math:`R(\theta) = \frac1N\sum_i c_i\, t\,\mathrm{softplus}\big((1 - \sigma_i(w^\top x_i +
b))/t\big) + \frac{wd}2\|w\|^2` (:math:`C = 1/(N\,wd)`, :math:`\sigma_i = \pm1` for labels 1/0), trained by
damped Newton and differentiated by the implicit function theorem. The ``eps n`` poison points sit at a
few distinct locations, each repeated (the paper's "copies"): one location of multiplicity :math:`c_j` is
one row of weight :math:`c_j` (:class:`~poisoning.attack.PoisonPoints` with ``counts``), so moving it moves
all its copies.

Influence attack (:func:`koh_attack`)
-------------------------------------
The attacker maximizes the mean smoothed hinge of the retrained SVM on a target set
(:func:`~poisoning.objectives.error_generic`; the test set in the paper's release, or a validation set).
The driver's hypergradient w.r.t. a location :math:`x_j` is the IFT derivative, which for this strictly
convex objective is exactly Koh & Liang's perturbation influence

.. math:: \nabla_{x_j} L_{tgt}(\hat\theta) = \frac{c_j}{N}\,\mathcal I_{\text{pert,loss}}(z_j, D_{tgt})
          = -\frac{c_j}{N}\big(s_{tgt}^\top\nabla_x\nabla_\theta \ell(z_j,\hat\theta)\big)^\top,
          \quad s_{tgt} = H^{-1}\nabla_\theta L_{tgt}(\hat\theta)

(:func:`bilevel.influence.influence_perturbation` is the test oracle). Each step moves every location
by ``step_size`` (optionally cosine-annealed to ``step_size / 20``) along its unit hypergradient
(``fixed_step(..., normalization="rows")``), then projects:

- ``aware`` (the sanitizer-aware attack): onto :class:`~poisoning.defenses.regions.SanitizerRegion`,
  sphere :math:`\cap` slab (thresholds at the ``percentile``-th percentile of clean scores, times
  ``shrink``, around the data-dependent or clean centroids) :math:`\cap` box and, with
  ``loss_percentile``, the loss-defense halfspace of the model retrained at the current iterate;
  the k-NN defense is met by the copies themselves (a location with at least ``k + 1`` copies has
  k-NN score 0). With the loss constraint the returned iterate is the best among those meeting it
  under their own retrained model (the driver's ``select``);
- ``naive``: onto the box only.

KKT attack (:func:`kkt_attack`, Sec. 4.2)
-----------------------------------------
Not an ascent of the bilevel objective but a convex solve per candidate: for decoy parameters
:math:`\theta_d` with a high target loss (:func:`decoy_parameters`: SVMs trained with label-flipped
target points, a stand-in for the release's ``generateThetaFnc``; the experiment adds the naive
attack's model), :math:`\theta_d` is the retrained optimum iff the poison cancels the clean gradient,
:math:`\sum_j c_j \sigma_j (x_j, 1) = G(\theta_d)` (:func:`kkt_target_gradient`; poison on the linear
part of the hinge). The attack takes :math:`c_+ - c_- = G_b` and minimizes
:math:`\|\sum_j c_j \sigma_j x_j - G_w\|^2` (:func:`kkt_residual`) over the sanitizer region under
:math:`\theta_d` by projected FISTA (:func:`kkt_poison`); the candidate whose retrained model has the
highest target loss warm-starts the influence attack.

Defense evaluation lives in :mod:`poisoning.defenses.evaluate`.

Deviations from the paper: decoys from a simple label-flip heuristic instead of ``generateThetaFnc``
(MATLAB), FISTA instead of the Gurobi/cvxpy QP, no SVD defense, smoothed hinge (``t``) instead of the
hinge when training, the attacker's thresholds at fixed clean-score percentiles.

References: P. W. Koh, J. Steinhardt, P. Liang, "Stronger data poisoning attacks break data sanitization
defenses", Machine Learning 111, 2022. P. W. Koh, P. Liang, "Understanding black-box predictions via
influence functions", ICML 2017. A. Beck, M. Teboulle, "A fast iterative shrinkage-thresholding algorithm",
SIAM J. Imaging Sciences 2, 2009 (FISTA).
"""

from __future__ import annotations

import functools
import time
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bilevel.stackelberg import fixed_step
from poisoning import victims
from poisoning.attack import AttackResult, PoisoningAttack, PoisonPoints, run
from poisoning.defenses.evaluate import fit_poisoned, fit_victim
from poisoning.defenses.regions import SanitizerRegion, hinge_thresholds, loss_halfspaces
from poisoning.feasible import Box, Unconstrained
from poisoning.objectives import error_generic

__all__ = [
    "initial_poison",
    "koh_attack",
    "kkt_target_gradient",
    "kkt_residual",
    "kkt_poison",
    "decoy_parameters",
    "kkt_attack",
    "loss_admissible",
]


def _victim(victim):
    return victims.smooth_svm() if victim is None else victim


def initial_poison(X_clean, y_clean, n_poison: int, n_locations: int = 2, seed: int = 0) -> PoisonPoints:
    """Label-flip start: ``n_locations`` distinct locations (labels 1, 0, 1, ...), each a random clean point
    of the *other* class; the ``n_poison`` copies are spread over them as evenly as possible."""
    if n_poison < 1 or n_locations < 1:
        raise ValueError("arguments 'n_poison' and 'n_locations' must be >= 1")
    n_locations = min(n_locations, n_poison)
    rng = np.random.default_rng(seed)
    X_clean, y_clean = np.asarray(X_clean), np.asarray(y_clean)
    y_loc = np.array([1 if j % 2 == 0 else 0 for j in range(n_locations)])
    X_loc = np.stack([X_clean[rng.choice(np.flatnonzero(y_clean == 1 - lab))] for lab in y_loc])
    counts = np.full(n_locations, n_poison // n_locations)
    counts[: n_poison % n_locations] += 1
    return PoisonPoints(X_loc, y_loc, counts=counts)


# ------------------------------------------------------------------------------------------------
# influence attack
# ------------------------------------------------------------------------------------------------
def loss_admissible(region: SanitizerRegion):
    """``select``: the objective for iterates whose hinge losses under their own retrained model stay below
    the region's clean-loss percentile; violating ones score :math:`-e^{-A} \\in [-1, 0)`, below every
    admissible one (the objective, a mean loss, is >= 0) and still ordered by the objective."""

    def select(victim, params, leader, *target):
        value = error_generic(victim, params, *target)
        tau = hinge_thresholds(params, region.X_clean, region.y_clean, region.loss_percentile)
        A, beta = loss_halfspaces(params, region.labels, tau)
        ok = jnp.all(beta - jnp.sum(A * leader, axis=1) <= 1e-9)
        return jnp.where(ok, value, -jnp.exp(-value))

    return select


def _step(step_size, steps, schedule):
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"argument 'schedule' must be 'constant' or 'cosine', got {schedule!r}")
    sched = optax.cosine_decay_schedule(float(step_size), max(int(steps), 1), alpha=0.05) \
        if schedule == "cosine" else None
    return fixed_step(float(step_size), "rows", schedule=sched)


@functools.lru_cache(maxsize=None)
def _naive_attack(victim, box, step_size, steps, schedule) -> PoisoningAttack:
    """The naive attack (box only), memoized: equal settings share one compiled loop."""
    feasible = Unconstrained() if box is None else Box(float(box[0]), float(box[1]))
    return PoisoningAttack(victim, error_generic, feasible, step=_step(step_size, steps, schedule), gain_tol=None)


def _aware_attack(victim, region: SanitizerRegion, step_size, steps, schedule) -> PoisoningAttack:
    select = loss_admissible(region) if region.uses_params else None
    return PoisoningAttack(victim, error_generic, region, step=_step(step_size, steps, schedule), gain_tol=None,
                           select=select)


def koh_attack(X_clean, y_clean, X_tgt, y_tgt, n_poison: int, *, victim=None, aware: bool = True,
               steps: int = 100, step_size: float = 0.5, n_locations: int = 2, percentile: float = 90.0,
               shrink: float = 0.98, centroids: Literal["poisoned", "clean"] = "poisoned", box=(0.0, 1.0),
               seed: int = 0, init: PoisonPoints | None = None, loss_percentile: float | None = None,
               loss_margin: float = 0.0, schedule: Literal["constant", "cosine"] = "constant") -> AttackResult:
    """Influence attack of Koh et al. (2022): projected ascent of the mean target loss over the poison
    locations (module docstring). Labels 0/1.

    Args:
      victim: default :func:`poisoning.victims.smooth_svm` ``()`` (``wd = t = 0.01``).
      aware: project onto the sanitizers' region (:class:`~poisoning.defenses.regions.SanitizerRegion`
        with ``percentile``, ``shrink``, ``centroids``, ``box``, ``loss_percentile``, ``loss_margin``),
        else onto ``box`` only.
      steps, step_size, schedule: at most ``steps`` steps of length ``step_size`` (``"cosine"``: annealed
        to ``step_size / 20``, :func:`optax.cosine_decay_schedule`). No early stop (the paper's fixed budget).
      init: the start (e.g. ``kkt_attack(...).poison``), default :func:`initial_poison` (``n_poison``
        copies over ``n_locations`` locations, ``seed``).

    Returns:
      :class:`~poisoning.attack.AttackResult` (``res.poison`` holds ``X``, ``y``, ``counts``).
    """
    victim = _victim(victim)
    box = None if box is None else (float(box[0]), float(box[1]))
    poison = initial_poison(X_clean, y_clean, n_poison, n_locations, seed) if init is None else init
    if not isinstance(poison, PoisonPoints):
        raise ValueError(f"argument 'init' must be a PoisonPoints, got {type(poison).__name__}")
    counts = np.ones(len(poison.y)) if poison.counts is None else np.asarray(poison.counts, float)
    x0 = np.asarray(poison.X, float)
    # the victim starts warm from its clean fit (its cold start can throw Newton off, see fit_victim)
    warm = fit_victim(victim, X_clean, y_clean)
    if aware:
        region = SanitizerRegion(X_clean, y_clean, poison.y, counts, percentile=percentile, shrink=shrink,
                                 centroids=centroids, box=box, loss_percentile=loss_percentile,
                                 loss_margin=loss_margin)
        attack = _aware_attack(victim, region, step_size, steps, schedule)
        if region.uses_params:
            # the driver projects the start under warm_start: make that the start's own model, trained at the
            # start projected without the loss constraint
            x0 = np.asarray(region.project(x0))
            warm = fit_poisoned(victim, X_clean, y_clean, poison.with_leader(x0), warm_start=warm)
    else:
        attack = _naive_attack(victim, box, float(step_size), int(steps), schedule)
    return run(attack, X_clean, y_clean, PoisonPoints(x0, poison.y, counts=counts), (X_tgt, y_tgt), steps=steps,
               warm_start=warm)


# ------------------------------------------------------------------------------------------------
# KKT attack (Koh et al. 2022, Sec. 4.2) from decoy parameters
# ------------------------------------------------------------------------------------------------
def kkt_target_gradient(params, X_clean, y_clean, n_poison, *, victim=None):
    r"""The vector the poison gradients must cancel for ``params`` to be the retrained optimum.

    With :math:`N = n + n_p`, stationarity of the weighted training objective at :math:`\theta` reads
    :math:`\sum_{\rm clean}\nabla\ell_i + N\nabla\Omega(\theta) + \sum_j c_j\nabla\ell(x_j, y_j) = 0`.
    Poison on the linear part of the (smoothed) hinge has :math:`\nabla\ell(x_j, y_j) = -\sigma_j(x_j, 1)`,
    so the KKT attack needs :math:`\sum_j c_j \sigma_j (x_j, 1) = G` with

    .. math:: G = \sum_{i\in\rm clean}\nabla_\theta\,\ell(\theta; x_i, y_i) + N\,\nabla\Omega(\theta),

    computed by autodiff of the victim's per-example loss and training objective
    (:math:`\Omega` = training objective minus mean loss). Returns ``(G_w (d,), G_b)``."""
    victim = _victim(victim)
    X = jnp.asarray(X_clean, jnp.result_type(float))
    y = jnp.asarray(y_clean)
    N = X.shape[0] + n_poison

    def total(theta):
        per_example = victim.loss(theta, X, y)
        reg = victim.train_loss(theta, X, victim.encode(y, X.dtype)) - jnp.mean(per_example)
        return jnp.sum(per_example) + N * reg

    G = jax.grad(total)(jax.tree_util.tree_map(lambda a: jnp.asarray(a, X.dtype), params))
    return G["w"], G["b"]


def kkt_residual(X_loc, y_loc, counts, G_w):
    r"""KKT objective :math:`\|\sum_j c_j \sigma_j x_j - G_w\|^2` (labels 0/1, :math:`\sigma_j = 2y_j - 1`)."""
    a = jnp.asarray(counts) * (2 * jnp.asarray(y_loc) - 1)
    r = a @ X_loc - G_w
    return jnp.sum(r * r)


@functools.partial(jax.jit, static_argnames=("iters", "pocs_iters"))
def _kkt_fista(region, x0, G_w, halfspaces, iters=200, pocs_iters=5):
    """Projected FISTA on :func:`kkt_residual` over the region around fixed centroids ``mu`` (a convex
    solve of the KKT attack, not an ascent of the bilevel objective)."""
    a = region.counts * (2 * region.labels - 1).astype(x0.dtype)
    L = 2.0 * jnp.maximum(jnp.sum(a * a), 1e-30)  # Lipschitz constant of the gradient
    grad = jax.grad(kkt_residual)
    mu = region.centroids_of(x0)  # fixed for this round
    thresholds = region.thresholds(mu)

    def body(_, st):
        x, z, tk = st
        xn = region.project_around(z - grad(z, region.labels, region.counts, G_w) / L, mu, halfspaces,
                                   thresholds=thresholds, pocs_iters=pocs_iters)
        tn = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * tk * tk))
        return xn, xn + ((tk - 1.0) / tn) * (xn - x), tn

    x, _, _ = jax.lax.fori_loop(0, iters, body, (x0, x0, jnp.asarray(1.0, x0.dtype)))
    return x




def kkt_poison(params, X_clean, y_clean, x0, y_loc, counts, *, victim=None, percentile: float = 90.0,
               shrink: float = 0.98, loss_percentile: float | None = 90.0,
               centroids: Literal["poisoned", "clean"] = "poisoned", box=(0.0, 1.0), rounds: int = 3,
               iters: int = 200):
    r"""KKT attack for the decoy ``params`` with fixed labels (0/1) and multiplicities (Sec. 4.2):

    .. math:: \min_{x_j\in F_{y_j}(\theta_d)} \Big\|\sum_j c_j \sigma_j x_j - G_w\Big\|_2^2

    (:func:`kkt_target_gradient`) over the sanitizer region (:class:`~poisoning.defenses.regions.SanitizerRegion`,
    its loss halfspace under the decoy, as in the paper's release; ``loss_percentile=None`` drops it) by
    projected FISTA (``iters`` steps) with the data-dependent centroids updated between ``rounds``, then
    projected onto the region. Returns the locations ``(k, d)``."""
    victim = _victim(victim)
    dtype = jnp.result_type(float)
    Xc = jnp.asarray(X_clean, dtype)
    counts = np.asarray(counts, float)
    G_w, _ = kkt_target_gradient(params, Xc, y_clean, float(np.sum(counts)), victim=victim)
    region = SanitizerRegion(X_clean, y_clean, y_loc, counts, percentile=percentile, shrink=shrink,
                             centroids=centroids, box=None if box is None else tuple(box),
                             loss_percentile=loss_percentile)
    params = jax.tree_util.tree_map(lambda v: jnp.asarray(v, dtype), params)
    hs = region.halfspaces(params)
    x = jnp.asarray(x0, dtype)
    for _ in range(int(rounds) if centroids == "poisoned" else 1):
        x = _kkt_fista(region, x, G_w, hs, iters=int(iters))
    return region.project(x, params=params if loss_percentile is not None else None)


def decoy_parameters(X_clean, y_clean, X_tgt, y_tgt, *, victim=None, weights=(0.05, 0.2)) -> list:
    r"""Decoy parameters with a high target loss (a simple stand-in for the paper's ``generateThetaFnc``):
    for every weight :math:`\lambda` and every flip set :math:`S` (all target points, only class 1, only
    class 0) train the victim on the clean data plus :math:`S` with flipped labels, each flipped point of
    multiplicity :math:`\lambda n/|S|`. Labels 0/1. Returns a list of parameter pytrees."""
    if len(weights) == 0 or any(not np.isfinite(w) or w <= 0 for w in weights):
        raise ValueError(f"argument 'weights' must be a non-empty sequence of positive numbers, got {weights!r}")
    victim = _victim(victim)
    X_clean, y_clean = np.asarray(X_clean, float), np.asarray(y_clean).astype(int)
    X_tgt, y_tgt = np.asarray(X_tgt, float), np.asarray(y_tgt).astype(int)
    n = len(y_clean)
    X = np.concatenate([X_clean, X_tgt])
    y = np.concatenate([y_clean, 1 - y_tgt])
    base = fit_victim(victim, X_clean, y_clean)
    out = []
    for lab in (None, 1, 0):
        S = np.ones(len(y_tgt), bool) if lab is None else (y_tgt == lab)
        if not S.any():
            continue
        for lam in weights:
            c = np.concatenate([np.ones(n), np.where(S, lam * n / S.sum(), 0.0)])
            out.append(fit_victim(victim, X, y, c, warm_start=base))
    return out


def _min_copies_split(c_pos: int, n: int, m_pos: int, m_neg: int) -> int:
    """Nearest split ``c_pos`` of ``n`` copies with each side either empty or holding >= ``m_pos`` /
    ``m_neg`` copies (the k-NN defense removes thin clusters)."""
    ok = [c for c in range(n + 1) if (c == 0 or c >= m_pos) and (n - c == 0 or n - c >= m_neg)]
    return min(ok, key=lambda c: (abs(c - c_pos), c)) if ok else c_pos  # too few copies: no constraint


def kkt_attack(X_clean, y_clean, X_tgt, y_tgt, n_poison: int, decoys, *, victim=None, n_locations: int = 2,
               splits: int = 0, percentile: float = 90.0, shrink: float = 0.98,
               loss_percentile: float | None = 90.0, centroids: Literal["poisoned", "clean"] = "poisoned",
               box=(0.0, 1.0), iters: int = 200, seed: int = 0, min_copies: int = 6) -> AttackResult:
    r"""Best KKT attack over ``decoys`` and positive/negative splits of the ``n_poison`` copies (labels 0/1).

    For every decoy, the split :math:`c_+ - c_- = G_b` that makes the intercept stationary (clipped to
    ``[0, n_poison]``) and, when ``splits >= 2``, ``splits`` evenly spaced splits are tried
    (:func:`kkt_poison`, half of the ``n_locations`` per class, started at label-flipped clean points); the
    victim is retrained on each candidate and the one with the highest target loss wins (the release
    picks by test error after the defenses; our candidates are feasible by construction). Splits are
    moved to the nearest one in which every used location holds at least ``min_copies`` copies (``k + 1``
    makes the k-NN score of every copy 0; 1 switches this off).

    Returns an :class:`~poisoning.attack.AttackResult` with ``mode="kkt"``: ``history[0]`` holds the target
    loss of every candidate, ``n_steps`` the number of candidates, ``seconds`` the wall time."""
    if min_copies < 1:
        raise ValueError(f"argument 'min_copies' must be >= 1, got {min_copies}")
    if n_poison < 1:
        raise ValueError(f"argument 'n_poison' must be >= 1, got {n_poison}")
    if len(decoys) == 0:
        raise ValueError("argument 'decoys' must hold at least one parameter set")
    t0 = time.perf_counter()
    victim = _victim(victim)
    X_clean, y_clean = np.asarray(X_clean, float), np.asarray(y_clean).astype(int)
    start = initial_poison(X_clean, y_clean, n_poison, max(2, n_locations), seed)
    y_loc = start.y
    pos, neg = np.flatnonzero(y_loc == 1), np.flatnonzero(y_loc == 0)
    clean = fit_victim(victim, X_clean, y_clean)
    hist, best = [], (-np.inf, None, None)
    for params in decoys:
        _, G_b = kkt_target_gradient(params, X_clean, y_clean, n_poison, victim=victim)
        cand = {int(round(v)) for v in np.linspace(0, n_poison, int(splits))} if splits >= 2 else set()
        cand.add(int(round(np.clip((n_poison + float(G_b)) / 2, 0, n_poison))))
        cand = {_min_copies_split(c, n_poison, min_copies * len(pos), min_copies * len(neg)) for c in cand}
        for c_pos in sorted(cand):
            counts = np.zeros(len(y_loc))
            counts[pos] = c_pos // len(pos) + (np.arange(len(pos)) < c_pos % len(pos))
            counts[neg] = (n_poison - c_pos) // len(neg) + (np.arange(len(neg)) < (n_poison - c_pos) % len(neg))
            x = kkt_poison(params, X_clean, y_clean, start.X, y_loc, counts, victim=victim, percentile=percentile,
                           shrink=shrink, loss_percentile=loss_percentile, centroids=centroids, box=box,
                           iters=iters)
            poison = PoisonPoints(np.asarray(x), y_loc, counts=counts.astype(int))
            p = fit_poisoned(victim, X_clean, y_clean, poison, warm_start=clean)
            v = float(error_generic(victim, p, X_tgt, y_tgt))
            hist.append(v)
            if v > best[0]:
                best = (v, poison, p)
    v, poison, p = best
    seconds = time.perf_counter() - t0
    return AttackResult(poison=poison, params=p, params_clean=clean, objective=v,
                        objective_clean=float(error_generic(victim, clean, X_tgt, y_tgt)),
                        history=(np.asarray(hist),), block_params=(p,), block_objective=np.asarray([v]),
                        n_steps=np.asarray([len(hist)]), seconds=np.asarray([seconds]), compile_seconds=0.0,
                        stalled=np.asarray([False]), mode="kkt")
