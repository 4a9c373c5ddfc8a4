r"""The attack x defense matrix: every convex attack, naive and adaptive, after every sanitizer, with the certificate.

Protocol. A binary data set (``--dataset mnist17``: MNIST digits 1 -> class 1 and 7 -> class 0, pixels in
[0, 1], ``--pool`` x ``--pool`` average-pooled on CPU; ``spambase``: UCI Spambase min-max scaled; without the
files, scikit-learn's digits 1 vs 7 or breast cancer, flagged ``"fallback": true``), ``--n-train`` clean
training points, a held-out validation split (the attacker's target set, ``--n-val``) and the test set. One
victim for every cell: the smoothed-hinge linear SVM of Koh et al. (:func:`poisoning.victims.smooth_svm`,
``--wd``, ``--t``). For each poisoned fraction :math:`\epsilon` (``--eps``), :math:`\epsilon n` poison points:

- ``biggio2012``: the summed validation hinge of Biggio et al. (:func:`poisoning.attacks.biggio2012.biggio_attack`,
  its objective, box and unit steps, against the matrix's victim);
- ``munoz2017``: the error-generic attack (:func:`poisoning.attacks.munoz2017.munoz_attack`, backtracking);
- ``koh2022_influence``: Koh et al.'s influence attack (mean validation smoothed hinge, row-normalized steps);
- ``koh2022_kkt``: Koh et al.'s KKT attack from decoy parameters (:func:`poisoning.attacks.koh2022.kkt_attack`);
- ``koh2022_minmax``: Koh et al.'s min-max attack (:func:`poisoning.attacks.koh2022.minmax_attack`: an online
  learner against the worst feasible point of hinge at most 0.25 under a decoy, ``--minmax-copies`` copies a
  round; the same decoys as the KKT attack);
- ``label_flip``: greedy label flipping with the flipped points *added* as copies
  (:func:`poisoning.attacks.label_flip.greedy_flip_attack` on a :class:`~poisoning.attack.PoisonWeights` of
  every training point with its label flipped);
- ``subpopulation``: Jagielski et al. (2021): label-flipped copies of the training points of the largest
  k-means cluster (ClusterMatch, :mod:`poisoning.attacks.subpopulation`); ``target_error`` is the error on
  that cluster's test points.

The point attacks (the first four) place the :math:`\epsilon n` points at ``--locations`` distinct locations
(copies; Koh et al.'s setting), started at label-flipped clean points, ascended jointly for ``--steps``
steps. Left out: Jagielski et al.'s OptP (a regression attack: it optimizes real-valued labels against the MSE; its
classification form, gradient ascent of the validation loss over the poison features, is the Biggio /
Muñoz-González rows).

Each attack is run **naive** (its own feasible set: the box) and **adaptive** against each defense, with the
same number of ascent steps (``naive_steps`` in the config): the adaptive attacker spends ``--loop-rounds`` x
``--loop-steps`` steps with the defense in its loop (stage 3), so the naive point poison gets as many more steps
of its own ascent without the defense (the KKT and min-max poisons, built without steps, get that many steps of
the influence attack's ascent). The attacker knows the clean data and the defense (Steinhardt et al. 2017; Koh et
al. 2022), so the adaptive poison against defense ``D`` is chosen in three stages
(:mod:`poisoning.attacks.defense_loop`):

1. candidates: the naive poison (continued, at the full budget) and the same before its continuation
   (``naive_start``, at ``--steps``); the region-constrained poison of the one door
   :func:`poisoning.attacks.adaptive.adaptive_attack` (the defense's region, cut-offs at the ``--percentile``
   of clean scores, replaces the point attacks' feasible set; the label attacks draw only from the candidates
   the defense keeps), crafted once per region (sphere and slab share one; loss, SEVER and RONI one; k-NN and
   label sanitization one; SVD one); the naive poison projected into ``D``'s region (point attacks); and,
   against k-NN and label sanitization, each of these with its copies concentrated onto locations of
   ``k + 1`` (k-NN) or ``label_k // 2 + 2`` (label sanitization) copies, which those defenses cannot see,
   and against RONI each with every copy on one location (its copies in RONI's validation draws lower its
   measured impact; :func:`poisoning.attacks.defense_loop.copies_to_survive`);
2. selection: among the candidates at ``--steps`` (all but the full-budget naive poison and its concentrated
   form), the one of highest *simulated* defended error on the attacker's validation split (``D``
   run by the attacker on clean + poison, the victim retrained on the survivors; never the test set; RONI's
   draws from ``seed + 1``: the attacker knows the defense, not the defender's random draws; by default
   (``--roni-simulation external``) RONI is simulated by scoring the poison locations against draws of the
   clean pool, which misses that a location's own copies in RONI's validation draws lower its impact, so it
   underestimates how much of a many-copy poison RONI keeps; ``exact`` runs RONI itself, 2 n T fits a call;
   ``--roni-draws`` averages the simulation over that many of the attacker's own draws);
3. defense in the loop (point attacks, ``--loop-rounds`` rounds of ``--loop-steps`` steps): ascent of the
   attack's objective against the victim trained on the simulated survivors (keep mask fixed within a
   round, recomputed between rounds); then the best of the loop's iterates and the full-budget candidates;
4. against RONI, whose simulated score is random in its draws, the choice replaces the naive poison only if it
   still scores higher on ``--confirm-draws`` fresh draws (:func:`poisoning.attacks.defense_loop.confirm_choice`),
   by more than ``--confirm-z`` standard errors of its lead (over the draws and the validation points): chosen
   as the maximum of noisy scores, its lead on the selection draws is biased upwards (the winner's curse).

Since the naive poison is a candidate, the adaptive one is at least as strong as the naive one on the
attacker's own estimate, after as many steps; on the test set it can still lose. ``adaptive_vs_naive`` counts, per defense,
strict wins, ties (equal test error) and losses on the test error, and the same on the simulated validation
error. Koh et al.'s KKT attack is defense-aware by construction (sphere + slab + loss of the decoy): its
naive form uses the loosest region (100th percentile, no loss constraint, no copies rule), its
region-constrained form the release's, projected into each defense's region; its loop ascends the influence
attack's objective. The min-max attack likewise: naive in the loosest region, adaptive in the release's (90th
percentile x 0.98), projected into each defense's region.

Each defense (:data:`poisoning.defenses.evaluate.DEFENSES`: sphere, slab, loss, k-NN, SEVER, RONI, k-NN label
sanitization, SVD) is fit on the poisoned set, removes ``--fraction`` (default :math:`\epsilon`) of each class
(label sanitization relabels instead) and the SVM is retrained: ``test_error``.

The certificate (:func:`experiments.steinhardt2017.bound`): Steinhardt et al.'s upper bound :math:`U^*` on
:math:`\frac1n` hinge(clean + poison) of the norm-constrained hinge SVM (:math:`\rho^2` = ``--rho-squared``,
the paper's 0.8 for raw MNIST pixels) under the
*oracle* sphere + slab defense (70th percentile), per :math:`\epsilon`. Each attack's poison (naive, and the
adaptive one chosen against each defense), projected onto the oracle region (the certificate's feasible set;
``oracle_poison_inside`` is the fraction of copies already inside), added to the clean set and retrained with
that learner (:func:`poisoning.certify.steinhardt.constrained_hinge_svm`), gives ``oracle_objective``, which
must stay below :math:`U^*` (``below_bound``). ``oracle_test_error`` is that model's test 0-1 error (the
paper's comparison:
MNIST-1-7 test error <= 4 % under a bound of about 7 % for eps <= 0.3).

Outputs (``--out``): ``results.json`` (``rows``: ``attack``, ``mode``, ``defense``, ``eps``, ``test_error``,
``no_defense_error``, ``poison_kept``, ``n_poison``, ``bound``, and for adaptive rows ``chosen``,
``val_error_sim``, ``val_error_sim_naive``, ``candidates_val_error_sim``, ``loop_history``,
``best_on_selection_draws``, ``val_error_sim_fresh_draws``, ``fresh_draws_lead`` and ``fresh_draws_lead_se``
(RONI's winner's-curse check); with
``--defender-draws D > 1``, RONI's ``test_error`` and ``poison_kept`` are means over the defender's D draws and
``test_error_draws`` lists them (the naive and the adaptive poison meet the same D draws, so
``adaptive_vs_naive`` also gives the paired difference, its standard error over the draws, and the cells where it
exceeds two standard errors either way); ``bounds``: per
eps, ``bound`` and each attack's (``ATTACK/naive``, ``ATTACK/adaptive/DEFENSE``) ``oracle_objective`` /
``oracle_test_error`` / ``below_bound``; ``adaptive_vs_naive``; ``clean_error`` per defense; ``paper``),
``heatmap_eps*.png`` (attacks x defenses, naive and adaptive panels), checkpoint and resume
(``OUT/checkpoint.npz``, ``--resume``).

Usage::

    python -m experiments.defense_matrix --data-dir DIR --dataset mnist17 --eps 0.03 0.1
    python -m experiments.defense_matrix --quick --out /tmp/dm        # digits 1 vs 7, tiny
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Any, Sequence

import numpy as np

from experiments import _cli

__all__ = ["ATTACKS", "LEFT_OUT", "PAPER", "adaptive_vs_naive", "build_parser", "run", "main"]

ATTACKS = ("biggio2012", "munoz2017", "koh2022_influence", "koh2022_kkt", "koh2022_minmax", "label_flip",
           "subpopulation")
POINT_ATTACKS = ("biggio2012", "munoz2017", "koh2022_influence")   # gradient ascent for --steps steps
CONSTRUCTED = ("koh2022_kkt", "koh2022_minmax")                    # new points built in one go (no steps)
DRAW_STRIDE = 10_007               # the defender's j-th draw has seed + j * DRAW_STRIDE (never an attacker's seed)
LEFT_OUT = {
    "jagielski2018_optp": "a regression attack (real-valued labels, MSE); its classification form is the "
                          "Biggio / Munoz-Gonzalez gradient ascent already in the matrix",
}
# /work/shared/reference/paper-protocols.md, sections 3a and 3b (only what the papers state in numbers)
PAPER = {
    "steinhardt2017": {"mnist17_oracle_max_test_error": 0.04, "mnist17_oracle_upper_bound": 0.07,
                       "mnist17_data_dependent_eps0.3_test_error": 0.40,
                       "note": "oracle sphere+slab, eps <= 0.3: test error <= 4 %, certified bound ~7 % (MNIST-1-7)"},
    "koh2022": {"eps": 0.03, "enron_test_error": [0.03, 0.24], "imdb_test_error": [0.12, 0.29],
                "note": "eps = 3 %, past sphere/slab/loss/SVD/k-NN: Enron 3 % -> 24 %, IMDB 12 % -> 29 %; the "
                        "MNIST-1-7 / attack x defense table was not retrieved"},
}


def build_parser():
    p = _cli.base_parser(__doc__.split("\n")[0], default_out="runs/defense_matrix")
    p.add_argument("--dataset", choices=("mnist17", "spambase"), default="mnist17")
    p.add_argument("--eps", type=float, nargs="+", default=[0.03, 0.1], help="poisoned fractions in (0, 1)")
    p.add_argument("--n-train", type=int, default=600, help="clean training points (0 = all)")
    p.add_argument("--n-val", type=int, default=300, help="the attacker's validation (target) points")
    p.add_argument("--n-test", type=int, default=0, help="test points (0 = all)")
    p.add_argument("--pool", type=int, default=2, help="mnist17: average-pool the 28x28 images by this factor")
    p.add_argument("--attacks", nargs="+", choices=ATTACKS, default=list(ATTACKS))
    p.add_argument("--defenses", nargs="+", default=None, help="subset of poisoning.defenses.evaluate.DEFENSES")
    p.add_argument("--steps", type=int, default=20, help="ascent steps of the point attacks")
    p.add_argument("--locations", type=int, default=4, help="distinct poison locations of the point attacks")
    p.add_argument("--minmax-copies", type=int, default=2, help="Koh et al.'s min-max attack: copies per round")
    p.add_argument("--step-size", type=float, default=0.5, help="step of the point attacks (Biggio: a tenth)")
    p.add_argument("--wd", type=float, default=0.01)
    p.add_argument("--t", type=float, default=0.01, help="smoothed-hinge temperature")
    p.add_argument("--fraction", type=float, default=None, help="removed per class by each defense (default eps)")
    p.add_argument("--percentile", type=float, default=90.0, help="the adaptive attacker's cut-off percentile")
    p.add_argument("--roni-trials", type=int, default=2)
    p.add_argument("--clusters", type=int, default=10, help="k-means clusters of the subpopulation attack")
    p.add_argument("--bound-steps", type=int, default=2000, help="Algorithm-1 steps of the certificate")
    p.add_argument("--rho-squared", type=float, default=0.8,
                   help="the certificate's ||(w, b)||^2 <= rho^2 (the paper's 0.8 is for raw 28x28 pixels; "
                        "p x p average pooling shrinks norms by p: 0.8 p^2 keeps the margins)")
    p.add_argument("--loop-rounds", type=int, default=2,
                   help="adaptive point attacks: rounds of ascent against the simulated survivors' victim (0: off)")
    p.add_argument("--loop-steps", type=int, default=0, help="ascent steps per round (0: half of --steps)")
    p.add_argument("--roni-simulation", choices=("external", "exact"), default="external",
                   help="the attacker's RONI: poison locations scored against draws of the clean pool (cheap), "
                        "or RONI itself run on clean + poison with the attacker's own draws (2 n T fits a call)")
    p.add_argument("--roni-draws", type=int, default=1,
                   help="the attacker's RONI simulation averaged over this many of its own draws (the expected "
                        "defended error; one draw makes the choice among candidates a winner's curse)")
    p.add_argument("--confirm-draws", type=int, default=4,
                   help="RONI: the chosen poison and the naive one re-scored on this many fresh draws of the "
                        "attacker's simulation (the winner's-curse check; two candidates, so more draws are cheap)")
    p.add_argument("--confirm-z", type=float, default=2.0,
                   help="RONI: the chosen poison replaces the naive one only if its lead on the fresh draws exceeds "
                        "this many standard errors (draws and validation points; 0: any lead)")
    p.add_argument("--defender-draws", type=int, default=1,
                   help="RONI's test error averaged over this many of the defender's draws (seeds seed, seed + "
                        f"{DRAW_STRIDE}, ...; disjoint from the attacker's): its expected value, not one draw's")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    p.add_argument("--no-plots", action="store_true")
    return p


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def _pool(X, side: int, f: int):
    if f <= 1:
        return X
    s = side // f
    return X.reshape(-1, side, side)[:, : s * f, : s * f].reshape(-1, s, f, s, f).mean(axis=(2, 4)).reshape(len(X), -1)


def _load(args):
    from poisoning import datasets as data

    fallback, note = False, None
    if args.dataset == "mnist17":
        try:
            if args.quick:
                raise FileNotFoundError("--quick uses the embedded digits")
            ds = data.load_mnist(_cli.resolve_data_dir(args.data_dir))
            Xtr, ytr = data.binary_pair(ds.X_train, ds.y_train, 1, 7, labels=(1, 0))
            Xte, yte = data.binary_pair(ds.X_test, ds.y_test, 1, 7, labels=(1, 0))
            Xtr, Xte = _pool(Xtr, 28, args.pool), _pool(Xte, 28, args.pool)
            name = f"MNIST-1-7 ({28 // max(args.pool, 1)}x{28 // max(args.pool, 1)})"
        except (FileNotFoundError, OSError) as e:
            ds = data.load_digits(seed=args.seed)
            Xtr, ytr = data.binary_pair(ds.X_train, ds.y_train, 1, 7, labels=(1, 0))
            Xte, yte = data.binary_pair(ds.X_test, ds.y_test, 1, 7, labels=(1, 0))
            name, fallback, note = "digits 1 vs 7", True, f"MNIST not used ({e}); scikit-learn's 8x8 digits instead"
    else:
        try:
            if args.quick:
                raise FileNotFoundError("--quick uses the embedded breast cancer data")
            ds = data.load_spambase(_cli.resolve_data_dir(args.data_dir), seed=args.seed)
            name = "Spambase"
        except (FileNotFoundError, OSError) as e:
            ds = data.load_breast_cancer(seed=args.seed)
            name, fallback = "breast cancer", True
            note = f"Spambase not used ({e}); scikit-learn's breast cancer instead"
        Xtr, ytr, Xte, yte = ds.X_train, ds.y_train, ds.X_test, ds.y_test
    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(len(ytr))
    n_val = min(int(args.n_val), len(perm) // 4)
    val, rest = perm[:n_val], perm[n_val:]
    if args.n_train and args.n_train < len(rest):
        rest = rest[: args.n_train]
    rest = np.sort(rest)
    if args.n_test and args.n_test < len(yte):
        keep = np.sort(rng.permutation(len(yte))[: args.n_test])
        Xte, yte = Xte[keep], yte[keep]
    f = lambda a: np.clip(np.asarray(a, np.float64), 0.0, 1.0)
    return dict(name=name, fallback=fallback, note=note, X=f(Xtr[rest]), y=np.asarray(ytr[rest]).astype(int),
                Xv=f(Xtr[val]), yv=np.asarray(ytr[val]).astype(int), Xt=f(Xte), yt=np.asarray(yte).astype(int))


# ------------------------------------------------------------------------------------------------
# the attacks
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Ctx:
    args: Any
    victim: Any
    X: np.ndarray
    y: np.ndarray
    Xv: np.ndarray
    yv: np.ndarray
    clean: Any
    cluster: Any = None
    attacks: dict = dataclasses.field(default_factory=dict)
    naive: dict = dataclasses.field(default_factory=dict)         # (attack, eps) -> the naive poison
    naive_start: dict = dataclasses.field(default_factory=dict)   # (attack, eps) -> it before the continuation
    decoys: Any = None                                            # the KKT and min-max attacks' decoys
    simulations: dict = dataclasses.field(default_factory=dict)   # (defense, fraction) -> DefenseSimulation


def _point_attack(name, ctx):
    if name not in ctx.attacks:          # one attack object per name: the driver compiles it once
        ctx.attacks[name] = _new_point_attack(name, ctx)
    return ctx.attacks[name]


def _new_point_attack(name, ctx):
    from bilevel.stackelberg import fixed_step
    from poisoning.attack import PoisoningAttack
    from poisoning.attacks.biggio2012 import biggio_attack
    from poisoning.attacks.munoz2017 import munoz_attack
    from poisoning.feasible import Box
    from poisoning.objectives import error_generic

    s = float(ctx.args.step_size)
    if name == "biggio2012":
        return dataclasses.replace(biggio_attack(step_size=s / 10, tol=None), victim=ctx.victim)
    if name == "munoz2017":
        return munoz_attack(ctx.victim, "generic", step_size=s)
    return PoisoningAttack(ctx.victim, error_generic, Box(0.0, 1.0), step=fixed_step(s, "rows"), gain_tol=None)


def _as_points(poison):
    """A PoisonWeights result as the PoisonPoints of its chosen copies."""
    from poisoning.attack import PoisonPoints

    w = np.rint(np.asarray(poison.weights)).astype(int)
    keep = w > 0
    return PoisonPoints(np.asarray(poison.X)[keep], np.asarray(poison.y)[keep], counts=w[keep])


def _greedy_flips(ctx, cands, budget):
    from bilevel.stackelberg import Greedy
    from poisoning.attack import PoisoningAttack, run
    from poisoning.feasible import Unconstrained
    from poisoning.objectives import error_generic

    m = len(np.asarray(cands.y))
    rounds = min(10, budget)
    shares = tuple(budget // rounds + (i < budget % rounds) for i in range(rounds))
    once = m >= budget                          # a label flips once, unless fewer candidates than the budget
    attack = PoisoningAttack(ctx.victim, error_generic, Unconstrained(),
                             step=Greedy(shares=shares, exclude_active=once, cycle=None), gain_tol=None,
                             return_best=False)
    res = run(attack, ctx.X, ctx.y, cands, (ctx.Xv, ctx.yv), steps=len(shares), warm_start=ctx.clean)
    return _as_points(res.poison)


def _subpop_poison(ctx, cands, budget):
    from poisoning.attack import PoisonPoints
    from poisoning.attacks.subpopulation import label_flip_counts

    m = len(np.asarray(cands.y))
    _, counts = label_flip_counts(np.ones(m, bool), budget, ctx.args.seed)
    keep = counts > 0
    return PoisonPoints(np.asarray(cands.X)[keep], np.asarray(cands.y)[keep], counts=counts[keep])


def _craft(attack_name, mode, region_defense, ctx, n_poison):
    """The poison of one (attack, mode, region) at ``n_poison`` points, as a PoisonPoints with counts."""
    from poisoning.attack import PoisonWeights, run
    from poisoning.attacks import adaptive as A
    from poisoning.attacks import koh2022 as K
    from poisoning.defenses.evaluate import fit_poisoned

    a = ctx.args
    adaptive = mode == "adaptive"
    if attack_name in POINT_ATTACKS:
        attack = _point_attack(attack_name, ctx)
        poison = K.initial_poison(ctx.X, ctx.y, n_poison, a.locations, a.seed)
        warm = ctx.clean
        if adaptive:
            attack, poison = A.adaptive_attack(attack, region_defense, ctx.X, ctx.y, poison,
                                               percentile=a.percentile, warm_start=ctx.clean)
            warm = fit_poisoned(ctx.victim, ctx.X, ctx.y, poison, warm_start=ctx.clean)
        res = run(attack, ctx.X, ctx.y, poison, (ctx.Xv, ctx.yv), steps=a.steps, warm_start=warm)
        return res.poison
    if attack_name in CONSTRUCTED and ctx.decoys is None:
        ctx.decoys = K.decoy_parameters(ctx.X, ctx.y, ctx.Xv, ctx.yv, victim=ctx.victim, weights=(0.05, 0.2))
    decoys = ctx.decoys
    if attack_name == "koh2022_minmax":
        # naive: the loosest region (100th percentile, no shrink); adaptive: the release's, then D's region
        poison = K.minmax_attack(ctx.X, ctx.y, ctx.Xv, ctx.yv, n_poison, decoys, victim=ctx.victim,
                                 copies=a.minmax_copies, wd=a.wd, percentile=a.percentile if adaptive else 100.0,
                                 shrink=0.98 if adaptive else 1.0).poison
        return _project_into(region_defense, poison, ctx) if adaptive else poison
    if attack_name == "koh2022_kkt":
        if not adaptive:
            return K.kkt_attack(ctx.X, ctx.y, ctx.Xv, ctx.yv, n_poison, decoys, victim=ctx.victim,
                                n_locations=a.locations, percentile=100.0, shrink=1.0, loss_percentile=None,
                                min_copies=1, seed=a.seed).poison
        poison = K.kkt_attack(ctx.X, ctx.y, ctx.Xv, ctx.yv, n_poison, decoys, victim=ctx.victim,
                              n_locations=a.locations, percentile=a.percentile, loss_percentile=a.percentile,
                              seed=a.seed).poison
        return _project_into(region_defense, poison, ctx)
    # label attacks: candidates = training points with flipped labels
    if attack_name == "label_flip":
        cands = PoisonWeights(ctx.X, 1 - ctx.y, np.zeros(len(ctx.y)))
    else:
        idx = np.flatnonzero(ctx.cluster.mask(ctx.X))
        cands = PoisonWeights(ctx.X[idx], 1 - ctx.y[idx], np.zeros(len(idx)))
    if adaptive:
        # the survivors, or the least suspicious candidates when too few survive (a budget's worth for the
        # greedy flips, a third of the cluster for the subpopulation)
        m = n_poison if attack_name == "label_flip" else max(1, len(np.asarray(cands.y)) // 3)
        _, cands = A.adaptive_attack(_point_attack("koh2022_influence", ctx), region_defense, ctx.X, ctx.y, cands,
                                     percentile=a.percentile, min_candidates=m)
    if attack_name == "label_flip":
        return _greedy_flips(ctx, cands, n_poison)
    return _subpop_poison(ctx, cands, n_poison)


def _loop_budget(ctx) -> tuple[int, int]:
    """``(rounds, steps)`` of the adaptive attacker's ascent against the simulated survivors."""
    a = ctx.args
    return (a.loop_rounds, a.loop_steps or max(1, a.steps // 2)) if a.loop_rounds > 0 else (0, 0)


def _continue(attack_name, poison, ctx):
    """The naive poison given the adaptive attacker's extra budget: ``poison`` ascended for the loop's rounds x
    steps of the attack's own objective (the influence attack's for KKT and min-max) with no defense in the
    loop, so that naive and adaptive point poisons end after the same number of steps."""
    from poisoning.attack import run as run_attack

    rounds, steps = _loop_budget(ctx)
    attack = _point_attack("koh2022_influence" if attack_name in CONSTRUCTED else attack_name, ctx)
    for _ in range(rounds):
        res = run_attack(attack, ctx.X, ctx.y, poison, (ctx.Xv, ctx.yv), steps=steps, warm_start=ctx.clean)
        poison = poison.with_leader(np.asarray(res.poison.X, float))
    return poison


def _project_into(defense, poison, ctx):
    """``poison`` projected into ``defense``'s region (:func:`poisoning.attacks.adaptive.defense_region`; the
    loss region under the model trained on clean + ``poison``)."""
    from poisoning.attacks import adaptive as A
    from poisoning.defenses.evaluate import fit_poisoned

    region = A.defense_region(defense, ctx.X, ctx.y, poison, percentile=ctx.args.percentile)
    if getattr(region, "uses_params", False):
        x = region.project(poison.X, params=fit_poisoned(ctx.victim, ctx.X, ctx.y, poison, warm_start=ctx.clean))
    else:
        x = region.project(poison.X)
    return poison.with_leader(np.asarray(x))


def _simulation(ctx, defense, fraction):
    """The attacker's copy of ``defense`` (:class:`poisoning.attacks.defense_loop.DefenseSimulation`): the
    evaluation's settings, RONI's draws from ``seed + 1`` (the attacker knows the defense, not its draws)."""
    from poisoning.attacks.defense_loop import DefenseSimulation

    key = (defense, float(fraction))
    if key not in ctx.simulations:
        ctx.simulations[key] = DefenseSimulation.prepare(
            defense, ctx.victim, ctx.X, ctx.y, fraction=fraction, roni_trials=ctx.args.roni_trials,
            seed=ctx.args.seed + 1, clean_params=ctx.clean, roni=ctx.args.roni_simulation,
            draws=ctx.args.roni_draws)
    return ctx.simulations[key]


def _fingerprint(p):
    counts = np.ones(len(p.y)) if p.counts is None else np.asarray(p.counts, float)
    return hash((np.asarray(p.X, float).tobytes(), np.asarray(p.y).tobytes(), counts.tobytes()))


def _adaptive_for(attack_name, defense, region_poison, naive, naive_start, ctx, fraction):
    """The adaptive poison against ``defense`` (module docstring, stages 1-3). Candidates at the start budget
    (``--steps``): the naive poison before its continuation, the region-constrained one, the naive one projected
    into the defense's region, and, against the neighbour defenses and RONI, each with its copies concentrated
    onto locations of :func:`~poisoning.attacks.defense_loop.copies_to_survive` copies; the best of them on the
    simulated defended validation error is ascended for ``--loop-rounds`` x ``--loop-steps`` steps against the
    simulated survivors' victim (point attacks). Candidates at the full budget: the naive poison itself (continued
    for as many steps without the defense) and its concentrated form. The result is the best of the loop's
    iterates and the full-budget candidates, so it is never below the naive poison on the attacker's estimate
    and never ascended for more steps than the naive one. Returns ``(poison, info)``."""
    from poisoning.attacks import adaptive as A
    from poisoning.attacks import defense_loop as L

    a = ctx.args
    point = attack_name in POINT_ATTACKS or attack_name in CONSTRUCTED
    rounds, steps = _loop_budget(ctx) if point else (0, 0)
    full = {"naive": naive}                          # the naive budget already spent
    start = {"region": region_poison}                # the loop's budget still to spend
    if rounds:
        start["naive_start"] = naive_start
    if point:
        start["naive_projected"] = _project_into(defense, naive_start if rounds else naive, ctx)
    total = len(naive.y) if naive.counts is None else int(np.rint(np.sum(naive.counts)))
    c = L.copies_to_survive(defense, k=5, label_k=10, total=total)
    for group in (full, start):
        if c > 1:
            group.update({f"{nm}+concentrated": L.concentrate(p, c) for nm, p in list(group.items())})
    if not rounds:                                   # no loop: every candidate is final
        full, start = {**full, **start}, {}
    seen = set()
    for group in (full, start):                      # identical candidates are scored once
        for nm in list(group):
            f = _fingerprint(group[nm])
            if f in seen:
                del group[nm]
            seen.add(f)
    sim = _simulation(ctx, defense, fraction)
    _, _, scores = L.select_poison(sim, full, ctx.Xv, ctx.yv)
    pool = dict(full)
    loop_history = None
    if start:
        name, best, start_scores = L.select_poison(sim, start, ctx.Xv, ctx.yv)
        scores.update(start_scores)
        base = _point_attack("koh2022_influence" if attack_name in CONSTRUCTED else attack_name, ctx)
        constrained = name.startswith(("naive_projected", "region"))   # keep it in the defense's region
        attack = A.adaptive_attack(base, defense, ctx.X, ctx.y, best, percentile=a.percentile,
                                   warm_start=ctx.clean)[0] if constrained else base
        loop = L.defense_in_the_loop(attack, sim, ctx.X, ctx.y, best, ctx.Xv, ctx.yv, rounds=rounds, steps=steps,
                                     warm_start=ctx.clean)
        loop_history = [list(h) for h in loop.history]
        looped = f"{name}+loop" if loop.best > 0 else name
        scores[looped] = loop.history[loop.best]
        pool[looped] = loop.poison
    best = max(pool, key=lambda nm: (scores[nm][0], scores[nm][1]))   # ties: the naive poison, listed first
    confirm = L.confirm_choice(sim, pool, best, "naive", ctx.Xv, ctx.yv,   # RONI: on fresh draws, beyond noise
                               draws=a.confirm_draws, z=a.confirm_z)
    chosen = confirm.name
    info = {"chosen": chosen, "val_error_sim": scores[chosen][0], "val_error_sim_naive": scores["naive"][0],
            "candidates_val_error_sim": {nm: v[0] for nm, v in scores.items()}, "loop_history": loop_history,
            "best_on_selection_draws": best,
            "val_error_sim_fresh_draws": {nm: v[0] for nm, v in confirm.scores.items()},
            "fresh_draws_lead": confirm.lead, "fresh_draws_lead_se": confirm.se}
    return pool[chosen], info


# ------------------------------------------------------------------------------------------------
# the certificate
# ------------------------------------------------------------------------------------------------
def _oracle_check(X, y, Xt, yt, poison, region, rho):
    """``(objective, test_error, inside)``: the poison projected onto the oracle region (exact sphere + slab
    projection around the clean centroids; the certificate's feasible set) added to the clean set, the
    norm-constrained hinge SVM retrained, (1/n) hinge over clean + poison and its test error; ``inside``: the
    fraction of poison copies already in the region before the projection."""
    from poisoning.certify import steinhardt as S
    from poisoning.defenses.evaluate import expand_copies
    from poisoning.feasible import project_sphere_slab

    Xs, ys, is_p = expand_copies(X, y, poison)
    inside = np.asarray(region.contains(Xs[is_p], ys[is_p]))
    Xp = np.asarray(project_sphere_slab(Xs[is_p], ys[is_p], region.centroids, region.directions,
                                        region.sphere_radii, region.slab_radii))
    Xa, ya = np.concatenate([X, Xp]), ys
    w, b = S.constrained_hinge_svm(Xa, ya, rho)
    hinge = np.maximum(0.0, 1.0 - (2.0 * ya - 1.0) * (Xa @ w + b))
    err = float(np.mean((Xt @ w + b > 0).astype(int) != yt))
    return float(np.sum(hinge) / len(y)), err, float(inside.mean()) if inside.size else 1.0


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------
def _cell_key(attack, mode, region, eps):
    return f"{attack}|{mode}|{region}|{eps:g}"


def run(args) -> dict[str, Any]:
    import jax

    jax.config.update("jax_enable_x64", True)
    from experiments.steinhardt2017 import bound as steinhardt_bound
    from poisoning import victims
    from poisoning.attacks.adaptive import REGION_OF
    from poisoning.attacks.subpopulation import ClusterMatch
    from poisoning.attack import PoisonPoints
    from poisoning.certify import steinhardt as S
    from poisoning.defenses.evaluate import DEFENSES, RANDOM_DEFENSES, evaluate_defenses, fit_victim, hinge_score

    t0 = time.perf_counter()
    eps_grid = _cli.parse_fractions(args.eps)
    defenses = list(DEFENSES) if args.defenses is None else list(args.defenses)
    bad = [d for d in defenses if d not in DEFENSES]
    if bad:
        raise SystemExit(f"--defenses: unknown {bad}; choose from {DEFENSES}")
    if args.fraction is not None and not 0.0 <= args.fraction < 1.0:
        raise SystemExit(f"--fraction must be in [0, 1), got {args.fraction}")
    if args.loop_rounds < 0 or args.loop_steps < 0:
        raise SystemExit(f"--loop-rounds and --loop-steps must be >= 0, got {args.loop_rounds}, {args.loop_steps}")
    for flag in ("steps", "locations", "roni_trials", "clusters", "bound_steps", "pool", "minmax_copies",
                 "roni_draws", "defender_draws", "confirm_draws"):
        if getattr(args, flag) < 1:
            raise SystemExit(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if not (math.isfinite(args.confirm_z) and args.confirm_z >= 0):
        raise SystemExit(f"--confirm-z must be a finite number >= 0, got {args.confirm_z}")
    if args.quick:
        args.steps = min(args.steps, 3)
        args.n_train = min(args.n_train or 10**9, 80)
        args.n_val = min(args.n_val, 40)
        args.bound_steps = min(args.bound_steps, 100)
        args.roni_trials = 1
        args.locations = min(args.locations, 2)
        args.clusters = min(args.clusters, 4)
        args.loop_rounds = min(args.loop_rounds, 1)
        args.loop_steps = min(args.loop_steps or 2, 2)
    data = _load(args)
    X, y, Xv, yv, Xt, yt = (data[k] for k in ("X", "y", "Xv", "yv", "Xt", "yt"))
    n = len(y)
    victim = victims.smooth_svm(args.wd, args.t)
    clean = fit_victim(victim, X, y)
    cluster = ClusterMatch.fit(X, args.clusters, seed=args.seed, min_size=2)
    ctx = _Ctx(args, victim, X, y, Xv, yv, clean, cluster)
    regions = sorted({REGION_OF[d] for d in defenses})
    region_rep = {r: next(d for d in defenses if REGION_OF[d] == r) for r in regions}   # one defense names it

    settings = {"dataset": args.dataset, "name": data["name"], "n_train": n, "n_val": int(len(yv)),
                "n_test": int(len(yt)), "eps": eps_grid, "attacks": list(args.attacks), "defenses": defenses,
                "steps": args.steps, "locations": args.locations, "step_size": args.step_size, "wd": args.wd,
                "t": args.t, "fraction": args.fraction, "percentile": args.percentile,
                "roni_trials": args.roni_trials, "clusters": args.clusters, "bound_steps": args.bound_steps,
                "rho_squared": args.rho_squared, "loop_rounds": args.loop_rounds, "loop_steps": args.loop_steps,
                "roni_simulation": args.roni_simulation, "roni_draws": args.roni_draws,
                "defender_draws": args.defender_draws, "confirm_draws": args.confirm_draws,
                "confirm_z": args.confirm_z,
                "minmax_copies": args.minmax_copies,
                "naive_steps": args.steps + math.prod(_loop_budget(ctx)),
                "pool": args.pool if args.dataset == "mnist17" else None,
                "seed": args.seed, "quick": bool(args.quick)}
    out = _cli.ensure_dir(args.out)
    ckpt = _cli.Checkpoint(out / "checkpoint.npz")
    state: dict[str, Any] = {}
    cfg = json.dumps(_cli.to_jsonable(settings), sort_keys=True)
    if args.resume and ckpt.exists():
        state = ckpt.load()
        if str(state.get("config")) != cfg:
            raise SystemExit(f"--resume: checkpoint {ckpt.path} was written with other settings")
        print(f"resuming from {ckpt.path}: {sum(k.endswith('/rows') for k in state)} cells done")
    state["config"] = cfg

    # the certificate first (one vmapped Algorithm-1 run per eps)
    if not (args.rho_squared > 0 and math.isfinite(args.rho_squared)):
        raise SystemExit(f"--rho-squared must be > 0, got {args.rho_squared}")
    rho = math.sqrt(args.rho_squared)
    if "bound" not in state:
        state["bound"] = np.atleast_1d(steinhardt_bound(X, y, eps_grid, rho=rho, steps=args.bound_steps))
        ckpt.save(state)
    upper = np.asarray(state["bound"], float)
    oracle = S.oracle_region(X, y, 70.0)

    cells = [(a, "naive", None, e) for e in eps_grid for a in args.attacks]
    cells += [(a, "adaptive", r, e) for e in eps_grid for a in args.attacks for r in regions]
    bar = _cli.progress(total=len(cells), desc=f"defense_matrix {args.dataset}", unit="cell")
    fraction_of = (lambda e: e) if args.fraction is None else (lambda e: args.fraction)

    def evaluate(attack_name, poison, targets, fraction):
        def table(seed, defs, Xe, ye):
            return {r["defense"]: r for r in evaluate_defenses(
                victim, X, y, Xe, ye, {"p": poison}, defenses=defs, fraction=fraction, loss_score=hinge_score,
                roni_trials=args.roni_trials, seed=seed)}

        tmask = cluster.mask(Xt)
        subpop = attack_name == "subpopulation" and tmask.any()   # also the error on the cluster's test points
        draws = {d: [] for d in targets}
        for j in range(args.defender_draws):                      # RONI: the defender's draws; the rest: one
            defs = [d for d in targets if j == 0 or d in RANDOM_DEFENSES]
            if not defs:
                break
            seed = args.seed + DRAW_STRIDE * j
            full, part = table(seed, defs, Xt, yt), table(seed, defs, Xt[tmask], yt[tmask]) if subpop else {}
            for d in defs:
                draws[d].append((full[d], part.get(d)))
        counts = np.asarray(poison.counts, float) if poison.counts is not None else np.ones(len(poison.y))
        rows = []
        for d in targets:
            first = draws[d][0][0]
            row = {"defense": d, "test_error": float(np.mean([f["p_with_defense"] for f, _ in draws[d]])),
                   "no_defense_error": first["p_no_defense"], "clean_error": first["clean_error"],
                   "poison_kept": float(np.mean([f["p_poison_kept"] for f, _ in draws[d]])),
                   "n_poison": int(counts.sum())}
            if len(draws[d]) > 1:
                row["test_error_draws"] = [f["p_with_defense"] for f, _ in draws[d]]
            if subpop:
                row.update(target_error=float(np.mean([t["p_with_defense"] for _, t in draws[d]])),
                           target_test_points=int(tmask.sum()))
            rows.append(row)
        return rows

    def naive_poison(attack_name, eps):
        key = _cell_key(attack_name, "naive", None, eps)
        if (attack_name, eps) not in ctx.naive:        # resumed: the checkpoint holds them
            for store, k in ((ctx.naive, key), (ctx.naive_start, f"{key}/start")):
                store[(attack_name, eps)] = PoisonPoints(np.asarray(state[f"{k}/X"]), np.asarray(state[f"{k}/y"]),
                                                         counts=np.asarray(state[f"{k}/counts"]))
        return ctx.naive[(attack_name, eps)], ctx.naive_start[(attack_name, eps)]

    def store(k, p):
        state[f"{k}/X"], state[f"{k}/y"] = np.asarray(p.X), np.asarray(p.y)
        state[f"{k}/counts"] = np.asarray(p.counts if p.counts is not None else np.ones(len(p.y)))

    for attack_name, mode, region, eps in cells:
        key = _cell_key(attack_name, mode, region, eps)
        if f"{key}/rows" in state:
            bar.update()
            continue
        n_poison = max(1, int(round(eps * n)))
        fraction = fraction_of(eps)
        t1 = time.perf_counter()
        poison = _craft(attack_name, mode, None if region is None else region_rep[region], ctx, n_poison)
        craft_s = time.perf_counter() - t1
        rows = []
        if mode == "naive":
            ctx.naive_start[(attack_name, eps)] = poison
            if attack_name in POINT_ATTACKS + CONSTRUCTED:     # as many steps as the adaptive attacker's
                poison = _continue(attack_name, poison, ctx)
                craft_s = time.perf_counter() - t1
            ctx.naive[(attack_name, eps)] = poison
            rows = [{"attack": attack_name, "mode": mode, "eps": eps, **r, "craft_seconds": craft_s}
                    for r in evaluate(attack_name, poison, defenses, fraction)]
            state[f"{key}/oracle"] = np.asarray(_oracle_check(X, y, Xt, yt, poison, oracle, rho))
            store(key, poison)
            store(f"{key}/start", ctx.naive_start[(attack_name, eps)])
        else:
            naive, naive_start = naive_poison(attack_name, eps)
            for d in (d for d in defenses if REGION_OF[d] == region):
                t2 = time.perf_counter()
                chosen, info = _adaptive_for(attack_name, d, poison, naive, naive_start, ctx, fraction)
                select_s = time.perf_counter() - t2
                rows += [{"attack": attack_name, "mode": mode, "eps": eps, **r, **info, "craft_seconds": craft_s,
                          "select_seconds": select_s} for r in evaluate(attack_name, chosen, [d], fraction)]
                state[f"{key}/oracle/{d}"] = np.asarray(_oracle_check(X, y, Xt, yt, chosen, oracle, rho))
        state[f"{key}/rows"] = np.asarray(json.dumps(_cli.to_jsonable(rows)))
        ckpt.save(state)
        bar.update()
        print(f"  {key}: crafted in {craft_s:.1f} s, selected and evaluated in "
              f"{time.perf_counter() - t1 - craft_s:.1f} s", flush=True)
    bar.close()

    rows, bounds = [], []
    for i, eps in enumerate(eps_grid):
        entry = {"eps": eps, "bound": float(upper[i]), "attacks": {}}
        for attack_name in args.attacks:
            for mode, region in [("naive", None)] + [("adaptive", r) for r in regions]:
                key = _cell_key(attack_name, mode, region, eps)
                for r in json.loads(str(state[f"{key}/rows"])):
                    r["bound"] = float(upper[i])
                    rows.append(r)
                checks = {f"{attack_name}/naive": f"{key}/oracle"} if mode == "naive" else {
                    f"{attack_name}/adaptive/{d}": f"{key}/oracle/{d}" for d in defenses if REGION_OF[d] == region}
                for name, k in checks.items():
                    obj, err_o, kept_o = (float(v) for v in state[k])
                    entry["attacks"][name] = {"oracle_objective": obj, "oracle_test_error": err_o,
                                              "oracle_poison_inside": kept_o,
                                              "below_bound": bool(obj <= upper[i] + 1e-5)}
        bounds.append(entry)
    w0, b0 = S.constrained_hinge_svm(X, y, rho)
    results = {
        "experiment": "defense_matrix", "dataset": args.dataset, "data": data["name"], "fallback": data["fallback"],
        "data_note": data["note"], "config": settings, "rows": rows, "bounds": bounds,
        "bound": {f"{e:g}": float(u) for e, u in zip(eps_grid, upper)},
        "clean_test_error": float(np.mean(np.asarray(victim.predict(clean, Xt)) != yt)),
        "clean_constrained_svm_test_error": float(np.mean((Xt @ w0 + b0 > 0).astype(int) != yt)),
        "left_out": LEFT_OUT, "paper": PAPER, "seconds": time.perf_counter() - t0,
        "all_below_bound": all(v["below_bound"] for b in bounds for v in b["attacks"].values()),
        "adaptive_vs_naive": adaptive_vs_naive(rows, defenses),
    }
    _cli.write_json_atomic(out / "results.json", results)
    _print(results, defenses)
    if not args.no_plots:
        _plot(out, results, defenses)
    ckpt.clear()
    print(f"wrote {out / 'results.json'} ({results['seconds']:.0f} s)")
    return results


def adaptive_vs_naive(rows, defenses) -> dict:
    """Per defense: adaptive vs naive over the (attack, eps) cells, ``wins`` / ``ties`` / ``losses`` on the test
    error after the defense (strict; a tie is equal error) and ``val_*`` on the attacker's simulated defended
    validation error (the selection criterion).

    A random defense evaluated over the defender's draws (rows with ``test_error_draws``; the naive and the
    adaptive poison on the same draws) also gets the paired view: per cell the mean difference (adaptive -
    naive) and its standard error over the draws (``paired``: ``[attack, eps, diff, se]``), and the cells where
    the difference exceeds two standard errors (``sig_wins``, ``sig_losses``): a strict tally of noisy means
    counts noise as wins and losses."""
    naive = {(r["attack"], r["defense"], r["eps"]): r for r in rows if r["mode"] == "naive"}
    out = {}
    for d in defenses:
        c = dict.fromkeys(("wins", "ties", "losses", "val_wins", "val_ties", "val_losses"), 0)
        paired = []
        for r in rows:
            if r["mode"] != "adaptive" or r["defense"] != d or r.get("test_error") is None:
                continue
            nr = naive[(r["attack"], d, r["eps"])]
            nv = nr["test_error"]
            c["wins" if r["test_error"] > nv else "ties" if r["test_error"] == nv else "losses"] += 1
            if "val_error_sim" in r:
                a, b = r["val_error_sim"], r["val_error_sim_naive"]
                c["val_wins" if a > b else "val_ties" if a == b else "val_losses"] += 1
            da, dn = r.get("test_error_draws"), nr.get("test_error_draws")
            if da is not None and dn is not None and len(da) == len(dn) and len(da) > 1:
                diff = np.asarray(da, float) - np.asarray(dn, float)
                paired.append([r["attack"], r["eps"], float(diff.mean()),
                               float(diff.std(ddof=1) / math.sqrt(len(diff)))])
        if paired:
            c["paired"] = paired
            c["sig_wins"] = sum(m > 2 * se for _, _, m, se in paired)
            c["sig_losses"] = sum(m < -2 * se for _, _, m, se in paired)
        out[d] = c
    return out


def _grid(results, defenses, eps, mode):
    attacks = results["config"]["attacks"]
    M = np.full((len(attacks), len(defenses)), np.nan)
    for r in results["rows"]:
        if r["eps"] == eps and r["mode"] == mode and r["test_error"] is not None:
            M[attacks.index(r["attack"]), defenses.index(r["defense"])] = r["test_error"]
    return attacks, M


def _print(results, defenses):
    print(f"attack x defense matrix, {results['data']}{' (fallback)' if results['fallback'] else ''}: "
          f"n = {results['config']['n_train']}, test {results['config']['n_test']}; clean test error "
          f"{results['clean_test_error']:.3f}")
    for b in results["bounds"]:
        eps = b["eps"]
        table = []
        for mode in ("naive", "adaptive"):
            attacks, M = _grid(results, defenses, eps, mode)
            for a, row in zip(attacks, M):
                o = b["attacks"].get(f"{a}/{mode}", {})
                table.append([a, mode] + [None if np.isnan(v) else float(v) for v in row]
                             + [o.get("oracle_test_error"), o.get("oracle_objective")])
        print(f"\neps = {eps:g}: test error after each defense; oracle sphere+slab: test error and (1/n) hinge of "
              f"the norm-constrained SVM; certified bound U* = {b['bound']:.4f}")
        print(_cli.format_table(table, ["attack", "mode"] + list(defenses) + ["oracle err", "oracle obj"],
                                floatfmt=".3f"))
    print("\nadaptive vs naive, test error after each defense (strict wins / ties / losses; on the attacker's "
          "simulated defended validation error in brackets):")
    print(_cli.format_table([[d, v["wins"], v["ties"], v["losses"],
                              f"[{v['val_wins']}/{v['val_ties']}/{v['val_losses']}]",
                              f"{v['sig_wins']}/{v['sig_losses']}" if "paired" in v else ""]
                             for d, v in results["adaptive_vs_naive"].items()],
                            ["defense", "wins", "ties", "losses", "val w/t/l", "beyond 2 SE w/l"]))
    for d, v in results["adaptive_vs_naive"].items():
        for attack, eps, m, se in v.get("paired", []):
            if m != 0.0:
                print(f"  {d}: {attack} eps {eps:g}: adaptive - naive = {100 * m:+.2f} +- {100 * se:.2f} pp "
                      f"(mean and standard error over the defender's draws)")
    print(f"\nevery attack's oracle objective <= U*: {results['all_below_bound']}")
    print(f"paper: Steinhardt 2017 -- {PAPER['steinhardt2017']['note']}; Koh 2022 -- {PAPER['koh2022']['note']}")
    print("left out: " + "; ".join(f"{k}: {v}" for k, v in LEFT_OUT.items()))


def _plot(out, results, defenses):
    plt = _cli.pyplot()
    for b in results["bounds"]:
        eps = b["eps"]
        fig, axes = plt.subplots(1, 2, figsize=(2.0 + 1.1 * len(defenses) * 2, 3.6), sharey=True)
        vmax = max(0.05, np.nanmax([np.nanmax(_grid(results, defenses, eps, m)[1]) for m in ("naive", "adaptive")]
                                   if results["rows"] else [0.05]))
        for ax, mode in zip(axes, ("naive", "adaptive")):
            attacks, M = _grid(results, defenses, eps, mode)
            im = ax.imshow(M, vmin=0, vmax=vmax, cmap="viridis", aspect="auto")
            ax.set_xticks(range(len(defenses)))
            ax.set_xticklabels(defenses, rotation=45, ha="right", fontsize=7)
            ax.set_yticks(range(len(attacks)))
            ax.set_yticklabels(attacks, fontsize=7)
            for (i, j), v in np.ndenumerate(M):
                if not np.isnan(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if v < vmax / 2 else "k")
            ax.set_title(f"{mode}, eps={eps:g} (U*={b['bound']:.3f})", fontsize=8)
        fig.colorbar(im, ax=axes, label="test error after the defense")
        _cli.save_figure(fig, out / f"heatmap_eps{eps:g}.png")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
