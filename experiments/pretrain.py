r"""Pretrain the networks that transfer-learning attacks start from, once, and cache them.

Nothing is downloaded: a base model is trained here with :mod:`poisoning.training` and stored in the
cache of :func:`poisoning.training.cached_train` (``--cache-dir``, else ``$BILEVEL_CACHE_DIR``, else
``~/.cache/bilevel-poisoning``), keyed by the model, the recipe, the seed and the data, so a second
run (or an attack experiment calling :func:`pretrain`) loads it in a second. An interrupted run
resumes from its checkpoint.

Protocols (``--protocol``; the classes a model is pretrained on):

- ``cifar10-first5`` (default): CIFAR-10 classes 0-4 (airplane, automobile, bird, cat, deer), all
  25,000 training images; the attacks then fine-tune on classes 5-9 (dog, frog, horse, ship, truck).
  The CPU stand-in for Schwarzschild et al. (2021), whose extractors are pretrained on CIFAR-100,
  which is not in this project's offline data;
- ``cifar100``: the paper's pretraining set (100 fine classes), when its official binary files are in
  the data folder (see :func:`poisoning.datasets.load_cifar100`);
- ``cifar10``: all ten classes; ``mnist`` / ``fashion_mnist``: 28x28 digits / clothes;
- ``digits``: scikit-learn's 8x8 digits upsampled (bilinear) to the model's input size and
  replicated over its channels: the offline fallback, taken automatically (with a warning, and
  ``"fallback": true`` in the results) when the files of the protocol are not in ``--data-dir`` /
  ``$BILEVEL_DATA_DIR``.

Presets (``--preset``):

- ``cpu`` (default): a narrow network for a 2-core machine: ResNet-18 with 16 filters in its first
  stage (0.70 M parameters instead of 11.2 M; ``--width``), 8 epochs of SGD (momentum 0.9, Nesterov,
  learning rate 0.05, cosine schedule, weight decay 5e-4, batch 128) with random crops (4 pixels)
  and flips;
- ``paper``: the benchmark's recipe (``train_model.py`` of Schwarzschild et al. 2021): full width,
  200 epochs, SGD momentum 0.9, learning rate 0.1 divided by 10 at epochs 100 and 150, weight
  decay 2e-4, batch 128, crops and flips; meant for accelerators.

Every model normalizes its input with the data set's per-channel mean and standard deviation as its
first operation, so attacks work on pixels in [0, 1].

Outputs (``--out``, default ``runs/pretrain``): ``results.json`` (the model, the recipe, test
accuracy, training time, the cache folder, whether it was loaded from the cache) and
``training.png`` (loss and accuracy per epoch).

Usage::

    python -m experiments.pretrain                                # ResNet-18/16 on CIFAR-10 0-4
    python -m experiments.pretrain --model convnet --protocol cifar10-first5 --epochs 4
    python -m experiments.pretrain --preset paper --model resnet18  # on a GPU
    python -m experiments.pretrain --quick --cache-dir /tmp/cache   # a smoke run
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from experiments import _cli

__all__ = ["PROTOCOLS", "PRESETS", "load_protocol", "recipe", "pretrain", "Pretrained", "build_parser", "main"]

PROTOCOLS = ("cifar10-first5", "cifar100", "cifar10", "mnist", "fashion_mnist", "digits")
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)  # the poisoning benchmark's data_mean_std_dict
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
PRESETS = ("cpu", "paper")


@dataclasses.dataclass(frozen=True)
class ProtocolData:
    """Pretraining images (float in [0, 1], NHWC), labels ``0..k-1``, test split, per-channel stats."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fallback: bool = False


def _digits(shape, seed):
    import jax
    import jax.numpy as jnp

    from poisoning.datasets import load_digits

    ds = load_digits(flatten=False, seed=seed)
    h, w, c = shape

    def up(x):
        x = jax.image.resize(jnp.asarray(x, jnp.float32)[..., None], (len(x), h, w, 1), "bilinear")
        return np.clip(np.repeat(np.asarray(x), c, axis=-1), 0.0, 1.0)

    x_train, x_test = up(ds.X_train), up(ds.X_test)
    mean = tuple(float(v) for v in x_train.mean(axis=(0, 1, 2)))
    std = tuple(float(v) for v in x_train.std(axis=(0, 1, 2)))
    return x_train, ds.y_train.astype(np.int32), x_test, ds.y_test.astype(np.int32), mean, std


