"""poisoning.datasets.mnist: MNIST and Fashion-MNIST from synthetic IDX files, the
tensorflow-datasets fallback (faked), and the real files (skipped when the shared data is absent)."""

import gzip
import sys
import types

import numpy as np
import pytest

from poisoning.datasets import (
    DATA_DIR_ENV,
    load_dataset,
    load_fashion_mnist,
    load_mnist,
    resolve_data_dir,
)
from tests.poisoning.datasets.fakes import MNIST_FILES, idx_bytes, write_fake_mnist


def test_load_mnist_from_synthetic_idx(tmp_path):
    raw = write_fake_mnist(tmp_path / "mnist")
    ds = load_mnist(tmp_path)
    assert ds.X_train.shape == (6, 784) and ds.X_test.shape == (4, 784)
    assert ds.X_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    np.testing.assert_array_equal(ds.X_train, raw["train-images-idx3-ubyte.gz"].reshape(6, 784).astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(ds.y_test, raw["t10k-labels-idx1-ubyte.gz"])
    assert load_mnist(tmp_path, flatten=False).X_test.shape == (4, 28, 28)
    # files directly in data_dir; fashion-mnist subfolder; string path
    write_fake_mnist(tmp_path / "direct", seed=1)
    assert load_mnist(str(tmp_path / "direct")).n_train == 6
    write_fake_mnist(tmp_path / "fashion-mnist", n_train=3, n_test=2)
    assert load_fashion_mnist(tmp_path).n_train == 3
    assert load_dataset("fashion-mnist", tmp_path).name == "fashion_mnist"


def test_env_var_and_uncompressed_files(tmp_path, monkeypatch):
    raw = write_fake_mnist(tmp_path / "mnist")
    for name in MNIST_FILES:  # replace the .gz files by plain IDX files
        path = tmp_path / "mnist" / name
        path.with_suffix("").write_bytes(gzip.decompress(path.read_bytes()))
        path.unlink()
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    ds = load_mnist()
    np.testing.assert_array_equal(ds.y_train, raw["train-labels-idx1-ubyte.gz"])
    assert resolve_data_dir() == tmp_path
    other = tmp_path / "elsewhere"
    with pytest.raises(FileNotFoundError):  # the argument wins over the env var
        load_mnist(other)


@pytest.mark.parametrize("target", ["train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"])
def test_corrupted_idx_raises_value_error(tmp_path, target):
    write_fake_mnist(tmp_path / "mnist")
    path = tmp_path / "mnist" / target
    buf = bytearray(gzip.decompress(path.read_bytes()))
    buf[:4] = (1234).to_bytes(4, "big")
    path.write_bytes(gzip.compress(bytes(buf)))
    with pytest.raises(ValueError, match="magic"):
        load_mnist(tmp_path)


def test_inconsistent_or_broken_idx_files(tmp_path):
    write_fake_mnist(tmp_path / "mnist")
    labels = tmp_path / "mnist" / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(idx_bytes(np.arange(5) % 10, 2049)))
    with pytest.raises(ValueError, match="6 images but"):
        load_mnist(tmp_path)
    labels.write_bytes(gzip.compress(idx_bytes(np.array([0, 1, 2, 3, 4, 12]), 2049)))
    with pytest.raises(ValueError, match="0..9"):
        load_mnist(tmp_path)
    labels.write_bytes(b"this is not gzip")
    with pytest.raises(ValueError, match="decompress"):
        load_mnist(tmp_path)


def test_allow_download_without_tfds(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
    with pytest.raises(FileNotFoundError, match="tensorflow_datasets is not installed"):
        load_mnist(tmp_path, allow_download=True)
    with pytest.raises(FileNotFoundError, match="allow_download=True"):
        load_mnist(tmp_path)


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
        load_fashion_mnist(tmp_path)  # allow_download defaults to False
    assert calls == []
    ds = load_fashion_mnist(tmp_path, allow_download=True)
    assert calls == ["fashion_mnist"] and ds.meta["source"] == "tensorflow_datasets"
    assert ds.X_train.shape == (5, 784) and ds.X_train.max() <= 1.0 and ds.y_test.tolist() == [0, 1]
    write_fake_mnist(tmp_path / "mnist")
    assert load_mnist(tmp_path, allow_download=True).meta["source"] != "tensorflow_datasets"


# real files (the shared data folder; the ``mnist`` fixture is in conftest.py)


@pytest.mark.shared_data
def test_mnist_real(mnist):
    assert mnist.X_train.shape == (60000, 784) and mnist.X_test.shape == (10000, 784)
    assert mnist.X_train.dtype == np.float32 and mnist.y_train.dtype == np.int64
    assert np.bincount(mnist.y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(mnist.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert mnist.X_train.min() == 0.0 and mnist.X_train.max() == 1.0
    assert abs(mnist.X_train.mean(dtype=np.float64) - 0.1307) < 5e-4


@pytest.mark.shared_data
def test_fashion_mnist_real(shared_data_dir):
    ds = load_fashion_mnist(shared_data_dir)
    assert ds.X_train.shape == (60000, 784) and ds.X_test.shape == (10000, 784)
    assert np.bincount(ds.y_train).tolist() == [6000] * 10
    assert np.bincount(ds.y_test).tolist() == [1000] * 10
    assert 0.0 <= ds.X_train.min() and ds.X_train.max() <= 1.0
    assert ds.meta["class_names"][9] == "Ankle boot"

