"""Tiny synthetic files in the formats the loaders read (IDX, CIFAR .npy.xz + .npz, CIFAR binary)."""

import gzip
import io
import lzma

import numpy as np

MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def idx_bytes(arr, magic):
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()


def write_fake_mnist(folder, n_train=6, n_test=4, seed=0):
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
            fh.write(idx_bytes(arr, magic))
    return {k: v[0] for k, v in arrays.items()}


def npy_xz_bytes(arr):
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return lzma.compress(buf.getvalue())


def write_fake_cifar10(folder, n_train=30, n_test=20, seed=0):
    """``cifar10_x_{train,test}.npy.xz`` + ``cifar10_labels_filenames.npz``, every class present."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    raw = {
        "x_train": rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
        "y_train": (np.arange(n_train) % 10).astype(np.uint8),
        "y_test": (np.arange(n_test)[::-1] % 10).astype(np.uint8),
    }
    (folder / "cifar10_x_train.npy.xz").write_bytes(npy_xz_bytes(raw["x_train"]))
    (folder / "cifar10_x_test.npy.xz").write_bytes(npy_xz_bytes(raw["x_test"]))
    np.savez(
        folder / "cifar10_labels_filenames.npz",
        y_train=raw["y_train"], y_test=raw["y_test"],
        filenames_train=np.array([f"train_{i}.png" for i in range(n_train)]),
        filenames_test=np.array([f"test_{i}.png" for i in range(n_test)]),
        class_names=np.array(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                              "ship", "truck"]),
    )
    return raw


def cifar_records(images_hwc, *label_columns):
    """Official binary records: label byte(s), then the R, G, B planes (CHW)."""
    n = len(images_hwc)
    labels = np.stack([np.asarray(c, np.uint8) for c in label_columns], axis=1)
    planes = np.ascontiguousarray(images_hwc.transpose(0, 3, 1, 2)).reshape(n, -1)
    return np.concatenate([labels, planes], axis=1).astype(np.uint8).tobytes()


def write_fake_cifar10_bin(folder, per_batch=3, n_test=4, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    x_tr = rng.integers(0, 256, (5 * per_batch, 32, 32, 3), dtype=np.uint8)
    y_tr = np.arange(5 * per_batch) % 10
    for b in range(5):
        rows = slice(b * per_batch, (b + 1) * per_batch)
        (folder / f"data_batch_{b + 1}.bin").write_bytes(cifar_records(x_tr[rows], y_tr[rows]))
    x_te = rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8)
    y_te = np.arange(n_test) % 10
    (folder / "test_batch.bin").write_bytes(cifar_records(x_te, y_te))
    return {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}


def write_fake_cifar100_bin(folder, n_train=12, n_test=6, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    raw = {}
    for part, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        fine = (np.arange(n) * 7) % 100
        coarse = fine % 20
        (folder / f"{part}.bin").write_bytes(cifar_records(x, coarse, fine))
        raw.update({f"x_{part}": x, f"fine_{part}": fine, f"coarse_{part}": coarse})
    return raw
