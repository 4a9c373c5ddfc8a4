"""End-to-end test of experiments/jagielski2021.py (--quick) on the offline default (breast cancer)."""

import json

import numpy as np
import pytest

from experiments import jagielski2021


def test_jagielski2021_quick_writes_results_and_resumes(tmp_path, capsys):
    # one subpopulation per type: every influence run compiles its own loop (its Greedy schedule is static)
    argv = ["--quick", "--n-subpops", "1", "--rates", "0.5", "2", "--out", str(tmp_path)]
    results = jagielski2021.main(argv)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    cfg = on_disk["config"]
    assert on_disk["dataset"] == "breast_cancer" and cfg["rates"] == [0.5, 2.0] and cfg["rounds"] == 2
    rows = on_disk["rows"]
    names = cfg["subpopulations"]
    assert len(names) == 2 and len(rows) == 2 * 2 * 2          # 1 feature + 1 cluster, 2 rates, 2 attacks
    for r in rows:
        assert r["n_poison"] == int(round(r["rate"] * r["n_train"]))
        assert r["target_damage"] == pytest.approx(r["clean_target_acc"] - r["poisoned_target_acc"])
        assert r["n_test"] >= cfg["min_test"] and cfg["min_train"] <= r["n_train"]
    assert {r["type"] for r in rows} == {"feature", "cluster"}
    summary = on_disk["summary"]
    assert len(summary) == 2 * 2 * 2
    for s in summary:
        sel = [r["target_damage"] for r in rows if (r["type"], r["attack"], r["rate"]) == (s["type"], s["attack"], s["rate"])]
        assert s["n_subpops"] == 1 and s["target_damage_mean"] == pytest.approx(np.mean(sel))
    # the attack hurts the targets more than the rest (rate 2)
    for s in summary:
        if s["rate"] == 2.0:
            assert s["target_damage_mean"] > s["collateral_mean"]
    assert on_disk["summary"] == results["summary"]
    assert (tmp_path / "damage_vs_rate.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "target dmg" in out and "not retrieved" in out
    # --resume with everything done reuses the checkpointed rows
    again = jagielski2021.main(argv + ["--resume", "--no-plots"])
    assert again["rows"] == on_disk["rows"]
    with pytest.raises(SystemExit, match="other settings"):
        jagielski2021.main(["--quick", "--n-subpops", "2", "--rates", "0.5", "2", "--out", str(tmp_path),
                            "--resume", "--no-plots"])
    with pytest.raises(ValueError, match="rates"):
        jagielski2021.main(["--quick", "--rates", "0", "--out", str(tmp_path)])
