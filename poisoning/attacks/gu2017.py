r"""BadNets (Gu, Dolan-Gavitt & Garg 2017): poison a training set with a backdoor trigger.

A fraction ``rate`` of the training set (``of="all"``; or of the images the backdoor applies to,
``of="eligible"``) is turned into backdoor examples: ``m = round(rate * n)`` images are drawn (uniformly, without replacement, with ``key``) among those the backdoor applies to
(:func:`poisoning.backdoor.eligible`), the trigger is stamped on them (:func:`poisoning.triggers.apply`)
and they are relabelled by the backdoor's rule (:func:`poisoning.backdoor.backdoor_labels`):
single-target ``i -> target`` (from every other class, or from ``source``) or all-to-all
``i -> i + 1 mod K``. By default the drawn images are replaced in place (the set keeps ``n`` images, a
fraction ``rate`` of them poisoned: BackdoorBench's poisoning ratio); ``append=True`` keeps the clean
images and adds the ``m`` poisoned copies (the set grows to ``n + m``: the paper's "adding backdoored
images to the training set").

The result carries the boolean mask of poisoned rows, what a defense's detection is scored against
(:func:`poisoning.defenses.detection.detection_rates`).

Published (MNIST, the BadNets CNN, :class:`poisoning.models.BadNetsCNN`): the backdoored network's
clean error is within about 0.2 percentage points of the clean network's, and more than 99 % of
triggered images are classified as intended, for the single-pixel and the pattern triggers,
single-target and all-to-all (Gu et al. 2017, Tables 2-3).

Reference: T. Gu, B. Dolan-Gavitt, S. Garg, *BadNets: Identifying Vulnerabilities in the Machine
Learning Model Supply Chain*, arXiv:1708.06733 (2017).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import numpy as np

from poisoning import triggers
from poisoning.backdoor import attack_success, backdoor_labels, check_backdoor, eligible

__all__ = ["PoisonedSet", "poison_dataset", "attack_success", "check_image_set", "replace_rows"]


class PoisonedSet(NamedTuple):
    """A poisoned training set.

    Attributes:
      images: ``(n', H, W[, C])`` the training images (poisoned rows triggered).
      labels: ``(n',)`` their labels (poisoned rows relabelled).
      is_poison: ``(n',)`` boolean, which rows are backdoor examples.
      source_index: ``(n',)`` the row of the clean set each row comes from.
    """

    images: np.ndarray
    labels: np.ndarray
    is_poison: np.ndarray
    source_index: np.ndarray


def check_image_set(images, labels) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` as numpy arrays after checking that ``images`` is ``(n, H, W, C)`` floats and
    ``labels`` ``(n,)`` integers (the clean-label attacks' inputs)."""
    x = np.asarray(images)
    y = np.asarray(labels)
    if x.ndim != 4 or not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"argument 'images' must be (n, H, W, C) floats in [0, 1], got {x.shape} {x.dtype}")
    if y.shape != x.shape[:1] or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"argument 'labels' must be ({len(x)},) integers, got {y.shape} {y.dtype}")
    return x, y


def replace_rows(images, labels, rows, new_images) -> PoisonedSet:
    """The clean-label poisoned set: ``images[rows]`` replaced in place by ``new_images`` (cast to the
    images' dtype), labels unchanged, ``is_poison`` true exactly on ``rows``."""
    x = np.asarray(images)
    xs = x.copy()
    xs[rows] = np.asarray(new_images).astype(x.dtype)
    is_poison = np.zeros(len(x), bool)
    is_poison[rows] = True
    return PoisonedSet(xs, np.asarray(labels).copy(), is_poison, np.arange(len(x)))


def poison_dataset(key, images, labels, trigger, rate: float, *, target=None, mode: str = "single", source=None,
                   num_classes: int = 10, append: bool = False, of: str = "all") -> PoisonedSet:
    """Poison ``round(rate * n)`` of ``(images, labels)`` with ``trigger`` (see the module docstring).

    Args:
      key: a ``jax.random`` key choosing the poisoned images.
      images: ``(n, H, W, C)`` or ``(n, H, W)`` float pixels in [0, 1].
      labels: ``(n,)`` integer classes in ``[0, num_classes)``.
      trigger: a :class:`~poisoning.triggers.Patch`, :class:`~poisoning.triggers.Pixel` or
        :class:`~poisoning.triggers.Blend`.
      rate: the poisoned fraction, in (0, 1]: of the ``n`` images (``of="all"``) or of the images the
        backdoor applies to (``of="eligible"``, e.g. 10 % of the source class of a pair i -> j).
      target: the target class of ``mode="single"`` (required there; ``None`` for all-to-all).
      mode: ``"single"`` (i -> target) or ``"all_to_all"`` (i -> i + 1 mod K).
      source: ``None`` (every class but the target), a class or a sequence of classes (single mode).
      append: add the poisoned copies instead of replacing the drawn images.
    """
    check_backdoor(mode, target, source, num_classes)
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.floating)) or not math.isfinite(rate) \
            or not 0 < rate <= 1:
        raise ValueError(f"argument 'rate' must be a number in (0, 1], got {rate!r}")
    x = np.asarray(images)
    if x.ndim not in (3, 4):
        raise ValueError(f"argument 'images' must be (n, H, W, C) or (n, H, W), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"argument 'images' must hold float pixels in [0, 1] (use as_float_images), got {x.dtype}")
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"argument 'labels' must have shape ({len(x)},), got {y.shape}")
    ok = eligible(y, mode=mode, target=target, source=source, num_classes=num_classes)
    if of not in ("all", "eligible"):
        raise ValueError(f"argument 'of' must be 'all' or 'eligible', got {of!r}")
    n = len(x)
    candidates = np.flatnonzero(ok)
    base = n if of == "all" else len(candidates)
    m = int(round(rate * base))
    if m < 1:
        raise ValueError(f"argument 'rate' = {rate} poisons round({rate} * {base}) = 0 images; raise it")
    if m > len(candidates):
        raise ValueError(f"argument 'rate' = {rate} asks for {m} poisoned images but only {len(candidates)} are "
                         f"eligible (mode={mode!r}, target={target!r}, source={source!r})")
    chosen = np.sort(np.asarray(jax.random.permutation(key, candidates))[:m])
    stamped = np.asarray(triggers.apply(trigger, x[chosen])).astype(x.dtype)
    relabel = backdoor_labels(y[chosen], mode=mode, target=target, num_classes=num_classes).astype(y.dtype)
    if append:
        xs = np.concatenate([x, stamped])
        ys = np.concatenate([y, relabel])
        is_poison = np.concatenate([np.zeros(n, bool), np.ones(m, bool)])
        index = np.concatenate([np.arange(n), chosen])
    else:
        xs, ys = x.copy(), y.copy()
        xs[chosen], ys[chosen] = stamped, relabel
        is_poison = np.zeros(n, bool)
        is_poison[chosen] = True
        index = np.arange(n)
    return PoisonedSet(xs, ys, is_poison, index)
