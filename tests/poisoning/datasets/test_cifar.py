"""poisoning.datasets.cifar: CIFAR-10 / CIFAR-100 from tiny synthetic files in every layout the
loaders read (.npy.xz + .npz, the official binary version), bad files, the tensorflow-datasets
fallback (faked), and the real CIFAR-10 files (skipped when the shared data is absent)."""

import lzma
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from poisoning.datasets import (
    CIFAR10_CLASSES,
    CIFAR100_COARSE_CLASSES,
    CIFAR100_FINE_CLASSES,
    DATA_DIR_ENV,
    load_cifar10,
    load_cifar100,
    load_dataset,
)
from poisoning.datasets import cifar as cifar_module
from tests.poisoning.datasets.fakes import (
    cifar_records,
    npy_xz_bytes,
    write_fake_cifar10,
    write_fake_cifar10_bin,
    write_fake_cifar100_bin,
)


@pytest.fixture
def fake10(tmp_path):
    return tmp_path, write_fake_cifar10(tmp_path / "cifar10")


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


# --------------------------------------------------------------------------------------------
# CIFAR-10, .npy.xz layout
# --------------------------------------------------------------------------------------------


def test_cifar10_layout_hwc_float32_and_labels(fake10):
    root, raw = fake10
    before = _files(root)
    ds = load_cifar10(root)
    assert ds.name == "cifar10" and ds.task == "classification"
    assert ds.X_train.shape == (30, 32, 32, 3) and ds.X_test.shape == (20, 32, 32, 3)
    assert ds.X_train.dtype == np.float32 and ds.y_train.dtype == np.int64 and type(ds.X_train) is np.ndarray
    np.testing.assert_array_equal(ds.X_train, raw["x_train"].astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(ds.y_test, raw["y_test"])
    assert 0.0 <= ds.X_test.min() and ds.X_test.max() <= 1.0
    assert ds.meta["class_names"] == CIFAR10_CLASSES and ds.meta["classes"] == tuple(range(10))
    assert ds.meta["image_shape"] == (32, 32, 3) and ds.meta["source"] == str(root / "cifar10")
    assert ds.meta["filenames_test"][3] == "test_3.png" and len(ds.meta["filenames_train"]) == 30
    assert _files(root) == before  # nothing written without cache_dir

    flat = load_cifar10(str(root), flatten=True)  # HWC row-major
    np.testing.assert_array_equal(flat.X_test, ds.X_test.reshape(20, 3072))
    assert flat.n_features == ds.n_features == 3072
    assert load_dataset("CIFAR-10", root).n_train == 30


def test_cifar10_from_env_var_direct_folder_and_plain_npy(fake10, monkeypatch):
    root, raw = fake10
    monkeypatch.setenv(DATA_DIR_ENV, str(root))
    assert load_cifar10().n_test == 20
    folder = root / "cifar10"  # files directly in data_dir, decompressed
    for name in ("cifar10_x_train.npy.xz", "cifar10_x_test.npy.xz"):
        (folder / name[:-3]).write_bytes(lzma.decompress((folder / name).read_bytes()))
        (folder / name).unlink()
    ds = load_cifar10(folder)
    np.testing.assert_array_equal(ds.X_train[5], raw["x_train"][5] / np.float32(255))


def test_cifar10_classes_subset_relabelled_in_given_order(fake10):
    root, raw = fake10
    ds = load_cifar10(root, classes=(5, 3))
    assert ds.meta["class_names"] == ("dog", "cat") and ds.meta["source_classes"] == (5, 3)
    assert ds.meta["classes"] == (0, 1) and set(ds.y_train.tolist()) == {0, 1}
    rows = np.flatnonzero(np.isin(raw["y_train"], (5, 3)))
    np.testing.assert_array_equal(ds.X_train, raw["x_train"][rows] / np.float32(255))
    np.testing.assert_array_equal(ds.y_train, np.where(raw["y_train"][rows] == 5, 0, 1))
    np.testing.assert_array_equal(ds.meta["filenames_train"], [f"train_{i}.png" for i in rows])
    by_name = load_cifar10(root, classes=["dog", "cat"], flatten=True)
    np.testing.assert_array_equal(by_name.y_test, ds.y_test)
    np.testing.assert_array_equal(by_name.X_test, ds.X_test.reshape(len(ds.X_test), -1))
    assert load_cifar10(root, classes=np.array([3])).n_train == 3


@pytest.mark.parametrize("classes, err, match", [
    (3, TypeError, "classes must be a sequence"),
    ("cat", TypeError, "classes must be a sequence"),
    ((), ValueError, "classes must not be empty"),
    ((1, 1), ValueError, "classes must be distinct"),
    ((10,), ValueError, r"classes: index 10 is out of range 0..9"),
    ((-1,), ValueError, "classes: index -1"),
    (("unicorn",), ValueError, "classes: unknown class name 'unicorn'"),
    ((1.5,), TypeError, "classes: entries"),
    ((True,), TypeError, "classes: entries"),
])
def test_cifar10_classes_errors_name_the_argument(tmp_path, classes, err, match):
    with pytest.raises(err, match=match):  # checked before any file is looked for
        load_cifar10(tmp_path / "absent", classes=classes)


def test_cifar_flag_and_label_mode_errors(tmp_path):
    with pytest.raises(TypeError, match="flatten"):
        load_cifar10(tmp_path, flatten="yes")
    with pytest.raises(TypeError, match="allow_download"):
        load_cifar10(tmp_path, allow_download=1)
    with pytest.raises(ValueError, match="label_mode"):
        load_cifar100(tmp_path, label_mode="super")
    with pytest.raises(ValueError, match=r"classes: index 20 is out of range 0..19"):
        load_cifar100(tmp_path, label_mode="coarse", classes=(20,))


def test_cifar10_cache_dir_writes_once_then_memory_maps(fake10, tmp_path, monkeypatch):
    root, raw = fake10
    cache = tmp_path / "cache"
    first = load_cifar10(root, cache_dir=cache)
    cached = sorted(p.name for p in cache.iterdir())
    assert len(cached) == 2 and all(n.startswith(("cifar10_x_train-", "cifar10_x_test-")) for n in cached)
    assert all(n.endswith(".npy") for n in cached)

    def no_decompression(path):
        raise AssertionError(f"decompressed {path} although it is cached")

    monkeypatch.setattr(cifar_module, "_read_npy", no_decompression)
    second = load_cifar10(root, cache_dir=cache, classes=(0, 9))
    rows = np.isin(raw["y_test"], (0, 9))
    np.testing.assert_array_equal(second.X_test, first.X_test[rows])
    assert type(second.X_test) is np.ndarray
    monkeypatch.undo()
    # a changed source file gets a new cache entry (the key holds its size and mtime)
    src = root / "cifar10" / "cifar10_x_test.npy.xz"
    src.write_bytes(npy_xz_bytes(raw["x_test"][:10]))
    os.utime(src, ns=(1, 1))
    with pytest.raises(ValueError, match="10 images"):  # the labels file still has 20: caught, not stale
        load_cifar10(root, cache_dir=cache)
    assert len(list(cache.iterdir())) == 3


# --------------------------------------------------------------------------------------------
# bad files: every error names the file
# --------------------------------------------------------------------------------------------


def test_cifar10_truncated_or_corrupt_xz(fake10):
    root, _ = fake10
    path = root / "cifar10" / "cifar10_x_train.npy.xz"
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"cifar10_x_train\.npy\.xz.*truncated or corrupt"):
        load_cifar10(root)
    path.write_bytes(b"not xz at all")
    with pytest.raises(ValueError, match=r"cifar10_x_train\.npy\.xz"):
        load_cifar10(root)


