r"""DP-SGD (Abadi et al. 2016) as a training step, and the privacy it buys, by Rényi accounting.

Each step clips every example's gradient to norm :math:`C` and adds Gaussian noise of standard deviation
:math:`\sigma C` to their sum,

.. math::  \tilde g = \frac1B\Big(\sum_{i \in \text{batch}} g_i \min\big(1, C/\|g_i\|\big)
           + \mathcal N(0, \sigma^2 C^2 I)\Big),

then hands :math:`\tilde g` to the configured optimizer (:func:`~poisoning.training.make_optimizer`).
As a poisoning defense it bounds how much any ``k`` training points can move the model (group privacy),
at a cost in clean accuracy (Ma, Zhu, Hsu, IJCAI 2019; Geiping et al. 2021 test it against Witches' Brew).

:class:`DPSGD` is a ``step`` of :func:`poisoning.training.train`; the model must not have BatchNorm
(a per-example gradient through batch statistics is not defined; use e.g. ``ConvNet(batch_norm=False)``).

:func:`dp_epsilon` gives the :math:`(\varepsilon, \delta)` of ``steps`` such steps at sampling rate
:math:`q = B/n`, by the Rényi-DP of the sampled Gaussian mechanism at integer orders
(Mironov, Talwar, Zhang 2019, §3.3),

.. math::  \varepsilon_\alpha = \frac{1}{\alpha - 1}\log \sum_{k=0}^{\alpha} \binom{\alpha}{k}
           (1-q)^{\alpha-k} q^k \exp\Big(\frac{k^2 - k}{2\sigma^2}\Big),

composed over the steps (:math:`T\varepsilon_\alpha`) and converted with Balle et al. (2020, Thm. 21):
:math:`\varepsilon = \min_\alpha T\varepsilon_\alpha + \log\frac{\alpha-1}{\alpha} - \frac{\log\delta +
\log\alpha}{\alpha - 1}`. Training here shuffles and cuts fixed-size batches, while the analysis assumes
Poisson sampling at rate :math:`q`; reporting the Poisson figure for shuffled batches is the common
practice (and is what Opacus and TF-Privacy report), not a proof.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy.special import gammaln, logsumexp

__all__ = ["DPSGD", "rdp_sampled_gaussian", "dp_epsilon"]


@dataclasses.dataclass(frozen=True)
class DPSGD:
    """A DP-SGD training step (module docstring): per-example clipping to ``l2_clip``, Gaussian noise
    of ``noise_multiplier * l2_clip``. Call it as ``step(model, state, batch, key, config)``."""

    l2_clip: float = 1.0
    noise_multiplier: float = 1.0

    def __post_init__(self):
        if not (np.isfinite(self.l2_clip) and self.l2_clip > 0):
            raise ValueError(f"argument 'l2_clip' must be a finite number > 0, got {self.l2_clip!r}")
        if not (np.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ValueError(f"argument 'noise_multiplier' must be a finite number >= 0, got {self.noise_multiplier!r}")

    def __call__(self, model, state, batch, key, config):
        from poisoning.training.config import make_optimizer
        from poisoning.training.loop import _param_dtype, as_float_images, batch_loss

        if jax.tree_util.tree_leaves(state.batch_stats):
            raise ValueError("DPSGD needs a model without BatchNorm (per-example gradients through batch "
                             "statistics are not defined); e.g. ConvNet(batch_norm=False)")
        x, y = batch[0], batch[1]
        w = batch[2] if len(batch) == 3 else jnp.ones(y.shape, _param_dtype(state.params))
        k_aug, k_noise = jax.random.split(key)
        x = as_float_images(x, _param_dtype(state.params))
        if config.augment is not None and not config.augment.is_identity:
            x = config.augment(k_aug, x)

        def one(params, xi, yi, wi):
            loss, (logits, _) = batch_loss(model, params, state.batch_stats, xi[None], yi[None], wi[None],
                                           train=False, config=config)
            return loss, logits[0]

        (losses, logits), grads = jax.vmap(jax.value_and_grad(one, has_aux=True), in_axes=(None, 0, 0, 0))(
            state.params, x, y, w)
        norms = jax.vmap(optax.tree_utils.tree_norm)(grads)
        scale = jnp.minimum(1.0, self.l2_clip / jnp.maximum(norms, jnp.finfo(norms.dtype).tiny))
        summed = jax.tree_util.tree_map(lambda g: jnp.tensordot(scale.astype(g.dtype), g, 1), grads)
        leaves, treedef = jax.tree_util.tree_flatten(summed)
        keys = jax.random.split(k_noise, len(leaves))
        std = self.noise_multiplier * self.l2_clip
        noisy = [(g + std * jax.random.normal(k, g.shape, g.dtype)) / y.shape[0] for g, k in zip(leaves, keys)]
        grad = jax.tree_util.tree_unflatten(treedef, noisy)
        tx = make_optimizer(config, state.steps_per_epoch)
        updates, opt_state = tx.update(grad, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        params = jax.tree_util.tree_map(lambda new, old: new.astype(old.dtype), params, state.params)
        metrics = {"loss": jnp.mean(losses).astype(jnp.float32),
                   "accuracy": jnp.mean(jnp.argmax(logits, -1) == y).astype(jnp.float32)}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def _check(q, sigma):
    if not (0 < q <= 1):
        raise ValueError(f"argument 'sample_rate' must be in (0, 1], got {q!r}")
    if not (np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"argument 'noise_multiplier' must be a finite number > 0, got {sigma!r}")


def rdp_sampled_gaussian(sample_rate: float, noise_multiplier: float, orders) -> np.ndarray:
    r"""Rényi DP :math:`\varepsilon_\alpha` of one step of the sampled Gaussian mechanism at the integer
    ``orders`` :math:`\alpha \ge 2` (module docstring), computed in log space."""
    q, sigma = float(sample_rate), float(noise_multiplier)
    _check(q, sigma)
    orders = np.asarray(orders)
    if orders.ndim != 1 or np.any(orders < 2) or np.any(orders != np.round(orders)):
        raise ValueError(f"argument 'orders' must be integers >= 2, got {orders!r}")
    out = []
    for a in orders.astype(int):
        if q == 1.0:
            out.append(a / (2 * sigma ** 2))
            continue
        k = np.arange(a + 1)
        log_terms = (gammaln(a + 1) - gammaln(k + 1) - gammaln(a - k + 1) + (a - k) * np.log1p(-q)
                     + k * np.log(q) + (k * k - k) / (2 * sigma ** 2))
        out.append(logsumexp(log_terms) / (a - 1))
    return np.asarray(out)


def dp_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
               orders=tuple(range(2, 257))) -> tuple[float, int]:
    r"""``(epsilon, order)``: the :math:`\varepsilon` of ``steps`` DP-SGD steps at :math:`\delta` = ``delta``
    (the best of ``orders``), by Rényi composition and the conversion of Balle et al. (2020)."""
    if not (0 < delta < 1):
        raise ValueError(f"argument 'delta' must be in (0, 1), got {delta!r}")
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"argument 'steps' must be an int >= 1, got {steps!r}")
    if noise_multiplier == 0:
        return float("inf"), 0
    orders = np.asarray(orders)
    rdp = steps * rdp_sampled_gaussian(sample_rate, noise_multiplier, orders)
    eps = rdp + np.log1p(-1.0 / orders) - (np.log(delta) + np.log(orders)) / (orders - 1)
    i = int(np.nanargmin(eps))
    return float(max(eps[i], 0.0)), int(orders[i])
