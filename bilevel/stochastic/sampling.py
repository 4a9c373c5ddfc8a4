r"""Mini-batch sampling and oracle accounting, as pure functions of a small state (the *tape*).

A run owns one PRNG key. Mini-batch number :math:`k` of the inner (outer) data is a pure function of
``(key, k)``, so a step is deterministic given its state and ``vmap`` over keys gives independent
seeds. The :class:`Tape` carries the key, the two draw counters and the oracle-call counters.

Sampling modes (:class:`Batching`, ``n`` rows, batch size ``b``, ``B = ceil(n / b)`` blocks of
consecutive rows, the last one wrapping around to the first rows when ``b`` does not divide ``n``):

- ``"shuffle"`` (default; benchopt's sampler also visits every block once per epoch): epoch ``e``
  of ``B`` draws visits the blocks in the order :math:`(a_e j + c_e) \bmod B`, :math:`j = 0..B-1`,
  with :math:`a_e` coprime to ``B`` and :math:`c_e` taken from a 32-bit integer hash of the epoch
  and a per-stream seed drawn once from the key: a random affine permutation computed per draw in a
  few integer operations, without a sort, a branch or a cryptographic hash (a full permutation per
  epoch needs a sort and a branch in the compiled loop, measured 3x slower per iteration on benchopt's
  quadratic; a threefry hash per draw still doubled the time of the single-loop solvers there).
  Each draw is marginally uniform; draws are *not* independent within an epoch.
- ``"block"``: a uniformly random block at every draw, with replacement. Draws are i.i.d. and every
  block estimator is an unbiased estimate of the full-data quantity when ``b`` divides ``n``
  (otherwise the wrapped rows weigh twice as much: a bias of order ``(b - n mod b) / n``). The
  setting of the SAGA analysis of SABA.
- ``"uniform"``: ``b`` rows drawn uniformly with replacement: i.i.d. and exactly unbiased for any
  ``n``, no block identity (not usable by SABA's per-block memory).

``batch_size=None`` (or ``>= n``) means full batch: every draw is all rows, block 0.

Oracle calls are counted per kind (:data:`ORACLES`: inner gradient, outer gradient, inner Hessian-
vector product, cross derivative :math:`\nabla^2_{xz}g\,v`) and per batch type (row 0: mini-batch,
row 1: full batch), as ``int32``. Multiply by the batch sizes for the number of per-example
evaluations (the driver does, in float64).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bilevel.stochastic.problem import BilevelProblem, take_rows

__all__ = [
    "SAMPLING_MODES",
    "ORACLES",
    "GRAD_INNER",
    "GRAD_OUTER",
    "HVP",
    "CROSS",
    "Batching",
    "Tape",
    "new_tape",
    "count",
    "tally",
    "block_indices",
    "num_blocks",
    "draw_inner",
    "draw_outer",
]

SAMPLING_MODES = ("shuffle", "block", "uniform")
ORACLES = ("grad_inner", "grad_outer", "hvp", "cross")
GRAD_INNER, GRAD_OUTER, HVP, CROSS = range(4)


def check_batch_size(value, name: str = "batch_size") -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"argument {name!r} must be an int >= 1 or None (full batch), got {value!r}")


def check_mode(mode: str) -> None:
    if mode not in SAMPLING_MODES:
        raise ValueError(f"argument 'sampling' must be one of {SAMPLING_MODES}, got {mode!r}")


@dataclasses.dataclass(frozen=True)
class Batching:
    """Batch sizes of the inner and outer draws (``None``: full batch) and the sampling mode."""

    inner: int | None = 64
    outer: int | None = 64
    mode: str = "shuffle"

    def __post_init__(self):
        check_batch_size(self.inner, "batch_size")
        check_batch_size(self.outer, "batch_size")
        check_mode(self.mode)


class Tape(NamedTuple):
    """Sampling and accounting state threaded through every step.

    Attributes:
      key: the run's PRNG key.
      inner, outer: ``int32`` number of inner / outer mini-batches drawn so far.
      calls: ``int32[2, 4]`` oracle calls, row 0 mini-batch, row 1 full batch, columns :data:`ORACLES`.
      seeds: ``uint32[2]`` per-stream seeds of the ``"shuffle"`` epoch orders (drawn from ``key``).
    """

    key: jax.Array
    inner: jax.Array
    outer: jax.Array
    calls: jax.Array
    seeds: jax.Array


def new_tape(key) -> Tape:
    """A fresh tape for the run key ``key`` (a ``jax.random.PRNGKey``/``key`` or an int seed)."""
    if isinstance(key, int) and not isinstance(key, bool):
        key = jax.random.PRNGKey(key)
    zero = jnp.zeros((), jnp.int32)
    seeds = jax.random.bits(jax.random.fold_in(key, 3), (2,), jnp.uint32)
    return Tape(key, zero, zero, jnp.zeros((2, len(ORACLES)), jnp.int32), seeds)


def _mix32(x):
    """A 32-bit integer finalizer (C. Wellons' "lowbias32"): a cheap, well-mixing hash of uint32."""
    x = x ^ (x >> 16)
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> 16)


