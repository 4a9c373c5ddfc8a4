"""The backdoor x defense matrix: a quick run on the embedded digits writes the table, the plots, and
resumes from its checkpoint; every attack builds its poisoned set; bad flags are refused."""

import json

import numpy as np
import pytest

from experiments import backdoor_matrix as exp


def test_quick_run_writes_rows_with_the_keys_and_resumes(tmp_path, monkeypatch):
    monkeypatch.delenv("BILEVEL_DATA_DIR", raising=False)
    out = tmp_path / "out"
    argv = ["--quick", "--attacks", "badnets", "--defenses", "none,ss", "--out", str(out),
            "--data-dir", str(tmp_path / "none")]
    res = exp.main(argv)
    assert res["fallback"] is True and res["dataset"] == "digits"
    rows = res["rows"]
    assert [(r["attack"], r["defense"]) for r in rows] == [("none", "none"), ("none", "ss"), ("badnets", "none"),
                                                           ("badnets", "ss")]
    for r in rows:
        for key in ("attack", "defense", "clean_accuracy", "attack_success", "tpr", "fpr"):
            assert key in r
        assert 0.0 <= r["clean_accuracy"] <= 1.0
    assert rows[1]["tpr"] is None and 0.0 <= rows[1]["fpr"] <= 1.0                 # SS on the clean set: FPR only
    attacked = {(r["attack"], r["defense"]): r for r in rows[2:]}
    none, ss = attacked[("badnets", "none")], attacked[("badnets", "ss")]
    assert none["tpr"] is None and none["fpr"] is None                               # removes no samples
    assert 0.0 <= ss["tpr"] <= 1.0 and 0.0 <= ss["fpr"] <= 1.0 and ss["flagged"] >= 1
    assert 0.0 <= none["attack_success"] <= 1.0 and none["n_poison"] == 30           # 10 % of 300
    assert attacked[("badnets", "none")]["paper_attack_success"] == 0.95
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["rows"] == json.loads(json.dumps(rows))
    assert (out / "heatmap.png").stat().st_size > 0 and (out / "triggered_examples.png").stat().st_size > 0
    again = exp.main(argv)                                     # resumes from progress.npz: the same cells
    assert [r.get("seconds") for r in again["rows"]] == [r.get("seconds") for r in rows]
    # a defense added to the flags is a missing cell; --report-only writes the table without computing it
    report = exp.main(argv[:4] + ["none,ss,ac"] + argv[5:] + ["--report-only"])
    assert report["rows"] == again["rows"] and report["cells_missing"] == ["badnets|ac"]


def test_blended_clean_label_and_hidden_trigger_build_their_poisoned_sets(monkeypatch):
    monkeypatch.delenv("BILEVEL_DATA_DIR", raising=False)
    preset = exp.PRESETS["quick"]
    x, y, xt, yt, _, _ = exp.load_data("digits", None, 0)
    x, y, xt, yt = x[:preset.n_train], y[:preset.n_train], xt[:60], yt[:60]
    model, _ = exp.make_model("digits", "quick", dict(preset.knobs))
    victim = exp.Victim(model, exp.train_config(preset, "quick"), x, 0, preset.head_epochs)
    clean = victim.fit(x, y)                                   # the quick run's compiled training loop
    args = exp.build_parser().parse_args(["--poison-rate", "0.1", "--target", "2"])
    args.cl_eps, args.ht_eps, args.blend_test_alpha = 0.3, 0.3, 0.4
    n_target = int(np.sum(y == 2))
    bl = exp.build_backdoor("blended", args, victim, clean, x, y, xt, yt, preset)
    p = bl.poisoned.is_poison
    assert p.sum() == 30 and np.all(bl.poisoned.labels[p] == 2) and np.all(y[p] != 2)
    assert bl.info["test_alpha"] == 0.4 and len(bl.test_images) == int(np.sum(yt != 2)) and bl.victim == "scratch"
    cl = exp.build_backdoor("clean_label", args, victim, clean, x, y, xt, yt, preset)
    p = cl.poisoned.is_poison
    assert p.sum() == min(30, n_target) and np.all(y[p] == 2)                        # capped at the class
    np.testing.assert_array_equal(cl.poisoned.labels, y)
    assert cl.info["surrogate_accuracy_on_poisons"] <= 0.5                           # PGD made them hard
    ht = exp.build_backdoor("hidden_trigger", args, victim, clean, x, y, xt, yt, preset)
    p = ht.poisoned.is_poison
    assert p.sum() == min(30, n_target) and np.all(y[p] == 2) and ht.victim == "head"
    np.testing.assert_array_equal(ht.poisoned.labels, y)
    assert np.max(np.abs(ht.poisoned.images[p] - x[p])) <= 0.3 + 1e-6
    assert ht.info["source"] == 3 and len(ht.test_images) == int(np.sum(yt == 3))
    assert ht.info["collision_loss"] < ht.info["collision_loss_start"]               # features moved


def test_flags_are_checked():
    for argv, match in ((["--poison-rate", "0"], "--poison-rate"), (["--target", "10"], "--target"),
                        (["--attacks", "trojannn"], "--attacks"), (["--defenses", "magic"], "--defenses"),
                        (["--ht-source", "0", "--target", "0"], "--ht-source")):
        with pytest.raises(SystemExit, match=match):
            exp.main(["--quick", *argv])
    table = exp.available_defenses()
    assert {"none", "ss", "ac", "ci"} <= set(table) and set(table) <= {"none", "ss", "ac", "ci", "strip", "nc", "fp"}
