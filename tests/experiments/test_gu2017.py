"""The BadNets experiment: a quick run on the embedded fallback data writes the table and resumes."""

import json

import pytest

from experiments import gu2017 as exp


def test_quick_run_writes_rows_with_the_keys_and_resumes(tmp_path, monkeypatch):
    monkeypatch.delenv("BILEVEL_DATA_DIR", raising=False)
    out = tmp_path / "out"
    # in place: the default (appended copies) compiles a second training loop for the larger set, ~1 s more;
    # poison_dataset(append=True) is tested in tests/poisoning/test_gu2017.py
    argv = ["--quick", "--pairs", "1-7", "--no-all-to-all", "--poisoning", "replace", "--defenses", "ci", "--out",
            str(out), "--data-dir", str(tmp_path / "none")]
    res = exp.main(argv)
    assert res["fallback"] is True and res["dataset"] == "digits"
    rows = res["rows"]
    assert [(r["attack"], r["defense"]) for r in rows] == [("none", d) for d in ("none", "ci")] + [
        ("badnets", d) for d in ("none", "ci")]
    for r in rows:
        for key in ("attack", "defense", "clean_accuracy", "attack_success", "tpr", "fpr"):
            assert key in r
        assert 0.0 <= r["clean_accuracy"] <= 1.0
    clean_rows, attacked = rows[1:2], rows[2:]
    assert all(r["tpr"] is None and 0.0 <= r["fpr"] <= 1.0 for r in clean_rows)   # FPR on the clean set
    assert attacked[0]["n_poison"] >= 1 and 0.0 <= attacked[0]["attack_success"] <= 1.0
    among = attacked[0]["attack_success_among_correct"]          # None when no test image is classified right
    assert among is None or 0.0 <= among <= 1.0
    assert all(0.0 <= r["tpr"] <= 1.0 and 0.0 <= r["fpr"] <= 1.0 for r in attacked[1:])
    assert res["paper"]["attack_success_min"] == 0.99
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["rows"] == json.loads(json.dumps(rows))
    assert (out / "triggers.png").stat().st_size > 0 and (out / "heatmap.png").stat().st_size > 0
    again = exp.main(argv)                                     # resumes from progress.npz: same numbers
    assert [r.get("seconds") for r in again["rows"]] == [r.get("seconds") for r in rows]


def test_settings_and_flags():
    assert [s.name for s in exp.parse_settings("1-7,all-3", True)] == ["1->7", "all->3", "all_to_all"]
    assert len(exp.parse_settings("all", False)) == 90
    for bad in ("1-1", "1-x", "3-10"):
        with pytest.raises(SystemExit, match="--pairs"):
            exp.parse_settings(bad, False)
    with pytest.raises(SystemExit, match="--rate"):
        exp.main(["--quick", "--rate", "0"])
    with pytest.raises(SystemExit, match="--defenses"):
        exp.main(["--quick", "--defenses", "strip"])
    with pytest.raises(SystemExit, match="--lr"):
        exp.main(["--quick", "--lr", "0"])
    with pytest.raises(SystemExit, match="--batch-size"):
        exp.main(["--quick", "--batch-size", "0"])
    assert exp.build_parser().parse_args([]).poisoning == "append"      # the paper adds the backdoored copies
