"""Property-based fuzzing of the public bilevel entry points (issue 8): bad input gives a clear error
naming the argument, or the result is correct. Never a silent NaN, never a silently wrong answer.

Each test draws inputs from a mix of valid and broken values (wrong shapes, dtypes, NaN/inf, negative or
zero tolerances, wrong pytree structures, non-callables) and accepts exactly two outcomes:

- an exception of the expected kind whose message names the offending argument (or field), or
- a result checked against an independent computation (numpy), or an honest failure report
  (:class:`~bilevel.ConvergenceError`) when the settings cannot reach the answer.

Every kind of bad input is run on its own (``pytest.mark.parametrize``: each is covered), and hypothesis
draws the remaining dimensions (solver, dtype, values) and random combinations of several bad inputs.
Problems are tiny and ``max_examples`` small; ``derandomize=True`` keeps CI deterministic.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bilevel
from bilevel import (
    LBFGS,
    ConvergenceError,
    GradientDescent,
    ImplicitConfig,
    Newton,
    hvp,
    influence_params,
    minimize,
    root_solve,
)
from bilevel import linear_solve as ls

FUZZ = settings(
    max_examples=12, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

A = np.array([[2.0, 0.3, 0.0], [0.3, 1.5, 0.2], [0.0, 0.2, 1.0]])  # SPD, cond ~ 2.5
B = np.array([1.0, -2.0, 0.5])

# values for a numeric setting: fine ones and broken ones
NUMBERS = st.one_of(
    st.sampled_from([0, 1, 3, 1e-300, 1e300, -1, -1e-12, 0.5, 2.5, float("nan"), float("inf"), -float("inf")]),
    st.sampled_from([None, True, "1e-3", [1e-3], np.float32(1e-4), np.int64(5)]),
)


def names_argument(err: BaseException, *names: str) -> bool:
    text = str(err)
    return any(n in text for n in names)


# --------------------------------------------------------------------------------------------------
# linear solvers: fields


FIELD_NAMES = ["tol", "maxiter", "ridge", "alpha", "scale", "depth", "repeats", "restart"]


@pytest.mark.parametrize("field", FIELD_NAMES)
@settings(FUZZ, max_examples=10)
@given(name=st.sampled_from(sorted(ls.SOLVERS)), value=NUMBERS)
def test_linear_solver_fields(field, name, value):
    cls = ls.SOLVERS[name]
    fields = {f.name for f in __import__("dataclasses").fields(cls)}
    if field not in fields:
        with pytest.raises(TypeError):
            cls(**{field: value})
        return
    try:
        solver = cls(**{field: value})
    except ValueError as err:
        assert names_argument(err, field), err
        return
    # accepted: the solve reports its true residual, and the check raises exactly when it is too large
    a, b = jnp.asarray(A), jnp.asarray(B)
    if name == "neumann" and field != "alpha":
        solver = __import__("dataclasses").replace(solver, alpha=0.4)
    if name == "lissa" and field != "scale":
        solver = __import__("dataclasses").replace(solver, scale=3.0)
    sol = solver(lambda v: a @ v, b)
    ridge = float(solver.ridge)
    x = np.asarray(sol.x)
    true_res = np.linalg.norm((A + ridge * np.eye(3)) @ x - B) / np.linalg.norm(B)
    if np.isfinite(true_res):
        np.testing.assert_allclose(float(sol.residual), true_res, rtol=1e-6, atol=1e-12)
    else:
        assert not np.isfinite(float(sol.residual))
    failed = not float(sol.residual) <= solver.failure_tol(jnp.float64)
    if failed:
        with pytest.raises(ConvergenceError, match="did not converge"):
            ls.check_solution(sol, solver, b)
    else:
        np.testing.assert_allclose(x, np.linalg.solve(A + ridge * np.eye(3), B), rtol=1e-3, atol=1e-8)


# --------------------------------------------------------------------------------------------------
# linear solvers: right-hand sides and operators

RHS_KINDS = ["ok", "tiny", "huge", "zero", "nan", "inf", "int", "wrong_shape", "empty", "dict", "x0_wrong",
             "matvec_wrong", "not_callable"]


@pytest.mark.parametrize("kind", RHS_KINDS)
@settings(FUZZ, max_examples=3)
@given(name=st.sampled_from(sorted(ls.SOLVERS)), dtype=st.sampled_from(["f32", "f64"]))
def test_linear_solver_inputs(kind, name, dtype):
    dt = jnp.float32 if dtype == "f32" else jnp.float64
    settings_ = {"neumann": {"alpha": 0.4, "maxiter": 300}, "lissa": {"scale": 3.0, "depth": 300}}.get(name, {})
    solver = ls.SOLVERS[name](**settings_)
    a = jnp.asarray(A, dt)
    matvec = lambda v: a @ v
    b = jnp.asarray(B, dt)
    x0 = None
    scale = {"tiny": 1e-25 if dt == jnp.float32 else 1e-200, "huge": 1e25 if dt == jnp.float32 else 1e200}.get(kind, 1.0)
    if kind in ("tiny", "huge"):
        b = b * jnp.asarray(scale, dt)
    elif kind == "zero":
        b = jnp.zeros(3, dt)
    elif kind == "nan":
        b = b.at[1].set(jnp.nan)
    elif kind == "inf":
        b = b.at[0].set(jnp.inf)
    elif kind == "int":
        b = jnp.asarray([1, 2, 3])
    elif kind == "wrong_shape":
        b = jnp.ones(4, dt)
    elif kind == "empty":
        b = {}
    elif kind == "dict":
        b = {"u": b[:2], "v": b[2:]}
        matvec = lambda t: (lambda y: {"u": y[:2], "v": y[2:]})(a @ jnp.concatenate([t["u"], t["v"]]))
    elif kind == "x0_wrong":
        x0 = (jnp.ones(3, dt),)
    elif kind == "matvec_wrong":
        matvec = lambda v: (a @ v)[:2]
    elif kind == "not_callable":
        matvec = a
    try:
        sol = solver(matvec, b, x0)
    except (ValueError, TypeError) as err:
        assert kind in ("int", "wrong_shape", "empty", "x0_wrong", "matvec_wrong", "not_callable"), (kind, err)
        assert names_argument(err, "'b'", "'x0'", "'matvec'"), err
        return
    assert kind not in ("int", "wrong_shape", "empty", "x0_wrong", "matvec_wrong", "not_callable"), kind
    if kind in ("nan", "inf"):
        assert not np.isfinite(float(sol.residual))  # never a silent NaN: the residual shows it
        with pytest.raises(ConvergenceError):
            ls.check_solution(sol, solver, b)
        return
    flat = np.concatenate([np.ravel(l) for l in jax.tree_util.tree_leaves(sol.x)]).astype(np.float64)
    if kind == "zero":
        assert np.all(flat == 0) and float(sol.residual) == 0.0
        return
    want = np.linalg.solve(A, B) * (scale if kind in ("tiny", "huge") else 1.0)
    rtol = 1e-3 if dt == jnp.float32 else 1e-6
    np.testing.assert_allclose(flat, want, rtol=rtol, atol=0)
    assert float(sol.residual) < rtol


# --------------------------------------------------------------------------------------------------
# minimize

X = np.random.default_rng(0).standard_normal((12, 3))
Y = X @ np.array([1.0, -1.0, 0.5]) + 0.1
LAM = 0.3
W_STAR = np.linalg.solve(X.T @ X / 12 + LAM * np.eye(3), X.T @ Y / 12)


def ridge(w, lam, X_, y_):
    return 0.5 * jnp.mean((X_ @ w - y_) ** 2) + 0.5 * lam * jnp.sum(w**2)


INIT_KINDS = ["ok", "f32", "nan", "inf", "int", "wrong_shape", "tuple", "empty", "none"]
ARG_KINDS = ["ok", "nan_X", "inf_y", "wrong_shape_y", "int_X", "f32_X"]
SOLVER_KINDS = ["lbfgs", "newton", "gd", "tol_neg", "tol_zero", "tol_nan", "maxiter_0", "maxiter_float",
                "on_failure_bad", "not_a_solver", "few_steps"]


def _make_solver(kind):
    return {
        "lbfgs": lambda: LBFGS(),
        "newton": lambda: Newton(),
        "gd": lambda: GradientDescent(learning_rate=0.5, maxiter=3000),
        "tol_neg": lambda: LBFGS(tol=-1e-6),
        "tol_zero": lambda: Newton(tol=0.0),
        "tol_nan": lambda: LBFGS(tol=float("nan")),
        "maxiter_0": lambda: LBFGS(maxiter=0),
        "maxiter_float": lambda: Newton(maxiter=2.5),
        "on_failure_bad": lambda: LBFGS(on_failure="silently"),
        "not_a_solver": lambda: "lbfgs",
        "few_steps": lambda: GradientDescent(learning_rate=0.01, maxiter=2),
    }[kind]()


SINGLE_DEVIATIONS = (
    [(k, "ok", "lbfgs") for k in INIT_KINDS] + [("ok", k, "newton") for k in ARG_KINDS[1:]]
    + [("ok", "ok", k) for k in SOLVER_KINDS if k != "lbfgs"]
)


@pytest.mark.parametrize("init_kind, arg_kind, solver_kind", SINGLE_DEVIATIONS)
def test_minimize_each_bad_input(init_kind, arg_kind, solver_kind):
    check_minimize(init_kind, arg_kind, solver_kind)


@settings(FUZZ, max_examples=8)
@given(init_kind=st.sampled_from(INIT_KINDS), arg_kind=st.sampled_from(ARG_KINDS),
       solver_kind=st.sampled_from(SOLVER_KINDS))
def test_minimize_combinations(init_kind, arg_kind, solver_kind):
    check_minimize(init_kind, arg_kind, solver_kind)


def check_minimize(init_kind, arg_kind, solver_kind):
    init = {"ok": jnp.zeros(3), "f32": jnp.zeros(3, jnp.float32), "nan": jnp.full(3, jnp.nan),
            "inf": jnp.asarray([0.0, jnp.inf, 0.0]), "int": jnp.zeros(3, jnp.int32), "wrong_shape": jnp.zeros(4),
            "tuple": (jnp.zeros(3),), "empty": (), "none": None}[init_kind]
    Xa, ya = jnp.asarray(X), jnp.asarray(Y)
    if arg_kind == "nan_X":
        Xa = Xa.at[0, 0].set(jnp.nan)
    elif arg_kind == "inf_y":
        ya = ya.at[3].set(jnp.inf)
    elif arg_kind == "wrong_shape_y":
        ya = ya[:5]
    elif arg_kind == "int_X":
        Xa = jnp.round(Xa * 10).astype(jnp.int32)
    elif arg_kind == "f32_X":
        Xa = Xa.astype(jnp.float32)
    expected_error = {
        "nan": "init", "inf": "init", "int": "init", "wrong_shape": "loss", "tuple": "loss", "empty": "init",
        "none": "init",
    }.get(init_kind)
    try:
        solver = _make_solver(solver_kind)
        w = minimize(ridge, init, LAM, Xa, ya, solver=solver)
    except (ValueError, TypeError) as err:
        names = {"tol_neg": "tol", "tol_zero": "tol", "tol_nan": "tol", "maxiter_0": "maxiter",
                 "maxiter_float": "maxiter", "on_failure_bad": "on_failure", "not_a_solver": "solver"}
        allowed = [n for n in (names.get(solver_kind), expected_error) if n]
        allowed += {"nan_X": ["args[1]"], "inf_y": ["args[2]"], "wrong_shape_y": ["loss"]}.get(arg_kind, [])
        assert allowed, (init_kind, arg_kind, solver_kind, err)
        assert names_argument(err, *[f"'{n}'" if not n.startswith("args") else n for n in allowed]), err
        return
    except ConvergenceError as err:
        assert solver_kind == "few_steps", (init_kind, arg_kind, solver_kind, err)
        return
    assert expected_error is None and arg_kind in ("ok", "int_X", "f32_X"), (init_kind, arg_kind, solver_kind)
    assert solver_kind in ("lbfgs", "newton", "gd"), solver_kind
    w_star = W_STAR if arg_kind != "int_X" else np.linalg.solve(
        np.asarray(Xa).T @ np.asarray(Xa) / 12 + LAM * np.eye(3), np.asarray(Xa).T @ Y / 12)
    low = init_kind == "f32" or arg_kind == "f32_X"
    np.testing.assert_allclose(w, w_star, rtol=2e-3 if low else 1e-5, atol=2e-3 if low else 1e-7)


# --------------------------------------------------------------------------------------------------
# root_solve / custom_root

ROOT_KINDS = ["ok", "wrong_structure_F", "wrong_shape_F", "int_solver_output", "nan_solver", "early_stop",
              "nan_arg", "bad_config", "not_callable", "kwargs", "aux_missing"]


def _newton_sqrt(x0, a):
    return jax.lax.fori_loop(0, 40, lambda _, x: 0.5 * (x + a / x), x0 * jnp.ones_like(a))


@pytest.mark.parametrize("kind", ROOT_KINDS)
@settings(FUZZ, max_examples=2)
@given(a=st.floats(0.5, 50.0), jit=st.booleans())
def test_root_solve(kind, a, jit):
    a = jnp.asarray([a, a + 1.0])
    F = lambda x, a_: x**2 - a_
    solver = _newton_sqrt
    config = None
    has_aux = False
    kwargs = {}
    if kind == "wrong_structure_F":
        F = lambda x, a_: (x**2 - a_,)
    elif kind == "wrong_shape_F":
        F = lambda x, a_: jnp.sum(x**2 - a_)
    elif kind == "int_solver_output":
        solver = lambda x0, a_: jnp.round(_newton_sqrt(x0, a_)).astype(jnp.int32)
    elif kind == "nan_solver":
        solver = lambda x0, a_: _newton_sqrt(x0, a_) * jnp.nan
    elif kind == "early_stop":
        solver = lambda x0, a_: x0 * jnp.ones_like(a_) + 0.5 * (a_ - 1.0) / 2
    elif kind == "nan_arg":
        a = a.at[0].set(jnp.nan)
    elif kind == "bad_config":
        config = {"linear_solver": "lu"}
    elif kind == "not_callable":
        F = "x**2 - a"
    elif kind == "kwargs":
        F = lambda x, a_=None: x**2 - a_
        solver = lambda x0, a_=None: _newton_sqrt(x0, a_)
        kwargs = {"a_": a}
    elif kind == "aux_missing":
        has_aux = True

    def run(a_):
        if kwargs:
            return root_solve(F, solver, jnp.ones(2), config=config, has_aux=has_aux, a_=a_)
        return root_solve(F, solver, jnp.ones(2), a_, config=config, has_aux=has_aux)

    fn = jax.jit(run) if jit else run
    try:
        with bilevel.typed_errors():
            x = jax.block_until_ready(fn(a))
            g = jax.block_until_ready((jax.jit(jax.grad(lambda a_: jnp.sum(run(a_)))) if jit
                                       else jax.grad(lambda a_: jnp.sum(run(a_))))(a))
    except (ValueError, TypeError) as err:
        expect = {"wrong_structure_F": "optimality_fn", "wrong_shape_F": "optimality_fn", "int_solver_output": "solver",
                  "bad_config": "config", "not_callable": "optimality_fn", "aux_missing": "solver"}[kind]
        assert names_argument(err, f"'{expect}'"), (kind, err)
        return
    except ConvergenceError as err:
        assert kind in ("nan_solver", "early_stop", "nan_arg"), (kind, err)
        assert "did not return a root" in str(err)
        return
    assert kind in ("ok", "kwargs"), kind
    np.testing.assert_allclose(x, np.sqrt(np.asarray(a)), rtol=1e-10)
    np.testing.assert_allclose(g, 0.5 / np.sqrt(np.asarray(a)), rtol=1e-8)


@FUZZ
@given(field=st.sampled_from(["linear_solver", "symmetric", "on_failure", "root_tol"]),
       value=st.one_of(NUMBERS, st.sampled_from(["cg", "qr", "raise", "warn", ls.CG(), ls.LU, print])))
def test_implicit_config_fields(field, value):
    try:
        cfg = ImplicitConfig(**{field: value})
    except (ValueError, TypeError) as err:
        assert names_argument(err, field), err
        return
    # accepted values are meaningful ones
    if field == "linear_solver":
        assert isinstance(cfg.solver, ls.LinearSolver)
    elif field == "symmetric":
        assert isinstance(value, bool)
    elif field == "on_failure":
        assert value in ("raise", "warn", "ignore")
    else:
        assert value is None or (float(value) > 0 and not math.isnan(float(value)))


# --------------------------------------------------------------------------------------------------
# influence functions and Hessian-vector products

N_TR = 8
XT = np.random.default_rng(1).standard_normal((N_TR, 2))
YT = np.random.default_rng(2).standard_normal(N_TR)
REG = 0.1


def sq_loss(w, example):
    x, y = example
    return 0.5 * (x @ w - y) ** 2


def _dense_influence_params(points):
    H = XT.T @ XT / N_TR + REG * np.eye(2)
    w = np.linalg.solve(H, XT.T @ YT / N_TR)
    G = np.stack([(x @ w - y) * x for x, y in zip(*points)])
    return -np.linalg.solve(H, G.T).T, w


INFL_KINDS = ["ok", "mismatched_n", "no_examples", "scalar_leaf", "nan_params", "bad_solver", "bad_on_failure",
              "ridge", "cholesky", "lissa_no_key", "few_iterations"]


@pytest.mark.parametrize("kind", INFL_KINDS)
def test_influence_params(kind):
    _, w = _dense_influence_params((XT[:1], YT[:1]))
    params = jnp.asarray(w)
    train = (jnp.asarray(XT), jnp.asarray(YT))
    points = (jnp.asarray(XT[:3]), jnp.asarray(YT[:3]))
    kw = {"reg_fn": lambda p: 0.5 * REG * jnp.sum(p**2)}
    if kind == "mismatched_n":
        train = (train[0], train[1][:5])
    elif kind == "no_examples":
        points = (points[0][:0], points[1][:0])
    elif kind == "scalar_leaf":
        train = (train[0], jnp.asarray(1.0))
    elif kind == "nan_params":
        params = params.at[0].set(jnp.nan)
    elif kind == "bad_solver":
        kw["linear_solver"] = "qr"
    elif kind == "bad_on_failure":
        kw["on_failure"] = "explode"
    elif kind == "ridge":
        kw["linear_solver"] = ls.CG(ridge=0.0)
    elif kind == "cholesky":
        kw["linear_solver"] = ls.Cholesky()
    elif kind == "lissa_no_key":
        kw["linear_solver"] = ls.LiSSA(batch_size=4)
    elif kind == "few_iterations":
        kw["linear_solver"] = ls.CG(maxiter=1)
    try:
        out = influence_params(sq_loss, params, train, points, **kw)
    except (ValueError, TypeError) as err:
        expect = {"mismatched_n": "train_data", "no_examples": "train_points", "scalar_leaf": "train_data",
                  "nan_params": "params", "bad_solver": "linear_solver", "bad_on_failure": "on_failure",
                  "lissa_no_key": "key"}[kind]
        assert names_argument(err, expect), (kind, err)
        return
    except ConvergenceError:
        assert kind == "few_iterations"
        return
    assert kind in ("ok", "ridge", "cholesky"), kind
    want, _ = _dense_influence_params((XT[:3], YT[:3]))
    np.testing.assert_allclose(out, want, rtol=1e-7, atol=1e-10)


HVP_KINDS = ["ok", "v_wrong_shape", "v_wrong_structure", "v_int", "v_f32", "f_not_callable", "f_vector"]


@pytest.mark.parametrize("kind", HVP_KINDS)
def test_hvp(kind):
    M = jnp.asarray(A)
    f = lambda x: 0.5 * x @ M @ x + jnp.sum(x**3) / 3
    x = jnp.asarray([0.5, -1.0, 2.0])
    v = jnp.asarray([1.0, 2.0, -1.0])
    if kind == "v_wrong_shape":
        v = jnp.ones(4)
    elif kind == "v_wrong_structure":
        v = (v,)
    elif kind == "v_int":
        v = jnp.asarray([1, 2, 3])
    elif kind == "v_f32":
        v = v.astype(jnp.float32)
    elif kind == "f_not_callable":
        f = M
    elif kind == "f_vector":
        f = lambda x: M @ x
    try:
        out = hvp(f, x, v)
    except (ValueError, TypeError) as err:
        assert kind != "ok" and kind != "v_f32", (kind, err)
        assert names_argument(err, "'v'", "'f'", "scalar"), (kind, err)
        return
    assert kind in ("ok", "v_f32"), kind
    want = (A + np.diag(2 * np.asarray(x))) @ np.asarray(v, np.float64)
    np.testing.assert_allclose(out, want, rtol=1e-6)
