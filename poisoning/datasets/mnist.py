"""MNIST and Fashion-MNIST from the original IDX gzip files (:mod:`poisoning.datasets.idx`).

Both have their official splits: 60000 train / 10000 test, 10 classes (``int64`` labels
``0..9``), pixels / 255 as ``float32`` in ``[0, 1]``, ``(n, 784)`` (row-major) or ``(n, 28, 28)``
with ``flatten=False``.

Files: ``<data_dir>/mnist/`` and ``<data_dir>/fashion-mnist/`` (``fashion_mnist/`` also works) hold
``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``; the files may also sit directly in
``data_dir``, and uncompressed copies without ``.gz`` are accepted. When they are not there, the
loaders fall back to ``tensorflow_datasets`` only if it is importable *and* ``allow_download=True``;
otherwise a :class:`FileNotFoundError` names the expected files and how to point at them.

References: Y. LeCun, C. Cortes, C. J. C. Burges, "The MNIST database of handwritten digits";
H. Xiao, K. Rasul, R. Vollgraf, "Fashion-MNIST", arXiv:1708.07747, 2017.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from poisoning.datasets.base import Dataset, _find_files, _not_found, _tfds_importable, resolve_data_dir
from poisoning.datasets.idx import read_idx

__all__ = ["FASHION_MNIST_CLASSES", "load_fashion_mnist", "load_mnist"]

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def _images_to_float(images: np.ndarray, flatten: bool, scale: float) -> np.ndarray:
    X = np.divide(images, np.float32(scale), dtype=np.float32)
    return X.reshape(len(X), -1) if flatten else X


def _load_idx_pair(paths: dict[str, Path]):
    out = []
    for img_name, lab_name in (_MNIST_FILES[:2], _MNIST_FILES[2:]):
        images = read_idx(paths[img_name], expected_magic=2051)
        labels = read_idx(paths[lab_name], expected_magic=2049)
        if images.shape[1:] != (28, 28):
            raise ValueError(f"{paths[img_name]}: expected 28x28 images, header says {images.shape[1:]}")
        if len(images) != len(labels):
            raise ValueError(
                f"{paths[img_name]} holds {len(images)} images but {paths[lab_name]} holds "
                f"{len(labels)} labels"
            )
        if labels.size and labels.max() > 9:
            raise ValueError(f"{paths[lab_name]}: labels must be 0..9, found {int(labels.max())}")
        out.append((images, labels))
    return out


def _load_tfds(tfds_name: str):
    import tensorflow_datasets as tfds  # optional; only reached with allow_download=True

    parts = tfds.as_numpy(tfds.load(tfds_name, split=["train", "test"], batch_size=-1, as_supervised=True))
    out = []
    for images, labels in parts:
        images = np.asarray(images, dtype=np.uint8)
        out.append((images.reshape(len(images), 28, 28), np.asarray(labels)))
    return out


def _load_mnist_like(name, subdirs, tfds_name, what, data_dir, flatten, allow_download, class_names):
    base = resolve_data_dir(data_dir)
    paths = _find_files(base, subdirs, _MNIST_FILES, direct=True, allow_plain=True)
    if paths is not None:
        parts = _load_idx_pair(paths)
        source = str(paths[_MNIST_FILES[0]].parent)
    elif allow_download and _tfds_importable():
        parts = _load_tfds(tfds_name)
        source = "tensorflow_datasets"
    else:
        if allow_download:
            extra = " (allow_download=True was given but tensorflow_datasets is not installed.)"
        else:
            extra = " Alternatively install tensorflow_datasets and pass allow_download=True."
        raise _not_found(what, _MNIST_FILES, subdirs, data_dir, extra)
    (img_tr, lab_tr), (img_te, lab_te) = parts
    return Dataset(
        X_train=_images_to_float(img_tr, flatten, 255.0),
        y_train=lab_tr.astype(np.int64),
        X_test=_images_to_float(img_te, flatten, 255.0),
        y_test=lab_te.astype(np.int64),
        name=name,
        meta={
            "task": "classification",
            "source": source,
            "classes": tuple(range(10)),
            "class_names": class_names,
            "image_shape": (28, 28),
            "flatten": flatten,
        },
    )


def load_mnist(data_dir=None, *, flatten: bool = True, allow_download: bool = False) -> Dataset:
    """MNIST: 60000 train / 10000 test, pixels / 255 as float32, ``(n, 784)`` or ``(n, 28, 28)``."""
    return _load_mnist_like("mnist", ("mnist",), "mnist", "MNIST", data_dir, flatten,
                            allow_download, tuple(str(i) for i in range(10)))


def load_fashion_mnist(data_dir=None, *, flatten: bool = True, allow_download: bool = False) -> Dataset:
    """Fashion-MNIST, same layout as :func:`load_mnist`; files under ``<data_dir>/fashion-mnist/``."""
    return _load_mnist_like("fashion_mnist", ("fashion-mnist", "fashion_mnist"), "fashion_mnist",
                            "Fashion-MNIST", data_dir, flatten, allow_download, FASHION_MNIST_CLASSES)
