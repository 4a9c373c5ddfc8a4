"""Property-based fuzzing of the poisoning layer's public entry points (hypothesis).

Every generated input must give either a clear ``ValueError`` that names the offending argument, or a
correct, finite result: never a silent NaN or a silently wrong answer. Shapes are fixed so that valid
inputs reuse compiled code; the bad values (NaN/inf anywhere, labels outside ``0..K-1``, negative or
empty weights, budgets out of range, reversed or NaN bounds) are what varies.
"""

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poisoning import feasible, victims
from poisoning.attack import PoisoningAttack, PoisonPoints, run
from poisoning.datasets import binary_pair, split
from poisoning.objectives import error_generic

FUZZ = settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
N, D = 16, 3


def _data():
    rng = np.random.default_rng(0)
    y = np.arange(N) % 2
    X = 0.5 + 0.2 * (2 * y[:, None] - 1) + 0.1 * rng.standard_normal((N, D))
    return X, y


X0, Y0 = _data()
BAD_FLOATS = st.sampled_from([np.nan, np.inf, -np.inf])


def _raises_naming(fn, *names):
    with pytest.raises(ValueError) as info:
        fn()
    msg = str(info.value)
    assert any(re.search(n, msg) for n in names), msg


@FUZZ
@given(i=st.integers(0, N - 1), j=st.integers(0, D - 1), bad=BAD_FLOATS)
def test_non_finite_features_are_named(i, j, bad):
    X = X0.copy()
    X[i, j] = bad
    _raises_naming(lambda: victims.logistic(0.1).fit(X, Y0), "'X'")
    att = PoisoningAttack(victims.logistic(0.1), error_generic)
    _raises_naming(lambda: run(att, X, Y0, PoisonPoints(X0[:1], Y0[:1]), (X0, Y0), steps=1), "X_train")
    _raises_naming(lambda: run(att, X0, Y0, PoisonPoints(X0[:1], Y0[:1]), (X, Y0), steps=1), r"target\[0\]")
    Xp = X0[:2].copy()
    Xp[i % 2, j] = bad
    _raises_naming(lambda: run(att, X0, Y0, PoisonPoints(Xp, Y0[:2]), (X0, Y0), steps=1), "poison.X")


@FUZZ
@given(labels=st.lists(st.one_of(st.integers(-3, 4), st.floats(-2, 3), BAD_FLOATS), min_size=N, max_size=N))
def test_labels_outside_the_convention_are_named(labels):
    y = np.asarray(labels, dtype=float)
    valid = np.all(np.isfinite(y)) and np.all(np.isin(y, (0.0, 1.0)))
    for victim in (victims.logistic(0.1), victims.svm(1.0)):
        if valid:
            if len(np.unique(y)) < 2 and victim is victims.svm(1.0):
                continue  # one class: a degenerate SVM (not a label problem)
            params = victim.fit(X0, y)
            assert np.all(np.isfinite(np.asarray(victim.decision(params, X0))))
        else:
            _raises_naming(lambda: victim.fit(X0, y), "'y'")


@FUZZ
@given(w=st.lists(st.one_of(st.floats(-1, 2), BAD_FLOATS), min_size=N, max_size=N))
def test_example_weights(w):
    w = np.asarray(w, float)
    v = victims.logistic(0.1)
    if np.all(np.isfinite(w)) and np.all(w >= 0) and np.any(w > 0):
        params = v.fit(X0, Y0, w)
        assert np.all(np.isfinite(np.asarray(params["w"])))
    else:
        _raises_naming(lambda: v.fit(X0, Y0, w), "'weights'")


@FUZZ
@given(lo=st.one_of(st.floats(-2, 2, allow_subnormal=False), BAD_FLOATS),
       hi=st.one_of(st.floats(-2, 2, allow_subnormal=False), BAD_FLOATS),
       r=st.one_of(st.floats(-1, 2), BAD_FLOATS))
def test_feasible_sets_validate_and_project_into_themselves(lo, hi, r):
    x = np.linspace(-3, 3, 12).reshape(4, 3)
    if np.isnan(lo) or np.isnan(hi) or lo > hi or lo == np.inf or hi == -np.inf:
        _raises_naming(lambda: feasible.Box(lo, hi), "'lo'", "'hi'")
    else:
        box = feasible.Box(lo, hi)
        p = np.asarray(box.project(x))
        assert np.all(p >= lo) and np.all(p <= hi)
        if np.all(np.isfinite(p)):
            assert box.contains(p)
    for cls in (feasible.L2Ball, feasible.LinfBall):
        if not np.isfinite(r) or r < 0:
            _raises_naming(lambda: cls(0.0, r), "'radius'")
        else:
            ball = cls(0.0, r)
            assert ball.contains(np.asarray(ball.project(x)), atol=1e-6)


@FUZZ
@given(a=st.floats(-1, 1, allow_subnormal=False), b=st.floats(-1, 1, allow_subnormal=False),
       c=st.floats(0, 2, allow_subnormal=False), d=st.floats(0, 2, allow_subnormal=False))
def test_intersections_of_boxes_are_empty_or_correct(a, b, c, d):
    lo1, hi1, lo2, hi2 = a, a + c, b, b + d
    if max(lo1, lo2) > min(hi1, hi2):
        _raises_naming(lambda: feasible.Intersection((feasible.Box(lo1, hi1), feasible.Box(lo2, hi2))),
                       "do not intersect")
    else:
        s = feasible.Intersection((feasible.Box(lo1, hi1), feasible.Box(lo2, hi2)))
        p = np.asarray(s.project(np.linspace(-3, 3, 6)))
        assert s.contains(p, atol=1e-9)
        np.testing.assert_allclose(p, np.clip(np.linspace(-3, 3, 6), max(lo1, lo2), min(hi1, hi2)), atol=1e-9)


@FUZZ
@given(q=st.floats(0, 1.5), budget=st.one_of(st.floats(-1, 20), BAD_FLOATS))
def test_capped_simplex(q, budget):
    v = np.linspace(-0.5, 1.5, 10) * q
    if not np.isfinite(budget) or budget < 0:
        _raises_naming(lambda: feasible.CappedSimplex(budget), "'budget'")
    else:
        p = np.asarray(feasible.CappedSimplex(budget).project(v))
        assert np.all(p >= -1e-12) and np.all(p <= 1 + 1e-12) and p.sum() <= budget + 1e-6


@FUZZ
@given(sizes=st.lists(st.integers(-2, 12), min_size=1, max_size=3))
def test_split_sizes(sizes):
    X = np.arange(20.0)[:, None]
    y = np.arange(20) % 2
    if any(s < 0 for s in sizes) or sum(sizes) > 20:
        with pytest.raises(ValueError):
            split(X, y, sizes, seed=0)
    else:
        parts = split(X, y, sizes, seed=0)
        got = [len(p[1]) for p in parts]
        assert got == list(sizes)
        rows = np.concatenate([p[0][:, 0] for p in parts])
        assert len(set(rows.tolist())) == len(rows)  # disjoint


@FUZZ
@given(pos=st.integers(-1, 3), neg=st.integers(-1, 3))
def test_binary_pair_classes(pos, neg):
    X = np.arange(12.0)[:, None]
    y = np.arange(12) % 3
    if pos == neg or pos not in (0, 1, 2) or neg not in (0, 1, 2):
        with pytest.raises(ValueError):
            binary_pair(X, y, pos, neg)
    else:
        Xb, yb = binary_pair(X, y, pos, neg)
        assert set(np.unique(yb)) == {0, 1} and len(yb) == 8
