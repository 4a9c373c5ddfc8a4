"""Tests for poisoning.data: loaders, IDX parsing, file resolution and the split protocols.

The scikit-learn and synthetic-IDX tests always run; the ones on the real files use the
``shared_data_dir`` fixture and skip cleanly when ``../shared/data`` is absent.
"""

import ast
import dataclasses
import gzip
import inspect
import sys
import types

import numpy as np
import pytest

from poisoning import data as D
from poisoning.data import (
    DATASETS,
    Dataset,
    binary_pair,
    biggio_protocol,
    load_breast_cancer,
    load_dataset,
    load_diabetes,
    load_digits,
    munoz_protocol,
    parse_idx,
    split,
    split_indices,
)

MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
    """Tests control BILEVEL_DATA_DIR themselves."""
    monkeypatch.delenv(D.DATA_DIR_ENV, raising=False)


@pytest.fixture(scope="module")
def digits():
    return load_digits()


# --------------------------------------------------------------------------------------------
# scikit-learn shipped datasets
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# split / split_indices
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# binary_pair and the protocols (digits stands in for MNIST)
# --------------------------------------------------------------------------------------------


def test_binary_pair_relabels_pos_to_plus_one():
    X = np.arange(12.0).reshape(6, 2)
    y = np.array([7, 1, 3, 7, 1, 9])
    Xs, ys, idx = binary_pair(X, y, pos=7, neg=1, return_index=True)
    np.testing.assert_array_equal(idx, [0, 1, 3, 4])
    np.testing.assert_array_equal(ys, [1, -1, 1, -1])
    np.testing.assert_array_equal(Xs, X[idx])
    assert ys.dtype == np.int64
    _, y01 = binary_pair(X, y, pos=1, neg=7, labels=(1, 0))
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


def test_biggio_protocol_on_digits(digits):
    p = biggio_protocol(digits, 7, 1, n_train=40, n_val=100, seed=0)
    assert p.X_train.shape == (40, 64) and p.X_val.shape == (100, 64)
    assert set(np.unique(p.y_train)) <= {-1, 1} and set(np.unique(p.y_val)) <= {-1, 1}
    n7, n1 = int((digits.y_test == 7).sum()), int((digits.y_test == 1).sum())
    assert int((p.y_test == 1).sum()) == n7 and int((p.y_test == -1).sum()) == n1
    idx = p.meta["indices"]
    assert len(np.intersect1d(idx["train"], idx["val"])) == 0
    np.testing.assert_array_equal(digits.X_train[idx["train"]], p.X_train)
    np.testing.assert_array_equal(np.where(digits.y_train[idx["val"]] == 7, 1, -1), p.y_val)
    np.testing.assert_array_equal(idx["test"], np.flatnonzero(np.isin(digits.y_test, [7, 1])))
    again = biggio_protocol(digits, 7, 1, n_train=40, n_val=100, seed=0)
    np.testing.assert_array_equal(again.meta["indices"]["val"], idx["val"])
    strat = biggio_protocol(digits, 7, 1, n_train=40, n_val=100, seed=0, stratify=True)
    assert abs(int((strat.y_train == 1).sum()) - 20) <= 1


def test_biggio_protocol_errors(digits):
    with pytest.raises(ValueError, match="n_train"):
        biggio_protocol(digits, 7, 1, n_train=300, n_val=500)
    with pytest.raises(ValueError, match="pos and neg must differ"):
        biggio_protocol(digits, 7, 7)
    with pytest.raises(ValueError, match=r"neg=10"):
        biggio_protocol(digits, 7, 10)
    with pytest.raises(TypeError, match="n_val"):
        biggio_protocol(digits, 7, 1, n_val=None)


