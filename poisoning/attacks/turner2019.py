r"""The clean-label (label-consistent) backdoor of Turner, Tsipras & Madry (2019).

A dirty-label backdoor (BadNets) relabels its poisons, which an inspection of the training set would
catch. Here the poisons keep their correct label: they are images *of the target class*. To make the
network use the trigger rather than the image's natural features, each poison is first made hard to
classify correctly by an adversarial perturbation inside an :math:`\ell_\infty` ball, and only then is
the trigger stamped on it:

1. **perturb** (:func:`perturb`): projected gradient ascent (PGD, Madry et al. 2018) on the
   cross-entropy of the true label, on a surrogate model trained on clean data,

   .. math::  \delta^{(s+1)} = \Pi_{\|\delta\|_\infty \le \varepsilon,\; 0 \le x + \delta \le 1}
              \Big(\delta^{(s)} + \eta\, \mathrm{sign}\, \nabla_x \ell\big(f(x + \delta^{(s)}), y\big)\Big),

   ``steps`` steps of size :math:`\eta` (default :math:`2.5\,\varepsilon/\text{steps}`, Madry et al.'s
   rule), from :math:`\delta^{(0)} = 0` or a uniform random start; one ``lax.scan`` inside ``jit``.
   :func:`input_gradient` is the gradient the loop uses (checked against finite differences in the tests);
2. **stamp** the trigger (:func:`corner_trigger`): a 3x3 checkerboard in the bottom-right corner, or in
   all four corners (``corners=4``, the paper's variant that survives flips and crops), each a
   :class:`poisoning.triggers.Patch`. Its *amplitude* :math:`a \in (0, 1]` is the patch's mask, so a
   stamped pixel becomes :math:`(1 - a)\,x + a\,P` (the reduced-amplitude trigger, less visible; the
   ``reduced_amplitude`` of BackdoorBench's implementation). The test-time trigger has its own amplitude
   (default 1, the full trigger);
3. the labels are unchanged (:func:`poison_dataset`).

The surrogate here is a network trained on clean data (the paper's main experiments perturb with an
adversarially trained model, or by GAN interpolation; a standard model is the weaker, simpler choice).

Reference: A. Turner, D. Tsipras, A. Madry, *Label-Consistent Backdoor Attacks*, arXiv:1912.02771 (2019).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from poisoning import triggers
from poisoning.attacks.gu2017 import PoisonedSet, check_image_set, replace_rows

__all__ = ["CleanLabelConfig", "adversarial_loss", "input_gradient", "perturb", "corner_trigger",
           "apply_trigger", "poison_dataset", "target_indices", "eval_trigger"]


def _number(name, value, low, high, *, open_low=True):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"argument {name!r} must be a number, got {value!r}")
    v = float(value)
    ok = math.isfinite(v) and (low < v if open_low else low <= v) and v <= high
    if not ok:
        raise ValueError(f"argument {name!r} must be in {'(' if open_low else '['}{low}, {high}], got {value!r}")
    return v


@dataclasses.dataclass(frozen=True)
class CleanLabelConfig:
    """Settings of the clean-label backdoor (a frozen, hashable dataclass: static under ``jit``).

    Attributes:
      eps: the :math:`\\ell_\\infty` radius of the adversarial perturbation (pixels in [0, 1]; the paper
        uses 8/255 and 16/255 on CIFAR-10; 0.3 is MNIST's usual budget).
      steps: PGD steps; step_size: their size (``None``: ``2.5 * eps / steps``).
      random_start: start from a uniform point of the ball instead of the image.
      amplitude: the trigger's amplitude in the poisons (1: the full trigger); test_amplitude: at test time.
      corners: 1 (bottom-right) or 4 (the four corners).
      size: the trigger's side (3: a 3x3 checkerboard); margin: its distance to the border.
      rate: the poisoned fraction of the whole training set (all drawn from the target class).
      batch_size: images perturbed per compiled call.
    """

    eps: float = 8 / 255
    steps: int = 10
    step_size: float | None = None
    random_start: bool = False
    amplitude: float = 1.0
    test_amplitude: float = 1.0
    corners: int = 4
    size: int = 3
    margin: int = 0
    rate: float = 0.1
    batch_size: int = 500

    def __post_init__(self):
        _number("eps", self.eps, 0.0, 1.0)
        for name in ("steps", "size", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"argument {name!r} must be an integer >= 1, got {v!r}")
        if isinstance(self.margin, bool) or not isinstance(self.margin, (int, np.integer)) or self.margin < 0:
            raise ValueError(f"argument 'margin' must be an integer >= 0, got {self.margin!r}")
        if self.step_size is not None:
            _number("step_size", self.step_size, 0.0, 1.0)
        _number("amplitude", self.amplitude, 0.0, 1.0)
        _number("test_amplitude", self.test_amplitude, 0.0, 1.0)
        _number("rate", self.rate, 0.0, 1.0)
        if self.corners not in (1, 4):
            raise ValueError(f"argument 'corners' must be 1 or 4, got {self.corners!r}")

    @property
    def eta(self) -> float:
        return float(self.step_size) if self.step_size is not None else 2.5 * float(self.eps) / int(self.steps)


# ----------------------------------------------------------------------------------------------------
# step 1: the adversarial perturbation
# ----------------------------------------------------------------------------------------------------
def adversarial_loss(apply_fn: Callable, variables, x, y):
    r""":math:`\sum_i \ell(f(x_i), y_i)`, the cross-entropy of the true labels (PGD ascends it).
    ``apply_fn(variables, x) -> logits``. A sum, not a mean: each image's gradient is its own."""
    logits = apply_fn(variables, x)
    return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def input_gradient(apply_fn: Callable, variables, x, y):
    r""":math:`\nabla_x \sum_i \ell(f(x_i), y_i)`: the gradient the PGD loop of :func:`perturb` steps along."""
    return jax.grad(adversarial_loss, argnums=2)(apply_fn, variables, x, y)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _pgd(apply_fn, variables, x, y, config: CleanLabelConfig, key):
    eps = jnp.asarray(config.eps, x.dtype)
    eta = jnp.asarray(config.eta, x.dtype)

    def project(delta):
        delta = jnp.clip(delta, -eps, eps)
        return jnp.clip(x + delta, 0.0, 1.0) - x

    if config.random_start:
        delta0 = project(jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0) * eps)
    else:
        delta0 = jnp.zeros_like(x)

    def step(delta, _):
        g = input_gradient(apply_fn, variables, x + delta, y)
        return project(delta + eta * jnp.sign(g)), None

    delta, _ = jax.lax.scan(step, delta0, None, length=config.steps)
    return x + delta


