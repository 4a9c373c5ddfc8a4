"""The bad-input / edge-case catalogue of issue 8 (bilevel part), run as a script that prints a verdict per case.

    python -m tests.bilevel.edge_cases            # float64 enabled, prints one line per case and the counts

Each case is a small callable that either returns a value (checked against the right answer by the
case's ``check``) or raises. The verdicts:

- ``clear error``: raised ``ValueError``/``TypeError``/``ConvergenceError`` whose message names the
  argument (or field) given in the case;
- ``correct``: returned the right answer (or an honest non-finite residual for a non-finite input);
- ``unclear error``: raised, but the message does not name the argument;
- ``silent NaN`` / ``wrong``: returned a non-finite or wrong value without raising.

The same cases are asserted by ``tests/bilevel/test_fuzz.py`` and ``tests/bilevel/test_failure_modes.py``;
this script exists to count them (the closing note of issue 8) and to run them against another checkout.
"""

from __future__ import annotations

import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np

CLEAR, CORRECT, UNCLEAR, SILENT_NAN, WRONG = "clear error", "correct", "unclear error", "silent NaN", "wrong"


def run_case(fn, names=(), check=None):
    """Verdict of one case: ``names`` are the argument names a clear error must mention."""
    import bilevel

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with bilevel.typed_errors():
                out = jax.block_until_ready(fn())
    except (ValueError, TypeError, bilevel.BilevelError) as err:
        return CLEAR if any(n in str(err) for n in names) else UNCLEAR, f"{type(err).__name__}: {str(err)[:140]}"
    except Exception as err:  # noqa: BLE001 - anything else is an unclear error
        return UNCLEAR, f"{type(err).__name__}: {str(err)[:140]}"
    leaves = [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(out)]
    if check is None:
        return (UNCLEAR, "returned although an error was expected") if names else (CORRECT, "")
    try:
        ok = check(out)
    except Exception as err:  # noqa: BLE001
        ok, _ = False, err
    if ok:
        return CORRECT, ""
    if any(leaf.dtype.kind == "f" and not np.all(np.isfinite(leaf)) for leaf in leaves):
        return SILENT_NAN, ""
    return WRONG, str(out)[:140]


