"""End-to-end test of experiments/jagielski2018.py on diabetes with quick settings."""

import json

import numpy as np
import pytest

from experiments import jagielski2018


def test_jagielski2018_quick_writes_results(tmp_path):
    results = jagielski2018.main(["--dataset", "diabetes", "--n-train", "60", "--n-val", "60", "--n-test", "60",
                                  "--rates", "0", "0.1", "--init", "inverse", "--quick", "--out", str(tmp_path)])
    on_disk = json.loads((tmp_path / "results.json").read_text())
    rows = on_disk["rows"]
    assert [r["poison_rate"] for r in rows] == [0.0, 0.1]
    for r in rows:
        assert {"poison_rate", "mse_clean", "mse_statp", "mse_bgd", "mse_optp", "seconds"} <= set(r)
    assert rows[0]["mse_optp"] == rows[0]["mse_clean"]
    assert rows[1]["n_poison"] == 7 and rows[1]["mse_optp"] > rows[1]["mse_clean"]
    assert rows[1]["optp_objective"] >= rows[1]["optp_objective_start"] and rows[1]["optp_init"] == "inverse"
    assert on_disk["rows"][1]["mse_optp"] == results["rows"][1]["mse_optp"]
    assert (tmp_path / "mse_vs_rate.png").read_bytes()[:4] == b"\x89PNG"
    # the defenses, against every attack in the same run (TRIM knows the clean size n, as in the paper)
    for r in rows:
        for attack in ("statp", "bgd", "optp"):
            assert all(np.isfinite(r[f"mse_{attack}_{d}"]) for d in ("trim", "huber", "ransac"))
    assert rows[0]["mse_optp_trim"] == rows[0]["mse_clean"]                  # nothing to trim on clean data
    poisoned = rows[1]
    assert poisoned["trim_optp_detection"] == 1.0 and poisoned["trim_optp_false_positive"] == 0.0
    assert poisoned["mse_optp_trim"] < 1.05 * poisoned["mse_clean"] < poisoned["mse_optp"]
    assert on_disk["config"]["defenses"] == ["trim", "huber", "ransac"]
    assert (tmp_path / "defenses_mse_vs_rate.png").read_bytes()[:4] == b"\x89PNG"


def test_make_victim():
    assert jagielski2018.make_victim("ols").name == "ridge(reg=1e-06)"
    assert jagielski2018.make_victim("enet", 0.01).name == "elastic-net(reg=0.01, l1_ratio=0.5)"
    with pytest.raises(ValueError, match="model"):
        jagielski2018.make_victim("svr")