@pytest.mark.parametrize("bad", [
    np.zeros((4, 32, 32), np.uint8),           # no channel axis
    np.zeros((4, 3, 32, 32), np.uint8),        # CHW
    np.zeros((4, 32, 32, 3), np.float32),      # not uint8
])
def test_cifar10_wrong_image_shape_or_dtype(fake10, bad):
    root, _ = fake10
    (root / "cifar10" / "cifar10_x_test.npy.xz").write_bytes(npy_xz_bytes(bad))
    with pytest.raises(ValueError, match=r"cifar10_x_test\.npy\.xz: expected uint8 images of shape \(n, 32, 32, 3\)"):
        load_cifar10(root)


def test_cifar10_bad_labels_file(fake10):
    root, raw = fake10
    lab = root / "cifar10" / "cifar10_labels_filenames.npz"
    np.savez(lab, y_train=raw["y_train"])
    with pytest.raises(ValueError, match=r"cifar10_labels_filenames\.npz: missing array\(s\) \['y_test'\]"):
        load_cifar10(root)
    np.savez(lab, y_train=raw["y_train"][:-1], y_test=raw["y_test"])
    with pytest.raises(ValueError, match=r"cifar10_labels_filenames\.npz \['y_train'\]: 29 labels for 30 images"):
        load_cifar10(root)
    np.savez(lab, y_train=raw["y_train"], y_test=raw["y_test"] + 1)
    with pytest.raises(ValueError, match=r"\['y_test'\]: labels must be in 0..9, found 1..10"):
        load_cifar10(root)
    np.savez(lab, y_train=raw["y_train"].astype(np.float32), y_test=raw["y_test"])
    with pytest.raises(ValueError, match=r"\['y_train'\]: labels must be a 1-D integer array"):
        load_cifar10(root)
    np.savez(lab, y_train=raw["y_train"], y_test=raw["y_test"], filenames_test=np.array(["a.png"]))
    with pytest.raises(ValueError, match=r"\['filenames_test'\]: shape"):
        load_cifar10(root)
    np.savez(lab, y_train=raw["y_train"], y_test=raw["y_test"], class_names=np.array(["a", "b"]))
    with pytest.raises(ValueError, match=r"\['class_names'\]: expected 10 class names, found 2"):
        load_cifar10(root)
    swapped = list(CIFAR10_CLASSES)
    swapped[3], swapped[5] = swapped[5], swapped[3]  # labels that would mean other classes
    np.savez(lab, y_train=raw["y_train"], y_test=raw["y_test"], class_names=np.array(swapped))
    with pytest.raises(ValueError, match=r"\['class_names'\]: class 3 is named 'dog', expected 'cat'"):
        load_cifar10(root)
    # a pickled (object) array is refused, never unpickled
    np.savez(lab, y_train=np.array([1, None], dtype=object), y_test=raw["y_test"])
    with pytest.raises(ValueError, match=r"cifar10_labels_filenames\.npz: cannot read"):
        load_cifar10(root)
    np.savez(lab, y_train=raw["y_train"], y_test=raw["y_test"])
    lab.write_bytes(lab.read_bytes()[:100])  # truncated zip
    with pytest.raises(ValueError, match=r"cifar10_labels_filenames\.npz: cannot read"):
        load_cifar10(root)


