r"""Benchmark (not a test): every stochastic bilevel solver on benchopt's three problems, beside benchopt.

Problems (``--problems``; the data sets are offline, see ``--data-dir``):

- ``quadratic``: benchopt's simulated quadratic problem (n = 1024 samples per level, dim z = 100,
  dim x = 10, :math:`\mu = 0.1`, cross terms 0.1), closed-form solution; the objective is the
  value function :math:`F(x)`, the target :math:`F^\star + 0.1\%` of the initial gap (``--target-frac``).
- ``logreg-spambase``, ``logreg-adult``, ``logreg-mnist``: :math:`\ell_2`-regularized logistic
  regression with one :math:`e^{x_j}` per feature (``--reg scalar``: one weight) selected on a
  validation half of the training set (MNIST: parity of the digit, 10 000 train / 5 000 validation
  images); benchopt uses ijcnn1 / covtype, which need a download. ``logreg-breast_cancer`` is the
  offline fallback. Objective :math:`F(x)` (inner problem solved by L-BFGS at each checkpoint).
- ``datacleaning``: benchopt's MNIST hyper-cleaning: 20 000 training images whose labels are
  replaced with probability 0.5 by a random class, 5 000 clean validation images, the 10 000 test
  images, standardized pixels, multinomial logistic regression with :math:`0.2\|z\|^2`, one weight
  :math:`\sigma(x_i)` per training image. Objective: validation loss at the current model; also
  test accuracy and the AUC of the weights separating clean from corrupted images.
  ``datacleaning-digits`` is the offline fallback (scikit-learn's digits).

Every solver runs for ``--max-time`` seconds of solver work (compilation and metric evaluation
excluded, on both sides) with ``--seeds`` seeds, one seed at a time, with benchopt's best published
hyperparameters for that problem (their ``config/*_best_params.yml``; defaults otherwise). With
``--benchopt-python`` (an interpreter with ``benchopt`` and ``jax``) and ``--benchopt-dir`` (a
checkout of ``benchopt/benchmark_bilevel``), benchopt's implementation of the same solver runs on
the same data from the same start point, through :mod:`experiments.benchopt_baseline`; its iterates
are evaluated here by the same metric code. The time to target of a run is the solver time of its
first checkpoint at or below the target; the target of a problem without closed form is the best
final objective over all runs plus ``--target-frac`` of the initial gap. ``results.json`` holds the
``rows`` (``solver``, ``problem``, ``source`` = ``"ours"`` / ``"benchopt"``, ``seed``,
``time_to_target``, ``final_outer``, ...) and the curves; one PNG per problem shows the objective
and the test accuracy against wall time and against oracle calls (per-example gradient, HVP and
cross-derivative evaluations; benchopt's are counted as ours for the same algorithm and
iteration). Finished runs are cached under ``OUT/runs`` and reused (``--fresh`` recomputes).

Usage::

    python -m experiments.bench_bilevel --data-dir DIR --out runs/bench_bilevel \\
        --benchopt-python /work/benchopt_env/bin/python --benchopt-dir /work/benchopt_bilevel
    python -m experiments.bench_bilevel --quick --out /tmp/bb      # CI-sized
"""

from __future__ import annotations

import math
import os
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from experiments import _cli

__all__ = ["PROBLEMS", "SOLVER_PARAMS", "build_parser", "build_benchmark", "run", "main"]

PROBLEMS = ("quadratic", "logreg-spambase", "logreg-adult", "logreg-mnist", "logreg-breast_cancer",
            "datacleaning", "datacleaning-digits")
DEFAULT_PROBLEMS = ("quadratic", "logreg-spambase", "datacleaning")
SOLVER_NAMES = ("StocBiO", "AmIGO", "SOBA", "SABA", "MRBO", "VRBO", "TTSA", "F2SA", "BOME", "FSLA", "ImplicitGD",
                "UnrolledGD")