def cases():
    """(name, callable, argument names of a clear error, check of a returned value)."""
    import bilevel
    from bilevel import linear_solve as ls

    A = jnp.asarray([[2.0, 0.3, 0.0], [0.3, 1.5, 0.2], [0.0, 0.2, 1.0]])
    B = jnp.asarray([1.0, -2.0, 0.5])
    X_REF = np.linalg.solve(np.asarray(A), np.asarray(B))
    out = []

    def close(want, rtol):
        return lambda sol: np.allclose(np.asarray(sol.x, np.float64), want, rtol=rtol, atol=0)

    # -- linear solvers: scale of b, dtypes
    for name in ls.SOLVERS:
        settings = {"neumann": {"alpha": 0.4, "maxiter": 300}, "lissa": {"scale": 3.0, "depth": 300}}.get(name, {})
        for dtype in (jnp.float32, jnp.float64):
            for size in (1.0, 1e-17, 1e-30, 0.0):
                a, b = A.astype(dtype), (size * B).astype(dtype)
                want = size * X_REF
                check = (lambda s: np.all(np.asarray(s.x) == 0) and float(s.residual) == 0) if size == 0 else close(
                    want, 2e-4 if dtype == jnp.float32 else 1e-8)
                out.append((f"{name}: |b| ~ {size:g} ({jnp.dtype(dtype).name})",
                            lambda n=name, s=settings, a=a, b=b: ls.SOLVERS[n](**s)(lambda v: a @ v, b), (), check))
        out.append((f"{name}: NaN in b", lambda n=name, s=settings: ls.SOLVERS[n](**s)(lambda v: A @ v, B.at[1].set(jnp.nan)),
                    (), lambda sol: not np.isfinite(float(sol.residual))))
        out.append((f"{name}: integer b", lambda n=name: ls.SOLVERS[n]()(lambda v: A @ v, jnp.asarray([1, 2, 3])), ("'b'",), None))
        out.append((f"{name}: b of the wrong shape", lambda n=name: ls.SOLVERS[n]()(lambda v: A @ v, jnp.ones(4)),
                    ("'b'", "'matvec'"), None))
        out.append((f"{name}: matvec of the wrong output shape", lambda n=name: ls.SOLVERS[n]()(lambda v: (A @ v)[:2], B),
                    ("'matvec'",), None))
        out.append((f"{name}: matvec not callable", lambda n=name: ls.SOLVERS[n]()(A, B), ("'matvec'",), None))
        out.append((f"{name}: x0 of another structure", lambda n=name: ls.SOLVERS[n]()(lambda v: A @ v, B, (B,)), ("'x0'",), None))
        out.append((f"{name}: ridge = -1", lambda n=name: ls.SOLVERS[n](ridge=-1.0), ("ridge",), None))
        out.append((f"{name}: ridge = NaN", lambda n=name: ls.SOLVERS[n](ridge=float("nan")), ("ridge",), None))
        if "tol" in {f.name for f in __import__("dataclasses").fields(ls.SOLVERS[name])}:
            out.append((f"{name}: tol = -1", lambda n=name: ls.SOLVERS[n](tol=-1.0), ("tol",), None))
            out.append((f"{name}: tol as a string", lambda n=name: ls.SOLVERS[n](tol="1e-3"), ("tol",), None))
        if "maxiter" in {f.name for f in __import__("dataclasses").fields(ls.SOLVERS[name])}:
            out.append((f"{name}: maxiter = 0", lambda n=name: ls.SOLVERS[n](maxiter=0), ("maxiter",), None))
            out.append((f"{name}: maxiter = 2.5", lambda n=name: ls.SOLVERS[n](maxiter=2.5), ("maxiter",), None))
    out.append(("as_linear_solver: unknown name", lambda: ls.as_linear_solver("qr"), ("linear_solver",), None))
    out.append(("as_linear_solver: a class", lambda: ls.as_linear_solver(ls.CG)(lambda v: A @ v, B), (), close(X_REF, 1e-8)))
    out.append(("as_linear_solver: jaxopt-style function returning x",
                lambda: ls.as_linear_solver(lambda mv, b: jnp.linalg.solve(A, b))(lambda v: A @ v, B), (), close(X_REF, 1e-10)))
    out.append(("NormalCG on a non-square operator", lambda: ls.NormalCG()(lambda v: jnp.ones((3, 2)) @ v, jnp.ones(2)),
                ("'matvec'",), None))
    out.append(("LiSSA(batch_size=0)", lambda: ls.LiSSA(batch_size=0), ("batch_size",), None))
    out.append(("GMRES(restart=0)", lambda: ls.GMRES(restart=0), ("restart",), None))
    out.append(("Neumann(alpha=0)", lambda: ls.Neumann(alpha=0.0), ("alpha",), None))

    # -- root_solve / custom_root
    def newton(k):
        def solve(x0, a):
            x = x0
            for _ in range(k):
                x = x - (x**2 - a) / (2 * x)
            return x

        return solve

    F = lambda x, a: x**2 - a
    out.append(("root_solve: two Newton steps for x**2 - 100 (returns 26.24)",
                lambda: bilevel.root_solve(F, newton(2), 1.0, 100.0), ("root",), lambda x: abs(float(x) - 10) < 1e-6))
    out.append(("root_solve: same, under jit", lambda: jax.jit(lambda a: bilevel.root_solve(F, newton(2), 1.0, a))(100.0),
                ("root",), lambda x: abs(float(x) - 10) < 1e-6))
    out.append(("root_solve: derivative after two Newton steps",
                lambda: jax.grad(lambda a: bilevel.root_solve(F, newton(2), 1.0, a))(100.0), ("root",),
                lambda g: abs(float(g) - 0.05) < 1e-8))
    out.append(("root_solve: converged", lambda: jax.grad(lambda a: bilevel.root_solve(F, newton(12), 1.0, a))(100.0), (),
                lambda g: abs(float(g) - 0.05) < 1e-10))
    out.append(("root_solve: solver returns NaN", lambda: bilevel.root_solve(F, lambda x0, a: jnp.nan * a, 1.0, 4.0), ("root",),
                lambda x: abs(float(x) - 2) < 1e-8))
    out.append(("root_solve: NaN parameter", lambda: bilevel.root_solve(F, newton(12), 1.0, jnp.nan), ("root",), lambda x: False))
    out.append(("root_solve: F returns another structure",
                lambda: bilevel.root_solve(lambda x, a: (x**2 - a,), newton(12), 1.0, 4.0), ("optimality_fn",), None))
    out.append(("root_solve: F returns another shape",
                lambda: bilevel.root_solve(lambda x, a: jnp.sum(x**2 - a), newton(12), jnp.ones(2), jnp.full(2, 4.0)),
                ("optimality_fn",), None))
    out.append(("root_solve: solver returns integers",
                lambda: bilevel.root_solve(F, lambda x0, a: jnp.asarray(2), None, 4.0), ("solver",), None))
    out.append(("root_solve: F not callable", lambda: bilevel.root_solve("x**2 - a", newton(12), 1.0, 4.0), ("optimality_fn",), None))
    out.append(("root_solve: config is a dict", lambda: bilevel.root_solve(F, newton(12), 1.0, 4.0, config={"linear_solver": "lu"}),
                ("config",), None))
    out.append(("root_solve: a root at 0 reached to 1e-30 (no false alarm)",
                lambda: bilevel.fixed_point_solve(lambda x, t: 0.5 * x + 0 * t,
                                                  lambda x0, t: jax.lax.fori_loop(0, 100, lambda _, x: 0.5 * x, x0), 1.0, 2.0),
                (), lambda x: abs(float(x)) < 1e-25))
    cube = lambda x0, a: jax.lax.fori_loop(0, 60, lambda _, x: x - (x**3 - a) / (3 * x**2), x0)
    for dtype in (jnp.float32, jnp.float64):
        a = jnp.asarray([1.0, 8.0, 27.0], dtype)
        want = 1.0 / (3.0 * np.cbrt(np.asarray(a, np.float64)) ** 2)
        root = lambda a_, i=jnp.ones(3, dtype): bilevel.root_solve(lambda x, b: x**3 - b, cube, i, a_)
        out.append((f"custom_root (GMRES adjoint): forward tangents ~1e-30 ({jnp.dtype(dtype).name})",
                    lambda a=a, root=root, dtype=dtype: jax.jvp(root, (a,), (jnp.full(3, 1e-30, dtype),))[1], (),
                    lambda t, want=want: np.allclose(np.asarray(t, np.float64) / 1e-30, want, rtol=1e-4)))
        out.append((f"custom_root (GMRES adjoint): cotangents ~1e-8 ({jnp.dtype(dtype).name})",
                    lambda a=a, root=root: jax.grad(lambda b: 1e-8 * jnp.sum(root(b)))(a), (),
                    lambda g, want=want: np.allclose(np.asarray(g, np.float64) / 1e-8, want, rtol=1e-4)))
    out.append(("ImplicitConfig(root_tol=0)", lambda: bilevel.ImplicitConfig(root_tol=0.0), ("root_tol",), None))
    out.append(("ImplicitConfig(linear_solver='qr')", lambda: bilevel.ImplicitConfig(linear_solver="qr"), ("linear_solver",), None))
    out.append(("ImplicitConfig(on_failure='explode')", lambda: bilevel.ImplicitConfig(on_failure="explode"), ("on_failure",), None))

    # -- minimize
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.standard_normal((12, 3)))
    Y = jnp.asarray(np.asarray(X) @ np.array([1.0, -1.0, 0.5]) + 0.1)
    W = np.linalg.solve(np.asarray(X).T @ np.asarray(X) / 12 + 0.3 * np.eye(3), np.asarray(X).T @ np.asarray(Y) / 12)
    ridge = lambda w, lam, X_, y_: 0.5 * jnp.mean((X_ @ w - y_) ** 2) + 0.5 * lam * jnp.sum(w**2)
    fits = lambda rtol: (lambda w: np.allclose(np.asarray(w, np.float64), W, rtol=rtol, atol=rtol))
    mini = lambda init, X_=X, y_=Y, **kw: bilevel.minimize(ridge, init, 0.3, X_, y_, **kw)
    out += [
        ("minimize: init with NaN", lambda: mini(jnp.full(3, jnp.nan)), ("'init'",), None),
        ("minimize: init of integers", lambda: mini(jnp.zeros(3, jnp.int32)), ("'init'",), None),
        ("minimize: init of the wrong shape", lambda: mini(jnp.zeros(4)), ("'loss'", "'init'"), None),
        ("minimize: init is None", lambda: mini(None), ("'init'",), None),
        ("minimize: NaN in the data", lambda: mini(jnp.zeros(3), X_=X.at[0, 0].set(jnp.nan)), ("args[1]",), None),
        ("minimize: y of the wrong length", lambda: mini(jnp.zeros(3), y_=Y[:5]), ("'loss'",), None),
        ("minimize: float32 init, float64 data (LBFGS)", lambda: mini(jnp.zeros(3, jnp.float32)), (), fits(2e-3)),
        ("minimize: float64 init, float32 data (LBFGS)", lambda: mini(jnp.zeros(3), X_=X.astype(jnp.float32)), (), fits(2e-3)),
        ("minimize: float32 everything, default tolerances (LBFGS)",
         lambda: mini(jnp.zeros(3, jnp.float32), X_=X.astype(jnp.float32), y_=Y.astype(jnp.float32)), (), fits(2e-3)),
        ("minimize: float32 everything, default tolerances (Newton)",
         lambda: mini(jnp.zeros(3, jnp.float32), X_=X.astype(jnp.float32), y_=Y.astype(jnp.float32), solver=bilevel.Newton()),
         (), fits(2e-3)),
        ("minimize: LBFGS(tol=-1)", lambda: bilevel.LBFGS(tol=-1.0), ("tol",), None),
        ("minimize: LBFGS(maxiter=2.5)", lambda: bilevel.LBFGS(maxiter=2.5), ("maxiter",), None),
        ("minimize: GradientDescent(learning_rate=-0.1)", lambda: bilevel.GradientDescent(learning_rate=-0.1), ("learning_rate",), None),
        ("minimize: GradientDescent(momentum=1.5)", lambda: bilevel.GradientDescent(momentum=1.5), ("momentum",), None),
        ("minimize: Newton(backtrack=2)", lambda: bilevel.Newton(backtrack=2.0), ("backtrack",), None),
        ("minimize: LBFGS(memory_size=0)", lambda: bilevel.LBFGS(memory_size=0), ("memory_size",), None),
        ("minimize: OptaxSolver(optimizer='adam')", lambda: bilevel.OptaxSolver(optimizer="adam"), ("optimizer",), None),
        ("minimize: solver given as a string", lambda: mini(jnp.zeros(3), solver="lbfgs"), ("'solver'",), None),
        ("minimize: too few steps", lambda: mini(jnp.zeros(3), solver=bilevel.GradientDescent(learning_rate=0.01, maxiter=2)),
         ("did not converge",), None),
        ("minimize: too few steps, under jit",
         lambda: jax.jit(lambda l: bilevel.minimize(ridge, jnp.zeros(3), l, X, Y, solver=bilevel.LBFGS(maxiter=1, tol=1e-12)))(0.3),
         ("did not converge",), None),
        ("minimize: ClosedForm returning another shape",
         lambda: mini(jnp.zeros(3), solver=bilevel.ClosedForm(fn=lambda *a: jnp.zeros(4))), ("'fn'",), None),
    ]

    # -- influence functions and Hessian-vector products
    from bilevel.influence import influence_params

    sq = lambda w, ex: 0.5 * (ex[0] @ w - ex[1]) ** 2
    train = (X, Y)
    out += [
        ("influence: leading axes disagree", lambda: influence_params(sq, jnp.zeros(3), (X, Y[:5])), ("train_data",), None),
        ("influence: no examples", lambda: influence_params(sq, jnp.zeros(3), train, (X[:0], Y[:0])), ("train_points",), None),
        ("influence: NaN params", lambda: influence_params(sq, jnp.full(3, jnp.nan), train), ("params",), None),
        ("influence: unknown linear_solver", lambda: influence_params(sq, jnp.zeros(3), train, linear_solver="qr"),
         ("linear_solver",), None),
        ("influence: stochastic LiSSA without a key",
         lambda: influence_params(sq, jnp.zeros(3), train, linear_solver=bilevel.LiSSA(batch_size=4)), ("key",), None),
        ("influence: CG with one iteration", lambda: influence_params(sq, jnp.asarray(W), train, linear_solver=bilevel.CG(maxiter=1)),
         ("did not converge",), None),
        ("influence: the old damping keyword", lambda: influence_params(sq, jnp.zeros(3), train, damping=0.1), ("damping",), None),
    ]
    f = lambda x: 0.5 * x @ A @ x
    out += [
        ("hvp: v of the wrong shape", lambda: bilevel.hvp(f, B, jnp.ones(4)), ("'v'",), None),
        ("hvp: v of integers", lambda: bilevel.hvp(f, B, jnp.asarray([1, 2, 3])), ("'v'",), None),
        ("hvp: float32 v for float64 x", lambda: bilevel.hvp(f, B, B.astype(jnp.float32)), (),
         lambda hv: np.allclose(hv, np.asarray(A) @ np.asarray(B), rtol=1e-6)),
        ("hvp: f not callable", lambda: bilevel.hvp(A, B, B), ("'f'",), None),
    ]
    # -- the run-time check itself
    from bilevel._checks import error_if

    out.append(("error_if: literal braces in the message, under jit",
                lambda: jax.jit(lambda x: error_if(x, x > 0, "labels must be in {0, 1}"))(1.0), ("labels must be in",), None))
    return out


def main(argv=None) -> dict:
    jax.config.update("jax_enable_x64", True)
    counts: dict[str, int] = {}
    for name, fn, names, check in cases():
        verdict, detail = run_case(fn, names, check)
        counts[verdict] = counts.get(verdict, 0) + 1
        print(f"{verdict:13s}  {name}" + (f"    [{detail}]" if verdict not in (CLEAR, CORRECT) else ""))
    print("\n" + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + f"  (total {sum(counts.values())})")
    return counts


if __name__ == "__main__":
    counts = main(sys.argv[1:])
    sys.exit(0 if set(counts) <= {CLEAR, CORRECT} else 1)
