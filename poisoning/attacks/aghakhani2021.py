r"""Bullseye Polytope (Aghakhani et al. 2021): the poisons' feature *mean* on the target.

Convex Polytope with the coefficients fixed to :math:`1/k` puts the target at the centre of the
polytope rather than anywhere inside it, which transfers better and needs no inner problem:

.. math::  \min_{x \in \Phi}\; \frac{\|\phi(t) - \tfrac1k \sum_j \phi(x_j)\|_2}{\|\phi(t)\|_2}.

*Multi-draw* (the paper's BP-kx): the loss is averaged over several dropout draws of the substitute
network, so the poisons work for a family of sub-networks. Our models have no dropout layer, so
:func:`dropout_draws` applies fixed, keyed dropout masks (rate ``rate``, inverted scaling) to the
penultimate features: ``draws`` members, summed by :class:`~poisoning.transfer.FeatureSpaceAttack` like
an ensemble. Ensembles of networks: a ``features`` returning a tuple.

Reference: H. Aghakhani, D. Meng, Y.-X. Wang, C. Kruegel, G. Vigna, "Bullseye Polytope: a scalable
clean-label poisoning attack with improved transferability", IEEE EuroS&P 2021.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from poisoning.transfer import Crafted, FeatureSpaceAttack, feature_members

__all__ = ["bullseye_loss", "dropout_draws", "attack", "craft"]


def bullseye_loss(F_poison, f_target, response=()):
    r""":math:`\|\phi(t) - \mathrm{mean}_j\,\phi(x_j)\|_2 / \|\phi(t)\|_2`."""
    resid = f_target - jnp.mean(F_poison, axis=0)
    return jnp.sqrt(jnp.sum(resid * resid)) / jnp.sqrt(jnp.sum(f_target * f_target))


def dropout_draws(features: Callable, *, draws: int, rate: float, key) -> Callable:
    """``features`` followed by ``draws`` fixed dropout masks (one member per draw and member of
    ``features``): the multi-draw variant's sub-networks. ``key`` fixes the masks (same key, same
    masks); the masks are drawn once for the feature width, shared by every image."""
    if int(draws) < 1:
        raise ValueError(f"argument 'draws' must be >= 1, got {draws!r}")
    if not 0.0 <= float(rate) < 1.0:
        raise ValueError(f"argument 'rate' must be in [0, 1), got {rate!r}")

    def multi(x):
        out = []
        for i, F in enumerate(feature_members(features(x))):
            keep = jax.random.bernoulli(jax.random.fold_in(key, i), 1.0 - rate, (int(draws), F.shape[-1]))
            masks = keep.astype(F.dtype) / (1.0 - rate)
            out.extend(F * masks[d] for d in range(int(draws)))
        return tuple(out)

    return multi


def attack(*, eps: float = 8 / 255, lr: float = 0.01, steps: int = 200) -> FeatureSpaceAttack:
    """Bullseye Polytope as a :class:`~poisoning.transfer.FeatureSpaceAttack` (Adam on the poisons)."""
    return FeatureSpaceAttack(loss=bullseye_loss, eps=eps, step=optax.adam(lr), steps=steps, name="bullseye-polytope")


def craft(features: Callable, bases, target, *, draws: int = 1, rate: float = 0.2, key=None, **kw) -> Crafted:
    """Craft ``k`` poisons whose mean feature is the target's; ``draws`` > 1: multi-draw with feature
    dropout (``key`` default ``PRNGKey(0)``); ``kw`` go to :func:`attack`. Pure."""
    if draws > 1:
        features = dropout_draws(features, draws=draws, rate=rate,
                                 key=jax.random.PRNGKey(0) if key is None else key)
    return attack(**kw).craft(features, bases, target)
