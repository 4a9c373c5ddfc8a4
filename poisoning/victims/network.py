r"""A flax network trained by optax for :math:`T` steps, as a differentiable victim.

The victim is the training run itself: from a fixed initialization :math:`\theta_0` (``seed``),
:math:`T` steps of gradient descent / heavy-ball momentum (or any optax optimizer) on

.. math::  \mathcal L(\theta; X, y, s) = \frac{1}{\sum_i s_i}\sum_i s_i\,\mathrm{CE}\big(y_i, f_\theta(x_i)\big)
           + \frac{\text{wd}}{2}\|\theta\|^2,

full batch or over mini-batches in a fixed order (``batch_size``; the order is a function of ``seed``
so the forward pass, rematerialization and reversal replay it identically). The trained
:math:`\theta_T` is differentiated *through* the steps (:class:`bilevel.unroll.Unrolled`, with
rematerialization ``checkpoint``) or by *reversing* them (:class:`bilevel.unroll.BackGradient`, no
stored trajectory; exact for momentum in fixed-point arithmetic). This is the "door" through which the
deep-network attacks walk: any objective written against the victim record (``victim.loss``,
``victim.decision``) runs unchanged against a network.

Inputs may be images: ``X`` of shape ``(n, ...)`` is fed to the module as it is.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax

from bilevel.solvers import GradientDescent, OptaxSolver
from bilevel.unroll import BackGradient, MiniBatches, Unrolled
from poisoning.victims.base import Victim
from poisoning.victims.linear import smooth_victim

__all__ = ["network"]


@functools.lru_cache(maxsize=None)
def network(module: Any, n_classes: int, *, steps: int = 50, learning_rate: float = 0.1,
            momentum: float | None = None, optimizer: optax.GradientTransformation | None = None,
            batch_size: int | None = None, weight_decay: float = 0.0,
            reverse: Literal["unrolled", "backgradient"] = "unrolled", checkpoint=None, seed: int = 0) -> Victim:
    """A flax ``module`` (``module.apply(params, X) -> (n, n_classes)`` logits) trained for ``steps``
    steps; labels ``0..K-1``.

    Args:
      steps: ``T``.
      learning_rate, momentum: gradient descent / heavy ball (``optax.sgd``), used unless ``optimizer``
        (any optax transformation; ``reverse="unrolled"`` only) is given.
      batch_size: mini-batch size (default: full batch).
      weight_decay: L2 on all parameters.
      reverse: ``"unrolled"`` (reverse and forward mode, memory ``O(T)`` or less with ``checkpoint``)
        or ``"backgradient"`` (reverse mode, no trajectory stored).
      seed: the initialization and the mini-batch order.
    """
    K = int(n_classes)
    if reverse not in ("unrolled", "backgradient"):
        raise ValueError(f"argument 'reverse' must be 'unrolled' or 'backgradient', got {reverse!r}")
    if optimizer is not None and reverse == "backgradient":
        raise ValueError("argument 'optimizer': back-gradient reverses gradient descent / momentum only")
    wd = float(weight_decay)
    key = jax.random.PRNGKey(int(seed))

    def init(n, d, dtype):
        shape = (1,) + (tuple(d) if isinstance(d, tuple) else (int(d),))
        params = module.init(key, jnp.zeros(shape, dtype))
        return jax.tree_util.tree_map(lambda a: a.astype(dtype), params)

    def logits(params, X):
        return module.apply(params, X)

    def per_example(params, X, y):
        return optax.losses.softmax_cross_entropy_with_integer_labels(logits(params, X), y)

    def loss(params, y, X, sw):
        data = jnp.sum(sw * per_example(params, X, y)) / jnp.sum(sw)
        if wd == 0.0:
            return data
        return data + 0.5 * wd * sum(jnp.sum(p**2) for p in jax.tree_util.tree_leaves(params))

    batches = None if batch_size is None else MiniBatches(int(batch_size), key=int(seed), argnums=(0, 1, 2))
    if optimizer is not None:
        solver = OptaxSolver(optimizer=optimizer, maxiter=int(steps), tol=1e-30, on_failure="ignore")
    else:
        solver = GradientDescent(learning_rate=float(learning_rate), momentum=momentum, maxiter=int(steps),
                                 tol=1e-30, on_failure="ignore")
    if reverse == "unrolled":
        method = Unrolled(steps=int(steps), checkpoint=checkpoint, batches=batches)
    else:
        method = BackGradient(steps=int(steps), batches=batches, on_failure="ignore")
    name = f"network({type(module).__name__}, K={K}, T={int(steps)}, {reverse})"
    return smooth_victim(name, "multiclass", K, loss, per_example, logits, init, solver=solver, method=method)
