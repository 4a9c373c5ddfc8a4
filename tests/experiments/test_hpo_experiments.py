"""Smoke tests of the hyperparameter experiments: ``main(["--quick", ...])`` into a temporary folder."""

import json

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from experiments import hpo_reweighting, hpo_schedules  # noqa: E402


def _load(out):
    with open(out / "results.json") as f:
        return json.load(f)


def test_hpo_schedules_quick(tmp_path, capsys):
    out = tmp_path / "sched"
    returned = hpo_schedules.main(["--quick", "--seed", "0", "--out", str(out)])
    results = _load(out)
    for key in ("experiment", "config", "unroll_backend", "initial", "learned", "best_step", "schedules", "curve",
                "val_loss_improvement", "timing", "figures"):
        assert key in results, key
    for key in ("val_loss", "val_acc", "test_loss", "test_acc"):
        assert np.isfinite(results["initial"][key]) and np.isfinite(results["learned"][key])
    # the learned schedule improves the outer (validation) objective
    assert results["learned"]["val_loss"] < results["initial"]["val_loss"] - 0.05
    assert results["val_loss_improvement"] > 0.05
    T = results["config"]["inner_steps"]
    for key in ("initial_lr", "learned_lr", "initial_wd", "learned_wd"):
        assert len(results["schedules"][key]) == T
    assert len(results["curve"]["val_loss"]) == results["config"]["steps"]
    assert (out / "schedules.png").stat().st_size > 0 and (out / "outer_curve.png").stat().st_size > 0
    assert returned["learned"]["val_loss"] == pytest.approx(results["learned"]["val_loss"])
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries
    printed = capsys.readouterr().out
    assert "initial" in printed and "learned schedule" in printed


def test_hpo_reweighting_quick(tmp_path, capsys):
    out = tmp_path / "rw"
    hpo_reweighting.main(["--quick", "--seed", "0", "--out", str(out)])
    results = _load(out)
    for key in ("experiment", "config", "before", "after", "oracle_clean_only", "weights", "curve", "learned_weights",
                "flipped", "timing", "figures"):
        assert key in results, key
    w = results["weights"]
    assert w["auc_clean_above_flipped"] > 0.7
    assert w["mean_weight_flipped"] < w["mean_weight_clean"]
    weights = np.asarray(results["learned_weights"])
    assert weights.min() >= 0.0 and weights.max() <= 1.0  # projected onto the box
    assert results["after"]["val_loss"] < results["before"]["val_loss"]
    assert results["data"]["n_flipped"] == int(np.sum(results["flipped"]))
    assert (out / "weight_hist.png").stat().st_size > 0 and (out / "val_curve.png").stat().st_size > 0
    assert "AUC" in capsys.readouterr().out


def test_roc_auc_and_noisy_labels():
    assert hpo_reweighting.roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1], bool)) == 1.0
    assert hpo_reweighting.roc_auc(np.array([0.5, 0.5]), np.array([0, 1], bool)) == 0.5
    data = hpo_reweighting.load_noisy_digits(seed=1, n_train=100, n_val=50, flip=0.2)
    assert data.flipped.sum() == 20
    assert np.all(data.y_train[data.flipped] != data.y_train_clean[data.flipped])
    assert np.all(data.y_train[~data.flipped] == data.y_train_clean[~data.flipped])


def test_help_exits_cleanly(capsys):
    for module in (hpo_schedules, hpo_reweighting):
        with pytest.raises(SystemExit) as exc:
            module.main(["--help"])
        assert exc.value.code == 0
        assert "--quick" in capsys.readouterr().out
