r"""Reproduce Muñoz-González et al. (2017), generic gradient poisoning of multiclass learners (MNIST setting).

Protocol (``/work/shared/reference/paper-protocols.md`` §2; :func:`poisoning.data.munoz_protocol`):
disjoint random TR / VAL / TS draws (paper MNIST: 1000 / 1000 / 8000 error-generic, 1000 / 4000 / 5000
error-specific), pixels in [0, 1], a 10-class softmax logistic regression (``--learner lr``; or the
10-tanh-unit MLP, ``--learner mlp``). Attack (:mod:`poisoning.attacks.munoz2017`): poison points added
one at a time, each optimized by projected ascent on the unit hypergradient (backtracking line
search) inside the box [0, 1], the hypergradient by implicit differentiation (``--method implicit``,
victim trained to convergence) or by back-gradient through ``--T`` steps of gradient descent
(``--method backgradient``, T = 60 in the paper; the victim is then those T steps).

- ``--mode generic``: maximize the mean validation cross-entropy; points start as clones of training
  points with random labels. ``test_error`` = test error over all classes.
- ``--mode specific`` (8 -> 3, ``--pair 8 3``): the validation set holds the validation 8s relabelled 3
  and the attacker minimizes their cross-entropy; points start as training 3s and 8s with labels
  swapped. ``test_error`` = error on the test 8s (also ``test_error_all``, ``test_8_as_3``).

Baseline: the same budget of validation points with random wrong labels added to TR
(``test_error_random_flip``). ``results.json`` holds ``clean`` and one row per budget
(``n_poison``, ``fraction`` = n_poison / (n_train + n_poison), ``test_error``, ``test_error_random_flip``,
``seconds`` = attack wall time up to that budget, compiled code only); ``test_error.png`` plots test
error vs poison fraction for the attack and random flips.

Usage::

    python -m experiments.munoz2017                                     # digits (offline)
    python -m experiments.munoz2017 --dataset mnist --data-dir /work/shared/data \
        --n-train 1000 --n-val 1000 --n-test 8000 --budgets 0 10 20 40 60
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from experiments import _cli

__all__ = ["build_parser", "run", "main", "PAPER"]

PAPER = {
    "generic": "paper (MNIST, LR, T=60): test error 'almost doubles' with < 6% poisoning (60 pts / 1000); "
               "random flips much weaker (Fig. 4)",
    "specific": "paper (MNIST, LR, 8->3): error on 8s ~20% -> ~50% with < 4% poisoning (40 pts / 1000)",
}


def build_parser():
    p = _cli.base_parser(__doc__.splitlines()[0], default_out="runs/munoz2017")
    p.add_argument("--dataset", choices=("digits", "mnist"), default="digits")
    p.add_argument("--n-train", type=int, default=None, help="default 1000 (mnist) / 300 (digits)")
    p.add_argument("--n-val", type=int, default=None, help="default 1000 (4000 specific) mnist / 300 digits")
    p.add_argument("--n-test", type=int, default=None, help="default 8000 (5000 specific) mnist / 1000 digits")
    p.add_argument("--budgets", nargs="+", type=int, default=(0, 5, 10, 20))
    p.add_argument("--mode", choices=("generic", "specific"), default="generic")
    p.add_argument("--method", choices=("implicit", "backgradient"), default="implicit")
    p.add_argument("--learner", choices=("lr", "mlp"), default="lr")
    p.add_argument("--pair", nargs=2, type=int, default=(8, 3), metavar=("SOURCE", "TARGET"))
    p.add_argument("--reg", type=float, default=1e-3, help="L2 weight of the victim")
    p.add_argument("--T", type=int, default=60, help="gradient-descent steps of the back-gradient victim")
    p.add_argument("--steps", type=int, default=20, help="max ascent steps per poison point")
    p.add_argument("--step-size", type=float, default=1.0, help="initial step (L2 length) of the line search")
    p.add_argument("--no-plots", action="store_true")
    return p


def _sizes(args):
    mnist = args.dataset == "mnist"
    spec = args.mode == "specific"
    n_tr = args.n_train or (1000 if mnist else 300)
    n_va = args.n_val or ((4000 if spec else 1000) if mnist else 300)
    n_te = args.n_test or ((5000 if spec else 8000) if mnist else 1000)
    if args.quick:
        n_tr, n_va, n_te = min(n_tr, 100), min(n_va, 100), min(n_te, 200)
    return n_tr, n_va, n_te


def _load(args):
    return _cli.load_digits_or_mnist(args.dataset, args.data_dir, args.seed)


def run(args) -> dict[str, Any]:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from poisoning import data
    from poisoning.attacks import munoz2017 as M

    budgets = sorted(set(int(b) for b in args.budgets))
    if budgets[0] < 0:
        raise SystemExit("--budgets must be >= 0")
    if args.quick:
        args.steps = min(args.steps, 3)
        budgets = [b for b in budgets if b <= 2] or [0]
        budgets = sorted(set(budgets) | {0, 2})
    m = max(budgets)
    n_tr, n_va, n_te = _sizes(args)
    ds = _load(args)
    split = data.munoz_protocol(ds, n_tr, n_va, n_te, seed=args.seed)
    f64 = lambda a: np.asarray(a, np.float64)
    X_tr, y_tr, X_va, y_va, X_te, y_te = (f64(split.X_train), f64(split.y_train), f64(split.X_val),
                                          f64(split.y_val), f64(split.X_test), f64(split.y_test))
    src, tgt = args.pair
    if args.mode == "specific":  # the attacker's validation set: the source-class points, target labels
        keep = y_va == src
        X_att, y_att = X_va[keep], np.full(int(keep.sum()), float(tgt))
    else:
        X_att, y_att = X_va, y_va

    if args.method == "backgradient":
        lr = M.gd_learning_rate(X_tr, args.reg)
        kw = dict(method="backgradient", steps=args.T if args.learner == "lr" else max(args.T, 200), learning_rate=lr)
    else:
        lr, kw = None, dict(method="implicit")
    learner = M.softmax_learner(10, args.reg, **kw) if args.learner == "lr" else M.mlp_learner(10, 10, args.reg, **kw)
    attack = M.munoz_attack(learner, args.mode, step_size=args.step_size)

    def evaluate(params):
        pred = np.asarray(learner.predict(params, X_te))
        err_all = float(np.mean(pred != y_te))
        if args.mode == "generic":
            return {"test_error": err_all}
        s = y_te == src
        return {"test_error": float(np.mean(pred[s] != src)), "test_error_all": err_all,
                "test_8_as_3": float(np.mean(pred[s] == tgt))}

    # ---- the attack (one sequential run gives every budget) ----
    t0 = time.perf_counter()
    if m > 0:
        bar = _cli.progress(total=m, desc="poison points")
        res, X0, yp = M.poison(attack, X_tr, y_tr, X_att, y_att, m, mode=args.mode, pair=(src, tgt),
                               steps=args.steps, seed=args.seed, callback=lambda i, X: bar.update(1))
        bar.close()
        params_clean, block_params, seconds = res.params_clean, res.block_params, res.seconds
        compile_s, X_poison = float(res.compile_seconds), res.X_poison
    else:
        params_clean = learner.fit(jnp.asarray(X_tr), jnp.asarray(y_tr))
        block_params, seconds, compile_s, X0, X_poison = (), np.zeros(0), 0.0, None, None
    total = time.perf_counter() - t0

    # ---- random label flips of validation points, same budgets, same victim ----
    Xf, yf = M.random_flip_poison(X_va, y_va, max(m, 1), seed=args.seed)
    Xall, yall = jnp.asarray(np.concatenate([X_tr, Xf])), jnp.asarray(np.concatenate([y_tr, yf]).astype(float))
    fit = jax.jit(lambda w: learner.fit(Xall, yall, w))

    def flip_params(b):
        w = np.concatenate([np.ones(len(y_tr)), (np.arange(len(yf)) < b).astype(float)])
        return fit(jnp.asarray(w))

    obj = lambda p: float(attack.objective(p, jnp.asarray(X_att), jnp.asarray(y_att), learner))
    clean = {**evaluate(params_clean), "objective": obj(params_clean)}
    rows = []
    for b in budgets:
        p = params_clean if b == 0 else block_params[b - 1]
        pf = flip_params(b)
        e, ef = evaluate(p), evaluate(pf)
        rows.append({"n_poison": b, "fraction": b / (n_tr + b), **e, "objective": obj(p),
                     **{k + "_random_flip": v for k, v in ef.items()}, "objective_random_flip": obj(pf),
                     "seconds": float(seconds[b - 1]) if b > 0 else 0.0})

    results = {
        "experiment": "munoz2017", "dataset": args.dataset, "mode": args.mode, "method": args.method,
        "learner": learner.name,
        "config": {"n_train": n_tr, "n_val": n_va, "n_val_attacker": int(len(y_att)), "n_test": n_te,
                   "seed": args.seed, "budgets": budgets, "steps": args.steps, "step_size": args.step_size,
                   "reg": args.reg, "T": args.T if args.method == "backgradient" else None, "gd_lr": lr,
                   "pair": [src, tgt], "quick": bool(args.quick)},
        "clean": clean, "rows": rows, "compile_seconds": compile_s, "total_seconds": total,
        "paper": PAPER[args.mode],
    }
    out = _cli.ensure_dir(args.out)
    _cli.write_json_atomic(out / "results.json", results)

    label = "test err (8s)" if args.mode == "specific" else "test err"
    table = [[r["n_poison"], f"{100 * r['fraction']:.1f}%", r["test_error"], r["test_error_random_flip"],
              r["objective"], r["seconds"]] for r in rows]
    print(f"Munoz-Gonzalez et al. 2017, {args.dataset} {args.mode} ({args.method}, {learner.name}): "
          f"TR={n_tr} VAL={len(y_att)} TS={n_te}")
    print(_cli.format_table(table, ["n_poison", "fraction", label, label + " flips", "val objective", "seconds"]))
    c, last = rows[0]["test_error"], rows[-1]
    print(f"ours: {label} {c:.3f} -> {last['test_error']:.3f} at {100 * last['fraction']:.1f}% poisoning "
          f"(x{last['test_error'] / max(c, 1e-12):.2f}); random flips {last['test_error_random_flip']:.3f}")
    print(PAPER[args.mode])
    if not args.no_plots:
        _plots(out, results, X0, X_poison)
    print(f"wrote {out / 'results.json'}")
    return results


def _plots(out: Path, results, X0, Xp):
    plt = _cli.pyplot()
    rows = results["rows"]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    fr = [100 * r["fraction"] for r in rows]
    ax.plot(fr, [r["test_error"] for r in rows], "o-", label=f"attack ({results['method']})")
    ax.plot(fr, [r["test_error_random_flip"] for r in rows], "s--", label="random label flips")
    ax.set_xlabel("poison fraction (%)")
    ax.set_ylabel("test error" + (" on 8s" if results["mode"] == "specific" else ""))
    ax.set_title(f"{results['dataset']} {results['mode']}")
    ax.legend()
    _cli.save_figure(fig, out / "test_error.png")
    if X0 is None:
        return
    _cli.save_poison_grid(X0, Xp, out / "poison_points.png")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
