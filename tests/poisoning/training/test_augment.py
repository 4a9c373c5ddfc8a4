"""Augmentations: the right maps (shifts, mirrors, squares), keyed, and differentiable in the images."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from poisoning.training import Augment, cutout, random_crop, random_flip, random_translate
from tests.poisoning.training._tiny import key

X = jnp.asarray(np.random.default_rng(0).random((16, 6, 5, 2)))  # float64, distinct pixel values


def _shift(img, dy, dx):
    """``img`` moved by (dy, dx) with zero fill (numpy reference)."""
    out = np.zeros_like(img)
    h, w = img.shape[:2]
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = img[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def test_crop_is_a_zero_filled_shift_by_at_most_the_padding():
    out = np.asarray(jax.jit(lambda k, x: random_crop(k, x, 2))(key(0), X))
    shifts = set()
    for img, res in zip(np.asarray(X), out):
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if np.array_equal(_shift(img, dy, dx), res)]
        assert len(found) == 1
        shifts.add(found[0])
    assert len(shifts) > 4  # offsets are drawn per image
    np.testing.assert_array_equal(random_translate(key(0), X, 2), out)  # the same map, another name
    np.testing.assert_array_equal(random_crop(key(0), X, 0), X)
    reflect = random_crop(key(0), X, 2, mode="reflect")
    assert reflect.shape == X.shape and float(jnp.min(jnp.abs(reflect))) > 0  # no zeros with reflection


def test_flip_mirrors_some_images_and_cutout_zeroes_a_square():
    out = np.asarray(random_flip(key(1), X))
    mirrored = [np.array_equal(o, x[:, ::-1]) for o, x in zip(out, np.asarray(X))]
    kept = [np.array_equal(o, x) for o, x in zip(out, np.asarray(X))]
    assert all(m or k for m, k in zip(mirrored, kept)) and any(mirrored) and any(kept)
    assert np.array_equal(random_flip(key(1), X, p=0.0), X)
    cut = np.asarray(cutout(key(2), X, 3))
    for c, x in zip(cut, np.asarray(X)):
        zero = np.all(c == 0, axis=-1)
        assert 1 <= zero.sum() <= 9  # a 3x3 square, clipped at the border
        rows, cols = np.nonzero(zero)
        assert rows.max() - rows.min() < 3 and cols.max() - cols.min() < 3
        np.testing.assert_array_equal(c[~zero], x[~zero])
    assert random_crop(key(0), X[..., 0], 1).shape == X.shape[:3]  # (N, H, W) input


def test_augmentations_are_differentiable_linear_maps_of_the_images():
    aug = Augment(crop_padding=1, flip=True, cutout=2)
    c = jnp.asarray(np.random.default_rng(3).random(X.shape))

    @jax.jit
    def f(x):
        return jnp.sum(aug(key(4), x) * c)

    g = jax.grad(f)(X)
    # a linear map A: f(x) = <A x, c>, so grad = A^T c and <grad, v> = f(v) for every v
    v = jnp.asarray(np.random.default_rng(5).random(X.shape))
    np.testing.assert_allclose(jnp.vdot(g, v), f(v), rtol=1e-12)
    np.testing.assert_allclose(jax.jvp(f, (X,), (v,))[1], f(v), rtol=1e-12)


def test_augment_config_and_errors():
    assert Augment().is_identity and not Augment.cifar().is_identity
    assert Augment.cifar() == Augment(crop_padding=4, flip=True)
    with pytest.raises(ValueError, match="crop_padding"):
        Augment(crop_padding=-1)
    with pytest.raises(ValueError, match="pad_mode"):
        Augment(pad_mode="wrap")
    with pytest.raises(ValueError, match="'x'"):
        random_crop(key(0), jnp.zeros((3, 3)), 1)
    with pytest.raises(ValueError, match="'p'"):
        random_flip(key(0), X, p=1.5)
    with pytest.raises(ValueError, match="'size'"):
        cutout(key(0), X, -2)