# benchopt's best parameters (config/quadratics_021424_best_params.yml, ijcnn1_best_params.yml,
# datacleaning0_5_best_params.yml); solvers absent from a file keep benchopt's defaults.
_QUAD = {"StocBiO": dict(step_size=0.1, outer_ratio=1.0, n_inner_steps=10, n_neumann_steps=10),
         "AmIGO": dict(step_size=0.01, outer_ratio=0.1, n_inner_steps=10),
         "SABA": dict(step_size=0.1, outer_ratio=1.0),
         "MRBO": dict(step_size=0.1, outer_ratio=0.1, eta=0.5, n_neumann_steps=10),
         "VRBO": dict(step_size=0.1, outer_ratio=1.0, period_frac=0.01, n_inner_steps=10, n_neumann_steps=10),
         "F2SA": dict(step_size=0.1, outer_ratio=1.0, delta_lmbda=0.01, lmbda0=1.0, n_inner_steps=10)}
_LOGREG = {"StocBiO": dict(step_size=0.125, outer_ratio=1.0), "AmIGO": dict(step_size=0.125, outer_ratio=0.316),
           "SABA": dict(step_size=0.125, outer_ratio=1.0), "SOBA": dict(step_size=0.03125, outer_ratio=0.01),
           "MRBO": dict(step_size=0.5, outer_ratio=0.0316, eta=0.5),
           "VRBO": dict(step_size=0.0625, outer_ratio=1.0, period_frac=0.5),
           "TTSA": dict(step_size=0.5, outer_ratio=0.0316), "FSLA": dict(step_size=0.03125, outer_ratio=0.01)}
_CLEAN = {"StocBiO": dict(step_size=0.01, outer_ratio=1e-5), "AmIGO": dict(step_size=0.001, outer_ratio=1e-5),
          "SABA": dict(step_size=0.1, outer_ratio=1e-3), "SOBA": dict(step_size=1.0, outer_ratio=1e-4),
          "MRBO": dict(step_size=0.1, outer_ratio=1e-4, eta=0.5),
          "VRBO": dict(step_size=0.1, outer_ratio=1e-4, period_frac=0.5),
          "TTSA": dict(step_size=0.1, outer_ratio=1e-5), "FSLA": dict(step_size=1.0, outer_ratio=1e-4)}
SOLVER_PARAMS = {"quadratic": _QUAD, "logreg": _LOGREG, "datacleaning": _CLEAN}
# iterations between two checkpoints (benchopt's eval_freq where its configs give one)
EVAL_EVERY = {"quadratic": {"StocBiO": 16, "AmIGO": 16, "MRBO": 16, "VRBO": 2, "F2SA": 16, "default": 64,
                            "BOME": 16, "ImplicitGD": 2, "UnrolledGD": 8},
              "logreg": {"StocBiO": 32, "AmIGO": 32, "MRBO": 64, "VRBO": 4, "F2SA": 32, "default": 256, "BOME": 16,
                         "ImplicitGD": 2, "UnrolledGD": 8},
              "datacleaning": {"StocBiO": 64, "AmIGO": 64, "MRBO": 64, "VRBO": 8, "F2SA": 64, "default": 512,
                               "BOME": 4, "ImplicitGD": 1, "UnrolledGD": 4}}


