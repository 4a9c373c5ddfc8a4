"""poisoning.datasets.protocols: binary_pair, Biggio et al. 2012 and Munoz-Gonzalez et al. 2017,
with the one label convention (pos -> 1, neg -> 0); digits stands in for MNIST, the real MNIST
checks use the shared data (skipped when absent)."""

import numpy as np
import pytest

from poisoning.datasets import BINARY_LABELS, biggio_protocol, binary_pair, munoz_protocol


def test_binary_pair_relabels_pos_to_one_neg_to_zero():
    assert BINARY_LABELS == (1, 0)
    X = np.arange(12.0).reshape(6, 2)
    y = np.array([7, 1, 3, 7, 1, 9])
    Xs, ys, idx = binary_pair(X, y, pos=7, neg=1, return_index=True)
    np.testing.assert_array_equal(idx, [0, 1, 3, 4])
    np.testing.assert_array_equal(ys, [1, 0, 1, 0])
    np.testing.assert_array_equal(Xs, X[idx])
    assert ys.dtype == np.int64
    _, ypm = binary_pair(X, y, pos=7, neg=1, labels=(1, -1))  # the papers' notation, on request
    np.testing.assert_array_equal(ypm, [1, -1, 1, -1])
    _, y01 = binary_pair(X, y, pos=1, neg=7)
    np.testing.assert_array_equal(y01, [0, 1, 0, 1])


def test_binary_pair_label_checks():
    X, y = np.zeros((4, 1)), np.array([0, 1, 2, 1])
    with pytest.raises(ValueError, match="pos and neg must differ"):
        binary_pair(X, y, 1, 1)
    with pytest.raises(ValueError, match=r"pos=7"):
        binary_pair(X, y, 7, 1)
    with pytest.raises(ValueError, match=r"neg=-3"):
        binary_pair(X, y, 1, -3)
    with pytest.raises(ValueError, match="labels"):
        binary_pair(X, y, 0, 1, labels=(1, 1))
    with pytest.raises(ValueError, match="rows"):
        binary_pair(X[:3], y, 0, 1)


def test_biggio_protocol_on_digits(digits):
    p = biggio_protocol(digits, 7, 1, n_train=40, n_val=100, seed=0)
    assert p.X_train.shape == (40, 64) and p.X_val.shape == (100, 64)
    assert set(np.unique(p.y_train)) == {0, 1} and set(np.unique(p.y_val)) == {0, 1}
    n7, n1 = int((digits.y_test == 7).sum()), int((digits.y_test == 1).sum())
    assert int((p.y_test == 1).sum()) == n7 and int((p.y_test == 0).sum()) == n1
    idx = p.meta["indices"]
    assert len(np.intersect1d(idx["train"], idx["val"])) == 0
    np.testing.assert_array_equal(digits.X_train[idx["train"]], p.X_train)
    np.testing.assert_array_equal(np.where(digits.y_train[idx["val"]] == 7, 1, 0), p.y_val)
    np.testing.assert_array_equal(idx["test"], np.flatnonzero(np.isin(digits.y_test, [7, 1])))
    assert p.meta["labels"] == (1, 0) and p.name == "digits-7v1"
    again = biggio_protocol(digits, 7, 1, n_train=40, n_val=100, seed=0)
    np.testing.assert_array_equal(again.meta["indices"]["val"], idx["val"])
    strat = biggio_protocol(digits, 7, 1, n_train=40, n_val=100, seed=0, stratify=True)
    assert abs(int((strat.y_train == 1).sum()) - 20) <= 1


@pytest.mark.parametrize("stratify", [False, True])
def test_biggio_labels_change_the_names_not_the_draw(digits, stratify):
    """The experiments' numbers stay reproducible: (1, 0) and (1, -1) draw the same rows."""
    new = biggio_protocol(digits, 9, 8, n_train=30, n_val=60, seed=3, stratify=stratify)
    old = biggio_protocol(digits, 9, 8, n_train=30, n_val=60, seed=3, stratify=stratify, labels=(1, -1))
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(new.meta["indices"][part], old.meta["indices"][part])
    np.testing.assert_array_equal(np.where(old.y_train == 1, 1, 0), new.y_train)
    np.testing.assert_array_equal(new.X_val, old.X_val)


