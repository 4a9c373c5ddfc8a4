"""End-to-end test of experiments/koh2022.py on the offline digits with quick settings."""

import json

import numpy as np

from experiments import koh2022


def test_koh2022_quick_writes_results_and_aware_poison_survives(tmp_path):
    """Two eps (the same 4 poison points at n = 120, so every compiled fit is shared), the min-max attack
    against Koh et al.'s five defenses, Steinhardt's oracle bound beside it (the KKT and influence attacks
    themselves: tests/poisoning/test_koh2022.py)."""
    argv = ["--quick", "--n-train", "120", "--eps", "0.03", "0.035", "--attacks", "minmax",
            "--bound-steps", "60", "--out", str(tmp_path)]
    res = koh2022.main(argv)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [e["eps"] for e in saved["by_eps"]] == [0.03, 0.035] and saved["rows"] == saved["by_eps"][0]["rows"]
    for e in saved["by_eps"]:
        assert [r["defense"] for r in e["rows"]] == ["sphere", "slab", "loss", "knn", "svd"]
        for r in e["rows"]:
            for key in ("clean_error", "minmax_no_defense", "minmax_with_defense", "minmax_poison_kept"):
                assert 0.0 <= r[key] <= 1.0
            # the sphere, slab and k-NN defenses fit on the poisoned data keep every copy of the attack
            if r["defense"] in ("sphere", "slab", "knn"):
                assert r["minmax_poison_kept"] == 1.0, r
        bd = e["bound"]
        # the certificate: no attack, retrained as the norm-constrained hinge SVM on its copies inside the
        # oracle region, exceeds U*; U* is above the clean minimum
        assert bd["holds"] and all(v <= bd["upper_bound"] + 1e-5 for v in bd["attack_objective"].values())
        assert bd["upper_bound"] >= bd["clean_objective"] - 1e-3
        assert e["target_loss"]["minmax_best"] > 0 and e["n_poison"] == 4 and set(e["counts"]) == {"minmax"}
    assert saved["by_eps"][1]["bound"]["upper_bound"] >= saved["by_eps"][0]["bound"]["upper_bound"] - 1e-12
    assert res["config"]["n_poison"] == 4 and "Enron" in saved["paper"] and saved["config"]["bound_percentile"] == 90
    assert len(saved["decoys"]) == 1 and saved["config"]["minmax_copies"] == 6
    assert (tmp_path / "error_vs_eps.png").read_bytes()[:4] == b"\x89PNG"
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