def test_munoz_protocol_on_digits(digits):
    p = munoz_protocol(digits, n_train=300, n_val=300, n_test=None, seed=0)
    assert (len(p.y_train), len(p.y_val), len(p.y_test)) == (300, 300, 1797 - 600)
    idx = p.meta["indices"]
    allidx = np.concatenate([idx["train"], idx["val"], idx["test"]])
    assert len(np.unique(allidx)) == len(allidx) == 1797
    X_all = np.concatenate([digits.X_train, digits.X_test])
    np.testing.assert_array_equal(X_all[idx["val"]], p.X_val)
    assert set(np.unique(p.y_train)) == set(range(10))  # 10-class

    s = munoz_protocol(digits, n_train=200, n_val=200, n_test=100, seed=0, pool="split")
    assert s.meta["sizes"] == (200, 200, 100)
    np.testing.assert_array_equal(digits.X_test[s.meta["indices"]["test"]], s.X_test)
    assert len(np.intersect1d(s.meta["indices"]["train"], s.meta["indices"]["val"])) == 0

    b = munoz_protocol(digits, n_train=50, n_val=50, n_test=50, pos=3, neg=8)
    assert set(np.unique(np.concatenate([b.y_train, b.y_val, b.y_test]))) == {-1, 1}

    with pytest.raises(ValueError, match="n_test"):
        munoz_protocol(digits)  # 1000 + 1000 + 8000 > 1797
    with pytest.raises(ValueError, match="n_test"):
        munoz_protocol(digits, n_train=10, n_val=10, n_test=5000, pool="split")
    with pytest.raises(ValueError, match="pool"):
        munoz_protocol(digits, pool="nope")
    with pytest.raises(ValueError, match="together"):
        munoz_protocol(digits, pos=3)


# --------------------------------------------------------------------------------------------
# dispatch, containers, hygiene
# --------------------------------------------------------------------------------------------


def test_load_dataset_dispatch_and_unknown_name():
    ds = load_dataset("Breast-Cancer", test_fraction=0.5)
    assert ds.name == "breast_cancer" and ds.n_test == round(0.5 * 569)
    with pytest.raises(ValueError) as exc:
        load_dataset("cifar100")
    for name in DATASETS:
        assert name in str(exc.value)
    assert set(DATASETS) == {"mnist", "fashion_mnist", "digits", "breast_cancer", "diabetes",
                             "spambase", "adult", "house_prices", "warfarin"}


def test_dataset_is_frozen_and_validated(digits):
    with pytest.raises(dataclasses.FrozenInstanceError):
        digits.X_train = None
    with pytest.raises(ValueError, match="y_train"):
        Dataset(np.zeros((3, 2)), np.zeros(2), np.zeros((0, 2)), np.zeros(0), "x")


def test_module_never_unpickles_or_downloads_or_assumes_shared_dir():
    source = inspect.getsource(D)
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            assert not any(n.split(".")[0] in {"pickle", "cPickle", "dill", "joblib", "urllib", "requests"}
                           for n in names), names
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
            base = node.func.value
            if isinstance(base, ast.Name) and base.id in {"np", "numpy"}:
                kws = {k.arg: k.value for k in node.keywords}
                assert "allow_pickle" in kws and isinstance(kws["allow_pickle"], ast.Constant)
                assert kws["allow_pickle"].value is False
    assert "shared/data" not in source and "shared" + "_data" not in source
    assert "pandas" not in source


# --------------------------------------------------------------------------------------------
# IDX parsing and file resolution on synthetic files
# --------------------------------------------------------------------------------------------


def _idx_bytes(arr, magic):
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()


def _write_fake_mnist(folder, n_train=6, n_test=4, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte.gz": (rng.integers(0, 256, (n_train, 28, 28)), 2051),
        "train-labels-idx1-ubyte.gz": (np.arange(n_train) % 10, 2049),
        "t10k-images-idx3-ubyte.gz": (rng.integers(0, 256, (n_test, 28, 28)), 2051),
        "t10k-labels-idx1-ubyte.gz": (np.arange(n_test)[::-1] % 10, 2049),
    }
    for name, (arr, magic) in arrays.items():
        with gzip.open(folder / name, "wb") as fh:
            fh.write(_idx_bytes(arr, magic))
    return {k: v[0] for k, v in arrays.items()}


