"""Seeded, disjoint random draws: the one primitive under every train / validation / test split.

* :func:`split_indices` -- disjoint index arrays into ``range(n)`` of given sizes (``None`` = the
  rest), optionally stratified (every part keeps the class proportions as closely as integer
  counts allow).
* :func:`split` -- the same draws applied to ``(X, y)``.

Both are deterministic for an int ``seed`` and also take a :class:`numpy.random.Generator` (then
successive calls continue its stream).
"""

from __future__ import annotations

import numpy as np

__all__ = ["split", "split_indices"]


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
