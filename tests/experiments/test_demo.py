"""``make demo`` = ``python -m experiments.demo``: the Biggio attack on offline digits, table + plots."""

from pathlib import Path

from experiments import demo


def test_demo_runs_biggio_on_digits_and_writes_plots(tmp_path, capsys):
    res = demo.main(["--quick", "--out", str(tmp_path)])
    assert res["experiment"] == "biggio2012" and res["dataset"] == "digits"
    assert [r["n_poison"] for r in res["rows"]] == [1, 5, 10, 20]
    # the attack does something: 20 poison points raise the validation hinge loss over the clean one
    assert res["rows"][-1]["val_hinge"] > res["clean_val_hinge"]
    for p in res["plots"]:
        assert Path(p).is_file() and Path(p).stat().st_size > 1000
    out = capsys.readouterr().out
    assert "paper (MNIST)" in out and "test_error.png" in out
