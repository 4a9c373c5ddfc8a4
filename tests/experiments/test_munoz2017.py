"""End-to-end tests of experiments/munoz2017.py (quick settings; Spambase only when the data is present)."""

import json

import numpy as np
import pytest

from experiments import munoz2017


def test_munoz2017_quick_digits_writes_results_and_resumes(tmp_path):
    res = munoz2017.main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["setting"] == "digits" and [r["n_poison"] for r in saved["rows"]] == [0, 2]
    for r in saved["rows"]:
        assert {"n_poison", "test_error", "test_error_random_flip", "seconds", "test_error_per_split"} <= set(r)
        assert 0.0 <= r["test_error"] <= 1.0
    assert saved["rows"][-1]["objective"] > saved["rows"][0]["objective"]  # the attack raised the val loss
    for name in ("test_error.png", "poison_points.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    # a second run resumes from the checkpoint: the same poison, hence the same numbers and timings
    again = munoz2017.main(["--quick", "--no-plots", "--out", str(tmp_path)])
    assert [r["test_error"] for r in again["rows"]] == [r["test_error"] for r in res["rows"]]
    assert again["rows"][-1]["seconds"] == res["rows"][-1]["seconds"]


def test_munoz2017_spambase_adaline_quick(tmp_path, shared_data_dir):
    res = munoz2017.main(["--quick", "--no-plots", "--setting", "spambase-adaline", "--splits", "2",
                          "--data-dir", shared_data_dir, "--out", str(tmp_path)])
    assert res["dataset"] == "spambase" and res["learner"].startswith("adaline")
    assert res["config"]["n_train"] == 100 and res["config"]["seeds"] == [0, 1]
    last = res["rows"][-1]
    assert len(last["test_error_per_split"]) == 2
    np.testing.assert_allclose(last["test_error"], np.mean(last["test_error_per_split"]))
    assert "Spambase" in res["paper"]


def test_munoz2017_rejects_inconsistent_settings(tmp_path):
    with pytest.raises(SystemExit):
        munoz2017.main(["--learner", "adaline", "--quick", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        munoz2017.main(["--setting", "spambase-lr", "--mode", "specific", "--quick", "--out", str(tmp_path)])


@pytest.mark.xla_optimized   # run-bound: trains a CNN (tests/conftest.py)
def test_munoz2017_cnn_quick_falls_back_to_digits_156(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("BILEVEL_DATA_DIR", raising=False)  # no MNIST: sklearn's 8x8 digits 1, 5, 6
    res = munoz2017.main(["--setting", "cnn", "--quick", "--no-plots", "--out", str(tmp_path)])
    assert "falling back" in capsys.readouterr().out
    assert res["dataset"] == "digits" and res["method"] == "backgradient" and "MunozCNN" in res["learner"]
    assert res["config"]["classes"] == [1, 5, 6] and res["config"]["momentum"] == 0.9
    assert [r["n_poison"] for r in res["rows"]] == [0, 1, 2]
    assert res["rows"][-1]["objective"] > res["rows"][0]["objective"]  # the attack raised the validation loss
    assert "hypergradient_check" not in res  # --quick skips it (tests/poisoning/test_munoz2017.py checks a tiny CNN)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert {"clean_accuracy", "seconds", "paper", "rows"} <= set(saved) and "not the paper's" in saved["paper"]
    with pytest.raises(SystemExit):
        munoz2017.main(["--setting", "cnn", "--method", "implicit", "--quick", "--out", str(tmp_path)])
