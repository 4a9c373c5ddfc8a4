"""End-to-end test of experiments/koh2022.py on the offline digits with quick settings."""

import json

from experiments import koh2022


def test_koh2022_quick_writes_results_and_resumes(tmp_path):
    argv = ["--quick", "--steps", "3", "--out", str(tmp_path), "--no-plots"]
    res = koh2022.main(argv)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["defense"] for r in saved["rows"]] == ["sphere", "slab", "loss", "knn"]
    for r in saved["rows"]:
        for key in ("clean_error", "naive_no_defense", "naive_with_defense", "kkt_with_defense",
                    "aware_no_defense", "aware_with_defense", "aware_poison_kept"):
            assert 0.0 <= r[key] <= 1.0
    assert res["config"]["n_poison"] >= 1 and "Enron" in saved["paper"]
    assert saved["config"]["init"] == "kkt" and saved["target_loss"]["kkt_best"] > 0
    assert not (tmp_path / "checkpoint.npz").exists()  # cleared once the results are written


def test_cached_attack_resumes_from_checkpoint(tmp_path):
    import numpy as np

    from experiments import _cli
    from poisoning.attacks import koh2022 as K

    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, (20, 3))
    y = np.where(np.arange(20) % 2 == 0, 1, -1)
    cfg = K.SVMConfig()
    ckpt = _cli.Checkpoint(tmp_path / "checkpoint.npz")
    res = K.KohAttackResult(X[:2], np.array([1, -1]), np.array([3, 2]), np.array([0.1, 0.2]), 0.2, None, 1.0)
    first = koh2022._cached(ckpt, "aware", lambda: res, X, y, cfg)
    assert first is res and ckpt.exists()

    def boom():
        raise AssertionError("should have been read from the checkpoint")

    again = koh2022._cached(ckpt, "aware", boom, X, y, cfg)
    np.testing.assert_array_equal(again.X_loc, res.X_loc)
    np.testing.assert_array_equal(again.counts, res.counts)
    assert again.best_value == 0.2 and set(again.params) == {"w", "b"}
