r"""Transfer learning: penultimate features, a convex head on frozen features, end-to-end fine-tuning.

Frozen-feature transfer (the "linear probe" of the poisoning benchmark of Schwarzschild et al. 2021)
trains only the last layer on the features :math:`\phi(x_i)` of a fixed network. That is a convex
problem, multinomial logistic regression,

.. math::  \min_{W, b}\; \frac1n \sum_i -\log \mathrm{softmax}(W^\top \phi(x_i) + b)_{y_i}
           + \frac{\lambda}{2}\|W\|_F^2 ,

which :func:`fit_linear_head` solves with the bilevel core (:func:`bilevel.minimize`, L-BFGS, the
loss :func:`bilevel.problems.multiclass_logistic_loss`): its solution is a pure function of the
features, differentiable in them by the implicit function theorem (and therefore, through
:func:`extract_features`, in the images), which is what feature-space poisoning attacks need.
:func:`head_params` turns the solution into the model's ``params["head"]``
(:func:`~poisoning.training.with_head` puts it in a state).

Training the head by SGD with augmentation instead (the benchmark's recipe) is
``TrainConfig(trainable="head")``; end-to-end fine-tuning is :func:`finetune` with
``trainable="all"``: a pretrained state, a new head, a fresh optimizer, :func:`~poisoning.training.train`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from poisoning.training.config import TrainConfig
from poisoning.training.loop import predict, train
from poisoning.training.state import TrainState, with_head

__all__ = ["extract_features", "head_loss", "fit_linear_head", "head_params", "finetune"]


def extract_features(model: nn.Module, state, x, *, batch_size: int = 500):
    """Penultimate features ``(n, d)`` of images ``x`` (inference mode; differentiable in ``x``)."""
    return predict(model, state, x, batch_size=batch_size, features=True)


def head_loss(head, reg, features, labels, weights=None):
    """The convex objective of the head ``{"w": (d, k), "b": (k,)}`` on fixed ``features`` (module
    docstring): :func:`bilevel.problems.multiclass_logistic_loss` (``reg`` scalar or per feature)."""
    from bilevel.problems import multiclass_logistic_loss

    return multiclass_logistic_loss(head, reg, features, labels, weights)


def fit_linear_head(
    features,
    labels,
    num_classes: int,
    *,
    reg: float = 1e-3,
    weights=None,
    solver=None,
    method=None,
    init=None,
):
    """The minimizer ``{"w": (d, k), "b": (k,)}`` of :func:`head_loss`, differentiable in ``features``
    (and ``reg``, ``weights``) through :func:`bilevel.minimize`.

    Args:
      features: ``(n, d)`` float features (e.g. from :func:`extract_features`).
      labels: ``(n,)`` integer labels in ``[0, num_classes)``.
      reg: L2 weight :math:`\\lambda` (> 0 makes the problem strongly convex in ``w``).
      solver: a :mod:`bilevel.solvers` inner solver; default ``LBFGS(maxiter=1000, tol=1e-5)``
        (``tol=1e-8`` in float64).
      method: hypergradient strategy; default ``Implicit()`` (CG on the Hessian).
      init: warm start ``{"w", "b"}`` (default zeros).
    """
    from bilevel import Implicit, minimize
    from bilevel.solvers import LBFGS

    features = jnp.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"argument 'features' must be (n, d), got shape {features.shape}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"argument 'num_classes' must be an int >= 2, got {num_classes!r}")
    dtype = features.dtype
    if init is None:
        init = {"w": jnp.zeros((features.shape[1], num_classes), dtype), "b": jnp.zeros((num_classes,), dtype)}
    if solver is None:
        solver = LBFGS(maxiter=1000, tol=1e-8 if dtype == jnp.float64 else 1e-5)
    if method is None:
        method = Implicit()
    args = (jnp.asarray(reg, dtype), features, jnp.asarray(labels))
    if weights is None:
        return minimize(lambda h, r, f, y: head_loss(h, r, f, y), init, *args, solver=solver, method=method)
    return minimize(head_loss, init, *args, jnp.asarray(weights, dtype), solver=solver, method=method)


def head_params(head) -> dict:
    """``{"w", "b"}`` of :func:`fit_linear_head` as a flax ``Dense`` layer's ``{"kernel", "bias"}``."""
    return {"kernel": head["w"], "bias": head["b"]}


def finetune(
    model: nn.Module,
    state: TrainState,
    data,
    config: TrainConfig,
    key,
    *,
    new_head: bool = True,
) -> TrainState:
    """Fine-tune a pretrained ``state`` on ``data`` with ``config`` (``trainable="all"``: end to end;
    ``"head"``: the last layer on frozen features), starting from a fresh optimizer state.

    With ``new_head`` the head is re-initialized for ``model.num_classes`` with ``key`` (transfer to
    another label set); the data order and augmentations use ``jax.random.fold_in(key, 1)``.
    """
    x = data[0]
    spe = len(x) // config.batch_size
    if spe < 1:
        raise ValueError(f"argument 'data' has {len(x)} examples, fewer than batch_size={config.batch_size}")
    if new_head:
        start = with_head(model, state, config, jax.random.fold_in(key, 0), x, steps_per_epoch=spe)
    else:
        from poisoning.training.state import reset_optimizer

        start = reset_optimizer(state, config, steps_per_epoch=spe)
    return train(model, start, data, config, key=jax.random.fold_in(key, 1))
