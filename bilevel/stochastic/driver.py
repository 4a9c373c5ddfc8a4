r"""Run any stochastic bilevel solver for an iteration or wall-time budget and record its curve.

:func:`run` compiles ``eval_every`` solver steps into one ``jax.lax.scan`` (ahead of time: compile
time is measured and reported apart, never counted), runs chunk after chunk, and after each chunk
records, *outside* the timed region (as benchopt does):

- ``iteration``, ``time`` (seconds of solver work only), oracle calls per kind and the number of
  per-example oracle evaluations (``samples``);
- the benchmark's metrics (``outer`` objective, accuracies, distances to the solution, ...);
- ``inner_residual`` :math:`\|\nabla_z g(z, x)\|` and, for solvers with an adjoint,
  ``adjoint_residual`` :math:`\|\nabla^2_{zz} g\, v - \nabla_z f\| / \|\nabla_z f\|` (full batch).

:func:`run_seeds` runs several seeds, one after the other (each with its own clock: the timing that
benchopt's one-process-per-run protocol measures) or all at once with ``vmap=True`` (one compiled
program for all seeds; the recorded time is then that of the joint run). Progress shows as a
``tqdm`` bar on interactive terminals. :func:`time_to_target` reads a curve.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bilevel.stochastic import oracles as O
from bilevel.stochastic.problems import Benchmark
from bilevel.stochastic.sampling import ORACLES
from bilevel.stochastic.solvers.base import SolverState, StochasticSolver

__all__ = ["RunResult", "run", "run_seeds", "time_to_target", "make_chunk", "write_json"]


@dataclasses.dataclass
class RunResult:
    """One run's curve. ``checkpoints`` is a list of dicts (see the module docstring)."""

    solver: str
    problem: str
    seed: int
    config: dict
    checkpoints: list
    compile_seconds: float
    diverged: bool = False
    vmapped: bool = False
    final_state: Any = dataclasses.field(default=None, repr=False)

    def curve(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(times, values)`` of metric ``key`` over the checkpoints (NaN where missing)."""
        t = np.array([c["time"] for c in self.checkpoints], float)
        v = np.array([c.get(key, np.nan) if c.get(key) is not None else np.nan for c in self.checkpoints], float)
        return t, v

    def final(self, key: str = "outer"):
        return self.checkpoints[-1].get(key) if self.checkpoints else None

    def to_dict(self) -> dict:
        return {"solver": self.solver, "problem": self.problem, "seed": self.seed, "config": self.config,
                "compile_seconds": self.compile_seconds, "diverged": self.diverged, "vmapped": self.vmapped,
                "checkpoints": self.checkpoints}


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bool, str)) or obj is None:
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)) or (hasattr(obj, "shape") and np.ndim(obj) == 0):
        f = float(obj)
        return f if math.isfinite(f) else None
    if hasattr(obj, "__array__"):
        return _jsonable(np.asarray(obj).tolist())
    return str(obj)


def write_json(path, obj) -> str:
    """Write ``obj`` as strict JSON (non-finite numbers become ``null``) atomically to ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_jsonable(obj), f, indent=1, allow_nan=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def make_chunk(solver: StochasticSolver, length: int) -> Callable:
    """``chunk(problem, state) -> state``: ``length`` solver steps in one ``lax.scan`` (not jitted)."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"argument 'eval_every' must be an int >= 1, got {length!r}")

    def chunk(problem, state):
        return jax.lax.scan(lambda s, _: (solver.step(problem, s), None), state, None, length=length)[0]

    return chunk


def _diagnostics(problem, state: SolverState):
    z, x = state.inner, state.outer
    out = {"inner_residual": O.tnorm(jax.grad(problem.inner_full)(z, x))}
    if isinstance(state.aux, dict) and "v" in state.aux:
        gz = jax.grad(problem.outer_full)(z, x)
        hv = O.hvp(problem, z, x, state.aux["v"], problem.inner_data)
        out["adjoint_residual"] = O.tnorm(O.tsub(hv, gz)) / jnp.maximum(O.tnorm(gz), jnp.finfo(jnp.float32).tiny)
    return out


_diagnostics_jit = jax.jit(_diagnostics)


def _samples(problem, solver, calls) -> dict:
    calls = np.asarray(calls, dtype=np.float64)
    b = getattr(solver, "batch_size", None)
    n_in, n_out = problem.n_inner, problem.n_outer
    b_in = n_in if b is None else min(b, n_in)
    b_out = n_out if b is None else min(b, n_out)
    sizes = np.array([[b_in, b_out, b_in, b_in], [n_in, n_out, n_in, n_in]], dtype=np.float64)
    per_kind = (calls * sizes).sum(0)
    return {"calls": {k: int(calls[:, i].sum()) for i, k in enumerate(ORACLES)},
            "samples": float(per_kind.sum()),
            "samples_per_kind": {k: float(per_kind[i]) for i, k in enumerate(ORACLES)},
            "epochs": float(per_kind.sum() / (n_in + n_out))}


def _record(benchmark, solver, state, iteration, elapsed, metrics_fn) -> dict:
    rec = {"iteration": int(iteration), "time": float(elapsed)}
    rec.update(_samples(benchmark.problem, solver, state.tape.calls))
    m = metrics_fn(state.inner, state.outer) if metrics_fn is not None else {}
    diag = _diagnostics_jit(benchmark.problem, state)
    for k, v in {**diag, **m}.items():
        rec[k] = float(v)
    return rec


def _finite(rec, key="outer") -> bool:
    v = rec.get(key, rec.get("inner_residual"))
    return v is not None and math.isfinite(v)


def _progress(total, desc, disable):
    from tqdm.auto import tqdm

    if disable is None:
        disable = bool(os.environ.get("CI")) or not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, disable=disable)


def _check_budget(max_iter, max_time):
    if max_iter is None and max_time is None:
        raise ValueError("give a budget: argument 'max_iter' or 'max_time'")
    if max_iter is not None and (isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1):
        raise ValueError(f"argument 'max_iter' must be an int >= 1, got {max_iter!r}")
    if max_time is not None and (not isinstance(max_time, (int, float)) or not max_time > 0 or not math.isfinite(max_time)):
        raise ValueError(f"argument 'max_time' must be a finite number > 0 (seconds), got {max_time!r}")


def _config(solver) -> dict:
    return {"name": solver.name, **{f.name: getattr(solver, f.name) for f in dataclasses.fields(solver)}}


def _stop(rec, target, target_key, mode):
    if target is None:
        return False
    v = rec.get(target_key)
    if v is None or not math.isfinite(v):
        return False
    return v <= target if mode == "min" else v >= target


def run(solver: StochasticSolver, benchmark: Benchmark, *, seed: int | Any = 0, max_iter: int | None = None,
        max_time: float | None = None, eval_every: int = 100, metrics: Callable | None = None,
        stop_at: float | None = None, stop_key: str = "outer", stop_mode: str = "min",
        progress: bool | None = None, json_path=None, init_state: SolverState | None = None,
        min_interval: float = 0.0, log_interval: float = 0.0) -> RunResult:
    """Run ``solver`` on ``benchmark`` until ``max_iter`` iterations or ``max_time`` seconds of solver work.

    Args:
      solver: a solver of :mod:`bilevel.stochastic.solvers`.
      benchmark: a :class:`~bilevel.stochastic.problems.Benchmark` (problem, start point, metrics).
      seed: int seed or PRNG key of the run (mini-batches, random truncations).
      max_iter, max_time: the budget (at least one). Iterations are done in chunks of ``eval_every``,
        so the run stops at the first checkpoint at or past the budget.
      eval_every: iterations between two checkpoints (one compiled ``lax.scan`` chunk).
      metrics: ``metrics(z, x) -> dict`` (default ``benchmark.metrics``), evaluated untimed.
      stop_at: optional early stop once ``metrics[stop_key]`` is ``<=`` (``stop_mode="min"``) or
        ``>=`` (``"max"``) this value.
      progress: show a tqdm bar (default: only on an interactive terminal, never under ``$CI``).
      json_path: if given, the result is also written there as JSON (atomically).
      init_state: resume from this state instead of ``solver.init(...)``.
      min_interval: record a checkpoint (evaluate the metrics) only once at least this many seconds of
        solver time have passed since the last one (chunks still run every ``eval_every``
        iterations); the last chunk is always recorded. Bounds the evaluation cost of long runs.
      log_interval: also wait until the solver time has grown by this fraction since the last
        checkpoint (checkpoints on a geometric time grid: a time to target is then known to within
        this relative precision at every scale, with ``log(T / min_interval) / log(1 + log_interval)``
        checkpoints in all).

    Returns:
      A :class:`RunResult`; a run whose objective becomes NaN/inf stops with ``diverged=True``.
    """
    if not isinstance(solver, StochasticSolver):
        raise TypeError(f"argument 'solver' must be a StochasticSolver, got {type(solver).__name__}")
    if not isinstance(benchmark, Benchmark):
        raise TypeError(f"argument 'benchmark' must be a bilevel.stochastic.problems.Benchmark, got "
                        f"{type(benchmark).__name__}")
    _check_budget(max_iter, max_time)
    if stop_mode not in ("min", "max"):
        raise ValueError(f"argument 'stop_mode' must be 'min' or 'max', got {stop_mode!r}")
    metrics = benchmark.metrics if metrics is None else metrics
    problem = benchmark.problem
    state = init_state if init_state is not None else solver.init(problem, benchmark.inner0, benchmark.outer0, seed)
    chunk = jax.jit(make_chunk(solver, eval_every))
    t0 = time.perf_counter()
    compiled = chunk.lower(problem, state).compile()
    compile_s = time.perf_counter() - t0
    iteration, elapsed = int(state.step), 0.0
    checkpoints = [_record(benchmark, solver, state, iteration, elapsed, metrics)]
    diverged = False
    bar = _progress(max_iter, f"{solver.name} on {problem.name}", None if progress is None else not progress)
    try:
        while True:
            if max_iter is not None and iteration >= max_iter:
                break
            if max_time is not None and elapsed >= max_time:
                break
            if _stop(checkpoints[-1], stop_at, stop_key, stop_mode):
                break
            t0 = time.perf_counter()
            state = jax.block_until_ready(compiled(problem, state))
            elapsed += time.perf_counter() - t0
            iteration += eval_every
            bar.update(eval_every)
            last_chunk = (max_iter is not None and iteration >= max_iter) or (max_time is not None and elapsed >= max_time)
            t_last = checkpoints[-1]["time"]
            if elapsed - t_last < max(min_interval, log_interval * t_last) and not last_chunk:
                continue
            rec = _record(benchmark, solver, state, iteration, elapsed, metrics)
            checkpoints.append(rec)
            bar.set_postfix({k: f"{rec[k]:.4g}" for k in ("outer",) if k in rec}, refresh=False)
            if not _finite(rec):
                diverged = True
                break
    finally:
        bar.close()
    result = RunResult(solver.name, problem.name, seed if isinstance(seed, int) else -1, _config(solver),
                       checkpoints, compile_s, diverged, False, state)
    if json_path is not None:
        write_json(json_path, result.to_dict())
    return result


def run_seeds(solver: StochasticSolver, benchmark: Benchmark, seeds: Sequence[int], *, vmap: bool = False,
              **kwargs) -> list[RunResult]:
    """:func:`run` for each seed (``vmap=False``: sequentially, each timed alone), or all seeds in one
    ``vmap``-ed program (``vmap=True``: the recorded ``time`` is the joint run's)."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("argument 'seeds' must not be empty")
    if not vmap:
        return [run(solver, benchmark, seed=s, **kwargs) for s in seeds]
    max_iter, max_time = kwargs.get("max_iter"), kwargs.get("max_time")
    _check_budget(max_iter, max_time)
    eval_every = kwargs.get("eval_every", 100)
    metrics = kwargs.get("metrics") or benchmark.metrics
    problem = benchmark.problem
    keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
    states = jax.vmap(lambda k: solver.init(problem, benchmark.inner0, benchmark.outer0, k))(keys)
    chunk = jax.jit(jax.vmap(make_chunk(solver, eval_every), in_axes=(None, 0)))
    t0 = time.perf_counter()
    compiled = chunk.lower(problem, states).compile()
    compile_s = time.perf_counter() - t0
    pick = lambda tree, i: jax.tree_util.tree_map(lambda a: a[i], tree)
    curves = [[_record(benchmark, solver, pick(states, i), 0, 0.0, metrics)] for i in range(len(seeds))]
    iteration, elapsed = 0, 0.0
    diverged = [False] * len(seeds)
    bar = _progress(max_iter, f"{solver.name} x{len(seeds)} seeds", None if kwargs.get("progress") is None
                    else not kwargs.get("progress"))
    try:
        while not ((max_iter is not None and iteration >= max_iter) or (max_time is not None and elapsed >= max_time)):
            t0 = time.perf_counter()
            states = jax.block_until_ready(compiled(problem, states))
            elapsed += time.perf_counter() - t0
            iteration += eval_every
            bar.update(eval_every)
            for i in range(len(seeds)):
                if not diverged[i]:
                    rec = _record(benchmark, solver, pick(states, i), iteration, elapsed, metrics)
                    curves[i].append(rec)
                    diverged[i] = not _finite(rec)
            if all(diverged):
                break
    finally:
        bar.close()
    return [RunResult(solver.name, problem.name, s, _config(solver), curves[i], compile_s, diverged[i], True,
                      pick(states, i)) for i, s in enumerate(seeds)]


def time_to_target(result: RunResult | dict, target: float, key: str = "outer", mode: str = "min"):
    """Solver seconds until ``checkpoint[key]`` first reaches ``target`` (``<=`` for ``mode="min"``,
    ``>=`` for ``"max"``); ``None`` if never."""
    checkpoints = result.checkpoints if isinstance(result, RunResult) else result["checkpoints"]
    for c in checkpoints:
        v = c.get(key)
        if v is None or not math.isfinite(v):
            continue
        if (v <= target) if mode == "min" else (v >= target):
            return float(c["time"])
    return None
