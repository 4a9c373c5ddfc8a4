"""End-to-end test of experiments/defense_matrix.py (--quick: embedded digits 1 vs 7, tiny)."""

import json

import numpy as np
import pytest

from experiments import defense_matrix


def test_quick_matrix_writes_rows_bounds_and_heatmap(tmp_path):
    argv = ["--quick", "--attacks", "subpopulation", "--defenses", "sphere", "roni", "--eps", "0.1",
            "--defender-draws", "2", "--out", str(tmp_path)]
    res = defense_matrix.main(argv)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["fallback"] is True and saved["dataset"] == "mnist17" and "koh2022_minmax" not in saved["left_out"]
    rows = saved["rows"]
    assert {(r["mode"], r["defense"]) for r in rows} == {(m, d) for m in ("naive", "adaptive") for d in ("sphere", "roni")}
    for r in rows:
        assert {"attack", "mode", "defense", "test_error", "eps", "bound"} <= set(r)
        assert r["attack"] == "subpopulation" and r["eps"] == 0.1 and 0.0 <= r["test_error"] <= 1.0
        assert r["n_poison"] == round(0.1 * saved["config"]["n_train"]) and 0 <= r["target_error"] <= 1
        # RONI draws at random: its test error is the mean over the defender's two draws; sphere has one
        assert ("test_error_draws" in r) == (r["defense"] == "roni")
        if r["defense"] == "roni":
            assert len(r["test_error_draws"]) == 2 and np.isclose(r["test_error"], np.mean(r["test_error_draws"]))
    b = saved["bounds"][0]
    assert b["eps"] == 0.1 and b["bound"] == saved["bound"]["0.1"] == rows[0]["bound"] > 0
    # the certificate holds for the naive poison and every adaptive one (projected onto its set)
    assert set(b["attacks"]) == {"subpopulation/naive", "subpopulation/adaptive/sphere", "subpopulation/adaptive/roni"}
    assert all(v["below_bound"] and v["oracle_objective"] <= b["bound"] + 1e-5 for v in b["attacks"].values())
    # the adaptive poison is chosen among candidates (the naive one included) by the simulated defended error on
    # the attacker's validation set: never below the naive one there; the test-set tally counts every cell once
    for r in (r for r in rows if r["mode"] == "adaptive"):
        assert r["chosen"] in r["candidates_val_error_sim"] and "naive" in r["candidates_val_error_sim"]
        best = r["best_on_selection_draws"]          # RONI: kept only if it also wins on fresh draws
        assert r["candidates_val_error_sim"][best] == max(r["candidates_val_error_sim"].values())
        assert r["val_error_sim"] >= r["val_error_sim_naive"] and r["chosen"] in (best, "naive")
        checked = r["defense"] == "roni" and best != "naive"      # the fresh-draw lead, or None when unchecked
        assert ("naive+concentrated" in r["candidates_val_error_sim"]) == (r["defense"] == "roni")
        assert (r["fresh_draws_lead"] is not None) == checked and (r["fresh_draws_lead_se"] is not None) == checked
    tally = saved["adaptive_vs_naive"]
    assert set(tally) == {"sphere", "roni"}
    assert all(v["wins"] + v["ties"] + v["losses"] == 1 and v["val_losses"] == 0 for v in tally.values()), tally
    assert len(tally["roni"]["paired"]) == 1 and "paired" not in tally["sphere"]
    assert (tmp_path / "heatmap_eps0.1.png").stat().st_size > 0
    assert not (tmp_path / "checkpoint.npz").exists() and res["all_below_bound"] is True
    assert np.isfinite(saved["clean_test_error"])


