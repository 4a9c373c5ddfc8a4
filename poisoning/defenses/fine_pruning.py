r"""Fine-pruning (Liu, Dolan-Gavitt & Garg 2018): prune the last convolution's channels that clean data
leaves dormant, then fine-tune.

A backdoor often lives in channels that the clean inputs hardly use. With :math:`a_c(x) \ge 0` the ReLU
activation map of channel :math:`c` of the last convolutional layer, the defender measures, on clean
validation images,

.. math::  \bar a_c = \frac{1}{n\,H\,W} \sum_{i=1}^n \sum_{h, w} a_c(x_i)_{hw},

sorts the channels by increasing :math:`\bar a_c` and prunes them in that order (multiplies their
activation maps by 0) for as long as the clean validation accuracy stays within ``max_accuracy_drop``
of the unpruned network's (Liu et al. stop at a 4 percentage-point drop): the number of channels
pruned is the largest :math:`k < C` such that pruning the first :math:`j` channels keeps
:math:`\mathrm{acc}(j) \ge \mathrm{acc}(0) - \delta` for every :math:`j \le k`. The pruned network is
then fine-tuned on clean data (the validation set, in the paper) with the mask fixed.

How a layer is pruned without changing the model (:class:`ChannelMask`): flax's
:func:`flax.linen.intercept_methods` wraps every module call; the interceptor multiplies the output of
the module at ``layer`` (its path, e.g. ``"conv2"``) by the 0/1 ``keep`` vector over its channels (the
last axis). When that module's output is followed by a ReLU (the BadNets CNN's ``conv2``, LeNet-5's
``c3``, the ConvNet without BatchNorm), :math:`\mathrm{ReLU}(0 \cdot z) = 0`: exactly a pruned channel,
and its gradient is zero during fine-tuning, so the channel stays pruned. For a convolution followed by
a BatchNorm, give the BatchNorm's path as ``layer`` (the normalized output, the input of the ReLU).
The activations :math:`a_c` are read with ``capture_intermediates`` at the same module, as
:math:`\mathrm{ReLU}` of its output. :func:`conv_layers` lists the convolutions in call order; the
default ``layer`` is the last one.

:class:`ChannelMask` is a drop-in model: ``apply`` / ``init`` and ``num_classes`` like the flax module
it wraps, hashable (``keep`` is a tuple of bools), so :func:`poisoning.training.train`,
:func:`~poisoning.training.predict`, :func:`~poisoning.training.evaluate` and the other defenses
(STRIP, Neural Cleanse) take it as they take the model.

Reference: K. Liu, B. Dolan-Gavitt, S. Garg, *Fine-Pruning: Defending Against Backdooring Attacks on
Deep Neural Networks*, RAID 2018, arXiv:1805.12185.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from poisoning.training.config import TrainConfig
from poisoning.training.loop import as_float_images, train
from poisoning.training.state import TrainState, reset_optimizer, variables

__all__ = [
    "ChannelMask",
    "conv_layers",
    "channel_activations",
    "prune_by_activation",
    "PruningResult",
    "FinePruningConfig",
    "FinePruningResult",
    "fine_pruning",
]


def _path(module) -> str:
    return "/".join(str(p) for p in module.path)


def _check_images(x, name: str):
    x = jnp.asarray(x)
    if x.ndim not in (3, 4):
        raise ValueError(f"argument {name!r} must be images (n, H, W, C) or (n, H, W), got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"argument {name!r} holds no images")
    if not isinstance(x, jax.core.Tracer) and jnp.issubdtype(x.dtype, jnp.floating):
        if not bool(jnp.all(jnp.isfinite(x))):
            raise ValueError(f"argument {name!r} contains NaN or inf")
    return x


def _check_labels(y, n: int, name: str, num_classes: int | None):
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"argument {name!r} must have shape ({n},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"argument {name!r} must hold integer classes, got dtype {y.dtype}")
    if num_classes is not None and n and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"argument {name!r} must be in [0, {num_classes}), found [{y.min()}, {y.max()}]")
    return jnp.asarray(y)


def _model_num_classes(model) -> int | None:
    k = getattr(model, "num_classes", None)
    return int(k) if isinstance(k, int) else None


def _masking_interceptor(layer: str, keep):
    """The interceptor multiplying the channels (last axis) of ``layer``'s output by ``keep``."""

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and _path(context.module) == layer:
            if out.shape[-1] != keep.shape[-1]:
                raise ValueError(f"layer {layer!r} has {out.shape[-1]} channels but the mask has {keep.shape[-1]}")
            out = out * keep.astype(out.dtype)
        return out

    return interceptor


