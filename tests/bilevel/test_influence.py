"""Tests of :mod:`bilevel.influence` (Koh & Liang 2017 influence functions).

The two headline tests are real measurements: models trained to convergence with Newton on
scikit-learn's digits, the 50 training points with the largest predicted leave-one-out effect on one
test point, and *actual* leave-one-out retraining (sample weight 0, warm-started Newton, vmapped over the
50 removals so it is one compiled call). Everything expensive is jitted and shared through module
fixtures (compilation dominates the run time on CPU).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits

from bilevel import CG, ConvergenceError, Cholesky, LiSSA
from bilevel.influence import (
    compute_s_test,
    influence_loss,
    influence_params,
    influence_perturbation,
    inverse_hvp,
    per_example_grads,
    predicted_loo_change,
    sampled_hessian_matvec,
    training_objective,
)
from bilevel.problems.logistic import logistic_loss
from bilevel.problems.svm import smooth_hinge, svm_primal_loss
from bilevel.solvers import Newton

N_TOP = 50


# --------------------------------------------------------------------------------------------------
# data and helpers


def digits_pair(a, b, n_train, seed, labels="01"):
    """Digits ``a`` vs ``b``, pixels / 16, shuffled; labels 0/1 (``b`` = 1) or -1/+1 (``labels="pm"``)."""
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    keep = (y == a) | (y == b)
    X, y = X[keep], (y[keep] == b)
    y = y.astype(np.int64) if labels == "01" else np.where(y, 1.0, -1.0)
    perm = np.random.default_rng(seed).permutation(len(y))
    X, y = X[perm], y[perm]
    train = (jnp.asarray(X[:n_train]), jnp.asarray(y[:n_train]))
    test = (jnp.asarray(X[n_train:]), jnp.asarray(y[n_train:]))
    return train, test


def flat(p):
    """Flatten ``{"w": (d,), "b": ()}`` as ``[w, b]`` (explicit order, independent of ravel_pytree)."""
    return np.concatenate([np.asarray(p["w"]).ravel(), np.atleast_1d(np.asarray(p["b"]))])


def unflat(v):
    return {"w": jnp.asarray(v[:-1]), "b": jnp.asarray(v[-1])}


def batched_flat(p):
    return np.concatenate([np.asarray(p["w"]), np.asarray(p["b"])[:, None]], axis=1)


def pearson(a, b):
    return float(np.corrcoef(np.asarray(a), np.asarray(b))[0, 1])


def make_refit(objective, tol=1e-10, maxiter=100):
    """jit(vmap(Newton.run)) over per-example weight vectors: one compile serves every retraining."""

    def fit(weights, init, *hyper):
        return Newton(tol=tol, maxiter=maxiter).run(objective, init, weights, *hyper)

    @jax.jit
    def refit(W, init, *hyper):  # W: (batch, n) sample weights; returns (params, SolverInfo) batched
        return jax.vmap(lambda w: fit(w, init, *hyper))(W)

    return refit


# --------------------------------------------------------------------------------------------------
# fixtures: trained models


@pytest.fixture(scope="module")
def logreg():
    """L2 logistic regression, digits 3 vs 8 (250 train), reg = 0.01 on w, trained with Newton(tol=1e-10)."""
    reg = 0.01
    (Xtr, ytr), (Xte, yte) = digits_pair(3, 8, 250, seed=0)
    n = Xtr.shape[0]

    def loss(p, z):
        x, y = z
        return logistic_loss(p, 0.0, x[None], y[None])

    def reg_fn(p):
        return 0.5 * reg * jnp.sum(p["w"] ** 2)

    refit = make_refit(lambda p, w: logistic_loss(p, reg, Xtr, ytr, w))
    init = {"w": jnp.zeros(64), "b": jnp.zeros(())}
    ps, info = refit(jnp.ones((N_TOP, n)), init)  # same shape as the LOO batch: compiled once
    params = jax.tree_util.tree_map(lambda a: a[0], ps)
    assert float(info.grad_norm[0]) <= 1e-10

    # analytic Hessian of (1/n) sum_i loss + reg in the [w, b] order of `flat`
    Z = np.concatenate([np.asarray(Xtr), np.ones((n, 1))], axis=1)
    prob = 1.0 / (1.0 + np.exp(-(Z @ flat(params))))
    H = (Z * (prob * (1 - prob))[:, None]).T @ Z / n + np.diag(np.r_[np.full(64, reg), 0.0])
    return dict(
        loss=loss, reg_fn=reg_fn, params=params, train=(Xtr, ytr), test=(Xte, yte), n=n, refit=refit, H=H
    )


@pytest.fixture(scope="module")
def logreg_test_point(logreg):
    """The test point with the largest loss, as a batch of one, plus the 50 most influential train points."""
    te_loss = jax.vmap(logreg["loss"], in_axes=(None, 0))(logreg["params"], logreg["test"])
    j = int(jnp.argmax(te_loss))
    test1 = jax.tree_util.tree_map(lambda a: a[j : j + 1], logreg["test"])
    loss, reg_fn, train = logreg["loss"], logreg["reg_fn"], logreg["train"]
    pred = jax.jit(lambda p, t: predicted_loo_change(loss, p, train, t, reg_fn=reg_fn))(logreg["params"], test1)
    assert pred.shape == (1, logreg["n"])
    pred = pred[0]
    top = jnp.argsort(-jnp.abs(pred))[:N_TOP]
    return test1, pred, top


# --------------------------------------------------------------------------------------------------
# 1. logistic regression: predicted vs actual leave-one-out


def test_logistic_regression_loo_correlation(logreg, logreg_test_point):
    t0 = time.perf_counter()
    test1, pred, top = logreg_test_point
    loss, params, n = logreg["loss"], logreg["params"], logreg["n"]
    z_test = jax.tree_util.tree_map(lambda a: a[0], test1)

    # actual LOO: weight 0 for the removed point, mean still over n (epsilon = -1/n), warm start at theta-hat
    W = jnp.ones((N_TOP, n)).at[jnp.arange(N_TOP), top].set(0.0)
    ps, info = logreg["refit"](W, params)
    assert float(jnp.max(info.grad_norm)) <= 1e-9, info.grad_norm
    actual = jax.vmap(loss, in_axes=(0, None))(ps, z_test) - loss(params, z_test)
    R = pearson(pred[top], actual)
    slope = float(np.polyfit(np.asarray(pred[top]), np.asarray(actual), 1)[0])
    print(
        f"\n[influence] logistic regression digits 3 vs 8 (n={n}, reg=0.01): Pearson R = {R:.4f} "
        f"(top-{N_TOP}, slope actual/predicted = {slope:.3f}, {time.perf_counter() - t0:.1f}s)"
    )
    assert R >= 0.99
    assert 0.7 <= slope <= 1.4  # sign and 1/n scale right (the residual is the second-order term)


def test_logistic_regression_upweighting_derivative(logreg, logreg_test_point):
    """The exact definitions: d(theta)/d(eps) and d(test loss)/d(eps) by central differences of retraining."""
    test1, _, top = logreg_test_point
    loss, reg_fn, params = logreg["loss"], logreg["reg_fn"], logreg["params"]
    train, n = logreg["train"], logreg["n"]
    z_test = jax.tree_util.tree_map(lambda a: a[0], test1)
    delta = 1e-2  # weight 1 +- delta in the mean over n, i.e. eps = +- delta / n
    W_plus = jnp.ones((N_TOP, n)).at[jnp.arange(N_TOP), top].set(1.0 + delta)
    W_minus = jnp.ones((N_TOP, n)).at[jnp.arange(N_TOP), top].set(1.0 - delta)
    p_plus, _ = logreg["refit"](W_plus, params)
    p_minus, _ = logreg["refit"](W_minus, params)
    eps = 2 * delta / n
    batched_loss = jax.vmap(loss, in_axes=(0, None))
    fd_loss = (batched_loss(p_plus, z_test) - batched_loss(p_minus, z_test)) / eps
    fd_params = (batched_flat(p_plus) - batched_flat(p_minus)) / eps

    points = jax.tree_util.tree_map(lambda a: a[top], train)
    i_loss, i_params = jax.jit(
        lambda p: (
            influence_loss(loss, p, train, test1, train_points=points, reg_fn=reg_fn),
            influence_params(loss, p, train, points, reg_fn=reg_fn),
        )
    )(params)
    assert i_loss.shape == (1, N_TOP)
    i_params = batched_flat(i_params)
    err_loss = np.max(np.abs(i_loss[0] - fd_loss)) / np.max(np.abs(fd_loss))
    err_params = np.max(np.abs(i_params - fd_params)) / np.max(np.abs(fd_params))
    print(
        f"\n[influence] upweighting central differences: rel err I_up,loss {err_loss:.1e}, "
        f"I_up,params {err_params:.1e}"
    )
    assert err_loss < 1e-3
    assert err_params < 1e-3
    # and the exact formulas against the analytic Hessian
    G = batched_flat(per_example_grads(loss, params, points))
    ref_params = -np.linalg.solve(logreg["H"], G.T).T
    np.testing.assert_allclose(i_params, ref_params, rtol=1e-7, atol=1e-9 * np.abs(ref_params).max())
    g_test = flat(jax.grad(loss)(params, z_test))
    np.testing.assert_allclose(i_loss[0], ref_params @ g_test, rtol=1e-7, atol=1e-9 * np.abs(i_loss).max())


# --------------------------------------------------------------------------------------------------
# 2. smoothed-hinge SVM


def test_smooth_hinge_svm_loo_correlation():
    """Koh & Liang's SmoothHinge SVM on digits 1 vs 7 (labels +-1).

    t = 0.01 and reg = 0.1 (on w). With t = 0.001 Newton still converges, but the leave-one-out
    effects of margin points are far from linear at this n: Pearson R between 0.7 and 0.98 over test
    points (0.2 to 0.95 with reg = 0.01), so t = 0.001 is not a robust test of the implementation.
    """
    t0 = time.perf_counter()
    reg, t_final = 0.1, 0.01
    (Xtr, ytr), (Xte, yte) = digits_pair(1, 7, 300, seed=0, labels="pm")
    n = Xtr.shape[0]
    refit = make_refit(lambda p, w, t: svm_primal_loss(p, reg, Xtr, ytr, w, t))
    params = {"w": jnp.zeros(64), "b": jnp.zeros(())}
    # continuation in the smoothing (t is traced: one compile). Newton straight from zero at t = 0.01
    # meets a nearly singular Hessian (intercept direction) and returns NaN; 0.1 -> 0.01 in one jump
    # stalls at a gradient norm ~1e-9 (Armijo test at the rounding floor).
    for t in (0.1, 0.03, t_final):
        ps, info = refit(jnp.ones((N_TOP, n)), params, t)
        params = jax.tree_util.tree_map(lambda a: a[0], ps)
    assert float(info.grad_norm[0]) <= 1e-10

    def make_loss(t):
        def loss(p, z):
            x, y = z
            return smooth_hinge(y * (x @ p["w"] + p["b"]), t)

        return loss

    def reg_fn(p):
        return 0.5 * reg * jnp.sum(p["w"] ** 2)

    loss = make_loss(t_final)
    te_loss = jax.vmap(loss, in_axes=(None, 0))(params, (Xte, yte))
    j = int(jnp.argmax(te_loss))
    test1 = (Xte[j : j + 1], yte[j : j + 1])
    pred = jax.jit(lambda p, tst: predicted_loo_change(loss, p, (Xtr, ytr), tst, reg_fn=reg_fn))(params, test1)[0]
    top = jnp.argsort(-jnp.abs(pred))[:N_TOP]
    W = jnp.ones((N_TOP, n)).at[jnp.arange(N_TOP), top].set(0.0)
    ps, info = refit(W, params, t_final)
    # Newton's Armijo test stalls at the rounding floor a little above 1e-10 on a few problems
    assert float(jnp.max(info.grad_norm)) <= 1e-9, info.grad_norm
    z_test = (test1[0][0], test1[1][0])
    actual = jax.vmap(loss, in_axes=(0, None))(ps, z_test) - loss(params, z_test)
    R = pearson(pred[top], actual)
    print(
        f"\n[influence] smooth-hinge SVM digits 1 vs 7 (n={n}, t={t_final}, reg={reg}): Pearson R = {R:.4f} "
        f"(top-{N_TOP}, {time.perf_counter() - t0:.1f}s)"
    )
    assert R >= 0.9


# --------------------------------------------------------------------------------------------------
# 3. inverse HVP solvers against a dense solve


@pytest.fixture(scope="module")
def hvp_problem(logreg):
    loss, reg_fn, train, params = logreg["loss"], logreg["reg_fn"], logreg["train"], logreg["params"]
    objective = training_objective(loss, train, reg_fn)
    v = unflat(np.random.default_rng(1).standard_normal(65))
    return objective, params, v


@pytest.mark.parametrize(
    "solver, damping, rtol",
    [
        ("cg", 0.0, 1e-7),
        (Cholesky(), 0.0, 1e-9),
        (CG(ridge=0.05), 0.05, 1e-7),
        (LiSSA(ridge=0.05, scale=2.0, depth=1500), 0.05, 1e-7),
    ],
)
def test_inverse_hvp_matches_dense_solve(logreg, hvp_problem, solver, damping, rtol):
    objective, params, v = hvp_problem
    x, res = jax.jit(lambda p, v: inverse_hvp(objective, p, v, linear_solver=solver, return_residual=True))(
        params, v
    )
    ref = np.linalg.solve(logreg["H"] + damping * np.eye(65), flat(v))
    err = np.linalg.norm(flat(x) - ref) / np.linalg.norm(ref)
    assert err < rtol, (solver, err, res)
    assert float(res) < 1e-5


def test_inverse_hvp_stochastic_lissa(logreg, hvp_problem):
    """LiSSA with mini-batch Hessians (random subsets of the training data), through both entry points."""
    objective, params, v = hvp_problem
    loss, reg_fn, train = logreg["loss"], logreg["reg_fn"], logreg["train"]
    damping = 0.05
    lissa = dict(scale=4.0, depth=800, repeats=4)
    sample = sampled_hessian_matvec(loss, params, train, batch_size=50, reg_fn=reg_fn)
    # the sampled product is unbiased: its average over many keys approaches the exact product
    keys = jax.random.split(jax.random.key(3), 400)
    mean_hv = jax.jit(
        lambda k: jax.tree_util.tree_map(lambda a: a.mean(0), jax.vmap(lambda kk: sample(v, kk))(k))
    )(keys)
    exact_hv = logreg["H"] @ flat(v)
    assert np.linalg.norm(flat(mean_hv) - exact_hv) / np.linalg.norm(exact_hv) < 0.05

    x, res = jax.jit(
        lambda p, v, k: inverse_hvp(
            objective, p, v, linear_solver=LiSSA(ridge=damping, key=k, **lissa), sample_matvec=sample,
            return_residual=True,
        )
    )(params, v, jax.random.key(0))
    ref = np.linalg.solve(logreg["H"] + damping * np.eye(65), flat(v))
    err = np.linalg.norm(flat(x) - ref) / np.linalg.norm(ref)
    print(f"\n[influence] stochastic LiSSA rel err {err:.2e} (residual {float(res):.2e})")
    assert err < 0.05

    # the same through compute_s_test and LiSSA(batch_size=...): s_test of the mean test loss
    test = jax.tree_util.tree_map(lambda a: a[:20], logreg["test"])
    s = jax.jit(
        lambda p, k: compute_s_test(
            loss, p, train, test, reduction="mean", reg_fn=reg_fn,
            linear_solver=LiSSA(ridge=damping, batch_size=50, key=k, **lissa),
        )
    )(params, jax.random.key(1))
    g = flat(jax.grad(lambda p: jnp.mean(jax.vmap(loss, in_axes=(None, 0))(p, test)))(params))
    ref = np.linalg.solve(logreg["H"] + damping * np.eye(65), g)
    assert np.linalg.norm(flat(s) - ref) / np.linalg.norm(ref) < 0.05


# --------------------------------------------------------------------------------------------------
# 4. perturbation influence = gradient over x of I_up,loss


def test_influence_perturbation_matches_finite_differences(logreg):
    loss, reg_fn, train, params = logreg["loss"], logreg["reg_fn"], logreg["train"], logreg["params"]
    tests = jax.tree_util.tree_map(lambda a: a[:2], logreg["test"])
    idx = jnp.array([0, 7, 42])
    points = jax.tree_util.tree_map(lambda a: a[idx], train)
    s = jax.jit(lambda p: compute_s_test(loss, p, train, tests, reg_fn=reg_fn, linear_solver="cholesky"))(params)

    @jax.jit
    def analytic_and_fd(p, s):
        grad_x = influence_perturbation(loss, p, train, train_points=points, s_test=s)  # (2, 3, 64)
        # central differences of I_up,loss over every pixel of every point: one batched call
        h = 1e-4
        eye = jnp.eye(64)
        Xp = (points[0][:, None, :] + h * eye[None]).reshape(-1, 64)
        Xm = (points[0][:, None, :] - h * eye[None]).reshape(-1, 64)
        ys = jnp.repeat(points[1], 64)
        up = influence_loss(loss, p, train, train_points=(Xp, ys), s_test=s)
        dn = influence_loss(loss, p, train, train_points=(Xm, ys), s_test=s)
        fd = ((up - dn) / (2 * h)).reshape(2, 3, 64)
        mean_grad = influence_perturbation(
            loss, p, train, train_points=points, s_test=jax.tree_util.tree_map(lambda a: a.mean(0), s),
            reduction="mean",
        )
        return grad_x, fd, mean_grad

    grad_x, fd, mean_grad = analytic_and_fd(params, s)
    assert grad_x.shape == (2, 3, 64)
    rel = float(jnp.linalg.norm(grad_x - fd) / jnp.linalg.norm(fd))
    print(f"\n[influence] I_pert,loss vs central differences: rel err {rel:.1e}")
    assert rel < 1e-5
    np.testing.assert_allclose(mean_grad, grad_x.mean(0), rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------------------------------
# 5. jit / vmap consistency and failure handling


def test_jit_vmap_consistency(logreg):
    loss, reg_fn, params = logreg["loss"], logreg["reg_fn"], logreg["params"]
    train, n = logreg["train"], logreg["n"]
    tests = jax.tree_util.tree_map(lambda a: a[:4], logreg["test"])

    @jax.jit
    def everything(p):
        s = compute_s_test(loss, p, train, tests, reg_fn=reg_fn)
        batched = influence_loss(loss, p, train, tests, reg_fn=reg_fn)
        # one test point at a time, vmapped by the caller
        one_by_one = jax.vmap(
            lambda x, y: influence_loss(loss, p, train, (x[None], y[None]), reg_fn=reg_fn)[0]
        )(*tests)
        chunked = influence_loss(loss, p, train, s_test=s, train_batch_size=64)
        grads_chunked = per_example_grads(loss, p, train, batch_size=64)
        mean_row = influence_loss(loss, p, train, tests, reg_fn=reg_fn, reduction="mean")
        loo = predicted_loo_change(loss, p, train, s_test=s)
        return s, batched, one_by_one, chunked, grads_chunked, mean_row, loo

    s, batched, one_by_one, chunked, grads_chunked, mean_row, loo = everything(params)
    assert batched.shape == (4, n)
    np.testing.assert_allclose(one_by_one, batched, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(chunked, batched, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(mean_row, batched.mean(0), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(loo, -batched / n, rtol=1e-12)
    grads = per_example_grads(loss, params, train)
    np.testing.assert_allclose(batched_flat(grads_chunked), batched_flat(grads), rtol=1e-12)
    # dense reference for the whole matrix: -g_test^T H^{-1} g_train
    G_test = batched_flat(per_example_grads(loss, params, tests))
    ref = -G_test @ np.linalg.solve(logreg["H"], batched_flat(grads).T)
    np.testing.assert_allclose(batched, ref, rtol=1e-6, atol=1e-8 * np.abs(ref).max())
    np.testing.assert_allclose(batched_flat(s), np.linalg.solve(logreg["H"], G_test.T).T, rtol=1e-6, atol=1e-10)

    # eager (no jit) inverse_hvp agrees with the jitted one, and vmap over right-hand sides with a loop
    objective = training_objective(loss, train, reg_fn)
    assert abs(float(objective(params)) - float(logistic_loss(params, 0.01, *train))) < 1e-14
    V = jax.tree_util.tree_map(lambda a: a[:3], grads)
    eager = inverse_hvp(objective, params, jax.tree_util.tree_map(lambda a: a[0], V))
    vmapped = jax.jit(jax.vmap(lambda v: inverse_hvp(objective, params, v)))(V)
    np.testing.assert_allclose(flat(eager), batched_flat(vmapped)[0], rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(
        batched_flat(vmapped), np.linalg.solve(logreg["H"], batched_flat(V).T).T, rtol=1e-6, atol=1e-10
    )


def test_non_convergent_inverse_hvp_raises(logreg, hvp_problem):
    objective, params, v = hvp_problem
    # condition number of H is ~700: one CG iteration is far from the solution
    with pytest.raises(ConvergenceError, match="did not converge"):
        inverse_hvp(objective, params, v, linear_solver=CG(maxiter=1))
    # same under jit: raised from the compiled computation (JAX wraps it, the message survives)
    jitted = jax.jit(lambda p: inverse_hvp(objective, p, v, linear_solver=CG(maxiter=1)))
    with pytest.raises(Exception, match="did not converge"):
        jax.block_until_ready(jitted(params))
    # LiSSA with scale below lambda_max / 2 diverges (inf/NaN): never a silent NaN
    lam_max = float(np.linalg.eigvalsh(logreg["H"]).max())
    with pytest.raises(ConvergenceError, match="did not converge"):
        inverse_hvp(objective, params, v, linear_solver=LiSSA(scale=0.1 * lam_max, depth=300))
    # a merely loose solve is caught by the failure threshold, and the policies "warn" / "ignore" return it
    with pytest.warns(RuntimeWarning, match="did not converge"):
        inverse_hvp(objective, params, v, linear_solver=CG(maxiter=1), on_failure="warn")
    x, res = inverse_hvp(objective, params, v, linear_solver=CG(maxiter=1), on_failure="ignore", return_residual=True)
    assert float(res) > 1e-3 and np.all(np.isfinite(flat(x)))
    # influence functions propagate the check
    loss, train = logreg["loss"], logreg["train"]
    two = jax.tree_util.tree_map(lambda a: a[:2], train)
    with pytest.raises(ConvergenceError):
        influence_params(loss, params, train, two, reg_fn=logreg["reg_fn"], linear_solver=CG(maxiter=1))


def test_argument_validation(logreg):
    loss, train, params = logreg["loss"], logreg["train"], logreg["params"]
    test = jax.tree_util.tree_map(lambda a: a[:2], logreg["test"])
    with pytest.raises(ValueError, match="key"):
        compute_s_test(loss, params, train, test, linear_solver=LiSSA(batch_size=10))
    with pytest.raises(ValueError, match="sample_matvec"):
        inverse_hvp(training_objective(loss, train), params, params, linear_solver=LiSSA(batch_size=10))
    with pytest.raises(ValueError, match="sample_matvec"):
        inverse_hvp(training_objective(loss, train), params, params, sample_matvec=lambda v, k: v)
    with pytest.raises(ValueError, match="reduction"):
        influence_loss(loss, params, train, test, reduction="max")
    with pytest.raises(ValueError, match="linear_solver"):
        influence_loss(loss, params, train, test, linear_solver="qr")
    with pytest.raises(ValueError, match="s_test"):
        influence_loss(loss, params, train)
    with pytest.raises(ValueError, match="ridge"):
        inverse_hvp(training_objective(loss, train), params, params, linear_solver=CG(ridge=-1.0))
    with pytest.raises(TypeError, match="damping"):  # the old name is gone: the ridge is the solver's
        inverse_hvp(training_objective(loss, train), params, params, damping=0.1)
    with pytest.raises(ValueError, match="weights"):
        training_objective(loss, train, weights=jnp.ones(3))
