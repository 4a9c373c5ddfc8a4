"""Benchmark (not a test): one Witches' Brew crafting step in JAX against the same step in PyTorch.

The step (Geiping et al. 2021): augment a batch of ``--poisons`` poisons (random crop of 4 pixels and a
horizontal flip, fresh per step), take the poisons' training gradient in the network's parameters
(cross-entropy summed), its cosine distance to the target's adversarial gradient (precomputed), the
gradient of that distance in the poisons (a second-order quantity), and a signed-Adam step projected
onto the l_inf ball and the pixel box. JAX: :func:`poisoning.attacks.geiping2021.gradient_matching_loss`
under one ``jit``; PyTorch: ``autograd.grad(create_graph=True)`` then ``backward``, eager. Both in
inference mode (BatchNorm on running statistics), same ResNet-18 (``experiments.torch_baselines``),
random weights and images (throughput does not depend on them).

Each side runs in its own child process; the JAX time excludes compilation (reported apart) and
PyTorch's excludes two warm-up steps. Printed: seconds per step (best of ``--repeats`` runs of
``--steps`` steps), the ratio PyTorch time / JAX time (> 1: JAX faster), and memory per poison batch
(JAX: the compiled step's temporary and argument bytes from XLA's memory analysis, or the device's peak
on a GPU; PyTorch: the peak resident-set growth on CPU, ``max_memory_allocated`` on CUDA). Goals of
issue 11: >= 1.0x on CPU; on a GPU, a whole crafting run (500 poisons, 240 steps) >= 3x faster than
PyTorch's (``--poisons 500 --steps 240 --repeats 1``).

Usage::

    python -m experiments.bench_brew                       # ResNet-18, 25 poisons, 3 x 5 steps
    python -m experiments.bench_brew --poisons 500 --steps 240 --repeats 1    # a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

EPS, LR = 16 / 255, 0.025


def _data(poisons: int, seed: int):
    rng = np.random.default_rng(seed)
    bases = rng.uniform(size=(poisons, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 10, poisons).astype(np.int32)
    target = rng.uniform(size=(1, 32, 32, 3)).astype(np.float32)
    return bases, labels, target, np.asarray([3], np.int32)


def run_jax(poisons: int, steps: int, repeats: int, seed: int) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    from poisoning.attacks.geiping2021 import gradient_matching_loss, parameter_gradient
    from poisoning.models import get_model
    from poisoning.training import Augment

    bases, labels, target, adv = (jnp.asarray(a) for a in _data(poisons, seed))
    model = get_model("resnet18", 10)
    v = model.init(jax.random.key(seed), bases[:1], train=False)

    def apply_fn(v_, x):
        return model.apply(v_, x, train=False)

    tg = parameter_gradient(apply_fn, v, target, adv)
    aug = Augment(crop_padding=4, flip=True)
    opt = optax.adam(LR)

    def one(carry, key):
        delta, state = carry
        loss = lambda d: gradient_matching_loss(apply_fn, v, bases + d, labels, target, adv, augment=aug, key=key,
                                                target_grad=tg)
        val, g = jax.value_and_grad(loss)(delta)
        upd, state = opt.update(jnp.sign(g), state, delta)
        delta = jnp.clip(bases + jnp.clip(delta + upd, -EPS, EPS), 0, 1) - bases
        return (delta, state), val

    @jax.jit
    def run(delta, state, key):
        return jax.lax.scan(one, (delta, state), jax.random.split(key, steps))

    delta = jnp.zeros_like(bases)
    state = opt.init(delta)
    t = time.perf_counter()
    compiled = run.lower(delta, state, jax.random.key(0)).compile()
    compile_s = time.perf_counter() - t
    mem = compiled.memory_analysis()
    times = []
    for r in range(repeats + 1):
        t = time.perf_counter()
        out = compiled(delta, state, jax.random.key(r))
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t)
    dev = jax.devices()[0]
    stats = dev.memory_stats() if dev.platform != "cpu" else None
    peak = (stats or {}).get("peak_bytes_in_use")
    if peak is None and mem is not None:
        peak = int(mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes)
    return {"seconds_per_step": min(times[1:]) / steps, "compile_s": compile_s, "peak_bytes": peak,
            "device": str(dev), "loss_end": float(out[1][-1])}


def run_torch(poisons: int, steps: int, repeats: int, seed: int) -> dict:
    import torch
    import torch.nn.functional as F

    from experiments import torch_baselines

    device = "cuda" if torch.cuda.is_available() else "cpu"
    bases, labels, target, adv = (torch.as_tensor(a).to(device) for a in _data(poisons, seed))
    bases, target = bases.permute(0, 3, 1, 2).contiguous(), target.permute(0, 3, 1, 2).contiguous()
    labels, adv = labels.long(), adv.long()
    model = torch_baselines.resnet18(10).to(device).eval()
    params = [p for p in model.parameters()]
    tg = [g.detach() for g in torch.autograd.grad(F.cross_entropy(model(target), adv, reduction="sum"), params)]
    tg_norm = torch.sqrt(sum((g * g).sum() for g in tg))
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def augment(x):
        n = x.shape[0]
        xp = F.pad(x, (4, 4, 4, 4))
        off = torch.randint(0, 9, (n, 2), generator=gen)
        x = torch.stack([xp[i, :, off[i, 0]:off[i, 0] + 32, off[i, 1]:off[i, 1] + 32] for i in range(n)])
        flip = (torch.rand(n, generator=gen) < 0.5).to(device)
        return torch.where(flip[:, None, None, None], x.flip(3), x)

    def run(delta, opt):
        for _ in range(steps):
            opt.zero_grad()
            loss = F.cross_entropy(model(augment(bases + delta)), labels, reduction="sum")
            grads = torch.autograd.grad(loss, params, create_graph=True)
            dot = sum((g * t).sum() for g, t in zip(grads, tg))
            norm = torch.sqrt(sum((g * g).sum() for g in grads))
            dist = 1 - dot / (norm * tg_norm)
            dist.backward()
            delta.grad.sign_()
            opt.step()
            with torch.no_grad():
                delta.copy_(torch.clamp(bases + torch.clamp(delta, -EPS, EPS), 0, 1) - bases)
        if device == "cuda":
            torch.cuda.synchronize()
        return float(dist)

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    delta = torch.zeros_like(bases, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=LR)
    saved = steps
    steps = 2
    run(delta, opt)  # warm-up
    steps = saved
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        last = run(delta, opt)
        times.append(time.perf_counter() - t)
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024)
    return {"seconds_per_step": min(times) / steps, "peak_bytes": int(peak), "device": device,
            "threads": torch.get_num_threads(), "loss_end": last}


def _child(argv):
    p = argparse.ArgumentParser()
    p.add_argument("framework", choices=("jax", "torch"))
    p.add_argument("--poisons", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--seed", type=int)
    a = p.parse_args(argv)
    fn = run_jax if a.framework == "jax" else run_torch
    print("RESULT " + json.dumps(fn(a.poisons, a.steps, a.repeats, a.seed)), flush=True)


def _spawn(framework, args) -> dict:
    cmd = [sys.executable, "-m", "experiments.bench_brew", "--child", framework, "--poisons", str(args.poisons),
           "--steps", str(args.steps), "--repeats", str(args.repeats), "--seed", str(args.seed)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"bench_brew child {framework!r} failed:\n{out.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return _child(argv[1:])
    from experiments import _cli
    from experiments.torch_baselines import torch_available

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--poisons", type=int, default=25, help="poisons per crafting step")
    p.add_argument("--steps", type=int, default=5, help="steps per timed run")
    p.add_argument("--repeats", type=int, default=3, help="timed runs (the best is kept)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench_brew")
    p.add_argument("--no-torch", action="store_true", help="JAX side only")
    args = p.parse_args(argv)
    for flag in ("poisons", "steps", "repeats"):
        if getattr(args, flag) < 1:
            raise SystemExit(f"--{flag} must be >= 1")
    load0 = os.getloadavg()
    res = {"poisons": args.poisons, "steps": args.steps, "repeats": args.repeats, "load_start": load0,
           "jax": _spawn("jax", args)}
    if torch_available() and not args.no_torch:
        res["torch"] = _spawn("torch", args)
        res["ratio_torch_time_over_jax_time"] = res["torch"]["seconds_per_step"] / res["jax"]["seconds_per_step"]
    elif not args.no_torch:
        print("PyTorch is not installed (pip install torch==2.13.0, the 'bench' extra): JAX side only")
    res["load_end"] = os.getloadavg()
    rows = [[k, f"{v['seconds_per_step']:.3f}", "-" if v.get("peak_bytes") is None else f"{v['peak_bytes'] / 2**20:.0f}",
             v["device"]] for k, v in res.items() if k in ("jax", "torch")]
    print(_cli.format_table(rows, ["framework", "s / step", "peak MiB / poison batch", "device"]))
    if "ratio_torch_time_over_jax_time" in res:
        print(f"JAX is {res['ratio_torch_time_over_jax_time']:.2f}x PyTorch's speed "
              f"(goal on CPU >= 1.0x); load average {load0[0]:.1f} -> {res['load_end'][0]:.1f}")
    _cli.write_json_atomic(_cli.ensure_dir(args.out) / "results.json", res)
    return res


if __name__ == "__main__":
    main()
