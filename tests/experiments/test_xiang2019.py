"""The single-pixel backdoor experiment: the pixel rule and the flags (the full run is gu2017's machinery,
tested in test_gu2017.py)."""

import numpy as np
import pytest

from experiments import xiang2019 as exp


def test_choose_pixel_picks_the_central_pixel_nearest_half_intensity():
    x = np.zeros((3, 8, 8))
    x[:, 0, 0] = 0.5            # outside the central half: ignored
    x[:, 5, 3] = 0.45
    x[:, 4, 4] = 0.7
    assert exp.choose_pixel(x) == (5, 3)
    assert exp.choose_pixel(x[..., None]) == (5, 3)
    assert exp.parse_pixel("18,24") == (18, 24) and exp.parse_pixel("auto") is None


@pytest.mark.parametrize("argv, match", [
    (["--deltas", "0"], "--deltas"), (["--deltas", "a"], "--deltas"), (["--sources", "some"], "--sources"),
    (["--source", "0", "--target", "0"], "--source"), (["--defenses", "nc"], "--defenses"),
    (["--n-poison", "0"], "--n-poison"), (["--pixel", "a"], "--pixel"), (["--pixel", "30,3"], "--pixel"),
    (["--epochs", "0"], "--epochs"), (["--retrain", "ci,strip"], "--retrain"), (["--n-train", "-1"], "--n-train")])
def test_bad_flags_exit_naming_the_flag(argv, match):
    with pytest.raises(SystemExit, match=match):
        exp.main(["--quick", *argv])


def test_paper_preset_runs_on_cifar10_files_with_its_settings_and_resumes(tmp_path):
    """The accelerator's preset end to end on a tiny synthetic CIFAR-10 (``--quick`` sizes): the preset's
    data, network, schedule and augmentation reach the run, explicit flags override it, the auto pixel lies
    in the central half of the 32x32 image, every defense gives a row, and a rerun resumes from the
    checkpoint."""
    import json

    from tests.poisoning.datasets.fakes import write_fake_cifar10

    write_fake_cifar10(tmp_path / "data" / "cifar10", n_train=60, n_test=20)
    argv = ["--quick", "--preset", "paper", "--data-dir", str(tmp_path / "data"), "--deltas", "0.4",
            "--sources", "multiple", "--target", "1", "--out", str(tmp_path / "run"), "--retrain", "none"]
    res = exp.main(argv)
    cfg = res["config"]
    assert res["dataset"] == "cifar10" and res["fallback"] is False
    assert (cfg["preset"], cfg["dataset"], cfg["model"], cfg["augment"]) == ("paper", "cifar10", "resnet20",
                                                                             "crop_flip")
    assert (cfg["epochs"], cfg["batch_size"], cfg["lr"], cfg["weight_decay"]) == (200, 32, 0.025, 1e-4)
    assert cfg["n_poison"] == 1000                                # the cpu preset's default is 1 in 60 images
    assert cfg["deltas"] == "0.4" and cfg["target"] == 1          # explicit flags win over the preset
    r, c = res["pixel"]
    assert 8 <= r < 24 and 8 <= c < 24
    rows = [x for x in res["rows"] if x["sources"] == "multiple"]
    assert {x["defense"] for x in rows} == {"none", "ss", "ac", "ci", "ci_median3", "ac_pca"}
    for x in rows:
        assert x["delta"] == 0.4 and 0.0 <= x["attack_success"] <= 1.0
        if x["defense"] != "none":
            assert 0.0 <= x["tpr"] <= 1.0 and 0.0 <= x["fpr"] <= 1.0
        # the poison's share of the target class (what AC's 0.35 relative-size rule is judged against)
        assert 0.0 < x["target_poison_share"] <= 1.0
        if x["defense"].startswith("ac"):   # AC's split of the target class, as it decided
            split = x["target_class_split"]
            assert 0.0 < split["relative_size"] <= 0.5 and split["poisoned"] == (split["relative_size"] < 0.35)
    assert not any("retrained_attack_success" in x for x in rows)   # --retrain none (retraining: test_gu2017)
    assert set(res["ordering_ci_gt_ac_gt_ss"]) == {"multiple:0.4"}
    assert res["seed_ordering_every_multiple_source_size"] == res["ordering_ci_gt_ac_gt_ss"]["multiple:0.4"]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["rows"] == json.loads(json.dumps(res["rows"]))
    again = exp.main(argv)                                        # every setting is in the checkpoint
    assert again["rows"] == res["rows"]


def test_cifar10_without_files_exits_naming_the_flag(tmp_path):
    with pytest.raises(SystemExit, match="--data-dir"):
        exp.main(["--quick", "--dataset", "cifar10", "--data-dir", str(tmp_path)])
