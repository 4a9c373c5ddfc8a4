"""The MetaPoison experiment on the digits fallback (the geiping2021 protocol with another crafter)."""

from experiments import huang2020


def test_quick_run_crafts_through_a_staggered_ensemble_and_writes_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("BILEVEL_DATA_DIR", str(tmp_path / "no-data"))
    res = huang2020.main(["--quick", "--out", str(tmp_path / "out"), "--targets", "1", "--seeds", "1",
                          "--members", "2", "--meta-steps", "2", "--budgets", "0.01"])
    rows = {r["attack"]: r for r in res["rows"]}
    assert set(rows) == {"metapoison", "noise"}
    assert rows["metapoison"]["paper"] == huang2020.PAPER and rows["noise"]["paper"] is None
    assert all(r["trials"] == 1 and 0 <= r["success_rate"] <= 1 for r in rows.values())
    assert (tmp_path / "out" / "results.json").is_file()
