"""UCI Adult / Census Income (Kohavi & Becker 1996): 32561 train / 16281 test (the official
split), label 1 = income ``>50K``, with ``sex`` recorded as the sensitive attribute for fairness
poisoning (Solans et al. 2020, Jagielski et al. 2021).

Files: ``<data_dir>/adult/adult.data`` and ``<data_dir>/adult/adult.test``. Numeric attributes are
min-max scaled with training statistics; categorical ones are one-hot over the categories seen in
training (see :func:`load_adult`). Besides the common ``meta`` keys the loader records
``sensitive_attribute`` (``"sex"``), ``sex_columns`` (``{"Female": j, "Male": k}`` one-hot column
indices in ``X``, or ``None`` when ``drop_sensitive=True``), ``sex_train`` / ``sex_test``
(``int64``, 1 = Male, 0 = Female) and ``attribute_columns`` (attribute -> ``(start, stop)`` column
range). Parsing is cached in memory on ``(path, mtime, size)``; nothing is written to disk.
"""

from __future__ import annotations

import csv
import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from poisoning.datasets.base import Dataset, _minmax_apply, _minmax_fit, _require

__all__ = ["ADULT_COLUMNS", "ADULT_NUMERIC", "load_adult"]

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
