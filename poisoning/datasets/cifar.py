"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009): 32x32 colour images, 50000 train / 10000 test (the
official split).

Both loaders return ``float32`` pixels / 255 in ``[0, 1]`` of shape ``(n, 32, 32, 3)`` (height,
width, RGB channel: HWC, the layout of flax's ``nn.Conv``), or ``(n, 3072)`` in that row-major order
with ``flatten=True``; labels are ``int64`` class indices. ``classes`` keeps a subset of the classes
(indices or names) and relabels them ``0..k-1`` in the order given, e.g. ``classes=("cat", "dog")``
gives cat -> 0, dog -> 1; the rows are selected before the conversion to float, so a subset also
saves memory (all of CIFAR-10's training images are 614 MB as ``float32``).

Where the files are (``data_dir``, else ``$BILEVEL_DATA_DIR``; nothing is downloaded unless
``allow_download=True`` and ``tensorflow_datasets`` is importable):

* CIFAR-10, either layout:

  - ``<data_dir>/cifar10/``: ``cifar10_x_train.npy.xz`` and ``cifar10_x_test.npy.xz`` (xz-compressed
    ``.npy`` of ``uint8`` HWC images, ``(n, 32, 32, 3)``; uncompressed ``.npy`` copies are accepted)
    and ``cifar10_labels_filenames.npz`` (``y_train``, ``y_test`` and optionally ``class_names``,
    ``filenames_train``, ``filenames_test``). Every array is read with ``allow_pickle=False``.
    Decompressing the training images takes about 10 s; pass ``cache_dir`` to keep the decompressed
    arrays there as ``.npy`` (memory-mapped on later calls). Nothing is written anywhere else.
  - ``<data_dir>/cifar-10-batches-bin/`` (also under ``cifar10/``): the official *binary version*,
    ``data_batch_1.bin`` ... ``data_batch_5.bin`` and ``test_batch.bin``, records of one label byte
    and 3072 pixel bytes (the red, green and blue 32x32 planes). The python version of the files is
    never read: it is pickled.

* CIFAR-100: ``<data_dir>/cifar-100-binary/`` (also ``cifar100/`` or ``cifar100/cifar-100-binary/``),
  the official binary version: ``train.bin`` and ``test.bin``, records of a coarse label byte, a
  fine label byte and 3072 pixel bytes. ``label_mode="fine"`` (100 classes) or ``"coarse"`` (20
  superclasses); the other label is kept in ``meta`` (``coarse_train`` / ``fine_train`` and the test
  ones).

When no layout is found a :class:`FileNotFoundError` names the expected files and how to point at
them; a truncated file or one with the wrong shapes gives a :class:`ValueError` that names it. The
class names are this module's constants (:data:`CIFAR10_CLASSES`, ...); a names file next to the
data (``class_names`` in the ``.npz``, ``batches.meta.txt``, ``fine_label_names.txt``,
``coarse_label_names.txt``) must agree with them. The rows keep the order of the files: the official
binary files and ``tensorflow_datasets`` have the original order, while a ``cifar10/`` folder may be
sorted by class (``meta["filenames_train"]`` then names the original image of every row).

Reference: A. Krizhevsky, "Learning multiple layers of features from tiny images", 2009.
"""

from __future__ import annotations

import lzma
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from poisoning.datasets.base import Dataset, _find_files, _not_found, _tfds_importable, resolve_data_dir

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR100_COARSE_CLASSES",
    "CIFAR100_FINE_CLASSES",
    "load_cifar10",
    "load_cifar100",
]

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

CIFAR100_FINE_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup",
    "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house",
    "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man",
    "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine",
    "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew",
    "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar", "sunflower",
    "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor", "train", "trout",
    "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)

CIFAR100_COARSE_CLASSES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
    "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees",
    "vehicles_1", "vehicles_2",
)

_IMAGE_SHAPE = (32, 32, 3)
_PIXELS = 32 * 32 * 3

_NPY_FILES = ("cifar10_x_train.npy.xz", "cifar10_x_test.npy.xz", "cifar10_labels_filenames.npz")
_C10_BIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)
_C10_BIN_DIRS = ("cifar-10-batches-bin", "cifar10/cifar-10-batches-bin", "cifar10")
_C100_BIN_FILES = ("train.bin", "test.bin")
_C100_BIN_DIRS = ("cifar-100-binary", "cifar100/cifar-100-binary", "cifar100")


# --------------------------------------------------------------------------------------------
# reading the files
# --------------------------------------------------------------------------------------------


def _check_images(images: np.ndarray, source: str) -> np.ndarray:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != _IMAGE_SHAPE:
        raise ValueError(
            f"{source}: expected uint8 images of shape (n, 32, 32, 3), found {images.dtype}{list(images.shape)}"
        )
    return images


def _check_labels(labels: np.ndarray, n_images: int, n_classes: int, source: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{source}: labels must be a 1-D integer array, found {labels.dtype}{list(labels.shape)}")
    if len(labels) != n_images:
        raise ValueError(f"{source}: {len(labels)} labels for {n_images} images")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"{source}: labels must be in 0..{n_classes - 1}, found {int(labels.min())}..{int(labels.max())}"
        )
    return labels.astype(np.int64)


def _read_npy(path: Path) -> np.ndarray:
    """A ``.npy`` file, xz-compressed when its name ends in ``.xz`` (else memory-mapped); never
    unpickles."""
    try:
        if path.suffix == ".xz":
            with lzma.open(path, "rb") as fh:
                return np.load(fh, allow_pickle=False)
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, EOFError, ValueError, lzma.LZMAError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(f"{path}: cannot read the .npy array (truncated or corrupt?): {exc}") from exc


def _cached_npy(path: Path, cache_dir) -> np.ndarray:
    """:func:`_read_npy`, through ``cache_dir`` when given: the decompressed array is saved there
    once (named after the source file, its size and mtime) and memory-mapped on later calls."""
    if cache_dir is None or path.suffix != ".xz":
        return _read_npy(path)
    cache_dir = Path(os.path.expanduser(os.fspath(cache_dir)))
    st = path.stat()
    stem = path.name[: -len(".npy.xz")] if path.name.endswith(".npy.xz") else path.name
    cached = cache_dir / f"{stem}-{st.st_size}-{st.st_mtime_ns}.npy"
    if cached.is_file():
        try:
            return np.load(cached, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{cached}: cannot read the cached array (delete it to rebuild): {exc}") from exc
    arr = _read_npy(path)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{cached.name}.", suffix=".tmp", dir=cache_dir)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
        os.replace(tmp, cached)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return arr


def _read_npz(path: Path, required: tuple[str, ...], optional: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays ``required`` (and those of ``optional`` present) of an ``.npz``; never unpickles."""
    try:
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
            arrays = {k: z[k] for k in required + optional if k in files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(f"{path}: cannot read the .npz arrays (truncated, corrupt or pickled?): {exc}") from exc
    missing = [k for k in required if k not in arrays]
    if missing:
        raise ValueError(f"{path}: missing array(s) {missing} (the file holds {sorted(files)})")
    return arrays


def _read_npy_layout(paths: dict[str, Path], cache_dir):
    x_tr_path, x_te_path, lab_path = (paths[f] for f in _NPY_FILES)
    lab = _read_npz(lab_path, ("y_train", "y_test"), ("class_names", "filenames_train", "filenames_test"))
    parts = []
    for x_path, part in ((x_tr_path, "train"), (x_te_path, "test")):
        images = _check_images(_cached_npy(x_path, cache_dir), str(x_path))
        labels = _check_labels(lab[f"y_{part}"], len(images), 10, f"{lab_path} ['y_{part}']")
        extra = {}
        names = lab.get(f"filenames_{part}")
        if names is not None:
            if names.shape != (len(images),):
                raise ValueError(f"{lab_path} ['filenames_{part}']: shape {names.shape}, expected ({len(images)},)")
            extra["filenames"] = names
        parts.append((images, {"label": labels, **extra}))
    if "class_names" in lab:
        _check_names(lab["class_names"].reshape(-1), CIFAR10_CLASSES, f"{lab_path} ['class_names']")
    return parts


def _read_records(path: Path, n_label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Records of the official binary version: label byte(s), then the R, G, B 32x32 planes."""
    record = n_label_bytes + _PIXELS
    buf = path.read_bytes()
    if not buf or len(buf) % record:
        raise ValueError(
            f"{path}: {len(buf)} bytes is not a positive multiple of the {record}-byte record "
            f"({n_label_bytes} label byte(s) + 3072 pixels); truncated or not a CIFAR binary file?"
        )
    rows = np.frombuffer(buf, np.uint8).reshape(-1, record)
    images = rows[:, n_label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # CHW -> HWC
    return np.ascontiguousarray(images), rows[:, :n_label_bytes].astype(np.int64)


def _check_names(names, expected: tuple[str, ...], source: str) -> None:
    """A file's class names must be the standard ones: other names mean other label indices."""
    names = tuple(str(n).strip() for n in names)
    if len(names) != len(expected):
        raise ValueError(f"{source}: expected {len(expected)} class names, found {len(names)}")
    bad = next((i for i, (a, b) in enumerate(zip(names, expected)) if a != b), None)
    if bad is not None:
        raise ValueError(
            f"{source}: class {bad} is named {names[bad]!r}, expected {expected[bad]!r} (the labels "
            f"would mean other classes than this loader's class names say)"
        )


def _check_names_file(folder: Path, filename: str, expected: tuple[str, ...]) -> None:
    path = folder / filename
    if path.is_file():
        lines = path.read_text(errors="replace").splitlines()
        _check_names([line for line in lines if line.strip()], expected, str(path))


def _read_cifar10_bin(paths: dict[str, Path]):
    parts = []
    for files in (_C10_BIN_FILES[:5], _C10_BIN_FILES[5:]):
        chunks = [_read_records(paths[f], 1) for f in files]
        images = np.concatenate([c[0] for c in chunks])
        labels = _check_labels(np.concatenate([c[1][:, 0] for c in chunks]), len(images), 10,
                               ", ".join(str(paths[f]) for f in files))
        parts.append((images, {"label": labels}))
    _check_names_file(paths[_C10_BIN_FILES[0]].parent, "batches.meta.txt", CIFAR10_CLASSES)
    return parts


def _read_cifar100_bin(paths: dict[str, Path]):
    parts = []
    for f in _C100_BIN_FILES:
        images, lab = _read_records(paths[f], 2)
        coarse = _check_labels(lab[:, 0], len(images), 20, f"{paths[f]} (coarse labels)")
        fine = _check_labels(lab[:, 1], len(images), 100, f"{paths[f]} (fine labels)")
        parts.append((images, {"label": fine, "coarse_label": coarse}))
    folder = paths[_C100_BIN_FILES[0]].parent
    _check_names_file(folder, "fine_label_names.txt", CIFAR100_FINE_CLASSES)
    _check_names_file(folder, "coarse_label_names.txt", CIFAR100_COARSE_CLASSES)
    return parts


def _load_tfds(tfds_name: str, label_keys: tuple[str, ...]):
    import tensorflow_datasets as tfds  # optional; only reached with allow_download=True

    parts = []
    for part in tfds.as_numpy(tfds.load(tfds_name, split=["train", "test"], batch_size=-1)):
        images = _check_images(np.asarray(part["image"], dtype=np.uint8), f"tensorflow_datasets {tfds_name!r}")
        parts.append((images, {k: np.asarray(part[k]).astype(np.int64) for k in label_keys}))
    return parts


# --------------------------------------------------------------------------------------------
# classes, conversion, the loaders
# --------------------------------------------------------------------------------------------


def _resolve_classes(classes, class_names: tuple[str, ...]) -> tuple[int, ...]:
    """``classes`` (indices or names) as distinct class indices, validated; ``None`` = all."""
    if classes is None:
        return tuple(range(len(class_names)))
    if isinstance(classes, (str, bytes, int, np.integer)) or not hasattr(classes, "__iter__"):
        raise TypeError(f"classes must be a sequence of class indices or names, got {classes!r}")
    out = []
    for c in classes:
        if isinstance(c, str):
            if c not in class_names:
                raise ValueError(f"classes: unknown class name {c!r}; valid names: {', '.join(class_names)}")
            out.append(class_names.index(c))
        elif isinstance(c, (int, np.integer)) and not isinstance(c, (bool, np.bool_)):
            if not 0 <= int(c) < len(class_names):
                raise ValueError(f"classes: index {int(c)} is out of range 0..{len(class_names) - 1}")
            out.append(int(c))
        else:
            raise TypeError(f"classes: entries must be class indices or names, got {c!r}")
    if not out:
        raise ValueError("classes must not be empty (None keeps every class)")
    if len(set(out)) != len(out):
        raise ValueError(f"classes must be distinct, got {list(classes)!r}")
    return tuple(out)


_META_NAMES = {"label": "fine", "coarse_label": "coarse", "filenames": "filenames"}


def _build(name, parts, class_names, label_key, keep, flatten, source, meta_extra):
    """The :class:`Dataset`: keep the rows of the classes ``keep`` (indices, from
    :func:`_resolve_classes`), relabel them ``0..k-1``, convert to float32 in [0, 1].

    ``parts`` is ``[(images, per-row arrays), ...]`` for train and test; ``per_row[label_key]`` is
    ``y`` and every other per-row array goes to ``meta`` (``coarse_train``, ``filenames_test``, ...).
    """
    relabel = np.full(len(class_names), -1, dtype=np.int64)
    relabel[list(keep)] = np.arange(len(keep))
    arrays, meta = {}, {
        "task": "classification",
        "source": source,
        "classes": tuple(range(len(keep))),
        "class_names": tuple(class_names[c] for c in keep),
        "source_classes": keep,
        "image_shape": _IMAGE_SHAPE,
        "flatten": flatten,
        **meta_extra,
    }
    for part, (images, per_row) in zip(("train", "test"), parts):
        y = per_row[label_key]
        rows = slice(None) if len(keep) == len(class_names) else np.flatnonzero(relabel[y] >= 0)
        X = np.divide(images[rows], np.float32(255.0), dtype=np.float32)
        arrays[f"X_{part}"] = X.reshape(len(X), -1) if flatten else X
        arrays[f"y_{part}"] = relabel[y[rows]]
        for key, values in per_row.items():
            if key != label_key:
                meta[f"{_META_NAMES[key]}_{part}"] = values[rows]
    return Dataset(arrays["X_train"], arrays["y_train"], arrays["X_test"], arrays["y_test"], name, meta)


def _check_flags(flatten, allow_download):
    for argname, value in (("flatten", flatten), ("allow_download", allow_download)):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{argname} must be a bool, got {value!r}")


def load_cifar10(data_dir=None, *, flatten: bool = False, classes=None, allow_download: bool = False,
                 cache_dir=None) -> Dataset:
    """CIFAR-10: 50000 train / 10000 test images of 10 classes (5000 / 1000 each), pixels / 255 as
    ``float32``, ``(n, 32, 32, 3)`` HWC (``(n, 3072)`` with ``flatten=True``), labels ``0..9``.

    ``classes`` keeps a subset, given as indices or names, relabelled ``0..k-1`` in the order
    given (``meta["source_classes"]`` holds the original indices). ``cache_dir`` (only used for the
    ``.npy.xz`` files) keeps the decompressed arrays there. ``meta["filenames_train"/"_test"]``
    name the original image of every row when the folder records them. See the module docstring
    for the file layouts; raises :class:`FileNotFoundError` when none is found and
    :class:`ValueError` naming the file when one is truncated or holds the wrong shapes.
    """
    _check_flags(flatten, allow_download)
    keep = _resolve_classes(classes, CIFAR10_CLASSES)  # before the files are read: fail fast
    base = resolve_data_dir(data_dir)
    npy = _find_files(base, ("cifar10", "cifar-10"), _NPY_FILES, direct=True, allow_plain=True)
    binary = None if npy is not None else _find_files(base, _C10_BIN_DIRS, _C10_BIN_FILES, direct=True)
    if npy is not None:
        parts = _read_npy_layout(npy, cache_dir)
        source = str(npy[_NPY_FILES[0]].parent)
    elif binary is not None:
        parts = _read_cifar10_bin(binary)
        source = str(binary[_C10_BIN_FILES[0]].parent)
    elif allow_download and _tfds_importable():
        parts, source = _load_tfds("cifar10", ("label",)), "tensorflow_datasets"
    else:
        raise _not_found("CIFAR-10", _NPY_FILES, ("cifar10",), data_dir, _tfds_hint(
            allow_download, " Or put the official binary version (data_batch_1.bin ... data_batch_5.bin, "
            "test_batch.bin) under '<data_dir>/cifar-10-batches-bin/'."))
    return _build("cifar10", parts, CIFAR10_CLASSES, "label", keep, flatten, source, {})


def load_cifar100(data_dir=None, *, flatten: bool = False, classes=None, label_mode: str = "fine",
                  allow_download: bool = False) -> Dataset:
    """CIFAR-100: 50000 train / 10000 test images, 100 fine classes grouped in 20 coarse
    superclasses; same layout as :func:`load_cifar10`. ``label_mode="fine"`` (default) or
    ``"coarse"`` picks ``y``; the other label is in ``meta`` (``coarse_train``/``coarse_test`` or
    ``fine_train``/``fine_test``, restricted to the kept rows). ``classes`` selects among the
    classes of ``label_mode``.

    Reads the official binary version (see the module docstring) or, when it is absent and
    ``allow_download=True``, ``tensorflow_datasets``; otherwise raises :class:`FileNotFoundError`.
    """
    _check_flags(flatten, allow_download)
    if label_mode not in ("fine", "coarse"):
        raise ValueError(f"label_mode must be 'fine' or 'coarse', got {label_mode!r}")
    if label_mode == "fine":
        key, class_names = "label", CIFAR100_FINE_CLASSES
    else:
        key, class_names = "coarse_label", CIFAR100_COARSE_CLASSES
    keep = _resolve_classes(classes, class_names)  # before the files are read: fail fast
    base = resolve_data_dir(data_dir)
    paths = _find_files(base, _C100_BIN_DIRS, _C100_BIN_FILES, direct=True)
    if paths is not None:
        parts = _read_cifar100_bin(paths)
        source = str(paths[_C100_BIN_FILES[0]].parent)
    elif allow_download and _tfds_importable():
        parts = _load_tfds("cifar100", ("label", "coarse_label"))
        source = "tensorflow_datasets"
    else:
        raise _not_found("CIFAR-100", _C100_BIN_FILES, _C100_BIN_DIRS, data_dir, _tfds_hint(
            allow_download, " These are the official binary version (cifar-100-binary); the pickled "
            "python version is not read."))
    return _build("cifar100", parts, class_names, key, keep, flatten, source, {"label_mode": label_mode})


def _tfds_hint(allow_download: bool, prefix: str) -> str:
    if allow_download:
        return prefix + " (allow_download=True was given but tensorflow_datasets is not installed.)"
    return prefix + " Alternatively install tensorflow_datasets and pass allow_download=True."