def test_biggio_protocol_errors(digits):
    with pytest.raises(ValueError, match="n_train"):
        biggio_protocol(digits, 7, 1, n_train=300, n_val=500)
    with pytest.raises(ValueError, match="pos and neg must differ"):
        biggio_protocol(digits, 7, 7)
    with pytest.raises(ValueError, match=r"neg=10"):
        biggio_protocol(digits, 7, 10)
    with pytest.raises(TypeError, match="n_val"):
        biggio_protocol(digits, 7, 1, n_val=None)
    with pytest.raises(TypeError, match="dataset"):
        biggio_protocol((digits.X_train, digits.y_train), 7, 1)


def test_munoz_protocol_on_digits(digits):
    p = munoz_protocol(digits, n_train=300, n_val=300, n_test=None, seed=0)
    assert (len(p.y_train), len(p.y_val), len(p.y_test)) == (300, 300, 1797 - 600)
    idx = p.meta["indices"]
    allidx = np.concatenate([idx["train"], idx["val"], idx["test"]])
    assert len(np.unique(allidx)) == len(allidx) == 1797
    X_all = np.concatenate([digits.X_train, digits.X_test])
    np.testing.assert_array_equal(X_all[idx["val"]], p.X_val)
    assert set(np.unique(p.y_train)) == set(range(10))  # 10-class, original labels

    s = munoz_protocol(digits, n_train=200, n_val=200, n_test=100, seed=0, pool="split")
    assert s.meta["sizes"] == (200, 200, 100)
    np.testing.assert_array_equal(digits.X_test[s.meta["indices"]["test"]], s.X_test)
    assert len(np.intersect1d(s.meta["indices"]["train"], s.meta["indices"]["val"])) == 0

    b = munoz_protocol(digits, n_train=50, n_val=50, n_test=50, pos=3, neg=8)
    assert set(np.unique(np.concatenate([b.y_train, b.y_val, b.y_test]))) == {0, 1}
    b_pm = munoz_protocol(digits, n_train=50, n_val=50, n_test=50, pos=3, neg=8, labels=(1, -1))
    np.testing.assert_array_equal(b_pm.meta["indices"]["val"], b.meta["indices"]["val"])
    assert set(np.unique(b_pm.y_train)) == {-1, 1}

    with pytest.raises(ValueError, match="n_test"):
        munoz_protocol(digits)  # 1000 + 1000 + 8000 > 1797
    with pytest.raises(ValueError, match="n_test"):
        munoz_protocol(digits, n_train=10, n_val=10, n_test=5000, pool="split")
    with pytest.raises(ValueError, match="pool"):
        munoz_protocol(digits, pool="nope")
    with pytest.raises(ValueError, match="together"):
        munoz_protocol(digits, pos=3)


def test_protocols_default_to_zero_one_labels(digits):
    """One label convention: binary protocols give 1 for ``pos`` and 0 for ``neg``; the rows drawn do not
    depend on the labels chosen."""
    X, y = np.zeros((4, 1)), np.array([7, 1, 7, 2])
    assert binary_pair(X, y, 7, 1)[1].tolist() == [1, 0, 1]
    assert binary_pair(X, y, 7, 1, labels=(1, -1))[1].tolist() == [1, -1, 1]
    new = biggio_protocol(digits, 7, 1, n_train=20, n_val=30, seed=1)
    pm = biggio_protocol(digits, 7, 1, n_train=20, n_val=30, seed=1, labels=(1, -1))
    assert set(new.y_train.tolist()) == {0, 1} and set(pm.y_train.tolist()) == {-1, 1}
    np.testing.assert_array_equal(pm.meta["indices"]["train"], new.meta["indices"]["train"])


@pytest.mark.shared_data
def test_biggio_protocol_mnist_7_vs_1(mnist):
    p = biggio_protocol(mnist, pos=7, neg=1, seed=0)
    assert p.X_train.shape == (100, 784) and p.X_val.shape == (500, 784)
    assert len(p.y_test) == 1028 + 1135
    assert int((p.y_test == 1).sum()) == 1028 and int((p.y_test == 0).sum()) == 1135
    np.testing.assert_array_equal(np.where(mnist.y_train[p.meta["indices"]["train"]] == 7, 1, 0), p.y_train)
    assert len(np.intersect1d(p.meta["indices"]["train"], p.meta["indices"]["val"])) == 0


@pytest.mark.shared_data
def test_munoz_protocol_mnist(mnist):
    p = munoz_protocol(mnist, seed=0)
    assert (len(p.y_train), len(p.y_val), len(p.y_test)) == (1000, 1000, 8000)
    idx = np.concatenate(list(p.meta["indices"].values()))
    assert len(np.unique(idx)) == 10000
    assert set(np.unique(p.y_test)) == set(range(10))
