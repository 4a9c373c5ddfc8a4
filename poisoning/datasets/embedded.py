"""The datasets scikit-learn ships inside the package: digits, breast cancer, diabetes.

They need no file and no download, so they are the offline default of the tests, the examples and
``make demo``. Each is split by the loader (``test_fraction``, default 0.25, and ``seed``, default
0; stratified for classification) and scaled to ``[0, 1]``:

==============  ===================================================================================
digits          1797 8x8 images, 10 classes; pixels / 16 -> 64 features (``flatten=False``: 8x8)
breast_cancer   569 x 30, 0 = malignant, 1 = benign; min-max scaled with *training* statistics,
                test features clipped to [0, 1] unless ``clip=False``
diabetes        442 x 10 regression; features and target min-max scaled with training statistics
                (like Jagielski et al. 2018), test clipped unless ``clip=False``
==============  ===================================================================================

The ``data_dir`` argument is accepted (so :func:`~poisoning.datasets.load_dataset` can pass it)
and ignored.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from poisoning.datasets.base import Dataset, _tabular

__all__ = ["load_breast_cancer", "load_diabetes", "load_digits"]


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
