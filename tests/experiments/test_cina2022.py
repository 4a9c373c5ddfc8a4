"""The sponge-poisoning experiment on the digits fallback."""

import json

from experiments import cina2022


def test_quick_run_reports_density_and_accuracy_per_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("BILEVEL_DATA_DIR", str(tmp_path / "no-data"))
    out = tmp_path / "out"
    res = cina2022.main(["--quick", "--out", str(out), "--lams", "5", "--seeds", "1"])
    assert [r["setting"] for r in res["rows"]] == ["lambda=0", "lambda=5"]
    for r in res["rows"]:
        assert 0 < r["density_mean"] <= 1 and 0 < r["clean_accuracy"] <= 1 and r["trials"] == 1
    assert res["rows"][0]["density_ratio"] == 1.0
    assert json.loads((out / "results.json").read_text())["rows"][1]["lam"] == 5.0
    assert (out / "density.png").is_file()
