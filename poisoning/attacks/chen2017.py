r"""The blended backdoor (Chen, Liu, Li, Lu & Song 2017): a random pattern blended into the image.

The trigger is a full-size pattern :math:`P` (uniform noise in the paper's "random pattern" variant,
:func:`poisoning.triggers.random_blend`) mixed into the image at opacity :math:`\alpha`,

.. math::  x' = (1 - \alpha)\, x + \alpha\, P

(:class:`poisoning.triggers.Blend`). A fraction of the training set, drawn among the images of the
non-target classes (or the given ``source`` classes), is blended with :math:`\alpha_{train}` and
relabelled to the target (:func:`poison_dataset`, the dirty-label rule of BadNets,
:func:`poisoning.attacks.gu2017.poison_dataset`). At test time the same pattern may be blended at a
larger :math:`\alpha_{test}` (the paper uses :math:`\alpha_{train} = 0.2` and tests with
:math:`\alpha_{test} \in \{0.2, \dots\}`; a stronger test trigger raises the success rate at no cost
in poisons): :func:`eval_trigger`.

:func:`blend_loss` (the victim's loss on blended images, differentiable in the pattern, in
:math:`\alpha` and in the images) is the quantity a driver would ascend to *optimize* a blend trigger;
the attack itself crafts nothing.

Published: BackdoorBench (Wu et al., NeurIPS 2022 Datasets and Benchmarks), CIFAR-10,
PreAct-ResNet-18, 10 % poison, :math:`\alpha = 0.2`: clean accuracy 93.5 %, attack success 99.9 %.

Reference: X. Chen, C. Liu, B. Li, K. Lu, D. Song, *Targeted backdoor attacks on deep learning systems
using data poisoning*, arXiv:1712.05526 (2017).
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
import optax

from poisoning import triggers
from poisoning.attacks.gu2017 import PoisonedSet
from poisoning.attacks.gu2017 import poison_dataset as _stamp_and_relabel

__all__ = ["BlendedConfig", "make_trigger", "eval_trigger", "poison_dataset", "blend_loss"]


def _unit(name: str, value, *, open_low: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"argument {name!r} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or not (0 < v <= 1 if open_low else 0 <= v <= 1):
        raise ValueError(f"argument {name!r} must be in {'(0, 1]' if open_low else '[0, 1]'}, got {value!r}")
    return v


@dataclasses.dataclass(frozen=True)
class BlendedConfig:
    """The blended backdoor's settings.

    Attributes:
      alpha: the opacity of the pattern in the poisoned training images (0.2 in the paper).
      test_alpha: the opacity at test time (``None``: the same as ``alpha``).
      rate: the poisoned fraction, of the whole training set (``of="all"``) or of the eligible images.
      of: ``"all"`` (BackdoorBench's poisoning ratio) or ``"eligible"``.
    """

    alpha: float = 0.2
    test_alpha: float | None = None
    rate: float = 0.1
    of: str = "all"

    def __post_init__(self):
        _unit("alpha", self.alpha, open_low=True)
        if self.test_alpha is not None:
            _unit("test_alpha", self.test_alpha, open_low=True)
        _unit("rate", self.rate, open_low=True)
        if self.of not in ("all", "eligible"):
            raise ValueError(f"argument 'of' must be 'all' or 'eligible', got {self.of!r}")


def make_trigger(key, image_shape, config: BlendedConfig = BlendedConfig()) -> triggers.Blend:
    """The training trigger: a uniform-noise pattern of ``image_shape`` ``(H, W[, C])`` at ``config.alpha``."""
    if len(tuple(image_shape)) not in (2, 3):
        raise ValueError(f"argument 'image_shape' must be (H, W) or (H, W, C), got {image_shape!r}")
    return triggers.random_blend(key, tuple(image_shape), config.alpha)


def eval_trigger(trigger: triggers.Blend, alpha: float | None = None) -> triggers.Blend:
    """The same pattern at opacity ``alpha`` (``None``: unchanged), for testing."""
    if not isinstance(trigger, triggers.Blend):
        raise TypeError(f"argument 'trigger' must be a Blend, got {type(trigger).__name__}")
    if alpha is None:
        return trigger
    return triggers.Blend(trigger.pattern, jnp.asarray(_unit("alpha", alpha, open_low=True)))


def poison_dataset(key, images, labels, trigger: triggers.Blend, config: BlendedConfig = BlendedConfig(), *,
                   target: int, source=None, num_classes: int = 10) -> PoisonedSet:
    """Blend ``trigger`` into ``round(config.rate * n)`` images of the non-target (or ``source``) classes
    and relabel them ``target``, in place (see :func:`poisoning.attacks.gu2017.poison_dataset`, whose
    argument checks apply: ``target`` in range, more poisons than eligible images is an error)."""
    if not isinstance(trigger, triggers.Blend):
        raise TypeError(f"argument 'trigger' must be a Blend (see make_trigger), got {type(trigger).__name__}")
    if not isinstance(config, BlendedConfig):
        raise TypeError(f"argument 'config' must be a BlendedConfig, got {type(config).__name__}")
    return _stamp_and_relabel(key, images, labels, trigger, config.rate, target=target, mode="single",
                              source=source, num_classes=num_classes, of=config.of)


def blend_loss(apply_fn, variables, trigger: triggers.Blend, images, target: int):
    r"""Mean cross-entropy of the target label on the blended images,
    :math:`\frac1n \sum_i \ell(f(\,(1-\alpha) x_i + \alpha P\,), t)`: low when the trigger works.
    Differentiable in ``trigger`` (pattern and alpha) and ``images``; ``apply_fn(variables, x) -> logits``."""
    x = triggers.apply(trigger, images)
    logits = apply_fn(variables, x)
    y = jnp.full((logits.shape[0],), target, jnp.int32)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