def test_parse_idx_header_and_errors():
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(parse_idx(_idx_bytes(arr, 2051), expected_magic=2051), arr)
    labels = parse_idx(_idx_bytes(np.array([3, 1, 4]), 2049))
    assert labels.dtype == np.uint8 and labels.tolist() == [3, 1, 4]
    big = np.array([1, -2, 300], ">i4")
    buf = (0x0C01).to_bytes(4, "big") + (3).to_bytes(4, "big") + big.tobytes()
    assert parse_idx(buf).tolist() == [1, -2, 300]
    with pytest.raises(ValueError, match="magic"):
        parse_idx(_idx_bytes(arr, 2049), expected_magic=2051)
    with pytest.raises(ValueError, match="magic"):
        parse_idx(b"\x12\x34\x08\x03" + bytes(12))
    with pytest.raises(ValueError, match="size mismatch"):
        parse_idx(_idx_bytes(arr, 2051)[:-1])
    with pytest.raises(ValueError, match="size mismatch"):
        parse_idx(_idx_bytes(arr, 2051) + b"\x00")
    with pytest.raises(ValueError, match="short"):
        parse_idx(b"\x00\x00")


def test_load_mnist_from_synthetic_idx(tmp_path):
    raw = _write_fake_mnist(tmp_path / "mnist")
    ds = D.load_mnist(tmp_path)
    assert ds.X_train.shape == (6, 784) and ds.X_test.shape == (4, 784)
    assert ds.X_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    np.testing.assert_array_equal(ds.X_train, raw["train-images-idx3-ubyte.gz"].reshape(6, 784).astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(ds.y_test, raw["t10k-labels-idx1-ubyte.gz"])
    assert D.load_mnist(tmp_path, flatten=False).X_test.shape == (4, 28, 28)
    # files directly in data_dir; fashion-mnist subfolder; string path
    _write_fake_mnist(tmp_path / "direct", seed=1)
    assert D.load_mnist(str(tmp_path / "direct")).n_train == 6
    _write_fake_mnist(tmp_path / "fashion-mnist", n_train=3, n_test=2)
    assert D.load_fashion_mnist(tmp_path).n_train == 3
    assert load_dataset("fashion-mnist", tmp_path).name == "fashion_mnist"


def test_env_var_and_uncompressed_files(tmp_path, monkeypatch):
    raw = _write_fake_mnist(tmp_path / "mnist")
    for name in MNIST_FILES:  # replace the .gz files by plain IDX files
        path = tmp_path / "mnist" / name
        path.with_suffix("").write_bytes(gzip.decompress(path.read_bytes()))
        path.unlink()
    monkeypatch.setenv(D.DATA_DIR_ENV, str(tmp_path))
    ds = D.load_mnist()
    np.testing.assert_array_equal(ds.y_train, raw["train-labels-idx1-ubyte.gz"])
    assert D.resolve_data_dir() == tmp_path
    other = tmp_path / "elsewhere"
    with pytest.raises(FileNotFoundError):  # the argument wins over the env var
        D.load_mnist(other)


@pytest.mark.parametrize("target", ["train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"])
def test_corrupted_idx_raises_value_error(tmp_path, target):
    _write_fake_mnist(tmp_path / "mnist")
    path = tmp_path / "mnist" / target
    buf = bytearray(gzip.decompress(path.read_bytes()))
    buf[:4] = (1234).to_bytes(4, "big")
    path.write_bytes(gzip.compress(bytes(buf)))
    with pytest.raises(ValueError, match="magic"):
        D.load_mnist(tmp_path)


def test_inconsistent_or_broken_idx_files(tmp_path):
    _write_fake_mnist(tmp_path / "mnist")
    labels = tmp_path / "mnist" / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(_idx_bytes(np.arange(5) % 10, 2049)))
    with pytest.raises(ValueError, match="6 images but"):
        D.load_mnist(tmp_path)
    labels.write_bytes(gzip.compress(_idx_bytes(np.array([0, 1, 2, 3, 4, 12]), 2049)))
    with pytest.raises(ValueError, match="0..9"):
        D.load_mnist(tmp_path)
    labels.write_bytes(b"this is not gzip")
    with pytest.raises(ValueError, match="decompress"):
        D.load_mnist(tmp_path)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "spambase", "adult", "house_prices", "warfarin"])
