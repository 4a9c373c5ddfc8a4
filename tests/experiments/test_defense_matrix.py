"""End-to-end test of experiments/defense_matrix.py (--quick: embedded digits 1 vs 7, tiny)."""

import json

import numpy as np

from experiments import defense_matrix


def test_quick_matrix_writes_rows_bounds_and_heatmap(tmp_path):
    argv = ["--quick", "--attacks", "subpopulation", "--defenses", "sphere", "--eps", "0.1",
            "--out", str(tmp_path)]
    res = defense_matrix.main(argv)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["fallback"] is True and saved["dataset"] == "mnist17" and "koh2022_minmax" in saved["left_out"]
    rows = saved["rows"]
    assert {(r["mode"], r["defense"]) for r in rows} == {("naive", "sphere"), ("adaptive", "sphere")}
    for r in rows:
        assert {"attack", "mode", "defense", "test_error", "eps", "bound"} <= set(r)
        assert r["attack"] == "subpopulation" and r["eps"] == 0.1 and 0.0 <= r["test_error"] <= 1.0
        assert r["n_poison"] == round(0.1 * saved["config"]["n_train"]) and 0 <= r["target_error"] <= 1
    b = saved["bounds"][0]
    assert b["eps"] == 0.1 and b["bound"] == saved["bound"]["0.1"] == rows[0]["bound"] > 0
    # the certificate holds for the naive poison and every adaptive one (projected onto its set)
    assert set(b["attacks"]) == {"subpopulation/naive", "subpopulation/adaptive/sphere"}
    assert all(v["below_bound"] and v["oracle_objective"] <= b["bound"] + 1e-5 for v in b["attacks"].values())
    # the adaptive poison is chosen among candidates (the naive one included) by the simulated defended error on
    # the attacker's validation set: never below the naive one there; the test-set tally counts every cell once
    for r in (r for r in rows if r["mode"] == "adaptive"):
        assert r["chosen"] in r["candidates_val_error_sim"] and "naive" in r["candidates_val_error_sim"]
        assert r["val_error_sim"] == max(r["candidates_val_error_sim"].values()) >= r["val_error_sim_naive"]
    tally = saved["adaptive_vs_naive"]
    assert set(tally) == {"sphere"}
    assert all(v["wins"] + v["ties"] + v["losses"] == 1 and v["val_losses"] == 0 for v in tally.values()), tally
    assert (tmp_path / "heatmap_eps0.1.png").stat().st_size > 0
    assert not (tmp_path / "checkpoint.npz").exists() and res["all_below_bound"] is True
    assert np.isfinite(saved["clean_test_error"])
