r"""Independent trials, vmapped and sharded across devices with :mod:`jax.sharding`.

A poisoning benchmark repeats one experiment over many trials (a target, a base class, a seed). A
trial is a pure function of arrays, so :func:`map_trials` runs a chunk of them as one ``jax.vmap``,
with the trial axis laid out over a one-dimensional device mesh (``NamedSharding(mesh,
PartitionSpec("trials"))``): XLA runs each device's slice of the batch on that device, and nothing
else in the program changes between one CPU core, one GPU, eight GPUs or several hosts.

- one device: the chunk runs vmapped on it;
- several devices (``XLA_FLAGS=--xla_force_host_platform_device_count=4`` on a CPU, or a GPU host):
  the trial axis is split over them;
- several hosts: call :func:`jax.distributed.initialize` first; ``jax.devices()`` then lists every
  host's devices, each process builds the shards of its own devices from the same full inputs
  (:func:`jax.make_array_from_callback`) and gets every result back
  (:func:`jax.experimental.multihost_utils.process_allgather`).

The trials are padded to a multiple of the device count (with copies of the last trial, dropped from
the result), so any number of trials runs on any mesh; results are identical to running the trials
one at a time (tested). No scheduler: the chunks are a plain loop (a progress bar, a checkpoint).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["trial_mesh", "map_trials"]

AXIS = "trials"


def trial_mesh(devices: Sequence[Any] | None = None) -> Mesh:
    """A one-axis mesh named ``"trials"`` over ``devices`` (default: every device of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("argument 'devices' is empty")
    return Mesh(np.asarray(devices), (AXIS,))


@functools.lru_cache(maxsize=32)
def _compiled(fn, mesh, n_shared, axis_name):
    batched = jax.vmap(fn, in_axes=(0,) + (None,) * n_shared)
    return jax.jit(batched, out_shardings=NamedSharding(mesh, PartitionSpec(axis_name)))


def _global_array(a: np.ndarray, sharding) -> jax.Array:
    return jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx])


def _gather(tree):
    if jax.process_count() == 1:
        return jax.tree_util.tree_map(np.asarray, tree)
    from jax.experimental import multihost_utils

    return jax.tree_util.tree_map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def map_trials(fn: Callable, trials, *shared, chunk: int | None = None, mesh: Mesh | None = None,
               callback: Callable | None = None):
    """``[fn(trial_i, *shared) for i]`` stacked, computed vmapped with the trial axis sharded over ``mesh``.

    Args:
      fn: ``fn(trial, *shared) -> pytree of arrays``, pure (one trial; a trial is a pytree of arrays).
        Compiled once per ``fn`` object, shapes and mesh: pass the same function to reuse it.
      trials: a pytree of arrays with a leading trial axis (``n`` trials).
      shared: arrays every trial uses (a model's parameters, a data set), replicated on every device.
      chunk: trials per compiled call (default: all; a multiple of the device count is used), to bound
        memory; the chunks run one after the other.
      mesh: a one-axis mesh (default :func:`trial_mesh` over every device).
      callback: ``callback(done, total)`` after each chunk (a progress bar).

    Returns:
      ``fn``'s output with a leading axis of ``n`` (numpy arrays, on every process).
    """
    mesh = trial_mesh() if mesh is None else mesh
    if len(mesh.axis_names) != 1:
        raise ValueError(f"argument 'mesh' must have one axis, got axes {mesh.axis_names}")
    trials = jax.tree_util.tree_map(np.asarray, trials)
    leaves = jax.tree_util.tree_leaves(trials)
    if not leaves:
        raise ValueError("argument 'trials' has no arrays")
    n = int(leaves[0].shape[0]) if leaves[0].ndim else -1
    if n < 1 or any(l.ndim == 0 or l.shape[0] != n for l in leaves):
        raise ValueError("argument 'trials' must be arrays sharing a leading trial axis of length >= 1, got "
                         f"shapes {[l.shape for l in leaves]}")
    n_dev = mesh.devices.size
    size = n if chunk is None else int(chunk)
    if size < 1:
        raise ValueError(f"argument 'chunk' must be >= 1, got {chunk!r}")
    size = -(-min(size, n) // n_dev) * n_dev  # a multiple of the device count
    axis_name = mesh.axis_names[0]
    sharded = NamedSharding(mesh, PartitionSpec(axis_name))
    replicated = NamedSharding(mesh, PartitionSpec())
    shared_dev = jax.tree_util.tree_map(lambda a: _global_array(np.asarray(a), replicated), shared)
    batched = _compiled(fn, mesh, len(shared), axis_name)
    outs = []
    for start in range(0, n, size):
        stop = min(start + size, n)
        idx = np.arange(start, start + size)
        idx = np.minimum(idx, stop - 1)  # pad with copies of the chunk's last trial
        block = jax.tree_util.tree_map(lambda a: _global_array(a[idx], sharded), trials)
        out = _gather(batched(block, *shared_dev))
        outs.append(jax.tree_util.tree_map(lambda a: a[: stop - start], out))
        if callback is not None:
            callback(stop, n)
    return jax.tree_util.tree_map(lambda *a: np.concatenate(a, axis=0), *outs)
