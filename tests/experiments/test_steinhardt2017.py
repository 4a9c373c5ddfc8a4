"""End-to-end test of experiments/steinhardt2017.py (--quick, sklearn's digits 1 vs 7): results, the bound
above every attack, the plot, resume, and bound() for other experiments."""

import json

import numpy as np
import pytest

from experiments import _cli, steinhardt2017


def test_steinhardt2017_quick_writes_results_bounds_every_attack_and_resumes(tmp_path, capsys):
    argv = ["--quick", "--dataset", "digits", "--eps", "0.05", "0.3", "--steps", "120", "--out", str(tmp_path)]
    res = steinhardt2017.main(argv)
    disk = json.loads((tmp_path / "results.json").read_text())
    for key in ("eps", "upper_bound", "attack_test_error", "attack_test_loss", "clean_test_error", "seconds",
                "protocol", "attack_train_objective", "paper"):
        assert key in disk, key
    assert disk["eps"] == [0.05, 0.3] and disk["n_poison"] == [int(round(e * disk["config"]["n_train"]))
                                                              for e in (0.05, 0.3)]
    ub, obj = np.array(disk["upper_bound"]), np.array(disk["attack_train_objective"])
    # the certificate: no retrained attack exceeds it; the bound grows with eps; the tightened bound is
    # never above a run's own; the poison lies in the oracle feasible set
    assert np.all(obj <= ub + 1e-6) and disk["bound_holds"] is True
    assert np.all(np.diff(ub) > 0) and np.all(ub <= np.array(disk["upper_bound_run"]) + 1e-12)
    assert all(disk["poison_feasible"])
    assert ub[0] >= disk["clean_train_loss"] - 1e-3                       # U* >= the clean minimum (1e-3: liblinear)
    assert 0 <= disk["clean_test_error"] < 0.1 and all(0 <= e <= 1 for e in disk["attack_test_error"])
    assert disk["paper"]["oracle"]["max_attack_test_error"] == 0.04
    assert (tmp_path / "bound_vs_eps.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "upper bound U*" in out and "digits" in out
    # a run killed after the first eps: resuming recomputes the second and gives the same numbers
    ckpt = _cli.Checkpoint(tmp_path / "checkpoint.npz")
    state = ckpt.load()
    assert int(state["done"]) == 2
    ckpt.save({**state, "done": 1, "attack_test_error": np.zeros(1)})   # rows past `done` are recomputed
    again = steinhardt2017.main(argv + ["--resume", "--no-plots"])
    assert "resuming" in capsys.readouterr().out
    np.testing.assert_allclose(again["upper_bound"], res["upper_bound"], rtol=1e-10)
    assert again["attack_test_error"][1] == res["attack_test_error"][1]
    assert again["attack_test_error"][0] == 0.0                         # the checkpoint's row was kept
    with pytest.raises(SystemExit, match="other settings"):
        steinhardt2017.main(argv[:-2] + ["--steps", "100", "--out", str(tmp_path), "--resume", "--no-plots"])
    with pytest.raises(SystemExit, match="--eps"):
        steinhardt2017.main(["--quick", "--dataset", "digits", "--eps", "1.5", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="--steps"):
        steinhardt2017.main(["--quick", "--dataset", "digits", "--steps", "10", "--out", str(tmp_path / "y")])


def test_bound_for_other_experiments_matches_the_run():
    from poisoning.datasets import binary_pair, load_digits

    ds = load_digits()
    X, y = binary_pair(ds.X_train, ds.y_train, 1, 7)
    one = steinhardt2017.bound(X, y, 0.3, steps=120)
    curve = steinhardt2017.bound(X, y, [0.05, 0.3], steps=120)
    assert isinstance(one, float) and curve.shape == (2,)
    assert curve[1] <= one + 1e-12 and curve[0] < curve[1]             # tightened across runs, monotone


def test_steinhardt2017_data_dependent_attack_is_kept_and_reported_as_no_certificate(tmp_path):
    """--defense data_dependent (digits 1 vs 7): one eps, the worst candidate attack is kept by the
    data-dependent defense and raises the test error; the estimate is labelled as no certificate."""
    res = steinhardt2017.main(["--quick", "--dataset", "digits", "--defense", "data_dependent", "--eps", "0.3",
                               "--steps", "60", "--candidates", "2", "--grid", "128", "--out", str(tmp_path)])
    disk = json.loads((tmp_path / "results.json").read_text())
    assert disk["defense"] == "data_dependent" and disk["bound_is_certificate"] is False
    assert disk["eps"] == [0.3] and disk["poison_kept"] == [True] and len(disk["candidate_test_errors"][0]) >= 2
    assert disk["attack_test_error"][0] == max(disk["candidate_test_errors"][0]) > disk["clean_test_error"]
    assert res["upper_bound"][0] > disk["clean_train_loss"] and disk["paper"]["data_dependent"]["attack_test_error"] == 0.4
    with pytest.raises(SystemExit, match="--grid"):
        steinhardt2017.main(["--quick", "--dataset", "digits", "--defense", "data_dependent", "--grid", "1",
                             "--out", str(tmp_path / "z")])
