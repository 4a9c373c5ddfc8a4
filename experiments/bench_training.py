"""Benchmark (not a test): training throughput of the JAX engine against the same model in PyTorch.

Two workloads of the issue, each one "epoch" of ``--steps`` mini-batches of ``--batch-size`` images
(the training set is cut to ``steps * batch_size`` images so that an epoch is exactly that):

- ``badnets``: the BadNets CNN (Gu et al. 2017) on MNIST (28x28x1, 281,034 parameters);
- ``resnet18``: the CIFAR ResNet-18 (11,173,962 parameters) on CIFAR-10 (32x32x3).

Same optimizer on both sides: SGD, learning rate 0.01, momentum 0.9, weight decay 5e-4 (coupled,
``torch.optim.SGD`` semantics), softmax cross-entropy, batches drawn from a seeded permutation of
in-memory arrays (no data-loader on either side), no augmentation. JAX runs
:func:`poisoning.training.train_epochs` (``lax.scan`` over the steps inside one ``jit``); PyTorch runs
the usual eager loop (``zero_grad``, ``backward``, ``step``) in NCHW (its default) and in
``channels_last``.

Variants (``--variants``): each framework with all cores and with one thread (XLA:CPU:
``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1``; PyTorch:
``torch.set_num_threads(1)``), because on a shared machine OpenMP's two spinning threads can be ten
times slower than one. The headline ratio is best JAX variant / best PyTorch variant (each side at its
best setting); the same-threads ratio and images per CPU-second (a measure that load on a shared
machine disturbs less) are printed too. Each measurement runs in its own child process (the two
runtimes' thread pools never compete); the JAX time excludes compilation (reported apart) and
PyTorch's excludes 3 warm-up steps. Images per second are ``steps * batch_size / seconds``, the best
and the median of ``--repeats`` runs (and ``--rounds`` interleaved rounds). The load average is
printed at the start and the end.

On a GPU (``--bf16`` for bfloat16 compute on both sides) the same script runs unchanged: JAX takes
its default backend, PyTorch CUDA when its build has it.

Data: MNIST / CIFAR-10 from ``--data-dir`` / ``$BILEVEL_DATA_DIR`` when present, else random
images of the same shape (throughput does not depend on the pixels; the output says which).
PyTorch is optional (``pip install torch==2.13.0``, the CPU build); without it only the JAX side
runs and the script says so.

Usage::

    python -m experiments.bench_training                          # both models, JAX vs PyTorch
    python -m experiments.bench_training --models badnets --steps 400 --repeats 3
    python -m experiments.bench_training --bf16                   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

DEFAULT_STEPS = {"badnets": 400, "resnet18": 10}
DATASET = {"badnets": "mnist", "resnet18": "cifar10"}
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4


# ----------------------------------------------------------------------------------------------------
# data (both children load the same images)
# ----------------------------------------------------------------------------------------------------
def load_images(model: str, n: int, data_dir, seed: int = 0):
    """``(x, y, source)``: ``n`` NHWC float32 images in [0, 1] and labels for ``model``'s data set."""
    rng = np.random.default_rng(seed)
    dataset = DATASET[model]
    x = y = None
    source = "random"
    try:
        from poisoning import datasets

        if dataset == "mnist":
            ds = datasets.load_mnist(data_dir, flatten=False)
            x, y = ds.X_train[..., None], ds.y_train
        else:
            ds = datasets.load_cifar10(data_dir)
            x, y = ds.X_train, ds.y_train
        source = dataset
    except (FileNotFoundError, ImportError):
        pass
    if x is None:
        shape = (28, 28, 1) if dataset == "mnist" else (32, 32, 3)
        return rng.random((n, *shape), dtype=np.float32), rng.integers(0, 10, n).astype(np.int32), source
    idx = rng.choice(len(x), size=n, replace=n > len(x))
    xs = np.asarray(x[idx])
    xs = xs.astype(np.float32) / 255.0 if xs.dtype == np.uint8 else xs.astype(np.float32)
    return xs, np.asarray(y[idx]).astype(np.int32), source


