r"""Learn one L2 weight per pixel by hypergradient descent (the bilevel core's second user).

Problem (scikit-learn's 8x8 digits, pixels / 16, 10 classes, a fixed train/validation/test split
drawn from ``--seed``):

.. math::

    \min_{\lambda \in \mathbb R^{64}_{>0}} \; \mathcal L_\text{val}\big(\theta^\star(\lambda)\big),
    \qquad \theta^\star(\lambda) = \arg\min_\theta \; \frac1n \sum_i \mathrm{CE}(x_i^\top W + b, y_i)
    + \tfrac12 \sum_j \lambda_j \lVert W_{j,:}\rVert^2 \;(+\,\tfrac{\epsilon}{2}\lVert b\rVert^2),

i.e. multinomial L2 logistic regression (:func:`bilevel.problems.logistic.multiclass_logistic_loss`)
with a per-feature penalty. The tiny intercept penalty :math:`\epsilon = 10^{-6}` removes the
softmax's shift invariance (adding a constant to every intercept changes nothing), so the inner
Hessian is positive definite and every adjoint solver, Cholesky included, applies.

Hypergradient descent: :math:`\lambda = \exp(\ell)` with ``optax.adam`` on :math:`\ell` (clipped to
``[log min_reg, log max_reg]``), each outer step one jit-compiled function that solves the inner
problem with :func:`bilevel.minimize` (``LBFGS`` or ``Newton``, warm-started from the previous
solution) and differentiates the validation cross-entropy through it with
:class:`bilevel.Implicit` (the implicit function theorem; conjugate gradients by default). Runs in
float64 (it turns on ``jax_enable_x64``). As references it also reports the initial uniform weight
and the best uniform weight of a coarse grid (chosen on validation loss, like the learned ones).

Outputs (``--out``, default ``runs/hpo_digits``): ``results.json`` (before/after metrics, the
validation curve, the learned weights, timings), ``reg_weights.png`` (the learned weights as an 8x8
image, log colour scale, next to the mean training digit) and ``val_curve.png`` (validation and
held-out test loss per outer step). ``--resume`` continues from ``checkpoint.npz`` in the output
folder; ``--quick`` runs 8 outer steps.

Usage::

    python -m experiments.hpo_digits                 # 100 outer steps
    python -m experiments.hpo_digits --quick --out /tmp/hpo
"""

from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from experiments import _cli

__all__ = [
    "INTERCEPT_REG",
    "DigitsSplit",
    "load_digits_split",
    "Logistic",
    "make_logistic",
    "build_parser",
    "run",
    "main",
]

INTERCEPT_REG = 1e-6
UNIFORM_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


# --------------------------------------------------------------------------------------------------
# data and problem


class DigitsSplit(NamedTuple):
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray


def load_digits_split(seed: int = 0, n_train: int = 600, n_val: int = 600) -> DigitsSplit:
    """scikit-learn's digits (1797 x 64, pixels scaled to [0, 1]) split by a permutation from ``seed``:
    ``n_train`` training, ``n_val`` validation and the remaining examples for test."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float64) / 16.0
    y = y.astype(np.int32)
    n = len(y)
    if n_train < 1 or n_val < 1 or n_train + n_val >= n:
        raise ValueError(f"need n_train >= 1, n_val >= 1 and n_train + n_val < {n}; got {n_train}, {n_val}")
    perm = np.random.default_rng(seed).permutation(n)
    tr, va, te = perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]
    return DigitsSplit(X[tr], y[tr], X[va], y[va], X[te], y[te])


class Logistic(NamedTuple):
    """Multinomial logistic regression with a per-feature L2 weight, params ``{"w": (d, k), "b": (k,)}``."""

    init: Any  # zero parameters
    inner_loss: Callable  # (params, reg, X, y) -> training objective (with the intercept penalty)
    data_loss: Callable  # (params, X, y) -> mean cross-entropy (no penalty)
    accuracy: Callable  # (params, X, y) -> accuracy


def make_logistic(d: int, k: int, intercept_reg: float = INTERCEPT_REG) -> Logistic:
    import jax.numpy as jnp

    from bilevel.problems.logistic import multiclass_accuracy, multiclass_init_params, multiclass_logistic_loss

    def inner_loss(params, reg, X, y):
        return multiclass_logistic_loss(params, reg, X, y) + 0.5 * intercept_reg * jnp.sum(params["b"] ** 2)

    def data_loss(params, X, y):
        return multiclass_logistic_loss(params, 0.0, X, y)

    return Logistic(multiclass_init_params(d, k), inner_loss, data_loss, multiclass_accuracy)


# --------------------------------------------------------------------------------------------------
# command line


def build_parser():
    p = _cli.base_parser(__doc__.split("\n\n")[0], default_out="runs/hpo_digits")
    p.add_argument("--steps", type=int, default=100, help="outer (hypergradient) steps")
    p.add_argument("--lr", type=float, default=0.1, help="Adam learning rate on log(reg)")
    p.add_argument("--init-reg", type=float, default=1e-2, help="initial (uniform) L2 weight of every pixel")
    p.add_argument("--min-reg", type=float, default=1e-6, help="lower clip of the L2 weights")
    p.add_argument("--max-reg", type=float, default=10.0, help="upper clip of the L2 weights")
    p.add_argument("--n-train", type=int, default=600)
    p.add_argument("--n-val", type=int, default=600)
    p.add_argument("--solver", choices=("lbfgs", "newton"), default="lbfgs", help="inner solver")
    p.add_argument("--inner-tol", type=float, default=1e-6, help="inner gradient-norm tolerance")
    p.add_argument("--inner-maxiter", type=int, default=None, help="inner step cap (default 2000 / 50)")
    p.add_argument("--linear-solver", default="cg", help="adjoint solver of Implicit (see bilevel.linear_solve)")
    p.add_argument("--checkpoint-every", type=int, default=10, help="outer steps between checkpoints (0: never)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz if present")
    p.add_argument("--no-plots", action="store_true")
    return p


def _config(args) -> dict[str, Any]:
    keys = ("seed", "steps", "lr", "init_reg", "min_reg", "max_reg", "n_train", "n_val", "solver",
            "inner_tol", "inner_maxiter", "linear_solver")
    return {k: getattr(args, k) for k in keys}


# --------------------------------------------------------------------------------------------------
# the experiment


def _import_jax():
    import jax

    jax.config.update("jax_enable_x64", True)
    return jax


@functools.lru_cache(maxsize=None)
def _outer_step_fn():
    """The jitted outer step (built once per process, so repeated ``main`` calls reuse its compilation)."""
    jax = _import_jax()
    import jax.numpy as jnp
    import optax

    import bilevel

    @functools.partial(jax.jit, static_argnames=("solver", "method", "lr", "bounds"))
    def outer_step(log_reg, opt_state, z0, data, *, solver, method, lr, bounds):
        """Solve the inner problem at ``exp(log_reg)`` (warm start ``z0``), take one Adam step on
        ``log_reg``; return the new state and the metrics *at the incoming* ``log_reg``."""
        prob = make_logistic(*z0["w"].shape)

        def val_objective(lr_):
            z = bilevel.minimize(
                prob.inner_loss, z0, jnp.exp(lr_), data.X_train, data.y_train, solver=solver, method=method
            )
            return prob.data_loss(z, data.X_val, data.y_val), z

        (val_loss, z), grad = jax.value_and_grad(val_objective, has_aux=True)(log_reg)
        optimizer = optax.adam(lr)
        updates, opt_state = optimizer.update(grad, opt_state, log_reg)
        new_log_reg = jnp.clip(optax.apply_updates(log_reg, updates), *bounds)
        metrics = {
            "val_loss": val_loss,
            "val_acc": prob.accuracy(z, data.X_val, data.y_val),
            "test_loss": prob.data_loss(z, data.X_test, data.y_test),
            "test_acc": prob.accuracy(z, data.X_test, data.y_test),
            "train_acc": prob.accuracy(z, data.X_train, data.y_train),
            "hypergrad_norm": jnp.linalg.norm(grad),
        }
        return new_log_reg, opt_state, z, metrics

    return outer_step


def run(args) -> dict[str, Any]:
    """Run the experiment described by parsed ``args``; write outputs; return the results dict."""
    jax = _import_jax()
    import jax.numpy as jnp
    import optax

    import bilevel

    if args.quick:
        args.steps = min(args.steps, 8)
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if not (0 < args.min_reg <= args.init_reg <= args.max_reg):
        raise ValueError("need 0 < --min-reg <= --init-reg <= --max-reg")
    out = _cli.ensure_dir(args.out or "runs/hpo_digits")
    config = _config(args)

    split = load_digits_split(args.seed, args.n_train, args.n_val)
    data = DigitsSplit(*(jnp.asarray(a) for a in split))
    d, k = split.X_train.shape[1], 10
    z_init = make_logistic(d, k).init
    constant_pixels = np.ptp(split.X_train, axis=0) == 0  # no data signal: their weight never moves

    if args.solver == "lbfgs":
        solver = bilevel.LBFGS(maxiter=args.inner_maxiter or 2000, tol=args.inner_tol, on_failure="warn")
    else:
        solver = bilevel.Newton(maxiter=args.inner_maxiter or 50, tol=args.inner_tol, on_failure="warn")
    static = dict(
        solver=solver,
        method=bilevel.Implicit(linear_solver=args.linear_solver),
        lr=float(args.lr),
        bounds=(math.log(args.min_reg), math.log(args.max_reg)),
    )
    step_fn = _outer_step_fn()
    optimizer = optax.adam(args.lr)

    def strong(tree):  # drop weak types, so every call hits the one compiled executable
        return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype=jnp.asarray(a).dtype), tree)

    def step(log_reg, opt_state, z0):
        return step_fn(*strong((log_reg, opt_state, z0)), data, **static)

    def metrics_at(reg, z0=z_init):
        """Metrics of the inner solution at ``reg`` (uses the outer step, so nothing else compiles)."""
        log_reg = jnp.log(jnp.broadcast_to(jnp.asarray(reg, dtype=jnp.float64), (d,)))
        _, _, z, m = step(log_reg, optimizer.init(log_reg), z0)
        return {key: float(v) for key, v in m.items()}, z

    t0 = time.perf_counter()
    before, _ = metrics_at(args.init_reg)
    first_call_s = time.perf_counter() - t0
    # Reference: the best single (uniform) weight on a coarse grid, chosen on validation loss.
    grid = [dict(reg=r, **metrics_at(r)[0]) for r in UNIFORM_GRID]
    best_uniform = min(grid, key=lambda g: g["val_loss"])

    # ---- state (fresh or resumed)
    log_reg = jnp.full(d, math.log(args.init_reg))
    opt_state = optimizer.init(log_reg)
    opt_leaves, opt_tree = jax.tree_util.tree_flatten(opt_state)
    z = z_init
    curve = {"step": [], "val_loss": [], "val_acc": [], "test_loss": [], "hypergrad_norm": []}
    start = 0
    ckpt = _cli.Checkpoint(out / "checkpoint.npz")
    if args.resume and ckpt.exists():
        state = ckpt.load()
        saved = json.loads(str(state["config"]))
        mismatch = {k_: (saved.get(k_), v) for k_, v in config.items() if k_ != "steps" and saved.get(k_) != v}
        if mismatch:
            raise SystemExit(f"--resume: checkpoint {ckpt.path} was written with other settings: {mismatch}")
        start = min(int(state["step"]), args.steps)
        log_reg = jnp.asarray(state["log_reg"])
        z = {"w": jnp.asarray(state["w"]), "b": jnp.asarray(state["b"])}
        opt_state = jax.tree_util.tree_unflatten(
            opt_tree, [jnp.asarray(state[f"opt_{i}"], dtype=jnp.asarray(l).dtype) for i, l in enumerate(opt_leaves)]
        )
        for key in curve:
            curve[key] = np.asarray(state[f"curve_{key}"])[:start].tolist()
        curve["step"] = [int(s_) for s_ in curve["step"]]
        print(f"resuming from {ckpt.path} at step {start}")

    def save_checkpoint(step_):
        state = {"config": json.dumps(config), "step": step_, "log_reg": log_reg, "w": z["w"], "b": z["b"]}
        state.update({f"opt_{i}": l for i, l in enumerate(jax.tree_util.tree_leaves(opt_state))})
        state.update({f"curve_{key}": np.asarray(v, dtype=float) for key, v in curve.items()})
        ckpt.save(state)

    # ---- hypergradient descent
    step_times = []
    bar = _cli.progress(range(start, args.steps), desc="hypergradient steps", total=args.steps, initial=start)
    for i in bar:
        t = time.perf_counter()
        log_reg, opt_state, z, m = step(log_reg, opt_state, z)
        loss = float(m["val_loss"])  # waits for the step
        step_times.append(time.perf_counter() - t)
        curve["step"].append(i)
        curve["val_loss"].append(loss)
        curve["val_acc"].append(float(m["val_acc"]))
        curve["test_loss"].append(float(m["test_loss"]))
        curve["hypergrad_norm"].append(float(m["hypergrad_norm"]))
        bar.set_postfix(val_loss=f"{loss:.4f}", val_acc=f"{float(m['val_acc']):.3f}")
        if args.checkpoint_every and (i + 1) % args.checkpoint_every == 0:
            save_checkpoint(i + 1)
    bar.close()
    if args.checkpoint_every:
        save_checkpoint(args.steps)

    reg = np.exp(np.asarray(log_reg))
    after, _ = metrics_at(reg, z0=z)

    timing = {"first_call_s": first_call_s}
    if step_times:
        timing.update(outer_step_median_ms=1e3 * float(np.median(step_times)), outer_steps_timed=len(step_times))

    figures = {}
    if not args.no_plots:
        figures = _plots(out, reg, constant_pixels, split.X_train, curve, before, after, best_uniform, args.steps)

    results = {
        "experiment": "hpo_digits",
        "config": config,
        "data": {"n_train": len(split.y_train), "n_val": len(split.y_val), "n_test": len(split.y_test),
                 "n_features": d, "n_classes": k},
        "before": before,
        "after": after,
        "best_uniform": best_uniform,
        "uniform_grid": grid,
        "curve": curve,
        "reg": reg.reshape(8, 8),
        "constant_pixels": constant_pixels.reshape(8, 8),
        "timing": timing,
        "figures": {name: str(p) for name, p in figures.items()},
    }
    _cli.write_json_atomic(out / "results.json", results)
    _report(results, out)
    return results


def _report(results, out):
    b, a, u = results["before"], results["after"], results["best_uniform"]
    rows = [
        (f"before (uniform {results['config']['init_reg']:g})", b["val_loss"], b["val_acc"], b["test_loss"], b["test_acc"]),
        (f"best uniform on grid ({u['reg']:g})", u["val_loss"], u["val_acc"], u["test_loss"], u["test_acc"]),
        ("after (64 learned weights)", a["val_loss"], a["val_acc"], a["test_loss"], a["test_acc"]),
    ]
    print(_cli.format_table(rows, ["", "val loss", "val acc", "test loss", "test acc"], floatfmt=".4f"))
    t = results["timing"]
    line = f"outer step: first call (trace + compile + run) {t['first_call_s']:.1f} s"
    if t.get("outer_step_median_ms") is not None:
        line += f", then median {t['outer_step_median_ms']:.1f} ms over {t['outer_steps_timed']} steps"
    print(line)
    print(f"results: {out / 'results.json'}")
    for p in results["figures"].values():
        print(f"figure:  {p}")


def _plots(out: Path, reg, constant_pixels, X_train, curve, before, after, best_uniform, steps) -> dict[str, Path]:
    plt = _cli.pyplot()
    from matplotlib.colors import LogNorm

    figures = {}
    fig, axes = plt.subplots(1, 2, figsize=(8.5, 3.8))
    ax = axes[0]
    im = ax.imshow(X_train.mean(axis=0).reshape(8, 8), cmap="gray_r")
    ax.set_title("mean training digit")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax = axes[1]
    shown = np.ma.masked_array(reg.reshape(8, 8), mask=constant_pixels.reshape(8, 8))
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgray")
    vmin, vmax = float(np.min(reg)), float(np.max(reg))
    if vmax <= vmin:
        vmax = vmin * 10
    im = ax.imshow(shown, cmap=cmap, norm=LogNorm(vmin=vmin, vmax=vmax))
    ax.set_title("learned L2 weight per pixel\n(gray: constant in training data)", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, label="reg (log scale)")
    for a in axes:
        a.set_xticks([])
        a.set_yticks([])
    figures["reg_weights"] = _cli.save_figure(fig, out / "reg_weights.png")

    fig, ax = plt.subplots(figsize=(6, 3.8))
    xs, ys = list(curve["step"]) + [steps], list(curve["val_loss"]) + [after["val_loss"]]
    marker = "." if len(xs) < 30 else None
    ax.plot(xs, ys, marker=marker, label="validation (the outer objective)")
    if curve.get("test_loss"):
        ax.plot(xs, list(curve["test_loss"]) + [after["test_loss"]], color="C0", ls="--", lw=1, alpha=0.7,
                marker=marker, label="test (held out)")
    ax.axhline(before["val_loss"], color="gray", ls=":", label="initial uniform weight, validation")
    ax.axhline(best_uniform["val_loss"], color="C1", ls="--",
               label=f"best uniform weight ({best_uniform['reg']:g}), validation")
    ax.set_xlabel("outer step")
    ax.set_ylabel("cross-entropy")
    ax.set_title("hypergradient descent on 64 L2 weights (digits)")
    ax.legend()
    ax.grid(alpha=0.3)
    figures["val_curve"] = _cli.save_figure(fig, out / "val_curve.png")
    return figures


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    return run(args)


if __name__ == "__main__":
    main()
