"""Dataset loaders (one module per source) and the split protocols of the data-poisoning papers.

Everything here returns plain numpy arrays (convert with ``jnp.asarray`` where needed): a frozen
:class:`Dataset` ``(X_train, y_train, X_test, y_test, name, meta)`` from every loader, a
:class:`ProtocolSplit` (train / validation / test) from every protocol. One label convention:
classification labels are ``int64`` class indices ``0..K-1`` everywhere, the protocols' binary
problems included (``pos -> 1``, ``neg -> 0``). Features are ``float32`` in ``[0, 1]``. Nothing is
downloaded unless asked for (``allow_download=True``), nothing is unpickled, and no path outside
the arguments / ``$BILEVEL_DATA_DIR`` is assumed (:func:`resolve_data_dir`).

Modules
-------
==============================  ====================================================================
:mod:`~.base`                   :class:`Dataset`, :class:`ProtocolSplit`, :func:`resolve_data_dir`,
                                file finding, not-found errors, min-max scaling, train/test split
:mod:`~.splits`                 :func:`split`, :func:`split_indices`: seeded disjoint draws
:mod:`~.protocols`              :func:`binary_pair`, :func:`biggio_protocol`, :func:`munoz_protocol`
:mod:`~.embedded`               digits, breast_cancer, diabetes: files shipped with scikit-learn
                                (no download; the offline default)
:mod:`~.idx`, :mod:`~.mnist`    the IDX format; MNIST and Fashion-MNIST
:mod:`~.cifar`                  CIFAR-10 and CIFAR-100
:mod:`~.spambase`               UCI Spambase
:mod:`~.adult`                  UCI Adult, with the sensitive attribute ``sex``
:mod:`~.regression`             house prices and warfarin as preprocessed by Jagielski et al. 2018
==============================  ====================================================================

Each module's docstring gives its files, scaling and ``meta`` keys. :func:`load_dataset` loads by
name (one of :data:`DATASETS`).

Example (runs offline)::

    from poisoning.datasets import biggio_protocol, load_digits

    split = biggio_protocol(load_digits(), pos=7, neg=1, n_train=100, n_val=150, seed=0)
    split.X_train.shape, set(split.y_train.tolist())        # (100, 64), {0, 1}: 7 -> 1, 1 -> 0
"""

from __future__ import annotations

from poisoning.datasets.adult import load_adult
from poisoning.datasets.base import DATA_DIR_ENV, Dataset, ProtocolSplit, resolve_data_dir
from poisoning.datasets.cifar import (
    CIFAR10_CLASSES,
    CIFAR100_COARSE_CLASSES,
    CIFAR100_FINE_CLASSES,
    load_cifar10,
    load_cifar100,
)
from poisoning.datasets.embedded import load_breast_cancer, load_diabetes, load_digits
from poisoning.datasets.idx import parse_idx, read_idx
from poisoning.datasets.mnist import FASHION_MNIST_CLASSES, load_fashion_mnist, load_mnist
from poisoning.datasets.protocols import BINARY_LABELS, biggio_protocol, binary_pair, munoz_protocol
from poisoning.datasets.regression import load_house_prices, load_warfarin
from poisoning.datasets.spambase import load_spambase
from poisoning.datasets.splits import split, split_indices

__all__ = [
    # containers and files
    "DATASETS",
    "DATA_DIR_ENV",
    "Dataset",
    "ProtocolSplit",
    "resolve_data_dir",
    "load_dataset",
    # loaders
    "load_mnist",
    "load_fashion_mnist",
    "load_cifar10",
    "load_cifar100",
    "load_digits",
    "load_breast_cancer",
    "load_diabetes",
    "load_spambase",
    "load_adult",
    "load_house_prices",
    "load_warfarin",
    "parse_idx",
    "read_idx",
    "FASHION_MNIST_CLASSES",
    "CIFAR10_CLASSES",
    "CIFAR100_FINE_CLASSES",
    "CIFAR100_COARSE_CLASSES",
    # splits and protocols
    "split",
    "split_indices",
    "BINARY_LABELS",
    "binary_pair",
    "biggio_protocol",
    "munoz_protocol",
]

_LOADERS = {
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "digits": load_digits,
    "breast_cancer": load_breast_cancer,
    "diabetes": load_diabetes,
    "spambase": load_spambase,
    "adult": load_adult,
    "house_prices": load_house_prices,
    "warfarin": load_warfarin,
}

DATASETS = tuple(_LOADERS)
"""The names :func:`load_dataset` knows."""


def load_dataset(name: str, data_dir=None, **kw) -> Dataset:
    """Load a dataset by name (one of :data:`DATASETS`; ``-`` and case are tolerated, e.g.
    ``"Fashion-MNIST"``, ``"CIFAR-10"``). Keyword arguments go to the specific loader."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    key = name.strip().lower().replace("-", "_")
    key = {"cifar_10": "cifar10", "cifar_100": "cifar100"}.get(key, key)
    if key not in _LOADERS:
        raise ValueError(f"unknown dataset name {name!r}; valid names: {', '.join(DATASETS)}")
    return _LOADERS[key](data_dir, **kw)
