r"""Sleeper Agent (Souri et al. 2022): a hidden-trigger backdoor by gradient matching, from scratch.

The poisons are clean-label images of the target class, perturbed inside an :math:`\ell_\infty` ball;
the trigger never appears in the training set. Their training gradient is aligned with the gradient
that would teach the network "source image + trigger -> target class",

.. math::  \min_{\|\Delta\|_\infty \le \varepsilon}\; 1 - \cos\Big(
           \nabla_\theta \sum_{s \in S} \ell\big(f_\theta(T(s)), y_t\big),\;
           \nabla_\theta \sum_i \ell\big(f_\theta(x_i + \Delta_i), y_t\big)\Big),

with :math:`T` the trigger (:mod:`poisoning.triggers`) and :math:`S` source-class training images: the
objective of Witches' Brew (:func:`poisoning.attacks.geiping2021.gradient_matching_loss`) with the
patched sources as a batch of targets. Two additions of the paper make it work from scratch:

- **model selection**: among candidate crafting models, the one whose adversarial gradient is the
  largest (:func:`select_model`);
- **retraining during crafting**: the steps are cut into ``rounds``; after each round the crafting model
  is retrained on the training set with the current poisons (a caller's ``retrain(poisons)``), so the
  poisons are aligned with the networks they will actually meet.

Success (at test time): the fraction of triggered source-class images the victim classifies as the
target class.

Reference: H. Souri, L. Fowl, R. Chellappa, M. Goldblum, T. Goldstein, "Sleeper Agent: scalable hidden
trigger backdoors for neural networks trained from scratch", NeurIPS 2022.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from poisoning import triggers
from poisoning.attacks import geiping2021 as wb

__all__ = ["select_model", "craft"]


# one compilation for every round after the first (the first starts at random, the others from poisons)
_craft = jax.jit(wb.craft, static_argnums=(0, 7))


def select_model(apply_fn: Callable, candidates: Sequence, sources, trigger, target_class: int) -> int:
    r"""The index of the candidate whose adversarial gradient
    :math:`\|\nabla_\theta \sum_s \ell(f_\theta(T(s)), y_t)\|` is the largest (the paper's selection)."""
    patched = triggers.apply(trigger, sources)
    y = jnp.full((patched.shape[0],), target_class, jnp.int32)
    norms = [float(optax.tree_utils.tree_norm(wb.parameter_gradient(apply_fn, v, patched, y))) for v in candidates]
    return max(range(len(norms)), key=norms.__getitem__)


def craft(apply_fn: Callable, variables, bases, sources, trigger, target_class: int, key,
          config: wb.BrewConfig = wb.BrewConfig(), *, rounds: int = 1, retrain: Callable | None = None) -> wb.Brewed:
    """Sleeper Agent poisons from ``bases`` (images of ``target_class``, labels unchanged) for the trigger
    ``trigger`` on ``sources`` (source-class images). ``config.steps`` are split over ``rounds``; between
    rounds ``retrain(poisons) -> variables`` gives the new crafting model (``None``: keep it). Each
    round starts from the previous poisons. Returns :class:`~poisoning.attacks.geiping2021.Brewed`."""
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"argument 'rounds' must be an int >= 1, got {rounds!r}")
    if rounds > 1 and retrain is None:
        raise ValueError("argument 'retrain' is required with rounds > 1")
    if config.steps < rounds:
        raise ValueError(f"config.steps ({config.steps}) must be at least 'rounds' ({rounds})")
    bases = jnp.asarray(bases)
    patched = triggers.apply(trigger, jnp.asarray(sources, bases.dtype))
    y_adv = jnp.full((patched.shape[0],), target_class, jnp.int32)
    labels = jnp.full((bases.shape[0],), target_class, jnp.int32)
    per_round = dataclasses.replace(config, steps=config.steps // rounds)
    current, out, histories = None, None, []
    for r in range(rounds):
        out = _craft(apply_fn, variables, bases, labels, patched, y_adv, jax.random.fold_in(key, r), per_round,
                     init=current)
        current = out.poisons
        histories.append(out.history)
        if r + 1 < rounds:
            variables = retrain(current)
    return out._replace(history=jnp.concatenate(histories))