def test_adaptive_for_spends_no_more_steps_than_the_naive_poison(monkeypatch):
    """The equal-budget bookkeeping of ``_adaptive_for``, with a fake simulation (value = the poison's first
    coordinate) and a fake loop: only a candidate at the start budget is ascended, the full-budget naive poison
    is compared as it is, and the result is the best of the two groups on the attacker's estimate."""
    import argparse

    from poisoning.attack import PoisonPoints
    from poisoning.attacks import defense_loop as L

    def pp(v):
        return PoisonPoints(np.full((2, 3), float(v)), np.array([0, 1]), counts=np.array([1, 1]))

    class Sim:
        random = False

        def validation(self, p, X_val, y_val):
            return float(p.X[0, 0]), 0.0

    class RandomSim(Sim):               # RONI: its fresh draws see the looped poison at 0.45, below the naive 0.5
        random = True

        def fresh_draws(self, draws=None):
            asked.append(draws)
            fresh = Sim()
            value = lambda p: 0.45 if np.isclose(p.X[0, 0], 0.55) else float(p.X[0, 0])   # noqa: E731
            fresh.mistakes = lambda p, Xv, yv: (np.full((2, 10), value(p)), np.zeros((2, 10)))
            return fresh

    looped, asked = [], []

    def fake_loop(attack, sim, X, y, poison, Xv, yv, *, rounds, steps, warm_start):
        looped.append((float(poison.X[0, 0]), rounds, steps))
        up = pp(float(poison.X[0, 0]) + 0.15)
        return L.LoopResult(up, [sim.validation(poison, Xv, yv), sim.validation(up, Xv, yv)], 1)

    monkeypatch.setattr(L, "defense_in_the_loop", fake_loop)
    monkeypatch.setattr(defense_matrix, "_simulation", lambda ctx, d, f: Sim())
    monkeypatch.setattr(defense_matrix, "_project_into", lambda d, p, ctx: pp(float(p.X[0, 0]) - 0.05))
    monkeypatch.setattr(defense_matrix, "_point_attack", lambda name, ctx: None)
    args = argparse.Namespace(loop_rounds=2, loop_steps=0, steps=6, percentile=90.0, confirm_draws=3, confirm_z=2.0)
    ctx = defense_matrix._Ctx(args, None, np.zeros((4, 3)), np.array([0, 1, 0, 1]), None, None, None)
    # naive 0.5 (continued), naive_start 0.4 -> 0.55 after the loop: the loop wins
    chosen, info = defense_matrix._adaptive_for("biggio2012", "loss", pp(0.1), pp(0.5), pp(0.4), ctx, 0.1)
    assert looped == [(0.4, 2, 3)] and info["chosen"] == "naive_start+loop"
    assert np.isclose(chosen.X[0, 0], 0.55) and info["val_error_sim"] >= info["val_error_sim_naive"] == 0.5
    # naive 0.7: nothing at the start budget beats it after the loop, the naive poison is kept as it is
    looped.clear()
    chosen, info = defense_matrix._adaptive_for("biggio2012", "loss", pp(0.1), pp(0.7), pp(0.4), ctx, 0.1)
    assert looped == [(0.4, 2, 3)] and info["chosen"] == "naive" and chosen.X[0, 0] == 0.7
    # label attacks have no loop: every candidate is final
    looped.clear()
    chosen, info = defense_matrix._adaptive_for("label_flip", "loss", pp(0.9), pp(0.5), pp(0.5), ctx, 0.1)
    assert looped == [] and info["chosen"] == "region" and info["loop_history"] is None
    # a random defense: the loop's win on the selection draws is checked on fresh draws, where it loses
    monkeypatch.setattr(defense_matrix, "_simulation", lambda ctx, d, f: RandomSim())
    chosen, info = defense_matrix._adaptive_for("biggio2012", "roni", pp(0.1), pp(0.5), pp(0.4), ctx, 0.1)
    assert info["best_on_selection_draws"] == "naive_start+loop" and info["chosen"] == "naive"
    assert chosen.X[0, 0] == 0.5 and info["val_error_sim_fresh_draws"] == pytest.approx({"naive": 0.5,
                                                                                         "naive_start+loop": 0.45})
    assert asked == [3]                  # on --confirm-draws fresh draws
    # against RONI every candidate also comes with all its copies on one location
    assert {"naive+concentrated", "naive_start+concentrated", "region+concentrated"} <= set(
        info["candidates_val_error_sim"])
    assert np.isclose(info["fresh_draws_lead"], -0.05) and info["fresh_draws_lead_se"] == 0.0
    monkeypatch.setattr(defense_matrix, "_simulation", lambda ctx, d, f: Sim())
    _, info = defense_matrix._adaptive_for("biggio2012", "sever", pp(0.1), pp(0.5), pp(0.4), ctx, 0.1)
    assert not any(nm.endswith("+concentrated") for nm in info["candidates_val_error_sim"])


def test_adaptive_vs_naive_pairs_the_defenders_draws():
    """The paired view of a random defense: per cell the mean of (adaptive - naive) over the shared draws and its
    standard error; a cell counts as a win or loss beyond noise only past two standard errors."""
    rows = [{"attack": "a", "mode": "naive", "defense": "roni", "eps": 0.1, "test_error": 0.2,
             "test_error_draws": [0.1, 0.2, 0.3]},
            {"attack": "a", "mode": "adaptive", "defense": "roni", "eps": 0.1, "test_error": 0.3,
             "test_error_draws": [0.2, 0.3, 0.4], "val_error_sim": 0.5, "val_error_sim_naive": 0.4},
            {"attack": "b", "mode": "naive", "defense": "roni", "eps": 0.1, "test_error": 0.2,
             "test_error_draws": [0.1, 0.2, 0.3]},
            {"attack": "b", "mode": "adaptive", "defense": "roni", "eps": 0.1, "test_error": 0.1 + 0.2 / 3,
             "test_error_draws": [0.3, 0.0, 0.2]},
            {"attack": "a", "mode": "naive", "defense": "sphere", "eps": 0.1, "test_error": 0.2},
            {"attack": "a", "mode": "adaptive", "defense": "sphere", "eps": 0.1, "test_error": 0.2}]
    out = defense_matrix.adaptive_vs_naive(rows, ["roni", "sphere"])
    roni = out["roni"]
    assert (roni["wins"], roni["ties"], roni["losses"]) == (1, 0, 1)
    (a, ea, ma, sa), (b, eb, mb, sb) = roni["paired"]
    # a: +0.1 on every draw (standard error 0): beyond noise; b: differences (0.2, -0.2, -0.1)
    assert (a, ea, b, eb) == ("a", 0.1, "b", 0.1) and np.isclose(ma, 0.1) and np.isclose(sa, 0.0)
    d = np.array([0.2, -0.2, -0.1])
    assert np.isclose(mb, d.mean()) and np.isclose(sb, d.std(ddof=1) / np.sqrt(3))
    assert roni["sig_wins"] == 1 and roni["sig_losses"] == 0
    assert "paired" not in out["sphere"] and out["sphere"]["ties"] == 1