def build_parser():
    p = _cli.base_parser(__doc__.splitlines()[0], default_out="runs/bench_bilevel")
    p.add_argument("--problems", nargs="+", default=list(DEFAULT_PROBLEMS), choices=PROBLEMS)
    p.add_argument("--solvers", nargs="+", default=list(SOLVER_NAMES), choices=SOLVER_NAMES)
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--max-time", type=float, default=10.0, help="seconds of solver work per run")
    p.add_argument("--min-interval", type=float, default=2e-3,
                   help="solver seconds between two evaluated checkpoints, at least ...")
    p.add_argument("--log-interval", type=float, default=0.05,
                   help="... and a growth of the solver time by this fraction (a geometric grid: times to "
                        "target are known to this relative precision)")
    p.add_argument("--target-frac", type=float, default=None,
                   help="target = best + frac * (start - best) (default 1e-3 quadratic, 0.02 otherwise)")
    p.add_argument("--reg", choices=("feature", "scalar"), default="feature", help="logistic regression penalty")
    p.add_argument("--corruption", type=float, default=0.5, help="data cleaning: fraction of labels resampled")
    p.add_argument("--benchopt-python", default=os.environ.get("BENCHOPT_PYTHON"),
                   help="interpreter with benchopt + jax: run benchopt's solvers beside ours ($BENCHOPT_PYTHON)")
    p.add_argument("--benchopt-dir", default=os.environ.get("BENCHOPT_BILEVEL_DIR"),
                   help="checkout of benchopt/benchmark_bilevel ($BENCHOPT_BILEVEL_DIR)")
    p.add_argument("--fresh", action="store_true", help="ignore cached runs under OUT/runs")
    p.add_argument("--no-plots", action="store_true")
    return p


# ------------------------------------------------------------------------------------------------
# problems


def _family(problem: str) -> str:
    return problem.split("-")[0]


def _split_half(X, y, seed):
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(y))
    half = len(y) // 2
    return X[idx[:half]], y[idx[:half]], X[idx[half:]], y[idx[half:]]


FALLBACK = {"logreg-spambase": "logreg-breast_cancer", "logreg-adult": "logreg-breast_cancer",
            "logreg-mnist": "logreg-breast_cancer", "datacleaning": "datacleaning-digits"}


def build_benchmark(problem: str, args):
    """The :class:`bilevel.stochastic.Benchmark` for ``problem`` and the arrays benchopt's side needs.

    A problem whose data is not found (no ``--data-dir`` / ``$BILEVEL_DATA_DIR``) falls back to its
    offline variant (scikit-learn's breast cancer or digits), with a note.
    """
    try:
        return _build_benchmark(problem, args)
    except FileNotFoundError as e:
        if problem not in FALLBACK:
            raise
        print(f"note: {problem}: data not found ({str(e).splitlines()[0]}); using {FALLBACK[problem]}")
        return _build_benchmark(FALLBACK[problem], args)