# ----------------------------------------------------------------------------------------------------
# children
# ----------------------------------------------------------------------------------------------------
def run_jax(model_name: str, steps: int, batch_size: int, repeats: int, bf16: bool, data_dir, seed: int) -> dict:
    import jax
    import jax.numpy as jnp

    from poisoning.models import count_params, default_input_shape, get_model
    from poisoning.training import TrainConfig, init_state, train_epochs

    x, y, source = load_images(model_name, steps * batch_size, data_dir, seed)
    model = get_model(model_name, 10)
    cfg = TrainConfig(epochs=1, batch_size=batch_size, optimizer="sgd", learning_rate=LR, momentum=MOMENTUM,
                      weight_decay=WEIGHT_DECAY, compute_dtype="bfloat16" if bf16 else "float32", seed=seed)
    x, y = jax.device_put(jnp.asarray(x)), jax.device_put(jnp.asarray(y))
    state0 = init_state(model, cfg, x, jax.random.key(seed), steps_per_epoch=steps)
    t0 = time.perf_counter()
    state, metrics = train_epochs(model, state0, (x, y), cfg, 1)
    jax.block_until_ready(state)
    first = time.perf_counter() - t0
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        state, metrics = train_epochs(model, state0, (x, y), cfg, 1)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    seconds = float(np.median(times))
    return {
        "framework": f"jax {jax.__version__}",
        "params": count_params(model, default_input_shape(model_name)),
        "seconds": seconds,
        "times": times,
        "compile_s": max(first - seconds, 0.0),
        "images_per_s": steps * batch_size / seconds,
        "best_images_per_s": steps * batch_size / min(times),
        "images_per_cpu_s": steps * batch_size / min(cpu),
        "last_loss": float(metrics["loss"][-1]),
        "device": str(jax.devices()[0]),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "bf16": bf16,
        "data": source,
    }


def run_torch(model_name: str, steps: int, batch_size: int, repeats: int, bf16: bool, data_dir, seed: int,
              channels_last: bool, threads: int) -> dict:
    from experiments import torch_baselines

    x, y, source = load_images(model_name, steps * batch_size, data_dir, seed)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = torch_baselines.time_training(
        model_name, x, y, steps=steps, batch_size=batch_size, learning_rate=LR, momentum=MOMENTUM,
        weight_decay=WEIGHT_DECAY, threads=threads, channels_last=channels_last, bf16=bf16, device=device,
        repeats=repeats, seed=seed)
    out["data"] = source
    return out


VARIANTS = {
    # name: (framework, layout, threads: "all" or "one")
    "jax": ("jax", None, "all"),
    "jax_1thread": ("jax", None, "one"),
    "torch_nchw": ("torch", "nchw", "all"),
    "torch_channels_last": ("torch", "channels_last", "all"),
    "torch_nchw_1thread": ("torch", "nchw", "one"),
    "torch_channels_last_1thread": ("torch", "channels_last", "one"),
}
ONE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def _child(argv) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("framework", choices=("jax", "torch", "torch_cl"))
    p.add_argument("model")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--data-dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    if a.framework == "jax":
        out = run_jax(a.model, a.steps, a.batch_size, a.repeats, a.bf16, a.data_dir, a.seed)
    else:
        out = run_torch(a.model, a.steps, a.batch_size, a.repeats, a.bf16, a.data_dir, a.seed,
                        a.framework == "torch_cl", a.threads)
    print("RESULT " + json.dumps(out), flush=True)


def _spawn(variant, model, args, cores) -> dict:
    framework, layout, threads = VARIANTS[variant]
    n_threads = 1 if threads == "one" else cores
    kind = "jax" if framework == "jax" else ("torch_cl" if layout == "channels_last" else "torch")
    cmd = [sys.executable, "-m", "experiments.bench_training", "--one", kind, model,
           "--steps", str(args.steps_for[model]), "--batch-size", str(args.batch_size),
           "--repeats", str(args.repeats), "--seed", str(args.seed), "--threads", str(n_threads)]
    if args.bf16:
        cmd.append("--bf16")
    if args.data_dir:
        cmd += ["--data-dir", str(args.data_dir)]
    env = dict(os.environ)
    if framework == "jax" and threads == "one":
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + ONE_THREAD_XLA).strip()
    if framework == "torch":
        env["OMP_NUM_THREADS"] = str(n_threads)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            out = json.loads(line[len("RESULT "):])
            out["threads_requested"] = n_threads
            return out
    raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


