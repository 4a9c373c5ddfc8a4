"""The shared pieces of :mod:`poisoning.datasets`: the containers, where the files are, the
not-found errors, min-max scaling and the seeded train/test split of the tabular loaders.

Layout
------
Every loader returns a frozen :class:`Dataset`::

    Dataset(X_train, y_train, X_test, y_test, name, meta)

* ``X_*``: ``float32`` features in ``[0, 1]`` (see each loader's module for its scaling), shape
  ``(n, d)``, or the image shape when an image loader is asked for it (``flatten``).
* ``y_*``: classification -> ``int64`` class indices ``0..K-1`` (the one label convention of the
  package); regression -> ``float32`` targets in ``[0, 1]``.
* ``name``: the canonical dataset name (one of :data:`poisoning.datasets.DATASETS`).
* ``meta``: a dict with at least ``task`` (``"classification"`` / ``"regression"``),
  ``source`` (a file path, ``"sklearn"`` or ``"tensorflow_datasets"``) and, where known,
  ``classes``, ``class_names``, ``feature_names``, ``image_shape``, the scaler statistics
  (``feature_min``/``feature_max``, ``target_min``/``target_max``) and the split seed.

Datasets without an official test split are split by :func:`_tabular` with ``test_fraction``
(default 0.25) and ``seed`` (default 0), stratified for classification, then min-max scaled with
*training* statistics; ``test_fraction=0`` puts every example in ``X_train`` (then ``X_test`` has
0 rows).

Where the files are
-------------------
File-based loaders take ``data_dir=None``. The folder is ``data_dir`` if given, else the
environment variable ``BILEVEL_DATA_DIR`` (:func:`resolve_data_dir`); nothing else is assumed.
Each loader looks in its own subfolder (``<data_dir>/mnist/``, ``<data_dir>/adult/``, ...) and,
when its files are not there, raises a :class:`FileNotFoundError` that names the expected files,
the folder it looked in and how to point at the right one. Nothing is downloaded unless a loader
is called with ``allow_download=True`` (and ``tensorflow_datasets`` is importable).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from poisoning.datasets.splits import split_indices

__all__ = ["DATA_DIR_ENV", "Dataset", "ProtocolSplit", "resolve_data_dir"]

DATA_DIR_ENV = "BILEVEL_DATA_DIR"


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
    """The data folder: ``data_dir`` if given, else ``$BILEVEL_DATA_DIR`` (when not blank), else
    ``None``; ``~`` is expanded. The one rule every loader and experiment uses to find the files
    (``experiments._cli.resolve_data_dir`` calls this)."""
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
    """First folder among ``base/<subdir>`` (and ``base`` if ``direct``) holding every file.

    With ``allow_plain`` a compressed name (``.gz`` / ``.xz``) is also found decompressed (the
    name without the suffix); the compressed file wins when both are there.
    """
    if base is None:
        return None
    candidates = [base / s for s in subdirs] + ([base] if direct else [])
    for folder in candidates:
        found = {}
        for f in files:
            options = [folder / f]
            if allow_plain and f.endswith((".gz", ".xz")):
                options.append(folder / f[:-3])
            hit = next((p for p in options if p.is_file()), None)
            if hit is None:
                break
            found[f] = hit
        else:
            return found
    return None


def _require(name, subdir, files, data_dir) -> dict[str, Path]:
    """The paths of ``files`` under ``<data_dir>/<subdir>/``, or the not-found error."""
    base = resolve_data_dir(data_dir)
    paths = _find_files(base, (subdir,), files)
    if paths is None:
        raise _not_found(name, files, (subdir,), data_dir)
    return paths


def _tfds_importable() -> bool:
    """Whether the optional ``tensorflow_datasets`` fallback can be used."""
    try:
        import tensorflow_datasets  # noqa: F401
    except ImportError:
        return False
    return True


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