def _build_benchmark(problem: str, args):
    from bilevel import stochastic as S
    from poisoning import datasets as data

    root = _cli.resolve_data_dir(args.data_dir)
    quick = args.quick
    if problem == "quadratic":
        kw = dict(n_inner=256, n_outer=256, dim_inner=20, dim_outer=5) if quick else {}
        bench = S.quadratic_benchmark(**kw)
        arrays = {"kind": "quadratic"}
        for level, d in (("inner", bench.problem.inner_data), ("outer", bench.problem.outer_data)):
            arrays.update({f"{level}_{k}": np.asarray(v) for k, v in d.items()})
    elif problem.startswith("logreg"):
        name = problem.split("-", 1)[1]
        if name == "mnist":
            ds = data.load_mnist(root)
            rng = np.random.default_rng(0)
            n_tr, n_val = (2000, 1000) if quick else (10000, 5000)
            idx = rng.permutation(len(ds.y_train))[: n_tr + n_val]
            X, y = ds.X_train[idx], (ds.y_train[idx] % 2)
            X_tr, y_tr, X_val, y_val = X[:n_tr], y[:n_tr], X[n_tr:], y[n_tr:]
            X_te, y_te = ds.X_test, ds.y_test % 2
        else:
            loader = {"spambase": data.load_spambase, "adult": data.load_adult,
                      "breast_cancer": data.load_breast_cancer}[name]
            ds = loader(root) if name != "breast_cancer" else loader()
            X_tr, y_tr, X_val, y_val = _split_half(ds.X_train, ds.y_train, 0)
            if quick:
                X_tr, y_tr, X_val, y_val = X_tr[:1000], y_tr[:1000], X_val[:500], y_val[:500]
            X_te, y_te = ds.X_test, ds.y_test
        bench = S.logreg_benchmark(X_tr, y_tr, X_val, y_val, X_te, y_te, reg=args.reg, name=problem)
        d_in, d_out = bench.problem.inner_data, bench.problem.outer_data
        arrays = {"kind": "logreg", "reg": args.reg, "X_train": np.asarray(d_in["X"]), "y_train": np.asarray(d_in["y"]),
                  "X_val": np.asarray(d_out["X"]), "y_val": np.asarray(d_out["y"])}
    else:  # datacleaning
        if problem == "datacleaning":
            ds = data.load_mnist(root)
            n_tr, n_val = (2000, 500) if quick else (20000, 5000)
        else:
            ds = data.load_digits(seed=0)
            n_tr, n_val = 800, 400
        rng = np.random.default_rng(32)  # benchopt's random_state for this dataset
        idx = rng.permutation(len(ds.y_train))
        X_tr, y_tr = ds.X_train[idx[:n_tr]], ds.y_train[idx[:n_tr]]
        X_val, y_val = ds.X_train[idx[n_tr:n_tr + n_val]], ds.y_train[idx[n_tr:n_tr + n_val]]
        X_te, y_te = ds.X_test, ds.y_test
        k = int(max(ds.y_train.max(), ds.y_test.max())) + 1
        y_bad, changed = S.corrupt_labels(y_tr, args.corruption, k, seed=32)
        mean, std = X_tr.mean(0), X_tr.std(0)
        std = np.where(std > 0, std, 1.0)
        z = lambda X: ((X - mean) / std).astype(np.float32)  # StandardScaler, as benchopt
        bench = S.datacleaning_benchmark(z(X_tr), y_bad, z(X_val), y_val, z(X_te), y_te, clean_mask=~changed,
                                         n_classes=k, reg=0.2, name=problem)
        arrays = {"kind": "datacleaning", "X_train": z(X_tr), "y_train": y_bad, "X_val": z(X_val), "y_val": y_val,
                  "reg": 0.2, "n_classes": k}
    arrays.update({"inner0": np.asarray(bench.inner0), "outer0": np.asarray(bench.outer0)})
    return bench, {k: np.asarray(v) for k, v in arrays.items()}


def _lipschitz(bench) -> float:
    """Largest eigenvalue of the full inner Hessian at the start point (20 power iterations)."""
    import jax
    import jax.numpy as jnp

    from bilevel.stochastic import oracles as O

    p, z, x = bench.problem, bench.inner0, bench.outer0
    v = jax.tree_util.tree_map(lambda a: jnp.ones_like(a) / np.sqrt(a.size), z)
    hv = jax.jit(lambda v: O.hvp(p, z, x, v, p.inner_data))
    lam = 1.0
    for _ in range(20):
        w = hv(v)
        lam = float(O.tnorm(w))
        v = O.tscale(1.0 / max(lam, 1e-12), w)
    return lam


def solver_params(name: str, problem: str, bench) -> dict:
    """Hyperparameters of ``name`` on ``problem`` (benchopt's best where published)."""
    fam = _family(problem)
    params = dict(SOLVER_PARAMS[fam].get(name, {}))
    if name in ("ImplicitGD", "UnrolledGD"):
        params.setdefault("step_size", {"quadratic": 1.0, "logreg": 1.0, "datacleaning": 1000.0}[fam])
        if name == "UnrolledGD":
            params.setdefault("inner_step_size", round(1.0 / _lipschitz(bench), 6))
    return params


# ------------------------------------------------------------------------------------------------
# runs


def _make_solver(name, params):
    from bilevel import stochastic as S

    return S.SOLVERS[name](**params)


