r"""Learn learning-rate and weight-decay schedules of a small MLP by hypergradients through training.

Inner problem: a tanh MLP (:mod:`bilevel.problems.mlp`, one hidden layer) trained on scikit-learn's 8x8
digits (pixels / 16, 10 classes) by ``T`` steps of full-batch gradient descent from a fixed
initialization :math:`\theta_0`, with a per-step learning rate :math:`\eta_t` and weight decay
:math:`\lambda_t`:

.. math::

    \theta_{t+1} = \theta_t - \eta_t \, \nabla_\theta\Big[\tfrac1n \sum_i \mathrm{CE}(f_{\theta_t}(x_i), y_i)
    + \tfrac{\lambda_t}{2} \sum_{\text{kernels}} \lVert K \rVert^2\Big], \qquad t = 0, \dots, T-1 .

The schedules are piecewise constant over blocks of ``--block`` steps and parametrized by their logs,
:math:`\eta_t = \exp(a_{\lfloor t/B \rfloor})`, :math:`\lambda_t = \exp(c_{\lfloor t/B \rfloor})`.
Outer problem: :math:`\min_{a, c} \mathcal L_\text{val}(\theta_T(a, c))`, the validation cross-entropy
after training, by reverse-mode differentiation *through the whole unrolled training run* (Maclaurin,
Duvenaud & Adams, "Gradient-based hyperparameter optimization through reversible learning", ICML 2015;
Franceschi et al., ICML 2017): :func:`bilevel.unroll.unrolled_solve` when that module is available,
else a plain :func:`jax.lax.scan` differentiated by JAX. The outer optimizer is ``optax.adam`` on the
log-schedules with gradient-norm clipping, projected onto a box of sane values after each step; the
hypergradient of long unrolled runs is known to be chaotic when the learning rates get large, so the
schedule with the best validation loss seen is kept (selection on the validation set only).

Reported: validation/test loss and accuracy with the initial (constant) schedule, the learned schedule,
and the best constant schedule on a small grid; the learned schedule applied to other initializations
(it was tuned for one). Outputs (``--out``, default ``runs/hpo_schedules``): ``results.json``,
``schedules.png`` (initial vs learned learning rate and weight decay per step) and ``outer_curve.png``.

Usage::

    python -m experiments.hpo_schedules                 # T = 100 inner steps, 150 outer steps
    python -m experiments.hpo_schedules --quick --out /tmp/sched
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from experiments import _cli

__all__ = ["DigitsSplit", "load_digits_split", "unroll_backend", "expand_schedule", "build_parser", "run", "main"]

CONSTANT_LR_GRID = (0.1, 0.3, 1.0, 3.0)


class DigitsSplit(NamedTuple):
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray


def load_digits_split(seed: int = 0, n_train: int = 500, n_val: int = 500) -> DigitsSplit:
    """Digits (pixels / 16) split by a permutation from ``seed``: train, validation, rest for test."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float64) / 16.0
    y = y.astype(np.int32)
    n = len(y)
    if n_train < 10 or n_val < 10 or n_train + n_val >= n:
        raise ValueError(f"need n_train, n_val >= 10 and n_train + n_val < {n}; got {n_train}, {n_val}")
    perm = np.random.default_rng(seed).permutation(n)
    tr, va, te = perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]
    return DigitsSplit(X[tr], y[tr], X[va], y[va], X[te], y[te])


def unroll_backend() -> tuple[str, Callable]:
    """``(name, unrolled_solve)``: :func:`bilevel.unroll.unrolled_solve` if the module provides it, else an
    equivalent ``jax.lax.scan`` (``step_fn(state, t, *args) -> state`` for ``t = 0 .. steps-1``)."""
    try:
        from bilevel.unroll import unrolled_solve

        return "bilevel.unroll.unrolled_solve", unrolled_solve
    except ImportError:  # pragma: no cover - depends on the checkout
        import jax
        import jax.numpy as jnp

        def scan_solve(step_fn, init_state, args=(), steps=1, checkpoint=None):
            def body(state, t):
                return step_fn(state, t, *args), None

            state, _ = jax.lax.scan(body, init_state, jnp.arange(steps, dtype=jnp.int32))
            return state

        return "jax.lax.scan", scan_solve