def count(tape: Tape, kind: int, k=1, *, full: bool = False) -> Tape:
    """Add ``k`` calls of oracle ``kind`` (mini-batch, or full batch with ``full=True``)."""
    return tape._replace(calls=tape.calls.at[int(full), kind].add(jnp.asarray(k, jnp.int32)))


def tally(tape: Tape, batching: Batching, kind: int, k=1) -> Tape:
    """:func:`count` ``k`` calls of ``kind`` on the batches of ``batching`` (full-batch row when its
    batch size for that data is ``None``)."""
    size = batching.outer if kind == GRAD_OUTER else batching.inner
    return count(tape, kind, k, full=size is None)


def _stream_key(key, stream: int):
    return jax.random.fold_in(key, stream)


@functools.lru_cache(maxsize=None)
def _units(n_blocks: int) -> np.ndarray:
    """The multipliers ``a`` in ``[1, B)`` coprime to ``B`` (``a j + c mod B`` is then a permutation)."""
    return np.array([a for a in range(1, max(n_blocks, 2)) if math.gcd(a, n_blocks) == 1] or [1], np.int32)


def block_indices(key, k, n: int, batch_size: int | None, mode: str, seed=None):
    """Rows ``idx`` (shape ``(b,)``) and block id of draw number ``k`` of a stream (see the module doc).

    ``seed`` (``uint32``, ``"shuffle"`` only) seeds the epoch orders; by default it is drawn from ``key``.
    """
    if batch_size is None or batch_size >= n:
        return jnp.arange(n), jnp.zeros((), jnp.int32)
    b = batch_size
    n_blocks = -(-n // b)
    k = jnp.asarray(k, jnp.int32)
    if mode == "uniform":
        idx = jax.random.randint(jax.random.fold_in(key, k), (b,), 0, n)
        return idx, jnp.asarray(-1, jnp.int32)
    if mode == "block":
        block = jax.random.randint(jax.random.fold_in(key, k), (), 0, n_blocks)
    else:  # shuffle: a random affine permutation of the blocks per epoch, a few integer ops per draw
        if seed is None:
            seed = jax.random.bits(key, (), jnp.uint32)
        epoch, pos = k // n_blocks, k % n_blocks
        units = _units(n_blocks)
        h1 = _mix32(epoch.astype(jnp.uint32) ^ seed)
        h2 = _mix32(h1 ^ np.uint32(0x9E3779B9))
        a = jnp.asarray(units)[(h1 % np.uint32(len(units))).astype(jnp.int32)]
        c = (h2 % np.uint32(n_blocks)).astype(jnp.int32)
        block = (a * pos + c) % n_blocks
    idx = (block * b + jnp.arange(b)) % n
    return idx, block.astype(jnp.int32)


def num_blocks(n: int, batch_size: int | None) -> int:
    """Number of blocks ``ceil(n / b)`` (1 for full batch)."""
    if batch_size is None or batch_size >= n:
        return 1
    return -(-n // batch_size)


def _rows(data, idx, block, n, batching):
    """The rows of a draw: a contiguous slice when the blocks tile the data exactly (cheaper than a
    gather), else a gather of ``idx``."""
    b = idx.shape[0]
    if batching.mode != "uniform" and n % b == 0:
        return jax.tree_util.tree_map(lambda a: jax.lax.dynamic_slice_in_dim(a, block * b, b, axis=0), data)
    return take_rows(data, idx)


def draw_inner(problem: BilevelProblem, batching: Batching, tape: Tape):
    """Next inner mini-batch: ``(batch, block, tape)``."""
    if batching.inner is None or batching.inner >= problem.n_inner:
        return problem.inner_data, jnp.zeros((), jnp.int32), tape._replace(inner=tape.inner + 1)
    idx, block = block_indices(_stream_key(tape.key, 0), tape.inner, problem.n_inner, batching.inner, batching.mode,
                               tape.seeds[0])
    return _rows(problem.inner_data, idx, block, problem.n_inner, batching), block, tape._replace(inner=tape.inner + 1)


def draw_outer(problem: BilevelProblem, batching: Batching, tape: Tape):
    """Next outer mini-batch: ``(batch, block, tape)``."""
    if batching.outer is None or batching.outer >= problem.n_outer:
        return problem.outer_data, jnp.zeros((), jnp.int32), tape._replace(outer=tape.outer + 1)
    idx, block = block_indices(_stream_key(tape.key, 1), tape.outer, problem.n_outer, batching.outer, batching.mode,
                               tape.seeds[1])
    return _rows(problem.outer_data, idx, block, problem.n_outer, batching), block, tape._replace(outer=tape.outer + 1)


def solver_key(tape: Tape, step) -> jax.Array:
    """A key for the solver's own randomness at iteration ``step`` (e.g. a random truncation)."""
    return jax.random.fold_in(_stream_key(tape.key, 2), step)
