"""A cache of trained models keyed by everything that determines them; nothing is ever downloaded.

Pretrained networks (the feature extractors of transfer-learning attacks, the base models of a
defense) are trained here, once, and stored under the cache folder:

- ``cache_dir`` if given, else ``$BILEVEL_CACHE_DIR``, else ``$XDG_CACHE_HOME/bilevel-poisoning``,
  else ``~/.cache/bilevel-poisoning``;
- one folder per model, ``<cache>/models/<name>-<key>``, where ``key`` is the first 16 hex digits of
  the SHA-256 of the model (its class and fields), the :class:`~poisoning.training.TrainConfig`, the
  seed, the training data (by content) and the caller's ``spec`` (e.g. the data set and classes), so
  a change in any of them trains a new model and an unchanged request reuses the stored one;
- inside: ``state.npz`` (the final :class:`~poisoning.training.TrainState`, no pickle),
  ``spec.json`` (what was trained, its history and test accuracy) and, while training,
  ``checkpoint.npz`` (the run resumes from it after an interruption).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax

from poisoning.training.checkpoint import fingerprint, fit, load_state, save_state
from poisoning.training.config import TrainConfig
from poisoning.training.loop import evaluate
from poisoning.training.state import TrainState, init_state

__all__ = ["CACHE_DIR_ENV", "CACHE_VERSION", "resolve_cache_dir", "model_dir", "cached_train", "CachedModel"]

CACHE_DIR_ENV = "BILEVEL_CACHE_DIR"
CACHE_VERSION = 1  # bump when a change of the code changes what a stored model would be


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder (see the module docstring); not created here."""
    if cache_dir is not None and str(cache_dir).strip():
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "bilevel-poisoning"


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_." for c in name):
        raise ValueError(f"argument 'name' must be a non-empty string of letters, digits, '-', '_', '.', got {name!r}")
    return name


def model_dir(name: str, model: nn.Module, config: TrainConfig, seed: int, data, spec: dict | None = None,
              cache_dir=None) -> Path:
    """The folder of the model trained with these arguments (see the module docstring)."""
    key = fingerprint(CACHE_VERSION, repr(model), config, int(seed), tuple(data), spec or {})
    return resolve_cache_dir(cache_dir) / "models" / f"{_check_name(name)}-{key[:16]}"


class CachedModel(NamedTuple):
    """A trained ``state``, the ``folder`` it is stored in, and the ``info`` of ``spec.json``
    (``cached`` is True when it was loaded instead of trained)."""

    state: TrainState
    folder: Path
    info: dict[str, Any]
    cached: bool


def cached_train(
    name: str,
    model: nn.Module,
    data,
    config: TrainConfig,
    *,
    seed: int = 0,
    spec: dict | None = None,
    eval_data=None,
    cache_dir=None,
    every: int = 1,
    progress: bool | None = None,
) -> CachedModel:
    """Load the model of these arguments from the cache, or train it (resumably) and store it.

    The parameters are initialized with ``jax.random.key(seed)`` folded with 0 and trained with the
    data order / augmentation key ``jax.random.key(seed)`` folded with 1 (:func:`~poisoning.training.fit`).
    ``eval_data`` (e.g. the test set) is evaluated at the end and stored in ``spec.json``.
    """
    data = tuple(data)
    folder = model_dir(name, model, config, seed, data, spec, cache_dir)
    n = len(data[0])
    spe = n // config.batch_size
    if spe < 1:
        raise ValueError(f"argument 'data' has {n} examples, fewer than batch_size={config.batch_size}")
    root = jax.random.key(seed)

    def initial_state():
        return init_state(model, config, data[0], jax.random.fold_in(root, 0), steps_per_epoch=spe)

    final, info_path = folder / "state.npz", folder / "spec.json"
    if final.is_file() and info_path.is_file():
        state, _ = load_state(final, jax.eval_shape(initial_state))  # shapes only: no initialization
        return CachedModel(state, folder, json.loads(info_path.read_text()), True)
    folder.mkdir(parents=True, exist_ok=True)
    template = initial_state()
    t0 = time.perf_counter()
    result = fit(model, template, data, config, key=jax.random.fold_in(root, 1), checkpoint=folder / "checkpoint.npz",
                 every=every, progress=progress, desc=name)
    info = {
        "name": name,
        "model": repr(model),
        "config": config.as_dict(),
        "seed": int(seed),
        "spec": spec or {},
        "n_train": n,
        "history": result.history,
        "train_seconds_this_call": result.seconds,
        "wall_seconds_this_call": time.perf_counter() - t0,
        "cache_version": CACHE_VERSION,
    }
    if eval_data is not None:
        info["eval"] = evaluate(model, result.state, eval_data)
    save_state(final, result.state)
    tmp = info_path.with_name(info_path.name + ".tmp")
    tmp.write_text(json.dumps(info, indent=2, default=str) + "\n")
    os.replace(tmp, info_path)
    (folder / "checkpoint.npz").unlink(missing_ok=True)
    return CachedModel(result.state, folder, info, False)