# ----------------------------------------------------------------------------------------------------
# parent
# ----------------------------------------------------------------------------------------------------
def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--one"]:
        _child(argv[1:])
        return {}
    from experiments._cli import base_parser, format_table, resolve_data_dir, write_json_atomic
    from experiments.torch_baselines import torch_available

    p = base_parser(__doc__.splitlines()[0], default_out="runs/bench_training")
    p.add_argument("--models", nargs="+", default=["badnets", "resnet18"], choices=sorted(DATASET))
    p.add_argument("--steps", type=int, default=None, help="steps per model (default: badnets 400, resnet18 10)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2, help="timed runs per measurement (best and median kept)")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds over all variants (a shared machine)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 compute on both sides (accelerators)")
    p.add_argument("--no-torch", action="store_true", help="JAX side only")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = p.parse_args(argv)
    if args.quick:
        args.models = ["badnets"]
        args.steps = args.steps or 20
        args.variants = ["jax", "torch_nchw"]
        args.repeats = 1
    args.steps_for = {m: args.steps or DEFAULT_STEPS[m] for m in args.models}
    args.data_dir = resolve_data_dir(args.data_dir)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    have_torch = torch_available() and not args.no_torch
    if not have_torch and not args.no_torch:
        print("PyTorch is not installed: only the JAX side runs. Install the optional baseline with\n"
              "    pip install torch==2.13.0   (the CPU build; the 'bench' extra)\n", flush=True)
    variants = [v for v in args.variants if have_torch or VARIANTS[v][0] == "jax"]
    print(f"cores usable: {cores}. Threads: 'all' = XLA:CPU's default pool (one per core) / "
          f"torch.set_num_threads({cores}); '1thread' = XLA flags {ONE_THREAD_XLA!r} / torch.set_num_threads(1). "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r} (+ the bilevel work-around flag unless "
          f"BILEVEL_KEEP_XLA_FLAGS=1). Load average at start: {_load()}", flush=True)
    results = {"cores": cores, "batch_size": args.batch_size, "bf16": args.bf16, "load_start": _load(),
               "optimizer": {"name": "sgd", "lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY},
               "models": {}}
    rows = []
    for model in args.models:
        runs: dict[str, list] = {v: [] for v in variants}
        for _ in range(args.rounds):
            for v in variants:
                runs[v].append(_spawn(v, model, args, cores))
        entry = {"steps": args.steps_for[model], "variants": {}}
        for v, rs in runs.items():
            best = max(r.get("best_images_per_s", r["images_per_s"]) for r in rs)
            entry["variants"][v] = {"best_images_per_s": best,
                                    "median_images_per_s": float(np.median([r["images_per_s"] for r in rs])),
                                    "images_per_cpu_s": max(r.get("images_per_cpu_s", 0.0) for r in rs),
                                    "runs": rs}
        jax_best = max(entry["variants"][v]["best_images_per_s"] for v in variants if VARIANTS[v][0] == "jax")
        row = [model, runs[variants[0]][0]["data"], args.steps_for[model]]
        row += [f"{entry['variants'][v]['best_images_per_s']:.1f}" for v in variants]
        if have_torch:
            torch_vs = [v for v in variants if VARIANTS[v][0] == "torch"]
            torch_best = max(entry["variants"][v]["best_images_per_s"] for v in torch_vs)
            entry["ratio_best_jax_vs_best_torch"] = jax_best / torch_best
            same = [v for v in torch_vs if VARIANTS[v][2] == "all"]
            if "jax" in entry["variants"] and same:
                entry["ratio_jax_vs_torch_same_threads"] = entry["variants"]["jax"]["best_images_per_s"] / max(
                    entry["variants"][v]["best_images_per_s"] for v in same)
            cpu_t = max(entry["variants"][v]["images_per_cpu_s"] for v in torch_vs)
            cpu_j = max(entry["variants"][v]["images_per_cpu_s"] for v in variants if VARIANTS[v][0] == "jax")
            entry["ratio_images_per_cpu_s"] = cpu_j / cpu_t if cpu_t else None
            row += [f"{entry['ratio_best_jax_vs_best_torch']:.2f}x",
                    f"{entry.get('ratio_jax_vs_torch_same_threads', float('nan')):.2f}x",
                    f"{entry['ratio_images_per_cpu_s']:.2f}x" if entry["ratio_images_per_cpu_s"] else "-"]
        else:
            row += ["-", "-", "-"]
        results["models"][model] = entry
        rows.append(row)
        params = {r["params"] for rs in runs.values() for r in rs}
        if len(params) != 1:
            print(f"WARNING: {model}: parameter counts differ between the variants: {sorted(params)}")
    results["load_end"] = _load()
    headers = ["model", "data", "steps"] + [f"{v} img/s" for v in variants]
    headers += ["best jax / best torch", "jax / torch (all threads)", "img per CPU-s jax / torch"]
    print(format_table(rows, headers))
    print(f"Load average at end: {_load()} (images/s: best of {args.repeats} runs x {args.rounds} rounds; the "
          f"machine may be shared, so images per CPU-second are printed too)")
    if args.out:
        path = write_json_atomic(os.path.join(args.out, "results.json"), results)
        print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
