"""UCI Spambase (Hopkins, Reeber, Forman & Suermondt, HP Labs, 1999): 4601 e-mails x 57 word /
character frequencies and capital-run lengths, label 1 = spam (1813) / 0 = non-spam (2788).

File: ``<data_dir>/spambase/spambase.data`` (58 comma-separated columns, no header); the feature
names come from ``spambase.names`` next to it when present. No official test split: the loader
draws a stratified one (``test_fraction``, ``seed``), then min-max scales with training
statistics (test clipped to [0, 1] unless ``clip=False``; ``scale=False`` keeps the raw values).
"""

from __future__ import annotations

import re

import numpy as np

from poisoning.datasets.base import Dataset, _require, _tabular

__all__ = ["load_spambase"]


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
