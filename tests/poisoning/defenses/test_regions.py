"""The sanitizers' feasible region: projections land in it and survive the sanitizers; closed forms."""

import jax.numpy as jnp
import numpy as np
import pytest

from poisoning.attack import PoisonPoints
from poisoning.defenses.evaluate import expand_copies
from poisoning.defenses.regions import SanitizerRegion, hinge_thresholds, loss_halfspaces, project_region
from poisoning.defenses.sanitizers import SlabDefense, SphereDefense, linear_hinge_losses


def _data(n=40, d=4, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = np.clip(0.5 + 0.15 * (2 * y[:, None] - 1) + 0.15 * rng.standard_normal((n, d)), 0, 1)
    return X, y


def test_projection_lands_in_region_and_survives_sanitizers():
    X, y = _data()
    rng = np.random.default_rng(1)
    labels, counts = np.array([1, 0, 1, 0]), np.array([3, 2, 2, 1])
    far = rng.uniform(-1.0, 2.0, size=(4, X.shape[1]))
    params = {"w": jnp.asarray([2.0, -2.0, 0.0, 0.0]), "b": jnp.asarray(0.0)}  # a model the sphere does not imply
    for loss_percentile in (None, 90.0):
        region = SanitizerRegion(X, y, labels, counts, percentile=90.0, loss_percentile=loss_percentile)
        assert region.uses_params == (loss_percentile is not None)
        assert not region.contains(far, params=params)
        Xp = np.asarray(region.project(far, params=params))
        assert region.contains(Xp, params=params) and Xp.min() >= 0.0 and Xp.max() <= 1.0
        # the data-dependent sanitizers, fit on the poisoned data, keep every copy (percentile 90 of clean)
        Xs, ys, is_p = expand_copies(X, y, PoisonPoints(Xp, labels, counts=counts))
        for defense in (SphereDefense(num_classes=2), SlabDefense(num_classes=2)):
            state = defense.fit(Xs, ys)
            thr = np.asarray(defense.thresholds(state, X, y, 90.0))
            assert np.all(np.asarray(defense.score(state, Xs, ys))[is_p] <= thr[ys[is_p]])
            assert np.all(np.asarray(defense.sanitize(Xs, ys, 0.05)[0])[is_p])
        hinge = np.asarray(linear_hinge_losses(params["w"], params["b"], Xp, labels))
        tau = np.asarray(hinge_thresholds(params, X, y, 90.0))
        if loss_percentile is not None:
            assert np.all(hinge <= tau[labels] + 1e-9)
        else:
            assert np.any(hinge > tau[labels])  # without the loss defense the constraint is not met
    # projecting again moves a feasible point by little (the radial pull is not the nearest point)
    assert np.max(np.abs(np.asarray(region.project(Xp, params=params)) - Xp)) < 0.05


def test_closed_forms_for_fixed_centroids():
    mu = jnp.asarray([[0.0, 0.0], [2.0, 0.0]])
    u = jnp.asarray([[-1.0, 0.0], [1.0, 0.0]])
    inf = jnp.asarray(jnp.inf)
    labels = jnp.asarray([0, 1])
    # sphere only (wide slab, no box): mu + r (x - mu) / |x - mu|
    x = jnp.asarray([[0.0, 3.0], [2.0, -4.0]])
    p = project_region(x, labels, mu, u, jnp.asarray([1.0, 2.0]), jnp.asarray([10.0, 10.0]), -inf, inf)
    np.testing.assert_allclose(p, [[0.0, 1.0], [2.0, -2.0]], atol=1e-12)
    # slab only: t clipped to +-s along u
    x = jnp.asarray([[-3.0, 0.5], [5.0, 0.25]])
    p = project_region(x, labels, mu, u, jnp.asarray([10.0, 10.0]), jnp.asarray([0.5, 1.0]), -inf, inf)
    np.testing.assert_allclose(p, [[-0.5, 0.5], [3.0, 0.25]], atol=1e-12)
    # halfspace only (w = (0, 1), class 1: hinge 1 - (x2 - 0.5) <= tau): x + (beta - a'x)/|a|^2 a
    params = {"w": jnp.asarray([0.0, 1.0]), "b": jnp.asarray(-0.5)}
    A, beta = loss_halfspaces(params, jnp.asarray([1]), jnp.asarray([0.0, 0.25]))
    np.testing.assert_allclose(beta, [1.0 - 0.25 + 0.5])
    x = jnp.asarray([[2.0, 0.2]])
    mu1 = jnp.asarray([[0.0, 0.0], [2.0, 3.0]])  # the centroid satisfies the halfspace
    p = project_region(x, jnp.asarray([1]), mu1, u, jnp.asarray([10.0, 10.0]), jnp.asarray([10.0, 10.0]), -inf, inf,
                       (A, beta))
    np.testing.assert_allclose(p, [[2.0, 1.25]], atol=1e-12)
    # a point inside everything is left alone
    x = jnp.asarray([[0.1, 0.2], [2.2, 0.1]])
    p = project_region(x, labels, mu, u, jnp.asarray([1.0, 1.0]), jnp.asarray([1.0, 1.0]), -inf, inf)
    np.testing.assert_allclose(p, x, atol=0)


def test_clean_centroid_sphere_matches_numpy():
    """With clean centroids and a wide slab the region's projection is the ball of radius shrink * the
    percentile of clean distances around the clean class mean (computed here with numpy)."""
    X, y = _data(seed=2)
    x = np.array([[3.0, 3.0, 3.0, 3.0], [-2.0, 0.5, 0.5, 0.5]])
    labels = np.array([1, 0])
    region = SanitizerRegion(X, y, labels, percentile=80.0, shrink=0.9, centroids="clean", box=None)
    mu = np.stack([X[y == k].mean(0) for k in (0, 1)])
    r = np.array([np.percentile(np.linalg.norm(X[y == k] - mu[k], axis=1), 80.0) for k in (0, 1)]) * 0.9
    z = x - mu[labels]
    expected = mu[labels] + z * (r[labels] / np.linalg.norm(z, axis=1))[:, None]
    # the slab may bind as well: check the sphere part on a point whose slab coordinate is inside
    u = (mu[1] - mu[0]) / np.linalg.norm(mu[1] - mu[0])
    t = np.abs(np.sum((expected - mu[labels]) * u, axis=1))
    s = np.array([np.percentile(np.abs((X[y == k] - mu[k]) @ u), 80.0) for k in (0, 1)]) * 0.9
    p = np.asarray(region.project(x))
    for j in range(2):
        if t[j] <= s[labels[j]]:
            np.testing.assert_allclose(p[j], expected[j], rtol=1e-10, atol=1e-12)
        else:  # both bind: on the sphere and the slab boundary
            np.testing.assert_allclose(np.linalg.norm(p[j] - mu[labels[j]]), r[labels[j]], rtol=1e-9)
            np.testing.assert_allclose(abs((p[j] - mu[labels[j]]) @ u), s[labels[j]], rtol=1e-9)


def test_bad_arguments():
    X, y = _data()
    with pytest.raises(ValueError, match="centroids"):
        SanitizerRegion(X, y, np.array([0, 1]), centroids="oracle")
    with pytest.raises(ValueError, match="labels"):
        SanitizerRegion(X, y, np.array([0, 2]))
    with pytest.raises(ValueError, match="y_clean"):
        SanitizerRegion(X, 2 * y - 1, np.array([0, 1]))
    with pytest.raises(ValueError, match="counts"):
        SanitizerRegion(X, y, np.array([0, 1]), np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="binary"):
        SanitizerRegion(X, y, np.array([0, 1]), loss_percentile=90.0, num_classes=3)
    with pytest.raises(ValueError, match="NaN"):
        SanitizerRegion(np.full_like(X, np.nan), y, np.array([0, 1]))
