"""End-to-end test of experiments/biggio2012.py on digits with quick settings."""

import json

import pytest

from experiments import biggio2012


def test_biggio2012_quick_writes_results_averaged_over_random_splits(tmp_path):
    results = biggio2012.main(["--dataset", "digits", "--pair", "1", "7", "--n-train", "60", "--n-val", "200",
                               "--budgets", "1", "3", "--quick", "--splits", "2", "--out", str(tmp_path)])
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["clean_test_error"] == results["clean_test_error"]
    assert 0.0 <= on_disk["clean_test_error"] <= 1.0
    rows = on_disk["rows"]
    assert [r["n_poison"] for r in rows] == [1, 3]
    for r in rows:
        assert {"n_poison", "test_error", "seconds", "compile_seconds"} <= set(r)
        assert 0.0 <= r["test_error"] <= 1.0 and r["seconds"] >= 0 and r["compile_seconds"] >= 0
    assert rows[-1]["test_error"] >= on_disk["clean_test_error"]
    for name in ("test_error.png", "poison_points.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    # two random splits: every number is the mean over them, the spread is reported
    per = results["per_split"]
    assert [p["seed"] for p in per] == [0, 1]
    for k, row in enumerate(results["rows"]):
        errs = [p["rows"][k]["test_error"] for p in per]
        assert row["test_error"] == pytest.approx(sum(errs) / 2) and row["test_error_per_split"] == errs
        assert row["test_error_std"] == pytest.approx(abs(errs[0] - errs[1]) / 2)
    assert results["clean_test_error"] == pytest.approx(sum(p["clean_test_error"] for p in per) / 2)


def test_biggio2012_one_vs_rest_extension(tmp_path):
    results = biggio2012.main(["--dataset", "digits", "--classes", "0", "1", "2", "--n-train", "45", "--n-val", "90",
                               "--budgets", "1", "3", "--quick", "--out", str(tmp_path)])
    assert results["mode"] == "one-vs-rest" and results["classes"] == [0, 1, 2]
    rows = results["rows"]
    assert [r["n_poison"] for r in rows] == [1, 3]
    # the summed OvR validation hinge grows with the poison; errors are rates
    assert rows[-1]["val_hinge"] > results["clean_val_hinge"]
    assert all(0.0 <= r["test_error"] <= 1.0 for r in rows)
    # the poison labels are among the attacked classes
    assert set(results["poison_labels"]) <= {0, 1, 2}
    assert (tmp_path / "poison_points.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit, match="at least 3"):
        biggio2012.main(["--classes", "0", "1", "--quick", "--no-plots", "--out", str(tmp_path)])
