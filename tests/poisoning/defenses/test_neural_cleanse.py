"""Neural Cleanse: the anomaly index by hand; on a backdoored network it flags the target label, with a
reversed mask concentrated on the trigger, and unlearning removes the backdoor; on the clean twin it
flags nothing."""

import jax
import numpy as np
import pytest

from poisoning import triggers
from poisoning.defenses.neural_cleanse import (
    NeuralCleanseConfig,
    anomaly_index,
    cost_schedule,
    neural_cleanse,
    plot_reversed_triggers,
    reversed_trigger,
    unlearn,
)
from poisoning.training import TrainConfig
from tests.poisoning.defenses._backdoor_models import backdoored_digits

pytestmark = pytest.mark.xla_optimized   # run-bound: trains networks (tests/conftest.py)

# short schedule for the tests (the paper runs up to 1000 rounds of 31 steps with early stopping)
CONFIG = NeuralCleanseConfig(rounds=24, steps_per_round=8, batch_size=16, patience=2,
                             unlearn=TrainConfig(epochs=2, batch_size=50, optimizer="sgd", learning_rate=0.01))


def test_anomaly_index_by_hand():
    L = np.array([1.0, 10.0, 11.0, 12.0, 13.0, 14.0])
    # median 11.5, |L - med| = 10.5, 1.5, .5, .5, 1.5, 2.5 -> MAD = 1.5
    want = np.abs(L - 11.5) / (1.4826 * 1.5)
    np.testing.assert_allclose(anomaly_index(L), want)
    assert anomaly_index(L)[0] > 2 and np.all(anomaly_index(L)[1:] < 2)
    assert list(anomaly_index([3.0, 3.0, 3.0, 1.0])) == [0.0, 0.0, 0.0, np.inf]      # MAD = 0
    with pytest.raises(ValueError, match="l1_norms"):
        anomaly_index([1.0])
    with pytest.raises(ValueError, match="l1_norms"):
        anomaly_index([1.0, np.nan, 2.0])


def test_cost_schedule_by_hand():
    cfg = NeuralCleanseConfig(patience=2, init_cost=1e-3, cost_multiplier=2.0)
    state = (np.zeros(2), np.zeros(2, np.int32), np.zeros(2, np.int32), np.zeros(2, np.int32))
    # label 0 succeeds twice (the cost is switched on), once more (x2), fails twice (/ 2**1.5), succeeds;
    # label 1 never succeeds: its cost stays 0
    want = [0.0, 1e-3, 2e-3, 2e-3, 2e-3 / 2**1.5, 2e-3 / 2**1.5]
    for ok0, w in zip([True, True, True, False, False, True], want):
        state = cost_schedule(*state, np.array([ok0, False]), cfg)
        np.testing.assert_allclose(np.asarray(state[0]), [w, 0.0], rtol=1e-12)
    assert [int(v[0]) for v in state[1:]] == [0, 1, 0]        # set, up, down counters of label 0


def test_flags_the_target_finds_the_trigger_and_unlearning_removes_it():
    b = backdoored_digits()
    res = neural_cleanse(b.model, b.backdoored, b.x_val, jax.random.key(1), CONFIG)
    K = 10
    assert res.masks.shape == (K, 16, 16) and res.patterns.shape == (K, 16, 16, 1)
    assert res.flagged_labels == [b.target]              # measured: index 5.4; the next label below the median L1: 1.2
    assert res.anomaly_index[b.target] > 2 and res.l1_norms[b.target] == res.l1_norms.min()
    assert res.reached.all() and np.all(res.attack_success > 0.9)
    np.testing.assert_allclose(res.l1_norms, res.masks.reshape(K, -1).sum(1), rtol=1e-5)
    # the target's mask sits on the trigger: its mass within one pixel of the 3x3 window (10 % of the
    # image) is 4x what a spread-out mask would put there
    window = np.zeros((16, 16), bool)
    window[11:16, 11:16] = True
    assert triggers.trigger_mask(b.trigger, (16, 16))[12:15, 12:15].all()
    m = res.masks[b.target]
    assert m[window].sum() > 4 * window.mean() * m.sum()  # measured 0.69 of the mass (0.07 on the clean twin)
    # the reversed trigger, as a Patch, reproduces the attack
    from poisoning.training import predict

    stamped = triggers.apply(reversed_trigger(res, b.target), b.x_test)
    assert np.mean(np.asarray(predict(b.model, b.backdoored, stamped)).argmax(-1) == b.target) > 0.9
    # unlearning: the backdoor is gone, the clean accuracy kept
    acc0, asr0 = b.accuracy(b.backdoored), b.attack_success(b.backdoored)
    repaired = unlearn(b.model, b.backdoored, b.x_train, b.y_train, res, jax.random.key(2), CONFIG)
    acc1, asr1 = b.accuracy(repaired), b.attack_success(repaired)
    assert asr0 > 0.9 and asr1 < 0.2                      # measured 0.99 -> 0.005
    assert acc1 > acc0 - 0.03                             # measured 0.953 -> 0.949
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plot_reversed_triggers(res)
    assert len(fig.axes) == K
    plt.close(fig)


def test_flags_nothing_on_the_clean_network():
    b = backdoored_digits()
    res = neural_cleanse(b.model, b.clean, b.x_val, jax.random.key(1), CONFIG)
    assert res.flagged_labels == []                       # measured: largest index 2.4 (label 1), above the median L1
    assert np.all(res.anomaly_index[res.l1_norms < np.median(res.l1_norms)] <= 2)
    # nothing to unlearn: the state comes back unchanged
    assert unlearn(b.model, b.clean, b.x_train, b.y_train, res, jax.random.key(2), CONFIG) is b.clean


def test_bad_inputs_are_named():
    b = backdoored_digits()
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="x_clean"):
        neural_cleanse(b.model, b.clean, b.x_val[:, :, :, 0][:0], key, CONFIG)
    with pytest.raises(ValueError, match="x_clean"):
        neural_cleanse(b.model, b.clean, b.x_val + 1.0, key, CONFIG)
    with pytest.raises(ValueError, match="num_classes"):
        neural_cleanse(object(), {"params": {}}, b.x_val, key, CONFIG)
    with pytest.raises(TypeError, match="config"):
        neural_cleanse(b.model, b.clean, b.x_val, key, {"rounds": 2})
    for bad in (dict(rounds=0), dict(attack_success_threshold=1.5), dict(cost_multiplier=1.0),
                dict(unlearn_fraction=0.0), dict(learning_rate=float("nan"))):
        with pytest.raises(ValueError, match=next(iter(bad))):
            NeuralCleanseConfig(**bad)
    with pytest.raises(TypeError, match="unlearn"):
        NeuralCleanseConfig(unlearn={"epochs": 1})
