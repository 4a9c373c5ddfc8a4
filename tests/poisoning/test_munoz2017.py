"""Muñoz-González et al. (2017) poisoning: hypergradients (implicit vs finite differences vs
back-gradient), the sequential attack on small digits, and the experiment script."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilevel.solvers import LBFGS
from poisoning import datasets as data
from poisoning.attack import PoisonPoints, attack_value, run
from poisoning.attacks import munoz2017 as M
from poisoning.objectives import error_specific

K = 3  # classes of the tiny synthetic problem
TIGHT = LBFGS(tol=1e-12, maxiter=3000, on_failure="raise")  # (the bias shift makes the Hessian singular)


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    n, d = 24, 5
    y = np.arange(n) % K
    X = np.clip(0.5 + 0.15 * rng.normal(size=(n, d)) + 0.15 * np.eye(K, d)[y], 0, 1)
    Xv = np.clip(0.5 + 0.15 * rng.normal(size=(12, d)) + 0.15 * np.eye(K, d)[np.arange(12) % K], 0, 1)
    return X, y, Xv, np.arange(12) % K, X[:1] * 0.9 + 0.05, np.array([1])


def _fn(victim, mode, tiny):
    X, y, Xv, yv, _, yp = tiny
    attack = M.munoz_attack(victim, mode)
    return jax.jit(lambda Xp: attack_value(attack, X, y, PoisonPoints(Xp, yp), (Xv, yv))[0])


def test_implicit_hypergradient_matches_finite_differences(tiny, mode="generic"):
    learner = M.softmax_victim(K, 0.05, solver=TIGHT)
    f = _fn(learner, mode, tiny)
    Xp = jnp.asarray(tiny[4])
    g = jax.grad(f)(Xp)
    u = np.random.default_rng(1).normal(size=Xp.shape)
    eps = 1e-4
    fd = (f(Xp + eps * u) - f(Xp - eps * u)) / (2 * eps)
    assert np.isfinite(float(fd)) and abs(float(fd)) > 1e-6
    np.testing.assert_allclose(float(jnp.vdot(g, u)), float(fd), rtol=1e-6, atol=1e-10)


def test_back_gradient_agrees_with_implicit_when_converged(tiny):
    X = np.concatenate([tiny[0], tiny[4]])
    lr = M.gd_learning_rate(X, 0.05)
    imp = M.softmax_victim(K, 0.05, solver=TIGHT)
    # heavy-ball GD run to convergence, reversed exactly (fixed point) by BackGradient
    bg = M.softmax_victim(K, 0.05, method="backgradient", steps=600, learning_rate=lr, momentum=0.9)
    Xp = jnp.asarray(tiny[4])
    g_imp = jax.grad(_fn(imp, "generic", tiny))(Xp)
    g_bg = jax.grad(_fn(bg, "generic", tiny))(Xp)
    np.testing.assert_allclose(np.asarray(g_bg), np.asarray(g_imp), rtol=1e-4, atol=1e-7)


def test_attack_on_digits_raises_validation_loss_and_stays_in_box():
    split = data.munoz_protocol(data.load_digits(), 60, 60, 10, seed=0)
    X, Xv = (np.asarray(a, np.float64) for a in (split.X_train, split.X_val))
    y, yv = np.asarray(split.y_train), np.asarray(split.y_val)
    attack = M.munoz_attack(M.softmax_victim(10, 1e-2), "generic", step_size=1.0)
    X0, yp = M.init_generic(X, y, 2, seed=0)
    assert np.all(yp != y[np.argmax((X[:, None, :] == X0[None]).all(-1), axis=0)])  # labels changed
    res = run(attack, X, y, PoisonPoints(X0, yp), (Xv, yv), steps=4, mode="sequential")
    assert res.objective > res.history[0][0] > res.objective_clean
    assert np.all(res.poison.X >= 0.0) and np.all(res.poison.X <= 1.0)
    assert int(np.sum(np.asarray(M.softmax_victim(10, 1e-2).predict(res.params_clean, Xv)) == yv)) > 40


def test_error_specific_is_negated_target_cross_entropy(tiny):
    params = {"w": jnp.ones((5, K)) * jnp.arange(K) / 10, "b": jnp.zeros(K)}
    victim, Xv = M.softmax_victim(K), jnp.asarray(tiny[2])
    target = jnp.full((Xv.shape[0],), 2)
    ce = -jax.nn.log_softmax(Xv @ params["w"] + params["b"])[:, 2]
    np.testing.assert_allclose(float(error_specific(victim, params, Xv, target)), -float(jnp.mean(ce)), rtol=1e-12)
    assert M.munoz_attack(victim, "specific").objective is error_specific


def test_init_specific_swaps_labels_and_random_flip():
    y = np.array([8, 3, 1, 8, 3, 2])
    X = np.arange(len(y))[:, None] * np.ones((1, 2))
    X0, yp = M.init_specific(X, y, 4, 8, 3, seed=0)
    src = X0[:, 0].astype(int)
    assert set(y[src]) == {3, 8} and np.all(yp == np.where(y[src] == 8, 3, 8))
    Xf, yf = M.random_flip_poison(X, y, 5, seed=0)
    assert np.all(yf != y[Xf[:, 0].astype(int)]) and np.all((yf >= 0) & (yf < 10))


@pytest.fixture(scope="module")
def tiny_basis(tiny):
    return M.GramBasis.from_data(tiny[0], rank=2)


def test_kfac_change_of_variables_is_invertible_and_keeps_the_minimizer(tiny, tiny_basis):
    X, y = tiny[0], tiny[1]
    w0 = {"w": 0.1 * jnp.ones((5, K)), "b": jnp.arange(K) / 10.0}
    to, fr = M.kfac_basis(w0, jnp.asarray(X), jnp.ones(len(y)), 0.05, tiny_basis)
    theta = jnp.asarray(np.random.default_rng(2).normal(size=(6, K)))
    np.testing.assert_allclose(np.asarray(fr(to(theta))), np.asarray(theta), rtol=1e-10, atol=1e-12)
    plain = M.softmax_victim(K, 0.05, solver=TIGHT).fit(X, y)
    pre = M.softmax_victim(K, 0.05, solver=TIGHT, precondition=tiny_basis).fit(X, y)
    # the bias is determined up to a common shift (singular direction): compare logits
    np.testing.assert_allclose(np.asarray(X @ pre["w"] + pre["b"] - (X @ plain["w"] + plain["b"])), 0, atol=1e-8)


def test_preconditioned_hypergradient_matches_finite_differences(tiny, tiny_basis):
    learner = M.softmax_victim(K, 0.05, solver=TIGHT, precondition=tiny_basis)
    f = _fn(learner, "specific", tiny)
    Xp = jnp.asarray(tiny[4])
    g = jax.grad(f)(Xp)
    u = np.random.default_rng(3).normal(size=Xp.shape)
    eps = 1e-4
    fd = (f(Xp + eps * u) - f(Xp - eps * u)) / (2 * eps)
    assert abs(float(fd)) > 1e-6
    np.testing.assert_allclose(float(jnp.vdot(g, u)), float(fd), rtol=1e-6, atol=1e-10)


def test_bad_preconditioner_input_raises(tiny, tiny_basis):
    with pytest.raises(ValueError, match="rank"):
        M.GramBasis.from_data(tiny[0], rank=0)
    with pytest.raises(ValueError, match="X"):
        M.GramBasis.from_data(np.zeros(5))
    with pytest.raises(ValueError, match="precondition"):
        M.softmax_victim(K, 0.05, precondition="kfac")
    w0 = {"w": jnp.zeros((3, K)), "b": jnp.zeros(K)}
    with pytest.raises(ValueError, match="basis"):
        M.kfac_basis(w0, jnp.zeros((4, 3)), jnp.ones(4), 0.1, tiny_basis)


# ---- §5: the CNN victim, trained by heavy-ball SGD and reversed exactly by back-gradient ----
@pytest.fixture(scope="module")
def tiny_images():
    rng = np.random.default_rng(4)
    side, n = 6, 12
    y = np.arange(n) % K
    X = np.clip(0.3 + 0.2 * rng.random((n, side * side)) + 0.3 * (np.arange(side * side) % K == y[:, None]), 0, 1)
    Xv = np.clip(X[:9] + 0.05 * rng.normal(size=(9, side * side)), 0, 1)
    return X, y, Xv, y[:9], np.clip(X[:1] + 0.1 * rng.normal(size=(1, side * side)), 0.05, 0.95), np.array([2])


def _cnn(reverse):  # float64 compute; 2 channels 3x3, 10 heavy-ball steps (plain lax convolutions: fast to compile)
    return M.cnn_victim(K, 6, channels=(2,), kernel=3, steps=10, learning_rate=0.5, momentum=0.9, reverse=reverse,
                        conv="lax")


def test_cnn_back_gradient_matches_finite_differences_and_unrolled(tiny_images):
    X, y, Xv, yv, Xp, yp = tiny_images
    fns = {r: jax.jit(jax.value_and_grad(lambda xp, a=M.munoz_attack(_cnn(r)): attack_value(
        a, X, y, PoisonPoints(xp, yp), (Xv, yv))[0])) for r in ("backgradient", "unrolled")}  # one compilation each
    Xp = jnp.asarray(Xp)
    g_bg = np.asarray(fns["backgradient"](Xp)[1])
    g_un = np.asarray(fns["unrolled"](Xp)[1])
    assert np.linalg.norm(g_bg) > 1e-4
    # an independent implementation (reverse mode through the stored steps)
    np.testing.assert_allclose(g_bg, g_un, rtol=1e-6, atol=1e-9 * np.abs(g_un).max())
    # central differences of the back-gradient victim's own forward map, in float64, along 3 directions
    f = lambda xp: float(fns["backgradient"](xp)[0])
    eps = 1e-5
    for seed in range(3):
        u = np.random.default_rng(10 + seed).normal(size=Xp.shape)
        fd = (f(Xp + eps * u) - f(Xp - eps * u)) / (2 * eps)
        np.testing.assert_allclose(float(np.vdot(g_bg, u)), fd, rtol=1e-5, atol=1e-9)


def test_cnn_victim_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="momentum"):
        M.cnn_victim(K, 6, momentum=0.0)
    v = M.cnn_victim(K, 6, channels=(2,), kernel=3, steps=2)
    with pytest.raises(ValueError, match="side"):
        v.fit(np.zeros((4, 30)), np.arange(4) % K)