def expand_schedule(log_values, steps: int, block: int):
    """Per-step values ``exp(log_values[t // block])`` for ``t < steps`` (numpy or JAX arrays)."""
    idx = np.arange(steps) // block
    return np.exp(np.asarray(log_values))[idx]


# --------------------------------------------------------------------------------------------------
# command line


def build_parser():
    p = _cli.base_parser(__doc__.split("\n\n")[0], default_out="runs/hpo_schedules")
    p.add_argument("--steps", type=int, default=150, help="outer (hypergradient) steps")
    p.add_argument("--inner-steps", type=int, default=100, help="T: gradient-descent steps of training")
    p.add_argument("--block", type=int, default=5, help="inner steps per schedule value")
    p.add_argument("--hidden", type=int, default=32, help="hidden units of the MLP")
    p.add_argument("--lr", type=float, default=0.05, help="Adam learning rate on the log-schedules")
    p.add_argument("--clip", type=float, default=1.0, help="global-norm clipping of the hypergradient")
    p.add_argument("--init-lr", type=float, default=0.1, help="initial (constant) learning rate")
    p.add_argument("--init-wd", type=float, default=1e-3, help="initial (constant) weight decay")
    p.add_argument("--lr-range", type=float, nargs=2, default=(1e-3, 5.0), help="box on the learning rates")
    p.add_argument("--wd-range", type=float, nargs=2, default=(1e-6, 1.0), help="box on the weight decays")
    p.add_argument("--n-train", type=int, default=500)
    p.add_argument("--n-val", type=int, default=500)
    p.add_argument("--other-inits", type=int, default=3, help="extra initializations to evaluate the schedule on")
    p.add_argument("--no-plots", action="store_true")
    return p


def _config(args) -> dict[str, Any]:
    keys = ("seed", "steps", "inner_steps", "block", "hidden", "lr", "clip", "init_lr", "init_wd", "lr_range",
            "wd_range", "n_train", "n_val", "other_inits", "quick")
    return {k: getattr(args, k) for k in keys}


# --------------------------------------------------------------------------------------------------
# the experiment


