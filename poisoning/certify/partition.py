r"""The deterministic hash partition of Deep Partition Aggregation (Levine & Feizi 2021).

DPA splits the training set into :math:`k` disjoint partitions with a hash :math:`h` of the *image
alone*. The paper's choice on MNIST and CIFAR-10 is the sum of the integer pixel values modulo
:math:`k`:

.. math::  h(x) = \Big(\sum_j \mathrm{round}(255\, x_j)\Big) \bmod k,

for pixels :math:`x_j \in [0, 1]` (``uint8`` pixels are summed as they are). Two properties carry the
certificate (:mod:`poisoning.certify.aggregate`):

- the partition of a sample depends on that sample only, so inserting or deleting one training sample
  changes the contents of exactly one partition (hence one base classifier's vote);
- it ignores the label, so flipping a label never moves a sample to another partition (SS-DPA's
  label-flip threat model: one flip changes one partition's labels).

Partitions have unequal sizes; :func:`partition_layout` lays them out as a ``(k, size)`` table of
indices into the training set plus a boolean mask (padding slots point at index 0 with mask ``False``),
so the :math:`k` base learners can be trained at once with ``jax.vmap`` on equally shaped, masked data.
Within a partition, samples keep their order in the training set (a stable sort).

Everything here is a pure function: jit-able (``k`` and ``size`` are static) and deterministic.
Bad input (``k < 1``, ``k`` larger than the number of images, pixels outside ``[0, 1]`` or ``0..255``,
NaN) raises a ``ValueError`` naming the argument, in eager mode and under ``jit``.

Reference: A. Levine, S. Feizi, *Deep Partition Aggregation: Provable Defenses against General
Poisoning Attacks*, ICLR 2021, Sec. 3 ("we use the sum of pixel values modulo k as the hash").
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from bilevel._checks import error_if

__all__ = ["pixel_sum_hash", "partition_indices", "partition_sizes", "partition_layout", "check_num_partitions"]


def check_num_partitions(k, n: int | None = None) -> int:
    """``k`` as a Python int, checked to be an integer in ``[1, n]`` (``ValueError`` naming ``k``)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"argument 'k' (number of partitions) must be an int >= 1, got {k!r}")
    k = int(k)
    if k < 1:
        raise ValueError(f"argument 'k' (number of partitions) must be >= 1, got {k}")
    if n is not None and k > n:
        raise ValueError(f"argument 'k' (number of partitions) is {k}, more than the {n} training images")
    return k


def _integer_pixels(images):
    """``images`` as int32 pixels ``0..255`` (checked), whatever their dtype."""
    x = jnp.asarray(images)
    if x.ndim < 2:
        raise ValueError(f"argument 'images' must be a batch of images (n, ...), got shape {x.shape}")
    if jnp.issubdtype(x.dtype, jnp.integer):
        bad = jnp.any((x < 0) | (x > 255))
        error_if(None, bad, "argument 'images': integer pixels must be in 0..255", error=ValueError)
        return x.astype(jnp.int32)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"argument 'images' must hold integer or floating pixels, got dtype {x.dtype}")
    error_if(None, jnp.any(~jnp.isfinite(x)), "argument 'images' contains NaN or inf", error=ValueError)
    error_if(None, jnp.any((x < 0) | (x > 1)), "argument 'images': floating pixels must be in [0, 1]",
             error=ValueError)
    return jnp.round(x.astype(jnp.float32) * 255.0).astype(jnp.int32)


def pixel_sum_hash(images) -> jax.Array:
    """The integer pixel sum :math:`\\sum_j \\mathrm{round}(255 x_j)` of each image, ``(n,)`` int32.

    ``images``: ``(n, ...)`` floating pixels in ``[0, 1]`` or integer pixels in ``0..255``. The sum of a
    28x28 image is at most 199,920, far inside int32.
    """
    x = _integer_pixels(images)
    return jnp.sum(x.reshape(x.shape[0], -1), axis=1)


def partition_indices(images, k: int) -> jax.Array:
    """The DPA partition of each image, :math:`h(x) = (\\text{pixel sum}) \\bmod k`, ``(n,)`` int32.

    Depends on each image alone (never on its label or on the other images).
    """
    n = jnp.shape(images)[0]
    k = check_num_partitions(k, n)
    return jnp.mod(pixel_sum_hash(images), k).astype(jnp.int32)


def partition_sizes(part, k: int) -> jax.Array:
    """Number of training samples in each of the ``k`` partitions, ``(k,)`` int32."""
    k = check_num_partitions(k)
    part = jnp.asarray(part)
    if part.ndim != 1 or not jnp.issubdtype(part.dtype, jnp.integer):
        raise ValueError(f"argument 'part' must be a 1-d integer array of partition ids, got {part.dtype}{part.shape}")
    error_if(None, jnp.any((part < 0) | (part >= k)), "argument 'part': partition ids must be in [0, k)",
             error=ValueError)
    return jnp.bincount(part, length=k).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("k", "size"))
def _layout(part, k, size):
    n = part.shape[0]
    counts = jnp.bincount(part, length=k).astype(jnp.int32)
    order = jnp.argsort(part, stable=True).astype(jnp.int32)
    starts = jnp.cumsum(counts) - counts
    slot = jnp.arange(size, dtype=jnp.int32)
    mask = slot[None, :] < counts[:, None]
    pos = jnp.clip(starts[:, None] + slot[None, :], 0, n - 1)
    index = jnp.where(mask, order[pos], 0)
    return index, mask, counts


def partition_layout(part, k: int, size: int | None = None):
    """Lay the partitions out as equally shaped, masked rows.

    Args:
      part: ``(n,)`` partition ids in ``[0, k)`` (e.g. :func:`partition_indices`).
      k: number of partitions.
      size: padded size of every row (static); default the largest partition (needs concrete ``part``).
        A fixed ``size`` chosen in advance keeps each base learner a function of its own partition only
        (see :mod:`poisoning.certify.dpa`).

    Returns:
      ``(index, mask)``: ``index`` ``(k, size)`` int32 rows of training-set indices (padding slots hold 0)
      and ``mask`` ``(k, size)`` bool, ``True`` on the partition's own samples, in training-set order.
    """
    k = check_num_partitions(k)
    part = jnp.asarray(part)
    if part.ndim != 1 or not jnp.issubdtype(part.dtype, jnp.integer):
        raise ValueError(f"argument 'part' must be a 1-d integer array of partition ids, got {part.dtype}{part.shape}")
    if part.shape[0] == 0:
        raise ValueError("argument 'part' holds no samples")
    error_if(None, jnp.any((part < 0) | (part >= k)), "argument 'part': partition ids must be in [0, k)",
             error=ValueError)
    if size is None:
        try:
            size = int(np.max(np.bincount(np.asarray(part), minlength=k)))
        except jax.errors.TracerArrayConversionError as e:
            raise ValueError("partition_layout under jit needs a static 'size'") from e
        size = max(size, 1)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"argument 'size' must be an int >= 1, got {size!r}")
    index, mask, counts = _layout(part.astype(jnp.int32), k, int(size))
    error_if(None, jnp.max(counts) > size,
             "argument 'size' ({size}) is smaller than the largest partition ({largest})", error=ValueError,
             fmt_args={"size": int(size), "largest": jnp.max(counts)})
    return index, mask
