"""Adaptive (defense-aware) attacks: the regions' projections land inside them, the anchor ball keeps the
k-NN score below its cut-off, and the adaptive poison survives the sanitizer that removes the naive one."""

import numpy as np
import pytest

from bilevel.stackelberg import fixed_step
from poisoning import victims
from poisoning.attack import PoisoningAttack, PoisonPoints, PoisonWeights, run
from poisoning.attacks import adaptive as A
from poisoning.attacks.koh2022 import initial_poison
from poisoning.defenses.evaluate import expand_copies, fit_victim
from poisoning.defenses.sanitizers import SphereDefense, knn_scores, percentile_thresholds
from poisoning.feasible import Box
from poisoning.objectives import error_generic


def _blobs(n, d=4, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = np.clip(0.5 + 0.15 * (2 * y[:, None] - 1) + 0.08 * rng.standard_normal((n, d)), 0, 1)
    return X, y


def test_svd_and_anchor_regions_project_inside_exactly():
    X, y = _blobs(60)
    rng = np.random.default_rng(1)
    far = PoisonPoints(rng.uniform(-1, 2, (6, 4)), np.array([0, 1, 0, 1, 0, 1]))
    svd = A.defense_region("svd", X, y, far, rank=2)
    assert isinstance(svd, A.SVDRegion) and not svd.contains(far.X)
    inside = np.asarray(svd.project(far.X))
    assert svd.contains(inside, atol=1e-9)
    np.testing.assert_allclose(svd.project(inside), inside, atol=1e-9)       # idempotent on the region
    knn = A.defense_region("knn", X, y, far, k=3, percentile=80.0, shrink=1.0)
    assert isinstance(knn, A.AnchorRegion) and A.REGION_OF["label_sanitization"] == A.REGION_OF["knn"]
    x = np.asarray(knn.project(far.X))
    assert knn.contains(x, atol=1e-9) and np.all((x >= 0) & (x <= 1))
    # the triangle-inequality guarantee: the projected point's k-NN score is below the clean cut-off
    S_clean = np.asarray(knn_scores(X, y, X, y, 3, exclude_self=True, num_classes=2))
    tau = np.asarray(percentile_thresholds(S_clean, y, 80.0, 2))
    S = np.asarray(knn_scores(x, far.y, X, y, 3, num_classes=2))
    assert np.all(S <= tau[far.y] + 1e-9), (S, tau)
    assert np.any(np.asarray(knn_scores(far.X, far.y, X, y, 3, num_classes=2)) > tau[far.y])   # it was not before


def test_adaptive_poison_stays_in_the_sphere_and_survives_it():
    """The naive influence attack walks out of the sphere and is removed; the adaptive one (same start, same
    steps, through adaptive_attack) stays in the sanitizer's region and every copy is kept."""
    X, y = _blobs(40, d=3)
    Xv, yv = _blobs(40, d=3, seed=2)
    victim = victims.smooth_svm(0.05, 0.1)
    clean = fit_victim(victim, X, y)
    attack = PoisoningAttack(victim, error_generic, Box(0.0, 1.0), step=fixed_step(0.3, "rows"), gain_tol=None)
    start = initial_poison(X, y, 6, 2, seed=0)
    naive = run(attack, X, y, start, (Xv, yv), steps=3, warm_start=clean).poison
    aware_attack, aware_start = A.adaptive_attack(attack, "sphere", X, y, start, percentile=80.0)
    assert isinstance(aware_attack.feasible, A.SanitizerRegion) and aware_attack.victim is victim
    aware = run(aware_attack, X, y, aware_start, (Xv, yv), steps=3, warm_start=clean).poison
    assert aware_attack.feasible.contains(np.asarray(aware.X), atol=1e-9)
    assert not aware_attack.feasible.contains(np.asarray(naive.X), atol=1e-9)
    kept = {}
    for name, p in (("naive", naive), ("aware", aware)):    # the sphere sanitizer fit on the poisoned set
        Xs, ys, is_p = expand_copies(X, y, p)
        keep, _ = SphereDefense(num_classes=2).sanitize(Xs, ys, 0.2)
        kept[name] = float(np.asarray(keep)[is_p].mean())
    assert kept["aware"] == 1.0 > kept["naive"], kept


def test_candidates_filtered_by_the_defense():
    """PoisonWeights: only the flipped candidates the defense keeps remain; with too few survivors, the least
    suspicious ``min_candidates``; bad input is named."""
    X, y = _blobs(40, d=3)
    victim = victims.smooth_svm(0.05, 0.1)
    cands = PoisonWeights(X, 1 - y, np.zeros(len(y)))
    attack = PoisoningAttack(victim, error_generic, Box(0.0, 1.0))
    margins = A.survival_margins("sphere", X, y, X, 1 - y)
    same, kept = A.adaptive_attack(attack, "sphere", X, y, cands, min_candidates=1)
    assert same is attack and len(kept.y) == max(1, int(np.sum(margins <= 0)))
    _, five = A.adaptive_attack(attack, "loss", X, y, cands, min_candidates=5)
    loss_m = A.survival_margins("loss", X, y, X, 1 - y, victim=victim)
    assert len(five.y) == max(5, int(np.sum(loss_m <= 0)))
    np.testing.assert_array_equal(np.sort(np.asarray(five.X), 0),
                                  np.sort(X[np.argsort(loss_m, kind="stable")[: len(five.y)]], 0))
    assert np.all(A.survivors("sphere", X, y, X, y) == (A.survival_margins("sphere", X, y, X, y) <= 0))
    with pytest.raises(ValueError, match="defense"):
        A.adaptive_attack(attack, "nope", X, y, cands)
    with pytest.raises(ValueError, match="victim"):
        A.survival_margins("sever", X, y, X, 1 - y)
    with pytest.raises(ValueError, match="shrink"):
        A.defense_region("sphere", X, y, PoisonPoints(X[:2], y[:2]), shrink=0.0)