def load_protocol(protocol: str, input_shape: tuple[int, int, int], data_dir=None, seed: int = 0,
                  cache_dir=None) -> ProtocolData:
    """The pretraining data of ``protocol`` for a model taking ``input_shape`` images (digits fallback).

    ``cache_dir``: where :func:`poisoning.datasets.load_cifar10` keeps its decompressed arrays
    (``<cache>/data``)."""
    from poisoning import datasets
    from poisoning.models import CIFAR10_MEAN, CIFAR10_STD, MNIST_MEAN, MNIST_STD
    from poisoning.training import resolve_cache_dir

    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol must be one of {PROTOCOLS}, got {protocol!r}")
    data_dir = _cli.resolve_data_dir(data_dir)
    fallback = False
    try:
        if protocol.startswith("cifar"):
            if input_shape[-1] != 3:
                raise ValueError(f"{protocol} has 3 channels; this model takes {input_shape}")
            if protocol == "cifar100":
                ds = datasets.load_cifar100(data_dir)
                mean, std = CIFAR100_MEAN, CIFAR100_STD
            else:
                classes = tuple(range(5)) if protocol == "cifar10-first5" else None
                ds = datasets.load_cifar10(data_dir, classes=classes,
                                           cache_dir=resolve_cache_dir(cache_dir) / "data")
                mean, std = CIFAR10_MEAN, CIFAR10_STD
            k = int(ds.y_train.max()) + 1
            return ProtocolData(protocol, ds.X_train, ds.y_train.astype(np.int32), ds.X_test,
                                ds.y_test.astype(np.int32), k, mean, std)
        if protocol in ("mnist", "fashion_mnist"):
            if input_shape[-1] != 1:
                raise ValueError(f"{protocol} has 1 channel; this model takes {input_shape}")
            loader = datasets.load_mnist if protocol == "mnist" else datasets.load_fashion_mnist
            ds = loader(data_dir, flatten=False)
            x_tr, x_te = ds.X_train[..., None], ds.X_test[..., None]
            mean = MNIST_MEAN if protocol == "mnist" else (float(x_tr.mean()),)
            std = MNIST_STD if protocol == "mnist" else (float(x_tr.std()),)
            return ProtocolData(protocol, x_tr, ds.y_train.astype(np.int32), x_te, ds.y_test.astype(np.int32), 10,
                                mean, std)
    except FileNotFoundError as exc:
        print(f"[pretrain] {protocol}: data not found ({exc}); falling back to scikit-learn's digits, "
              "upsampled: the accuracies are NOT those of the protocol", flush=True)
        fallback = True
    x_tr, y_tr, x_te, y_te, mean, std = _digits(input_shape, seed)
    return ProtocolData("digits", x_tr, y_tr, x_te, y_te, 10, mean, std, fallback)


def recipe(preset: str, *, epochs: int | None = None, quick: bool = False):
    """The :class:`~poisoning.training.TrainConfig` and network knobs of a preset."""
    from poisoning.training import Augment, TrainConfig

    if preset not in PRESETS:
        raise ValueError(f"--preset must be one of {PRESETS}, got {preset!r}")
    augment = Augment.cifar()
    if preset == "cpu":
        cfg = TrainConfig(epochs=8, batch_size=128, optimizer="nesterov", learning_rate=0.05, momentum=0.9,
                          weight_decay=5e-4, schedule="cosine", augment=augment)
        knobs = {"width": 16}
    else:
        cfg = TrainConfig(epochs=200, batch_size=128, optimizer="sgd", learning_rate=0.1, momentum=0.9,
                          weight_decay=2e-4, schedule="step", milestones=(100, 150), decay=0.1, augment=augment)
        knobs = {}
    if quick:
        cfg = cfg.replace(epochs=2, batch_size=32, milestones=(1,) if cfg.schedule == "step" else ())
        knobs = {"width": 4}
    if epochs is not None:
        scale = epochs / cfg.epochs
        cfg = cfg.replace(epochs=epochs, milestones=tuple(m * scale for m in cfg.milestones))
    return cfg, knobs


def _knobs_for(name: str, width: int | None, preset_knobs: dict) -> dict:
    """Network knobs for a first-stage width ``w``: ``width`` where the model has one, MobileNetV2's
    ``width_mult = w / 32`` (its stem has 32 filters), NiN's ``channels = (12w, 10w, 6w)``
    ((192, 160, 96) at w = 16); LeNet-5 has no width knob."""
    w = width if width is not None else preset_knobs.get("width")
    if w is None or name == "lenet5":
        return {}
    if name == "mobilenetv2":
        return {"width_mult": w / 32}
    if name == "nin":
        return {"channels": (12 * w, 10 * w, 6 * w)}
    return {"width": w}