# --------------------------------------------------------------------------------------------
# the official binary versions
# --------------------------------------------------------------------------------------------


def test_cifar10_binary_version_is_transposed_to_hwc(tmp_path):
    raw = write_fake_cifar10_bin(tmp_path / "cifar-10-batches-bin")
    ds = load_cifar10(tmp_path)
    assert ds.X_train.shape == (15, 32, 32, 3) and ds.X_test.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(ds.X_train, raw["x_train"] / np.float32(255))  # batch order kept
    np.testing.assert_array_equal(ds.y_train, raw["y_train"])
    np.testing.assert_array_equal(ds.y_test, raw["y_test"])
    # a red pixel stays red: the first plane is the red channel
    img = np.zeros((1, 32, 32, 3), np.uint8)
    img[0, 2, 5] = (255, 0, 0)
    (tmp_path / "cifar-10-batches-bin" / "test_batch.bin").write_bytes(cifar_records(img, [4]))
    red = load_cifar10(tmp_path, classes=("deer",))
    assert red.X_test.shape == (1, 32, 32, 3) and red.X_test[0, 2, 5].tolist() == [1.0, 0.0, 0.0]
    assert red.X_test.sum() == 1.0 and red.meta["class_names"] == ("deer",)


def test_cifar10_binary_truncated_or_bad_label(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    write_fake_cifar10_bin(folder)
    path = folder / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"data_batch_3\.bin: \d+ bytes is not a positive multiple of the 3073-byte"):
        load_cifar10(tmp_path)
    write_fake_cifar10_bin(folder)
    (folder / "test_batch.bin").write_bytes(cifar_records(np.zeros((1, 32, 32, 3), np.uint8), [12]))
    with pytest.raises(ValueError, match=r"test_batch\.bin: labels must be in 0..9"):
        load_cifar10(tmp_path)


