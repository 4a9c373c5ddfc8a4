r"""Convolutions that stay on XLA:CPU's fast path inside loops (``lax.scan``), with their gradients.

Why: XLA:CPU runs a convolution with its optimized (Eigen) kernel only when the convolution is
*canonical*: input NHWC, kernel HWIO, output NHWC, ``float32``/``float16``. JAX's derivatives of a
canonical convolution are convolutions with other dimension orders (the input gradient has an
HWOI kernel, the kernel gradient treats the channels as the batch), and XLA's pass that rewrites
them into canonical form (``ConvCanonicalization``) visits only the entry computation, not the body
of a ``while`` loop. A training step inside ``lax.scan`` therefore ran its backward convolutions
with the naive fallback, 30-50 times slower than the same step outside a loop (measured here on
the BadNets CNN: 25 ms vs 1.2 s per step; the issue is jax-ml/jax#12868).

What: :func:`conv_general_dilated` (the signature of :func:`jax.lax.conv_general_dilated`, so it can
be given to ``flax.linen.Conv(conv_general_dilated=...)``) computes the same function, but

- ungrouped 2-D convolutions use a :func:`jax.custom_vjp` whose three convolutions (the forward map
  :math:`y = x \star w`, the input gradient :math:`\bar x = \bar y \star^{\top} w` and the kernel
  gradient :math:`\bar w = x \star^{\top} \bar y`) are all written in the canonical layout with
  explicit transposes (what ``ConvCanonicalization`` would have done). The three maps are bilinear
  and each one's VJP is expressed through the others, so reverse mode of any order (a
  hypergradient through unrolled training steps) stays on the fast path. The kernel gradient is
  summed over up to 8 slices of the batch when the feature maps are large (:func:`_dw_chunks`: its
  convolution has the whole output map as window, which XLA:CPU runs 2-3x slower than the forward
  pass on 128 CIFAR images at once). Forward mode
  (``jax.jvp``) is not available for a ``custom_vjp``: use ``conv="lax"`` in the model for that;
- depthwise convolutions (one input channel per group: MobileNetV2) are a sum over the kernel
  taps of shifted slices times the weights: elementwise work only, differentiable in every mode;
- anything else (other groupings, input dilation, other layouts) is ``lax.conv_general_dilated``.

On other backends (GPU, TPU) :func:`conv_general_dilated` is ``lax.conv_general_dilated``: their
compilers choose layouts themselves. ``impl="canonical"`` forces the CPU form anywhere (tests).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["conv_general_dilated", "lax_conv", "IMPLS"]

IMPLS = ("auto", "canonical", "lax")
_NHWC = ("NHWC", "HWIO", "NHWC")


def _is_nhwc(dimension_numbers, ndim: int) -> bool:
    if ndim != 4:
        return False
    if dimension_numbers is None:
        return False
    want = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), _NHWC)
    try:
        got = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), dimension_numbers)
    except (TypeError, ValueError):
        return False
    return tuple(got) == tuple(want)


def _pairs(padding, in_spatial, kernel_spatial, strides, rhs_dilation):
    if isinstance(padding, str):
        dilated = [(k - 1) * d + 1 for k, d in zip(kernel_spatial, rhs_dilation)]
        return tuple(tuple(int(v) for v in p) for p in lax.padtype_to_pads(in_spatial, dilated, strides, padding))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _dilate(shape, dilation):
    return tuple(0 if s == 0 else 1 + d * (s - 1) for s, d in zip(shape, dilation))


def _lhs_vjp_padding(in_spatial, kernel_spatial, strides, out_spatial, padding, rhs_dilation):
    k = _dilate(kernel_spatial, rhs_dilation)
    o = _dilate(out_spatial, strides)
    before = [kd - lo - 1 for kd, (lo, _) in zip(k, padding)]
    after = [i + kd - 1 - od - b for i, kd, od, b in zip(in_spatial, k, o, before)]
    return tuple(zip(before, after))


def _rhs_vjp_padding(in_spatial, kernel_spatial, strides, out_spatial, padding, rhs_dilation):
    k = _dilate(kernel_spatial, rhs_dilation)
    o = _dilate(out_spatial, strides)
    lows = [lo for lo, _ in padding]
    highs = [od - i + kd - lo - 1 for od, i, kd, lo in zip(o, in_spatial, k, lows)]
    return tuple(zip(lows, highs))


# ----------------------------------------------------------------------------------------------------
# the canonical family: y = x * w, dx = g *^T w, dw = x *^T g (all NHWC / HWIO / NHWC)
# cfg = (strides, padding pairs, rhs_dilation, precision, x_spatial, w_spatial)
# ----------------------------------------------------------------------------------------------------
def _conv_fwd_raw(x, w, cfg):
    strides, padding, dil, precision, _, _ = cfg
    return lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dil, dimension_numbers=_NHWC,
                                    precision=precision)


def _conv_dx_raw(g, w, cfg):
    strides, padding, dil, precision, x_spatial, w_spatial = cfg
    pads = _lhs_vjp_padding(x_spatial, w_spatial, strides, g.shape[1:3], padding, dil)
    wt = jnp.swapaxes(w[::-1, ::-1], 2, 3)  # flipped, (kh, kw, O, I): canonical HWIO for g -> x
    return lax.conv_general_dilated(g, wt, (1, 1), pads, lhs_dilation=strides, rhs_dilation=dil,
                                    dimension_numbers=_NHWC, precision=precision)


def _dw_chunks(n: int, out_spatial) -> int:
    """How many slices of the batch the kernel gradient is summed over. The kernel gradient is a
    convolution whose "channels" are the examples and whose window is the whole output map; XLA:CPU's
    kernels run it 2-3x slower than the forward pass when that window times the batch is large
    (measured: 128 CIFAR images, 32x32 maps). Slices of about 2048 / (H' W') examples, at most 8 of
    them, bring it back to the forward pass's cost."""
    area = max(1, int(out_spatial[0]) * int(out_spatial[1]))
    per_chunk = max(1, 2048 // area)
    return int(min(8, max(1, n // per_chunk)))


def _conv_dw_raw(x, g, cfg):
    strides, padding, dil, precision, x_spatial, w_spatial = cfg
    pads = _rhs_vjp_padding(x_spatial, w_spatial, strides, g.shape[1:3], padding, dil)
    # A barrier keeps XLA from fusing the producers of x and g (BatchNorm's backward) into the
    # transposes below, which would recompute them in a cache-hostile order.
    x, g = lax.optimization_barrier((x, g))
    n = x.shape[0]
    chunks = _dw_chunks(n, g.shape[1:3])
    bounds = [round(i * n / chunks) for i in range(chunks + 1)]
    out = None
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        xt = jnp.transpose(x[lo:hi], (3, 1, 2, 0))  # (C, H, W, n): the channels play the batch
        gt = jnp.transpose(g[lo:hi], (1, 2, 0, 3))  # (H', W', n, O): the examples play the input channels
        part = lax.conv_general_dilated(xt, gt, dil, pads, rhs_dilation=strides, dimension_numbers=_NHWC,
                                        precision=precision)  # (C, kh, kw, O)
        out = part if out is None else out + part
    return jnp.transpose(out, (1, 2, 0, 3))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x, w, cfg):
    return _conv_fwd_raw(x, w, cfg)


def _conv_f(x, w, cfg):
    return _conv_fwd_raw(x, w, cfg), (x, w)


def _conv_b(cfg, res, g):
    x, w = res
    return _conv_dx(g, w, cfg), _conv_dw(x, g, cfg)


_conv.defvjp(_conv_f, _conv_b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_dx(g, w, cfg):
    return _conv_dx_raw(g, w, cfg)


def _conv_dx_f(g, w, cfg):
    return _conv_dx_raw(g, w, cfg), (g, w)


def _conv_dx_b(cfg, res, h):
    # <dx(g, w), h> = <g, conv(h, w)> = <w, dw(h, g)>
    g, w = res
    return _conv(h, w, cfg), _conv_dw(h, g, cfg)


_conv_dx.defvjp(_conv_dx_f, _conv_dx_b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_dw(x, g, cfg):
    return _conv_dw_raw(x, g, cfg)


def _conv_dw_f(x, g, cfg):
    return _conv_dw_raw(x, g, cfg), (x, g)


def _conv_dw_b(cfg, res, k):
    # <dw(x, g), k> = <conv(x, k), g> = <x, dx(g, k)>
    x, g = res
    return _conv_dx(g, k, cfg), _conv(x, k, cfg)


_conv_dw.defvjp(_conv_dw_f, _conv_dw_b)


# ----------------------------------------------------------------------------------------------------
# depthwise convolution as a sum of shifted slices
# ----------------------------------------------------------------------------------------------------
def _depthwise(x, w, strides, padding, dil, precision):
    kh, kw, _, out_c = w.shape
    c = x.shape[-1]
    mult = out_c // c
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    if mult > 1:
        xp = jnp.repeat(xp, mult, axis=-1)
    hp, wp = xp.shape[1], xp.shape[2]
    oh = (hp - ((kh - 1) * dil[0] + 1)) // strides[0] + 1
    ow = (wp - ((kw - 1) * dil[1] + 1)) // strides[1] + 1
    out = None
    for a in range(kh):
        for b in range(kw):
            r0, c0 = a * dil[0], b * dil[1]
            tap = lax.slice(xp, (0, r0, c0, 0), (xp.shape[0], r0 + (oh - 1) * strides[0] + 1,
                                                   c0 + (ow - 1) * strides[1] + 1, out_c),
                            (1, strides[0], strides[1], 1))
            term = tap * w[a, b, 0]
            out = term if out is None else out + term
    return out


# ----------------------------------------------------------------------------------------------------
# public entry point
# ----------------------------------------------------------------------------------------------------
def lax_conv(*args, **kwargs):
    """:func:`jax.lax.conv_general_dilated` itself (``conv="lax"`` in the models)."""
    return lax.conv_general_dilated(*args, **kwargs)


def conv_general_dilated(
    lhs,
    rhs,
    window_strides: Sequence[int],
    padding,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
    *,
    impl: str = "auto",
):
    """Drop-in :func:`jax.lax.conv_general_dilated` that stays fast inside loops on CPU (module docstring)."""
    if impl not in IMPLS:
        raise ValueError(f"argument 'impl' must be one of {IMPLS}, got {impl!r}")
    kwargs = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                  feature_group_count=feature_group_count, batch_group_count=batch_group_count,
                  precision=precision, preferred_element_type=preferred_element_type)
    use_canonical = impl == "canonical" or (impl == "auto" and jax.default_backend() == "cpu")
    plain = (
        not use_canonical
        or not _is_nhwc(dimension_numbers, jnp.ndim(lhs))
        or batch_group_count != 1
        or preferred_element_type is not None
        or (lhs_dilation is not None and any(d != 1 for d in lhs_dilation))
        or jnp.ndim(rhs) != 4
    )
    if plain:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)
    strides = tuple(int(s) for s in window_strides)
    dil = tuple(int(d) for d in (rhs_dilation or (1, 1)))
    x_spatial = tuple(int(s) for s in lhs.shape[1:3])
    w_spatial = tuple(int(s) for s in rhs.shape[0:2])
    pads = _pairs(padding, x_spatial, w_spatial, strides, dil)
    if feature_group_count == 1:
        cfg = (strides, pads, dil, precision, x_spatial, w_spatial)
        return _conv(lhs, rhs, cfg)
    if rhs.shape[2] == 1 and feature_group_count == lhs.shape[-1]:
        return _depthwise(lhs, rhs, strides, pads, dil, precision)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)


@functools.lru_cache(maxsize=None)
def conv_function(impl: str):
    """The ``conv_general_dilated`` callable for a model's ``conv`` field (cached: one object per impl)."""
    if impl not in IMPLS:
        raise ValueError(f"a model's 'conv' must be one of {IMPLS}, got {impl!r}")
    if impl == "lax":
        return lax_conv
    return functools.partial(conv_general_dilated, impl=impl)

