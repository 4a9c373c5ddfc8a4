"""End-to-end test of the hyperparameter example (experiments/hpo_digits.py) in --quick mode."""

import json

from experiments import hpo_digits


def test_hpo_digits_quick_writes_outputs_and_improves(tmp_path):
    results = hpo_digits.main(["--quick", "--out", str(tmp_path)])
    on_disk = json.loads((tmp_path / "results.json").read_text())
    for name in ("reg_weights.png", "val_curve.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    before, after = on_disk["before"], on_disk["after"]
    assert after["val_loss"] < before["val_loss"]
    assert results["after"]["val_loss"] == after["val_loss"]
    curve = on_disk["curve"]["val_loss"]
    assert len(curve) == on_disk["config"]["steps"] and curve[-1] < curve[0]
    assert len(on_disk["reg"]) == 8 and len(on_disk["reg"][0]) == 8
    assert 0.0 <= after["test_acc"] <= 1.0


def test_hpo_digits_resume(tmp_path):
    """A run of 2 steps, resumed to 4, continues the curve instead of starting over."""
    common = ["--out", str(tmp_path), "--n-train", "200", "--n-val", "200", "--no-plots",
              "--checkpoint-every", "1"]
    first = hpo_digits.main(common + ["--steps", "2"])
    resumed = hpo_digits.main(common + ["--steps", "4", "--resume"])
    assert resumed["curve"]["step"] == [0, 1, 2, 3]
    assert resumed["curve"]["val_loss"][:2] == first["curve"]["val_loss"]