def _apply_masked(model, variables_, x, layer: str, keep, **kwargs):
    """``model.apply`` with the channels of ``layer`` multiplied by ``keep`` (an array; may be traced)."""
    with nn.intercept_methods(_masking_interceptor(layer, jnp.asarray(keep))):
        return model.apply(variables_, x, **kwargs)


@dataclasses.dataclass(frozen=True)
class ChannelMask:
    """``model`` with the output channels of the module at path ``layer`` multiplied by ``keep``
    (1 = kept, 0 = pruned; see the module docstring). A drop-in model for the training engine.

    Attributes:
      model: a flax module of :mod:`poisoning.models` (or any flax module).
      layer: the pruned module's path, ``"/"``-joined names from the model (e.g. ``"conv2"``).
      keep: one bool per channel of that module's output.
    """

    model: Any
    layer: str
    keep: tuple[bool, ...]

    def __post_init__(self):
        if not isinstance(self.layer, str) or not self.layer:
            raise ValueError(f"argument 'layer' must be a non-empty module path, got {self.layer!r}")
        keep = tuple(bool(k) for k in np.asarray(self.keep, bool).ravel())
        if not keep:
            raise ValueError("argument 'keep' is empty")
        object.__setattr__(self, "keep", keep)

    @property
    def num_classes(self):
        return getattr(self.model, "num_classes", None)

    @property
    def n_pruned(self) -> int:
        return len(self.keep) - sum(self.keep)

    def apply(self, variables_, *args, **kwargs):
        with nn.intercept_methods(_masking_interceptor(self.layer, jnp.asarray(self.keep, jnp.float32))):
            return self.model.apply(variables_, *args, **kwargs)

    def init(self, *args, **kwargs):
        return self.model.init(*args, **kwargs)


# ----------------------------------------------------------------------------------------------------
# the layer and its activations
# ----------------------------------------------------------------------------------------------------
def conv_layers(model: nn.Module, sample) -> list[str]:
    """Paths of the ``nn.Conv`` modules of ``model``, in the order a forward pass on ``sample`` (a batch
    of images; only its shape matters) calls them. Traced abstractly (:func:`jax.eval_shape`)."""
    sample = jnp.asarray(sample)
    if sample.ndim not in (3, 4):
        raise ValueError(f"argument 'sample' must be a batch of images, got shape {sample.shape}")
    found: list[str] = []

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(context.module, nn.Conv):
            p = _path(context.module)
            if p not in found:
                found.append(p)
        return next_fun(*args, **kwargs)

    x = jax.ShapeDtypeStruct((1, *sample.shape[1:]), jnp.float32)

    def run(x):
        vars_ = model.init(jax.random.key(0), x, train=False)
        with nn.intercept_methods(record):
            return model.apply(vars_, x, train=False)

    jax.eval_shape(run, x)
    return found


def _resolve_layer(model, x, layer):
    base = model.model if isinstance(model, ChannelMask) else model
    if layer is None:
        layers = conv_layers(base, x[:1])
        if not layers:
            raise ValueError("the model has no nn.Conv layer; pass argument 'layer' (a module path)")
        return layers[-1]
    if not isinstance(layer, str) or not layer:
        raise ValueError(f"argument 'layer' must be a module path such as 'conv2', got {layer!r}")
    return layer


@functools.partial(jax.jit, static_argnames=("model", "layer", "batch_size"))
def _channel_sums(model, variables_, x, layer, batch_size):
    n = x.shape[0]
    chunks = -(-n // batch_size)
    pad = chunks * batch_size - n
    valid = jnp.arange(chunks * batch_size) < n
    xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
    xp = xp.reshape(chunks, batch_size, *x.shape[1:])
    valid = valid.reshape(chunks, batch_size)

    def one(args):
        xb, vb = args
        _, state = model.apply(variables_, xb, train=False, mutable=["intermediates"],
                               capture_intermediates=lambda mdl, name: name == "__call__" and _path(mdl) == layer)
        tree = state["intermediates"]
        for part in layer.split("/"):
            tree = tree[part]
        a = jax.nn.relu(tree["__call__"][0].astype(jnp.float32))
        a = a.reshape(a.shape[0], -1, a.shape[-1])             # (b, spatial, C)
        return jnp.sum(jnp.mean(a, axis=1) * vb[:, None], axis=0)

    return jnp.sum(jax.lax.map(one, (xp, valid)), axis=0)


def channel_activations(model: nn.Module, state, x, *, layer: str | None = None, batch_size: int = 500):
    r"""Mean ReLU activation :math:`\bar a_c` of every channel of ``layer`` (default: the last ``nn.Conv``)
    over the images ``x`` and their spatial positions; ``(C,)`` float32 (inference mode).

    ``state``: a :class:`~poisoning.training.TrainState` or flax variables. A :class:`ChannelMask`
    model is measured with its mask applied (pruned channels read 0)."""
    x = _check_images(x, "x")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"argument 'batch_size' must be an int >= 1, got {batch_size!r}")
    layer = _resolve_layer(model, x, layer)
    vars_ = variables(state)
    x = as_float_images(x, jnp.float32)
    try:
        sums = _channel_sums(model, vars_, x, layer, min(batch_size, x.shape[0]))
    except KeyError:
        raise ValueError(f"argument 'layer': the model has no module at path {layer!r} "
                         f"(its convolutions: {conv_layers(getattr(model, 'model', model), x[:1])})") from None
    return sums / x.shape[0]


