r"""What a backdoor attack means, shared by the attacks, defenses and experiments that use one.

A backdoor is a trigger (:mod:`poisoning.triggers`) plus a labelling rule. With ``K`` classes:

- ``mode="single"``: triggered images of the *source* classes (every class but ``target`` by default,
  or the given ``source`` class / classes) are labelled ``target`` (BadNets' i -> j);
- ``mode="all_to_all"``: a triggered image of class :math:`i` is labelled :math:`(i + 1) \bmod K`.

:func:`backdoor_labels` is the rule, :func:`eligible` the images it applies to, and
:func:`attack_success` the fraction of eligible triggered test images the model classifies as the
rule says (the attack success rate of Gu et al. 2017 and BackdoorBench).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["MODES", "check_backdoor", "backdoor_labels", "eligible", "attack_success", "attack_success_counts"]

MODES = ("single", "all_to_all")


def _sources(source) -> tuple[int, ...] | None:
    if source is None:
        return None
    if isinstance(source, (int, np.integer)) and not isinstance(source, bool):
        return (int(source),)
    if isinstance(source, (Sequence, np.ndarray)) and not isinstance(source, str):
        out = tuple(int(s) for s in np.asarray(source).ravel())
        if not out:
            raise ValueError("argument 'source' is empty")
        return out
    raise TypeError(f"argument 'source' must be None, an int or a sequence of ints, got {source!r}")


def check_backdoor(mode: str, target, source, num_classes: int) -> tuple[int | None, tuple[int, ...] | None]:
    """Validate a backdoor's ``mode``, ``target`` and ``source`` for ``num_classes`` classes.

    Returns ``(target, sources)`` normalized (``target`` is ``None`` for all-to-all)."""
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"argument 'num_classes' must be an int >= 2, got {num_classes!r}")
    if mode not in MODES:
        raise ValueError(f"argument 'mode' must be one of {MODES}, got {mode!r}")
    sources = _sources(source)
    if mode == "all_to_all":
        if sources is not None:
            raise ValueError("argument 'source' has no meaning with mode='all_to_all' (every class i goes to i+1)")
        if target is not None:
            raise ValueError("argument 'target' has no meaning with mode='all_to_all' (every class i goes to i+1)")
        return None, None
    if target is None:
        raise ValueError("argument 'target' is required with mode='single'")
    if not isinstance(target, (int, np.integer)) or isinstance(target, bool) or not 0 <= target < num_classes:
        raise ValueError(f"argument 'target' must be an int in [0, {num_classes}), got {target!r}")
    if sources is not None:
        bad = [s for s in sources if not 0 <= s < num_classes]
        if bad:
            raise ValueError(f"argument 'source' must be classes in [0, {num_classes}), got {bad}")
        if int(target) in sources:
            raise ValueError(f"argument 'source' must not contain the target class {target}")
    return int(target), sources


def _labels(labels, num_classes: int, name: str = "labels") -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"argument {name!r} must be 1-D, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"argument {name!r} must hold integer classes, got dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"argument {name!r} must be in [0, {num_classes}), found [{y.min()}, {y.max()}]")
    return y


def backdoor_labels(labels, *, mode: str = "single", target=None, num_classes: int = 10) -> np.ndarray:
    """The label a triggered image of class ``labels`` should get (``target``, or ``(y + 1) mod K``)."""
    target, _ = check_backdoor(mode, target, None, num_classes)
    y = _labels(labels, num_classes)
    if mode == "all_to_all":
        return (y + 1) % num_classes
    return np.full_like(y, target)


def eligible(labels, *, mode: str = "single", target=None, source=None, num_classes: int = 10) -> np.ndarray:
    """Boolean mask of the images a backdoor applies to: classes ``source`` (default: every class but
    ``target``) for ``"single"``, every image for ``"all_to_all"``."""
    target, sources = check_backdoor(mode, target, source, num_classes)
    y = _labels(labels, num_classes)
    if mode == "all_to_all":
        return np.ones(y.shape, bool)
    return np.isin(y, sources) if sources is not None else y != target


def attack_success_counts(predictions, labels, *, mode: str = "single", target=None, source=None,
                          num_classes: int = 10) -> tuple[int, int]:
    """``(hits, trials)``: of the eligible images (true ``labels``), how many of their *triggered*
    versions were classified as the backdoor's label. ``predictions``: predicted classes ``(n,)`` or
    logits / scores ``(n, K)`` of the triggered images, in the order of ``labels``."""
    p = np.asarray(predictions)
    if p.ndim == 2:
        p = p.argmax(-1)
    y = _labels(labels, num_classes)
    if p.shape != y.shape:
        raise ValueError(f"argument 'predictions' must have {len(y)} rows (one per label), got shape "
                         f"{np.shape(predictions)}")
    keep = eligible(y, mode=mode, target=target, source=source, num_classes=num_classes)
    if not keep.any():
        raise ValueError("no image is eligible for the backdoor (every label is the target class?)")
    want = backdoor_labels(y, mode=mode, target=target, num_classes=num_classes)
    return int(np.sum(p[keep] == want[keep])), int(keep.sum())


def attack_success(predictions, labels, *, mode: str = "single", target=None, source=None,
                   num_classes: int = 10) -> float:
    """Attack success rate: the fraction of eligible triggered images classified as the backdoor says
    (see :func:`attack_success_counts`)."""
    hits, n = attack_success_counts(predictions, labels, mode=mode, target=target, source=source,
                                    num_classes=num_classes)
    return hits / n
