"""End-to-end test of experiments/biggio2012.py on digits with quick settings."""

import json

from experiments import biggio2012


def test_biggio2012_quick_writes_results(tmp_path):
    results = biggio2012.main(["--dataset", "digits", "--pair", "1", "7", "--n-train", "60", "--n-val", "200",
                               "--budgets", "1", "3", "--quick", "--out", str(tmp_path)])
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
