"""The regression sets of Jagielski et al. 2018, as preprocessed in their code (``manip-ml``):
Ames house prices and IWPC warfarin dose.

Files: ``<data_dir>/house-prices/house-processed.csv`` (1460 x 274, target ``SalePrice``) and
``<data_dir>/warfarin/pharm-preproc.csv`` (4683 x 204, target ``TherapeuticDoseofWarfarin``); a
header line, then the target in the first column. Every value is already in [0, 1] in the
published files and is kept as is (``float32``). No official test split: the loader draws one
(``test_fraction``, ``seed``; ``test_fraction=0`` keeps every row in ``X_train``).

Reference: M. Jagielski et al., "Manipulating machine learning: poisoning attacks and
countermeasures for regression learning", IEEE S&P 2018.
"""

from __future__ import annotations

import csv

import numpy as np

from poisoning.datasets.base import Dataset, _require, _tabular

__all__ = ["load_house_prices", "load_warfarin"]


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
