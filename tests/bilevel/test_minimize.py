"""minimize(): inner solvers, the Implicit/Direct strategies, jaxopt as an oracle, and input errors."""

import functools
import jax
import jax.numpy as jnp
import jaxopt
import numpy as np
import optax
import pytest

from bilevel import (
    LBFGS,
    ClosedForm,
    ConvergenceError,
    Direct,
    GradientDescent,
    Implicit,
    Newton,
    OptaxSolver,
    minimize,
)

RNG = np.random.default_rng(0)
N, D = 40, 5
X = jnp.asarray(RNG.normal(size=(N, D)))
Y = jnp.asarray(RNG.normal(size=N))
XV = jnp.asarray(RNG.normal(size=(30, D)))
YV = jnp.asarray(RNG.normal(size=30))
YB = jnp.asarray((RNG.random(N) > 0.5).astype(float))  # binary labels for logistic
YVB = jnp.asarray((RNG.random(30) > 0.5).astype(float))


def ridge(w, lam, X, y):
    return 0.5 * jnp.mean((X @ w - y) ** 2) + 0.5 * jnp.sum(lam * w**2)


def ridge_closed(lam, X, y):
    return jnp.linalg.solve(X.T @ X / X.shape[0] + jnp.diag(lam * jnp.ones(X.shape[1])), X.T @ y / X.shape[0])


def logistic(w, lam, X, y):
    z = X @ w
    return jnp.mean(jax.nn.softplus(z) - y * z) + 0.5 * jnp.sum(lam * w**2)


@pytest.mark.parametrize(
    "solver",
    [
        LBFGS(tol=1e-9),
        Newton(tol=1e-10),
        GradientDescent(learning_rate=0.5, maxiter=5000, tol=1e-8),
        OptaxSolver(optimizer=optax.adam(0.05), maxiter=20000, tol=1e-7),
    ],
    ids=["lbfgs", "newton", "gd", "adam"],
)
def test_solvers_reach_closed_form(solver):
    lam = jnp.full(D, 0.3)
    w = minimize(ridge, jnp.zeros(D), lam, X, Y, solver=solver)
    np.testing.assert_allclose(w, ridge_closed(lam, X, Y), atol=1e-6)


def test_ridge_hypergradient_equals_closed_form_both_modes():
    lam = jnp.linspace(0.1, 0.5, D)

    def val(lam, method):
        w = minimize(ridge, jnp.zeros(D), lam, X, Y, solver=Newton(tol=1e-12), method=method)
        return 0.5 * jnp.mean((XV @ w - YV) ** 2)

    def val_ref(lam):
        return 0.5 * jnp.mean((XV @ ridge_closed(lam, X, Y) - YV) ** 2)

    ref = jax.grad(val_ref)(lam)
    for m in [Implicit(), Implicit(linear_solver="lu"), Implicit(linear_solver="gmres")]:
        f = functools.partial(val, method=m)
        np.testing.assert_allclose(jax.jit(jax.grad(f))(lam), ref, rtol=1e-8, atol=1e-14)
        np.testing.assert_allclose(jax.jit(jax.jacfwd(f))(lam), ref, rtol=1e-8, atol=1e-14)
    # Direct differentiation of the closed form agrees too.
    closed = ClosedForm(fn=ridge_closed)
    np.testing.assert_allclose(jax.grad(
        lambda l: 0.5 * jnp.mean((XV @ minimize(ridge, jnp.zeros(D), l, X, Y, solver=closed, method=Direct()) - YV) ** 2)
    )(lam), ref, rtol=1e-10)


def test_gradient_wrt_training_data_both_modes():
    lam = jnp.asarray(0.2)

    def val(Xtr):
        w = minimize(ridge, jnp.zeros(D), lam, Xtr, Y, solver=Newton(tol=1e-12))
        return 0.5 * jnp.mean((XV @ w - YV) ** 2)

    def val_ref(Xtr):
        return 0.5 * jnp.mean((XV @ ridge_closed(lam, Xtr, Y) - YV) ** 2)

    np.testing.assert_allclose(jax.grad(val)(X), jax.grad(val_ref)(X), rtol=1e-8, atol=1e-13)
    v = jnp.asarray(RNG.normal(size=X.shape))
    jvp_ours = jax.jvp(val, (X,), (v,))[1]
    jvp_ref = jax.jvp(val_ref, (X,), (v,))[1]
    np.testing.assert_allclose(jvp_ours, jvp_ref, rtol=1e-8)