def run(args) -> dict[str, Any]:
    """Run the experiment described by parsed ``args``; write outputs; return the results dict."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import optax

    from bilevel.problems.mlp import mlp_accuracy, mlp_init, mlp_loss

    if args.quick:
        args.steps = min(args.steps, 15)
        args.inner_steps = min(args.inner_steps, 30)
        args.hidden = min(args.hidden, 16)
        args.n_train = min(args.n_train, 300)
        args.n_val = min(args.n_val, 300)
        args.other_inits = min(args.other_inits, 1)
    T, B = args.inner_steps, args.block
    if args.steps < 1 or T < 1 or B < 1:
        raise ValueError("--steps, --inner-steps and --block must be >= 1")
    if not (0 < args.lr_range[0] <= args.init_lr <= args.lr_range[1]):
        raise ValueError("need 0 < lr_range[0] <= --init-lr <= lr_range[1]")
    if not (0 < args.wd_range[0] <= args.init_wd <= args.wd_range[1]):
        raise ValueError("need 0 < wd_range[0] <= --init-wd <= wd_range[1]")
    n_blocks = math.ceil(T / B)
    out = _cli.ensure_dir(args.out or "runs/hpo_schedules")
    config = _config(args)
    backend, unrolled_solve = unroll_backend()

    data = load_digits_split(args.seed, args.n_train, args.n_val)
    d, k = data.X_train.shape[1], 10
    Xtr, ytr, Xva, yva, Xte, yte = (jnp.asarray(a) for a in data)
    keys = jax.random.split(jax.random.PRNGKey(args.seed), 1 + args.other_inits)
    params0 = mlp_init(keys[0], d, args.hidden, k)

    def train_step(params, t, log_lr, log_wd, X, y):
        b = t // B
        grad = jax.grad(mlp_loss)(params, jnp.exp(log_wd[b]), X, y)
        lr = jnp.exp(log_lr[b])
        return jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grad)

    def train(h, p0):
        return unrolled_solve(train_step, p0, (h["log_lr"], h["log_wd"], Xtr, ytr), T)

    def val_objective(h, p0):
        params = train(h, p0)
        return mlp_loss(params, 0.0, Xva, yva), params

    bounds_lo = {"log_lr": jnp.full(n_blocks, math.log(args.lr_range[0])),
                 "log_wd": jnp.full(n_blocks, math.log(args.wd_range[0]))}
    bounds_hi = {"log_lr": jnp.full(n_blocks, math.log(args.lr_range[1])),
                 "log_wd": jnp.full(n_blocks, math.log(args.wd_range[1]))}
    optimizer = optax.chain(optax.clip_by_global_norm(args.clip), optax.adam(args.lr))

    @jax.jit
    def outer_step(h, opt_state):
        (loss, params), grad = jax.value_and_grad(val_objective, has_aux=True)(h, params0)
        updates, opt_state = optimizer.update(grad, opt_state, h)
        h_new = optax.projections.projection_box(optax.apply_updates(h, updates), bounds_lo, bounds_hi)
        return h_new, opt_state, loss, mlp_accuracy(params, Xva, yva), optax.tree_utils.tree_norm(grad)

    @jax.jit
    def evaluate(h, p0):
        params = train(h, p0)
        return {
            "train_loss": mlp_loss(params, 0.0, Xtr, ytr),
            "val_loss": mlp_loss(params, 0.0, Xva, yva),
            "val_acc": mlp_accuracy(params, Xva, yva),
            "test_loss": mlp_loss(params, 0.0, Xte, yte),
            "test_acc": mlp_accuracy(params, Xte, yte),
        }

    def metrics(h, p0=params0):
        return {key: float(v) for key, v in evaluate(h, p0).items()}

    def constant(lr, wd):
        return {"log_lr": jnp.full(n_blocks, math.log(lr)), "log_wd": jnp.full(n_blocks, math.log(wd))}

    h0 = constant(args.init_lr, args.init_wd)
    t0 = time.perf_counter()
    initial = metrics(h0)
    eval_first_s = time.perf_counter() - t0
    grid = [dict(lr=lr, wd=args.init_wd, **metrics(constant(lr, args.init_wd))) for lr in CONSTANT_LR_GRID
            if args.lr_range[0] <= lr <= args.lr_range[1]]
    best_constant = min(grid, key=lambda g: g["val_loss"]) if grid else None

    # ---- hypergradient descent on the log-schedules
    h, opt_state = h0, optimizer.init(h0)
    best = {"val_loss": math.inf, "step": -1, "h": h0}
    curve = {"step": [], "val_loss": [], "val_acc": [], "hypergrad_norm": []}
    step_times = []
    bar = _cli.progress(range(args.steps), desc="schedule steps", total=args.steps)
    for step in bar:
        t = time.perf_counter()
        h_new, opt_state, loss, acc, gnorm = outer_step(h, opt_state)
        loss = float(loss)  # validation loss of the schedule *before* this update; waits for the step
        step_times.append(time.perf_counter() - t)
        if loss < best["val_loss"]:
            best = {"val_loss": loss, "step": step, "h": h}
        curve["step"].append(step)
        curve["val_loss"].append(loss)
        curve["val_acc"].append(float(acc))
        curve["hypergrad_norm"].append(float(gnorm))
        bar.set_postfix(val_loss=f"{loss:.4f}", val_acc=f"{float(acc):.3f}")
        h = h_new
    bar.close()
    final = metrics(h)
    if final["val_loss"] < best["val_loss"]:
        best = {"val_loss": final["val_loss"], "step": args.steps, "h": h}
    learned = metrics(best["h"])

    other_inits = []
    for key in keys[1:]:
        p0 = mlp_init(key, d, args.hidden, k)
        other_inits.append({"initial": metrics(h0, p0), "learned": metrics(best["h"], p0)})

    schedules = {
        "initial_lr": expand_schedule(h0["log_lr"], T, B),
        "initial_wd": expand_schedule(h0["log_wd"], T, B),
        "learned_lr": expand_schedule(best["h"]["log_lr"], T, B),
        "learned_wd": expand_schedule(best["h"]["log_wd"], T, B),
        "final_lr": expand_schedule(h["log_lr"], T, B),
        "final_wd": expand_schedule(h["log_wd"], T, B),
    }
    later = step_times[1:] if len(step_times) > 1 else step_times
    timing = {
        "eval_first_call_s": eval_first_s,
        "outer_step_first_call_s": step_times[0],
        "outer_step_median_ms": 1e3 * float(np.median(later)),
    }
    figures = {}
    if not args.no_plots:
        figures = _plots(out, schedules, curve, initial, learned, best_constant, best["step"])

    results = {
        "experiment": "hpo_schedules",
        "config": config,
        "unroll_backend": backend,
        "data": {"n_train": len(data.y_train), "n_val": len(data.y_val), "n_test": len(data.y_test)},
        "initial": initial,
        "learned": learned,
        "final_iterate": final,
        "best_step": best["step"],
        "best_constant": best_constant,
        "constant_grid": grid,
        "val_loss_improvement": initial["val_loss"] - learned["val_loss"],
        "other_inits": other_inits,
        "schedules": schedules,
        "curve": curve,
        "timing": timing,
        "figures": {name: str(p) for name, p in figures.items()},
    }
    _cli.write_json_atomic(out / "results.json", results)
    _report(results, out)
    return results


def _report(results, out):
    i, l, c = results["initial"], results["learned"], results["best_constant"]
    cfg = results["config"]
    rows = [(f"initial (lr {cfg['init_lr']:g}, wd {cfg['init_wd']:g})", i["val_loss"], i["val_acc"], i["test_loss"], i["test_acc"])]
    if c is not None:
        rows.append((f"best constant lr on grid ({c['lr']:g})", c["val_loss"], c["val_acc"], c["test_loss"], c["test_acc"]))
    rows.append((f"learned schedule (outer step {results['best_step']})", l["val_loss"], l["val_acc"], l["test_loss"], l["test_acc"]))
    print(_cli.format_table(rows, ["", "val loss", "val acc", "test loss", "test acc"]))
    for j, o in enumerate(results["other_inits"]):
        print(f"other init {j + 1}: test acc {o['initial']['test_acc']:.4f} -> {o['learned']['test_acc']:.4f}, "
              f"val loss {o['initial']['val_loss']:.4f} -> {o['learned']['val_loss']:.4f}")
    t = results["timing"]
    print(f"hypergradient via {results['unroll_backend']}; outer step: first (compile + run) "
          f"{t['outer_step_first_call_s']:.1f} s, median {t['outer_step_median_ms']:.1f} ms")
    print(f"results: {out / 'results.json'}")
    for p in results["figures"].values():
        print(f"figure:  {p}")


def _plots(out: Path, schedules, curve, initial, learned, best_constant, best_step) -> dict[str, Path]:
    plt = _cli.pyplot()
    figures = {}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    t = np.arange(len(schedules["initial_lr"]))
    for ax, name, label in ((axes[0], "lr", "learning rate"), (axes[1], "wd", "weight decay")):
        ax.step(t, schedules[f"initial_{name}"], where="post", color="gray", ls=":", label="initial")
        ax.step(t, schedules[f"learned_{name}"], where="post", color="C0", label="learned")
        ax.set_yscale("log")
        ax.set_xlabel("inner (training) step t")
        ax.set_ylabel(label)
        ax.set_title(f"{label} schedule")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    figures["schedules"] = _cli.save_figure(fig, out / "schedules.png")

    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(curve["step"], curve["val_loss"], label="learned schedule (current iterate)")
    ax.axhline(initial["val_loss"], color="gray", ls=":", label="initial schedule")
    if best_constant is not None:
        ax.axhline(best_constant["val_loss"], color="C1", ls="--", label=f"best constant lr ({best_constant['lr']:g})")
    ax.axvline(best_step, color="C2", ls="-.", alpha=0.6, label="kept (best validation)")
    ax.set_xlabel("outer step")
    ax.set_ylabel("validation cross-entropy after training")
    ax.set_yscale("log")
    ax.set_title("hypergradient through the unrolled training run")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    figures["outer_curve"] = _cli.save_figure(fig, out / "outer_curve.png")
    return figures


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    return run(args)


if __name__ == "__main__":
    main()