def perturb(apply_fn: Callable, variables, images, labels, config: CleanLabelConfig = CleanLabelConfig(), *,
            key=None):
    """PGD within ``config.eps`` that raises the loss of the true ``labels`` on the surrogate
    ``apply_fn(variables, x)`` (module docstring, step 1). ``images`` ``(n, H, W, C)`` in [0, 1]; done
    ``config.batch_size`` images per compiled call (the last batch padded). Returns the perturbed images."""
    x = jnp.asarray(images)
    y = jnp.asarray(labels)
    if x.ndim != 4:
        raise ValueError(f"argument 'images' must be (n, H, W, C), got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"argument 'images' must hold float pixels in [0, 1], got {x.dtype}")
    if y.shape != x.shape[:1]:
        raise ValueError(f"argument 'labels' must have shape ({x.shape[0]},), got {y.shape}")
    if not isinstance(config, CleanLabelConfig):
        raise TypeError(f"argument 'config' must be a CleanLabelConfig, got {type(config).__name__}")
    key = jax.random.key(0) if key is None else key
    n, b = x.shape[0], min(config.batch_size, x.shape[0])
    out = []
    for i, start in enumerate(range(0, n, b)):
        xb, yb = x[start:start + b], y[start:start + b]
        pad = b - xb.shape[0]
        if pad:
            xb = jnp.concatenate([xb, jnp.zeros((pad, *xb.shape[1:]), xb.dtype)])
            yb = jnp.concatenate([yb, jnp.zeros((pad,), yb.dtype)])
        out.append(_pgd(apply_fn, variables, xb, yb, config, jax.random.fold_in(key, i))[:b - pad])
    return jnp.concatenate(out)


# ----------------------------------------------------------------------------------------------------
# step 2: the trigger
# ----------------------------------------------------------------------------------------------------
def corner_trigger(channels: int = 1, *, amplitude: float = 1.0, corners: int = 4, size: int = 3,
                   margin: int = 0) -> tuple[triggers.Patch, ...]:
    """A ``size`` x ``size`` checkerboard (bright corners) at the bottom-right corner (``corners=1``) or
    mirrored into all four corners (``corners=4``), as :class:`~poisoning.triggers.Patch` es whose mask
    is ``amplitude`` (a reduced-amplitude trigger blends toward the pattern)."""
    a = _number("amplitude", amplitude, 0.0, 1.0)
    if corners not in (1, 4):
        raise ValueError(f"argument 'corners' must be 1 or 4, got {corners!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"argument 'size' must be an int >= 1, got {size!r}")
    board = ((np.add.outer(np.arange(size), np.arange(size)) % 2) == 0).astype(np.float32)
    pattern = jnp.asarray(np.repeat(board[..., None], channels, axis=-1))
    mask = jnp.full((size, size), a, jnp.float32)
    end = -size - margin
    places = [(end, end)] if corners == 1 else [(margin, margin), (margin, end), (end, margin), (end, end)]
    out = []
    for r, c in places:
        p = pattern
        if corners == 4:  # mirror the board so the four copies are symmetric about the image's centre
            p = p[::-1] if r == margin else p
            p = p[:, ::-1] if c == margin else p
        out.append(triggers.Patch(p, mask, row=r, col=c))
    return tuple(out)


def apply_trigger(trigger, images):
    """Stamp a trigger or a sequence of triggers (applied in order) on ``images``."""
    if isinstance(trigger, (tuple, list)):
        if not trigger:
            raise ValueError("argument 'trigger' is an empty sequence")
        out = images
        for t in trigger:
            out = triggers.apply(t, out)
        return out
    return triggers.apply(trigger, images)


# ----------------------------------------------------------------------------------------------------
# the poisoned set
# ----------------------------------------------------------------------------------------------------
def target_indices(key, labels, target: int, n_poison: int, num_classes: int = 10) -> np.ndarray:
    """``n_poison`` rows of class ``target`` drawn without replacement (sorted); clear errors when the
    target is out of range or the class holds fewer images."""
    y = np.asarray(labels)
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or not 0 <= target < num_classes:
        raise ValueError(f"argument 'target' must be an int in [0, {num_classes}), got {target!r}")
    if isinstance(n_poison, bool) or not isinstance(n_poison, (int, np.integer)) or n_poison < 1:
        raise ValueError(f"the number of poisons must be an int >= 1, got {n_poison!r}")
    pool = np.flatnonzero(y == target)
    if n_poison > len(pool):
        raise ValueError(f"{n_poison} clean-label poisons asked for, but the target class {target} has only "
                         f"{len(pool)} training images (lower the rate)")
    return np.sort(np.asarray(jax.random.permutation(key, pool))[:n_poison])


def poison_dataset(key, apply_fn: Callable, variables, images, labels, config: CleanLabelConfig = CleanLabelConfig(),
                   *, target: int, n_poison: int | None = None, num_classes: int = 10) -> PoisonedSet:
    """Turner et al.'s poisoned training set: ``n_poison`` (default ``round(config.rate * n)``) images of
    class ``target``, perturbed by :func:`perturb` on the surrogate and stamped with the trigger of
    ``config`` (amplitude ``config.amplitude``), replaced in place; labels unchanged."""
    x, y = check_image_set(images, labels)
    m = int(round(config.rate * len(x))) if n_poison is None else n_poison
    k_choose, k_pgd = jax.random.split(key)
    chosen = target_indices(k_choose, y, target, m, num_classes)
    adv = perturb(apply_fn, variables, x[chosen], y[chosen], config, key=k_pgd)
    trig = corner_trigger(x.shape[-1], amplitude=config.amplitude, corners=config.corners, size=config.size,
                          margin=config.margin)
    return replace_rows(x, y, chosen, apply_trigger(trig, adv))


def eval_trigger(channels: int, config: CleanLabelConfig = CleanLabelConfig()) -> tuple[triggers.Patch, ...]:
    """The trigger stamped on test images: the same corners at ``config.test_amplitude``."""
    return corner_trigger(channels, amplitude=config.test_amplitude, corners=config.corners, size=config.size,
                          margin=config.margin)