def _run_ours(name, params, bench, seed, args):
    from bilevel.stochastic import run as run_solver

    solver = _make_solver(name, params)
    fam = _family(bench.name)
    every = EVAL_EVERY[fam].get(name, EVAL_EVERY[fam]["default"])
    if args.quick:
        every = max(1, every // 4)
    res = run_solver(solver, bench, seed=seed, max_time=args.max_time, eval_every=every, progress=None,
                     min_interval=args.min_interval, log_interval=args.log_interval)
    return {"solver": name, "source": "ours", "seed": seed, "params": res.config, "eval_every": every,
            "compile_seconds": res.compile_seconds, "diverged": res.diverged, "checkpoints": res.checkpoints}


def _run_benchopt(name, params, bench, arrays, seed, args, ours):
    import jax.numpy as jnp

    from experiments.benchopt_baseline import run_benchopt

    every = ours["eval_every"]
    full = {k: v for k, v in ours["params"].items() if k != "name"}
    t0 = time.perf_counter()
    res = run_benchopt(args.benchopt_python, arrays, name, full, benchmark_dir=args.benchopt_dir, seed=seed,
                       max_time=args.max_time, eval_every=every, timeout=max(600.0, 20 * args.max_time),
                       min_interval=args.min_interval, log_interval=args.log_interval)
    wall = time.perf_counter() - t0
    # oracle samples per iteration of the same algorithm, read from our run
    last = ours["checkpoints"][-1]
    per_it = last["samples"] / max(last["iteration"], 1)
    shape = np.shape(bench.inner0)
    checkpoints = []
    for t, it, z, x in zip(res["times"], res["iterations"], res["inner"], res["outer"]):
        m = bench.metrics(jnp.asarray(z).reshape(shape), jnp.asarray(x))
        rec = {"iteration": int(it), "time": float(t), "samples": float(per_it * it)}
        rec.update({k: float(v) for k, v in m.items()})
        checkpoints.append(rec)
        if not math.isfinite(rec["outer"]):
            break
    diverged = not math.isfinite(checkpoints[-1]["outer"])
    return {"solver": name, "source": "benchopt", "seed": seed, "params": res["meta"]["params"],
            "module": res["meta"]["module"], "eval_every": every, "setup_seconds": res["meta"]["setup_seconds"],
            "subprocess_seconds": wall, "diverged": diverged, "checkpoints": checkpoints,
            "benchopt_version": res["meta"]["benchopt_version"]}


def _cached(path: Path, fresh: bool, fn):
    if path.is_file() and not fresh:
        return _cli.read_json(path)
    out = fn()
    _cli.write_json_atomic(path, out)
    return out


def _time_to_target(checkpoints, target):
    for c in checkpoints:
        v = c.get("outer")
        if v is not None and math.isfinite(v) and v <= target:
            return float(c["time"]), float(c.get("samples", float("nan")))
    return None, None


def _median(values):
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.median(vals)) if vals else None


# ------------------------------------------------------------------------------------------------
# plots


def _plot(problem, runs, target, path):
    plt = _cli.pyplot()
    has_acc = any("test_accuracy" in r["checkpoints"][0] for r in runs)
    fig, axes = plt.subplots(2 if has_acc else 1, 2, figsize=(12, 8 if has_acc else 4.2), squeeze=False)
    names = sorted({r["solver"] for r in runs})
    colors = {n: plt.cm.tab20(i / max(len(names), 1)) for i, n in enumerate(names)}
    best = min((c["outer"] for r in runs for c in r["checkpoints"] if c.get("outer") is not None
                and math.isfinite(c["outer"])), default=0.0)
    offset = best - 1e-3 * max(abs(best), 1e-3)
    for r in runs:
        ck = [c for c in r["checkpoints"] if c.get("outer") is not None and math.isfinite(c["outer"])]
        if not ck:
            continue
        style = "-" if r["source"] == "ours" else "--"
        label = f"{r['solver']} ({r['source']})" if r["seed"] == min(s["seed"] for s in runs) else None
        for j, xkey in enumerate(("time", "samples")):
            pts = [c for c in ck if c.get(xkey, 0) > 0]  # log axis: the start point (x = 0) is left out
            xs = [c[xkey] for c in pts]
            axes[0, j].plot(xs, [c["outer"] - offset for c in pts], style, color=colors[r["solver"]], lw=1,
                            alpha=0.8, label=label if j == 0 else None)
            if has_acc:
                axes[1, j].plot(xs, [c.get("test_accuracy", np.nan) for c in pts], style, color=colors[r["solver"]],
                                lw=1, alpha=0.8)
    for j, xlabel in enumerate(("solver time (s)", "oracle calls (per-example evaluations)")):
        ax = axes[0, j]
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axhline(target - offset, color="k", lw=0.8, ls=":")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("outer objective - best + eps")
        if has_acc:
            axes[1, j].set_xscale("log")
            axes[1, j].set_xlabel(xlabel)
            axes[1, j].set_ylabel("test accuracy")
    axes[0, 0].legend(fontsize=6, ncol=2)
    fig.suptitle(f"{problem}: ours (solid) vs benchopt (dashed); dotted: target")
    return _cli.save_figure(fig, path)


