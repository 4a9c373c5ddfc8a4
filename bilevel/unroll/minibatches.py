"""Mini-batches for a stochastic inner loop whose data order is a pure function of a PRNG key.

Any strategy of :mod:`bilevel.unroll` can run a stochastic inner loop whose data order is a pure
function of a PRNG key, so it is replayed identically by the forward pass, by rematerialization and by
the back-gradient reversal. The per-example data stay ordinary arguments of the loss (so derivatives
flow to them, e.g. for data poisoning, and the same loss serves full-batch methods):
``MiniBatches(batch_size, key, argnums)`` names the positions in ``args`` holding per-example arrays
(leading axis :math:`n`); at step :math:`t` those arguments are replaced by rows
``perm[b*B:(b+1)*B]`` of ``perm = jax.random.permutation(fold_in(key, epoch), n)``, with
``epoch, b = divmod(t, n // B)`` (the last incomplete batch of an epoch is dropped).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from bilevel.unroll._common import is_int

__all__ = ["MiniBatches", "batch_indices"]


def batch_indices(t, n: int, batch_size: int, key) -> jax.Array:
    """Row indices of step ``t``'s mini-batch: ``perm[b*B:(b+1)*B]`` with
    ``perm = jax.random.permutation(fold_in(key, epoch), n)`` and ``epoch, b = divmod(t, n // B)``.

    Pure in ``(t, key)``: the same key replays the same data order (traced ``t`` allowed).
    """
    per_epoch = n // batch_size
    t = jnp.asarray(t)
    epoch, b = t // per_epoch, t % per_epoch
    perm = jax.random.permutation(jax.random.fold_in(key, epoch), n)
    return jax.lax.dynamic_slice_in_dim(perm, b * batch_size, batch_size)


@dataclasses.dataclass(frozen=True, eq=False)  # eq by identity: ``key`` may be an array
class MiniBatches:
    """Stochastic inner loop: step ``t`` sees a mini-batch of the per-example arguments.

    Attributes:
      batch_size: rows per step (``1 <= batch_size <= n``); ``n // batch_size`` steps per epoch.
      key: a PRNG key (``jax.random.key``/``PRNGKey``) or an int seed; fixes the data order.
      argnums: positions in ``args`` (of ``minimize(loss, init, *args)``) holding per-example data:
        every leaf of those arguments has leading axis ``n`` and is sliced by :func:`batch_indices`.
        The loss keeps its signature; it just receives fewer rows.
    """

    batch_size: int
    key: Any = 0
    argnums: tuple[int, ...] | int = ()

    def __post_init__(self):
        if not is_int(self.batch_size) or self.batch_size < 1:
            raise ValueError(f"argument 'batch_size' must be an int >= 1, got {self.batch_size!r}")
        argnums = (self.argnums,) if is_int(self.argnums) else tuple(self.argnums)
        if not argnums or not all(is_int(i) for i in argnums):
            raise ValueError(
                "argument 'argnums' must name the positions in args of the per-example data, e.g. "
                f"argnums=(1, 2) for loss(params, reg, X, y); got {self.argnums!r}"
            )
        object.__setattr__(self, "argnums", argnums)

    def prng_key(self):
        if is_int(self.key):
            return jax.random.PRNGKey(int(self.key))
        return self.key

    def num_examples(self, args: tuple) -> int:
        """Validate ``argnums`` against ``args`` and return ``n``."""
        nargs = len(args)
        sizes = set()
        for i in self.argnums:
            if not -nargs <= i < nargs:
                raise ValueError(f"argument 'argnums' of MiniBatches: {i} is out of range for {nargs} args")
            for leaf in jax.tree_util.tree_leaves(args[i]):
                shape = jnp.shape(leaf)
                if not shape:
                    raise ValueError(f"argument 'argnums' of MiniBatches: args[{i}] has a scalar leaf")
                sizes.add(shape[0])
        if len(sizes) != 1:
            raise ValueError(
                "argument 'argnums' of MiniBatches: per-example args must share their leading axis, "
                f"got {sorted(sizes)}"
            )
        n = sizes.pop()
        if self.batch_size > n:
            raise ValueError(f"argument 'batch_size' ({self.batch_size}) exceeds the number of examples ({n})")
        return n

    def select(self, args: tuple, t, n: int) -> tuple:
        idx = batch_indices(t, n, self.batch_size, self.prng_key())
        pos = {i % len(args) for i in self.argnums}
        return tuple(
            jax.tree_util.tree_map(lambda a: jnp.take(a, idx, axis=0), a) if i in pos else a
            for i, a in enumerate(args)
        )


def selector(batches: MiniBatches | None, args: tuple) -> Callable:
    """``select(args, t) -> args_t`` (identity without mini-batches)."""
    if batches is None:
        return lambda a, t: a
    if not isinstance(batches, MiniBatches):
        raise ValueError(f"argument 'batches' must be a MiniBatches or None, got {type(batches).__name__}")
    n = batches.num_examples(args)
    return lambda a, t: batches.select(a, t, n)

