r"""Benchmark (not a test): one implicit hypergradient, ours vs. jaxopt, per adjoint linear solver.

What is timed: the jit-compiled map ``reg -> d L_val(theta*(reg)) / d reg`` for 10-class L2 logistic
regression with one L2 weight per input feature (``bilevel.problems.logistic.multiclass_logistic_loss``,
params ``{"w", "b"}``, plus a 1e-6 intercept penalty that makes the inner problem strongly
convex; see :mod:`experiments.hpo_digits`). Every timed call does the whole thing: the inner L-BFGS
solve from zero, then the adjoint (implicit-function-theorem) solve and the final vector-Jacobian
product. Problems:

- ``digits``: scikit-learn digits, 600 train / 600 validation, 64 weights (650 inner parameters);
- ``mnist``: a 1000 / 1000 subset of MNIST's training images, 784 weights (7850 inner parameters), run
  when the IDX files are found in ``--data-dir`` / ``$BILEVEL_DATA_DIR``
  (``mnist/train-images-idx3-ubyte.gz`` and ``mnist/train-labels-idx1-ubyte.gz``).

Methods (same loss, same zero init, same inner ``tol``/``maxiter``, same history size 10):

- ``ours <solver>``: ``bilevel.minimize(..., solver=LBFGS(maxiter, tol), method=Implicit(linear_solver=
  <solver>))`` for every adjoint solver of :mod:`bilevel.linear_solve`; ``neumann`` uses
  ``alpha = 1.5 / lambda_max`` and ``lissa`` ``scale = lambda_max / 1.5`` (power iteration on the
  Hessian at the solution, not timed), both truncated at ``--series-terms`` terms (approximate by
  design: their relative difference shows the truncation error). Dense ``cholesky``/``lu`` are skipped
  above ``--dense-max`` inner parameters.
- ``jaxopt``: ``jaxopt.LBFGS(fun, maxiter, tol, implicit_diff=True)`` with its default adjoint solver
  (CG on the normal equations, ``jax.scipy`` default tolerance 1e-5) -- the reference for the ratio;
- ``jaxopt cg``: the same with ``implicit_diff_solve = CG at --adjoint-tol`` (our default adjoint).
- Diagnostic rows: each inner solver alone (no derivative) and ``ours cg`` with its run-time
  convergence checks off (``on_failure="ignore"``), to attribute the time.

Each function is compiled once (first call, reported as ``compile s``), then the methods are called
round-robin for ``--repeats`` rounds (so machine load hits all of them alike); the table shows the
median (and minimum) wall time per call with ``jax.block_until_ready``. ``rel diff`` is
``||g - g_ref|| / ||g_ref||`` against the jaxopt hypergradients.

Usage::

    python -m experiments.bench_hypergrad                  # digits (+ MNIST if found)
    python -m experiments.bench_hypergrad --problems digits --repeats 20 --out runs/bench_hypergrad
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import platform
import struct
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from experiments import _cli
from experiments.hpo_digits import load_digits_split, make_logistic

ADJOINT_SOLVERS = ("cg", "gmres", "bicgstab", "normal_cg", "cholesky", "lu", "neumann", "lissa")
DENSE = ("cholesky", "lu")
SERIES = ("neumann", "lissa")
TARGET = "Target: ratio <= 1.0 after compilation"


# --------------------------------------------------------------------------------------------------
# data


def _read_idx(path: Path, magic: int, offset: int) -> np.ndarray:
    """A gzipped IDX file (MNIST format): big-endian magic and sizes, then uint8 data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    found = struct.unpack(">I", raw[:4])[0]
    if found != magic:
        raise ValueError(f"{path}: IDX magic {found}, expected {magic}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset)


def _mnist_files(data_dir: Path | None) -> tuple[Path, Path] | None:
    if data_dir is None:
        return None
    folder = Path(data_dir) / "mnist"
    images, labels = folder / "train-images-idx3-ubyte.gz", folder / "train-labels-idx1-ubyte.gz"
    return (images, labels) if images.is_file() and labels.is_file() else None


def load_mnist_subset(data_dir: Path, seed: int, n_train: int, n_val: int):
    """Random disjoint train/validation subsets of MNIST's 60000 training images, pixels / 255."""
    images, labels = _mnist_files(data_dir)
    X = _read_idx(images, 2051, 16).reshape(-1, 28 * 28)
    y = _read_idx(labels, 2049, 8)
    if len(X) != len(y):
        raise ValueError(f"MNIST: {len(X)} images but {len(y)} labels")
    idx = np.random.default_rng(seed).permutation(len(y))[: n_train + n_val]
    X = X[idx].astype(np.float64) / 255.0
    y = y[idx].astype(np.int32)
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


class Problem(NamedTuple):
    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray

    @property
    def n_params(self) -> int:
        return self.X_train.shape[1] * 10 + 10


# --------------------------------------------------------------------------------------------------
# methods


class Method(NamedTuple):
    name: str
    kind: str  # "ours", "jaxopt", "diagnostic"
    fn: Callable  # jitted (reg, Xtr, ytr, Xva, yva) -> hypergradient (or solution for diagnostics)
    note: str = ""


def _power_lambda_max(matvec, n, dtype, iters=100, seed=0):
    import jax
    import jax.numpy as jnp

    v = jax.random.normal(jax.random.PRNGKey(seed), (n,), dtype)
    v = v / jnp.linalg.norm(v)

    def body(_, v):
        w = matvec(v)
        return w / jnp.linalg.norm(w)

    v = jax.lax.fori_loop(0, iters, body, v)
    return float(jnp.vdot(v, matvec(v)))


def build_methods(prob: Problem, args, reg0) -> tuple[list[Method], dict[str, Any]]:
    import jax
    import jax.numpy as jnp
    import jaxopt

    import bilevel
    from bilevel.hvp import hessian_matvec
    from bilevel.linear_solve import SOLVERS, LiSSA, Neumann

    from jax.flatten_util import ravel_pytree

    d = prob.X_train.shape[1]
    model = make_logistic(d, 10)
    init = model.init
    inner_loss, data_loss = model.inner_loss, model.data_loss
    solver = bilevel.LBFGS(maxiter=args.inner_maxiter, tol=args.inner_tol)
    info: dict[str, Any] = {}

    # Curvature for the series solvers (not timed): lambda_max of the inner Hessian at the solution.
    data = tuple(jnp.asarray(a) for a in prob[1:])
    z_star, sinfo = jax.jit(lambda r, X, y: solver.run(inner_loss, init, r, X, y))(reg0, data[0], data[1])
    flat_star, unravel = ravel_pytree(z_star)
    hv_tree = hessian_matvec(inner_loss, z_star, reg0, data[0], data[1])
    hv = jax.jit(lambda v: ravel_pytree(hv_tree(unravel(v)))[0])
    lam_max = _power_lambda_max(hv, flat_star.shape[0], flat_star.dtype)
    info.update(lambda_max=lam_max, ours_inner_steps=int(sinfo.num_steps), ours_inner_grad_norm=float(sinfo.grad_norm))

    def ours(linear_solver, on_failure="raise"):
        if isinstance(linear_solver, str):  # an iterative solver at --adjoint-tol, or a dense one
            cls = SOLVERS[linear_solver]
            linear_solver = cls() if linear_solver in DENSE else cls(tol=args.adjoint_tol)
        method = bilevel.Implicit(linear_solver=linear_solver, on_failure=on_failure)

        def val(reg, Xtr, ytr, Xva, yva):
            z = bilevel.minimize(inner_loss, init, reg, Xtr, ytr, solver=solver, method=method)
            return data_loss(z, Xva, yva)

        return jax.jit(jax.grad(val))

    def theirs(solve=None):
        s = jaxopt.LBFGS(fun=inner_loss, maxiter=args.inner_maxiter, tol=args.inner_tol, history_size=10,
                         implicit_diff=True, implicit_diff_solve=solve)

        def val(reg, Xtr, ytr, Xva, yva):
            return data_loss(s.run(init, reg, Xtr, ytr).params, Xva, yva)

        return jax.jit(jax.grad(val))

    js = jaxopt.LBFGS(fun=inner_loss, maxiter=args.inner_maxiter, tol=args.inner_tol, history_size=10)
    jstate = jax.jit(lambda r, X, y: js.run(init, r, X, y).state)(reg0, data[0], data[1])
    info.update(jaxopt_inner_steps=int(jstate.iter_num), jaxopt_inner_grad_norm=float(jstate.error))

    methods = [
        Method("jaxopt", "jaxopt", theirs(), "jaxopt.LBFGS implicit_diff, default solve (normal CG, tol 1e-5)"),
        Method("jaxopt cg", "jaxopt", theirs(functools.partial(jaxopt.linear_solve.solve_cg, tol=args.adjoint_tol)),
               f"jaxopt.LBFGS implicit_diff, solve_cg tol {args.adjoint_tol:g}"),
    ]
    selected = [s for s in args.solvers if s in ADJOINT_SOLVERS]
    for name in selected:
        if name in DENSE and prob.n_params > args.dense_max:
            methods.append(Method(f"ours {name}", "skipped", None,
                                  f"skipped: {prob.n_params} parameters > --dense-max {args.dense_max}"))
            continue
        if name == "neumann":
            alpha = 1.5 / lam_max
            fn = ours(Neumann(alpha=alpha, tol=args.adjoint_tol, maxiter=args.series_terms), "ignore")
            note = f"alpha = 1.5/lambda_max = {alpha:.3g}, <= {args.series_terms} terms"
        elif name == "lissa":
            scale = lam_max / 1.5
            fn = ours(LiSSA(scale=scale, depth=args.series_terms), "ignore")
            note = f"scale = lambda_max/1.5 = {scale:.3g}, depth {args.series_terms}, exact HVPs"
        else:
            fn, note = ours(name), f"Implicit(linear_solver={name!r}, tol {args.adjoint_tol:g})"
        methods.append(Method(f"ours {name}", "ours", fn, note))
    if "cg" in selected:
        methods.append(Method("ours cg, checks off", "diagnostic", ours("cg", "ignore"),
                              "on_failure='ignore': no run-time convergence callback"))
    solve_ours = jax.jit(lambda reg, Xtr, ytr, Xva, yva: solver.checked_run(inner_loss, init, reg, Xtr, ytr)[0])
    solve_ours_raw = jax.jit(lambda reg, Xtr, ytr, Xva, yva: solver.run(inner_loss, init, reg, Xtr, ytr)[0])
    solve_theirs = jax.jit(lambda reg, Xtr, ytr, Xva, yva: js.run(init, reg, Xtr, ytr).params)
    methods += [
        Method("inner only: ours", "diagnostic", solve_ours, "LBFGS.checked_run, no derivative"),
        Method("inner only: ours, no check", "diagnostic", solve_ours_raw, "LBFGS.run (no convergence callback)"),
        Method("inner only: jaxopt", "diagnostic", solve_theirs, "jaxopt.LBFGS.run, no derivative"),
    ]
    return methods, info


# --------------------------------------------------------------------------------------------------
# measurement


def _call(fn, args):
    import jax

    return jax.block_until_ready(fn(*args))


def bench_problem(prob: Problem, args) -> dict[str, Any]:
    import jax.numpy as jnp

    reg0 = jnp.full(prob.X_train.shape[1], args.reg)
    data = tuple(jnp.asarray(a) for a in prob[1:])
    call_args = (reg0, *data)
    methods, info = build_methods(prob, args, reg0)

    rows: dict[str, dict[str, Any]] = {}
    results: dict[str, Any] = {}
    live = []
    for m in methods:
        row = {"method": m.name, "kind": m.kind, "note": m.note}
        rows[m.name] = row
        if m.fn is None:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                t0 = time.perf_counter()
                results[m.name] = np.asarray(_call(m.fn, call_args))
                row["compile_s"] = time.perf_counter() - t0
            live.append(m)
        except Exception as e:  # a failed adjoint solve raises ConvergenceError (through XLA)
            row["note"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
    times = {m.name: [] for m in live}
    cpu = {m.name: [] for m in live}
    bar = _cli.progress(range(args.repeats), desc=f"{prob.name}: rounds")
    for _ in bar:
        for m in live:
            c0, t0 = time.process_time(), time.perf_counter()
            _call(m.fn, call_args)
            times[m.name].append(time.perf_counter() - t0)
            cpu[m.name].append(time.process_time() - c0)
    bar.close()

    ref, ref_cg = results.get("jaxopt"), results.get("jaxopt cg")
    base = np.median(times["jaxopt"]) if "jaxopt" in times else math.nan
    base_cg = np.median(times["jaxopt cg"]) if "jaxopt cg" in times else math.nan
    base_cpu = np.median(cpu["jaxopt"]) if "jaxopt" in cpu else math.nan

    def rel(g, r):
        if g is None or r is None or g.shape != r.shape:
            return math.nan
        return float(np.linalg.norm(g - r) / max(np.linalg.norm(r), 1e-300))

    for m in live:
        row, t = rows[m.name], np.asarray(times[m.name])
        row.update(median_ms=1e3 * float(np.median(t)), min_ms=1e3 * float(t.min()), repeats=len(t),
                   cpu_median_ms=1e3 * float(np.median(cpu[m.name])))
        row["ratio"] = float(np.median(t) / base)
        row["ratio_cg"] = float(np.median(t) / base_cg)
        row["cpu_ratio"] = float(np.median(cpu[m.name]) / base_cpu)
        if m.kind != "diagnostic" or m.name == "ours cg, checks off":
            row["rel_diff"] = rel(results[m.name], ref)
            row["rel_diff_cg"] = rel(results[m.name], ref_cg)
    return {
        "problem": prob.name,
        "n_train": len(prob.y_train),
        "n_val": len(prob.y_val),
        "n_hyper": prob.X_train.shape[1],
        "n_params": prob.n_params,
        "reg": args.reg,
        **info,
        "rows": list(rows.values()),
        "hypergrad_norm_jaxopt_cg": float(np.linalg.norm(ref_cg)) if ref_cg is not None else None,
    }


def _print_problem(res):
    print(
        f"\n== {res['problem']}: {res['n_hyper']} L2 weights, {res['n_params']} inner parameters, "
        f"{res['n_train']} train / {res['n_val']} val, reg = {res['reg']:g} =="
    )
    print(
        f"inner L-BFGS steps to tol: ours {res['ours_inner_steps']} (|grad| {res['ours_inner_grad_norm']:.1e}), "
        f"jaxopt {res['jaxopt_inner_steps']} (|grad| {res['jaxopt_inner_grad_norm']:.1e}); "
        f"Hessian lambda_max ~ {res['lambda_max']:.3g}"
    )

    def f(v, fmt):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    table = []
    for r in res["rows"]:
        table.append((
            r["method"],
            f(r.get("median_ms"), ".2f"),
            f(r.get("min_ms"), ".2f"),
            f(r.get("cpu_median_ms"), ".2f"),
            f(r.get("ratio"), ".2f"),
            f(r.get("ratio_cg"), ".2f"),
            f(r.get("cpu_ratio"), ".2f"),
            f(r.get("rel_diff"), ".1e"),
            f(r.get("rel_diff_cg"), ".1e"),
            f(r.get("compile_s"), ".1f"),
            r["note"],
        ))
    print(_cli.format_table(
        table,
        ["method", "median ms", "min ms", "cpu ms", "/jaxopt", "/jaxopt cg", "cpu /jaxopt", "rel diff",
         "rel diff cg", "compile s", "note"],
    ))


def build_parser():
    p = _cli.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--problems", nargs="+", default=["digits", "mnist"], choices=["digits", "mnist"])
    p.add_argument("--solvers", nargs="+", default=list(ADJOINT_SOLVERS), choices=list(ADJOINT_SOLVERS))
    p.add_argument("--repeats", type=int, default=10, help="timed rounds after compilation (median reported)")
    p.add_argument("--reg", type=float, default=1e-2, help="the (uniform) L2 weights where the hypergradient is taken")
    p.add_argument("--inner-tol", type=float, default=1e-6, help="inner gradient-norm tolerance (both libraries)")
    p.add_argument("--inner-maxiter", type=int, default=1000, help="inner step cap (both libraries)")
    p.add_argument("--adjoint-tol", type=float, default=1e-10, help="relative residual of the adjoint solves")
    p.add_argument("--series-terms", type=int, default=1000, help="terms of the neumann / lissa series")
    p.add_argument("--dense-max", type=int, default=4000, help="skip cholesky/lu above this many inner parameters")
    p.add_argument("--digits-train", type=int, default=600)
    p.add_argument("--digits-val", type=int, default=600)
    p.add_argument("--mnist-train", type=int, default=1000)
    p.add_argument("--mnist-val", type=int, default=1000)
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", True)
    if args.quick:
        args.repeats = min(args.repeats, 2)
        args.series_terms = min(args.series_terms, 200)
        args.problems = ["digits"]

    print("What is timed: one jit-compiled call reg -> hypergradient of the validation loss, i.e. the inner")
    print(f"L-BFGS solve from zero (tol {args.inner_tol:g} on the gradient norm, maxiter {args.inner_maxiter},")
    print("history 10, float64) + the implicit adjoint solve + the VJP, for ours and jaxopt alike; median of")
    print(f"{args.repeats} round-robin calls after a first (compiling) call. Ratios: ours / jaxopt (default solve)")
    print("and ours / jaxopt with CG at the same adjoint tolerance; rel diff against their hypergradients.")
    print(f"jax {jax.__version__} on {jax.default_backend()} ({platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs); load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "")

    problems = []
    if "digits" in args.problems:
        s = load_digits_split(args.seed, args.digits_train, args.digits_val)
        problems.append(Problem("digits", s.X_train, s.y_train, s.X_val, s.y_val))
    if "mnist" in args.problems:
        data_dir = _cli.resolve_data_dir(args.data_dir)
        if _mnist_files(data_dir) is None:
            print(f"\nmnist: skipped (no mnist/train-*-ubyte.gz under {data_dir or '--data-dir / $BILEVEL_DATA_DIR'})")
        else:
            problems.append(Problem("mnist", *load_mnist_subset(data_dir, args.seed, args.mnist_train, args.mnist_val)))

    out = {"config": vars(args), "jax": jax.__version__, "backend": jax.default_backend(),
           "cpus": os.cpu_count(), "python": sys.version.split()[0], "problems": []}
    for prob in problems:
        res = bench_problem(prob, args)
        out["problems"].append(res)
        _print_problem(res)
    print()
    print(TARGET)
    for res in out["problems"]:
        best = [r for r in res["rows"] if r["kind"] == "ours" and "ratio" in r]
        if best:
            cg = next((r for r in best if r["method"] == "ours cg"), None)
            fastest = min(best, key=lambda r: r["ratio"])
            msg = f"{res['problem']}: fastest ours = {fastest['method']} at {fastest['ratio']:.2f}x jaxopt"
            if cg is not None:
                msg += f"; ours cg (default) at {cg['ratio']:.2f}x jaxopt, {cg['ratio_cg']:.2f}x jaxopt cg"
            print(msg)
    out["target"] = TARGET
    if args.out:
        path = _cli.write_json_atomic(Path(args.out) / "results.json", out)
        print(f"results: {path}")
    return out


if __name__ == "__main__":
    main()
