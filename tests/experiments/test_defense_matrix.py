"""End-to-end test of experiments/defense_matrix.py (--quick: embedded digits 1 vs 7, tiny)."""

import json

import numpy as np

from experiments import defense_matrix


def test_quick_matrix_writes_rows_bounds_and_heatmap(tmp_path):
    argv = ["--quick", "--attacks", "subpopulation", "--defenses", "sphere", "svd", "--eps", "0.1",
            "--out", str(tmp_path)]
    res = defense_matrix.main(argv)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["fallback"] is True and saved["dataset"] == "mnist17" and "koh2022_minmax" in saved["left_out"]
    rows = saved["rows"]
    assert {(r["mode"], r["defense"]) for r in rows} == {("naive", "sphere"), ("naive", "svd"),
                                                          ("adaptive", "sphere"), ("adaptive", "svd")}
    for r in rows:
        assert {"attack", "mode", "defense", "test_error", "eps", "bound"} <= set(r)
        assert r["attack"] == "subpopulation" and r["eps"] == 0.1 and 0.0 <= r["test_error"] <= 1.0
        assert r["n_poison"] == round(0.1 * saved["config"]["n_train"]) and 0 <= r["target_error"] <= 1
    b = saved["bounds"][0]
    assert b["eps"] == 0.1 and b["bound"] == saved["bound"]["0.1"] == rows[0]["bound"] > 0
    # the certificate holds for the naive poison and the one aimed at sphere + slab (projected onto its set)
    assert set(b["attacks"]) == {"subpopulation/naive", "subpopulation/adaptive"}
    assert all(v["below_bound"] and v["oracle_objective"] <= b["bound"] + 1e-5 for v in b["attacks"].values())
    # the adaptive poison is kept at least as often as the naive one by both sanitizers
    kept = {(r["mode"], r["defense"]): r["poison_kept"] for r in rows}
    assert all(kept[("adaptive", d)] >= kept[("naive", d)] for d in ("sphere", "svd")), kept
    assert (tmp_path / "heatmap_eps0.1.png").stat().st_size > 0
    assert not (tmp_path / "checkpoint.npz").exists() and res["all_below_bound"] is True
    assert np.isfinite(saved["clean_test_error"])
