r"""Adversarial poisoning (Geiping et al. 2021, "What doesn't kill you makes you robust(er)"): train on
poisons crafted on the fly.

At every step a fraction of the batch is turned into gradient-matching poisons against the *current*
model: the next images of the batch serve as targets with randomly drawn wrong labels, and ``steps``
signed-gradient steps of :func:`poisoning.attacks.geiping2021.gradient_matching_loss` inside the
:math:`\ell_\infty` ball of radius ``eps`` (and the pixel box) move the poisons; the model then takes its
ordinary step on the batch with the poisons in place (their labels unchanged). A network trained this way
has seen poisons that align with random adversarial gradients all along, and the real attacker's poisons
lose most of their grip (the paper's Table 1: Witches' Brew success falls from about 90 % to single
digits on CIFAR-10, at a few points of clean accuracy).

:class:`AdversarialPoisoning` is a ``step`` of :func:`poisoning.training.train`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["AdversarialPoisoning"]


@dataclasses.dataclass(frozen=True)
class AdversarialPoisoning:
    """A training step on a batch whose first ``fraction`` is poisoned on the fly (module docstring).

    Attributes:
      eps: the l_inf radius of the defender's poisons (pixels in [0, 1]).
      steps: signed-gradient crafting steps per batch; lr: their size (pixel units).
      fraction: the share of each batch replaced by poisons; as many of the following images are targets.
      num_classes: the number of classes (to draw the targets' wrong labels).
    """

    eps: float = 16 / 255
    steps: int = 3
    lr: float = 8 / 255
    fraction: float = 0.25
    num_classes: int = 10

    def __post_init__(self):
        if not (np.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"argument 'eps' must be a finite number > 0, got {self.eps!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"argument 'steps' must be an int >= 1, got {self.steps!r}")
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"argument 'lr' must be a finite number > 0, got {self.lr!r}")
        if not (0 < self.fraction <= 0.5):
            raise ValueError(f"argument 'fraction' must be in (0, 0.5], got {self.fraction!r}")
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(f"argument 'num_classes' must be an int >= 2, got {self.num_classes!r}")

    def poison_batch(self, model, state, x, y, key):
        """The batch with its first ``fraction`` replaced by poisons crafted against ``state``."""
        from poisoning.attacks.geiping2021 import gradient_matching_loss, parameter_gradient
        from poisoning.training.state import variables

        m = max(1, int(self.fraction * x.shape[0]))
        k_start, k_label = jax.random.split(key)
        v = jax.lax.stop_gradient(variables(state))

        def apply_fn(v_, x_):
            return model.apply(v_, x_, train=False)

        bases, labels, targets = x[:m], y[:m], x[m:2 * m]
        wrong = (y[m:2 * m] + jax.random.randint(k_label, (m,), 1, self.num_classes)) % self.num_classes
        target_grad = parameter_gradient(apply_fn, v, targets, wrong)
        eps = jnp.asarray(self.eps, x.dtype)

        def project(d):
            return jnp.clip(bases + jnp.clip(d, -eps, eps), 0.0, 1.0) - bases

        def body(_, d):
            g = jax.grad(lambda d_: gradient_matching_loss(apply_fn, v, bases + d_, labels, targets, wrong,
                                                           target_grad=target_grad))(d)
            return project(d - self.lr * jnp.sign(g))

        d0 = project(jax.random.uniform(k_start, bases.shape, x.dtype, -1.0, 1.0) * eps)
        delta = jax.lax.fori_loop(0, self.steps, body, d0)
        return x.at[:m].set(jax.lax.stop_gradient(bases + delta))

    def __call__(self, model, state, batch, key, config):
        from poisoning.training.loop import _param_dtype, as_float_images, train_step

        k_poison, k_step = jax.random.split(key)
        x = as_float_images(batch[0], _param_dtype(state.params))
        x = self.poison_batch(model, state, x, batch[1], k_poison)
        return train_step(model, state, (x, *batch[1:]), k_step, config)
