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
    assert cfg["n_poison"] == 1000                                # the cpu preset's default is 1 in 40 images
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


def _fake_run(seed, ci, ac, ss, *, n_poison=333, success=0.9):
    """A finished run's results as :func:`exp.run` writes them: one multiple-source size, three defenses."""
    rows = [{"sources": None, "delta": None, "defense": "none", "clean_accuracy": 0.99, "attack_success": None,
             "tpr": None, "fpr": None}]
    for d, t in (("none", None), ("ss", ss), ("ac", ac), ("ci", ci)):
        rows.append({"sources": "multiple", "delta": 0.3, "defense": d, "clean_accuracy": 0.98 + 0.001 * seed,
                     "attack_success": success, "tpr": t, "fpr": None if t is None else 0.01 * seed})
    return {"dataset": "mnist", "fallback": False, "rows": rows,
            "config": {"seed": seed, "data_dir": f"/data{seed}", "n_poison": n_poison, "deltas": "0.3"}}


def test_combine_averages_seeds_and_judges_the_ordering_three_ways():
    runs = [_fake_run(0, 0.96, 0.97, 0.2), _fake_run(1, 0.99, 0.95, 0.3), _fake_run(2, 0.98, 0.93, 0.1)]
    res = exp.combine(runs)
    assert res["seeds"] == [0, 1, 2]
    cell = {t["defense"]: t for t in res["table"] if t["sources"] == "multiple"}
    ci, ac = np.array([0.96, 0.99, 0.98]), np.array([0.97, 0.95, 0.93])
    assert cell["ci"]["tpr_mean"] == pytest.approx(ci.mean())
    assert cell["ci"]["tpr_se"] == pytest.approx(ci.std(ddof=1) / np.sqrt(3))
    assert cell["ac"]["fpr_mean"] == pytest.approx(0.01) and cell["none"]["n_seeds"] == 3
    assert "tpr_mean" not in cell["none"]
    assert res["ordering_per_seed"] == {"multiple:0.3": [False, True, True]}   # seed 0: AC above CI
    assert res["ordering_on_means"] == {"multiple:0.3": True}
    d = res["paired_differences"]["multiple:0.3"]["ci_minus_ac"]
    assert d["mean"] == pytest.approx((ci - ac).mean()) and d["se"] == pytest.approx((ci - ac).std(ddof=1) / np.sqrt(3))
    assert d["resolved"] == (abs(d["mean"]) > 2 * d["se"])
    assert res["paired_differences"]["multiple:0.3"]["ac_minus_ss"]["resolved"] is True
    assert res["seed_ordering_every_multiple_source_size_on_means"] is True
    assert [r["seed"] for r in res["runs"]] == [0, 1, 2]
    assert res["learned_per_seed"] == {"multiple:0.3": [True] * 3}
    assert res["ordering_on_means_of_learned_seeds"] == res["ordering_on_means"]
    # one seed: no standard error, nothing resolved
    one = exp.combine(runs[:1])
    assert one["paired_differences"]["multiple:0.3"]["ci_minus_ac"]["se"] is None
    assert one["seed_ordering_every_multiple_source_size_on_means"] is False


def test_combine_judges_the_ordering_again_on_the_seeds_that_learned_the_backdoor():
    """A seed whose network ignored the trigger (success 1 %) has nothing for a defense to find: over all
    seeds its TPRs decide the means, over the seeds that learned the backdoor they do not count."""
    runs = [_fake_run(0, 0.96, 0.95, 0.2), _fake_run(1, 0.99, 0.97, 0.3), _fake_run(2, 0.0, 0.2, 0.1, success=0.01)]
    res = exp.combine(runs)
    assert res["attack_success_per_seed"] == {"multiple:0.3": [0.9, 0.9, 0.01]}
    assert res["learned_per_seed"] == {"multiple:0.3": [True, True, False]}
    assert res["ordering_on_means"] == {"multiple:0.3": False}                 # 0.65 < 0.707
    assert res["ordering_on_means_of_learned_seeds"] == {"multiple:0.3": True}  # 0.975 > 0.96 > 0.25
    assert res["seed_ordering_every_multiple_source_size_on_learned_seeds"] is True
    none = exp.combine([runs[2]])
    assert none["ordering_on_means_of_learned_seeds"] == {"multiple:0.3": None}
    assert none["seed_ordering_every_multiple_source_size_on_learned_seeds"] is False


def test_combine_judges_every_ci_row_apart():
    """CI judged under another filter (row ``ci_median3``, the same mixtures) gets its own verdicts."""
    runs = [_fake_run(0, 0.0, 0.97, 0.2), _fake_run(1, 0.5, 0.95, 0.3)]   # the 2x2 average left the backdoor
    for r, t in zip(runs, (0.99, 0.98)):
        r["rows"].append(dict(r["rows"][-1], defense="ci_median3", tpr=t))
    res = exp.combine(runs)
    assert res["ordering_on_means"] == {"multiple:0.3": False}
    alt = res["with_ci_median3"]
    assert alt["ordering_on_means"] == {"multiple:0.3": True} and alt["ordering_per_seed"]["multiple:0.3"] == [True, True]
    assert alt["paired_differences"]["multiple:0.3"]["ci_minus_ac"]["mean"] == pytest.approx(0.025)
    assert alt["seed_ordering_every_multiple_source_size_on_learned_seeds"] is True


def test_combine_refuses_runs_that_differ_in_more_than_the_seed(tmp_path):
    with pytest.raises(ValueError, match="n_poison"):
        exp.combine([_fake_run(0, 0.9, 0.8, 0.1), _fake_run(1, 0.9, 0.8, 0.1, n_poison=1000)])
    with pytest.raises(ValueError, match="repeat a seed"):
        exp.combine([_fake_run(0, 0.9, 0.8, 0.1), _fake_run(0, 0.9, 0.8, 0.1)])
    with pytest.raises(ValueError, match="at least one"):
        exp.combine([])
    (tmp_path / "a").mkdir()
    with pytest.raises(SystemExit, match="--combine"):
        exp.main(["--combine", str(tmp_path / "a"), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="--seeds"):
        exp.main(["--quick", "--seeds", "0"])


def test_combine_flag_and_seeds_loop_write_the_combined_table(tmp_path, monkeypatch):
    import json

    from experiments import _cli

    for s in (0, 1):
        _cli.write_json_atomic(tmp_path / f"r{s}" / "results.json", _fake_run(s, 0.99 - s / 100, 0.9, 0.2))
    res = exp.main(["--combine", str(tmp_path / "r0"), str(tmp_path / "r1"), "--out", str(tmp_path / "out")])
    assert json.loads((tmp_path / "out" / "results.json").read_text())["seeds"] == [0, 1]
    assert (tmp_path / "out" / "tpr_fpr_seeds.png").stat().st_size > 0
    assert res["ordering_per_seed"] == {"multiple:0.3": [True, True]}
    # --seeds N runs seeds --seed .. --seed+N-1, each in OUT/seed_K, and combines them
    calls = []

    def fake(args):
        calls.append((args.seed, args.out))
        return _fake_run(args.seed, 0.99, 0.9, 0.2)

    monkeypatch.setattr(exp, "run", fake)
    res = exp.main(["--seed", "3", "--seeds", "2", "--out", str(tmp_path / "many")])
    assert calls == [(3, str(tmp_path / "many" / "seed_3")), (4, str(tmp_path / "many" / "seed_4"))]
    assert res["seeds"] == [3, 4] and (tmp_path / "many" / "results.json").is_file()
