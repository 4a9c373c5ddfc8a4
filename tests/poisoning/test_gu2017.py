"""BadNets' poisoning rule and the attack-success helper: exact counts, indices, labels and errors."""

import jax
import numpy as np
import pytest

from poisoning import triggers
from poisoning.attacks.gu2017 import poison_dataset
from poisoning.backdoor import attack_success, attack_success_counts, backdoor_labels, eligible


def _data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 0.5, (n, 8, 8, 1)).astype(np.float32), np.repeat(np.arange(10), n // 10)


def test_single_target_poisons_exactly_rate_n_eligible_images_in_place():
    x, y = _data()
    trig = triggers.badnets_pattern()
    p = poison_dataset(jax.random.key(0), x, y, trig, 0.1, target=3)
    assert p.is_poison.sum() == 20 and p.images.shape == x.shape
    idx = np.flatnonzero(p.is_poison)
    assert np.all(y[idx] != 3) and np.all(p.labels[idx] == 3)
    np.testing.assert_array_equal(p.images[idx], np.asarray(triggers.apply(trig, x[idx])))
    np.testing.assert_array_equal(p.images[~p.is_poison], x[~p.is_poison])
    np.testing.assert_array_equal(p.labels[~p.is_poison], y[~p.is_poison])
    np.testing.assert_array_equal(p.source_index, np.arange(200))
    again = poison_dataset(jax.random.key(0), x, y, trig, 0.1, target=3)
    np.testing.assert_array_equal(again.is_poison, p.is_poison)
    other = poison_dataset(jax.random.key(1), x, y, trig, 0.1, target=3)
    assert not np.array_equal(other.is_poison, p.is_poison)


def test_pair_all_to_all_append_and_eligible_fraction():
    x, y = _data()
    trig = triggers.badnets_pixel()
    p = poison_dataset(jax.random.key(0), x, y, trig, 0.5, target=7, source=1, of="eligible")
    idx = np.flatnonzero(p.is_poison)
    assert len(idx) == 10 and np.all(y[idx] == 1) and np.all(p.labels[idx] == 7)
    a = poison_dataset(jax.random.key(0), x, y, trig, 0.25, mode="all_to_all")
    idx = np.flatnonzero(a.is_poison)
    assert len(idx) == 50 and np.all(a.labels[idx] == (y[idx] + 1) % 10)
    g = poison_dataset(jax.random.key(0), x, y, trig, 0.1, target=0, source=[2, 5], append=True)
    assert g.images.shape == (220, 8, 8, 1) and g.is_poison.tolist() == [False] * 200 + [True] * 20
    assert np.all(np.isin(y[g.source_index[200:]], [2, 5])) and np.all(g.labels[200:] == 0)
    np.testing.assert_array_equal(g.images[:200], x)
    np.testing.assert_array_equal(g.images[200:], np.asarray(triggers.apply(trig, x[g.source_index[200:]])))


def test_bad_input_is_named():
    x, y = _data()
    trig = triggers.badnets_pixel()
    key = jax.random.key(0)
    for rate in (0.0, 1.5, float("nan"), -0.1):
        with pytest.raises(ValueError, match="rate"):
            poison_dataset(key, x, y, trig, rate, target=1)
    with pytest.raises(ValueError, match="rate"):
        poison_dataset(key, x, y, trig, 0.001, target=1)          # rounds to 0 images
    with pytest.raises(ValueError, match="eligible"):
        poison_dataset(key, x, y, trig, 0.2, target=1, source=2)  # 40 > 20 images of class 2
    with pytest.raises(ValueError, match="labels"):
        poison_dataset(key, x, np.where(y == 9, 10, y), trig, 0.1, target=1)
    with pytest.raises(ValueError, match="source"):
        poison_dataset(key, x, y, trig, 0.1, target=1, source=1)
    with pytest.raises(ValueError, match="target"):
        poison_dataset(key, x, y, trig, 0.1, target=12)
    with pytest.raises(ValueError, match="target"):
        poison_dataset(key, x, y, trig, 0.1)
    with pytest.raises(ValueError, match="source"):
        poison_dataset(key, x, y, trig, 0.1, mode="all_to_all", source=2)
    with pytest.raises(ValueError, match="mode"):
        poison_dataset(key, x, y, trig, 0.1, target=1, mode="some")
    with pytest.raises(TypeError, match="images"):
        poison_dataset(key, (x * 255).astype(np.uint8), y, trig, 0.1, target=1)
    with pytest.raises(ValueError, match="labels"):
        poison_dataset(key, x, y[:-1], trig, 0.1, target=1)


def test_attack_success_by_hand():
    labels = np.array([0, 1, 2, 2, 3])
    preds = np.array([3, 3, 3, 0, 3])           # target 3: eligible rows 0..3, hits rows 0, 1, 2
    assert attack_success_counts(preds, labels, target=3, num_classes=4) == (3, 4)
    assert attack_success(np.eye(4)[preds], labels, target=3, num_classes=4) == 0.75
    assert attack_success(preds, labels, target=3, source=2, num_classes=4) == 0.5
    # all-to-all: want (y + 1) mod 4 = [1, 2, 3, 3, 0]
    assert attack_success(np.array([1, 2, 0, 3, 0]), labels, mode="all_to_all", target=None, num_classes=4) == 0.8
    assert backdoor_labels(labels, mode="all_to_all", num_classes=4).tolist() == [1, 2, 3, 3, 0]
    assert eligible(labels, target=2, num_classes=4).tolist() == [True, True, False, False, True]
    with pytest.raises(ValueError, match="predictions"):
        attack_success(preds[:3], labels, target=3, num_classes=4)
    with pytest.raises(ValueError, match="eligible"):
        attack_success(preds[:1], labels[:1], target=0, num_classes=4)