# ----------------------------------------------------------------------------------------------------
# pruning
# ----------------------------------------------------------------------------------------------------
class PruningResult(NamedTuple):
    """The pruning search.

    Attributes:
      layer: the pruned module's path.
      activations: ``(C,)`` mean clean activation of each channel.
      order: ``(C,)`` channels by increasing activation (the pruning order).
      accuracies: ``(C,)`` clean validation accuracy with the first ``j`` channels of ``order`` pruned,
        ``j = 0 .. C-1`` (``accuracies[0]`` is the unpruned network's).
      n_pruned: the number of channels pruned (module docstring).
      keep: ``(C,)`` bool, the channels kept.
    """

    layer: str
    activations: np.ndarray
    order: np.ndarray
    accuracies: np.ndarray
    n_pruned: int
    keep: np.ndarray


@functools.partial(jax.jit, static_argnames=("model", "layer", "batch_size"))
def _prefix_accuracies(model, variables_, x, y, order, layer, batch_size):
    C = order.shape[0]
    rank = jnp.zeros(C, jnp.int32).at[order].set(jnp.arange(C, dtype=jnp.int32))
    n = x.shape[0]
    chunks = -(-n // batch_size)
    pad = chunks * batch_size - n
    xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
    yp = jnp.concatenate([y, jnp.full((pad,), -1, y.dtype)]) if pad else y
    xp = xp.reshape(chunks, batch_size, *x.shape[1:])
    yp = yp.reshape(chunks, batch_size)

    def accuracy(j):
        keep = (rank >= j).astype(jnp.float32)

        def one(args):
            xb, yb = args
            logits = _apply_masked(model, variables_, xb, layer, keep, train=False)
            return jnp.sum(jnp.argmax(logits, -1) == yb)

        return jnp.sum(jax.lax.map(one, (xp, yp))) / n

    return jax.lax.map(accuracy, jnp.arange(C))


def _check_drop(max_accuracy_drop):
    if isinstance(max_accuracy_drop, bool) or not isinstance(max_accuracy_drop, (int, float)) \
            or not math.isfinite(max_accuracy_drop) or not 0 <= max_accuracy_drop <= 1:
        raise ValueError(f"argument 'max_accuracy_drop' must be a fraction in [0, 1] (0.04 = 4 points), "
                         f"got {max_accuracy_drop!r}")


def prune_by_activation(model: nn.Module, state, x_val, y_val, *, layer: str | None = None,
                        max_accuracy_drop: float = 0.04, batch_size: int = 500) -> PruningResult:
    """Liu et al.'s pruning search on clean validation data ``(x_val, y_val)`` (module docstring).

    Every prefix of the pruning order is evaluated in one compiled call (the mask is an array, so no
    recompilation per channel count). At least one channel is always kept.
    """
    _check_drop(max_accuracy_drop)
    x = _check_images(x_val, "x_val")
    y = _check_labels(y_val, x.shape[0], "y_val", _model_num_classes(model))
    layer = _resolve_layer(model, x, layer)
    acts = np.asarray(channel_activations(model, state, x, layer=layer, batch_size=batch_size))
    order = np.argsort(acts, kind="stable")
    accs = np.asarray(_prefix_accuracies(model, variables(state), as_float_images(x, jnp.float32), y,
                                         jnp.asarray(order), layer, min(batch_size, x.shape[0])))
    ok = accs >= accs[0] - max_accuracy_drop - 1e-12
    k = int(np.argmin(ok)) - 1 if not ok.all() else len(ok) - 1      # the last j before the first violation
    keep = np.ones(len(acts), bool)
    keep[order[:k]] = False
    return PruningResult(layer, acts, order, accs, k, keep)


# ----------------------------------------------------------------------------------------------------
# the defense
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FinePruningConfig:
    """Fine-pruning's settings.

    Attributes:
      max_accuracy_drop: the allowed clean-validation accuracy drop of the pruning, as a fraction
        (0.04: Liu et al.'s 4 points).
      layer: the pruned module's path (default: the last ``nn.Conv``).
      finetune: the training recipe of the fine-tuning (a fresh optimizer; ``None``: prune only).
      batch_size: images per forward pass of the search.
    """

    max_accuracy_drop: float = 0.04
    layer: str | None = None
    finetune: TrainConfig | None = TrainConfig(epochs=2, batch_size=64, optimizer="sgd", learning_rate=0.01,
                                               momentum=0.9)
    batch_size: int = 500

    def __post_init__(self):
        _check_drop(self.max_accuracy_drop)
        if self.layer is not None and (not isinstance(self.layer, str) or not self.layer):
            raise ValueError(f"FinePruningConfig.layer must be None or a module path, got {self.layer!r}")
        if self.finetune is not None and not isinstance(self.finetune, TrainConfig):
            raise TypeError(f"FinePruningConfig.finetune must be a TrainConfig or None, got "
                            f"{type(self.finetune).__name__}")
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise ValueError(f"FinePruningConfig.batch_size must be an int >= 1, got {self.batch_size!r}")


class FinePruningResult(NamedTuple):
    """``model``: the pruned network (a :class:`ChannelMask`, use it with ``state``); ``state``: its
    fine-tuned weights (a :class:`~poisoning.training.TrainState`); ``pruning``: the search."""

    model: ChannelMask
    state: TrainState
    pruning: PruningResult


def fine_pruning(model: nn.Module, state, x_val, y_val, key, config: FinePruningConfig = FinePruningConfig(), *,
                 finetune_data=None) -> FinePruningResult:
    """Prune (:func:`prune_by_activation` on ``(x_val, y_val)``) and fine-tune with the mask fixed.

    Args:
      model: the (possibly backdoored) network's flax module.
      state: its trained :class:`~poisoning.training.TrainState` (or flax variables ``{"params", ...}``).
      x_val, y_val: the defender's clean validation images and labels.
      key: ``jax.random`` key of the fine-tuning's data order.
      config: :class:`FinePruningConfig`.
      finetune_data: ``(x, y)`` clean data to fine-tune on (default: ``(x_val, y_val)``, as Liu et al.).

    Returns:
      :class:`FinePruningResult`; evaluate ``result.model`` with ``result.state`` (e.g.
      :func:`poisoning.training.predict`).
    """
    if not isinstance(config, FinePruningConfig):
        raise TypeError(f"argument 'config' must be a FinePruningConfig, got {type(config).__name__}")
    base = model.model if isinstance(model, ChannelMask) else model
    pruning = prune_by_activation(model, state, x_val, y_val, layer=config.layer,
                                  max_accuracy_drop=config.max_accuracy_drop, batch_size=config.batch_size)
    keep = pruning.keep
    if isinstance(model, ChannelMask):
        if model.layer != pruning.layer:
            raise ValueError(f"the model is already pruned at {model.layer!r}, not at {pruning.layer!r}")
        keep = keep & np.asarray(model.keep)
    masked = ChannelMask(base, pruning.layer, tuple(keep.tolist()))
    if config.finetune is None:
        return FinePruningResult(masked, state, pruning)
    if not isinstance(state, TrainState):
        raise TypeError(f"argument 'state' must be a TrainState to be fine-tuned (or use "
                        f"FinePruningConfig(finetune=None)), got {type(state).__name__}")
    data = (x_val, y_val) if finetune_data is None else finetune_data
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError("argument 'finetune_data' must be a tuple (x, y)")
    x_ft = _check_images(data[0], "finetune_data")
    y_ft = _check_labels(data[1], x_ft.shape[0], "finetune_data", _model_num_classes(base))
    spe = x_ft.shape[0] // config.finetune.batch_size
    if spe < 1:
        raise ValueError(f"argument 'finetune_data' has {x_ft.shape[0]} images, fewer than the fine-tuning's "
                         f"batch_size={config.finetune.batch_size}")
    start = reset_optimizer(state, config.finetune, steps_per_epoch=spe)
    tuned = train(masked, start, (x_ft, y_ft), config.finetune, key=key)
    return FinePruningResult(masked, tuned, pruning)
