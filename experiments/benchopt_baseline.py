"""benchopt's own solvers on our problem data, for :mod:`experiments.bench_bilevel` (run in another interpreter).

This file runs under an interpreter that has ``benchopt`` and ``jax`` (not this project's
environment); it imports only numpy, jax and benchopt, plus the ``solvers/`` and
``benchmark_utils/`` folders of a checkout of benchopt's ``benchmark_bilevel`` (``--benchmark-dir``;
nothing of theirs is copied here). :mod:`experiments.bench_bilevel` writes the problem data to an
``.npz`` (no pickles) and calls::

    <benchopt-python> experiments/benchopt_baseline.py DATA.npz OUT.npz --benchmark-dir DIR \\
        --solver SOBA --params '{"step_size": 0.1, ...}' --seed 1 --max-time 10 --eval-every 64

The oracles are benchopt's ``f(inner_var, outer_var, start, batch_size)`` convention (contiguous
``dynamic_slice`` batches, as their datasets), written here for the three problems
(``kind`` in the npz): the factored quadratic, logistic regression with per-feature or scalar
``exp`` regularization, and data hyper-cleaning. The solver is instantiated with
``Solver.get_instance(**params)``, given the problem by ``set_objective`` (which compiles, by
benchopt's ``run_once`` warm-up, untimed) and run by its own ``run(callback)``. Our callback stops the
clock at entry *after* waiting for the solver's arrays (``jax.block_until_ready``: benchopt's own
callback does not, so under JAX's asynchronous dispatch its curves count dispatch time only), keeps
a snapshot of the iterates every ``eval_every`` iterations, and stops at ``--max-time`` seconds of
solver time. The snapshots go back to the caller, which evaluates them with the same metric code
as its own runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from functools import partial

# benchopt's naming of our solvers, and of their hyperparameters where they differ
BENCHOPT_NAMES = {
    "StocBiO": ("stocbio", {"n_neumann_steps": "n_shia_steps"}),
    "AmIGO": ("amigo", {}),
    "SOBA": ("soba", {}),
    "SABA": ("saba", {}),
    "MRBO": ("mrbo", {"n_neumann_steps": "n_shia_steps"}),
    "VRBO": ("vrbo", {"n_neumann_steps": "n_shia_steps"}),
    "TTSA": ("ttsa", {"n_neumann_steps": "n_hia_steps"}),
    "F2SA": ("f2sa", {}),
    "BOME": ("bome", {}),
    "FSLA": ("fsla", {}),
    "ImplicitGD": ("jaxopt_gd", {"step_size": "step_size_outer"}),
    "UnrolledGD": ("jaxopt_itd", {"step_size": "step_size_outer"}),
}
# parameters of ours that benchopt's solver does not have (dropped), per solver
DROP = {"sampling", "inner_exponent", "outer_exponent", "common_batch", "inner_step_size", "inner_tol",
        "adjoint_maxiter", "adjoint_tol", "name"}
# benchopt solvers that run one iteration per callback (not StochasticJaxSolver epochs)
PER_ITERATION = {"bome", "jaxopt_gd", "jaxopt_itd"}


def to_benchopt_params(solver: str, params: dict) -> tuple[str, dict]:
    """Our solver name and hyperparameters -> benchopt's module name and parameters."""
    module, rename = BENCHOPT_NAMES[solver]
    out = {}
    for k, v in params.items():
        if k in DROP or v is None and k == "eta":
            continue
        out[rename.get(k, k)] = v
    if solver == "ImplicitGD":
        out = {"step_size_outer": out.get("step_size_outer", 1.0), "n_inner_steps": out.get("n_inner_steps", 100),
               "inner_solver": params.get("inner_solver", "lbfgs")}
    if solver == "UnrolledGD":
        out = {"step_size_outer": out.get("step_size_outer", 1.0), "n_inner_steps": out.get("n_inner_steps", 10),
               "inner_solver": "gd", "warm_start": params.get("warm_start", True)}
    if solver == "BOME":
        out.pop("batch_size", None)
    if out.get("batch_size", 0) is None:
        out["batch_size"] = "full"
    return module, out


