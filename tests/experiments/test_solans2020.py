"""End-to-end test of experiments/solans2020.py on the offline synthetic data with quick settings."""

import json

from experiments import solans2020


def test_solans2020_quick_writes_results(tmp_path):
    results = solans2020.main(["--quick", "--fractions", "0.1", "0.2", "--out", str(tmp_path)])
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["rows"] == json.loads(json.dumps(results["rows"]))
    rows = on_disk["rows"]
    assert [r["fraction"] for r in rows] == [0.1, 0.2]
    assert rows[0]["n_poison"] < rows[1]["n_poison"]
    for r in rows:
        for method in ("clean", "attack", "flip_inject", "random_flip"):
            m = r[method]
            assert 0.0 <= m["accuracy"] <= 1.0
            assert -1.0 <= m["dp_difference"] <= 1.0
            assert {"average_odds_difference", "fpr_privileged", "fnr_unprivileged"} <= set(m)
        # the clean model is the same at every fraction
        assert r["clean"] == rows[0]["clean"]
    facts = on_disk["per_repeat"][0]["facts"]
    assert facts["objective_poisoned"] >= facts["objective_clean"]
    assert "not retrieved" in on_disk["paper"]["note"]
    for name in ("dp_difference.png", "accuracy.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    # resume: the finished repeat is read back from the checkpoint, same numbers
    again = solans2020.main(["--quick", "--fractions", "0.1", "0.2", "--out", str(tmp_path), "--resume",
                             "--no-plots"])
    assert again["rows"] == results["rows"]
