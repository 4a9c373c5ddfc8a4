"""The Sleeper Agent experiment on the digits fallback: one trial, two crafting rounds."""

import json

from experiments import souri2022


def test_quick_run_retrains_during_crafting_and_writes_the_table(tmp_path, monkeypatch):
    monkeypatch.setenv("BILEVEL_DATA_DIR", str(tmp_path / "no-data"))
    out = tmp_path / "out"
    argv = ["--quick", "--out", str(out), "--targets", "1", "--seeds", "1", "--rounds", "2", "--sources", "5"]
    res = souri2022.main(argv)
    assert [r["attack"] for r in res["rows"]] == ["sleeper", "noise"]
    for r in res["rows"]:
        assert r["trials"] == 1 and 0 <= r["success_rate"] <= 1 and 0.1 < r["clean_accuracy"] <= 1
    assert res["rows"][0]["paper"] == souri2022.PAPER and res["fallback"] is True
    assert json.loads((out / "results.json").read_text())["rounds"] == 2 and (out / "poisons.png").is_file()
    again = souri2022.main(argv)  # resumes: the same numbers from the checkpoint
    assert [r["per_trial"] for r in again["rows"]] == [r["per_trial"] for r in res["rows"]]
