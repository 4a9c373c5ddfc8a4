"""Biggio, Nelson & Laskov (2012) SVM poisoning on scikit-learn digits (1 vs 7, small and fast).

The settings match the quick experiment test (tests/experiments/test_biggio2012.py) so that both use
one compiled ascent loop.
"""

import numpy as np
import pytest

from poisoning.attack import PoisonPoints, run
from poisoning.attacks.biggio2012 import biggio_attack, clone_and_flip, ovr_attack, poison_svm
from poisoning.datasets import biggio_protocol, load_digits
from poisoning.feasible import Box
from poisoning.objectives import summed_loss

N_POINTS, STEPS = 3, 20


@pytest.fixture(scope="module")
def attacked():
    split = biggio_protocol(load_digits(), 1, 7, n_train=60, n_val=200, seed=0)
    attack = biggio_attack(1.0, step_size=0.05, patience=5)
    res, X0 = poison_svm(split.X_train, split.y_train, split.X_val, split.y_val, N_POINTS, steps=STEPS,
                         seed=0, attack=attack)
    return split, attack, res, X0


def test_clone_and_flip():
    X = np.arange(12.0).reshape(6, 2)
    y = np.array([1, 0, 1, 0, 1, 0])
    poison, idx = clone_and_flip(X, y, 2, seed=1)
    assert np.all(y[idx] == 1) and np.all(poison.y == 0) and np.array_equal(poison.X, X[idx])
    with pytest.raises(ValueError, match="y_train"):
        clone_and_flip(X, y, 2, attacked_label=5)


def test_validation_hinge_increases(attacked):
    split, attack, res, X0 = attacked
    assert res.objective > res.objective_clean
    # each single-point attack ends at least where it started (best point kept), mostly increasing
    for h in res.history:
        assert np.max(h) >= h[0]
        assert np.mean(np.diff(h) > 0) > 0.5
    after_each = [h.max() for h in res.history]
    assert after_each[-1] >= after_each[0]
    # the objective is the summed validation hinge (Biggio eq. 2) of the SVM trained on the poisoned set
    victim = attack.victim
    p = res.params
    np.testing.assert_allclose(float(summed_loss(victim, p, split.X_val, split.y_val)), res.objective, rtol=1e-9)
    np.testing.assert_allclose(res.block_objective, after_each, rtol=1e-9)
    # (w, b) satisfy the dual's definition w = X'(alpha y) on the poisoned training set (labels +-1 inside)
    X = np.concatenate([split.X_train, res.poison.X])
    y = 2.0 * np.concatenate([split.y_train, res.poison.y]) - 1.0
    np.testing.assert_allclose(np.asarray(p.w), X.T @ (np.asarray(p.alpha) * y), atol=1e-8)
    assert np.all(np.asarray(p.alpha) >= -1e-12) and np.all(np.asarray(p.alpha) <= 1.0 + 1e-12)


def test_test_error_not_below_clean_and_box(attacked):
    split, attack, res, X0 = attacked
    victim = attack.victim
    err = lambda p: float(victim.error(p, split.X_test, split.y_test))
    assert err(res.params) >= err(res.params_clean)
    assert Box(0.0, 1.0).contains(res.poison.X)
    assert np.all(res.poison.y == 0)
    assert not np.allclose(res.poison.X, X0)  # the points moved away from their clones


def test_ovr_multiclass_extension():
    """One-vs-rest SVM ensemble (3 digit classes): the summed OvR validation hinge loss increases, the
    poison stays in the box, and the clean ensemble classifies (argmax) well."""
    ds = load_digits()
    keep = np.flatnonzero(ds.y_train < 3)
    X, y = ds.X_train[keep], ds.y_train[keep]
    Xtr, ytr, Xva, yva = X[:40], y[:40], X[40:120], y[40:120]
    att = ovr_attack(3, step_size=0.1)
    res = run(att, Xtr, ytr, PoisonPoints(Xtr[:1], (ytr[:1] + 1) % 3), (Xva, yva), steps=5)
    assert res.objective > res.objective_clean
    assert Box(0.0, 1.0).contains(res.poison.X)
    pred = np.asarray(att.victim.predict(res.params_clean, Xva))
    assert pred.shape == (80,) and set(np.unique(pred)) <= {0, 1, 2}
    assert np.mean(pred == yva) > 0.8
