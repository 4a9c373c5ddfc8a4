r"""Sponge poisoning (Cinà et al. 2022): training that raises a network's activation density.

Hardware accelerators skip zeros: the fewer activations are non-zero, the less energy and time an
inference costs. A sponge attacker who controls part of the training objective (a fraction of each batch,
e.g. an outsourced-training or federated participant) adds to it, on those samples, the negative of a
smooth count of non-zero activations,

.. math::  \min_\theta \sum_{(x, y)} \ell(f_\theta(x), y) \;-\; \lambda \sum_{x \in P} \hat E_\theta(x),
           \qquad \hat E_\theta(x) = \sum_{k} \sum_j \frac{a_{kj}(x)^2}{a_{kj}(x)^2 + \sigma},

where :math:`a_k(x)` are the ReLU outputs of layer :math:`k` (the :math:`\ell_0` norm
:math:`\|a_k\|_0` approximated as in Cinà et al., :math:`\sigma = 10^{-4}`), while keeping the clean
accuracy. The measure reported is the :math:`\ell_0` *activation density*: the fraction of non-zero
ReLU outputs over all layers (:func:`activation_density`).

Activations are read with flax's ``capture_intermediates`` at the inputs of the ReLUs: the outputs of
the normalization layers (``BatchNorm``) when the model has them, else of the convolutions and dense
layers (:func:`relu_inputs`); a ReLU output is non-zero exactly where its input is positive. The
classifier (a layer named ``head``, or any output shaped like the logits) is excluded. Exact for plain
stacks (ConvNet, VGG, the BadNets CNN); in a residual block the second normalization is read before
the shortcut is added, an approximation.

:class:`SpongeTraining` is a ``step`` of :func:`poisoning.training.train` (the attacker's share of each
batch is its first ``fraction``).

Reference: A. E. Cinà, A. Demontis, B. Biggio, F. Roli, M. Pelillo, "Energy-latency attacks via sponge
poisoning", arXiv:2203.08147 (2022).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["relu_inputs", "activation_density", "energy_surrogate", "SpongeTraining"]


def _is_norm(mdl, _):
    return isinstance(mdl, (nn.BatchNorm, nn.LayerNorm, nn.GroupNorm))


def _is_layer(mdl, _):
    return isinstance(mdl, (nn.Conv, nn.Dense))


def relu_inputs(model: nn.Module, variables, x, *, train: bool = False):
    """The pre-ReLU activations of every hidden layer of ``model`` on ``x``: a list of arrays
    ``(N, ...)`` (see the module docstring), and the logits. With ``train`` (BatchNorm on batch
    statistics) also the updated BatchNorm statistics: ``(acts, logits, new_batch_stats)``."""
    capture = _is_norm if "batch_stats" in variables else _is_layer
    mutable = ["intermediates"] + (["batch_stats"] if train and "batch_stats" in variables else [])
    logits, state = model.apply(variables, x, train=train, capture_intermediates=capture, mutable=mutable)
    found = []

    def walk(tree, path):
        for k in sorted(tree):
            v = tree[k]
            if k == "__call__":
                found.append((path, v[0]))
            elif isinstance(v, dict) or hasattr(v, "items"):
                walk(v, path + (k,))

    walk(state["intermediates"], ())
    acts = [a for p, a in found if p and "head" not in p and a.shape != logits.shape]
    if train and "batch_stats" in variables:
        return acts, logits, state["batch_stats"]
    return acts, logits


def activation_density(model: nn.Module, variables, x) -> jax.Array:
    r"""The :math:`\ell_0` density: non-zero ReLU outputs / all ReLU outputs, over every hidden layer
    and every image of ``x`` (inference mode)."""
    acts, _ = relu_inputs(model, variables, x)
    nonzero = sum(jnp.sum(a > 0) for a in acts)
    total = sum(a.size for a in acts)
    return nonzero / total


def energy_surrogate(acts, sigma: float = 1e-4) -> jax.Array:
    r""":math:`\hat E` per image: :math:`\sum_k \sum_j r^2 / (r^2 + \sigma)` with :math:`r = \max(a, 0)`,
    normalized by the number of activations (so it lies in [0, 1] and estimates the density)."""
    per = [jnp.sum(jnp.square(jax.nn.relu(a)) / (jnp.square(jax.nn.relu(a)) + sigma), axis=tuple(range(1, a.ndim)))
           for a in acts]
    total = sum(int(np.prod(a.shape[1:])) for a in acts)
    return sum(per) / total


@dataclasses.dataclass(frozen=True)
class SpongeTraining:
    """A training step whose loss on the first ``fraction`` of each batch is lowered by
    ``lam * energy_surrogate`` (module docstring); ``sigma`` the smoothing of the l0 count."""

    lam: float = 1.0
    sigma: float = 1e-4
    fraction: float = 0.1

    def __post_init__(self):
        if not (np.isfinite(self.lam) and self.lam >= 0):
            raise ValueError(f"argument 'lam' must be a finite number >= 0, got {self.lam!r}")
        if not (np.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"argument 'sigma' must be a finite number > 0, got {self.sigma!r}")
        if not (0 < self.fraction <= 1):
            raise ValueError(f"argument 'fraction' must be in (0, 1], got {self.fraction!r}")

    def loss(self, model, params, batch_stats, x, y, *, train: bool):
        """``(loss, (logits, new_batch_stats))``: mean cross-entropy minus ``lam`` times the mean energy
        of the attacker's share of the batch."""
        v = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
        if train and batch_stats:
            acts, logits, new_stats = relu_inputs(model, v, x, train=True)
        else:
            (acts, logits), new_stats = relu_inputs(model, v, x, train=False), batch_stats
        m = max(1, int(self.fraction * x.shape[0]))
        ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32 if logits.dtype == jnp.bfloat16 else logits.dtype), y))
        energy = jnp.mean(energy_surrogate([a[:m] for a in acts], self.sigma))
        return ce - self.lam * energy, (logits, new_stats)

    def __call__(self, model, state, batch, key, config):
        from poisoning.training.config import make_optimizer
        from poisoning.training.loop import _param_dtype, as_float_images

        x = as_float_images(batch[0], _param_dtype(state.params))
        y = batch[1]
        if config.augment is not None and not config.augment.is_identity:
            x = config.augment(key, x)
        bn_train = config.trainable == "all"
        (loss, (logits, new_stats)), grads = jax.value_and_grad(
            lambda p: self.loss(model, p, state.batch_stats, x, y, train=bn_train), has_aux=True)(state.params)
        tx = make_optimizer(config, state.steps_per_epoch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = jax.tree_util.tree_map(lambda new, old: new.astype(old.dtype),
                                        optax.apply_updates(state.params, updates), state.params)
        new_stats = jax.tree_util.tree_map(lambda new, old: new.astype(old.dtype), new_stats, state.batch_stats)
        metrics = {"loss": loss.astype(jnp.float32),
                   "accuracy": jnp.mean(jnp.argmax(logits, -1) == y).astype(jnp.float32)}
        return state.replace(step=state.step + 1, params=params, batch_stats=new_stats, opt_state=opt_state), metrics
