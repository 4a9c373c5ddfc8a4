r"""The hidden-trigger backdoor of Saha, Subramanya & Pirsiavash (AAAI 2020): clean-label poisons whose
features collide with *patched* source images; the trigger never appears in the training set.

The attacker holds a feature extractor :math:`\phi` (the penultimate layer of the victim's pretrained
network), images :math:`t_k` of the target class (the bases; the poisons keep their correct label) and
images :math:`s_j` of the source class(es), on which a patch trigger is pasted at a random location,
:math:`\tilde s_j`. Each poison stays within :math:`\varepsilon` of its base and moves its features
onto those of a patched source:

.. math::  \min_{z}\; \sum_k \big\| \phi(z_k) - \phi(\tilde s_{a(k)}) \big\|_2^2 \quad \text{s.t.}\quad
           \|z_k - t_k\|_\infty \le \varepsilon,\; 0 \le z_k \le 1,

where the pairing :math:`a(k)` is recomputed at every step (Saha et al., Algorithm 1): a fresh batch of
source images is patched (new random locations), and each poison is paired with the patched source
*nearest to it in feature space*, :math:`a(k) = \arg\min_j \|\phi(z_k) - \phi(\tilde s_j)\|`
(:func:`pair_nearest`; the paper's pairing is one-to-one, here several poisons may share a source, which
keeps the step a ``jit``-compiled array operation). The step is Adam on the collision loss (learning
rate ``lr`` in pixel units, cosine-decayed), projected onto the box of each base; the whole loop is one
``lax.scan`` (:func:`craft`). :func:`collision_gradient` is the gradient it uses, checked against
finite differences in the tests.

A victim fine-tuned on the poisoned set (the paper's transfer setting: the pretrained network's last
layer retrained on the target and source classes, the features frozen) learns to call the region of
feature space where patched sources land "target"; at test time a source image with the patch (at a
random location) is classified as the target. Success: the fraction of patched source test images
classified as the target class (:func:`patch_at_random`).

Defaults follow the paper: :math:`\varepsilon = 16/255`, a 30x30 patch on 224x224 images in the paper
(here any :class:`poisoning.triggers.Patch`), random locations at crafting and test time.

Reference: A. Saha, A. Subramanya, H. Pirsiavash, *Hidden Trigger Backdoor Attacks*, AAAI 2020.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from poisoning import triggers
from poisoning.attacks.gu2017 import PoisonedSet, check_image_set, replace_rows
from poisoning.attacks.turner2019 import target_indices

__all__ = ["HiddenTriggerConfig", "HiddenTriggerPoisons", "patch_at", "patch_at_random", "pair_nearest",
           "collision_loss", "collision_gradient", "craft", "poison_dataset", "source_indices"]


@dataclasses.dataclass(frozen=True)
class HiddenTriggerConfig:
    """Settings of :func:`craft` (frozen and hashable: static under ``jit``).

    Attributes:
      eps: the :math:`\\ell_\\infty` radius around each base (16/255 in the paper).
      steps: optimization steps; lr: Adam's step size in pixel units (cosine-decayed to 0).
      sources_per_step: patched sources drawn per step (``None``: as many as there are poisons, capped
        by the number of source images).
      random_location: paste the patch at a random location (the paper), else where the patch says.
      rate: the poisoned fraction of the training set (all drawn from the target class).
    """

    eps: float = 16 / 255
    steps: int = 500
    lr: float = 0.01
    sources_per_step: int | None = None
    random_location: bool = True
    rate: float = 0.1

    def __post_init__(self):
        for name, hi in (("eps", 1.0), ("lr", 1.0), ("rate", 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not math.isfinite(v) \
                    or not 0 < v <= hi:
                raise ValueError(f"argument {name!r} must be a number in (0, {hi}], got {v!r}")
        for name in ("steps",) + (("sources_per_step",) if self.sources_per_step is not None else ()):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"argument {name!r} must be an integer >= 1, got {v!r}")


class HiddenTriggerPoisons(NamedTuple):
    """Output of :func:`craft`: the ``poisons`` (inside the budget), ``history`` (the mean collision loss
    per poison at every step) and ``loss_start`` / ``loss`` (at the bases / at the poisons, against one
    last batch of patched sources)."""

    poisons: jax.Array
    history: jax.Array
    loss_start: jax.Array
    loss: jax.Array


# ----------------------------------------------------------------------------------------------------
# the trigger at random locations
# ----------------------------------------------------------------------------------------------------
def _patch_arrays(patch: triggers.Patch, dtype, channels: int):
    if not isinstance(patch, triggers.Patch):
        raise TypeError(f"argument 'patch' must be a poisoning.triggers.Patch, got {type(patch).__name__}")
    p = jnp.asarray(patch.pattern, dtype)
    p = p[..., None] if p.ndim == 2 else p
    if p.shape[-1] not in (1, channels):
        raise ValueError(f"the patch has {p.shape[-1]} channels but the images have {channels}")
    p = jnp.broadcast_to(p, (*p.shape[:2], channels))
    m = jnp.asarray(patch.mask, dtype)
    if m.shape != p.shape[:2]:
        raise ValueError(f"the patch's mask must have shape {p.shape[:2]}, got {m.shape}")
    return p, m[..., None]


def patch_at(patch: triggers.Patch, images, rows, cols):
    r"""Paste ``patch`` on image ``i`` with its top-left corner at ``(rows[i], cols[i])`` (traced ints):
    :math:`x' = (1 - M) \odot x + M \odot P` inside the window. ``images`` ``(n, H, W, C)``."""
    x = jnp.asarray(images)
    if x.ndim != 4:
        raise ValueError(f"argument 'images' must be (n, H, W, C), got shape {x.shape}")
    p, m = _patch_arrays(patch, x.dtype, x.shape[-1])
    h, w, C = p.shape

    def one(img, r, c):
        start = (r, c, jnp.zeros((), r.dtype))
        win = jax.lax.dynamic_slice(img, start, (h, w, C))
        return jax.lax.dynamic_update_slice(img, (1 - m) * win + m * p, start)

    return jax.vmap(one)(x, jnp.asarray(rows, jnp.int32), jnp.asarray(cols, jnp.int32))


def patch_at_random(key, patch: triggers.Patch, images):
    """Paste ``patch`` at a uniformly random location of every image (the paper's trigger placement)."""
    x = jnp.asarray(images)
    if x.ndim != 4:
        raise ValueError(f"argument 'images' must be (n, H, W, C), got shape {x.shape}")
    h, w = jnp.shape(patch.mask)
    H, W = x.shape[1:3]
    if h > H or w > W:
        raise ValueError(f"the patch ({h}x{w}) does not fit in images of {H}x{W}")
    kr, kc = jax.random.split(key)
    rows = jax.random.randint(kr, (x.shape[0],), 0, H - h + 1)
    cols = jax.random.randint(kc, (x.shape[0],), 0, W - w + 1)
    return patch_at(patch, x, rows, cols)


# ----------------------------------------------------------------------------------------------------
# the collision objective
# ----------------------------------------------------------------------------------------------------
def _sq_distances(A, B):
    return jnp.sum(A * A, 1)[:, None] + jnp.sum(B * B, 1)[None, :] - 2.0 * A @ B.T


def pair_nearest(F_poison, F_patched):
    """For each poison feature row, the index of the nearest patched-source feature row (Euclidean)."""
    return jnp.argmin(_sq_distances(F_poison, F_patched), axis=1)


def collision_loss(feature_fn: Callable, variables, poisons, patched):
    r""":math:`\sum_k \|\phi(z_k) - \phi(\tilde s_{a(k)})\|_2^2` with :math:`a` = :func:`pair_nearest`
    (the pairing and the patched sources' features are constants of the step).
    ``feature_fn(variables, x) -> (n, d)``."""
    Fz = feature_fn(variables, poisons)
    Fs = jax.lax.stop_gradient(feature_fn(variables, patched))
    a = jax.lax.stop_gradient(pair_nearest(Fz, Fs))
    return jnp.sum(jnp.square(Fz - Fs[a]))


def collision_gradient(feature_fn: Callable, variables, poisons, patched):
    """:math:`\\nabla_z` of :func:`collision_loss`: the gradient :func:`craft` steps along."""
    return jax.grad(collision_loss, argnums=2)(feature_fn, variables, poisons, patched)


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def _craft(feature_fn, variables, bases, sources, patch, config: HiddenTriggerConfig, m: int, key):
    eps = jnp.asarray(config.eps, bases.dtype)
    lo, hi = jnp.maximum(bases - eps, 0.0), jnp.minimum(bases + eps, 1.0)
    opt = optax.adam(optax.cosine_decay_schedule(config.lr, config.steps))

    def patched_batch(k):
        ks, kl = jax.random.split(k)
        idx = jax.random.choice(ks, sources.shape[0], (m,), replace=False)
        s = sources[idx]
        return patch_at_random(kl, patch, s) if config.random_location else triggers.apply(patch, s)

    def step(carry, t):
        z, st = carry
        patched = patched_batch(jax.random.fold_in(key, t))
        loss, g = jax.value_and_grad(collision_loss, argnums=2)(feature_fn, variables, z, patched)
        upd, st = opt.update(g, st, z)
        return (jnp.clip(z + upd, lo, hi), st), loss / bases.shape[0]

    (z, _), hist = jax.lax.scan(step, (bases, opt.init(bases)), jnp.arange(config.steps))
    last = patched_batch(jax.random.fold_in(key, config.steps))
    n = bases.shape[0]
    return HiddenTriggerPoisons(z, hist, collision_loss(feature_fn, variables, bases, last) / n,
                                collision_loss(feature_fn, variables, z, last) / n)


def craft(feature_fn: Callable, variables, bases, sources, patch: triggers.Patch, key,
          config: HiddenTriggerConfig = HiddenTriggerConfig()) -> HiddenTriggerPoisons:
    """Hidden-trigger poisons from ``bases`` (target-class images ``(k, H, W, C)``) against the patched
    ``sources`` (source-class images) on the features ``feature_fn(variables, x) -> (n, d)`` (module
    docstring). Pure and jitted (``feature_fn`` and ``config`` are static)."""
    bases = jnp.asarray(bases)
    sources = jnp.asarray(sources, bases.dtype)
    if bases.ndim != 4 or sources.ndim != 4 or bases.shape[1:] != sources.shape[1:]:
        raise ValueError(f"arguments 'bases' and 'sources' must be (n, H, W, C) images of one shape, got "
                         f"{bases.shape} and {sources.shape}")
    if not jnp.issubdtype(bases.dtype, jnp.floating):
        raise TypeError(f"argument 'bases' must hold float pixels in [0, 1], got {bases.dtype}")
    if not isinstance(config, HiddenTriggerConfig):
        raise TypeError(f"argument 'config' must be a HiddenTriggerConfig, got {type(config).__name__}")
    _patch_arrays(patch, bases.dtype, bases.shape[-1])
    m = min(config.sources_per_step or bases.shape[0], sources.shape[0])
    return _craft(feature_fn, variables, bases, sources, patch, config, int(m), key)


# ----------------------------------------------------------------------------------------------------
# the poisoned set
# ----------------------------------------------------------------------------------------------------
def source_indices(labels, source, target: int, num_classes: int = 10) -> np.ndarray:
    """Rows of the source class(es) ``source`` (an int or a sequence; ``None``: every class but the target)."""
    y = np.asarray(labels)
    if source is None:
        src = [c for c in range(num_classes) if c != target]
    else:
        src = [int(s) for s in np.atleast_1d(source)]
    bad = [s for s in src if not 0 <= s < num_classes or s == target]
    if bad:
        raise ValueError(f"argument 'source' must hold classes in [0, {num_classes}) other than the target "
                         f"{target}, got {bad}")
    idx = np.flatnonzero(np.isin(y, src))
    if not len(idx):
        raise ValueError(f"no training image of the source class(es) {src}")
    return idx


def poison_dataset(key, feature_fn: Callable, variables, images, labels, patch: triggers.Patch,
                   config: HiddenTriggerConfig = HiddenTriggerConfig(), *, target: int, source=None,
                   n_poison: int | None = None, num_classes: int = 10) -> tuple[PoisonedSet, HiddenTriggerPoisons]:
    """Saha et al.'s poisoned training set: ``n_poison`` (default ``round(config.rate * n)``) images of
    class ``target`` replaced in place by :func:`craft` ed poisons against the patched images of
    ``source`` (default: every other class) of the same training set; labels unchanged, no trigger in
    the set. Returns the set and the crafting record."""
    x, y = check_image_set(images, labels)
    m = int(round(config.rate * len(x))) if n_poison is None else n_poison
    k_choose, k_craft = jax.random.split(key)
    chosen = target_indices(k_choose, y, target, m, num_classes)
    src = source_indices(y, source, target, num_classes)
    out = craft(feature_fn, variables, x[chosen], x[src], patch, k_craft, config)
    return replace_rows(x, y, chosen, out.poisons), out
