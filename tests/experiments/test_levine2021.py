"""End-to-end test of experiments/levine2021.py (--quick, sklearn's digits): results, plot, resume."""

import json

import numpy as np
import pytest

from experiments import _cli, levine2021


def test_levine2021_quick_writes_results_and_resumes_from_a_partial_checkpoint(tmp_path, capsys):
    argv = ["--quick", "--dataset", "digits", "--k", "10", "--chunk", "4", "--epochs", "10", "--n-test", "200",
            "--out", str(tmp_path)]
    res = levine2021.main(argv)
    disk = json.loads((tmp_path / "results.json").read_text())
    assert disk["config"]["k"] == 10 and disk["mode"] == "dpa" and disk["paper"]["median_certified"] == 448
    radius, curve = np.array(disk["radius"]), np.array(disk["certified_accuracy"])
    assert radius[0] == 0 and np.all(np.diff(radius) == 1) and len(curve) == len(radius)
    assert curve[0] == pytest.approx(disk["clean_accuracy"]) and np.all(np.diff(curve) <= 0) and curve[-1] == 0
    assert disk["clean_accuracy"] > 0.8 and 0 <= disk["median_certified"] <= 5          # rho <= k / 2
    assert curve[disk["median_certified"]] >= 0.5 > curve[disk["median_certified"] + 1]
    assert (tmp_path / "certified_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert "median certified" in capsys.readouterr().out
    # a run killed after the first chunk: resuming recomputes only the rest and gives the same numbers
    ckpt = _cli.Checkpoint(tmp_path / "checkpoint.npz")
    state = ckpt.load()
    assert int(state["done"]) == 10
    votes = np.array(state["votes"])
    votes[4:] = 0
    ckpt.save({**state, "done": 4, "votes": votes})
    again = levine2021.main(argv + ["--resume", "--no-plots"])
    assert "resuming" in capsys.readouterr().out
    assert again["certified_accuracy"] == res["certified_accuracy"] and again["median_certified"] == res["median_certified"]
    # other settings refuse the checkpoint
    with pytest.raises(SystemExit, match="other settings"):
        levine2021.main(argv + ["--k", "8", "--resume", "--no-plots"])
    with pytest.raises(SystemExit, match="--k"):
        levine2021.main(["--quick", "--dataset", "digits", "--k", "0", "--out", str(tmp_path / "x"), "--no-plots"])
