"""Finite Aggregation: the layout spreads each sample over d learners, the certificate equals DPA's at
d = 1 and survives every attack of its size on tiny instances (brute force over buckets and re-votes)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from poisoning import certify as C
from poisoning.certify import finite_aggregation as FA


def _plurality(counts):
    return int(np.argmax(counts))   # first maximum: ties to the smaller class


def test_layout_puts_every_sample_in_d_learners_by_its_bucket():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (60, 3, 3)).astype(np.uint8)
    k, d = 4, 3
    index, mask, shifts = FA.fa_layout(x, k, d, seed=1)
    index, mask = np.asarray(index), np.asarray(mask)
    assert index.shape[0] == k * d and len(shifts) == d and len(set(shifts.tolist())) == d
    members = [set(index[i][mask[i]].tolist()) for i in range(k * d)]
    bucket = x.reshape(60, -1).astype(int).sum(1) % (k * d)
    for j in range(60):
        holders = {i for i in range(k * d) if j in members[i]}
        assert holders == {(bucket[j] + s) % (k * d) for s in shifts}
    # order inside a row is the training order; d = 1 is DPA's partition
    assert all(np.all(np.diff(index[i][mask[i]]) > 0) for i in range(k * d))
    i1, m1, _ = FA.fa_layout(x, 5, 1, shifts=[0])
    i0, m0 = C.partition_layout(C.partition_indices(x, 5), 5)
    np.testing.assert_array_equal(np.asarray(i1), np.asarray(i0))
    np.testing.assert_array_equal(np.asarray(m1), np.asarray(m0))


def test_d1_radius_is_dpas():
    votes = jax.random.randint(jax.random.key(0), (15, 200), 0, 4)
    pred, radius = FA.fa_certified_radius(votes, 4, [0])
    p0, r0 = C.certify_votes(votes, 4)
    np.testing.assert_array_equal(np.asarray(pred), np.asarray(p0))
    np.testing.assert_array_equal(np.asarray(radius), np.asarray(r0))


@pytest.mark.parametrize("k,d,num_classes", [(3, 2, 3), (2, 3, 2)])
def test_no_attack_within_the_radius_flips_the_vote(k, d, num_classes):
    """Enumerate every set of r <= radius corrupted buckets and every re-vote of the learners they reach;
    the plurality never changes. Also the bound is not vacuous: some point has radius >= 1."""
    m = k * d
    shifts = FA.spread_shifts(k, d, seed=3)
    reach = FA.bucket_learners(shifts, m)
    rng = np.random.default_rng(k * 10 + d)
    # votes skewed toward class 0 so that radii are positive
    votes = np.where(rng.random((m, 40)) < 0.7, 0, rng.integers(0, num_classes, (m, 40))).astype(np.int32)
    pred, radius = (np.asarray(a) for a in FA.fa_certified_radius(jnp.asarray(votes), num_classes, shifts))
    assert radius.max() >= 1
    for j in range(votes.shape[1]):
        v = votes[:, j]
        assert pred[j] == _plurality(np.bincount(v, minlength=num_classes))
        for r in range(1, radius[j] + 1):
            for chosen in itertools.combinations(range(m), r):
                hit = sorted({int(i) for b in chosen for i in reach[b]})
                for new in itertools.product(range(num_classes), repeat=len(hit)):
                    w = v.copy()
                    w[hit] = new
                    assert _plurality(np.bincount(w, minlength=num_classes)) == pred[j], (j, chosen, new)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="'d'"):
        FA.spread_shifts(4, 0)
    with pytest.raises(ValueError, match="'shifts'"):
        FA.bucket_learners([0, 0], 6)
    with pytest.raises(ValueError, match="'shifts'"):
        FA.fa_layout(np.zeros((20, 2, 2), np.uint8), 2, 2, shifts=[0])
    with pytest.raises(ValueError, match="'k'"):
        FA.fa_layout(np.zeros((5, 2, 2), np.uint8), 3, 2)          # 6 learners, 5 images
    with pytest.raises(ValueError, match="'votes'"):
        FA.fa_certified_radius(np.zeros((4, 3)), 2, [0, 1])
    with pytest.raises(ValueError, match="votes"):
        FA.fa_certified_radius(np.full((4, 3), 5, np.int32), 2, [0, 1])
