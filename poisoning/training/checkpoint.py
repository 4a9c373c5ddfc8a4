"""Checkpoints without pickle, and :func:`fit`: long runs with progress, checkpoints and resume.

A :class:`~poisoning.training.TrainState` is saved as one ``.npz`` file whose members are the state's
leaves, named by their path (``params/stage1_block1/conv1/kernel``, ``opt_state/0/trace/...``), plus
``meta/*`` entries; it is written to a temporary file in the same folder and moved into place with
:func:`os.replace`, so an interrupted write never leaves a broken checkpoint, and read back with
``allow_pickle=False`` into the structure of a template state (shapes and dtypes are checked).

:func:`fit` runs :func:`~poisoning.training.train_epochs` in chunks of ``every`` epochs, shows a
``tqdm`` bar, saves the state and the history after each chunk and, when the checkpoint file exists,
resumes from it. Because the data order and the augmentations are functions of the key and the step
counter (see :mod:`.loop`), a run that is killed and resumed ends with the same parameters, bit for
bit, as one that was not. The checkpoint records a fingerprint of the model, the config, the key and
the data; resuming from a checkpoint of another run is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from poisoning.training.config import TrainConfig
from poisoning.training.loop import _default_key, _prepare, _run_epochs_impl, evaluate
from poisoning.training.state import TrainState

__all__ = ["save_state", "load_state", "fit", "FitResult", "fingerprint", "atomic_savez"]

_FORMAT = 1


# ----------------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------------
def _path_name(path) -> str:
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(k.name)
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, jax.tree_util.FlattenedIndexKey):
            parts.append(str(k.key))
        else:  # pragma: no cover - other key types
            parts.append(str(k))
    return "/".join(parts)


def _named_leaves(tree) -> list[tuple[str, Any]]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(_path_name(p), v) for p, v in leaves]


def _storable(a) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "biuf":  # bfloat16 and other extension types: float32 on disk
        a = a.astype(np.float32)
    return a


def atomic_savez(path: str | os.PathLike, arrays: dict[str, Any]) -> Path:
    """``np.savez`` to ``path`` through a temporary file and :func:`os.replace` (atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    return path


def save_state(path: str | os.PathLike, state: TrainState, meta: dict[str, Any] | None = None) -> Path:
    """Save ``state`` (and small ``meta`` arrays / strings / numbers) atomically to ``path`` (``.npz``)."""
    if not isinstance(state, TrainState):
        raise TypeError(f"argument 'state' must be a TrainState, got {type(state).__name__}")
    arrays = {"meta/format": np.asarray(_FORMAT), "meta/steps_per_epoch": np.asarray(state.steps_per_epoch)}
    for name, leaf in _named_leaves(state):
        arrays["state/" + name] = _storable(jax.device_get(leaf))
    for k, v in (meta or {}).items():
        a = np.asarray(v)
        if a.dtype.kind not in "biufU":
            raise TypeError(f"meta[{k!r}] has dtype {a.dtype}; only numbers, booleans and strings are stored")
        arrays["meta/" + k] = a
    return atomic_savez(path, arrays)


def load_state(path: str | os.PathLike, like: TrainState) -> tuple[TrainState, dict[str, Any]]:
    """Read a state saved by :func:`save_state` into the structure of ``like`` (shapes/dtypes checked;
    ``like`` may hold arrays or :class:`jax.ShapeDtypeStruct` leaves, e.g. from :func:`jax.eval_shape`).

    Returns ``(state, meta)``.
    """
    path = Path(path)
    with np.load(path, allow_pickle=False) as f:
        stored = {k: f[k] for k in f.files}
    if int(stored.get("meta/format", -1)) != _FORMAT:
        raise ValueError(f"{path}: not a training checkpoint of format {_FORMAT}")
    names = [n for n, _ in _named_leaves(like)]
    want = {"state/" + n for n in names}
    have = {k for k in stored if k.startswith("state/")}
    if want != have:
        missing, extra = sorted(want - have)[:5], sorted(have - want)[:5]
        raise ValueError(f"{path}: the checkpoint does not match the model/optimizer: missing {missing}, unexpected {extra}")
    leaves = []
    for name, ref in _named_leaves(like):
        a = stored["state/" + name]
        if a.shape != tuple(ref.shape):
            raise ValueError(f"{path}: {name} has shape {a.shape}, the template has {tuple(ref.shape)}")
        leaves.append(jnp.asarray(a, dtype=ref.dtype))
    treedef = jax.tree_util.tree_structure(like)
    state = jax.tree_util.tree_unflatten(treedef, leaves)
    spe = int(stored["meta/steps_per_epoch"])
    if spe != like.steps_per_epoch:
        state = state.replace(steps_per_epoch=spe)
    meta = {k[5:]: (v[()] if v.ndim == 0 else v) for k, v in stored.items() if k.startswith("meta/")}
    return state, meta


# ----------------------------------------------------------------------------------------------------
# fingerprints
# ----------------------------------------------------------------------------------------------------
def _canonical(obj):
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if hasattr(obj, "as_dict"):
        return _canonical(obj.as_dict())
    if isinstance(obj, (np.ndarray, jax.Array)) and not isinstance(obj, jax.core.Tracer):
        a = np.ascontiguousarray(jax.device_get(obj))
        return {"dtype": str(a.dtype), "shape": list(a.shape), "sha256": hashlib.sha256(a.tobytes()).hexdigest()}
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    return repr(obj)


def fingerprint(*objs) -> str:
    """SHA-256 (hex) of a canonical JSON form of ``objs`` (dicts, lists, numbers, strings, arrays by
    content, configs through ``as_dict()``, anything else through ``repr``)."""
    text = json.dumps(_canonical(list(objs)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _key_data(key):
    try:
        return np.asarray(jax.random.key_data(key))
    except TypeError:
        return np.asarray(key)


# ----------------------------------------------------------------------------------------------------
# fit
# ----------------------------------------------------------------------------------------------------
class FitResult(NamedTuple):
    """``state`` after training and the per-epoch ``history`` (``epoch``, ``loss``, ``accuracy``, and
    ``eval_loss``/``eval_accuracy`` with ``eval_data``), ``seconds`` of training in this call."""

    state: TrainState
    history: dict[str, list]
    seconds: float


def _progress_enabled(progress) -> bool:
    if progress is not None:
        return bool(progress)
    if os.environ.get("CI"):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


_run_epochs_donated = jax.jit(
    _run_epochs_impl, static_argnames=("model", "config", "num_epochs"), donate_argnames=("state",)
)


def fit(
    model,
    state: TrainState,
    data,
    config: TrainConfig,
    *,
    key=None,
    checkpoint: str | os.PathLike | None = None,
    every: int = 1,
    eval_data=None,
    progress: bool | None = None,
    callback: Callable[[int, TrainState, dict], None] | None = None,
    desc: str | None = None,
) -> FitResult:
    """Train ``config.epochs`` epochs like :func:`~poisoning.training.train`, with checkpoints.

    Args:
      checkpoint: path of an ``.npz`` checkpoint; when it exists the run resumes from it (its
        fingerprint must match), and it is rewritten after every chunk of ``every`` epochs.
      eval_data: ``(x, y)`` evaluated after every chunk (``eval_loss``, ``eval_accuracy`` in the history).
      progress: a ``tqdm`` bar over epochs (default: on interactive terminals, off under ``$CI``).
      callback: ``callback(epoch, state, metrics)`` after each chunk (and after the checkpoint).

    Returns:
      :class:`FitResult` ``(state, history, seconds)``; the state equals ``train(model, state, data,
      config, key=key)`` (same batches, same augmentations).
    """
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ValueError(f"argument 'every' must be an int >= 1, got {every!r}")
    data = _prepare(model, state, data, config)
    key = _default_key(config, key)
    history: dict[str, list] = {"epoch": [], "loss": [], "accuracy": []}
    if eval_data is not None:
        history.update(eval_loss=[], eval_accuracy=[])
    spe = state.steps_per_epoch
    start_epoch = int(state.step) // spe
    tag = None
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        tag = fingerprint(repr(model), config, _key_data(key), data, int(state.step), "fit")
        if checkpoint.is_file():
            loaded, meta = load_state(checkpoint, state)
            if str(meta.get("fingerprint")) != tag:
                raise ValueError(
                    f"{checkpoint} was written by another run (model, config, key, data or start differ); "
                    "delete it or choose another checkpoint path"
                )
            state = loaded
            stored = json.loads(str(meta["history"]))
            history = {k: list(stored.get(k, [])) for k in history}
    end_epoch = start_epoch + config.epochs
    epoch = int(state.step) // spe
    state = jax.tree_util.tree_map(jnp.copy, state)  # the caller's arrays are never donated
    seconds = 0.0
    bar = None
    if _progress_enabled(progress):
        from tqdm.auto import tqdm

        bar = tqdm(total=config.epochs, initial=epoch - start_epoch, desc=desc or type(model).__name__,
                   unit="epoch", leave=False, dynamic_ncols=True)
    try:
        while epoch < end_epoch:
            chunk = min(every, end_epoch - epoch)
            t0 = time.perf_counter()
            state, metrics = _run_epochs_donated(model, state, data, key, config, chunk)
            metrics = jax.device_get(metrics)
            seconds += time.perf_counter() - t0
            for i in range(chunk):
                history["epoch"].append(epoch + i + 1)
                history["loss"].append(float(metrics["loss"][i]))
                history["accuracy"].append(float(metrics["accuracy"][i]))
            epoch += chunk
            last = {k: history[k][-1] for k in ("loss", "accuracy")}
            if eval_data is not None:
                ev = evaluate(model, state, eval_data)
                for i in range(chunk):  # evaluated once per chunk; the value is that of its last epoch
                    history["eval_loss"].append(ev["loss"] if i == chunk - 1 else None)
                    history["eval_accuracy"].append(ev["accuracy"] if i == chunk - 1 else None)
                last.update(eval_loss=ev["loss"], eval_accuracy=ev["accuracy"])
            if checkpoint is not None:
                save_state(checkpoint, state, {"fingerprint": tag, "history": json.dumps(history)})
            if bar is not None:
                bar.update(chunk)
                bar.set_postfix({k: f"{v:.3f}" for k, v in last.items()})
            if callback is not None:
                callback(epoch, state, last)
    finally:
        if bar is not None:
            bar.close()
    return FitResult(state, history, seconds)
