"""The split protocols of the data-poisoning papers, on any :class:`~poisoning.datasets.Dataset`.

* :func:`binary_pair` -- keep two classes and relabel them ``pos -> labels[0]``,
  ``neg -> labels[1]``; the default ``labels=(1, 0)`` follows the package's one label convention
  (integer classes ``0..K-1``): Biggio et al. 2012's MNIST 7 vs 1 becomes 7 -> 1, 1 -> 0. Pass
  ``labels=(1, -1)`` for the papers' +-1 notation.
* :func:`biggio_protocol` -- Biggio, Nelson & Laskov 2012: TR (100) and VAL (500) drawn from the
  training portion of the two classes, TS = every test example of the two classes.
* :func:`munoz_protocol` -- Munoz-Gonzalez et al. 2017: random disjoint TR / VAL / TS draws
  (default 1000 / 1000 / 8000, all classes).

Both protocols return a frozen :class:`~poisoning.datasets.ProtocolSplit` with ``X_train, y_train,
X_val, y_val, X_test, y_test, name, meta``; ``meta["indices"]`` maps each part to row indices in
its source (see the functions). The draws are :func:`~poisoning.datasets.split_indices`.

References
----------
- B. Biggio, B. Nelson, P. Laskov, "Poisoning attacks against support vector machines", ICML 2012.
- L. Munoz-Gonzalez et al., "Towards poisoning of deep learning algorithms with back-gradient
  optimization", AISec 2017.
"""

from __future__ import annotations

import numpy as np

from poisoning.datasets.base import Dataset, ProtocolSplit
from poisoning.datasets.splits import _check_size, _rng, split_indices

__all__ = ["BINARY_LABELS", "binary_pair", "biggio_protocol", "munoz_protocol"]

BINARY_LABELS = (1, 0)
"""The default ``(pos_label, neg_label)`` of the protocols: class indices, ``pos -> 1``, ``neg -> 0``."""


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


def binary_pair(X, y, pos, neg, labels=BINARY_LABELS, *, return_index: bool = False):
    """Keep the examples of classes ``pos`` and ``neg`` (original order) and relabel them:
    ``pos -> labels[0]`` (default 1) and ``neg -> labels[1]`` (default 0).

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
                    labels=BINARY_LABELS, stratify: bool = False) -> ProtocolSplit:
    """Biggio, Nelson & Laskov (2012), "Poisoning attacks against SVMs": a two-class problem
    (``pos -> labels[0]``, default 1; ``neg -> labels[1]``, default 0; e.g. MNIST 7 vs 1); TR
    (``n_train``) and VAL (``n_val``) are disjoint random draws from the *training* examples of the
    two classes, TS is every *test* example of the two classes (original order). A seed draws the same rows with
    ``labels=(1, 0)`` as with the papers' ``(1, -1)``.

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
                   seed=0, *, pool: str = "all", pos=None, neg=None, labels=BINARY_LABELS,
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
