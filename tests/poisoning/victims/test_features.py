"""victims.on_features: a learner on frozen features, differentiable in the raw inputs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from poisoning import victims
from poisoning.attack import PoisoningAttack, PoisonPoints, hypergradient, run
from poisoning.feasible import Box
from poisoning.datasets import biggio_protocol, load_digits
from tests.poisoning.test_attack import _central_fd

_W = np.random.default_rng(0).standard_normal((64, 12)) / 4.0


def tanh_features(X):  # a frozen "extractor": one fixed random tanh layer on 8x8 digits
    return jnp.tanh(jnp.asarray(X) @ jnp.asarray(_W, jnp.asarray(X).dtype) - 1.0)


def _split():  # float64 (the digits are stored in float32)
    s = biggio_protocol(load_digits(), 1, 7, n_train=60, n_val=80, seed=0)
    return dataclasses.replace(s, X_train=np.asarray(s.X_train, np.float64), X_val=np.asarray(s.X_val, np.float64))


@pytest.mark.parametrize("base", ["logistic"])  # the SVM's Gram-cached path runs in the hypergradient test
def test_equals_the_learner_on_precomputed_features(base):
    s = _split()
    inner = victims.logistic(1e-2) if base == "logistic" else victims.svm(1.0)
    v = victims.on_features(inner, tanh_features)
    assert v is victims.on_features(inner, tanh_features)  # memoized: one compiled loop per setting
    F = np.asarray(tanh_features(s.X_train))
    p, q = v.fit(s.X_train, s.y_train), inner.fit(F, s.y_train)
    w = (lambda r: r.w) if base == "svm" else (lambda r: r["w"])
    np.testing.assert_allclose(np.asarray(w(p)), np.asarray(w(q)), atol=1e-9)
    np.testing.assert_allclose(np.asarray(v.decision(p, s.X_val)), np.asarray(inner.decision(q, tanh_features(s.X_val))),
                               atol=1e-9)
    # the fixed block's features (and the learner's own cache) computed once, new rows appended
    cache = v.prepare(s.X_train[:50], s.y_train[:50])
    r = v.fit_appended(cache, s.X_train[:50], s.y_train[:50], s.X_train[50:], s.y_train[50:])
    np.testing.assert_allclose(np.asarray(w(r)), np.asarray(w(p)), atol=1e-8)
    assert v.init(60, 64)  # cold-start parameters sized by the feature dimension
    with pytest.raises(ValueError, match="'features'"):
        victims.on_features(inner, "not a function")


def target_margin(victim, params, X_target, y_adv):  # the targeted objective: the adversarial class's fit
    return -jnp.sum(victim.loss(params, X_target, y_adv))


@pytest.mark.parametrize("base", ["logistic", "svm"])
def test_hypergradient_in_the_raw_images_matches_finite_differences(base):
    """d objective / d poison pixels = chain rule through the features and the learner's derivative (IFT
    for the logistic head, the KKT map of the SVM dual), against central differences in float64."""
    s = _split()
    inner = victims.logistic(1e-2) if base == "logistic" else victims.svm(1.0)
    att = PoisoningAttack(victims.on_features(inner, tanh_features), target_margin)
    Xp = np.clip(s.X_train[:2] + 0.03, 0, 1)
    target = (s.X_val[:3], 1 - s.y_val[:3])
    hg = jax.jit(lambda xp: hypergradient(att, s.X_train, s.y_train, PoisonPoints(xp, s.y_train[:2]), target))
    _, g, _ = hg(Xp)
    fd = _central_fd(lambda xp: float(hg(xp)[0]), Xp, 1e-6)
    assert np.max(np.abs(fd)) > 1e-6
    np.testing.assert_allclose(np.asarray(g), fd, rtol=1e-4, atol=1e-8)


def test_clean_label_targeted_attack_on_frozen_features():
    """Clean-label poisons (6 base images of the adversarial class with their true labels, moved within an
    l_inf ball of 0.3 inside the pixel box) flip the least confident correctly classified target, which
    the unperturbed bases do not; every poison stays feasible and keeps its label."""
    s = _split()
    v = victims.on_features(victims.logistic(1e-2), tanh_features)
    clean = v.fit(s.X_train, s.y_train)
    correct = np.flatnonzero(np.asarray(v.predict(clean, s.X_val)) == s.y_val)
    t = correct[np.argmin(np.abs(np.asarray(v.decision(clean, s.X_val[correct]))))]  # the least confident
    X_t, y_adv = s.X_val[t:t + 1], 1 - s.y_val[t:t + 1]
    bases = np.flatnonzero(s.y_train == y_adv[0])[:6]
    Xb, eps = s.X_train[bases], 0.3
    feasible = Box(np.clip(Xb - eps, 0, 1), np.clip(Xb + eps, 0, 1))  # l_inf ball around the bases, in [0, 1]
    res = run(PoisoningAttack(v, target_margin, feasible), s.X_train, s.y_train, PoisonPoints(Xb, s.y_train[bases]),
              (X_t, y_adv), steps=30)
    assert res.objective > res.objective_clean
    assert feasible.contains(res.poison.X) and np.all(np.abs(res.poison.X - Xb) <= eps + 1e-12)
    np.testing.assert_array_equal(res.poison.y, s.y_train[bases])  # clean label
    retrain = lambda Xp: v.fit(np.concatenate([s.X_train, Xp]), np.concatenate([s.y_train, s.y_train[bases]]))
    predict = lambda params: int(v.predict(params, X_t)[0])
    # the unperturbed bases leave the target alone; the optimized poisons flip it (retrained from scratch)
    assert predict(clean) == predict(retrain(Xb)) == 1 - y_adv[0]
    assert predict(retrain(res.poison.X)) == y_adv[0]
