"""End-to-end test of experiments/jagielski2018.py on diabetes with quick settings."""

import json

from experiments import jagielski2018


def test_jagielski2018_quick_writes_results(tmp_path):
    # n_val == n_train: BGD (training objective) and OptP (validation objective) share one compiled loop
    results = jagielski2018.main(["--dataset", "diabetes", "--n-train", "60", "--n-val", "60", "--n-test", "60",
                                  "--rates", "0", "0.1", "--init", "inverse", "--quick", "--out", str(tmp_path)])
    on_disk = json.loads((tmp_path / "results.json").read_text())
    rows = on_disk["rows"]
    assert [r["poison_rate"] for r in rows] == [0.0, 0.1]
    for r in rows:
        assert {"poison_rate", "mse_clean", "mse_statp", "mse_bgd", "mse_optp", "seconds"} <= set(r)
    assert rows[0]["mse_optp"] == rows[0]["mse_clean"]
    assert rows[1]["n_poison"] == 7 and rows[1]["mse_optp"] > rows[1]["mse_clean"]
    assert on_disk["rows"][1]["mse_optp"] == results["rows"][1]["mse_optp"]
    assert (tmp_path / "mse_vs_rate.png").read_bytes()[:4] == b"\x89PNG"
