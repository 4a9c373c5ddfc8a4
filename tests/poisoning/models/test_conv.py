"""poisoning.models._conv: the canonical-layout convolution equals lax's, in value and derivatives."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from poisoning.models._conv import conv_general_dilated

CASES = [
    # x shape, w shape, strides, padding, rhs dilation, groups
    ((2, 7, 7, 2), (3, 3, 2, 3), (1, 1), "SAME", (1, 1), 1),
    ((2, 9, 8, 2), (3, 2, 2, 3), (2, 3), [(2, 1), (0, 2)], (1, 2), 1),  # strided, dilated, asymmetric
    ((2, 7, 7, 2), (3, 3, 1, 4), (2, 2), [(1, 1), (1, 1)], (1, 1), 2),  # depthwise, multiplier 2
    ((12, 32, 32, 1), (3, 3, 1, 2), (1, 1), "SAME", (1, 1), 1),  # kernel gradient summed over 6 batch slices
]


def _everything(conv, x, w, c):
    """Value, gradients, a second-order (reverse-over-reverse) gradient and vmapped gradients."""
    def loss(x, w):
        return jnp.sum(jnp.sin(conv(x, w)) * c)

    def second(x, w):
        gx, gw = jax.grad(loss, (0, 1))(x, w)
        return jnp.sum(gx**2) + jnp.sum(gw**3)

    xb, wb = jnp.stack([x, 2 * x]), jnp.stack([w, -w])  # many inputs and many kernels (many models)
    return (conv(x, w), jax.grad(loss, (0, 1))(x, w), jax.grad(second, (0, 1))(x, w),
            jax.vmap(jax.grad(loss, (0, 1)))(xb, wb))


@pytest.mark.parametrize("xs, ws, strides, padding, dil, groups", CASES)
def test_canonical_convolution_matches_lax_to_second_order(xs, ws, strides, padding, dil, groups):
    rng = np.random.default_rng(0)
    x, w = jnp.asarray(rng.standard_normal(xs)), jnp.asarray(rng.standard_normal(ws))  # float64
    kw = dict(rhs_dilation=dil, dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
    c = jnp.asarray(rng.standard_normal(lax.conv_general_dilated(x, w, strides, padding, **kw).shape))

    def ref(x, w):
        return lax.conv_general_dilated(x, w, strides, padding, **kw)

    def new(x, w):
        return conv_general_dilated(x, w, strides, padding, impl="canonical", **kw)

    got = jax.jit(lambda x, w: _everything(new, x, w, c))(x, w)
    want = jax.jit(lambda x, w: _everything(ref, x, w, c))(x, w)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9 * (1 + float(jnp.max(jnp.abs(b)))))


def test_canonical_form_reaches_xla_inside_loops():
    """Inside lax.scan every convolution, including the two of the backward pass, is canonical."""
    x = jnp.ones((4, 8, 8, 3), jnp.float32)
    w = jnp.ones((3, 3, 3, 5), jnp.float32)

    def conv(x, w):
        return conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), impl="canonical")

    def step(carry, _):
        x, w = carry
        gx, gw = jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2), (0, 1))(x, w)
        return (x - 1e-3 * gx, w - 1e-3 * gw), None

    hlo = jax.jit(lambda x, w: jax.lax.scan(step, (x, w), None, length=2)[0]).lower(x, w).as_text(dialect="hlo")
    convs = [line for line in hlo.splitlines() if " convolution(" in line]
    assert len(convs) == 3  # forward, input gradient, kernel gradient
    assert all("dim_labels=b01f_01io->b01f" in line for line in convs), convs


def test_kernel_gradient_is_split_over_batch_slices_for_large_maps():
    from poisoning.models._conv import _dw_chunks

    assert _dw_chunks(12, (32, 32)) == 6 and _dw_chunks(128, (32, 32)) == 8 and _dw_chunks(128, (4, 4)) == 1


def test_unusual_convolutions_fall_back_to_lax():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((1, 6, 6, 4)))
    w = jnp.asarray(np.random.default_rng(2).standard_normal((3, 3, 2, 4)))
    kw = dict(dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=2, lhs_dilation=(2, 2))
    pad = [(1, 1), (1, 1)]
    np.testing.assert_allclose(
        conv_general_dilated(x, w, (1, 1), pad, impl="canonical", **kw),
        lax.conv_general_dilated(x, w, (1, 1), pad, **kw), rtol=1e-12)
    with pytest.raises(ValueError, match="impl"):
        conv_general_dilated(x, w, (1, 1), pad, impl="eigen")
