"""The transfer benchmark experiment: one quick run on the embedded fallback data."""

import json

import numpy as np

from experiments import schwarzschild2021 as exp


def test_quick_run_writes_the_table_and_resumes(tmp_path, monkeypatch):
    monkeypatch.delenv("BILEVEL_DATA_DIR", raising=False)
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = ["--quick", "--attacks", "bp", "--boxes", "white", "--settings", "frozen,end2end", "--model", "convnet",
            "--out", str(out), "--cache-dir", str(cache), "--data-dir", str(tmp_path / "none")]
    res = exp.main(argv)
    rows = res["rows"]
    assert [(r["setting"], r["box"]) for r in rows] == [("frozen", "white"), ("end2end", "white")]
    for r in rows:
        for key in ("attack", "setting", "trials", "success_rate", "clean_accuracy", "seconds"):
            assert key in r
        assert r["trials"] == 2 and 0.0 <= r["ci95"][0] <= r["success_rate"] <= r["ci95"][1] <= 1.0
    assert rows[0]["paper"] == 85.0 and res["fallback"] is True
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["rows"][0]["success_rate"] == rows[0]["success_rate"]
    assert (out / "success.png").stat().st_size > 0 and (out / "poisons_bp.png").stat().st_size > 0
    # a rerun resumes from the checkpoint: same outcomes, nothing recomputed
    again = exp.main(argv)
    assert [r["successes"] for r in again["rows"]] == [r["successes"] for r in rows]
    assert [r["seconds"] for r in again["rows"]] == [r["seconds"] for r in rows]


def test_trials_are_seeded_and_clean_label():
    y_ft = np.repeat(np.arange(5), 30)
    y_te = np.repeat(np.arange(5), 10)
    a, b = exp.make_trials(y_ft, y_te, 12, 25, seed=3), exp.make_trials(y_ft, y_te, 12, 25, seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert np.all(a["base_class"] != y_te[a["target"]])                     # another class than the target's
    assert np.all(y_ft[a["poison_idx"]] == a["base_class"][:, None])        # poisons keep their true labels
    assert all(len(set(row)) == 25 for row in a["poison_idx"])
    import pytest

    with pytest.raises(ValueError, match="--poisons"):
        exp.make_trials(y_ft, y_te, 2, 31, seed=0)
