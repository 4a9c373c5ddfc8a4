"""Dataset loaders and the split protocols of the data-poisoning papers.

Everything here returns plain numpy arrays; convert with ``jnp.asarray`` where needed.
Nothing is downloaded unless asked for (see ``allow_download``), nothing is unpickled, and no
path outside the arguments / ``BILEVEL_DATA_DIR`` is assumed.

Layout
------
Every loader returns a frozen :class:`Dataset`::

    Dataset(X_train, y_train, X_test, y_test, name, meta)

* ``X_*``: ``float32`` features, shape ``(n, d)`` (images flattened row-major by default;
  pass ``flatten=False`` to image loaders to get ``(n, h, w)``). Features are in ``[0, 1]``:

  ========================  ==============================================================
  mnist, fashion_mnist      pixels / 255, 28x28 -> 784
  digits                    pixels / 16, 8x8 -> 64
  breast_cancer, spambase   min-max scaled with *training* statistics (``scale=False``
                            keeps raw values for spambase); test features clipped to
                            [0, 1] unless ``clip=False``
  diabetes                  features and target min-max scaled with training statistics
                            (like Jagielski et al. 2018), test clipped unless ``clip=False``
  adult                     numerics min-max scaled (training statistics), categoricals
                            one-hot; see below
  house_prices, warfarin    already in [0, 1] in the published files (kept as is)
  ========================  ==============================================================

* ``y_*``: classification -> ``int64`` class indices (``0..K-1``; spambase 1 = spam, adult 1 =
  ``>50K``); regression (diabetes, house_prices, warfarin) -> ``float32`` targets in [0, 1].
* ``name``: the canonical dataset name (one of :data:`DATASETS`).
* ``meta``: a dict with at least ``task`` (``"classification"`` / ``"regression"``),
  ``source`` (a file path, ``"sklearn"`` or ``"tensorflow_datasets"``) and, where known,
  ``classes``, ``class_names``, ``feature_names``, ``image_shape``, the scaler statistics
  (``feature_min``/``feature_max``, ``target_min``/``target_max``) and the split seed.
  Adult also records the sensitive attribute for fairness poisoning: ``sensitive_attribute``
  (``"sex"``), ``sex_columns`` (``{"Female": j, "Male": k}`` one-hot column indices in ``X``, or
  ``None`` when ``drop_sensitive=True``), ``sex_train`` / ``sex_test`` (``int64``, 1 = Male,
  0 = Female) and ``attribute_columns`` (attribute -> ``(start, stop)`` column range).

Datasets without an official test split (digits, breast_cancer, diabetes, spambase,
house_prices, warfarin) are split by the loader with ``test_fraction`` (default 0.25) and
``seed`` (default 0), stratified for classification; ``test_fraction=0`` puts every example in
``X_train`` (then ``X_test`` has 0 rows). MNIST, Fashion-MNIST and Adult keep their official
splits.

Where the files are
-------------------
File-based loaders take ``data_dir=None``. The folder is ``data_dir`` if given, else the
environment variable ``BILEVEL_DATA_DIR``. Inside it:

* ``mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` (the original IDX gzip files; the
  files may also sit directly in the folder, and uncompressed copies without ``.gz`` are accepted)
* ``fashion-mnist/`` the same four file names
* ``spambase/spambase.data``
* ``adult/adult.data`` and ``adult/adult.test``
* ``house-prices/house-processed.csv`` and ``warfarin/pharm-preproc.csv``

When the files are not there, MNIST / Fashion-MNIST fall back to ``tensorflow_datasets`` only if
it is importable *and* ``allow_download=True``; otherwise a :class:`FileNotFoundError` names the
expected files and how to point at them. digits, breast_cancer and diabetes come from the files
scikit-learn ships (no download); their ``data_dir`` argument is accepted and ignored.

Protocols
---------
* :func:`binary_pair` -- keep two classes and relabel them ``pos -> labels[0]`` (default +1),
  ``neg -> labels[1]`` (default -1), as in Biggio et al. 2012 (MNIST 7 vs 1: 7 -> +1, 1 -> -1).
* :func:`split` / :func:`split_indices` -- disjoint seeded random draws of given sizes
  (``None`` = the rest), optionally stratified.
* :func:`biggio_protocol` -- Biggio, Nelson & Laskov 2012: TR (100) and VAL (500) drawn from the
  training portion of the two classes, TS = every test example of the two classes.
* :func:`munoz_protocol` -- Munoz-Gonzalez et al. 2017: random disjoint TR / VAL / TS draws
  (default 1000 / 1000 / 8000, all classes).

Both protocols return a frozen :class:`ProtocolSplit` with ``X_train, y_train, X_val, y_val,
X_test, y_test, name, meta``; ``meta["indices"]`` maps each part to row indices in its source
(see the functions).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import gzip
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "Dataset",
    "ProtocolSplit",
    "binary_pair",
    "biggio_protocol",
    "load_adult",
    "load_breast_cancer",
    "load_dataset",
    "load_diabetes",
    "load_digits",
    "load_fashion_mnist",
    "load_house_prices",
    "load_mnist",
    "load_spambase",
    "load_warfarin",
    "munoz_protocol",
    "parse_idx",
    "read_idx",
    "resolve_data_dir",
    "split",
    "split_indices",
]

DATA_DIR_ENV = "BILEVEL_DATA_DIR"

DATASETS = (
    "mnist",
    "fashion_mnist",
    "digits",
    "breast_cancer",
    "diabetes",
    "spambase",
    "adult",
    "house_prices",
    "warfarin",
)

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


# --------------------------------------------------------------------------------------------
# containers
# --------------------------------------------------------------------------------------------


def _summary(arr) -> str:
    return f"{arr.dtype}{list(arr.shape)}"


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test dataset. See the module docstring for the layout of each field."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    name: str
    meta: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for part in ("train", "test"):
            X, y = getattr(self, f"X_{part}"), getattr(self, f"y_{part}")
            if len(X) != len(y):
                raise ValueError(f"X_{part} has {len(X)} rows but y_{part} has {len(y)}")

    @property
    def task(self) -> str:
        return self.meta.get("task", "classification")

    @property
    def n_train(self) -> int:
        return len(self.y_train)

    @property
    def n_test(self) -> int:
        return len(self.y_test)

    @property
    def n_features(self) -> int:
        return int(np.prod(self.X_train.shape[1:]))

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, X_train={_summary(self.X_train)}, "
            f"y_train={_summary(self.y_train)}, X_test={_summary(self.X_test)}, "
            f"y_test={_summary(self.y_test)}, task={self.task!r})"
        )


@dataclasses.dataclass(frozen=True, eq=False)
class ProtocolSplit:
    """Train / validation / test arrays drawn by a paper's protocol (see ``meta``)."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    name: str
    meta: dict = dataclasses.field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"ProtocolSplit(name={self.name!r}, X_train={_summary(self.X_train)}, "
            f"X_val={_summary(self.X_val)}, X_test={_summary(self.X_test)})"
        )


