"""Tests of bilevel.unroll: unrolled, truncated and back-gradient hypergradients (float64 via conftest)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilevel.minimize import Implicit, minimize
from bilevel.solvers import LBFGS, GradientDescent, OptaxSolver
from bilevel.unroll import (
    BackGradient,
    MiniBatches,
    Truncated,
    Unrolled,
    back_gradient_solve,
    batch_indices,
    checkpoint_blocks,
    information_buffer_limbs,
    unrolled_solve,
)

N, D = 40, 5


# --------------------------------------------------------------------------------------------------
# problem: L2 logistic regression with one weight per feature, lam_j = exp(loglam_j)


def _data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, D)) * np.linspace(0.6, 1.2, D)
    w_true = rng.normal(size=D)
    y = (X @ w_true + 0.5 * rng.normal(size=N) > 0).astype(float)
    Xv = rng.normal(size=(N, D))
    yv = (Xv @ w_true > 0).astype(float)
    return jnp.asarray(X), jnp.asarray(y), jnp.asarray(Xv), jnp.asarray(yv)


X, Y, XV, YV = _data()
LOGLAM = jnp.log(jnp.linspace(0.3, 1.0, D))
W0 = jnp.zeros(D)


def loss(w, loglam, X, y):
    z = X @ w
    return jnp.mean(jax.nn.softplus(z) - y * z) + 0.5 * jnp.sum(jnp.exp(loglam) * w**2)


def val_loss(w):
    z = XV @ w
    return jnp.mean(jax.nn.softplus(z) - YV * z)


def outer(method, solver, init=W0, data=(X, Y)):
    def f(loglam):
        return val_loss(minimize(loss, init, loglam, *data, solver=solver, method=method))

    return f


def hypergrad(method, solver, loglam=LOGLAM):
    return np.asarray(jax.jit(jax.grad(outer(method, solver)))(loglam))


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def central_fd(f, x, eps=1e-6):
    f = jax.jit(f)
    out = []
    for i in range(x.size):
        e = jnp.zeros_like(x).at[i].set(eps)
        out.append((float(f(x + e)) - float(f(x - e))) / (2 * eps))
    return np.array(out)


# Gradient descent, lr = 0.5: the loss is 0.3-strongly convex with L < 1.3, so 300 steps converge to
# ~1e-20; heavy ball with lr = 0.1, momentum 0.9 converges too.
T_CONV = 300
GD_CONV = GradientDescent(learning_rate=0.5, maxiter=T_CONV, tol=1e-10)
MOM_CONV = GradientDescent(learning_rate=0.1, momentum=0.9, maxiter=T_CONV, tol=1e-10)


# --------------------------------------------------------------------------------------------------
# converged inner problem: every strategy agrees with the implicit hypergradient


@pytest.fixture(scope="module")
def converged():
    fd_gd = central_fd(outer(Unrolled(), GD_CONV), LOGLAM)
    fd_mom = central_fd(outer(Unrolled(), MOM_CONV), LOGLAM)
    return fd_gd, fd_mom


def test_converged_strategies_agree(converged):
    fd_gd, fd_mom = converged
    implicit = hypergrad(Implicit(), GD_CONV)
    results = {
        "unrolled": hypergrad(Unrolled(), GD_CONV),
        "truncated_k_T": hypergrad(Truncated(k=T_CONV), GD_CONV),
        "backgrad_gd_approx": hypergrad(BackGradient(), GD_CONV),
        "unrolled_momentum": hypergrad(Unrolled(), MOM_CONV),
        "backgrad_momentum_exact": hypergrad(BackGradient(), MOM_CONV),
        "implicit": implicit,
    }
    for name, g in results.items():
        assert rel(g, implicit) < 1e-4, (name, rel(g, implicit))
        assert rel(g, fd_gd) < 1e-4, (name, rel(g, fd_gd))
        assert rel(g, fd_mom) < 1e-4, (name, rel(g, fd_mom))
    # The unrolled map itself matches its own finite differences much more tightly.
    assert rel(results["unrolled"], fd_gd) < 1e-7
    assert rel(results["unrolled_momentum"], fd_mom) < 1e-7
    assert rel(results["truncated_k_T"], results["unrolled"]) < 1e-12


# --------------------------------------------------------------------------------------------------
# back-gradient


@pytest.mark.parametrize("momentum, lr", [(0.9, 0.05), (0.5, 0.1)])
def test_backgradient_exact_reversal_matches_unrolled(momentum, lr):
    # T = 100 momentum steps, far from convergence: the trajectory matters.
    solver = GradientDescent(learning_rate=lr, momentum=momentum, maxiter=100)
    ref = hypergrad(Unrolled(), solver)
    exact = hypergrad(BackGradient(exact=True), solver)
    err = rel(exact, ref)
    print(f"\nmomentum={momentum}: exact back-gradient vs unrolled rel err {err:.2e}")
    assert err < 1e-8
    # The float reversal v_t = (v_{t+1} - g) / gamma amplifies rounding by 1/gamma per step.
    if momentum == 0.5:
        float_err = rel(hypergrad(BackGradient(exact=False), solver), ref)
        print(f"momentum=0.5: float reversal rel err {float_err:.2e}")
        assert not float_err < 1e-2  # NaN or large


def test_backgradient_value_and_derivatives_wrt_init_and_data():
    solver = GradientDescent(learning_rate=0.05, momentum=0.9, maxiter=60)
    init = 0.1 * jnp.arange(D, dtype=float)

    def f(method):
        return lambda w0, Xd: val_loss(minimize(loss, w0, LOGLAM, Xd, Y, solver=solver, method=method))

    v_ref, g_ref = jax.value_and_grad(f(Unrolled()), argnums=(0, 1))(init, X)
    v_bg, g_bg = jax.jit(jax.value_and_grad(f(BackGradient()), argnums=(0, 1)))(init, X)
    assert abs(float(v_bg) - float(v_ref)) < 1e-10
    assert rel(g_bg[0], g_ref[0]) < 1e-8
    assert rel(g_bg[1], g_ref[1]) < 1e-8


def test_backgradient_approximate_gd_reversal():
    # x_t ~ x_{t+1} + lr grad(x_{t+1}): first-order error, so it shrinks ~ lr at fixed lr * T.
    errs = []
    for lr, steps in [(0.1, 50), (0.02, 250)]:
        solver = GradientDescent(learning_rate=lr, maxiter=steps)
        errs.append(rel(hypergrad(BackGradient(), solver), hypergrad(Unrolled(), solver)))
    print(f"\napproximate GD reversal rel err: lr=0.1,T=50: {errs[0]:.2e}; lr=0.02,T=250: {errs[1]:.2e}")
    assert errs[0] < 3e-2 and errs[1] < 5e-3
    assert errs[1] < errs[0] / 2


def test_back_gradient_solve_pytree_closure_and_schedule():
    # Low-level API: own pure gradient function, pytree params, closed-over data.
    Xj, yj = X, Y

    def grad_fn(p, t, loglam):
        def l(p_):
            z = Xj @ p_["w"] + p_["b"]
            return jnp.mean(jax.nn.softplus(z) - yj * z) + 0.5 * jnp.sum(jnp.exp(loglam) * p_["w"] ** 2)

        return jax.grad(l)(p)

    init = {"w": jnp.zeros(D), "b": jnp.zeros(())}

    def step(state, t, loglam):
        (p, v) = state
        v = jax.tree_util.tree_map(lambda v_, g_: 0.9 * v_ + g_, v, grad_fn(p, t, loglam))
        return jax.tree_util.tree_map(lambda p_, v_: p_ - 0.05 * v_, p, v), v

    def f_bg(loglam):
        p = back_gradient_solve(grad_fn, init, (loglam,), steps=80, learning_rate=0.05, momentum=0.9)
        return val_loss(p["w"]) + p["b"] ** 2

    def f_un(loglam):
        zeros = jax.tree_util.tree_map(jnp.zeros_like, init)
        p, _ = unrolled_solve(step, (init, zeros), (loglam,), 80, checkpoint="sqrt")
        return val_loss(p["w"]) + p["b"] ** 2

    v_bg, g_bg = jax.jit(jax.value_and_grad(f_bg))(LOGLAM)
    v_un, g_un = jax.jit(jax.value_and_grad(f_un))(LOGLAM)
    assert abs(float(v_bg) - float(v_un)) < 1e-10
    assert rel(g_bg, g_un) < 1e-8


def test_information_buffer_size():
    assert information_buffer_limbs(1000, 0.9) <= 7  # ~152 bits of lost information + margin
    assert information_buffer_limbs(1000, 0.5) >= 32  # one bit per step


# --------------------------------------------------------------------------------------------------
# unrolled: checkpointing, forward mode, transformations


def test_checkpointing_matches_plain_scan():
    solver = GradientDescent(learning_rate=0.1, momentum=0.9, maxiter=50)
    f_ref = jax.jit(jax.value_and_grad(outer(Unrolled(), solver)))
    v_ref, g_ref = f_ref(LOGLAM)
    for ckpt in ("sqrt", "log", 7):
        v, g = jax.jit(jax.value_and_grad(outer(Unrolled(checkpoint=ckpt), solver)))(LOGLAM)
        assert abs(float(v) - float(v_ref)) < 1e-13, ckpt
        assert rel(g, g_ref) < 1e-12, ckpt
    assert checkpoint_blocks(100, "sqrt") == (10, 10)
    assert checkpoint_blocks(50, 7) == (8, 7)
    assert np.prod(checkpoint_blocks(1000, "log")) >= 1000


def test_sqrt_checkpoint_reduces_compiled_memory():
    solver = GradientDescent(learning_rate=0.1, momentum=0.9, maxiter=400)

    def temp_bytes(method):
        fn = jax.jit(jax.grad(outer(method, solver)))
        stats = fn.lower(LOGLAM).compile().memory_analysis()
        if stats is None:
            pytest.skip("memory_analysis unavailable on this backend")
        return stats.temp_size_in_bytes

    plain, sqrt = temp_bytes(Unrolled()), temp_bytes(Unrolled(checkpoint="sqrt"))
    assert sqrt < plain / 4, (plain, sqrt)


def test_jvp_equals_grad_dot_v():
    solver = GradientDescent(learning_rate=0.1, momentum=0.9, maxiter=30)
    v = jnp.linspace(-1.0, 2.0, D)
    for method in (Unrolled(mode="forward"), Truncated(k=20, checkpoint="sqrt")):
        f = outer(method, solver)
        tangent = jax.jit(lambda x: jax.jvp(f, (x,), (v,))[1])(LOGLAM)
        assert abs(float(tangent) - float(jax.jit(jax.grad(f))(LOGLAM) @ v)) < 1e-12 * max(1.0, abs(float(tangent)))

    def inner(ll):
        return minimize(loss, W0, ll, X, Y, solver=solver, method=Unrolled())

    jac = jax.jit(jax.jacfwd(inner))(LOGLAM)
    assert jac.shape == (D, D)
    np.testing.assert_allclose(jac, jax.jit(jax.jacrev(inner))(LOGLAM), rtol=1e-10, atol=1e-14)


def test_forward_mode_works_with_lbfgs():
    # LBFGS's zoom line search is a while_loop: not reverse-differentiable, but forward mode is fine.
    f = outer(Unrolled(), LBFGS(maxiter=6))
    tangent = jax.jit(lambda x: jax.jvp(f, (x,), (jnp.ones(D),))[1])(LOGLAM)
    fj = jax.jit(f)
    fd = (float(fj(LOGLAM + 1e-6)) - float(fj(LOGLAM - 1e-6))) / 2e-6
    assert abs(float(tangent) - fd) < 1e-6 * max(1.0, abs(fd))


@pytest.mark.parametrize("method", [Unrolled(), BackGradient()], ids=["unrolled", "backgrad"])
def test_jit_vmap_matches_python_loop(method):
    solver = GradientDescent(learning_rate=0.1, momentum=0.9, maxiter=40)
    settings = LOGLAM[None, :] + jnp.linspace(-1.0, 1.0, 8)[:, None]
    f = jax.value_and_grad(outer(method, solver))
    vals, grads = jax.jit(jax.vmap(f))(settings)
    single = jax.jit(f)
    for i in range(8):
        v, g = single(settings[i])
        assert abs(float(vals[i]) - float(v)) < 1e-13
        np.testing.assert_allclose(grads[i], g, rtol=1e-10, atol=1e-15)


def test_truncated_is_unrolled_from_stopped_state():
    solver = GradientDescent(learning_rate=0.1, maxiter=60)
    g_tr = hypergrad(Truncated(k=15), solver)
    # by hand: 45 steps without gradient, then 15 unrolled steps
    x45 = jax.lax.stop_gradient(minimize(loss, W0, LOGLAM, X, Y, solver=solver, method=Unrolled(steps=45)))
    f = lambda ll: val_loss(minimize(loss, x45, ll, X, Y, solver=solver, method=Unrolled(steps=15)))
    assert rel(g_tr, jax.grad(f)(LOGLAM)) < 1e-12
    # truncation biases the (unconverged) hypergradient
    assert rel(g_tr, hypergrad(Unrolled(), solver)) > 1e-6


# --------------------------------------------------------------------------------------------------
# mini-batches


def test_batch_indices_are_epoch_permutations():
    key = jax.random.PRNGKey(1)
    epoch0 = np.concatenate([np.asarray(batch_indices(t, N, 8, key)) for t in range(5)])
    epoch1 = np.concatenate([np.asarray(batch_indices(t, N, 8, key)) for t in range(5, 10)])
    assert sorted(epoch0) == list(range(N)) and sorted(epoch1) == list(range(N))
    assert not np.array_equal(epoch0, epoch1)


def _minibatch_hypergrad(method_cls, solver, batch_size, **kw):
    """jit(grad) with the PRNG key as a traced argument: one compilation serves every key."""

    def g(key, loglam):
        method = method_cls(batches=MiniBatches(batch_size, key=key, argnums=(1, 2)), **kw)
        return jax.grad(outer(method, solver))(loglam)

    fn = jax.jit(g)
    return lambda key: np.asarray(fn(key, LOGLAM))


def test_minibatch_reproducible_and_methods_agree():
    solver = GradientDescent(learning_rate=0.05, momentum=0.9, maxiter=60)
    unrolled = _minibatch_hypergrad(Unrolled, solver, 8)
    g_un = unrolled(jax.random.PRNGKey(3))
    np.testing.assert_array_equal(g_un, unrolled(jax.random.PRNGKey(3)))
    assert rel(unrolled(jax.random.PRNGKey(4)), g_un) > 1e-3
    assert rel(hypergrad(Unrolled(), solver), g_un) > 1e-3  # full batch differs
    g_bg = _minibatch_hypergrad(BackGradient, solver, 8)(jax.random.PRNGKey(3))
    print(f"\nmini-batch exact back-gradient vs unrolled rel err {rel(g_bg, g_un):.2e}")
    assert rel(g_bg, g_un) < 1e-8
    # an int seed is PRNGKey(seed); plain-GD approximate reversal is close in mini-batch mode too
    gd = GradientDescent(learning_rate=0.02, maxiter=100)
    mb_int = MiniBatches(batch_size=10, key=0, argnums=(1, 2))
    g_int = hypergrad(Unrolled(batches=mb_int), gd)
    np.testing.assert_allclose(g_int, _minibatch_hypergrad(Unrolled, gd, 10)(jax.random.PRNGKey(0)), rtol=1e-12)
    err = rel(hypergrad(BackGradient(batches=mb_int), gd), g_int)
    print(f"mini-batch approximate GD reversal rel err {err:.2e}")
    assert err < 2e-2


# --------------------------------------------------------------------------------------------------
# errors


def test_clear_errors():
    gd = GradientDescent(learning_rate=0.1, maxiter=10)
    with pytest.raises(ValueError, match="'solver'"):
        minimize(loss, W0, LOGLAM, X, Y, solver=LBFGS(maxiter=10), method=BackGradient())
    with pytest.raises(ValueError, match="'solver'"):
        import optax

        minimize(loss, W0, LOGLAM, X, Y, solver=OptaxSolver(optimizer=optax.adam(1e-2)), method=BackGradient())
    with pytest.raises(ValueError, match="'exact'"):
        minimize(loss, W0, LOGLAM, X, Y, solver=gd, method=BackGradient(exact=True))
    with pytest.raises(ValueError, match="'momentum'"):
        minimize(loss, W0, LOGLAM, X, Y, method=BackGradient(learning_rate=0.1, momentum=1.5))
    with pytest.raises(ValueError, match="'learning_rate'"):
        minimize(loss, W0, LOGLAM, X, Y, method=BackGradient(learning_rate=-1.0))
    with pytest.raises(ValueError, match="'k'"):
        minimize(loss, W0, LOGLAM, X, Y, solver=gd, method=Truncated(k=11))
    with pytest.raises(ValueError, match="'k'"):
        Truncated(k=0)
    with pytest.raises(ValueError, match="'checkpoint'"):
        Unrolled(checkpoint="cubic")
    with pytest.raises(ValueError, match="'checkpoint'"):
        Unrolled(mode="forward", checkpoint="sqrt")
    with pytest.raises(ValueError, match="'mode'"):
        Unrolled(mode="sideways")
    with pytest.raises(ValueError, match="'steps'"):
        Unrolled(steps=0)
    with pytest.raises(ValueError, match="'solver'"):
        Unrolled().solve(loss, "gd", W0, (LOGLAM, X, Y))
    with pytest.raises(ValueError, match="'batch_size'"):
        MiniBatches(batch_size=0, argnums=(1,))
    with pytest.raises(ValueError, match="'argnums'"):
        MiniBatches(batch_size=4)
    with pytest.raises(ValueError, match="'argnums'"):
        minimize(loss, W0, LOGLAM, X, Y, solver=gd, method=Unrolled(batches=MiniBatches(4, argnums=(5,))))
    with pytest.raises(ValueError, match="'argnums'"):  # LOGLAM has D rows, X has N
        minimize(loss, W0, LOGLAM, X, Y, solver=gd, method=Unrolled(batches=MiniBatches(4, argnums=(0, 1))))
    with pytest.raises(ValueError, match="'batch_size'"):
        minimize(loss, W0, LOGLAM, X, Y, solver=gd, method=Unrolled(batches=MiniBatches(N + 1, argnums=(1, 2))))
    with pytest.raises(ValueError, match="'batches'"):
        minimize(loss, W0, LOGLAM, X, Y, solver=gd, method=Unrolled(batches=(X, Y)))
    with pytest.raises(ValueError, match="structure"):
        unrolled_solve(lambda s, t: (s, s), jnp.zeros(2), (), 3)
    with pytest.raises(TypeError, match="step_fn"):
        unrolled_solve(None, jnp.zeros(2), (), 3)
    with pytest.raises(ValueError, match="'radix_bits'"):
        back_gradient_solve(lambda x, t: x, jnp.zeros(2), steps=3, learning_rate=0.1, momentum=0.9, radix_bits=60)
    # forward mode is not defined through the back-gradient's custom_vjp
    f = outer(BackGradient(), GradientDescent(learning_rate=0.1, momentum=0.9, maxiter=5))
    with pytest.raises(TypeError):
        jax.jvp(f, (LOGLAM,), (LOGLAM,))


def test_overflow_is_reported():
    # |x| grows past the fixed-point range 2**(61 - radix_bits) = 2**9: reported, not silently wrapped.
    def grad_fn(x, t):
        return -x - 1.0  # gradient of -x^2/2 - x: diverges

    with pytest.raises(Exception, match="overflow"):
        back_gradient_solve(grad_fn, jnp.ones(2), steps=200, learning_rate=0.5, momentum=0.9, radix_bits=52)
