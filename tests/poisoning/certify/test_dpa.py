"""Deep Partition Aggregation (poisoning.certify): the certificate against brute force, the hash
partition, vmapped base learners against a loop (the end-to-end run: tests/experiments/test_levine2021.py)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from poisoning import certify as C
from poisoning.datasets import load_digits
from poisoning.training import init_state, train


# --------------------------------------------------------------------------------------------------
# the certificate's arithmetic


def _plurality_by_hand(votes, num_classes):
    """Plurality with ties to the smaller class, written independently of the library (a loop)."""
    counts = [0] * num_classes
    for v in votes:
        counts[v] += 1
    best = 0
    for c in range(1, num_classes):
        if counts[c] > counts[best]:
            best = c
    return best


@pytest.mark.parametrize("k,num_classes", [(5, 3), (4, 4), (6, 2)])
def test_certified_radius_is_sound_and_tight_against_brute_force(k, num_classes):
    """Every assignment of k base votes: the fewest changed votes (each poison insertion, deletion or
    label flip changes one partition, so at most one vote, to any class) that flip the prediction is
    exactly radius + 1: nothing within the radius flips it (soundness), radius + 1 can (tightness)."""
    all_votes = np.array(list(itertools.product(range(num_classes), repeat=k)))      # (m, k)
    pred, radius = C.certify_votes(jnp.asarray(all_votes.T), num_classes)
    pred, radius = np.asarray(pred), np.asarray(radius)
    by_hand = np.array([_plurality_by_hand(v, num_classes) for v in all_votes])
    np.testing.assert_array_equal(pred, by_hand)
    hamming = (all_votes[:, None, :] != all_votes[None, :, :]).sum(-1)                # changed votes
    flips = by_hand[:, None] != by_hand[None, :]
    fewest_to_flip = np.where(flips, hamming, k + 1).min(axis=1)
    np.testing.assert_array_equal(fewest_to_flip, radius + 1)
    assert radius.max() >= 1 and radius.min() == 0


def test_ties_go_to_the_smaller_class_and_shape_the_radius():
    counts = jnp.array([[2, 2, 1], [1, 3, 3], [0, 4, 0], [4, 0, 0], [3, 0, 4], [5, 4, 0]], jnp.int32)
    pred, radius = C.certified_radius(counts)
    np.testing.assert_array_equal(pred, [0, 1, 1, 0, 2, 0])
    # [0,4,0]: c=1 beats c'=0 only strictly: (4 - (0 + 1)) // 2 = 1; [4,0,0]: (4 - 0) // 2 = 2
    # [3,0,4]: (4 - (3 + 1)) // 2 = 0; [5,4,0]: (5 - 4) // 2 = 0; ties: 0
    np.testing.assert_array_equal(radius, [0, 0, 1, 2, 0, 0])
    np.testing.assert_array_equal(C.plurality(counts), pred)
    # jit gives the same
    p2, r2 = jax.jit(C.certified_radius)(counts)
    np.testing.assert_array_equal(p2, pred), np.testing.assert_array_equal(r2, radius)


def test_certified_accuracy_and_median_match_their_definitions():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 50):
        pred = rng.integers(0, 3, n)
        y = rng.integers(0, 3, n)
        radius = rng.integers(0, 10, n)
        radii = np.arange(12)
        acc = np.asarray(C.certified_accuracy(pred, radius, y, radii))
        direct = [np.mean((pred == y) & (radius >= r)) for r in radii]
        np.testing.assert_allclose(acc, direct, rtol=1e-6)
        med = int(C.median_certified(pred, radius, y))
        ok = [r for r in range(-1, 12) if np.mean((pred == y) & (radius >= r) | (r == -1)) >= 0.5]
        assert med == (max(ok) if np.mean(pred == y) >= 0.5 else -1)


def test_aggregate_rejects_bad_input():
    with pytest.raises(ValueError, match="num_classes"):
        C.vote_counts(jnp.zeros((3, 2), jnp.int32), 1)
    with pytest.raises(ValueError, match="votes"):
        C.vote_counts(jnp.array([[0, 3]]), 3)
    with pytest.raises(ValueError, match="votes"):
        C.vote_counts(jnp.zeros((3,), jnp.int32), 3)
    with pytest.raises(ValueError, match="counts"):
        C.certified_radius(jnp.array([[-1, 2]]))
    with pytest.raises(ValueError, match="counts"):
        C.certified_radius(jnp.ones((2, 3)))                     # floats are not vote counts
    with pytest.raises((ValueError, jax.errors.JaxRuntimeError), match="votes"):
        jax.block_until_ready(jax.jit(lambda v: C.vote_counts(v, 2))(jnp.array([[0, 5]])))
    with pytest.raises(ValueError, match="'y'"):
        C.certified_accuracy(jnp.zeros(2, jnp.int32), jnp.zeros(2, jnp.int32), jnp.array([0, -1]), [0])


# --------------------------------------------------------------------------------------------------
# the hash partition


def _images(n=40, shape=(6, 6), seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape)).astype(np.uint8)


def test_partition_is_the_pixel_sum_mod_k_and_depends_on_each_image_alone():
    X8 = _images()
    Xf = X8.astype(np.float32) / 255.0
    k = 7
    part = np.asarray(C.partition_indices(Xf, k))
    np.testing.assert_array_equal(part, X8.reshape(40, -1).astype(np.int64).sum(1) % k)
    np.testing.assert_array_equal(C.partition_indices(X8, k), part)            # uint8 pixels: same hash
    np.testing.assert_array_equal(jax.jit(C.partition_indices, static_argnums=1)(Xf, k), part)
    for i in (0, 13, 39):                                                       # one image alone
        assert int(C.pixel_sum_hash(Xf[i:i + 1])[0]) % k == part[i]
    np.testing.assert_array_equal(C.partition_indices(Xf[::-1], k), part[::-1])  # order does not matter


def test_layout_rows_are_the_partitions_and_one_insertion_changes_one_row():
    X = _images(n=30, seed=1).astype(np.float32) / 255.0
    k = 4
    part = np.asarray(C.partition_indices(X, k))
    index, mask = C.partition_layout(part, k)
    index, mask = np.asarray(index), np.asarray(mask)
    assert index.shape == mask.shape == (k, np.bincount(part, minlength=k).max())
    for i in range(k):
        np.testing.assert_array_equal(index[i][mask[i]], np.flatnonzero(part == i))   # training-set order
        assert np.all(index[i][~mask[i]] == 0)
    # labels never enter the partition: the layout is a function of the images only
    # (a label flip moves no sample); inserting one image changes exactly one row
    x_new = _images(n=1, seed=9).astype(np.float32) / 255.0
    X2 = np.concatenate([X, x_new])
    part2 = np.asarray(C.partition_indices(X2, k))
    index2, mask2 = (np.asarray(a) for a in C.partition_layout(part2, k, size=index.shape[1] + 1))
    changed = [i for i in range(k) if not np.array_equal(index2[i][mask2[i]], index[i][mask[i]])]
    assert changed == [int(part2[-1])]
    # deleting it again restores every row
    index3, mask3 = (np.asarray(a) for a in C.partition_layout(part2[:-1], k))
    np.testing.assert_array_equal(index3, index), np.testing.assert_array_equal(mask3, mask)


def test_partition_rejects_bad_input():
    X = _images(n=5).astype(np.float32) / 255.0
    for bad_k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="'k'"):
            C.partition_indices(X, bad_k)
    with pytest.raises(ValueError, match="more than the 5 training images"):
        C.partition_indices(X, 6)
    Xn = X.copy()
    Xn[2, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        C.partition_indices(Xn, 2)
    with pytest.raises((ValueError, jax.errors.JaxRuntimeError), match="NaN"):
        jax.block_until_ready(jax.jit(C.partition_indices, static_argnums=1)(Xn, 2))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        C.partition_indices(X * 2.0 + 0.1, 2)
    with pytest.raises(ValueError, match="0..255"):
        C.partition_indices(np.full((3, 2, 2), 300, np.int32), 2)
    with pytest.raises(ValueError, match="smaller than the largest partition"):
        C.partition_layout(np.array([0, 0, 0, 1]), 2, size=2)
    with pytest.raises(ValueError, match="'part'"):
        C.partition_layout(np.array([0, 2]), 2)


# --------------------------------------------------------------------------------------------------
# base learners: vmapped = a loop; padding does not change them


@pytest.fixture(scope="module")
def digits():
    d = load_digits(flatten=False)
    return d.X_train.astype(np.float32), d.y_train.astype(np.int32), d.X_test.astype(np.float32), d.y_test


def test_vmapped_base_learners_equal_a_python_loop_and_ignore_the_padding(digits):
    X, y, _, _ = digits
    X, y = X[:90], y[:90]
    k = 3
    part = C.partition_indices(X, k)
    index, mask = C.partition_layout(part, k)
    size = index.shape[1]
    model = C.base_model("logistic", 10, X.shape[1:])
    cfg = C.default_train_config("logistic", size, quick=True).replace(epochs=10)
    key = jax.random.key(3)
    batched = C.train_partitions(model, cfg, X, y, index, mask, jnp.arange(k), key)
    # a Python loop over the partitions, each trained alone (no vmap) on its rows padded further
    # (pad = size + 5, full batch): the same models, so f_i is a function of its own partition P_i only
    pad = size + 5
    cfg_pad = cfg.replace(batch_size=pad)
    one = jax.jit(lambda x, y, w, key: train(model, init_state(model, cfg_pad, x, jax.random.fold_in(key, 0)),
                                              (x, y, w), cfg_pad, key=jax.random.fold_in(key, 1)).params)
    for i in range(k):
        rows = np.flatnonzero(np.asarray(part) == i)
        idx, m = np.zeros(pad, np.int32), np.zeros(pad, bool)
        idx[: rows.size], m[: rows.size] = rows, True
        w = C.partition_weights(m[None])[0]
        looped = one(X[idx], y[idx], w, jax.random.fold_in(key, i))
        for a, b in zip(jax.tree_util.tree_leaves(batched.params), jax.tree_util.tree_leaves(looped)):
            np.testing.assert_allclose(a[i], b, rtol=1e-4, atol=1e-5)
    assert not np.allclose(batched.params["head"]["kernel"][0], batched.params["head"]["kernel"][1])


# The end-to-end run on digits (k = 10, logistic base learners, clean accuracy > 0.8 where chance is
# 0.1, the certified-accuracy curve and the median) is tests/experiments/test_levine2021.py, which
# drives this package through experiments/levine2021.py --quick.


def test_base_learners_reject_bad_input(digits):
    X, y, Xt, _ = digits
    X, y = X[:40], y[:40]
    part = C.partition_indices(X, 2)
    index, mask = C.partition_layout(part, 2)
    model = C.base_model("logistic", 10, X.shape[1:])
    cfg = C.default_train_config("logistic", index.shape[1], quick=True)
    with pytest.raises(ValueError, match="labels must be in"):
        C.train_and_vote(model, cfg, X, np.where(y == 0, 10, y), index, mask, jnp.arange(2), Xt, jax.random.key(0))
    Xn = X.copy()
    Xn[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        C.train_partitions(model, cfg, Xn, y, index, mask, jnp.arange(2), jax.random.key(0))
    with pytest.raises(ValueError, match="multiple of config.batch_size"):
        C.train_partitions(model, cfg.replace(batch_size=index.shape[1] - 1), X, y, index, mask, jnp.arange(2),
                           jax.random.key(0))
    with pytest.raises(ValueError, match="'name'"):
        C.base_model("resnet", 10, (8, 8))
    with pytest.raises(ValueError, match="'dim'"):
        C.pca_features(X, 0)


def test_pca_features_are_label_free_and_whitened(digits):
    X, y, _, _ = digits
    transform = C.pca_features(X, 8)
    F = np.asarray(transform(X))
    assert F.shape == (len(X), 1, 8)
    np.testing.assert_allclose(F[:, 0].std(0), 1.0, rtol=1e-3)
    np.testing.assert_allclose(F[:, 0].mean(0), 0.0, atol=1e-4)
    # a deterministic function of the images (no labels enter)
    np.testing.assert_array_equal(np.asarray(C.pca_features(X, 8)(X[:5])), F[:5])
    # without whitening: one common scale, so the variances stay in decreasing order
    G = np.asarray(C.pca_features(X, 8, whiten=False)(X))[:, 0]
    np.testing.assert_allclose(G[:, 0].std(), 1.0, rtol=1e-3)
    assert np.all(np.diff(G.std(0)) <= 1e-6)
    np.testing.assert_allclose(G / G.std(0), F[:, 0] / F[:, 0].std(0), rtol=1e-3, atol=1e-3)
