"""Backdoor triggers: where they land, their formulas, gradients, jit / vmap, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from poisoning import triggers as T


def _images(n=3, h=8, w=8, c=1, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(0.2, 0.8, (n, h, w, c)))


def test_badnets_pattern_lands_in_the_bottom_right_corner():
    x = _images()
    y = T.apply(T.badnets_pattern(), x)
    board = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]], float)
    np.testing.assert_array_equal(np.asarray(y[:, 4:7, 4:7, 0]), np.broadcast_to(board, (3, 3, 3)))
    outside = np.ones((8, 8), bool)
    outside[4:7, 4:7] = False
    np.testing.assert_array_equal(np.asarray(y[:, outside]), np.asarray(x[:, outside]))
    np.testing.assert_array_equal(T.trigger_mask(T.badnets_pattern(), (8, 8)), ~outside)
    # one bright pixel one pixel away from the corner, (N, H, W) images keep their shape
    y1 = T.apply(T.badnets_pixel(), x[..., 0])
    assert y1.shape == (3, 8, 8)
    changed = np.argwhere(np.any(np.asarray(y1) != np.asarray(x[..., 0]), axis=0))
    assert changed.tolist() == [[6, 6]] and np.all(np.asarray(y1[:, 6, 6]) == 1.0)


def test_patch_mask_blends_and_positive_location():
    x = _images(c=3)
    pattern = jnp.full((2, 2, 3), 0.9)
    mask = jnp.asarray([[1.0, 0.5], [0.0, 0.25]])
    y = T.apply(T.Patch(pattern, mask, row=1, col=2), x)
    m = np.asarray(mask)[..., None]
    np.testing.assert_allclose(y[:, 1:3, 2:4], (1 - m) * np.asarray(x[:, 1:3, 2:4]) + m * 0.9, rtol=1e-12)
    np.testing.assert_array_equal(y[:, 3:], x[:, 3:])


def test_pixel_is_additive_clipped_and_only_one_pixel():
    x = _images(c=3).at[0, 2, 5, 0].set(0.95)
    y = T.apply(T.Pixel(jnp.asarray([0.3, -0.3, 0.0]), row=2, col=5), x)
    diff = np.asarray(y - x)
    assert np.count_nonzero(np.any(diff != 0, axis=-1)) == 3  # one pixel per image
    np.testing.assert_allclose(y[1:, 2, 5], np.asarray(x[1:, 2, 5]) + np.array([0.3, -0.3, 0.0]), rtol=1e-12)
    assert float(y[0, 2, 5, 0]) == 1.0  # clipped


def test_blend_formula():
    x = _images()
    b = T.random_blend(jax.random.key(0), (8, 8, 1), alpha=0.2)
    np.testing.assert_allclose(T.apply(b, x), 0.8 * np.asarray(x) + 0.2 * np.asarray(b.pattern), rtol=1e-6)


def test_gradients_match_finite_differences_and_jit_vmap():
    x = _images()
    w = jnp.asarray(np.random.default_rng(1).normal(size=x.shape))

    def loss(trig):
        return jnp.sum(w * T.apply(trig, x) ** 2)

    trig = T.Blend(jnp.asarray(np.random.default_rng(2).uniform(size=(8, 8, 1))), jnp.asarray(0.3))
    g = jax.grad(loss)(trig)
    assert isinstance(g, T.Blend)
    h = 1e-6
    fd = (loss(T.Blend(trig.pattern, trig.alpha + h)) - loss(T.Blend(trig.pattern, trig.alpha - h))) / (2 * h)
    np.testing.assert_allclose(g.alpha, fd, rtol=1e-6)
    patch = T.Patch(jnp.full((3, 3, 1), 0.5), jnp.full((3, 3), 0.5), row=-4, col=-4)
    gp = jax.grad(loss)(patch)
    e = jnp.zeros((3, 3)).at[1, 2].set(h)
    fd = (loss(T.Patch(patch.pattern, patch.mask + e, -4, -4)) - loss(T.Patch(patch.pattern, patch.mask - e, -4, -4))) / (2 * h)
    np.testing.assert_allclose(gp.mask[1, 2], fd, rtol=1e-6)
    # forward mode agrees with reverse mode
    tangent = T.Patch(jnp.zeros((3, 3, 1)), e / h, -4, -4)
    np.testing.assert_allclose(jax.jvp(loss, (patch,), (tangent,))[1], gp.mask[1, 2], rtol=1e-10)
    # pixel delta: d/d delta sum(apply) = number of images where the pixel is not clipped
    assert float(jax.grad(lambda t: T.apply(t, x).sum())(T.Pixel(jnp.asarray(0.1), 0, 0)).delta) == 3.0
    # jit and vmap over a stack of triggers
    np.testing.assert_allclose(jax.jit(T.apply)(patch, x), T.apply(patch, x))
    deltas = jnp.asarray([0.0, 0.1, 0.2])
    batched = jax.vmap(lambda d: T.apply(T.Pixel(d, 1, 1), x))(deltas)
    for i, d in enumerate(deltas):
        np.testing.assert_allclose(batched[i], T.apply(T.Pixel(d, 1, 1), x))


def test_bad_input_is_named():
    x = _images()
    with pytest.raises(ValueError, match="row"):
        T.apply(T.Patch(jnp.ones((3, 3)), jnp.ones((3, 3)), row=6, col=0), x)
    with pytest.raises(ValueError, match="mask"):
        T.apply(T.Patch(jnp.ones((3, 3)), jnp.ones((2, 3))), x)
    with pytest.raises(ValueError, match="pattern"):
        T.apply(T.Patch(jnp.full((3, 3), 2.0), jnp.ones((3, 3))), x)
    with pytest.raises(ValueError, match="alpha"):
        T.apply(T.Blend(jnp.zeros((8, 8)), jnp.asarray(1.5)), x)
    with pytest.raises(ValueError, match="images"):
        T.apply(T.badnets_pixel(), x[0, 0])
    with pytest.raises(TypeError, match="images"):
        T.apply(T.badnets_pixel(), np.zeros((2, 8, 8, 1), np.uint8))
    with pytest.raises(ValueError, match="delta"):
        T.apply(T.Pixel(jnp.asarray(np.nan)), x)
    with pytest.raises(TypeError, match="row"):
        T.Pixel(jnp.asarray(0.1), row=1.5)
    with pytest.raises(TypeError, match="trigger"):
        T.apply("patch", x)
