"""The from-scratch experiments (Witches' Brew and the training-time defenses) on the digits fallback."""

import json

import numpy as np
import pytest

from experiments import geiping2021, geiping2021_defense


def test_quick_brew_run_writes_results_resumes_and_the_defense_run_reuses_its_poisons(tmp_path, monkeypatch):
    monkeypatch.setenv("BILEVEL_DATA_DIR", str(tmp_path / "no-data"))  # the digits fallback
    out = tmp_path / "brew"
    res = geiping2021.main(["--quick", "--out", str(out)])
    rows = {(r["attack"], r["defense"]): r for r in res["rows"]}
    assert set(rows) == {("brew", "none"), ("noise", "none")}
    for r in rows.values():
        for key in ("attack", "setting", "trials", "success_rate", "clean_accuracy", "seconds", "ci95"):
            assert key in r
        assert r["trials"] == 2 * 2 and 0 <= r["success_rate"] <= 1 and 0.1 < r["clean_accuracy"] <= 1
        assert r["ci95"][0] <= r["success_rate"] <= r["ci95"][1]
        # the continuous measures: success exactly when the adversarial logit beats every other one
        margin, prob = np.asarray(r["margin"]), np.asarray(r["adv_prob"])
        assert margin.shape == prob.shape == (2, 2) and np.all((prob >= 0) & (prob <= 1))
        clear = np.abs(margin) > 1e-3  # (rounded in results.json)
        assert np.array_equal((margin > 0)[clear], (np.asarray(r["per_target"]) == 1)[clear])
        assert 0 < r["train_accuracy"] <= 1 and len(r["crafting_model_margin"]) == 2
    assert 0 < res["crafting_model_train_accuracy"] <= 1
    assert len(rows[("brew", "none")]["crafting_loss"]) == 2 and rows[("noise", "none")]["crafting_loss"] is None
    assert json.loads((out / "results.json").read_text())["rows"] == json.loads(json.dumps(res["rows"]))
    assert (out / "success.png").is_file() and (out / "poisons_0.png").is_file()
    ckpt = np.load(out / "checkpoint.npz")
    assert any(k.startswith("brew/0/") for k in ckpt.files)
    # a rerun resumes from the checkpoint: the same numbers
    again = geiping2021.main(["--quick", "--out", str(out)])
    assert [r["per_target"] for r in again["rows"]] == [r["per_target"] for r in res["rows"]]

    d = geiping2021_defense.main(["--quick", "--out", str(tmp_path / "def"), "--poisons-from", str(out),
                                  "--defenses", "dpsgd", "--targets", "1", "--seeds", "1"])
    assert {(r["attack"], r["defense"]) for r in d["rows"]} == {("brew", "dpsgd")}
    new = np.load(tmp_path / "def" / "checkpoint.npz")
    brew_keys = [k for k in new.files if k.startswith("brew/0/") and k.endswith(":poisons")]
    assert brew_keys and np.array_equal(new[brew_keys[0]], ckpt[brew_keys[0]])  # reused, not recrafted
    assert 0 < d["dp_sgd"]["epsilon"] < np.inf
    with pytest.raises(SystemExit, match="--defenses"):
        geiping2021_defense.main(["--quick", "--out", str(tmp_path / "x"), "--defenses", "nope"])
    with pytest.raises(SystemExit, match="--eps"):
        geiping2021.main(["--quick", "--out", str(tmp_path / "x"), "--eps", "-1"])
