r"""Gaussian data augmentation (randomized smoothing of training) as a poisoning baseline.

Every training image is replaced by :math:`\mathrm{clip}(x + \mathcal N(0, \sigma^2 I), 0, 1)` afresh at
each step, after the configured augmentation. Small perturbations crafted to steer the training gradient
(Witches' Brew, MetaPoison) are drowned when :math:`\sigma` is large against their :math:`\varepsilon`;
Geiping et al. (2021, "What doesn't kill you") list it among the data-augmentation baselines of their
adversarial-poisoning defense. It is also the training of randomized smoothing (Cohen et al. 2019).

:class:`GaussianAugmentation` is a ``step`` of :func:`poisoning.training.train`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["GaussianAugmentation"]


@dataclasses.dataclass(frozen=True)
class GaussianAugmentation:
    """A training step on ``clip(x + N(0, std^2), 0, 1)``; ``std`` in pixel units."""

    std: float = 0.1

    def __post_init__(self):
        if not (np.isfinite(self.std) and self.std > 0):
            raise ValueError(f"argument 'std' must be a finite number > 0, got {self.std!r}")

    def __call__(self, model, state, batch, key, config):
        from poisoning.training.loop import _param_dtype, as_float_images, train_step

        k_noise, k_step = jax.random.split(key)
        x = as_float_images(batch[0], _param_dtype(state.params))
        if config.augment is not None and not config.augment.is_identity:
            x = config.augment(k_step, x)
            config = config.replace(augment=None)
        x = jnp.clip(x + self.std * jax.random.normal(k_noise, x.shape, x.dtype), 0.0, 1.0)
        return train_step(model, state, (x, *batch[1:]), k_step, config)
