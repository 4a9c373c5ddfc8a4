"""Adaptive (defense-aware) attacks: the regions' projections land inside them, the anchor ball keeps the
k-NN score below its cut-off, the adaptive poison survives the sanitizer that removes the naive one, and the
defense in the loop (simulated defense, survivors' victim, concentrated copies, selection on the validation
set) does what poisoning.attacks.defense_loop says."""

import numpy as np
import pytest

from bilevel.stackelberg import fixed_step
from poisoning import victims
from poisoning.attack import PoisoningAttack, PoisonPoints, PoisonWeights
from poisoning.attacks import adaptive as A
from poisoning.attacks.koh2022 import initial_poison
from poisoning.defenses.evaluate import expand_copies, fit_victim
from poisoning.defenses.sanitizers import knn_scores, percentile_thresholds
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


# ------------------------------------------------------------------------------------------------
# the defense in the loop (poisoning.attacks.defense_loop)
# ------------------------------------------------------------------------------------------------
def test_survivor_poison_weights_the_survivors_only():
    """A SurvivorPoison's training weights are the keep mask on the clean rows and the surviving copies on
    the locations (what its fit, the driver's victim, trains on); a bad mask is named."""
    import jax.numpy as jnp

    from poisoning.attacks.defense_loop import SurvivorPoison
    from poisoning.poisons import CleanData

    X, y = _blobs(30, d=3)
    victim = victims.smooth_svm(0.05, 0.1)
    keep = np.ones(30, bool)
    keep[[0, 3, 7, 8]] = False
    counts = np.array([2.0, 3.0, 1.0])
    sp = SurvivorPoison(X[:3] + 0.1, 1 - y[:3], counts=counts, clean_weights=keep.astype(float)).validate(victim, X)
    w = sp.training_weights(CleanData(jnp.asarray(X), jnp.asarray(y), None), jnp.ones(3, bool), jnp.float64)
    np.testing.assert_array_equal(np.asarray(w), np.r_[keep.astype(float), counts])
    active = jnp.array([True, False, True])                    # the driver's active flags still apply
    w = sp.training_weights(CleanData(jnp.asarray(X), jnp.asarray(y), None), active, jnp.float64)
    np.testing.assert_array_equal(np.asarray(w)[30:], [2.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="clean_weights"):
        SurvivorPoison(X[:3], y[:3], clean_weights=np.ones(5)).validate(victim, X)


def test_concentrated_copies_pass_the_neighbour_defenses():
    """concentrate() keeps the total, gives every location >= copies_to_survive copies; such a location has
    k-NN score 0 and keeps its flipped label under k-NN label sanitization, unlike the spread copies."""
    from poisoning.attacks.defense_loop import concentrate, copies_to_survive
    from poisoning.defenses.label_sanitization import knn_relabel

    X, y = _blobs(40, d=3)
    spread = PoisonPoints(X[:7], 1 - y[:7], counts=np.ones(7, int))     # flipped labels, one copy each
    c = copies_to_survive("label_sanitization", label_k=10)
    assert c == 7 and copies_to_survive("knn", k=5) == 6 and copies_to_survive("sphere", total=7) == 1
    assert copies_to_survive("roni", total=7) == 7 and copies_to_survive("roni") == 1   # RONI: one location
    assert len(concentrate(spread, copies_to_survive("roni", total=7)).y) == 1
    conc = concentrate(spread, c)
    assert int(np.sum(conc.counts)) == 7 and np.all(np.asarray(conc.counts) >= c)
    assert concentrate(conc, c) is not None and len(concentrate(conc, c).y) == len(conc.y)
    for p, relabelled in ((spread, True), (conc, False)):
        Xs, ys, is_p = expand_copies(X, y, p)
        changed = np.asarray(knn_relabel(Xs, ys, 10, 0.5, num_classes=2).changed)[is_p]
        assert changed.all() if relabelled else not changed.any()
    Xs, ys, is_p = expand_copies(X, y, concentrate(spread, copies_to_survive("knn", k=5)))
    S = np.asarray(knn_scores(Xs, ys, Xs, ys, 5, exclude_self=True, num_classes=2))
    np.testing.assert_allclose(S[is_p], 0.0, atol=1e-12)
    with pytest.raises(ValueError, match="copies"):
        concentrate(spread, 0)
    attack = PoisoningAttack(victims.smooth_svm(0.05, 0.1), error_generic, Box(0.0, 1.0))   # through the door
    door, p = A.adaptive_attack(attack, "label_sanitization", X, y, spread, concentrate_copies=True)
    assert isinstance(door.feasible, A.AnchorRegion) and door.feasible.contains(np.asarray(p.X), atol=1e-9)
    assert len(p.y) == 1 and int(p.counts[0]) == 7


def test_selection_by_simulated_defended_validation_error():
    """select_poison scores each candidate by the defense simulated on clean + poison, on the validation
    set it is given (flipping those labels flips the choice; the test set plays no part): the sphere removes
    the far (naive) poison, so its projection into the sphere region wins, survives the real defense and has
    a higher defended error. The ascent against the survivors' victim (through the door's region) stays in the
    region and never returns worse than its start on the attacker's estimate."""
    from poisoning.attacks.defense_loop import DefenseSimulation, defense_in_the_loop, select_poison
    from poisoning.defenses.evaluate import sanitize_and_train

    def overlapping_blobs(seed):       # noisy enough that 8 poison copies (2 locations) move the error
        rng = np.random.default_rng(seed)
        y = np.arange(40) % 2
        return np.clip(0.5 + 0.15 * (2 * y[:, None] - 1) + 0.18 * rng.standard_normal((40, 2)), 0, 1), y

    (X, y), (Xv, yv) = overlapping_blobs(0), overlapping_blobs(2)
    victim = victims.smooth_svm(0.05, 0.1)
    clean = fit_victim(victim, X, y)
    start = initial_poison(X, y, 8, 2, seed=0)                  # label-flipped clean points, 4 copies each
    mu = np.stack([X[y == c].mean(0) for c in (0, 1)])
    naive = PoisonPoints(np.clip(start.X + 2.0 * (start.X - mu[start.y]), 0, 1), start.y, counts=start.counts)
    attack = PoisoningAttack(victim, error_generic, Box(0.0, 1.0), step=fixed_step(0.1, "rows"), gain_tol=None)
    aware_attack, aware = A.adaptive_attack(attack, "sphere", X, y, naive, percentile=80.0)
    assert isinstance(aware_attack.feasible, A.SanitizerRegion) and aware_attack.victim is victim
    assert aware_attack.feasible.contains(np.asarray(aware.X), atol=1e-9)
    assert not aware_attack.feasible.contains(np.asarray(naive.X), atol=1e-9)
    sim = DefenseSimulation.prepare("sphere", victim, X, y, fraction=0.15, clean_params=clean)
    cands = {"naive": naive, "region": aware}
    name, best, scores = select_poison(sim, cands, Xv, yv)
    for nm, p in cands.items():          # the scores are the defended victim's error on the validation set
        Xs, ys, is_p = expand_copies(X, y, p)
        params, keep = sanitize_and_train(victim, Xs, ys, "sphere", 0.15, warm_start=clean)
        assert scores[nm][0] == pytest.approx(float(np.mean(np.asarray(victim.predict(params, Xv)) != yv)))
        assert np.asarray(keep)[is_p].all() == (nm == "region")
    assert name == "region" and scores["region"][0] > scores["naive"][0], scores
    flipped, _, fscores = select_poison(sim, cands, Xv, 1 - yv)
    assert flipped == "naive" and fscores["naive"][0] == pytest.approx(1 - scores["naive"][0])
    loop = defense_in_the_loop(attack, sim, X, y, best, Xv, yv, rounds=1, steps=1)
    assert len(loop.history) == 2 and loop.history[loop.best] == max(loop.history)
    assert loop.history[0] == scores["region"]
    np.testing.assert_array_equal(loop.poison.counts, best.counts)
    with pytest.raises(ValueError, match="defense"):
        DefenseSimulation.prepare("nope", victim, X, y, fraction=0.1)
    with pytest.raises(ValueError, match="candidates"):
        select_poison(sim, {}, Xv, yv)


def test_roni_simulation_averages_its_draws():
    """RONI is random in its draws: a simulation of ``draws`` draws scores a poison by the mean over the
    draws seed, seed + 1, ... of the defended validation error (each draw the defense itself, run with that
    seed); a deterministic defense ignores ``draws``; a bad ``draws`` is named."""
    from poisoning.attacks.defense_loop import DefenseSimulation
    from poisoning.defenses.evaluate import hinge_score, sanitize_and_train

    X, y = _blobs(24, d=2)
    Xv, yv = _blobs(30, d=2, seed=3)
    victim = victims.smooth_svm(0.05, 0.1)
    poison = initial_poison(X, y, 6, 2, seed=0)
    sim = DefenseSimulation.prepare("roni", victim, X, y, fraction=0.2, roni_trials=1, seed=5, roni="exact",
                                    draws=2)
    Xs, ys, _ = expand_copies(X, y, poison)

    def defended(seed):              # (error, hinge) on the validation set after the defender's RONI of ``seed``
        params, _ = sanitize_and_train(victim, Xs, ys, "roni", 0.2, roni_trials=1, seed=seed,
                                       warm_start=sim.clean_params)
        return (float(np.mean(np.asarray(victim.predict(params, Xv)) != yv)),
                float(np.mean(np.asarray(hinge_score(victim, params, Xv, yv)))))

    per_draw = [defended(seed) for seed in (5, 6)]
    assert per_draw[0][1] != pytest.approx(per_draw[1][1])          # the draws differ: the mean is a real mean
    assert sim.draws == 2 and sim.validation(poison, Xv, yv) == pytest.approx(tuple(np.mean(per_draw, axis=0)))
    errors, hinges = sim.mistakes(poison, Xv, yv)               # per draw and validation point
    assert errors.shape == hinges.shape == (2, len(yv)) and set(np.unique(errors)) <= {0.0, 1.0}
    assert np.allclose(errors.mean(axis=1), [e for e, _ in per_draw])
    sphere = DefenseSimulation.prepare("sphere", victim, X, y, fraction=0.2, draws=3)
    assert sphere.draws == 1 and not sphere.random and sphere.fresh_draws() is sphere
    with pytest.raises(ValueError, match="draws"):
        DefenseSimulation.prepare("roni", victim, X, y, fraction=0.2, draws=0)
    # fresh draws: the next seeds (7, 8), independent of the selection draws (5, 6)
    fresh = sim.fresh_draws()
    per_fresh = [defended(seed) for seed in (7, 8)]
    assert sim.random and fresh.settings["seed"] == 7 and sim.settings["seed"] == 5
    # the external simulation redraws its clean-pool scores too: as if prepared with the next seed
    ext = DefenseSimulation.prepare("roni", victim, X, y, fraction=0.2, roni_trials=1, seed=5)
    again = DefenseSimulation.prepare("roni", victim, X, y, fraction=0.2, roni_trials=1, seed=6)
    assert ext.fresh_draws().validation(poison, Xv, yv) == pytest.approx(again.validation(poison, Xv, yv))
    assert not np.array_equal(ext.fresh_draws().roni_clean_scores[0], ext.roni_clean_scores[0])
    assert fresh.validation(poison, Xv, yv) == pytest.approx(tuple(np.mean(per_fresh, axis=0)))
    # more fresh draws than selection draws: seeds 7, 8, 9
    three = sim.fresh_draws(3)
    assert three.draws == 3 and sim.draws == 2
    assert three.validation(poison, Xv, yv) == pytest.approx(tuple(np.mean(per_fresh + [defended(9)], axis=0)))
    assert len(ext.fresh_draws(2).roni_state) == 2
    with pytest.raises(ValueError, match="draws"):
        sim.fresh_draws(0)


def test_confirm_choice_rescores_a_random_defense_on_fresh_draws():
    """The winner's-curse check keeps a choice only if its lead over the baseline on fresh draws exceeds z
    standard errors (draws and validation points, hand-computed here); a deterministic defense, or the baseline
    itself, is returned unchecked; names outside the candidates and a negative z are refused."""
    from poisoning.attacks.defense_loop import confirm_choice

    rng = np.random.default_rng(0)
    base = (rng.random((3, 200)) < 0.2).astype(float)          # 3 fresh draws x 200 validation points
    strong = np.maximum(base, (np.arange(200) < 40)[None, :])   # 40 more mistakes on every draw
    one = base.copy()
    one[0, base[0] == 0] = 0.0
    one[0, np.flatnonzero(base[0] == 0)[0]] = 1.0               # one more mistake, one draw
    worse = base * (np.arange(200) >= 20)[None, :]              # fewer mistakes

    class Fresh:
        def mistakes(self, p, X_val, y_val):
            return p, np.zeros_like(p)

    class Sim:
        def __init__(self, random):
            self.random, self.asked = random, None

        def fresh_draws(self, draws=None):
            self.asked = draws
            return Fresh()

    cands = {"naive": base, "strong": strong, "one": one, "worse": worse}
    d = strong - base
    se = np.sqrt(np.var(d.mean(1), ddof=1) / 3 + np.var(d.mean(0), ddof=1) / 200)
    sim = Sim(True)
    got = confirm_choice(sim, cands, "strong", "naive", None, None, draws=3)
    assert got.name == "strong" and sim.asked == 3
    assert np.isclose(got.lead, d.mean()) and np.isclose(got.se, se) and got.lead > 2 * se
    assert got.scores == {"naive": (base.mean(), 0.0), "strong": (strong.mean(), 0.0)}
    small = confirm_choice(Sim(True), cands, "one", "naive", None, None)
    assert small.name == "naive" and 0 < small.lead < 2 * small.se           # a lead of one mistake: noise
    assert confirm_choice(Sim(True), cands, "one", "naive", None, None, z=0.0).name == "one"
    assert confirm_choice(Sim(True), cands, "worse", "naive", None, None, z=0.0).name == "naive"
    assert confirm_choice(Sim(False), cands, "worse", "naive", None, None) == ("worse", {}, None, None)
    assert confirm_choice(Sim(True), cands, "naive", "naive", None, None) == ("naive", {}, None, None)
    with pytest.raises(ValueError, match="chosen"):
        confirm_choice(Sim(True), cands, "c", "naive", None, None)
    with pytest.raises(ValueError, match="'z'"):
        confirm_choice(Sim(True), cands, "one", "naive", None, None, z=-1.0)


def test_a_round_whose_defended_victim_does_not_train_is_dropped(monkeypatch):
    """defense_in_the_loop: when the simulation cannot train the defended victim on a round's iterate
    (ConvergenceError), the loop warns, stops and chooses among the iterates before it."""
    from bilevel import ConvergenceError
    from poisoning.attacks import defense_loop as L

    X, y = _blobs(24, d=2)
    start = initial_poison(X, y, 4, 2, seed=0)
    calls = []

    class Sim:
        clean_params = None

        def run(self, p):
            Xs, ys, is_p = expand_copies(X, y, p)
            return None, np.ones(len(ys), bool), is_p

        def validation(self, p, X_val, y_val):
            calls.append(1)
            if len(calls) == 2:               # the first round's iterate
                raise ConvergenceError("stalled")
            return 0.1, 0.2

    def fake_run(attack, X_clean, y_clean, sp, val, *, steps, warm_start):
        class R:
            poison = PoisonPoints(np.asarray(sp.X) + 0.01, sp.y)
        return R()

    monkeypatch.setattr(L, "run", fake_run)
    with pytest.warns(RuntimeWarning, match="round 1 dropped"):
        loop = L.defense_in_the_loop(None, Sim(), X, y, start, X, y, rounds=2, steps=1)
    assert loop.history == [(0.1, 0.2)] and loop.best == 0 and len(calls) == 2
    np.testing.assert_array_equal(loop.poison.X, start.X)