def test_missing_files_raise_file_not_found(tmp_path, name):
    with pytest.raises(FileNotFoundError) as exc:
        load_dataset(name, tmp_path / "nope")
    msg = str(exc.value)
    assert "BILEVEL_DATA_DIR" in msg and "data_dir" in msg and str(tmp_path / "nope") in msg
    expected = {"mnist": "train-images-idx3-ubyte.gz", "fashion_mnist": "fashion-mnist",
                "spambase": "spambase.data", "adult": "adult.test",
                "house_prices": "house-processed.csv", "warfarin": "pharm-preproc.csv"}[name]
    assert expected in msg
    with pytest.raises(FileNotFoundError, match="BILEVEL_DATA_DIR"):
        load_dataset(name)  # no argument, env var unset


def test_allow_download_without_tfds(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
    with pytest.raises(FileNotFoundError, match="tensorflow_datasets is not installed"):
        D.load_mnist(tmp_path, allow_download=True)
    with pytest.raises(FileNotFoundError, match="allow_download=True"):
        D.load_mnist(tmp_path)


def test_allow_download_uses_tfds_only_when_asked(tmp_path, monkeypatch):
    calls = []
    rng = np.random.default_rng(0)

    def fake_load(name, split, batch_size, as_supervised):
        calls.append(name)
        assert split == ["train", "test"] and batch_size == -1 and as_supervised
        return [(rng.integers(0, 256, (5, 28, 28, 1), dtype=np.uint8), np.arange(5)),
                (rng.integers(0, 256, (2, 28, 28, 1), dtype=np.uint8), np.arange(2))]

    fake = types.SimpleNamespace(load=fake_load, as_numpy=lambda x: x)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    with pytest.raises(FileNotFoundError):
        D.load_fashion_mnist(tmp_path)  # allow_download defaults to False
    assert calls == []
    ds = D.load_fashion_mnist(tmp_path, allow_download=True)
    assert calls == ["fashion_mnist"] and ds.meta["source"] == "tensorflow_datasets"
    assert ds.X_train.shape == (5, 784) and ds.X_train.max() <= 1.0 and ds.y_test.tolist() == [0, 1]
    _write_fake_mnist(tmp_path / "mnist")
    assert D.load_mnist(tmp_path, allow_download=True).meta["source"] != "tensorflow_datasets"


# --------------------------------------------------------------------------------------------
# real files (../shared/data)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist(shared_data_dir):
    return D.load_mnist(shared_data_dir)


@pytest.mark.shared_data
def test_mnist_real(mnist):
    assert mnist.X_train.shape == (60000, 784) and mnist.X_test.shape == (10000, 784)
    assert mnist.X_train.dtype == np.float32 and mnist.y_train.dtype == np.int64
    assert np.bincount(mnist.y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(mnist.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert mnist.X_train.min() == 0.0 and mnist.X_train.max() == 1.0
    assert abs(mnist.X_train.mean(dtype=np.float64) - 0.1307) < 5e-4


@pytest.mark.shared_data
def test_biggio_protocol_mnist_7_vs_1(mnist):
    p = biggio_protocol(mnist, pos=7, neg=1, seed=0)
    assert p.X_train.shape == (100, 784) and p.X_val.shape == (500, 784)
    assert len(p.y_test) == 1028 + 1135
    assert int((p.y_test == 1).sum()) == 1028 and int((p.y_test == -1).sum()) == 1135
    np.testing.assert_array_equal(np.where(mnist.y_train[p.meta["indices"]["train"]] == 7, 1, -1), p.y_train)
    assert len(np.intersect1d(p.meta["indices"]["train"], p.meta["indices"]["val"])) == 0


@pytest.mark.shared_data
def test_munoz_protocol_mnist(mnist):
    p = munoz_protocol(mnist, seed=0)
    assert (len(p.y_train), len(p.y_val), len(p.y_test)) == (1000, 1000, 8000)
    idx = np.concatenate(list(p.meta["indices"].values()))
    assert len(np.unique(idx)) == 10000
    assert set(np.unique(p.y_test)) == set(range(10))


@pytest.mark.shared_data
def test_fashion_mnist_real(shared_data_dir):
    ds = D.load_fashion_mnist(shared_data_dir)
    assert ds.X_train.shape == (60000, 784) and ds.X_test.shape == (10000, 784)
    assert np.bincount(ds.y_train).tolist() == [6000] * 10
    assert np.bincount(ds.y_test).tolist() == [1000] * 10
    assert 0.0 <= ds.X_train.min() and ds.X_train.max() <= 1.0
    assert ds.meta["class_names"][9] == "Ankle boot"


@pytest.mark.shared_data
def test_spambase_real(shared_data_dir, monkeypatch):
    monkeypatch.setenv(D.DATA_DIR_ENV, shared_data_dir)  # resolved from the env var
    ds = D.load_spambase()
    y = np.concatenate([ds.y_train, ds.y_test])
    assert len(y) == 4601 and int(y.sum()) == 1813 and ds.X_train.shape[1] == 57
    assert ds.X_train.min() == 0.0 and ds.X_train.max() == 1.0 and ds.X_test.max() <= 1.0
    assert abs(ds.y_test.mean() - 1813 / 4601) < 0.01  # stratified
    raw = D.load_spambase(shared_data_dir, scale=False, test_fraction=0.0)
    assert raw.X_train.shape == (4601, 57) and raw.X_train.max() > 1000
    assert raw.meta["feature_names"][0] == "word_freq_make"


@pytest.mark.shared_data
def test_adult_real(shared_data_dir):
    ds = D.load_adult(shared_data_dir)
    assert ds.X_train.shape[0] == 32561 and ds.X_test.shape[0] == 16281
    assert int(ds.y_train.sum()) == 7841 and int(ds.y_test.sum()) == 3846
    assert ds.X_train.dtype == np.float32 and ds.X_train.shape[1] == ds.X_test.shape[1] == 108
    assert ds.X_train.min() == 0.0 and ds.X_train.max() == 1.0 and ds.X_test.max() <= 1.0
    names = ds.meta["feature_names"]
    assert len(names) == 108 and "workclass=?" in names
    a, b = ds.meta["attribute_columns"]["workclass"]
    np.testing.assert_array_equal(ds.X_train[:, a:b].sum(axis=1), 1.0)  # one-hot
    assert ds.meta["sensitive_attribute"] == "sex"
    male = ds.meta["sex_columns"]["Male"]
    np.testing.assert_array_equal(ds.X_train[:, male], ds.meta["sex_train"])
    np.testing.assert_array_equal(ds.X_test[:, male], ds.meta["sex_test"])
    assert int(ds.meta["sex_train"].sum()) == 21790  # 21790 men / 10771 women in adult.data

    dropped = D.load_adult(shared_data_dir, missing="drop", drop_sensitive=True, drop=("fnlwgt",))
    assert dropped.X_train.shape[0] == 30162 and dropped.X_test.shape[0] == 15060
    assert dropped.meta["sex_columns"] is None and len(dropped.meta["sex_train"]) == 30162
    assert not any(n.startswith("sex=") or n == "fnlwgt" for n in dropped.meta["feature_names"])
    zero = D.load_adult(shared_data_dir, missing="zero")
    assert zero.X_train.shape[1] == 105
    with pytest.raises(ValueError, match="drop"):
        D.load_adult(shared_data_dir, drop=("salary",))


@pytest.mark.shared_data
def test_house_prices_and_warfarin_real(shared_data_dir):
    hp = D.load_house_prices(shared_data_dir, test_fraction=0.0)
    assert hp.X_train.shape == (1460, 274) and hp.y_train.shape == (1460,) and hp.task == "regression"
    assert hp.meta["target_name"] == "SalePrice" and len(hp.meta["feature_names"]) == 274
    for arr in (hp.X_train, hp.y_train):
        assert arr.dtype == np.float32 and arr.min() >= 0.0 and arr.max() <= 1.0
    split_hp = load_dataset("house_prices", shared_data_dir)
    assert split_hp.n_train + split_hp.n_test == 1460 and split_hp.n_test == 365
    wf = D.load_warfarin(shared_data_dir)
    assert wf.n_train + wf.n_test == 4683 and wf.X_train.shape[1] == 204
    assert wf.meta["target_name"] == "TherapeuticDoseofWarfarin"