def run_benchopt(python, data: dict, solver: str, params: dict, *, benchmark_dir, seed: int, max_time: float,
                 eval_every: int, timeout: float | None = None, min_interval: float = 0.0,
                 log_interval: float = 0.0) -> dict:
    """Run this script under ``python`` (called from this project's environment): returns the parsed
    result (``times``, ``iterations``, ``inner``, ``outer`` snapshot arrays, ``module``, ``params``)."""
    import subprocess
    import tempfile
    from pathlib import Path

    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        npz, out = Path(tmp) / "data.npz", Path(tmp) / "out.npz"
        np.savez(npz, **data)
        cmd = [str(python), os.path.abspath(__file__), str(npz), str(out), "--benchmark-dir", str(benchmark_dir),
               "--solver", solver, "--params", json.dumps(params), "--seed", str(seed), "--max-time", str(max_time),
               "--eval-every", str(eval_every), "--min-interval", str(min_interval), "--log-interval", str(log_interval)]
        # the environment (XLA_FLAGS included) is inherited: both sides run with the same XLA settings
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"benchopt baseline failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
        with np.load(out, allow_pickle=False) as f:
            res = {k: f[k] for k in f.files}
        res["meta"] = json.loads(str(res.pop("meta")))
        return res


# ------------------------------------------------------------------------------------------------
# everything below runs in benchopt's interpreter


def _oracles(kind, arrays, jax, jnp):
    """benchopt-convention oracles ``f(inner, outer, start=0, batch_size=1)`` and sizes."""

    def sl(a, start, b):
        return jax.lax.dynamic_slice_in_dim(a, start, b, axis=0)

    if kind == "quadratic":
        def make(prefix):
            d = {k: jnp.asarray(arrays[f"{prefix}_{k}"]) for k in ("u", "w", "p", "q", "a", "b")}

            @partial(jax.jit, static_argnames=("batch_size",))
            def f(inner_var, outer_var, start=0, batch_size=1):
                s = {k: sl(v, start, batch_size) for k, v in d.items()}
                uz, wx = s["u"] @ inner_var, s["w"] @ outer_var
                return jnp.mean(0.5 * uz**2 + 0.5 * wx**2 + (s["p"] @ outer_var) * (s["q"] @ inner_var)
                                + s["a"] @ inner_var + s["b"] @ outer_var)

            return f, d["u"].shape[0]

        (fi, ni), (fo, no) = make("inner"), make("outer")
        return fi, ni, fo, no

    if kind == "logreg":
        Xtr, ytr = jnp.asarray(arrays["X_train"]), jnp.asarray(arrays["y_train"])
        Xv, yv = jnp.asarray(arrays["X_val"]), jnp.asarray(arrays["y_val"])
        scalar = str(arrays["reg"]) == "scalar"

        @partial(jax.jit, static_argnames=("batch_size",))
        def f_inner(inner_var, outer_var, start=0, batch_size=1):
            X, y = sl(Xtr, start, batch_size), sl(ytr, start, batch_size)
            w = jnp.exp(outer_var[0]) if scalar else jnp.exp(outer_var)
            return jnp.mean(jax.nn.softplus(-y * (X @ inner_var))) + 0.5 * jnp.sum(w * inner_var**2)

        @partial(jax.jit, static_argnames=("batch_size",))
        def f_outer(inner_var, outer_var, start=0, batch_size=1):
            X, y = sl(Xv, start, batch_size), sl(yv, start, batch_size)
            return jnp.mean(jax.nn.softplus(-y * (X @ inner_var)))

        return f_inner, Xtr.shape[0], f_outer, Xv.shape[0]

    if kind == "datacleaning":
        Xtr, ytr = jnp.asarray(arrays["X_train"]), jnp.asarray(arrays["y_train"]).astype(jnp.int32)
        Xv, yv = jnp.asarray(arrays["X_val"]), jnp.asarray(arrays["y_val"]).astype(jnp.int32)
        reg, k = float(arrays["reg"]), int(arrays["n_classes"])
        d = Xtr.shape[1]

        def ce(z, X, y):
            logits = X @ z.reshape(d, k)
            return jax.nn.logsumexp(logits, axis=1) - jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]

        @partial(jax.jit, static_argnames=("batch_size",))
        def f_inner(inner_var, outer_var, start=0, batch_size=1):
            X, y = sl(Xtr, start, batch_size), sl(ytr, start, batch_size)
            w = jax.nn.sigmoid(sl(outer_var, start, batch_size))
            return jnp.mean(w * ce(inner_var, X, y)) + reg * jnp.sum(inner_var**2)

        @partial(jax.jit, static_argnames=("batch_size",))
        def f_outer(inner_var, outer_var, start=0, batch_size=1):
            X, y = sl(Xv, start, batch_size), sl(yv, start, batch_size)
            return jnp.mean(ce(inner_var, X, y))

        return f_inner, Xtr.shape[0], f_outer, Xv.shape[0]
    raise ValueError(f"unknown problem kind {kind!r}")


