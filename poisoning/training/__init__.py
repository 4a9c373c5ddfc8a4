r"""A pure training engine for the flax models of :mod:`poisoning.models`.

Everything is a function of arrays and frozen configs, ``jit``-compiled, ``vmap``-able and
deterministic (same key, bit-identical parameters):

- :class:`TrainConfig` (optimizer, schedule, weight decay, augmentation, precision) and
  :func:`make_optimizer` (:mod:`.config`);
- :class:`TrainState` and :func:`init_state` (:mod:`.state`): step, params, BatchNorm statistics,
  optimizer state, all plain arrays;
- :func:`train_step` (one differentiable step), :func:`train` / :func:`train_epochs` (epochs of
  mini-batches in a seeded order, ``lax.scan`` inside ``jit``), :func:`make_step_fn` (the step for
  :func:`bilevel.unroll.unrolled_solve`), :func:`predict`, :func:`evaluate` (:mod:`.loop`);
- differentiable augmentations :func:`random_crop`, :func:`random_translate`, :func:`random_flip`,
  :func:`cutout` and their composition :class:`Augment` (:mod:`.augment`);
- :func:`extract_features`, :func:`fit_linear_head` (a convex head on frozen features, differentiable
  in them), :func:`finetune` (:mod:`.finetune`);
- :func:`fit` (progress bar, atomic ``.npz`` checkpoints, resume), :func:`save_state` /
  :func:`load_state` (:mod:`.checkpoint`); :func:`cached_train` (a cache of trained models keyed by
  their configuration, :mod:`.cache`).

Example (a BadNets CNN on MNIST-shaped data)::

    import jax
    from poisoning.models import get_model
    from poisoning.training import Augment, TrainConfig, init_state, train, evaluate

    model = get_model("badnets", num_classes=10)
    cfg = TrainConfig(epochs=2, batch_size=128, optimizer="sgd", learning_rate=0.05,
                      weight_decay=5e-4, schedule="cosine", augment=Augment(crop_padding=2))
    state = init_state(model, cfg, x_train, jax.random.key(0), steps_per_epoch=len(x_train) // 128)
    state = train(model, state, (x_train, y_train), cfg)
    print(evaluate(model, state, (x_test, y_test)))
"""

from poisoning.training.augment import Augment, cutout, random_crop, random_flip, random_translate
from poisoning.training.cache import CACHE_DIR_ENV, CachedModel, cached_train, model_dir, resolve_cache_dir
from poisoning.training.checkpoint import FitResult, fingerprint, fit, load_state, save_state
from poisoning.training.config import OPTIMIZERS, SCHEDULES, TrainConfig, make_optimizer, make_schedule
from poisoning.training.finetune import extract_features, finetune, fit_linear_head, head_loss, head_params
from poisoning.training.loop import (
    as_float_images,
    batch_loss,
    epoch_permutation,
    evaluate,
    make_step_fn,
    predict,
    split_key,
    train,
    train_epochs,
    train_step,
)
from poisoning.training.state import TrainState, cast_floating, init_state, reset_optimizer, variables, with_head

__all__ = [
    # config
    "TrainConfig",
    "OPTIMIZERS",
    "SCHEDULES",
    "make_optimizer",
    "make_schedule",
    # state
    "TrainState",
    "init_state",
    "reset_optimizer",
    "with_head",
    "variables",
    "cast_floating",
    # loop
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
    # augmentation
    "Augment",
    "random_crop",
    "random_translate",
    "random_flip",
    "cutout",
    # transfer
    "extract_features",
    "head_loss",
    "fit_linear_head",
    "head_params",
    "finetune",
    # long runs
    "fit",
    "FitResult",
    "save_state",
    "load_state",
    "fingerprint",
    "cached_train",
    "CachedModel",
    "model_dir",
    "resolve_cache_dir",
    "CACHE_DIR_ENV",
]
