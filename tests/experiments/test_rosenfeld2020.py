"""experiments/rosenfeld2020.py on scikit-learn's digits 1 vs 7: one curve per noise level."""

import json

import numpy as np

from experiments import rosenfeld2020


def test_quick_run_writes_a_curve_per_q(tmp_path):
    res = rosenfeld2020.main(["--quick", "--q", "0.05,0.2", "--out", str(tmp_path), "--no-plots", "--max-radius", "50"])
    disk = json.loads((tmp_path / "results.json").read_text())
    assert disk["experiment"] == "rosenfeld2020" and set(disk["curves"]) == {"0.05", "0.2"}
    top = disk["curves"][str(disk["q"])]
    assert all(disk[k] == top[k] for k in ("radius", "certified_accuracy", "clean_accuracy", "median_certified"))
    lo, hi = res["curves"]["0.05"], res["curves"]["0.2"]
    for c in (lo, hi):
        acc = np.array(c["certified_accuracy"])
        assert abs(acc[0] - c["clean_accuracy"]) < 1e-9 and np.all(np.diff(acc) <= 0) and acc[-1] == 0
    # more noise: more abstentions (the Chernoff bound loosens), as the paper's trade-off says
    assert hi["abstain"] >= lo["abstain"] and lo["clean_accuracy"] > 0.8