# ------------------------------------------------------------------------------------------------


def run(args) -> dict[str, Any]:
    import jax

    out = _cli.ensure_dir(args.out)
    if args.quick:
        args.max_time = min(args.max_time, 1.0)
        args.seeds = args.seeds[:1]
    benchopt = bool(args.benchopt_python)
    if benchopt and not args.benchopt_dir:
        raise SystemExit("--benchopt-python needs --benchopt-dir (a checkout of benchopt/benchmark_bilevel)")
    rows, curves, summary, done = [], {}, {}, []
    for problem in args.problems:
        bench, arrays = build_benchmark(problem, args)
        problem = bench.name  # the offline fallback's name when the data was missing
        done.append(problem)
        fam = _family(problem)
        frac = args.target_frac if args.target_frac is not None else (1e-3 if fam == "quadratic" else 0.02)
        print(f"== {problem}: {bench.info}", flush=True)
        runs = []
        for name in args.solvers:
            params = solver_params(name, problem, bench)
            for seed in args.seeds:
                tag = f"{problem}_{name}_{seed}"
                ours = _cached(out / "runs" / f"{tag}_ours.json", args.fresh,
                               lambda: _run_ours(name, params, bench, seed, args))
                runs.append(ours)
                msg = f"{problem:16s} {name:10s} seed {seed} ours: {len(ours['checkpoints'])} checkpoints, " \
                      f"outer {ours['checkpoints'][-1]['outer']:.5g}"
                if benchopt:
                    try:
                        theirs = _cached(out / "runs" / f"{tag}_benchopt.json", args.fresh,
                                         lambda: _run_benchopt(name, params, bench, arrays, seed, args, ours))
                        runs.append(theirs)
                        msg += f" | benchopt: outer {theirs['checkpoints'][-1]['outer']:.5g}"
                    except Exception as e:  # noqa: BLE001 - one failing baseline must not stop the benchmark
                        msg += f" | benchopt FAILED: {type(e).__name__}: {str(e)[-300:]}"
                        runs.append({"solver": name, "source": "benchopt", "seed": seed, "error": str(e)[-2000:],
                                     "checkpoints": []})
                print(msg, flush=True)
        ok = [r for r in runs if r["checkpoints"]]
        start = ok[0]["checkpoints"][0]["outer"]
        if bench.solution is not None:
            best = float(bench.solution["value"])
        else:
            best = min(c["outer"] for r in ok for c in r["checkpoints"] if math.isfinite(c.get("outer", np.nan)))
        target = best + frac * (start - best)
        for r in runs:
            ttt, stt = _time_to_target(r["checkpoints"], target) if r["checkpoints"] else (None, None)
            last = r["checkpoints"][-1] if r["checkpoints"] else {}
            if r.get("diverged"):  # a NaN model's "accuracy" is not a result: no final metrics
                last = {k: v for k, v in last.items() if k not in ("test_accuracy", "weight_auc")}
            rows.append({"solver": r["solver"], "problem": problem, "source": r["source"], "seed": r["seed"],
                         "time_to_target": ttt, "samples_to_target": stt, "final_outer": last.get("outer"),
                         "final_test_accuracy": last.get("test_accuracy"), "final_weight_auc": last.get("weight_auc"),
                         "final_time": last.get("time"), "iterations": last.get("iteration"),
                         "diverged": r.get("diverged"), "error": r.get("error")})
        curves[problem] = runs
        summary[problem] = {"target": target, "best": best, "start": start, "target_frac": frac, "info": bench.info}
        if not args.no_plots:
            summary[problem]["plot"] = str(_plot(problem, ok, target, out / f"{problem}.png"))

    table, ratios = [], {}
    for problem in done:
        for name in args.solvers:
            sel = lambda src: [r for r in rows if r["problem"] == problem and r["solver"] == name and r["source"] == src]
            o, b = sel("ours"), sel("benchopt")
            to, tb = _median([r["time_to_target"] for r in o]), _median([r["time_to_target"] for r in b])
            reached_o = sum(r["time_to_target"] is not None for r in o)
            reached_b = sum(r["time_to_target"] is not None for r in b)
            ratio = (tb / to) if (to and tb) else None
            ratios[f"{problem}/{name}"] = ratio
            fo, fb = _median([r["final_outer"] for r in o]), _median([r["final_outer"] for r in b])
            acc = _median([r["final_test_accuracy"] for r in o])
            table.append([problem, name, f"{to:.3g}" if to else "-", f"{reached_o}/{len(o)}",
                          f"{tb:.3g}" if tb else "-", f"{reached_b}/{len(b)}" if b else "-",
                          f"{ratio:.2f}x" if ratio else "-", f"{fo:.5g}" if fo is not None else "-",
                          f"{fb:.5g}" if fb is not None else "-", f"{acc:.4f}" if acc is not None else "-"])
    print(_cli.format_table(table, ["problem", "solver", "ours ttt s", "reached", "benchopt ttt s", "reached",
                                    "speedup", "ours final", "benchopt final", "ours test acc"]))
    for problem in done:
        o = [_median([r["time_to_target"] for r in rows if r["problem"] == problem and r["solver"] == n
                      and r["source"] == "ours"]) for n in args.solvers]
        b = [_median([r["time_to_target"] for r in rows if r["problem"] == problem and r["solver"] == n
                      and r["source"] == "benchopt"]) for n in args.solvers]
        bo, bb = min([v for v in o if v] or [None], key=lambda v: v or 0), min([v for v in b if v] or [None],
                                                                              key=lambda v: v or 0)
        summary[problem]["best_ours_ttt"], summary[problem]["best_benchopt_ttt"] = bo, bb
        if bo and bb:
            print(f"{problem}: best of ours {bo:.3g} s vs best of benchopt {bb:.3g} s -> {bb / bo:.2f}x")
        if _family(problem) == "datacleaning":
            for src in ("ours", "benchopt"):
                acc = _median([r["final_test_accuracy"] for r in rows if r["problem"] == problem and r["source"] == src])
                auc = _median([r["final_weight_auc"] for r in rows if r["problem"] == problem and r["source"] == src])
                if acc is not None:
                    print(f"{problem} ({src}): median final test accuracy {acc:.4f}, weight AUC "
                          f"{auc:.4f}" if auc is not None else "")
    results = {"benchmark": "bench_bilevel", "rows": rows, "summary": summary, "speedup_benchopt_over_ours": ratios,
               "config": {"problems": done, "solvers": args.solvers, "seeds": args.seeds,
                          "max_time": args.max_time, "quick": args.quick, "reg": args.reg,
                          "corruption": args.corruption, "benchopt": benchopt},
               "curves": {p: [{k: v for k, v in r.items()} for r in rs] for p, rs in curves.items()},
               "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "jax": jax.__version__,
                           "load_avg": list(os.getloadavg())}}
    if not benchopt:
        print("benchopt's solvers were not run (pass --benchopt-python and --benchopt-dir)")
    if os.getloadavg()[0] > (os.cpu_count() or 1):
        print(f"note: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs: wall times are inflated")
    path = _cli.write_json_atomic(out / "results.json", results)
    print(f"wrote {path}")
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
