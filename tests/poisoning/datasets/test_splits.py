"""poisoning.datasets.splits: seeded disjoint draws (split, split_indices)."""

import numpy as np
import pytest

from poisoning.datasets import split, split_indices



def test_split_deterministic_disjoint_and_sized():
    X = np.arange(200, dtype=np.float32).reshape(100, 2)
    y = np.arange(100) % 3
    a = split(X, y, (10, 20, None), seed=3)
    b = split(X, y, (10, 20, None), seed=3)
    assert [len(p[1]) for p in a] == [10, 20, 70]
    for (Xa, ya), (Xb, yb) in zip(a, b):
        np.testing.assert_array_equal(Xa, Xb)
        np.testing.assert_array_equal(ya, yb)
    c = split(X, y, (10, 20, None), seed=4)
    assert not np.array_equal(a[0][0], c[0][0])
    rows = [set((Xp[:, 0] // 2).astype(int).tolist()) for Xp, _ in a]  # X rows identify examples
    assert not (rows[0] & rows[1]) and not (rows[0] & rows[2]) and not (rows[1] & rows[2])
    assert set().union(*rows) == set(range(100))
    for Xp, yp in a:  # rows and labels stay paired
        np.testing.assert_array_equal((Xp[:, 0] // 2).astype(int) % 3, yp)


def test_split_indices_fixed_sizes_leave_the_rest_unused():
    parts = split_indices(50, (5, 7), seed=0)
    assert [len(p) for p in parts] == [5, 7]
    assert len(np.unique(np.concatenate(parts))) == 12
    rng_parts = split_indices(50, (5, 7), np.random.default_rng(0))
    assert [len(p) for p in rng_parts] == [5, 7]


def test_split_stratified_keeps_proportions():
    y = np.array([0] * 80 + [1] * 20)
    X = np.zeros((100, 1))
    (_, y_tr), (_, y_va), (_, y_te) = split(X, y, (50, 30, None), seed=0, stratify=True)
    assert np.bincount(y_tr).tolist() == [40, 10]
    assert np.bincount(y_va).tolist() == [24, 6]
    assert np.bincount(y_te).tolist() == [16, 4]
    # odd size: still exact total and close proportions
    (_, y_a), (_, y_b) = split(X, y, (7, None), seed=1, stratify=True)
    assert len(y_a) == 7 and abs(int((y_a == 1).sum()) - 1.4) < 1 and len(y_b) == 93


def test_split_errors_name_the_argument():
    X, y = np.zeros((10, 2)), np.zeros(10, int)
    with pytest.raises(ValueError, match=r"sizes.*11.*10"):
        split(X, y, (5, 6), seed=0)
    with pytest.raises(ValueError, match="sizes"):
        split(X, y, (20, None), seed=0)
    with pytest.raises(ValueError, match="at most one None"):
        split(X, y, (None, None), seed=0)
    with pytest.raises(ValueError, match=r"sizes\[1\]"):
        split(X, y, (2, -1), seed=0)
    with pytest.raises(TypeError, match=r"sizes\[0\]"):
        split(X, y, (2.5, None), seed=0)
    with pytest.raises(TypeError, match="sizes"):
        split(X, y, 5, seed=0)
    with pytest.raises(ValueError, match="rows"):
        split(X, y[:9], (2, None), seed=0)
    with pytest.raises(ValueError, match="stratify"):
        split_indices(10, (2, None), 0, stratify=True)
    with pytest.raises(TypeError, match="seed"):
        split(X, y, (2, None), seed=1.5)
