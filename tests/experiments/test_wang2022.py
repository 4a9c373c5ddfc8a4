"""experiments/wang2022.py (Finite Aggregation through levine2021 --mode fa) on sklearn's digits."""

import json

import numpy as np

from experiments import wang2022


def test_wang2022_quick_trains_k_times_d_learners_and_certifies(tmp_path):
    res = wang2022.main(["--quick", "--dataset", "digits", "--k", "5", "--d", "3", "--chunk", "15", "--epochs", "10",
                         "--n-test", "150", "--out", str(tmp_path), "--no-plots"])
    disk = json.loads((tmp_path / "results.json").read_text())
    assert disk["experiment"] == "wang2022" and disk["mode"] == "fa"
    assert disk["config"]["k"] == 5 and disk["config"]["d"] == 3 and len(disk["config"]["shifts"]) == 3
    curve = np.array(res["certified_accuracy"])
    assert abs(curve[0] - disk["clean_accuracy"]) < 1e-6 and disk["clean_accuracy"] > 0.7 and np.all(np.diff(curve) <= 0) and curve[-1] == 0
    # a bucket reaches 3 of 15 learners, each vote moves the gap by at most 2: radius <= 15 / 2
    assert 0 <= disk["median_certified"] <= 7
