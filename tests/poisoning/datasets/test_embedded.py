"""poisoning.datasets.embedded: scikit-learn's shipped digits, breast cancer and diabetes."""

import numpy as np
import pytest

from poisoning.datasets import Dataset, load_breast_cancer, load_diabetes, load_digits



def test_digits_layout(digits):
    ds = digits
    assert isinstance(ds, Dataset) and ds.name == "digits" and ds.task == "classification"
    assert ds.X_train.dtype == np.float32 and ds.X_test.dtype == np.float32
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    assert ds.X_train.shape[1] == 64 and ds.n_features == 64
    assert ds.n_train + ds.n_test == 1797
    assert ds.n_test == round(0.25 * 1797)
    X = np.concatenate([ds.X_train, ds.X_test])
    assert X.min() == 0.0 and X.max() == 1.0
    np.testing.assert_array_equal(X * 16, np.round(X * 16))  # pixels / 16
    assert set(np.unique(ds.y_train)) == set(range(10)) and ds.meta["image_shape"] == (8, 8)
    # stratified: per-class test share within one example of 25%
    counts = np.bincount(np.concatenate([ds.y_train, ds.y_test]))
    assert np.all(np.abs(np.bincount(ds.y_test, minlength=10) - 0.25 * counts) <= 1)
    assert "X_train=float32[" in repr(ds)


def test_digits_matches_sklearn_and_options(digits):
    from sklearn.datasets import load_digits as sk_digits

    raw = sk_digits()
    tr = digits.meta["train_index"]
    np.testing.assert_allclose(digits.X_train, raw.data[tr] / 16.0, rtol=1e-7)
    np.testing.assert_array_equal(digits.y_train, raw.target[tr])
    assert load_digits(flatten=False).X_train.shape[1:] == (8, 8)
    everything = load_digits(test_fraction=0.0)
    assert everything.n_train == 1797 and everything.X_test.shape == (0, 64)
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=1.0)


def test_loader_split_is_deterministic(digits):
    again = load_digits(seed=0)
    np.testing.assert_array_equal(digits.X_train, again.X_train)
    np.testing.assert_array_equal(digits.y_test, again.y_test)
    other = load_digits(seed=1)
    assert not np.array_equal(digits.meta["test_index"], other.meta["test_index"])
    tr, te = digits.meta["train_index"], digits.meta["test_index"]
    assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == 1797


def test_breast_cancer_minmax_uses_training_statistics():
    ds = load_breast_cancer()
    assert ds.X_train.shape[1] == 30 and ds.n_train + ds.n_test == 569
    assert ds.X_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    np.testing.assert_allclose(ds.X_train.min(axis=0), 0.0)
    np.testing.assert_allclose(ds.X_train.max(axis=0), 1.0)
    assert ds.X_test.min() >= 0.0 and ds.X_test.max() <= 1.0  # clipped
    assert np.bincount(np.concatenate([ds.y_train, ds.y_test])).tolist() == [212, 357]
    from sklearn.datasets import load_breast_cancer as sk_bc

    raw = sk_bc().data
    lo, hi = ds.meta["feature_min"], ds.meta["feature_max"]
    np.testing.assert_allclose(lo, raw[ds.meta["train_index"]].min(axis=0))
    unclipped = load_breast_cancer(clip=False)
    np.testing.assert_allclose(unclipped.X_test, (raw[ds.meta["test_index"]] - lo) / (hi - lo), rtol=1e-5, atol=1e-6)
    assert len(ds.meta["feature_names"]) == 30


def test_diabetes_regression_scaled_and_invertible():
    ds = load_diabetes()
    assert ds.task == "regression" and ds.n_train + ds.n_test == 442 and ds.X_train.shape[1] == 10
    for arr in (ds.X_train, ds.X_test, ds.y_train, ds.y_test):
        assert arr.dtype == np.float32 and arr.min() >= 0.0 and arr.max() <= 1.0
    assert ds.y_train.min() == 0.0 and ds.y_train.max() == 1.0
    from sklearn.datasets import load_diabetes as sk_diab

    y = sk_diab().target
    lo, hi = ds.meta["target_min"], ds.meta["target_max"]
    np.testing.assert_allclose(ds.y_train * (hi - lo) + lo, y[ds.meta["train_index"]], rtol=1e-5)