# --------------------------------------------------------------------------------------------
# locating files
# --------------------------------------------------------------------------------------------


def resolve_data_dir(data_dir=None) -> Path | None:
    """The data folder: ``data_dir`` if given, else ``$BILEVEL_DATA_DIR``, else ``None``."""
    if data_dir is not None:
        return Path(os.path.expanduser(os.fspath(data_dir)))
    env = os.environ.get(DATA_DIR_ENV, "")
    if env.strip():
        return Path(os.path.expanduser(env))
    return None


def _where(data_dir) -> str:
    if data_dir is not None:
        return f"data_dir={os.fspath(data_dir)!r}"
    env = os.environ.get(DATA_DIR_ENV, "")
    if env.strip():
        return f"{DATA_DIR_ENV}={env!r}"
    return f"no data_dir given and {DATA_DIR_ENV} unset"


def _not_found(what: str, files: Sequence[str], subdirs: Sequence[str], data_dir, extra="") -> FileNotFoundError:
    sub = subdirs[0]
    return FileNotFoundError(
        f"{what}: could not find {', '.join(files)} ({_where(data_dir)}). Expected them under "
        f"'<data_dir>/{sub}/'. Pass data_dir=<folder holding '{sub}/'> or set the "
        f"{DATA_DIR_ENV} environment variable to that folder.{extra}"
    )


def _find_files(base: Path | None, subdirs: Sequence[str], files: Sequence[str],
                *, direct: bool = False, allow_plain: bool = False) -> dict[str, Path] | None:
    """First folder among ``base/<subdir>`` (and ``base`` if ``direct``) holding every file."""
    if base is None:
        return None
    candidates = [base / s for s in subdirs] + ([base] if direct else [])
    for folder in candidates:
        found = {}
        for f in files:
            options = [folder / f]
            if allow_plain and f.endswith(".gz"):
                options.append(folder / f[:-3])
            hit = next((p for p in options if p.is_file()), None)
            if hit is None:
                break
            found[f] = hit
        else:
            return found
    return None


