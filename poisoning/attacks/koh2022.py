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

Decoys (:func:`generate_decoys`, the release's ``generateTheta`` / ``pruneTheta``)
-------------------------------------------------------------------------------------
For every margin quantile :math:`q` and repetition count :math:`r`: the target points whose margin under
the clean model is below its :math:`q`-quantile, label-flipped, added :math:`r` times; the victim retrained;
the Pareto front of (low clean loss, high target error) kept. :func:`decoy_parameters` is the older, simpler
label-flip stand-in (kept for its callers).

Min-max attack (:func:`minmax_attack`, Sec. 4.3; the release's ``generateAttackTar``)
--------------------------------------------------------------------------------------
An online learner (hinge + weight decay, AdaGrad) against an attacker who, each round, adds copies of the
point of largest hinge under the current model within sphere :math:`\cap` slab :math:`\cap` box (around the
clean centroids) :math:`\cap` {hinge under the decoy :math:`\le \rho_{max}`}; after a burn-in the last
:math:`\epsilon n` points are the attack. The inner problem (a linear objective over a ball, a slab, a box
and a halfspace) is solved exactly by Lagrange duality on the two linear constraints with an exact
ball-and-box oracle (:func:`max_linear_over_region`, tested against Steinhardt's closed form, a grid and
scipy's SLSQP) instead of Gurobi.

Defense evaluation lives in :mod:`poisoning.defenses.evaluate` (the SVD defense included).

Deviations from the paper: FISTA and a dual bracketing solver instead of the Gurobi/cvxpy QPs, smoothed
hinge (``t``) instead of the hinge when training the victim, the attacker's thresholds at fixed clean-score
percentiles; the min-max attack keeps its best decoy by the retrained victim's target loss (the release: by
test error after the defenses) and does not keep the release's best intermediate attack (every 25 rounds).

References: P. W. Koh, J. Steinhardt, P. Liang, "Stronger data poisoning attacks break data sanitization
defenses", Machine Learning 111, 2022. P. W. Koh, P. Liang, "Understanding black-box predictions via
influence functions", ICML 2017. A. Beck, M. Teboulle, "A fast iterative shrinkage-thresholding algorithm",
SIAM J. Imaging Sciences 2, 2009 (FISTA).
"""

from __future__ import annotations

import functools
import time
from typing import Any, Literal, NamedTuple

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
    "Decoy",
    "generate_decoys",
    "max_linear_over_region",
    "MinMaxSetup",
    "minmax_setup",
    "worst_point_under_decoy",
    "minmax_attack",
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

    def candidates():
        for params in decoys:
            _, G_b = kkt_target_gradient(params, X_clean, y_clean, n_poison, victim=victim)
            cand = {int(round(v)) for v in np.linspace(0, n_poison, int(splits))} if splits >= 2 else set()
            cand.add(int(round(np.clip((n_poison + float(G_b)) / 2, 0, n_poison))))
            cand = {_min_copies_split(c, n_poison, min_copies * len(pos), min_copies * len(neg)) for c in cand}
            for c_pos in sorted(cand):
                counts = np.zeros(len(y_loc))
                counts[pos] = c_pos // len(pos) + (np.arange(len(pos)) < c_pos % len(pos))
                counts[neg] = (n_poison - c_pos) // len(neg) + (np.arange(len(neg)) < (n_poison - c_pos) % len(neg))
                x = kkt_poison(params, X_clean, y_clean, start.X, y_loc, counts, victim=victim,
                               percentile=percentile, shrink=shrink, loss_percentile=loss_percentile,
                               centroids=centroids, box=box, iters=iters)
                yield PoisonPoints(np.asarray(x), y_loc, counts=counts.astype(int))

    return _best_candidate(victim, X_clean, y_clean, X_tgt, y_tgt, candidates(), "kkt", t0)


def _best_candidate(victim, X_clean, y_clean, X_tgt, y_tgt, poisons, mode: str, t0: float,
                    n_steps: int | None = None, clean=None) -> AttackResult:
    """The poison of ``poisons`` (an iterable) whose retrained victim has the highest target loss, as an
    :class:`~poisoning.attack.AttackResult`: ``history[0]`` the target loss of every candidate, ``n_steps``
    (default: the number of candidates), ``seconds`` the wall time since ``t0``; ``clean``: the clean fit."""
    clean = fit_victim(victim, X_clean, y_clean) if clean is None else clean
    hist, best = [], (-np.inf, None, None)
    for poison in poisons:
        p = fit_poisoned(victim, X_clean, y_clean, poison, warm_start=clean)
        v = float(error_generic(victim, p, X_tgt, y_tgt))
        hist.append(v)
        if v > best[0]:
            best = (v, poison, p)
    v, poison, p = best
    return AttackResult(poison=poison, params=p, params_clean=clean, objective=v,
                        objective_clean=float(error_generic(victim, clean, X_tgt, y_tgt)),
                        history=(np.asarray(hist),), block_params=(p,), block_objective=np.asarray([v]),
                        n_steps=np.asarray([len(hist) if n_steps is None else n_steps]),
                        seconds=np.asarray([time.perf_counter() - t0]), compile_seconds=0.0,
                        stalled=np.asarray([False]), mode=mode)


# ------------------------------------------------------------------------------------------------
# improved decoys (the release's generateTheta) and the min-max attack (Sec. 4.3, generateAttackTar)
# ------------------------------------------------------------------------------------------------
class Decoy(NamedTuple):
    """A decoy parameter set of :func:`generate_decoys`: the parameters, the clean training loss (mean
    smoothed hinge of the victim) and the 0-1 error on the development set under them, and the
    ``quantile`` / ``reps`` that made it."""

    params: Any
    train_loss: float
    dev_error: float
    quantile: float
    reps: int


MNIST_QUANTILES = (0.05, 0.07, 0.10, 0.12, 0.15, 0.18, 0.20, 0.22, 0.25)   # the release's MNIST / Dogfish tapes
MNIST_REPS = (1, 2, 3, 5, 8, 12, 18, 25)


def generate_decoys(X_clean, y_clean, X_dev, y_dev, *, victim=None, quantiles=MNIST_QUANTILES, reps=MNIST_REPS,
                    prune: bool = True) -> list:
    r"""Decoy parameters as in the release's ``generateTheta`` (Koh et al. 2022, Sec. 4.1): train the victim
    on the clean data; for every quantile :math:`q` and repetition count :math:`r`, take the development
    points whose margin :math:`\sigma_i f(x_i)` under the clean model lies below its :math:`q`-quantile (the
    points that would be *most wrong* with their labels flipped), flip their labels, add them :math:`r`
    times to the clean data and retrain. With ``prune`` keep only the Pareto front of (clean training loss
    low, development error high), sorted by development error, highest first (``pruneTheta``).
    Labels 0/1. Returns a list of :class:`Decoy`."""
    quantiles, reps = tuple(float(q) for q in quantiles), tuple(int(r) for r in reps)
    if not quantiles or not reps or any(not 0.0 < q <= 1.0 for q in quantiles) or any(r < 1 for r in reps):
        raise ValueError(f"arguments 'quantiles' (in (0, 1]) and 'reps' (>= 1) must be non-empty, got "
                         f"{quantiles!r}, {reps!r}")
    victim = _victim(victim)
    X_clean, y_clean = np.asarray(X_clean, float), np.asarray(y_clean).astype(int)
    X_dev, y_dev = np.asarray(X_dev, float), np.asarray(y_dev).astype(int)
    base = fit_victim(victim, X_clean, y_clean)
    margins = (2 * y_dev - 1) * np.asarray(victim.decision(base, X_dev))
    X = np.concatenate([X_clean, X_dev])
    y = np.concatenate([y_clean, 1 - y_dev])
    out = []
    for q in quantiles:
        chosen = margins < np.quantile(margins, q)
        if not chosen.any():
            continue
        for r in reps:
            c = np.concatenate([np.ones(len(y_clean)), np.where(chosen, float(r), 0.0)])
            p = fit_victim(victim, X, y, c, warm_start=base)
            out.append(Decoy(p, float(np.mean(np.asarray(victim.loss(p, X_clean, y_clean)))),
                             float(np.mean(np.asarray(victim.predict(p, X_dev)) != y_dev)), q, r))
    out.sort(key=lambda d: -d.dev_error)
    if prune:
        front, best = [], np.inf
        for d in out:
            if d.train_loss < best:
                front.append(d)
                best = d.train_loss
        out = front
    return out


def _ball_box_argmax(c, center, radius, lo, hi):
    r""":math:`\arg\max_x \langle c, x\rangle` over :math:`\|x - \mu\| \le r`, :math:`lo \le x \le hi`
    (:math:`\mu` inside the box), exactly: the maximiser is :math:`x(t) = \mathrm{clip}(\mu + t c, lo, hi)`
    with the smallest :math:`t \ge 0` at which :math:`\|x(t) - \mu\| = r` (Lagrange, coordinate-wise), or
    the box's own maximiser when that stays inside the ball. :math:`\|x(t) - \mu\|^2` is piecewise quadratic
    in :math:`t` with a breakpoint where each coordinate saturates: sort them, find the segment, solve."""
    lo = jnp.broadcast_to(jnp.asarray(lo, c.dtype), c.shape)
    hi = jnp.broadcast_to(jnp.asarray(hi, c.dtype), c.shape)
    pos, neg = c > 0, c < 0
    t_sat = jnp.where(pos, (hi - center) / jnp.where(pos, c, 1.0),
                      jnp.where(neg, (lo - center) / jnp.where(neg, c, 1.0), jnp.inf))
    t_sat = jnp.maximum(t_sat, 0.0)
    order = jnp.argsort(t_sat)
    ts, c2 = t_sat[order], (c * c)[order]
    finite = jnp.isfinite(ts)
    ts0 = jnp.where(finite, ts, 0.0)
    contrib = c2 * ts0 * ts0
    B = jnp.cumsum(contrib) - contrib                      # saturated coordinates before breakpoint k
    A = jnp.cumsum(c2[::-1])[::-1]                         # still moving at breakpoint k
    f = jnp.where(finite, B + ts0 * ts0 * A, jnp.inf)      # ||x(t_k) - mu||^2
    r2 = radius * radius
    hit = f >= r2
    k = jnp.argmax(hit)
    ok = jnp.any(hit) & (A[k] > 0)
    t = jnp.sqrt(jnp.maximum(r2 - B[k], 0.0) / jnp.where(ok, A[k], 1.0))
    corner = jnp.where(pos, hi, jnp.where(neg, lo, center))
    return jnp.where(ok, jnp.clip(center + t * c, lo, hi), corner)


def max_linear_over_region(c, center, direction, sphere_radius, slab_radius, lo, hi, a, beta, iters: int = 60):
    r""":math:`\arg\max_x \langle c, x\rangle` over the sphere :math:`\|x - \mu\| \le r`, the slab
    :math:`|\langle x - \mu, u\rangle| \le \tau` (``u`` a unit vector), the box :math:`[lo, hi]^d` and the
    halfspace :math:`\langle a, x\rangle \ge \beta` (the min-max attack's inner problem: the decoy's loss
    constraint; ``a = 0``, ``beta = 0`` drops it, ``slab_radius = inf`` the slab).

    By Lagrange duality on the two linear constraints (Slater: a strictly feasible point), the maximiser is
    :math:`x(\eta, \nu) = \arg\max_{\text{sphere}\cap\text{box}}\langle c - \eta u + \nu a, x\rangle`
    (:func:`_ball_box_argmax`, exact) at the minimiser of the convex dual
    :math:`q(\eta, \nu) = \tau|\eta| + \eta\langle u, \mu\rangle - \nu\beta + \sigma(c - \eta u + \nu a)`,
    :math:`\nu \ge 0`. Its partial derivatives :math:`\tau\,\mathrm{sign}\,\eta - \langle u, x - \mu\rangle`
    (increasing in :math:`\eta`) and :math:`\langle a, x\rangle - \beta` (increasing in :math:`\nu` at the
    best :math:`\eta`) are found zero by nested bisection (``iters`` halvings each, brackets
    :math:`10^4` times the scale of :math:`c`); the sphere is active for an interior centroid, so
    :math:`x(\eta, \nu)` is continuous and the bisection limit is feasible up to the bracket's resolution.
    When the halfspace misses sphere :math:`\cap` slab :math:`\cap` box, the point closest to it is returned
    (``<a, x> < beta``: check it). Shapes: ``(d,)`` vectors, scalar radii and ``beta``."""
    return _max_linear_jit(c, center, direction, sphere_radius, slab_radius, lo, hi, a, beta, iters=int(iters))


def _max_linear(c, center, direction, sphere_radius, slab_radius, lo, hi, a, beta, iters: int = 60):
    dtype = c.dtype
    m, u = center, direction
    scale = jnp.sqrt(jnp.sum(c * c)) + 1e-30
    a_norm = jnp.sqrt(jnp.sum(a * a))
    has_a = a_norm > 0
    tol_x = 1e-11 * (sphere_radius + jnp.sqrt(jnp.sum(m * m)) + 1.0) if dtype == jnp.float64 else \
        1e-5 * (sphere_radius + jnp.sqrt(jnp.sum(m * m)) + 1.0)

    def x_of(eta, nu):
        return _ball_box_argmax(c - eta * u + nu * a, m, sphere_radius, lo, hi)

    def x_at(nu):
        """The slab-feasible maximiser for the multiplier nu of the halfspace: the slab face that binds at
        eta = 0 (if any) gives the sign sg of eta; its slack at eta = sg t increases with t."""
        x0 = x_of(jnp.zeros((), dtype), nu)
        excess = jnp.sum(u * (x0 - m))
        sg = jnp.where(excess > 0, 1.0, -1.0).astype(dtype)

        def phi(t):
            x = x_of(sg * t, nu)
            return slab_radius - sg * jnp.sum(u * (x - m)), x

        cn = c + nu * a
        start = 1e-3 * (jnp.sqrt(jnp.sum(cn * cn)) + 1e-30)
        return _root_from_zero(phi, slab_radius - jnp.abs(excess), x0, start, iters, tol_x)

    def h(nu):
        x = x_at(nu)
        return jnp.sum(a * x) - beta, x

    zero = jnp.zeros((), dtype)
    x0 = x_at(zero)
    h0 = jnp.where(has_a, jnp.sum(a * x0) - beta, 0.0)
    return _root_from_zero(h, h0, x0, 1e-3 * scale / jnp.where(has_a, a_norm, 1.0), iters, tol_x * a_norm)


def _root_from_zero(phi, f0, x0, start, iters, ftol):
    """Primal recovery at the root of an increasing function on ``[0, inf)``: ``phi(t) -> (value, x)`` with
    ``value`` affine in the point ``x``, and ``(f0, x0) = phi(0)``. When ``f0 >= 0`` returns ``x0``. Else grow
    the bracket geometrically from ``start`` (x4 per step) until ``value > 0``, then regula falsi with the
    Illinois rule (at most ``iters`` evaluations in all, stopping once ``|value| <= ftol``), and return the
    point of the segment between the bracket's two points where the value is zero (the argmax may jump at
    the root, across a flat face of the box: both ends and their convex combination are in the set)."""
    dtype = f0.dtype

    def cond(st):
        i, _, _, f_lo, f_hi, v_lo, v_hi, _, _, _, found = st
        best = jnp.where(found, jnp.minimum(jnp.abs(v_lo), jnp.abs(v_hi)), jnp.abs(v_lo))
        return (i < iters) & (best > ftol) & (f0 < 0)

    def body(st):
        i, lo, hi, f_lo, f_hi, v_lo, v_hi, x_lo, x_hi, side, found = st
        denom = f_hi - f_lo
        secant = jnp.where(denom > 0, (lo * f_hi - hi * f_lo) / jnp.where(denom > 0, denom, 1.0), 0.5 * (lo + hi))
        secant = jnp.where((secant > lo) & (secant < hi), secant, 0.5 * (lo + hi))
        t = jnp.where(found, secant, hi)
        ft, xt = phi(t)
        up = ft > 0
        # growing: a positive value closes the bracket, else the left end moves and the right one grows;
        # Illinois: halve the stale end's value when the same end moves twice
        f_lo_n = jnp.where(up, jnp.where(found & (side == 1), 0.5 * f_lo, f_lo), ft)
        f_hi_n = jnp.where(up, ft, jnp.where(found & (side == -1), 0.5 * f_hi, f_hi))
        hi_n = jnp.where(up, t, jnp.where(found, hi, 4.0 * t))
        return (i + 1, jnp.where(up, lo, t), hi_n, f_lo_n, f_hi_n, jnp.where(up, v_lo, ft), jnp.where(up, ft, v_hi),
                jnp.where(up, x_lo, xt), jnp.where(up, xt, x_hi), jnp.where(up, 1, -1), found | up)

    zero = jnp.zeros((), dtype)
    inf = jnp.asarray(jnp.inf, dtype)
    init = (0, zero, jnp.asarray(start, dtype), f0, inf, f0, inf, x0, x0, 0, jnp.asarray(False))
    st = jax.lax.while_loop(cond, body, init)
    _, _, _, _, _, v_lo, v_hi, x_lo, x_hi, _, found = st
    ok = found & (v_hi > v_lo)
    theta = jnp.clip(jnp.where(ok, v_hi / jnp.where(ok, v_hi - v_lo, 1.0), 1.0), 0.0, 1.0)
    return jnp.where(found, theta * x_lo + (1.0 - theta) * x_hi, x_lo)


_max_linear_jit = jax.jit(_max_linear, static_argnames=("iters",))


class MinMaxSetup(NamedTuple):
    """The feasible set of the min-max attack (a pytree): per class ``centroids``, unit slab
    ``directions``, ``sphere_radii``, ``slab_radii`` ``(2, ...)``, and the box ``lo``, ``hi``."""

    centroids: Any
    directions: Any
    sphere_radii: Any
    slab_radii: Any
    lo: Any
    hi: Any


@functools.partial(jax.jit, static_argnames=("iters",))
def worst_point_under_decoy(w, b, setup: MinMaxSetup, decoy_w, decoy_b, rho_max, iters: int = 60):
    r"""The min-max attack's inner step: per class :math:`y` (sign :math:`\sigma`), the point of
    :math:`F_y` = sphere :math:`\cap` slab :math:`\cap` box :math:`\cap \{1 - \sigma(\langle w_d, x\rangle + b_d)
    \le \rho_{max}\}` (small hinge under the decoy :math:`\theta_d`) that maximises the hinge
    :math:`1 - \sigma(\langle w, x\rangle + b)` under the current model (:func:`max_linear_over_region`
    with :math:`c = -\sigma w`; both classes at once, ``vmap``); then the class with the larger hinge (ties to
    class 0). ``decoy_w = None`` or zeros: no decoy constraint (Steinhardt et al.'s candidate attack on this
    region). Returns ``(x, y, hinge)``."""
    signs = jnp.array([-1.0, 1.0], w.dtype)
    if decoy_w is None:
        A, beta = jnp.zeros((2,) + w.shape, w.dtype), jnp.zeros((2,), w.dtype)
    else:
        A, beta = signs[:, None] * decoy_w[None, :], 1.0 - rho_max - signs * decoy_b
    solve = jax.vmap(functools.partial(_max_linear, iters=iters), in_axes=(0, 0, 0, 0, 0, None, None, 0, 0))
    xs = solve(-signs[:, None] * w[None, :], setup.centroids, setup.directions, setup.sphere_radii, setup.slab_radii,
               setup.lo, setup.hi, A, beta)
    losses = jnp.maximum(0.0, 1.0 - signs * (xs @ w + b))
    k = jnp.where(losses[1] > losses[0], 1, 0)
    return xs[k], k.astype(jnp.int32), jnp.max(losses)


@functools.partial(jax.jit, static_argnames=("rounds", "iters"))
def _minmax_scan(X, s, setup, w0, b0, decoy_w, decoy_b, rho_max, eps, wd, eta, rounds: int, iters: int):
    n = X.shape[0]

    def step(carry, _):
        w, b, Gw, Gb = carry
        x, k, hinge = worst_point_under_decoy(w, b, setup, decoy_w, decoy_b, rho_max, iters)
        sk = 2.0 * k.astype(X.dtype) - 1.0
        active = (s * (X @ w + b) < 1.0).astype(X.dtype)
        coef = -(active * s) / n
        act_p = (hinge > 0).astype(X.dtype)
        g_w = coef @ X - eps * act_p * sk * x + wd * w
        g_b = jnp.sum(coef) - eps * act_p * sk
        Gw, Gb = Gw + g_w * g_w, Gb + g_b * g_b
        w_new = w - eta * g_w / jnp.sqrt(Gw)
        b_new = b - eta * g_b / jnp.sqrt(Gb)
        return (w_new, b_new, Gw, Gb), (x, k, hinge, w, b)

    init = (w0, b0, jnp.ones_like(w0), jnp.ones_like(b0))
    _, out = jax.lax.scan(step, init, None, length=rounds)
    return out   # per round: the point, its class, its hinge, and the model (w, b) it was chosen against


def minmax_setup(X_clean, y_clean, *, percentile: float = 90.0, shrink: float = 0.98, box=(0.0, 1.0)) -> MinMaxSetup:
    """The release's guard for the min-max attack: sphere and slab around the clean class centroids, radii at
    the ``percentile``-th percentile of the clean scores (the release: 90, i.e. ``p = 0.10``), times
    ``shrink``; the box ``box`` (``None``: unbounded). Labels 0/1."""
    region = SanitizerRegion(X_clean, y_clean, np.array([0, 1]), None, percentile=percentile, shrink=shrink,
                             centroids="clean", box=None if box is None else tuple(box))
    mu = region.centroids_of(jnp.zeros((2, region.X_clean.shape[1]), region.X_clean.dtype))
    u, r, s = region.thresholds(mu)
    lo, hi = (-jnp.inf, jnp.inf) if box is None else (float(box[0]), float(box[1]))
    dtype = region.X_clean.dtype
    return MinMaxSetup(mu, u, r, s, jnp.asarray(lo, dtype), jnp.asarray(hi, dtype))


def minmax_attack(X_clean, y_clean, X_tgt, y_tgt, n_poison: int, decoys, *, victim=None, rho_max: float = 0.25,
                  copies: int = 2, burn_frac: float | None = None, eta: float = 0.03, wd: float | None = None,
                  percentile: float = 90.0, shrink: float = 0.98, box=(0.0, 1.0), iters: int = 60) -> AttackResult:
    r"""The improved min-max attack of Koh et al. (2022, Sec. 4.3; the release's ``generateAttackTar``), once
    per decoy, the best kept (labels 0/1).

    An online learner (hinge loss + the victim's weight decay ``wd``, AdaGrad with step ``eta`` and unit
    initial accumulators, started at the clean victim) plays against the attacker: each round the attacker
    adds ``copies`` copies of the point of largest hinge under the current model :math:`\theta_t` within the
    feasible set *and* with hinge at most ``rho_max`` under the decoy :math:`\theta_d`
    (:func:`worst_point_under_decoy`: sphere and slab around the clean centroids at the ``percentile``-th
    percentile times ``shrink``, the box, :func:`minmax_setup`), then the learner steps on
    :math:`\frac1n\nabla L(\theta; D_c) + \epsilon\nabla\ell(\theta; x_t, y_t) + wd\,w`. The decoy
    constraint steers the learner toward :math:`\theta_d` (a model with high target error and low clean
    loss, :func:`generate_decoys`). After ``burn_frac * eps n`` burn-in points (default the release's
    MNIST-1-7 rule :math:`\max(0.33, 0.02/\epsilon - 1)`), the last :math:`\epsilon n` points are the attack
    (one location per round with ``copies`` copies). The victim is retrained on each decoy's attack and the
    one with the highest mean target loss wins (the release picks by test error after the defenses).

    ``decoys``: parameter pytrees ``{"w", "b"}`` or :class:`Decoy`; ``None`` inside means no decoy
    constraint. Returns an :class:`~poisoning.attack.AttackResult` with ``mode="minmax"``:
    ``history[0]`` the target loss per decoy; ``n_steps`` the rounds per decoy."""
    if n_poison < 1:
        raise ValueError(f"argument 'n_poison' must be >= 1, got {n_poison}")
    if copies < 1:
        raise ValueError(f"argument 'copies' must be >= 1, got {copies}")
    if len(decoys) == 0:
        raise ValueError("argument 'decoys' must hold at least one parameter set (or None)")
    if not (np.isfinite(rho_max) and rho_max >= 0):
        raise ValueError(f"argument 'rho_max' must be a finite number >= 0, got {rho_max!r}")
    t0 = time.perf_counter()
    victim = _victim(victim)
    dtype = jnp.result_type(float)
    X_clean, y_clean = np.asarray(X_clean, float), np.asarray(y_clean).astype(int)
    n = len(y_clean)
    eps = n_poison / n
    if burn_frac is None:
        burn_frac = max(0.33, 0.02 / eps - 1.0)
    n_burn = int(round(burn_frac * n_poison))
    rounds_att = -(-n_poison // copies)
    rounds = rounds_att + -(-n_burn // copies)
    clean = fit_victim(victim, X_clean, y_clean)
    if wd is None:   # the victim's own regulariser on w, read off its training objective
        wd = float(getattr(victim, "wd", 0.0)) or _weight_decay(victim, X_clean, y_clean)
    setup = minmax_setup(X_clean, y_clean, percentile=percentile, shrink=shrink, box=box)
    Xj = jnp.asarray(X_clean, dtype)
    s = jnp.asarray(2.0 * y_clean - 1.0, dtype)
    counts = np.full(rounds_att, copies)
    counts[-1] = n_poison - copies * (rounds_att - 1)

    def candidates():
        for d in decoys:
            d = d.params if isinstance(d, Decoy) else d
            dw = jnp.zeros(X_clean.shape[1], dtype) if d is None else jnp.asarray(d["w"], dtype)   # zeros: no decoy
            db = jnp.zeros((), dtype) if d is None else jnp.asarray(d["b"], dtype)
            xs, ks, _, _, _ = _minmax_scan(Xj, s, setup, jnp.asarray(clean["w"], dtype),
                                           jnp.asarray(clean["b"], dtype), dw, db, jnp.asarray(rho_max, dtype),
                                           jnp.asarray(eps, dtype), jnp.asarray(wd, dtype), jnp.asarray(eta, dtype),
                                           rounds=rounds, iters=int(iters))
            yield PoisonPoints(np.asarray(xs[-rounds_att:]), np.asarray(ks[-rounds_att:]).astype(int), counts=counts)

    return _best_candidate(victim, X_clean, y_clean, X_tgt, y_tgt, candidates(), "minmax", t0,
                           n_steps=rounds * len(decoys), clean=clean)


def _weight_decay(victim, X, y) -> float:
    """``wd`` of a victim whose training objective is mean loss + wd/2 ||w||^2: read off at w = e_1."""
    d = X.shape[1]
    theta = {"w": jnp.zeros(d).at[0].set(1.0), "b": jnp.zeros(())}
    Xj, yj = jnp.asarray(X[:1], float), victim.encode(np.asarray(y[:1]), jnp.result_type(float))
    reg = victim.train_loss(theta, Xj, yj, jnp.ones(1)) - jnp.mean(victim.loss_fn(theta, Xj, yj))
    return float(2.0 * reg)
