r"""Training configuration and the optax optimizer / learning-rate schedule it describes.

:class:`TrainConfig` is a frozen (hashable) dataclass, so it can be a static argument of ``jit``.
:func:`make_optimizer` turns it into an :class:`optax.GradientTransformation` once the number of
steps per epoch is known (schedules are written in epochs and converted to steps).

Optimizers (with PyTorch's semantics, so the numbers of the literature carry over):

- ``"sgd"`` / ``"nesterov"``: :math:`g \leftarrow \nabla L + \lambda\theta`,
  :math:`v \leftarrow \mu v + g`, :math:`\theta \leftarrow \theta - \eta_t v` (Nesterov:
  :math:`\theta \leftarrow \theta - \eta_t (g + \mu v)`), i.e. ``torch.optim.SGD(momentum=mu,
  weight_decay=lambda, nesterov=...)``; built from ``optax.add_decayed_weights`` + ``optax.sgd``.
- ``"adam"``: Adam on the L2-coupled gradient :math:`\nabla L + \lambda\theta` (``torch.optim.Adam``'s
  ``weight_decay``); ``"adamw"``: decoupled weight decay (Loshchilov & Hutter 2019).

Schedules :math:`\eta_t` (``schedule``), after an optional linear warm-up from 0 over
``warmup_epochs``:

- ``"constant"``: :math:`\eta`;
- ``"step"``: :math:`\eta \cdot \mathrm{decay}^{k}` after the :math:`k`-th epoch of ``milestones``
  (e.g. ``milestones=(100, 150), decay=0.1`` over 200 epochs: the ResNet recipe of He et al. 2016);
- ``"cosine"``: :math:`\tfrac{\eta}{2}(1 + \cos(\pi s / S))` over the :math:`S` post-warm-up steps
  (Loshchilov & Hutter 2017, without restarts).

``trainable="head"`` trains only ``params["head"]`` (every other gradient is replaced by zero with
``optax.multi_transform``, so XLA drops the backbone's backward pass) and runs the backbone in
inference mode (BatchNorm uses and keeps its running statistics): fine-tuning on frozen features.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import optax

from poisoning.training.augment import Augment

__all__ = ["TrainConfig", "OPTIMIZERS", "SCHEDULES", "make_schedule", "make_optimizer", "COMPUTE_DTYPES"]

OPTIMIZERS = ("sgd", "nesterov", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine")
COMPUTE_DTYPES = ("float32", "bfloat16", "float64")
TRAINABLE = ("all", "head")


def _positive_int(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"TrainConfig.{name} must be an int >= 1, got {value!r}")


def _nonnegative(name, value):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"TrainConfig.{name} must be a finite number >= 0, got {value!r}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train: epochs of mini-batches, optimizer, schedule, augmentation, precision.

    Attributes:
      epochs: passes over the training set (:func:`~poisoning.training.train`).
      batch_size: examples per step; each epoch is a seeded permutation cut into ``n // batch_size``
        batches (the last incomplete batch is dropped, so every step has the same shape).
      optimizer: one of :data:`OPTIMIZERS` (see the module docstring).
      learning_rate: peak learning rate :math:`\\eta`.
      momentum: :math:`\\mu` of SGD; ``b1`` of Adam.
      weight_decay: :math:`\\lambda` (L2-coupled for SGD and Adam, decoupled for AdamW).
      schedule: one of :data:`SCHEDULES`; ``milestones`` (epochs) and ``decay`` for ``"step"``.
      warmup_epochs: linear warm-up length (may be fractional).
      augment: an :class:`~poisoning.training.augment.Augment` applied to every training batch.
      label_smoothing: :math:`\\epsilon` of label smoothing (0 = plain cross-entropy).
      compute_dtype: ``"float32"``; ``"bfloat16"`` casts parameters and inputs for the forward and
        backward pass (parameters, optimizer state, BatchNorm statistics and the loss stay in their own
        dtype: mixed precision for accelerators); ``"float64"`` for gradient checks.
      trainable: ``"all"`` or ``"head"`` (only ``params["head"]``; the backbone in inference mode).
      seed: default seed of the data order and augmentation (``key=jax.random.key(seed)``).
    """

    epochs: int = 1
    batch_size: int = 128
    optimizer: str = "sgd"
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    milestones: tuple[float, ...] = ()
    decay: float = 0.1
    warmup_epochs: float = 0.0
    augment: Augment | None = None
    label_smoothing: float = 0.0
    compute_dtype: str = "float32"
    trainable: str = "all"
    seed: int = 0

    def __post_init__(self):
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"TrainConfig.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"TrainConfig.compute_dtype must be one of {COMPUTE_DTYPES}, got {self.compute_dtype!r}")
        if self.trainable not in TRAINABLE:
            raise ValueError(f"TrainConfig.trainable must be one of {TRAINABLE}, got {self.trainable!r}")
        for name in ("learning_rate", "momentum", "weight_decay", "decay", "warmup_epochs", "label_smoothing"):
            _nonnegative(name, getattr(self, name))
        if self.learning_rate == 0:
            raise ValueError("TrainConfig.learning_rate must be > 0")
        if self.momentum >= 1:
            raise ValueError(f"TrainConfig.momentum must be in [0, 1), got {self.momentum!r}")
        if self.label_smoothing >= 1:
            raise ValueError(f"TrainConfig.label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if not isinstance(self.milestones, tuple):
            object.__setattr__(self, "milestones", tuple(self.milestones))
        for m in self.milestones:
            _nonnegative("milestones", m)
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"TrainConfig.milestones must be increasing, got {self.milestones!r}")
        if self.schedule == "step" and not self.milestones:
            raise ValueError("TrainConfig.schedule='step' needs milestones (epochs where the rate decays)")
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"TrainConfig.warmup_epochs ({self.warmup_epochs}) exceeds epochs ({self.epochs})")
        if self.augment is not None and not isinstance(self.augment, Augment):
            raise TypeError(f"TrainConfig.augment must be an Augment or None, got {type(self.augment).__name__}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"TrainConfig.seed must be an int, got {self.seed!r}")

    def replace(self, **changes) -> "TrainConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields (``augment`` as a dict or ``None``)."""
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d


def make_schedule(config: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    """The learning rate as a function of the step count (see the module docstring)."""
    _positive_int("steps_per_epoch", steps_per_epoch)
    lr = float(config.learning_rate)
    total = config.epochs * steps_per_epoch
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    if config.schedule == "constant":
        main = optax.constant_schedule(lr)
    elif config.schedule == "step":
        bounds = {int(round(m * steps_per_epoch)) - warmup: config.decay for m in config.milestones}
        main = optax.piecewise_constant_schedule(lr, {b: s for b, s in bounds.items() if b > 0})
    else:
        main = optax.cosine_decay_schedule(lr, decay_steps=max(total - warmup, 1))
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def _head_labels(params):
    if not isinstance(params, dict) or "head" not in params:
        raise ValueError("TrainConfig.trainable='head' needs a model whose last layer is named 'head'")
    return {k: jax.tree_util.tree_map(lambda _: "train" if k == "head" else "freeze", v) for k, v in params.items()}


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """The optax transformation for ``config`` (schedule in steps of ``steps_per_epoch`` per epoch)."""
    lr = make_schedule(config, steps_per_epoch)
    wd = float(config.weight_decay)
    if config.optimizer in ("sgd", "nesterov"):
        tx = optax.sgd(lr, momentum=config.momentum or None, nesterov=config.optimizer == "nesterov")
        if wd:
            tx = optax.chain(optax.add_decayed_weights(wd), tx)
    elif config.optimizer == "adam":
        tx = optax.adam(lr, b1=config.momentum)
        if wd:
            tx = optax.chain(optax.add_decayed_weights(wd), tx)
    else:
        tx = optax.adamw(lr, b1=config.momentum, weight_decay=wd)
    if config.trainable == "head":
        tx = optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, _head_labels)
    return tx
