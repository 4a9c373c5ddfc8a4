"""Every adjoint solver x every shipped inner problem: IFT hypergradients vs central finite differences.

For each problem the inner solution is computed once (Newton, gradient norm < 1e-12); the IFT
hypergradient is then taken with each adjoint solver (the forward solve is a ``ClosedForm`` returning
that solution, so only the adjoint differs) and compared, along random directions, with central
finite differences of the re-solved problem, w.r.t. the per-feature regularization and the training
inputs. Ridge is also checked against the derivative of its closed form.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from bilevel import LBFGS, ClosedForm, Implicit, LiSSA, Neumann, Newton, minimize
from bilevel import linear_solve
from bilevel.problems.adaline import adaline_loss
from bilevel.problems.logistic import logistic_loss, multiclass_logistic_loss
from bilevel.problems.mlp import mlp_init, mlp_loss
from bilevel.problems.ridge import ridge_closed_form, ridge_loss
from bilevel.problems.svm import svm_primal_loss

N, D, K = 50, 5, 3
RNG = np.random.default_rng(42)
X = RNG.uniform(size=(N, D))
XV = RNG.uniform(size=(40, D))
W_TRUE = RNG.normal(size=(D, K))


def _draw_labels(Xs, noise):
    z = Xs @ W_TRUE + 0.3 * noise
    s = z[:, 0] - np.median(z[:, 0])
    return {
        "multi": jnp.asarray(z.argmax(1)),
        "binary01": jnp.asarray((s > 0).astype(float)),
        "pm1": jnp.asarray(np.where(s > 0, 1.0, -1.0)),
        "real": jnp.asarray(z[:, 0]),
    }


# All data is drawn once, at import: every call of _problem binds the same labels.
LABELS = _draw_labels(X, RNG.normal(size=(N, K)))
LABELS_VAL = _draw_labels(XV, RNG.normal(size=(40, K)))


def _labels(Xs, kind):
    return (LABELS if Xs is X else LABELS_VAL)[kind]


def _linear(d, k=None):
    return {"w": jnp.zeros((d,) if k is None else (d, k)), "b": jnp.zeros(() if k is None else (k,))}


def _problem(name):
    """(loss(params, reg, X), init, reg, outer(params)) with labels bound by closure."""
    if name == "ridge":
        y, yv = _labels(X, "real"), _labels(XV, "real")
        return (lambda p, r, Xt: ridge_loss(p, r, Xt, y)), _linear(D), jnp.full(D, 0.05), (
            lambda p: 0.5 * jnp.mean((XV @ p["w"] + p["b"] - yv) ** 2)
        )
    if name == "logistic":
        y, yv = _labels(X, "binary01"), _labels(XV, "binary01")
        return (lambda p, r, Xt: logistic_loss(p, r, Xt, y)), _linear(D), jnp.full(D, 0.05), (
            lambda p: logistic_loss(p, 0.0, jnp.asarray(XV), yv)
        )
    if name == "multiclass":
        y, yv = _labels(X, "multi"), _labels(XV, "multi")
        # The softmax loss is invariant to a common shift of the intercepts (a null direction of
        # the Hessian); a small intercept penalty makes the inner problem strongly convex.
        return (
            lambda p, r, Xt: multiclass_logistic_loss(p, r, Xt, y) + 0.005 * jnp.sum(p["b"] ** 2)
        ), _linear(D, K), jnp.full(D, 0.05), (
            lambda p: multiclass_logistic_loss(p, 0.0, jnp.asarray(XV), yv)
        )
    if name == "adaline":
        y, yv = _labels(X, "pm1"), _labels(XV, "pm1")
        return (lambda p, r, Xt: adaline_loss(p, r, Xt, y)), _linear(D), jnp.full(D, 0.05), (
            lambda p: jnp.mean(jax.nn.softplus(-yv * (XV @ p["w"] + p["b"])))
        )
    if name == "svm_smooth_hinge":
        y, yv = _labels(X, "pm1"), _labels(XV, "pm1")
        return (lambda p, r, Xt: svm_primal_loss(p, r, Xt, y, t=0.1)), _linear(D), jnp.full(D, 0.05), (
            lambda p: svm_primal_loss(p, 0.0, jnp.asarray(XV), yv, t=0.1)
        )
    if name == "mlp":
        y, yv = _labels(X, "multi"), _labels(XV, "multi")
        init = mlp_init(jax.random.PRNGKey(0), D, hidden=4, n_classes=K)
        # Unpenalized biases make the minimum degenerate: the output bias has the softmax shift
        # invariance, and a dead hidden unit leaves its bias with zero curvature. A small bias
        # penalty makes the Hessian nonsingular, which the IFT needs.
        def bias_penalty(p):
            return 0.005 * sum(jnp.sum(layer["bias"] ** 2) for layer in p.values())

        return (lambda p, r, Xt: mlp_loss(p, r, Xt, y) + bias_penalty(p)), init, jnp.asarray(0.05), (
            lambda p: mlp_loss(p, 0.0, jnp.asarray(XV), yv)
        )
    raise KeyError(name)


PROBLEMS = ["ridge", "logistic", "multiclass", "adaline", "svm_smooth_hinge", "mlp"]
SOLVERS = ["cg", "normal_cg", "gmres", "bicgstab", "cholesky", "lu", "neumann", "lissa"]
NEWTON = Newton(tol=1e-12, maxiter=200)
# A covering grid, not the full product: every problem with an iterative (CG) and a direct (LU) adjoint,
# every solver on two convex problems (smooth logistic, smoothed hinge) (the solvers themselves are tested
# against dense solves in test_linear_solve.py; the ridge closed form below runs every solver).
PAIRS = sorted({(p, s) for p in PROBLEMS for s in ("cg", "lu")} | {(p, s) for p in ("logistic", "svm_smooth_hinge") for s in SOLVERS})


@functools.lru_cache(maxsize=None)
def _reference(name):
    """Solution, Hessian spectrum bounds and finite-difference directional derivatives (computed once)."""
    loss, init, reg, outer = _problem(name)
    Xt = jnp.asarray(X)
    # L-BFGS (a descent method) first, so non-convex problems land on a minimum, not a saddle
    # (which Newton alone may converge to); Newton then polishes to a gradient norm < 1e-12.
    start = LBFGS(tol=1e-8, maxiter=3000).checked_run(loss, init, reg, Xt)[0]
    solve = jax.jit(lambda r, Xt_: NEWTON.checked_run(loss, start, r, Xt_)[0])
    x_star = solve(reg, Xt)
    flat, unravel = ravel_pytree(x_star)
    H = jax.hessian(lambda z: loss(unravel(z), reg, Xt))(flat)
    eig = np.linalg.eigvalsh(np.asarray(H))
    assert eig[0] > 0, f"{name}: Hessian not positive definite at the solution"

    def val(r, Xt_):
        return outer(solve(r, Xt_))

    rng = np.random.default_rng(7)
    dirs_reg = [jnp.asarray(rng.normal(size=np.shape(reg))) for _ in range(2)]
    dirs_X = [jnp.asarray(rng.normal(size=X.shape)) for _ in range(1)]
    eps = 1e-5
    fd_reg = [(val(reg + eps * v, Xt) - val(reg - eps * v, Xt)) / (2 * eps) for v in dirs_reg]
    fd_X = [(val(reg, Xt + eps * v) - val(reg, Xt - eps * v)) / (2 * eps) for v in dirs_X]
    return x_star, (float(eig[0]), float(eig[-1])), dirs_reg, fd_reg, dirs_X, fd_X


def _method(solver, lam_min, lam_max):
    if solver == "neumann":
        alpha = 1.0 / lam_max
        iters = int(np.ceil(40.0 / -np.log1p(-lam_min / lam_max)))  # contraction^iters ~ e^-40
        return Implicit(linear_solver=Neumann(alpha=alpha, maxiter=iters, tol=1e-14))
    if solver == "lissa":
        scale = 1.05 * lam_max
        depth = int(np.ceil(40.0 / -np.log1p(-lam_min / scale)))
        return Implicit(linear_solver=LiSSA(scale=scale, depth=depth))
    cls = linear_solve.SOLVERS[solver]
    return Implicit(linear_solver=cls() if solver in ("cholesky", "lu") else cls(tol=1e-12))


@pytest.mark.parametrize("problem,solver", PAIRS)
def test_hypergradient_matches_finite_differences(problem, solver):
    loss, _, reg, outer = _problem(problem)
    x_star, (lmin, lmax), dirs_reg, fd_reg, dirs_X, fd_X = _reference(problem)
    method = _method(solver, lmin, lmax)
    at_solution = ClosedForm(fn=lambda *_: x_star, tol=1e-9)

    @jax.jit
    def val(r, Xt):
        return outer(minimize(loss, x_star, r, Xt, solver=at_solution, method=method))

    Xt = jnp.asarray(X)
    g_reg, g_X = jax.grad(val, argnums=(0, 1))(reg, Xt)
    for v, fd in zip(dirs_reg, fd_reg):
        np.testing.assert_allclose(jnp.vdot(g_reg, v), fd, rtol=1e-5)
    for v, fd in zip(dirs_X, fd_X):
        np.testing.assert_allclose(jnp.vdot(g_X, v), fd, rtol=1e-5)
    # Forward mode along the same directions gives the same numbers (the custom_jvp rule is shared
    # by all solvers, so two of them suffice and keep compile time down).
    if solver not in ("cg", "lu"):
        return
    jvp_reg = jax.jvp(lambda r: val(r, Xt), (reg,), (dirs_reg[0],))[1]
    np.testing.assert_allclose(jvp_reg, jnp.vdot(g_reg, dirs_reg[0]), rtol=1e-7)


@pytest.mark.parametrize("solver", SOLVERS)
def test_ridge_hypergradient_equals_closed_form_derivative(solver):
    loss, _, reg, outer = _problem("ridge")
    x_star, (lmin, lmax), *_ = _reference("ridge")
    method = _method(solver, lmin, lmax)
    at_solution = ClosedForm(fn=lambda *_: x_star, tol=1e-9)
    Xt, y = jnp.asarray(X), _labels(X, "real")

    def ours(r, Xt_):
        return outer(minimize(loss, x_star, r, Xt_, solver=at_solution, method=method))

    def ref(r, Xt_):
        return outer(ridge_closed_form(r, Xt_, y))

    np.testing.assert_allclose(ours(reg, Xt), ref(reg, Xt), rtol=1e-12)
    g_ours = jax.grad(ours, argnums=(0, 1))(reg, Xt)
    g_ref = jax.grad(ref, argnums=(0, 1))(reg, Xt)
    for a, b in zip(g_ours, g_ref):
        assert float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) < 1e-8
