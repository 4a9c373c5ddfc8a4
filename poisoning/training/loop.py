r"""The training loop as pure functions: one step, epochs in a seeded order, evaluation.

One step on a batch :math:`(x_b, y_b)` with augmentation :math:`A_k` (key :math:`k`):

.. math::  \ell(\theta) = \frac1B \sum_{i \in b} w_i\, \mathrm{CE}\big(f_\theta(A_k(x_i)), y_i\big),
           \qquad (\theta, s) \leftarrow \mathrm{opt}(\nabla_\theta \ell, \theta, s),

where BatchNorm layers normalize with the batch's statistics and update their running averages
functionally (the ``batch_stats`` of the state), and ``opt`` is the optax transformation of the
config (:func:`~poisoning.training.make_optimizer`). :func:`train_step` is that map; it is
differentiable in the batch's images (reverse and forward mode), so
``bilevel.unroll.unrolled_solve(make_step_fn(...), state, (x, y), steps)`` differentiates T steps of
training with respect to the training images (:func:`make_step_fn`).

Data order: with ``n`` examples and batch size ``B`` an epoch has ``S = n // B`` steps (the last
``n mod B`` examples of each epoch's order are dropped). Epoch :math:`e` visits
``perm_e = jax.random.permutation(fold_in(order_key, e), n)`` in slices of ``B``; step :math:`t`
augments with ``fold_in(augment_key, t)``, where ``order_key = fold_in(key, 0)`` and
``augment_key = fold_in(key, 1)``. Everything is a function of ``key`` and the step counter of the
state, so a run split into several calls (or resumed from a checkpoint) visits the same batches with
the same augmentations as one call, and the same key gives bit-identical parameters.
:func:`train` scans the steps of an epoch and the epochs with :func:`jax.lax.scan` inside one
``jit``; it is a pure function of its arguments, so ``jax.vmap`` trains many models at once
(over keys, initializations or data partitions).

Data: ``data = (x, y)`` or ``(x, y, w)`` with images ``x`` (``(n, H, W, C)`` or ``(n, H, W)``; float
pixels in [0, 1], or ``uint8`` pixels which are divided by 255 per batch, which keeps a 50,000-image
data set at a quarter of the memory), integer labels ``y`` in ``[0, num_classes)`` and optional
per-example loss weights ``w``.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from poisoning.training.config import TrainConfig, make_optimizer
from poisoning.training.state import TrainState, cast_floating, variables

__all__ = [
    "train_step",
    "train",
    "train_epochs",
    "make_step_fn",
    "epoch_permutation",
    "split_key",
    "batch_loss",
    "predict",
    "evaluate",
    "as_float_images",
]


# ----------------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------------
def as_float_images(x, dtype=jnp.float32):
    """Integer pixels (``uint8``) -> ``dtype`` in [0, 1]; floating images are returned unchanged."""
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.integer):
        return x.astype(dtype) / jnp.asarray(255, dtype)
    return x


def _param_dtype(params):
    leaves = [l for l in jax.tree_util.tree_leaves(params) if jnp.issubdtype(jnp.result_type(l), jnp.floating)]
    return leaves[0].dtype if leaves else jnp.float32


def _check_data(data, name="data", *, num_classes=None):
    """Validate ``(x, y[, w])`` (shapes and dtypes always; label range / finiteness on concrete values)."""
    if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
        raise TypeError(f"argument {name!r} must be a tuple (x, y) or (x, y, w), got {type(data).__name__}")
    x, y = data[0], data[1]
    if jnp.ndim(x) not in (3, 4):
        raise ValueError(f"argument {name!r}: images x must be (n, H, W, C) or (n, H, W), got shape {jnp.shape(x)}")
    n = jnp.shape(x)[0]
    if jnp.ndim(y) != 1 or jnp.shape(y)[0] != n:
        raise ValueError(f"argument {name!r}: labels y must have shape ({n},), got {jnp.shape(y)}")
    if not jnp.issubdtype(jnp.result_type(y), jnp.integer):
        raise TypeError(f"argument {name!r}: labels y must be integers, got dtype {jnp.result_type(y)}")
    if len(data) == 3 and jnp.shape(data[2]) != (n,):
        raise ValueError(f"argument {name!r}: weights w must have shape ({n},), got {jnp.shape(data[2])}")
    if not isinstance(x, jax.core.Tracer) and jnp.issubdtype(jnp.result_type(x), jnp.floating):
        if not bool(np.all(np.isfinite(np.asarray(x)))):
            raise ValueError(f"argument {name!r}: images x contain NaN or inf")
    if num_classes is not None and not isinstance(y, jax.core.Tracer) and n:
        ya = np.asarray(y)
        if ya.min() < 0 or ya.max() >= num_classes:
            raise ValueError(
                f"argument {name!r}: labels must be in [0, {num_classes}), found [{ya.min()}, {ya.max()}]"
            )
    return n


def _num_classes(model: nn.Module) -> int | None:
    k = getattr(model, "num_classes", None)
    return int(k) if isinstance(k, int) else None


# ----------------------------------------------------------------------------------------------------
# keys
# ----------------------------------------------------------------------------------------------------
def split_key(key):
    """``(order_key, augment_key)`` of a run (see the module docstring)."""
    return jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)


def epoch_permutation(order_key, epoch, n: int):
    """The order in which epoch ``epoch`` visits the ``n`` examples."""
    return jax.random.permutation(jax.random.fold_in(order_key, epoch), n)


def _default_key(config: TrainConfig, key):
    return jax.random.key(config.seed) if key is None else key


# ----------------------------------------------------------------------------------------------------
# one step
# ----------------------------------------------------------------------------------------------------
def batch_loss(model: nn.Module, params, batch_stats, x, y, w, *, train: bool, config: TrainConfig):
    """Mean (weighted) cross-entropy of a batch and the new BatchNorm statistics.

    Returns ``(loss, (logits, new_batch_stats))``. With ``train`` the BatchNorm layers use the batch's
    statistics and update their running averages; otherwise they use the running ones.
    """
    pdtype = _param_dtype(params)
    cdtype = jnp.dtype(config.compute_dtype)
    x = as_float_images(x, pdtype)
    run_params = params
    if cdtype != pdtype:
        run_params = cast_floating(params, cdtype)
        x = x.astype(cdtype)
    vars_ = {"params": run_params}
    if batch_stats:
        vars_["batch_stats"] = batch_stats
    if train and batch_stats:
        logits, updates = model.apply(vars_, x, train=True, mutable=["batch_stats"])
        new_stats = jax.tree_util.tree_map(lambda new, old: new.astype(old.dtype), updates["batch_stats"], batch_stats)
    else:
        logits = model.apply(vars_, x, train=train)
        new_stats = batch_stats
    logits = logits.astype(jnp.promote_types(pdtype, jnp.float32))
    k = logits.shape[-1]
    targets = jax.nn.one_hot(y, k, dtype=logits.dtype)
    if config.label_smoothing:
        targets = optax.smooth_labels(targets, config.label_smoothing)
    per_example = optax.softmax_cross_entropy(logits, targets)
    if w is None:
        loss = jnp.mean(per_example)
    else:
        loss = jnp.mean(jnp.asarray(w, per_example.dtype) * per_example)
    return loss, (logits, new_stats)


@functools.partial(jax.jit, static_argnames=("model", "config"))
def train_step(model: nn.Module, state: TrainState, batch, key, config: TrainConfig):
    """One optimizer step on ``batch = (x, y)`` or ``(x, y, w)``; ``key`` draws the augmentation.

    Returns ``(new_state, metrics)`` with ``metrics = {"loss", "accuracy"}`` of the (augmented) batch
    before the update. Pure and differentiable in ``batch``'s images and in ``state``.
    """
    x, y = batch[0], batch[1]
    w = batch[2] if len(batch) == 3 else None
    if config.augment is not None and not config.augment.is_identity:
        x = config.augment(key, as_float_images(x, _param_dtype(state.params)))
    bn_train = config.trainable == "all"

    def loss_fn(params):
        return batch_loss(model, params, state.batch_stats, x, y, w, train=bn_train, config=config)

    (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    tx = make_optimizer(config, state.steps_per_epoch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    params = jax.tree_util.tree_map(lambda new, old: new.astype(old.dtype), params, state.params)
    metrics = {
        "loss": loss.astype(jnp.float32),
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == y).astype(jnp.float32),
    }
    return state.replace(step=state.step + 1, params=params, batch_stats=new_stats, opt_state=opt_state), metrics


def _take(data, idx):
    return tuple(jnp.take(a, idx, axis=0) for a in data)


def make_step_fn(model: nn.Module, config: TrainConfig, n: int, key=None):
    """``step_fn(state, t, x, y[, w]) -> state``: step ``t`` of :func:`train` on data with ``n`` examples.

    The signature of :func:`bilevel.unroll.unrolled_solve`, so ``unrolled_solve(step_fn, state, (x, y),
    steps=T, checkpoint="sqrt")`` runs (and differentiates, w.r.t. ``x`` too) the first ``T`` steps
    of ``train(model, state, (x, y), config, key=key)``, in the same order with the same augmentations.
    """
    if not isinstance(n, int) or n < config.batch_size:
        raise ValueError(f"argument 'n' must be an int >= batch_size ({config.batch_size}), got {n!r}")
    order_key, aug_key = split_key(_default_key(config, key))
    batch_size = config.batch_size
    steps_per_epoch = n // batch_size

    def step_fn(state, t, *data):
        epoch, b = jnp.divmod(t, steps_per_epoch)
        perm = epoch_permutation(order_key, epoch, n)
        idx = jax.lax.dynamic_slice_in_dim(perm, b * batch_size, batch_size)
        state, _ = train_step(model, state, _take(data, idx), jax.random.fold_in(aug_key, t), config)
        return state

    return step_fn


# ----------------------------------------------------------------------------------------------------
# epochs
# ----------------------------------------------------------------------------------------------------
def _run_epochs_impl(model, state, data, key, config, num_epochs, step=None):
    n = data[0].shape[0]
    batch_size = config.batch_size
    steps_per_epoch = n // batch_size
    order_key, aug_key = split_key(key)

    def epoch_body(state, _):
        epoch = state.step // steps_per_epoch
        perm = epoch_permutation(order_key, epoch, n)[: steps_per_epoch * batch_size]
        batches = perm.reshape(steps_per_epoch, batch_size)

        def step_body(state, idx):
            k = jax.random.fold_in(aug_key, state.step)
            return (train_step if step is None else step)(model, state, _take(data, idx), k, config)

        state, metrics = jax.lax.scan(step_body, state, batches)
        return state, jax.tree_util.tree_map(jnp.mean, metrics)

    return jax.lax.scan(epoch_body, state, None, length=num_epochs)


_run_epochs = jax.jit(_run_epochs_impl, static_argnames=("model", "config", "num_epochs", "step"))


def _prepare(model, state, data, config):
    if not isinstance(state, TrainState):
        raise TypeError(f"argument 'state' must be a TrainState (see init_state), got {type(state).__name__}")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"argument 'config' must be a TrainConfig, got {type(config).__name__}")
    n = _check_data(data, num_classes=_num_classes(model))
    if n < config.batch_size:
        raise ValueError(f"argument 'data' has {n} examples, fewer than batch_size={config.batch_size}")
    if state.steps_per_epoch != n // config.batch_size:
        raise ValueError(
            f"the state's schedule was built for steps_per_epoch={state.steps_per_epoch} but 'data' has "
            f"{n} // {config.batch_size} = {n // config.batch_size} steps per epoch; build the state with "
            f"init_state(..., steps_per_epoch={n // config.batch_size}) or reset_optimizer"
        )
    return tuple(jnp.asarray(a) for a in data)


def train_epochs(model: nn.Module, state: TrainState, data, config: TrainConfig, num_epochs: int, *, key=None,
                 step=None):
    """Run ``num_epochs`` epochs from ``state`` (epoch index ``state.step // steps_per_epoch``).

    ``step``: the update of one batch, ``step(model, state, batch, key, config) -> (state, metrics)``
    (default :func:`train_step`); a training-time defense (DP-SGD, adversarial poisoning, ...) is such a
    step, a hashable object (e.g. a frozen dataclass with ``__call__``) since it is static under ``jit``.

    Returns ``(state, metrics)`` with per-epoch means ``metrics = {"loss": (num_epochs,),
    "accuracy": (num_epochs,)}`` of the training batches.
    """
    if not isinstance(num_epochs, int) or isinstance(num_epochs, bool) or num_epochs < 1:
        raise ValueError(f"argument 'num_epochs' must be an int >= 1, got {num_epochs!r}")
    if step is not None:
        if not callable(step):
            raise TypeError(f"argument 'step' must be callable (model, state, batch, key, config), got {step!r}")
        try:
            hash(step)
        except TypeError:
            raise TypeError(f"argument 'step' must be hashable (it is static under jit; use a frozen dataclass), "
                            f"got {type(step).__name__}") from None
    data = _prepare(model, state, data, config)
    return _run_epochs(model, state, data, _default_key(config, key), config, num_epochs, step)


def train(model: nn.Module, state: TrainState, data, config: TrainConfig, *, key=None, step=None) -> TrainState:
    """Train for ``config.epochs`` epochs from ``state`` on ``data = (x, y[, w])``; returns the new state.

    ``key`` (default ``jax.random.key(config.seed)``) fixes the data order and the augmentations: the
    same key gives bit-identical parameters. Pure and jitted (``model`` and ``config`` are static), so
    it can be ``vmap``-ed over keys, initial states or data partitions, e.g.::

        keys = jax.random.split(jax.random.key(0), 8)
        states = jax.vmap(lambda k: train(model, init_state(model, cfg, x, k, steps_per_epoch=s),
                                          (x, y), cfg, key=k))(keys)
    """
    return train_epochs(model, state, data, config, config.epochs, key=key, step=step)[0]


# ----------------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("model", "batch_size", "features"))
def _apply_chunks(model, variables_, x, batch_size, features):
    n = x.shape[0]
    chunks = -(-n // batch_size)
    pad = chunks * batch_size - n
    dtype = _param_dtype(variables_["params"])
    xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
    xp = xp.reshape(chunks, batch_size, *x.shape[1:])

    def one(xb):
        return model.apply(variables_, as_float_images(xb, dtype), train=False, features=features)

    out = jax.lax.map(one, xp)
    return out.reshape(chunks * batch_size, *out.shape[2:])[:n]


def predict(model: nn.Module, state, x, *, batch_size: int = 500, features: bool = False):
    """Logits (or penultimate features) of ``x`` in inference mode, ``batch_size`` images at a time.

    ``state`` is a :class:`TrainState` or flax variables. Differentiable in ``x``.
    """
    x = jnp.asarray(x)
    if x.ndim not in (3, 4):
        raise ValueError(f"argument 'x' must be images (n, H, W, C) or (n, H, W), got shape {x.shape}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"argument 'batch_size' must be an int >= 1, got {batch_size!r}")
    if x.shape[0] == 0:
        raise ValueError("argument 'x' holds no images")
    return _apply_chunks(model, variables(state), x, min(batch_size, x.shape[0]), features)


def evaluate(model: nn.Module, state, data, *, batch_size: int = 500) -> dict[str, Any]:
    """``{"loss", "accuracy"}`` (mean cross-entropy and accuracy) of ``data = (x, y)`` in inference mode."""
    _check_data(data, num_classes=_num_classes(model))
    logits = predict(model, state, data[0], batch_size=batch_size).astype(jnp.float32)
    y = jnp.asarray(data[1])
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
    return {"loss": float(loss), "accuracy": float(jnp.mean(jnp.argmax(logits, -1) == y))}