def _load_solver(benchmark_dir, module):
    sys.path.insert(0, os.path.abspath(benchmark_dir))
    path = os.path.join(benchmark_dir, "solvers", f"{module}.py")
    spec = importlib.util.spec_from_file_location(f"benchopt_bilevel_solver_{module}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.Solver


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data")
    p.add_argument("out")
    p.add_argument("--benchmark-dir", required=True)
    p.add_argument("--solver", required=True, choices=sorted(BENCHOPT_NAMES))
    p.add_argument("--params", default="{}")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-time", type=float, required=True)
    p.add_argument("--eval-every", type=int, required=True)
    p.add_argument("--min-interval", type=float, default=0.0,
                   help="keep a snapshot only when this many solver seconds passed since the last one")
    p.add_argument("--log-interval", type=float, default=0.0,
                   help="... and the solver time grew by this fraction since the last one (geometric grid)")
    args = p.parse_args()

    import numpy as np
    import jax
    import jax.numpy as jnp
    import benchopt

    with np.load(args.data, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    kind = str(arrays["kind"])
    f_inner, n_inner, f_outer, n_outer = _oracles(kind, arrays, jax, jnp)
    inner0 = jnp.asarray(arrays["inner0"]).reshape(-1)
    outer0 = jnp.asarray(arrays["outer0"])
    module, params = to_benchopt_params(args.solver, json.loads(args.params))
    Solver = _load_solver(args.benchmark_dir, module)
    if "random_state" in Solver.parameters:
        params["random_state"] = args.seed
    if "eval_freq" in Solver.parameters:
        params["eval_freq"] = args.eval_every
    solver = Solver.get_instance(**params)
    t0 = time.perf_counter()
    solver.set_objective(f_inner=f_inner, f_outer=f_outer, n_inner_samples=n_inner, n_outer_samples=n_outer,
                         inner_var0=inner0, outer_var0=outer0)  # includes benchopt's run_once warm-up (compile)
    setup_s = time.perf_counter() - t0
    per_iteration = module in PER_ITERATION
    snap_every = args.eval_every if per_iteration else 1  # callbacks between two snapshots

    times, iters, inners, outers = [], [], [], []
    state = {"elapsed": 0.0, "calls": 0, "last": None}

    def snapshot():
        res = solver.get_result()
        jax.block_until_ready(res)
        return res

    def callback():
        res = snapshot()  # wait for the dispatched work before reading the clock
        now = time.perf_counter()
        if state["last"] is not None:
            state["elapsed"] += now - state["last"]
        k = state["calls"]
        stopping = state["elapsed"] >= args.max_time
        due = (not times or state["elapsed"] - times[-1] >= max(args.min_interval, args.log_interval * times[-1])
               or stopping)
        if k % snap_every == 0 and due:
            times.append(state["elapsed"])
            iters.append(k * (1 if per_iteration else args.eval_every))
            inners.append(np.asarray(res["inner_var"]))
            outers.append(np.asarray(res["outer_var"]))
            bad = not np.all(np.isfinite(outers[-1]))
        else:
            bad = False
        state["calls"] += 1
        go_on = state["elapsed"] < args.max_time and not bad
        state["last"] = time.perf_counter()
        return go_on

    solver.run(callback)
    if iters[-1] != (state["calls"] - 1) * (1 if per_iteration else args.eval_every):  # the last iterate
        res = snapshot()
        times.append(state["elapsed"])
        iters.append(state["calls"] - 1)
        inners.append(np.asarray(res["inner_var"]))
        outers.append(np.asarray(res["outer_var"]))
    meta = {"module": module, "params": params, "benchopt_version": benchopt.__version__, "jax": jax.__version__,
            "setup_seconds": setup_s, "callbacks": state["calls"]}
    tmp = args.out + ".tmp.npz"
    np.savez(tmp, times=np.asarray(times), iterations=np.asarray(iters), inner=np.stack(inners),
             outer=np.stack(outers), meta=np.asarray(json.dumps(meta)))
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