def test_cifar100_binary_fine_and_coarse(tmp_path):
    folder = tmp_path / "cifar-100-binary"
    raw = write_fake_cifar100_bin(folder)
    fine = load_cifar100(tmp_path)
    assert fine.name == "cifar100" and fine.meta["label_mode"] == "fine"
    assert fine.X_train.shape == (12, 32, 32, 3) and fine.meta["class_names"] == CIFAR100_FINE_CLASSES
    np.testing.assert_array_equal(fine.y_train, raw["fine_train"])
    np.testing.assert_array_equal(fine.meta["coarse_test"], raw["coarse_test"])
    np.testing.assert_array_equal(fine.X_test, raw["x_test"] / np.float32(255))
    coarse = load_cifar100(tmp_path, label_mode="coarse", flatten=True)
    assert coarse.meta["class_names"] == CIFAR100_COARSE_CLASSES and coarse.X_train.shape == (12, 3072)
    np.testing.assert_array_equal(coarse.y_train, raw["coarse_train"])
    np.testing.assert_array_equal(coarse.meta["fine_train"], raw["fine_train"])
    sub = load_cifar100(tmp_path, classes=("bear", "apple"))  # fine classes 3 and 0
    keep = np.isin(raw["fine_train"], (3, 0))
    np.testing.assert_array_equal(sub.y_train, np.where(raw["fine_train"][keep] == 3, 0, 1))
    np.testing.assert_array_equal(sub.meta["coarse_train"], raw["coarse_train"][keep])
    (folder / "coarse_label_names.txt").write_text("\n".join(CIFAR100_COARSE_CLASSES) + "\n\n")  # official: agrees
    assert load_cifar100(tmp_path, label_mode="coarse").meta["class_names"][19] == "vehicles_2"
    (folder / "fine_label_names.txt").write_text("only\ntwo\n")
    with pytest.raises(ValueError, match=r"fine_label_names\.txt: expected 100 class names, found 2"):
        load_cifar100(tmp_path)
    (folder / "fine_label_names.txt").unlink()
    (folder / "test.bin").write_bytes(cifar_records(np.zeros((1, 32, 32, 3), np.uint8), [3], [100]))
    with pytest.raises(ValueError, match=r"test\.bin \(fine labels\): labels must be in 0..99"):
        load_cifar100(tmp_path)
    (folder / "test.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"test\.bin: 0 bytes is not a positive multiple of the 3074-byte"):
        load_cifar100(tmp_path)


# --------------------------------------------------------------------------------------------
# tensorflow-datasets fallback (faked: nothing is downloaded in the tests)
# --------------------------------------------------------------------------------------------


def test_allow_download_without_tfds(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
    for load in (load_cifar10, load_cifar100):
        with pytest.raises(FileNotFoundError, match="tensorflow_datasets is not installed"):
            load(tmp_path, allow_download=True)
        with pytest.raises(FileNotFoundError, match="allow_download=True"):
            load(tmp_path)


def test_allow_download_uses_tfds_only_when_asked(tmp_path, monkeypatch):
    calls = []
    rng = np.random.default_rng(0)

    def fake_load(name, split, batch_size):
        calls.append(name)
        assert split == ["train", "test"] and batch_size == -1
        parts = []
        for n in (6, 4):
            part = {"image": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), "label": np.arange(n) % 3}
            if name == "cifar100":
                part["coarse_label"] = np.arange(n) % 2
            parts.append(part)
        return parts

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", types.SimpleNamespace(load=fake_load, as_numpy=lambda x: x))
    with pytest.raises(FileNotFoundError):
        load_cifar10(tmp_path)  # allow_download defaults to False
    assert calls == []
    ds = load_cifar10(tmp_path, allow_download=True)
    assert calls == ["cifar10"] and ds.meta["source"] == "tensorflow_datasets"
    assert ds.X_train.shape == (6, 32, 32, 3) and ds.y_test.tolist() == [0, 1, 2, 0]
    c100 = load_cifar100(tmp_path, allow_download=True, label_mode="coarse")
    assert calls[-1] == "cifar100" and c100.y_train.tolist() == [0, 1, 0, 1, 0, 1]
    assert c100.meta["fine_train"].tolist() == [0, 1, 2, 0, 1, 2]
    write_fake_cifar10(tmp_path / "cifar10", n_train=10, n_test=10)
    assert load_cifar10(tmp_path, allow_download=True).meta["source"] != "tensorflow_datasets"


# --------------------------------------------------------------------------------------------
# the real files (the shared data folder)
# --------------------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_cifar10_real(shared_data_dir):
    if not os.path.isdir(os.path.join(shared_data_dir, "cifar10")):
        pytest.skip("no cifar10/ in the shared data folder")
    ds = load_cifar10(shared_data_dir)  # about 10 s: decompressing 150 MB of xz
    assert ds.X_train.shape == (50000, 32, 32, 3) and ds.X_test.shape == (10000, 32, 32, 3)
    assert ds.X_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert np.bincount(ds.y_train).tolist() == [5000] * 10 and np.bincount(ds.y_test).tolist() == [1000] * 10
    assert ds.meta["class_names"] == CIFAR10_CLASSES
    # the well-known per-channel statistics: the channels are RGB in the last axis
    pixels = ds.X_train.reshape(-1, 3)
    np.testing.assert_allclose(pixels.mean(axis=0, dtype=np.float64), [0.4914, 0.4822, 0.4465], atol=5e-4)
    np.testing.assert_allclose(pixels[::7].std(axis=0, dtype=np.float64), [0.2470, 0.2435, 0.2616], atol=2e-3)
    np.testing.assert_allclose(ds.X_test.reshape(-1, 3).mean(axis=0, dtype=np.float64), [0.4942, 0.4851, 0.4504],
                               atol=5e-4)
    assert ds.X_test.min() == 0.0 and ds.X_test.max() == 1.0
    assert str(ds.meta["filenames_train"][0]).endswith(".png") and len(ds.meta["filenames_test"]) == 10000
