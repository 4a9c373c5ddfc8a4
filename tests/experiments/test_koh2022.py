"""End-to-end test of experiments/koh2022.py on the offline digits with quick settings."""

import json

import numpy as np

from experiments import koh2022


def test_koh2022_quick_writes_results_and_aware_poison_survives(tmp_path):
    argv = ["--quick", "--steps", "2", "--n-train", "120", "--out", str(tmp_path), "--no-plots"]
    res = koh2022.main(argv)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["defense"] for r in saved["rows"]] == ["sphere", "slab", "loss", "knn"]
    for r in saved["rows"]:
        for key in ("clean_error", "naive_no_defense", "naive_with_defense", "kkt_with_defense",
                    "aware_no_defense", "aware_with_defense", "aware_poison_kept"):
            assert 0.0 <= r[key] <= 1.0
        # every sanitizer, fit on the poisoned data, keeps every copy of the sanitizer-aware poisons
        assert r["aware_poison_kept"] == 1.0 and r["kkt_poison_kept"] == 1.0, r
    assert saved["rows"][0]["naive_poison_kept"] < 1.0  # the sphere removes the naive poison
    assert res["config"]["n_poison"] == 4 and "Enron" in saved["paper"]
    tl = saved["target_loss"]
    assert saved["config"]["init"] == "kkt" and tl["kkt_best"] > 0
    assert tl["naive_best"] >= tl["naive_start"] and tl["aware_best"] >= tl["aware_start"]
    assert not (tmp_path / "checkpoint.npz").exists()  # cleared once the results are written


def test_cached_attack_resumes_from_checkpoint(tmp_path):
    from experiments import _cli
    from poisoning import victims
    from poisoning.attack import AttackResult, PoisonPoints

    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, (20, 3))
    y = np.arange(20) % 2
    victim = victims.smooth_svm()
    poison = PoisonPoints(X[:2], np.array([1, 0]), counts=np.array([3, 2]))
    res = AttackResult(poison=poison, params=None, params_clean=None, objective=0.2, objective_clean=0.1,
                       history=(np.array([0.1, 0.2]),), block_params=(None,), block_objective=np.array([0.2]),
                       n_steps=np.array([1]), seconds=np.array([0.5]), compile_seconds=0.5,
                       stalled=np.array([False]), mode="joint")
    ckpt = _cli.Checkpoint(tmp_path / "checkpoint.npz")
    first = koh2022._cached(ckpt, "aware", lambda: res, victim, X, y)
    assert first.objective == 0.2 and first.seconds == 1.0 and ckpt.exists()

    def boom():
        raise AssertionError("should have been read from the checkpoint")

    again = koh2022._cached(ckpt, "aware", boom, victim, X, y)
    np.testing.assert_array_equal(again.poison.X, poison.X)
    np.testing.assert_array_equal(again.poison.counts, poison.counts)
    np.testing.assert_array_equal(again.history, [0.1, 0.2])
    assert again.objective == 0.2 and set(again.params) == {"w", "b"}