@pytest.mark.parametrize("problem", ["ridge", "logistic"])
def test_matches_jaxopt_custom_root(problem):
    """Our IFT gradient equals jaxopt's (an independent implementation)."""
    loss = ridge if problem == "ridge" else logistic
    y, yv = (Y, YV) if problem == "ridge" else (YB, YVB)
    lam = jnp.linspace(0.05, 0.3, D)

    def outer(w):
        return jnp.mean((XV @ w - yv) ** 2)

    def ours(lam):
        return outer(minimize(loss, jnp.zeros(D), lam, X, y, solver=Newton(tol=1e-12)))

    jx_solver = jaxopt.LBFGS(fun=loss, tol=1e-12, maxiter=2000, implicit_diff=True)

    def theirs(lam):
        return outer(jx_solver.run(jnp.zeros(D), lam, X, y).params)

    np.testing.assert_allclose(jax.grad(ours)(lam), jax.grad(theirs)(lam), rtol=1e-7)

    # And jaxopt's custom_root decorator around a plain solver, same optimality condition.
    @jaxopt.implicit_diff.custom_root(jax.grad(loss), solve=jaxopt.linear_solve.solve_cg)
    def jx_root(init, lam, X, y):
        return jaxopt.LBFGS(fun=loss, tol=1e-12, maxiter=2000).run(init, lam, X, y).params

    g_root = jax.grad(lambda l: outer(jx_root(jnp.zeros(D), l, X, y)))(lam)
    np.testing.assert_allclose(jax.grad(ours)(lam), g_root, rtol=1e-7)


def test_jit_and_vmap_over_eight_settings_equal_loop():
    lams = jnp.exp(jnp.linspace(-3, 0, 8))

    def val(lam):
        w = minimize(logistic, jnp.zeros(D), lam, X, YB, solver=LBFGS(tol=1e-10))
        return jnp.mean((XV @ w - YVB) ** 2)

    g = jax.jit(jax.grad(val))
    batched = jax.jit(jax.vmap(jax.grad(val)))(lams)
    loop = jnp.stack([g(l) for l in lams])
    np.testing.assert_allclose(batched, loop, rtol=1e-8, atol=1e-14)
    fwd = jax.jit(jax.vmap(jax.jacfwd(val)))(lams)
    np.testing.assert_allclose(fwd, loop, rtol=1e-8, atol=1e-14)


def test_pytree_params_and_hessian_of_outer():
    def loss(p, lam, X, y):
        z = X @ p["w"] + p["b"]
        return 0.5 * jnp.mean((z - y) ** 2) + 0.5 * lam * jnp.sum(p["w"] ** 2)

    init = {"w": jnp.zeros(D), "b": jnp.asarray(0.0)}

    def val(lam):
        p = minimize(loss, init, lam, X, Y, solver=Newton(tol=1e-12), method=Implicit(linear_solver="cholesky"))
        return 0.5 * jnp.mean((XV @ p["w"] + p["b"] - YV) ** 2)

    def val_ref(lam):
        Xa = jnp.concatenate([X, jnp.ones((N, 1))], axis=1)
        R = jnp.diag(jnp.concatenate([jnp.full(D, lam), jnp.zeros(1)]))
        theta = jnp.linalg.solve(Xa.T @ Xa / N + R, Xa.T @ Y / N)
        return 0.5 * jnp.mean((XV @ theta[:D] + theta[D] - YV) ** 2)

    # one compilation each (eager tracing of the nested solves costs more than compiling them)
    np.testing.assert_allclose(jax.jit(jax.grad(val))(0.3), jax.grad(val_ref)(0.3), rtol=1e-9)
    np.testing.assert_allclose(jax.jit(jax.hessian(val))(0.3), jax.hessian(val_ref)(0.3), rtol=1e-7)


def test_nonconverged_inner_solve_raises_or_warns():
    lam = jnp.asarray(0.1)
    with pytest.raises(ConvergenceError, match="did not converge"):
        minimize(ridge, jnp.zeros(D), lam, X, Y, solver=LBFGS(maxiter=2, tol=1e-12))
    with pytest.raises(Exception, match="did not converge"):
        jax.jit(lambda l: minimize(ridge, jnp.zeros(D), l, X, Y, solver=LBFGS(maxiter=2, tol=1e-12)))(
            lam
        ).block_until_ready()
    with pytest.warns(RuntimeWarning, match="did not converge"):
        minimize(ridge, jnp.zeros(D), lam, X, Y, solver=LBFGS(maxiter=2, tol=1e-12, on_failure="warn"))
    # Divergent gradient descent (step too large) is reported, not returned as NaN silently.
    with pytest.raises(ConvergenceError, match="NaN"):
        minimize(ridge, jnp.zeros(D), lam, X * 100, Y, solver=GradientDescent(learning_rate=10.0, maxiter=500))


def test_bad_inputs_name_the_argument():
    lam = jnp.asarray(0.1)
    with pytest.raises(ValueError, match="init"):
        minimize(ridge, jnp.full(D, jnp.nan), lam, X, Y)
    with pytest.raises(ValueError, match=r"args\[1\]"):
        minimize(ridge, jnp.zeros(D), lam, X.at[0, 0].set(jnp.inf), Y)
    with pytest.raises(TypeError, match="loss"):
        minimize("not a function", jnp.zeros(D), lam)
    with pytest.raises(TypeError, match="solver"):
        minimize(ridge, jnp.zeros(D), lam, X, Y, solver=optax.adam(0.1))
    with pytest.raises(ValueError, match="maxiter"):
        LBFGS(maxiter=0)
    with pytest.raises(ValueError, match="optimizer"):
        OptaxSolver()