class Pretrained(NamedTuple):
    """The ``model`` (flax module, with its input normalization), its trained ``state`` and ``info``
    (what :func:`pretrain` returns and ``results.json`` records)."""

    model: Any
    state: Any
    info: dict[str, Any]


def pretrain(
    model_name: str = "resnet18",
    protocol: str = "cifar10-first5",
    preset: str = "cpu",
    *,
    seed: int = 0,
    width: int | None = None,
    epochs: int | None = None,
    quick: bool = False,
    data_dir=None,
    cache_dir=None,
    progress: bool | None = None,
) -> Pretrained:
    """Train (or load from the cache) ``model_name`` on ``protocol`` with ``preset``; see the module
    docstring. ``width`` scales the network (filters of its first stage), ``epochs`` overrides the
    preset's (schedule milestones scale with it)."""
    from poisoning.models import MODELS, default_input_shape, get_model
    from poisoning.training import cached_train

    if model_name not in MODELS:
        raise ValueError(f"--model must be one of {sorted(MODELS)}, got {model_name!r}")
    cfg, preset_knobs = recipe(preset, epochs=epochs, quick=quick)
    shape = default_input_shape(model_name)
    data = load_protocol(protocol, shape, data_dir, seed, cache_dir)
    knobs = _knobs_for(model_name, width, preset_knobs)
    model = get_model(model_name, data.num_classes, mean=data.mean, std=data.std, **knobs)
    x_train, y_train = data.x_train, data.y_train
    if quick:
        x_train, y_train = x_train[:256], y_train[:256]
    spec = {"protocol": data.name, "fallback": data.fallback, "preset": preset, "quick": quick,
            "model_name": model_name, "knobs": {k: list(v) if isinstance(v, tuple) else v for k, v in knobs.items()}}
    t0 = time.perf_counter()
    result = cached_train(f"{model_name}-{data.name}", model, (x_train, y_train), cfg, seed=seed, spec=spec,
                          eval_data=(data.x_test, data.y_test), cache_dir=cache_dir, progress=progress)
    info = dict(result.info)
    info.update(cached=result.cached, folder=str(result.folder), seconds_this_call=time.perf_counter() - t0,
                model_name=model_name, protocol=data.name, requested_protocol=protocol, fallback=data.fallback,
                preset=preset, num_classes=data.num_classes, n_test=int(len(data.y_test)))
    return Pretrained(model, result.state, info)


def build_parser():
    p = _cli.base_parser(__doc__.splitlines()[0], default_out="runs/pretrain")
    p.add_argument("--model", default="resnet18", help="a name of poisoning.models.MODELS")
    p.add_argument("--protocol", default="cifar10-first5", choices=PROTOCOLS)
    p.add_argument("--preset", default="cpu", choices=PRESETS)
    p.add_argument("--width", type=int, default=None, help="filters of the first stage (network width)")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's number of epochs")
    p.add_argument("--cache-dir", default=None, help="cache folder (default $BILEVEL_CACHE_DIR or ~/.cache/bilevel-poisoning)")
    return p


def _plot(history, path):
    plt = _cli.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    axes[0].plot(history["epoch"], history["loss"], marker="o")
    axes[0].set_xlabel("epoch"), axes[0].set_ylabel("training loss")
    axes[1].plot(history["epoch"], history["accuracy"], marker="o")
    axes[1].set_xlabel("epoch"), axes[1].set_ylabel("training accuracy")
    return _cli.save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    res = pretrain(args.model, args.protocol, args.preset, seed=args.seed, width=args.width, epochs=args.epochs,
                   quick=args.quick, data_dir=args.data_dir, cache_dir=args.cache_dir)
    info = res.info
    acc = info.get("eval", {}).get("accuracy")
    print(f"{info['model_name']} on {info['protocol']}{' (fallback)' if info['fallback'] else ''}, preset "
          f"{info['preset']}: test accuracy {acc:.4f} ({'loaded from' if info['cached'] else 'trained and stored in'} "
          f"{info['folder']}, {info['seconds_this_call']:.1f} s)")
    _cli.write_json_atomic(out / "results.json", info)
    _plot(info["history"], out / "training.png")
    print(f"wrote {out / 'results.json'} and {out / 'training.png'}")
    return info


if __name__ == "__main__":
    main()