# --------------------------------------------------------------------------------------------
# IDX (MNIST) parsing
# --------------------------------------------------------------------------------------------

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def parse_idx(buf: bytes, *, expected_magic: int | None = None, source: str = "<bytes>") -> np.ndarray:
    """Parse an (uncompressed) IDX buffer into an array of its declared dtype and dims.

    The header is a big-endian 32-bit magic ``0x0000TTNN`` (``TT`` type code, ``NN`` number of
    dims) followed by ``NN`` big-endian 32-bit sizes. MNIST images have magic 2051 (ubyte, 3 dims)
    and labels 2049 (ubyte, 1 dim). Raises ``ValueError`` on a bad magic, an unknown type, or a
    payload whose length does not match the dims.
    """
    if len(buf) < 4:
        raise ValueError(f"{source}: IDX file too short ({len(buf)} bytes) to hold a header")
    magic = int.from_bytes(buf[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(f"{source}: bad IDX magic number {magic} (expected {expected_magic})")
    if buf[0] != 0 or buf[1] != 0 or buf[2] not in _IDX_DTYPES or buf[3] == 0:
        raise ValueError(f"{source}: bad IDX magic number {magic} (0x{magic:08x})")
    dtype, ndim = _IDX_DTYPES[buf[2]], buf[3]
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise ValueError(f"{source}: IDX header truncated ({len(buf)} bytes, need {header})")
    dims = tuple(int(d) for d in np.frombuffer(buf, ">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(buf) - header != expected:
        raise ValueError(
            f"{source}: IDX size mismatch: header says dims {dims} ({expected} bytes of data) "
            f"but the file holds {len(buf) - header} bytes after the header"
        )
    arr = np.frombuffer(buf, dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=False) if dtype.itemsize > 1 else arr


def read_idx(path, *, expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (gzip-compressed if the name ends in ``.gz``); see :func:`parse_idx`."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                buf = fh.read()
        else:
            buf = path.read_bytes()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(f"{path}: cannot decompress/read IDX file: {exc}") from exc
    return parse_idx(buf, expected_magic=expected_magic, source=str(path))


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


def _tfds_importable() -> bool:
    try:
        import tensorflow_datasets  # noqa: F401
    except ImportError:
        return False
    return True


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


# --------------------------------------------------------------------------------------------
# scaling and train/test splitting helpers
# --------------------------------------------------------------------------------------------


def _minmax_fit(X):
    lo = X.min(axis=0) if len(X) else np.zeros(X.shape[1:])
    hi = X.max(axis=0) if len(X) else np.ones(X.shape[1:])
    return lo.astype(np.float64), hi.astype(np.float64)


def _minmax_apply(X, lo, hi, clip):
    span = np.where(hi > lo, hi - lo, 1.0)
    Z = (np.asarray(X, np.float64) - lo) / span
    if clip:
        Z = np.clip(Z, 0.0, 1.0)
    return Z.astype(np.float32)


def _train_test(X, y, test_fraction, seed, stratify):
    if not 0.0 <= float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    n_test = int(round(float(test_fraction) * len(y)))
    te, tr = split_indices(len(y), (n_test, None), seed, y=y if stratify else None, stratify=stratify)
    return np.sort(tr), np.sort(te)


def _tabular(name, X, y, *, task, test_fraction, seed, scale, clip, scale_target=False, meta=None):
    """Split (stratified for classification), then min-max scale with training statistics."""
    tr, te = _train_test(X, y, test_fraction, seed, stratify=(task == "classification"))
    X_tr, X_te, y_tr, y_te = X[tr], X[te], y[tr], y[te]
    meta = dict(meta or {})
    meta.update(task=task, test_fraction=float(test_fraction), seed=seed,
                train_index=tr, test_index=te)
    if scale:
        lo, hi = _minmax_fit(X_tr)
        X_tr, X_te = _minmax_apply(X_tr, lo, hi, False), _minmax_apply(X_te, lo, hi, clip)
        meta.update(feature_min=lo, feature_max=hi)
    else:
        X_tr, X_te = X_tr.astype(np.float32), X_te.astype(np.float32)
    if task == "classification":
        y_tr, y_te = y_tr.astype(np.int64), y_te.astype(np.int64)
        meta.setdefault("classes", tuple(int(c) for c in np.unique(y)))
    elif scale_target:
        lo, hi = float(y_tr.min()), float(y_tr.max())
        span = hi - lo if hi > lo else 1.0
        y_tr = ((y_tr - lo) / span).astype(np.float32)
        y_te = (y_te - lo) / span
        y_te = (np.clip(y_te, 0.0, 1.0) if clip else y_te).astype(np.float32)
        meta.update(target_min=lo, target_max=hi)
    else:
        y_tr, y_te = y_tr.astype(np.float32), y_te.astype(np.float32)
    return Dataset(X_tr, y_tr, X_te, y_te, name, meta)


# --------------------------------------------------------------------------------------------
# scikit-learn's shipped datasets (no download)
# --------------------------------------------------------------------------------------------


def _sklearn_datasets():
    try:
        from sklearn import datasets
    except ImportError as exc:  # pragma: no cover - sklearn is a test dependency
        raise ImportError("digits/breast_cancer/diabetes need scikit-learn (pip install scikit-learn)") from exc
    return datasets


def load_digits(data_dir=None, *, flatten: bool = True, test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits (1797 images, 10 classes): pixels / 16 in [0, 1].

    ``data_dir`` is ignored (the data ships with scikit-learn). Stratified train/test split.
    """
    d = _sklearn_datasets().load_digits()
    X = d.data.astype(np.float32) / np.float32(16.0)
    ds = _tabular("digits", X, d.target, task="classification", test_fraction=test_fraction,
                  seed=seed, scale=False, clip=False,
                  meta={"source": "sklearn", "image_shape": (8, 8), "flatten": flatten,
                        "class_names": tuple(str(i) for i in range(10))})
    if not flatten:
        ds = dataclasses.replace(ds, X_train=ds.X_train.reshape(-1, 8, 8), X_test=ds.X_test.reshape(-1, 8, 8))
    return ds


def load_breast_cancer(data_dir=None, *, test_fraction: float = 0.25, seed: int = 0, clip: bool = True) -> Dataset:
    """Wisconsin breast cancer (569 x 30; 0 = malignant, 1 = benign), min-max scaled with training statistics."""
    d = _sklearn_datasets().load_breast_cancer()
    return _tabular("breast_cancer", d.data, d.target, task="classification", test_fraction=test_fraction,
                    seed=seed, scale=True, clip=clip,
                    meta={"source": "sklearn", "feature_names": tuple(d.feature_names),
                          "class_names": tuple(d.target_names)})


def load_diabetes(data_dir=None, *, test_fraction: float = 0.25, seed: int = 0, clip: bool = True) -> Dataset:
    """Diabetes regression (442 x 10): raw features and target min-max scaled to [0, 1] with
    training statistics (invert the target with ``meta["target_min"/"target_max"]``)."""
    d = _sklearn_datasets().load_diabetes(scaled=False)
    return _tabular("diabetes", d.data, d.target, task="regression", test_fraction=test_fraction,
                    seed=seed, scale=True, clip=clip, scale_target=True,
                    meta={"source": "sklearn", "feature_names": tuple(d.feature_names)})


# --------------------------------------------------------------------------------------------
# file-based tabular sets
# --------------------------------------------------------------------------------------------


def _require(name, subdir, files, data_dir) -> dict[str, Path]:
    base = resolve_data_dir(data_dir)
    paths = _find_files(base, (subdir,), files)
    if paths is None:
        raise _not_found(name, files, (subdir,), data_dir)
    return paths


def load_spambase(data_dir=None, *, test_fraction: float = 0.25, seed: int = 0,
                  scale: bool = True, clip: bool = True) -> Dataset:
    """UCI Spambase (4601 x 57, 1 = spam) from ``<data_dir>/spambase/spambase.data``.

    Stratified train/test split, then min-max scaling with training statistics (``scale=False``
    keeps the raw frequencies / run lengths).
    """
    path = _require("Spambase", "spambase", ("spambase.data",), data_dir)["spambase.data"]
    a = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    if a.shape[1] != 58:
        raise ValueError(f"{path}: expected 58 comma-separated columns, found {a.shape[1]}")
    y = a[:, 57]
    if not np.all((y == 0) | (y == 1)):
        raise ValueError(f"{path}: the last column must be a 0/1 label")
    meta = {"source": str(path), "class_names": ("non-spam", "spam")}
    names_file = path.parent / "spambase.names"
    if names_file.is_file():
        names = re.findall(r"^([A-Za-z_]\S*):\s*continuous\.", names_file.read_text(errors="replace"), re.M)
        if len(names) == 57:
            meta["feature_names"] = tuple(names)
    return _tabular("spambase", a[:, :57], y.astype(np.int64), task="classification",
                    test_fraction=test_fraction, seed=seed, scale=scale, clip=clip, meta=meta)


def _load_preprocessed_csv(name, what, subdir, filename, data_dir, test_fraction, seed):
    path = _require(what, subdir, (filename,), data_dir)[filename]
    with open(path, newline="") as fh:
        header = next(csv.reader(fh))
    a = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    if a.shape[1] != len(header):
        raise ValueError(f"{path}: header has {len(header)} columns but rows have {a.shape[1]}")
    return _tabular(name, a[:, 1:], a[:, 0], task="regression", test_fraction=test_fraction, seed=seed,
                    scale=False, clip=False,
                    meta={"source": str(path), "target_name": header[0], "feature_names": tuple(header[1:])})


def load_house_prices(data_dir=None, *, test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """Ames house prices as preprocessed by Jagielski et al. 2018 (1460 x 274, target SalePrice),
    from ``<data_dir>/house-prices/house-processed.csv``; values already in [0, 1]."""
    return _load_preprocessed_csv("house_prices", "House prices", "house-prices", "house-processed.csv",
                                  data_dir, test_fraction, seed)


def load_warfarin(data_dir=None, *, test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """IWPC warfarin dose as preprocessed by Jagielski et al. 2018 (4683 x 204, target
    TherapeuticDoseofWarfarin), from ``<data_dir>/warfarin/pharm-preproc.csv``; already in [0, 1]."""
    return _load_preprocessed_csv("warfarin", "Warfarin", "warfarin", "pharm-preproc.csv",
                                  data_dir, test_fraction, seed)


ADULT_COLUMNS = (
    "age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
    "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country",
)
ADULT_NUMERIC = ("age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week")


@functools.lru_cache(maxsize=4)
def _read_adult_cached(path: str, mtime_ns: int, size: int):
    rows, labels = [], []
    with open(path, newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh, skipinitialspace=True), start=1):
            if not row or (len(row) == 1 and not row[0].strip()) or row[0].startswith("|"):
                continue
            row = [f.strip() for f in row]
            if len(row) != 15:
                raise ValueError(f"{path}:{lineno}: expected 15 fields, found {len(row)}")
            lab = row[14].rstrip(".")
            if lab not in (">50K", "<=50K"):
                raise ValueError(f"{path}:{lineno}: unknown income label {row[14]!r}")
            rows.append(row[:14])
            labels.append(1 if lab == ">50K" else 0)
    A, y = np.array(rows, dtype=str).reshape(-1, 14), np.array(labels, dtype=np.int64)
    A.flags.writeable = False
    y.flags.writeable = False
    return A, y


def _read_adult(path: Path):
    """Parsed (attributes as str, labels) of an Adult file; cached on (path, mtime, size)."""
    st = os.stat(path)
    A, y = _read_adult_cached(str(path), st.st_mtime_ns, st.st_size)
    return A, y.copy()


def load_adult(data_dir=None, *, missing: str = "category", drop: Sequence[str] = (),
               drop_sensitive: bool = False, clip: bool = True) -> Dataset:
    """UCI Adult (32561 train / 16281 test; 1 = income >50K) from ``<data_dir>/adult/``.

    Columns keep the original attribute order: numeric attributes become one column min-max
    scaled with training statistics (test clipped to [0, 1] unless ``clip=False``), categorical
    attributes become one-hot columns over the categories seen in training (sorted; unseen test
    categories encode as all zeros). Missing values ``?``: ``missing="category"`` (default) makes
    ``?`` its own category, ``"zero"`` encodes it as all zeros, ``"drop"`` drops those rows.
    ``drop`` removes attributes by name; ``drop_sensitive=True`` removes ``sex`` from ``X`` (it
    stays available in ``meta["sex_train"/"sex_test"]``).
    """
    if missing not in ("category", "zero", "drop"):
        raise ValueError(f"missing must be 'category', 'zero' or 'drop', got {missing!r}")
    unknown = [c for c in drop if c not in ADULT_COLUMNS]
    if unknown:
        raise ValueError(f"drop: unknown Adult attributes {unknown}; valid: {list(ADULT_COLUMNS)}")
    paths = _require("UCI Adult", "adult", ("adult.data", "adult.test"), data_dir)
    A_tr, y_tr = _read_adult(paths["adult.data"])
    A_te, y_te = _read_adult(paths["adult.test"])
    if missing == "drop":
        keep_tr, keep_te = ~(A_tr == "?").any(axis=1), ~(A_te == "?").any(axis=1)
        A_tr, y_tr, A_te, y_te = A_tr[keep_tr], y_tr[keep_tr], A_te[keep_te], y_te[keep_te]

    sex_col = ADULT_COLUMNS.index("sex")
    for A, p in ((A_tr, paths["adult.data"]), (A_te, paths["adult.test"])):
        bad = set(np.unique(A[:, sex_col])) - {"Male", "Female"}
        if bad:
            raise ValueError(f"{p}: unexpected sex values {sorted(bad)}")
    drop_set = set(drop) | ({"sex"} if drop_sensitive else set())

    blocks_tr, blocks_te, names, attr_cols, scaler = [], [], [], {}, {}
    col = 0
    for j, attr in enumerate(ADULT_COLUMNS):
        if attr in drop_set:
            continue
        if attr in ADULT_NUMERIC:
            def num(A, attr=attr, j=j):
                v = A[:, j]
                if (v == "?").any():
                    raise ValueError(f"Adult: missing values in numeric attribute {attr!r}; use missing='drop'")
                return v.astype(np.float64)[:, None]
            v_tr, v_te = num(A_tr), num(A_te)
            lo, hi = _minmax_fit(v_tr)
            blocks_tr.append(_minmax_apply(v_tr, lo, hi, False))
            blocks_te.append(_minmax_apply(v_te, lo, hi, clip))
            scaler[attr] = (float(lo[0]), float(hi[0]))
            names.append(attr)
            width = 1
        else:
            cats = sorted(set(np.unique(A_tr[:, j])) - ({"?"} if missing == "zero" else set()))
            cats_arr = np.array(cats, dtype=str)
            blocks_tr.append((A_tr[:, j][:, None] == cats_arr[None, :]).astype(np.float32))
            blocks_te.append((A_te[:, j][:, None] == cats_arr[None, :]).astype(np.float32))
            names.extend(f"{attr}={c}" for c in cats)
            width = len(cats)
        attr_cols[attr] = (col, col + width)
        col += width

    def concat(blocks, n):
        return np.concatenate(blocks, axis=1) if blocks else np.zeros((n, 0), np.float32)

    X_tr, X_te = concat(blocks_tr, len(y_tr)), concat(blocks_te, len(y_te))
    sex_columns = None
    if "sex" not in drop_set:
        sex_columns = {s: names.index(f"sex={s}") for s in ("Female", "Male") if f"sex={s}" in names}
    meta = {
        "task": "classification",
        "source": str(paths["adult.data"].parent),
        "classes": (0, 1),
        "class_names": ("<=50K", ">50K"),
        "feature_names": tuple(names),
        "attribute_columns": attr_cols,
        "numeric_min_max": scaler,
        "missing": missing,
        "sensitive_attribute": "sex",
        "sex_columns": sex_columns,
        "sex_train": (A_tr[:, sex_col] == "Male").astype(np.int64),
        "sex_test": (A_te[:, sex_col] == "Male").astype(np.int64),
    }
    return Dataset(X_tr, y_tr, X_te, y_te, "adult", meta)


# --------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------

_LOADERS = {
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "digits": load_digits,
    "breast_cancer": load_breast_cancer,
    "diabetes": load_diabetes,
    "spambase": load_spambase,
    "adult": load_adult,
    "house_prices": load_house_prices,
    "warfarin": load_warfarin,
}


def load_dataset(name: str, data_dir=None, **kw) -> Dataset:
    """Load a dataset by name (one of :data:`DATASETS`; ``-`` and case are tolerated, e.g.
    ``"Fashion-MNIST"``). Keyword arguments go to the specific loader."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    key = name.strip().lower().replace("-", "_")
    if key not in _LOADERS:
        raise ValueError(f"unknown dataset name {name!r}; valid names: {', '.join(DATASETS)}")
    return _LOADERS[key](data_dir, **kw)


# --------------------------------------------------------------------------------------------
# protocol helpers
# --------------------------------------------------------------------------------------------


def _rng(seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int or a numpy Generator, got {seed!r}")
    return np.random.default_rng(int(seed))


def _check_size(value, argname: str, allow_none: bool = True):
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{argname} must be a non-negative int{' or None' if allow_none else ''}, got {value!r}")
    if value < 0:
        raise ValueError(f"{argname} must be non-negative, got {value}")
    return int(value)


def _resolve_sizes(sizes, n: int) -> list[int]:
    if isinstance(sizes, (int, np.integer)) or sizes is None:
        raise TypeError(f"sizes must be a sequence of ints / None, got {sizes!r}")
    sizes = [_check_size(s, f"sizes[{i}]") for i, s in enumerate(sizes)]
    if not sizes:
        raise ValueError("sizes must not be empty")
    n_none = sum(s is None for s in sizes)
    if n_none > 1:
        raise ValueError(f"sizes may contain at most one None (the rest), got {sizes}")
    fixed = sum(s for s in sizes if s is not None)
    if fixed > n:
        raise ValueError(f"sizes={sizes} ask for {fixed} examples but only {n} are available")
    return [n - fixed if s is None else s for s in sizes]


def _apportion(total: int, props: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """Integer per-class counts summing to ``total``, proportional to ``props``, at most ``cap``."""
    raw = total * props
    q = np.minimum(np.floor(raw).astype(np.int64), cap)
    short = total - int(q.sum())
    for k in np.argsort(-(raw - np.floor(raw)), kind="stable"):
        if short == 0:
            break
        if q[k] < cap[k]:
            q[k] += 1
            short -= 1
    while short > 0:  # caps bit: take from the classes with the most left
        k = int(np.argmax(cap - q))
        add = min(short, int(cap[k] - q[k]))
        q[k] += add
        short -= add
    return q


def split_indices(n: int, sizes, seed=0, *, y=None, stratify: bool = False) -> tuple[np.ndarray, ...]:
    """Disjoint random index arrays into ``range(n)`` of the given ``sizes`` (``None`` = the rest).

    With ``stratify=True`` (needs ``y``) every part keeps the class proportions of ``y`` as
    closely as integer counts allow. Deterministic for an int ``seed``.
    """
    n = _check_size(n, "n", allow_none=False)
    sizes = _resolve_sizes(sizes, n)
    rng = _rng(seed)
    if not stratify:
        perm = rng.permutation(n)
        bounds = np.cumsum([0] + sizes)
        return tuple(perm[a:b] for a, b in zip(bounds[:-1], bounds[1:]))
    if y is None:
        raise ValueError("stratify=True needs y")
    y = np.asarray(y)
    if len(y) != n:
        raise ValueError(f"y has {len(y)} entries but n={n}")
    _, inv = np.unique(y, return_inverse=True)
    inv = inv.reshape(-1)
    pools = [rng.permutation(np.flatnonzero(inv == k)) for k in range(inv.max() + 1)] if n else []
    counts = np.array([len(p) for p in pools], dtype=np.int64)
    props = counts / max(n, 1)
    taken = np.zeros_like(counts)
    out = []
    for s in sizes:
        q = _apportion(s, props, counts - taken) if len(pools) else np.zeros(0, np.int64)
        idx = [p[t:t + c] for p, t, c in zip(pools, taken, q)]
        taken += q
        out.append(rng.permutation(np.concatenate(idx)) if idx else np.zeros(0, np.int64))
    return tuple(out)


def split(X, y, sizes, seed=0, *, stratify: bool = False):
    """Disjoint random draws of ``(X, y)`` of the given ``sizes`` (``None`` = the rest).

    Returns one ``(X_part, y_part)`` pair per size, e.g.::

        (X_tr, y_tr), (X_val, y_val), (X_ts, y_ts) = split(X, y, (100, 500, None), seed=0)

    Raises ``ValueError`` naming ``sizes`` when they ask for more examples than there are.
    """
    X, y = np.asarray(X), np.asarray(y)
    if len(X) != len(y):
        raise ValueError(f"X has {len(X)} rows but y has {len(y)}")
    parts = split_indices(len(y), sizes, seed, y=y, stratify=stratify)
    return tuple((X[i], y[i]) for i in parts)


def _check_labels(labels):
    if len(labels) != 2 or labels[0] == labels[1]:
        raise ValueError(f"labels must be two distinct values (pos_label, neg_label), got {labels!r}")


def _pair_index(y, pos, neg, labels):
    """Validated (row indices, relabelled y) for :func:`binary_pair`, on the labels alone."""
    y = np.asarray(y)
    _check_labels(labels)
    present = np.unique(y)
    for argname, value in (("pos", pos), ("neg", neg)):
        if not np.any(present == value):
            raise ValueError(f"{argname}={value!r} is not a label present in y (labels: {present.tolist()})")
    if pos == neg:
        raise ValueError(f"pos and neg must differ, got pos=neg={pos!r}")
    idx = np.flatnonzero((y == pos) | (y == neg))
    return idx, np.where(y[idx] == pos, labels[0], labels[1]).astype(np.int64)


def binary_pair(X, y, pos, neg, labels=(1, -1), *, return_index: bool = False):
    """Keep the examples of classes ``pos`` and ``neg`` (original order) and relabel them:
    ``pos -> labels[0]`` (default +1) and ``neg -> labels[1]`` (default -1).

    Returns ``(X_sel, y_sel)`` (``y_sel`` int64), plus the selected row indices when
    ``return_index=True``. Raises ``ValueError`` naming ``pos``/``neg`` when they are equal or
    not among the labels present in ``y``.
    """
    X, y = np.asarray(X), np.asarray(y)
    if len(X) != len(y):
        raise ValueError(f"X has {len(X)} rows but y has {len(y)}")
    idx, y_sel = _pair_index(y, pos, neg, labels)
    return (X[idx], y_sel, idx) if return_index else (X[idx], y_sel)


def _check_dataset(dataset):
    for f in ("X_train", "y_train", "X_test", "y_test"):
        if not hasattr(dataset, f):
            raise TypeError(f"dataset must be a Dataset (missing {f}), got {type(dataset).__name__}")


def biggio_protocol(dataset: Dataset, pos, neg, n_train: int = 100, n_val: int = 500, seed=0, *,
                    labels=(1, -1), stratify: bool = False) -> ProtocolSplit:
    """Biggio, Nelson & Laskov (2012), "Poisoning attacks against SVMs": a two-class problem
    (``pos`` -> +1, ``neg`` -> -1, e.g. MNIST 7 vs 1); TR (``n_train``) and VAL (``n_val``) are
    disjoint random draws from the *training* examples of the two classes, TS is every *test*
    example of the two classes (original order).

    ``meta["indices"]`` holds the rows of ``dataset.X_train`` (train, val) and ``dataset.X_test``
    (test) that were used.
    """
    _check_dataset(dataset)
    n_train = _check_size(n_train, "n_train", allow_none=False)
    n_val = _check_size(n_val, "n_val", allow_none=False)
    X, y, idx = binary_pair(dataset.X_train, dataset.y_train, pos, neg, labels, return_index=True)
    if n_train + n_val > len(y):
        raise ValueError(
            f"n_train + n_val = {n_train} + {n_val} = {n_train + n_val} exceeds the {len(y)} training "
            f"examples of classes pos={pos!r} and neg={neg!r}"
        )
    tr, va = split_indices(len(y), (n_train, n_val), seed, y=y, stratify=stratify)
    present = np.unique(np.asarray(dataset.y_test))
    missing = [f"{a}={v!r}" for a, v in (("pos", pos), ("neg", neg)) if not np.any(present == v)]
    if missing:
        raise ValueError(f"{', '.join(missing)} has no examples in the dataset's test split")
    X_te, y_te, idx_te = binary_pair(dataset.X_test, dataset.y_test, pos, neg, labels, return_index=True)
    meta = {
        "protocol": "biggio2012",
        "dataset": getattr(dataset, "name", None),
        "pos": pos, "neg": neg, "labels": tuple(labels), "seed": seed if not isinstance(seed, np.random.Generator) else None,
        "sizes": (n_train, n_val, len(y_te)),
        "indices": {"train": idx[tr], "val": idx[va], "test": idx_te},
    }
    return ProtocolSplit(X[tr], y[tr], X[va], y[va], X_te, y_te, f"{getattr(dataset, 'name', 'data')}-{pos}v{neg}", meta)


def munoz_protocol(dataset: Dataset, n_train: int = 1000, n_val: int = 1000, n_test: int | None = 8000,
                   seed=0, *, pool: str = "all", pos=None, neg=None, labels=(1, -1),
                   stratify: bool = False) -> ProtocolSplit:
    """Munoz-Gonzalez et al. (2017), "Towards poisoning of deep learning algorithms with
    back-gradient optimization": disjoint random TR / VAL / TS draws (default 1000 / 1000 / 8000,
    all classes, original labels). ``n_test=None`` takes the rest.

    ``pool="all"`` (default) draws all three from the concatenation ``[train; test]`` of the
    dataset; ``pool="split"`` draws TR and VAL from the training portion and TS from the test
    portion. With ``pos`` and ``neg`` the problem is first reduced to those two classes with
    :func:`binary_pair`. ``meta["indices"]`` holds the rows used, into ``[X_train; X_test]`` for
    ``pool="all"`` and into ``X_train`` / ``X_test`` for ``pool="split"``.
    """
    _check_dataset(dataset)
    if pool not in ("all", "split"):
        raise ValueError(f"pool must be 'all' or 'split', got {pool!r}")
    n_train = _check_size(n_train, "n_train", allow_none=False)
    n_val = _check_size(n_val, "n_val", allow_none=False)
    n_test = _check_size(n_test, "n_test")
    if (pos is None) != (neg is None):
        raise ValueError("pos and neg must be given together (or neither)")

    def select(X, y):
        if pos is None:
            return np.asarray(X), np.asarray(y), np.arange(len(y))
        return binary_pair(X, y, pos, neg, labels, return_index=True)

    what = "examples" if pos is None else f"examples of classes pos={pos!r} and neg={neg!r}"
    if pool == "all":
        # draw on the labels alone, then gather rows from train / test (no big concatenation)
        n_tr = len(dataset.y_train)
        y_all = np.concatenate([np.asarray(dataset.y_train), np.asarray(dataset.y_test)])
        if pos is None:
            idx, y = np.arange(len(y_all)), y_all
        else:
            idx, y = _pair_index(y_all, pos, neg, labels)
        need = n_train + n_val + (n_test or 0)
        if need > len(y):
            raise ValueError(
                f"n_train + n_val + n_test = {n_train} + {n_val} + {n_test} = {need} exceeds the "
                f"{len(y)} {what} in the dataset (train + test)"
            )
        parts_idx = split_indices(len(y), (n_train, n_val, n_test), seed, y=y, stratify=stratify)

        def gather(rows):
            X_tr_src, X_te_src = np.asarray(dataset.X_train), np.asarray(dataset.X_test)
            out = np.empty((len(rows),) + X_tr_src.shape[1:], dtype=np.result_type(X_tr_src, X_te_src))
            in_tr = rows < n_tr
            out[in_tr] = X_tr_src[rows[in_tr]]
            out[~in_tr] = X_te_src[rows[~in_tr] - n_tr]
            return out

        parts = tuple((gather(idx[p]), y[p]) for p in parts_idx)
        indices = dict(zip(("train", "val", "test"), (idx[p] for p in parts_idx)))
    else:
        X, y, idx = select(dataset.X_train, dataset.y_train)
        if n_train + n_val > len(y):
            raise ValueError(
                f"n_train + n_val = {n_train} + {n_val} = {n_train + n_val} exceeds the {len(y)} "
                f"training {what}"
            )
        Xt, yt, idxt = select(dataset.X_test, dataset.y_test)
        if n_test is not None and n_test > len(yt):
            raise ValueError(f"n_test = {n_test} exceeds the {len(yt)} test {what}")
        rng = _rng(seed)
        tr, va = split_indices(len(y), (n_train, n_val), rng, y=y, stratify=stratify)
        (te,) = split_indices(len(yt), (n_test,), rng, y=yt, stratify=stratify)
        parts = ((X[tr], y[tr]), (X[va], y[va]), (Xt[te], yt[te]))
        indices = {"train": idx[tr], "val": idx[va], "test": idxt[te]}
    (X_tr, y_tr), (X_va, y_va), (X_te, y_te) = parts
    meta = {
        "protocol": "munoz2017",
        "dataset": getattr(dataset, "name", None),
        "pool": pool, "pos": pos, "neg": neg,
        "labels": tuple(labels) if pos is not None else None,
        "seed": seed if not isinstance(seed, np.random.Generator) else None,
        "sizes": (len(y_tr), len(y_va), len(y_te)),
        "indices": indices,
    }
    return ProtocolSplit(X_tr, y_tr, X_va, y_va, X_te, y_te, f"{getattr(dataset, 'name', 'data')}-munoz", meta)
