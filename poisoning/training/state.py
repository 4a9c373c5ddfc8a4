"""The training state: a pytree of arrays that every training function takes and returns.

:class:`TrainState` holds the step counter, the model's ``params``, its BatchNorm running statistics
(``batch_stats``, an empty dict for models without BatchNorm) and the optimizer state. Only
``steps_per_epoch`` is static (it fixes the learning-rate schedule); the optimizer itself is rebuilt
from the :class:`~poisoning.training.TrainConfig` by every step, so the state stays plain arrays:
``vmap``-able (many models at once), saved without pickle (:mod:`.checkpoint`) and differentiable.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from poisoning.training.config import TrainConfig, make_optimizer

__all__ = ["TrainState", "init_state", "reset_optimizer", "variables", "with_head", "cast_floating"]


@struct.dataclass
class TrainState:
    """``step`` (int32 scalar), ``params``, ``batch_stats``, ``opt_state``; static ``steps_per_epoch``."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    steps_per_epoch: int = struct.field(pytree_node=False, default=1)

    @property
    def variables(self) -> dict:
        """The flax variables ``{"params": ..., "batch_stats": ...}`` for ``model.apply``."""
        return variables(self)


def variables(state_or_variables) -> dict:
    """Flax variables of a :class:`TrainState`, or the argument itself when it already is a dict."""
    if isinstance(state_or_variables, TrainState):
        out = {"params": state_or_variables.params}
        if state_or_variables.batch_stats:
            out["batch_stats"] = state_or_variables.batch_stats
        return out
    if isinstance(state_or_variables, dict) and "params" in state_or_variables:
        return state_or_variables
    raise TypeError(
        "expected a TrainState or flax variables {'params': ..., 'batch_stats': ...}, got "
        f"{type(state_or_variables).__name__}"
    )


def cast_floating(tree, dtype):
    """Cast the floating-point leaves of ``tree`` to ``dtype`` (integer leaves unchanged)."""
    if dtype is None:
        return tree
    return jax.tree_util.tree_map(
        lambda a: a.astype(dtype) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a, tree
    )


@functools.partial(jax.jit, static_argnums=0)
def _init_variables(model, key, x):
    return model.init(key, x, train=False)


def _check_steps_per_epoch(steps_per_epoch):
    if not isinstance(steps_per_epoch, int) or isinstance(steps_per_epoch, bool) or steps_per_epoch < 1:
        raise ValueError(f"argument 'steps_per_epoch' must be an int >= 1, got {steps_per_epoch!r}")


def init_state(
    model: nn.Module,
    config: TrainConfig,
    sample,
    key,
    *,
    steps_per_epoch: int = 1,
    dtype=None,
) -> TrainState:
    """Initialize ``model`` on one example of ``sample`` (a batch of inputs; only its shape and dtype
    matter) with ``key`` and build the optimizer state for ``config``.

    Args:
      steps_per_epoch: ``n // config.batch_size`` for the data set it will train on (fixes the schedule;
        :func:`~poisoning.training.train` checks it).
      dtype: cast parameters and BatchNorm statistics to this dtype (e.g. ``jnp.float64`` for gradient
        checks); default: flax's float32.
    """
    _check_steps_per_epoch(steps_per_epoch)
    sample = jnp.asarray(sample)
    if sample.ndim < 3:
        raise ValueError(f"argument 'sample' must be a batch of images, got shape {sample.shape}")
    x = sample[:1]
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    variables_ = _init_variables(model, key, x)
    params = cast_floating(variables_["params"], dtype)
    batch_stats = cast_floating(variables_.get("batch_stats", {}), dtype)
    opt_state = make_optimizer(config, steps_per_epoch).init(params)
    return TrainState(jnp.zeros((), jnp.int32), params, batch_stats, opt_state, steps_per_epoch)


def reset_optimizer(state: TrainState, config: TrainConfig, *, steps_per_epoch: int | None = None) -> TrainState:
    """The same weights with a fresh optimizer state for ``config`` and the step counter at 0
    (e.g. to fine-tune a pretrained model with another recipe on another data set)."""
    steps_per_epoch = state.steps_per_epoch if steps_per_epoch is None else steps_per_epoch
    _check_steps_per_epoch(steps_per_epoch)
    opt_state = make_optimizer(config, steps_per_epoch).init(state.params)
    return TrainState(jnp.zeros((), jnp.int32), state.params, state.batch_stats, opt_state, steps_per_epoch)


def with_head(
    model: nn.Module,
    state: TrainState,
    config: TrainConfig,
    key,
    sample,
    *,
    head: dict | None = None,
    steps_per_epoch: int | None = None,
) -> TrainState:
    """Transfer ``state`` (trained with any number of classes) to ``model`` (same architecture, possibly
    another ``num_classes``): every layer is kept except ``params["head"]``, which is ``head`` if given
    (``{"kernel": (d, k), "bias": (k,)}``, e.g. from :func:`~poisoning.training.fit_linear_head`) or a
    fresh initialization of ``model`` with ``key``; the optimizer is reset for ``config``."""
    fresh = init_state(model, config, sample, key, steps_per_epoch=state.steps_per_epoch)
    new_head = fresh.params["head"] if head is None else head
    old_keys, new_keys = set(state.params), set(fresh.params)
    if old_keys != new_keys:
        raise ValueError(f"with_head: the state's layers {sorted(old_keys)} differ from the model's {sorted(new_keys)}")
    for name in ("kernel", "bias"):
        want = fresh.params["head"][name].shape
        if jnp.shape(new_head[name]) != want:
            raise ValueError(f"with_head: head[{name!r}] has shape {jnp.shape(new_head[name])}, the model needs {want}")
    dtype = jax.tree_util.tree_leaves(state.params)[0].dtype
    params = dict(state.params)
    params["head"] = cast_floating({k: jnp.asarray(v) for k, v in new_head.items()}, dtype)
    moved = TrainState(state.step, params, state.batch_stats, state.opt_state, state.steps_per_epoch)
    return reset_optimizer(moved, config, steps_per_epoch=steps_per_epoch)
