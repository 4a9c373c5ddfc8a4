r"""Reproduce Solans, Biggio & Castillo (2020), "Poisoning attacks on algorithmic fairness" (ECML-PKDD).

Protocol (the authors' notebooks, as implemented in :mod:`poisoning.attacks.solans2020`):
an L2 logistic regression (``C = --C``, i.e. ``reg = 1 / (C n_train)``) is attacked with the
disparate-impact surrogate (logistic loss with the group as label, unprivileged losses re-weighted
by :math:`-p_{priv}/p_{unpriv}`), poison points start as random validation points with flipped labels
(``--init-group`` / ``--init-label`` restrict the draw to one group / label), move by
unit-hypergradient steps of length ``--step-size`` (0.05) inside the box
``[min X_val, max X_val]`` intersected with an :math:`\ell_1` ball of radius ``--dmax`` (10) around
their start, and are added one at a time (sequential greedy attack; the victim after ``k`` points is
the ``k``-point attack, so one run serves every fraction). A fraction ``f`` means
``int(f * n_train)`` poison points, as in the notebooks.

Data:

- ``--dataset synthetic`` (default, offline): the Zafar-style generator of the notebooks
  (``--n-per-class`` points per class, class-mean distance ``--distance``), 20 % test, the rest
  halved into train / validation;
- ``--dataset adult``: UCI Adult from ``--data-dir`` (``poisoning.datasets.load_adult`` features, one-hot
  categorical + min-max numeric, ``sex`` kept as a feature and used as the sensitive attribute,
  Male = privileged); train and validation are disjoint stratified draws of ``--n-train`` /
  ``--n-val`` rows of ``adult.data``, test ``--n-test`` rows of ``adult.test``.

Baselines at the same budget: ``flip_inject`` (the attack's starting points: random validation points
with flipped labels, features not optimized) and ``random_flip`` (the labels of ``m`` random training
points flipped uniformly at random, without replacement).

Outputs (``--out``): ``results.json`` (config, per-repeat rows and the mean/std over ``--repeats``
of test accuracy, demographic-parity difference :math:`P(\hat y=1|u) - P(\hat y=1|p)`, disparate-impact
ratio :math:`P(\hat y=1|u) / P(\hat y=1|p)`, average-odds difference and per-group FPR/FNR for
``clean``, ``attack``, ``flip_inject``, ``random_flip`` at every fraction), ``dp_difference.png`` and
``accuracy.png`` (vs poison fraction). ``checkpoint.npz`` keeps
finished repeats; ``--resume`` skips them. The paper's headline numbers were not retrieved: only its
qualitative claim is printed beside ours.

Usage::

    python -m experiments.solans2020                                   # synthetic, offline
    python -m experiments.solans2020 --dataset adult --data-dir /path/to/data --n-train 2000
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from experiments import _cli

__all__ = ["build_parser", "run", "main"]

METHODS = ("clean", "attack", "flip_inject", "random_flip")
METRICS = ("accuracy", "dp_difference", "disparate_impact_ratio", "average_odds_difference", "fpr_privileged",
           "fpr_unprivileged", "fnr_privileged", "fnr_unprivileged", "positive_rate_privileged",
           "positive_rate_unprivileged")
PAPER_NOTE = ("paper (Solans et al. 2020, qualitative; headline numbers not retrieved): the attack increases "
              "the demographic-parity and average-odds differences as the poison fraction grows "
              "(0.05-0.29), with a moderate accuracy loss, on synthetic data, COMPAS, Adult and German")


def build_parser():
    p = _cli.base_parser(__doc__.splitlines()[0], default_out="runs/solans2020")
    p.add_argument("--dataset", choices=("synthetic", "adult"), default="synthetic")
    p.add_argument("--fractions", nargs="+", type=float, default=(0.05, 0.1, 0.15, 0.2, 0.25),
                   help="poison fractions of the training-set size (paper: 0.05-0.29)")
    p.add_argument("--repeats", type=int, default=3, help="independent data draws (paper: 5)")
    p.add_argument("--n-per-class", type=int, default=400, help="synthetic: points per class")
    p.add_argument("--distance", type=float, default=4.0, help="synthetic: distance between class means")
    p.add_argument("--n-train", type=int, default=2000, help="adult: training rows")
    p.add_argument("--n-val", type=int, default=2000, help="adult: validation rows")
    p.add_argument("--n-test", type=int, default=4000, help="adult: test rows (from adult.test)")
    p.add_argument("--steps", type=int, default=1000, help="max ascent steps per poison point (paper 1000)")
    p.add_argument("--step-size", type=float, default=0.05)
    p.add_argument("--tol", type=float, default=1e-6, help="stop a point when the gain is below this")
    p.add_argument("--patience", type=int, default=1, help="consecutive steps below tol before stopping")
    p.add_argument("--dmax", type=float, default=10.0, help="l1 radius around each start (<= 0: box only)")
    p.add_argument("--C", type=float, default=1.0, help="victim's inverse regularization (reg = 1/(C n))")
    p.add_argument("--labels", choices=("group", "true"), default="group",
                   help="surrogate labels: group (authors' code) or true labels")
    p.add_argument("--init-group", type=int, choices=(0, 1), default=None,
                   help="draw the starting poison from this group only (default: all validation points)")
    p.add_argument("--init-label", type=int, choices=(0, 1), default=None,
                   help="draw the starting poison from validation points of this label only (then flipped)")
    p.add_argument("--resume", action="store_true", help="skip repeats stored in OUT/checkpoint.npz")
    p.add_argument("--no-plots", action="store_true")
    return p


def _config(args) -> dict:
    keys = ("dataset", "fractions", "n_per_class", "distance", "n_train", "n_val", "n_test", "steps",
            "step_size", "tol", "patience", "dmax", "C", "labels", "init_group", "init_label", "seed", "quick")
    cfg = {k: getattr(args, k) for k in keys}
    cfg["fractions"] = [float(f) for f in args.fractions]
    if args.dataset == "synthetic":
        for k in ("n_train", "n_val", "n_test"):
            cfg.pop(k)
    else:
        for k in ("n_per_class", "distance"):
            cfg.pop(k)
    return cfg


def _data(args, seed: int, adult=None) -> dict:
    from poisoning import datasets as data
    from poisoning.attacks.solans2020 import solans_split, zafar_synthetic

    if args.dataset == "synthetic":
        X, y, g = zafar_synthetic(args.n_per_class, args.distance, seed=seed)
        return solans_split(X, y, g, seed=seed)
    ds = adult
    y_tr = (np.asarray(ds.y_train) == 1).astype(np.int64)
    y_te = (np.asarray(ds.y_test) == 1).astype(np.int64)
    g_tr, g_te = np.asarray(ds.meta["sex_train"]), np.asarray(ds.meta["sex_test"])
    i_tr, i_val = data.split_indices(len(y_tr), (args.n_train, args.n_val), seed, y=y_tr, stratify=True)
    (i_te,) = data.split_indices(len(y_te), (min(args.n_test, len(y_te)),), seed, y=y_te, stratify=True)
    X_tr, X_te = np.asarray(ds.X_train, float), np.asarray(ds.X_test, float)
    return {"X_train": X_tr[i_tr], "y_train": y_tr[i_tr], "g_train": g_tr[i_tr],
            "X_val": X_tr[i_val], "y_val": y_tr[i_val], "g_val": g_tr[i_val],
            "X_test": X_te[i_te], "y_test": y_te[i_te], "g_test": g_te[i_te]}


def _one_repeat(args, seed: int, adult=None) -> tuple[np.ndarray, dict]:
    """Metrics array ``(n_fractions, n_methods, n_metrics)`` (test set) and run facts."""
    import jax

    from poisoning.attacks.solans2020 import poison_fairness
    from poisoning.fairness import fairness_report

    sp = _data(args, seed, adult)
    n_tr = len(sp["y_train"])
    counts = [max(1, int(f * n_tr)) for f in args.fractions]
    m = max(counts)
    reg = 1.0 / (args.C * n_tr)
    bar = _cli.progress(total=m, desc=f"seed {seed}: poison points")
    t0 = time.perf_counter()
    res, X0, attack = poison_fairness(
        sp["X_train"], sp["y_train"], sp["X_val"], sp["y_val"], sp["g_val"], m, steps=args.steps, seed=seed,
        reg=reg, dmax=args.dmax if args.dmax > 0 else None, step_size=args.step_size, tol=args.tol,
        patience=args.patience, labels=args.labels, init_group=args.init_group, init_label=args.init_label,
        callback=lambda i, X: bar.update(1))
    seconds = time.perf_counter() - t0
    bar.close()
    victim = attack.victim
    y0 = np.asarray(res.poison.y)

    def report(params):
        pred = np.asarray(victim.predict(params, sp["X_test"]))
        r = fairness_report(sp["y_test"], pred, sp["g_test"])
        return [r[k] for k in METRICS]

    clean = report(res.params_clean)
    # baselines: one jitted fit on the fixed-shape set D_tr ∪ X0 (poison rows switched on by weights)
    fit = jax.jit(lambda X, y, w: victim.fit_fn(X, victim.encode(y, X.dtype), w, None))
    X_all = np.concatenate([sp["X_train"], X0])
    n_p = len(y0)
    out = np.zeros((len(counts), len(METHODS), len(METRICS)))
    rng = np.random.default_rng([seed, 1])
    for i, k in enumerate(counts):
        w_inject = np.concatenate([np.ones(n_tr), (np.arange(n_p) < k).astype(float)])
        inject = fit(X_all, np.concatenate([sp["y_train"], y0]), w_inject)
        y_flip = sp["y_train"].copy()  # k distinct training labels flipped uniformly at random
        flip = rng.choice(n_tr, size=k, replace=False)
        y_flip[flip] = 1 - y_flip[flip]
        w_flip = np.concatenate([np.ones(n_tr), np.zeros(n_p)])
        flipped = fit(X_all, np.concatenate([y_flip, y0]), w_flip)
        out[i] = [clean, report(res.block_params[k - 1]), report(inject), report(flipped)]
    facts = {"seed": seed, "n_train": n_tr, "n_val": len(sp["y_val"]), "n_test": len(sp["y_test"]),
             "n_features": int(sp["X_train"].shape[1]), "n_poison": counts, "reg": reg,
             "box": [float(sp["X_val"].min()), float(sp["X_val"].max())],
             "privileged_fraction_train": float(np.mean(sp["g_train"])),
             "objective_clean": res.objective_clean, "objective_poisoned": res.objective,
             "attack_seconds": seconds, "compile_seconds": float(res.compile_seconds),
             "steps_total": int(res.n_steps.sum()), "steps_max_hit": int(np.sum(res.n_steps >= args.steps))}
    return out, facts


def run(args) -> dict[str, Any]:
    import jax

    jax.config.update("jax_enable_x64", True)
    from poisoning.attacks.solans2020 import PAPER

    fr = sorted(set(float(f) for f in args.fractions))
    if fr[0] <= 0 or fr[-1] >= 1:
        raise SystemExit("--fractions must lie in (0, 1)")
    args.fractions = fr
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    if args.quick:
        args.steps = min(args.steps, 15)
        args.repeats = 1
        if args.dataset == "synthetic":
            args.n_per_class = min(args.n_per_class, 60)
        else:
            args.n_train, args.n_val, args.n_test = (min(args.n_train, 200), min(args.n_val, 200),
                                                     min(args.n_test, 500))
    adult = None
    if args.dataset == "adult":
        from poisoning.datasets import load_adult

        adult = load_adult(_cli.resolve_data_dir(args.data_dir))
    config = _config(args)
    out = _cli.ensure_dir(args.out)
    ckpt = _cli.Checkpoint(out / "checkpoint.npz")
    done: dict[int, tuple[np.ndarray, dict]] = {}
    if args.resume and ckpt.exists():
        state = ckpt.load()
        if json.loads(str(state["config"])) != config:
            raise SystemExit(f"--resume: {ckpt.path} was written with other settings")
        for r in range(args.repeats):
            if f"metrics_{r}" in state:
                done[r] = (np.asarray(state[f"metrics_{r}"]), json.loads(str(state[f"facts_{r}"])))
        print(f"resuming: {len(done)} repeat(s) loaded from {ckpt.path}")

    t0 = time.perf_counter()
    for r in _cli.progress(range(args.repeats), desc="repeats"):
        if r in done:
            continue
        done[r] = _one_repeat(args, args.seed + r, adult)
        state = {"config": json.dumps(config)}
        for k, (mtr, facts) in done.items():
            state[f"metrics_{k}"] = mtr
            state[f"facts_{k}"] = json.dumps(_cli.to_jsonable(facts))
        ckpt.save(state)
    total = time.perf_counter() - t0

    stack = np.stack([done[r][0] for r in range(args.repeats)])  # (R, F, M, K)
    mean, std = stack.mean(0), stack.std(0)
    rows = []
    for i, f in enumerate(fr):
        row = {"fraction": f, "n_poison": done[0][1]["n_poison"][i]}
        for j, meth in enumerate(METHODS):
            row[meth] = {k: float(mean[i, j, q]) for q, k in enumerate(METRICS)}
            row[meth].update({f"{k}_std": float(std[i, j, q]) for q, k in enumerate(METRICS)})
        rows.append(row)
    results = {
        "experiment": "solans2020",
        "config": config,
        "repeats": args.repeats,
        "rows": rows,
        "per_repeat": [{"facts": done[r][1],
                        "metrics": {meth: {k: stack[r, :, j, q].tolist() for q, k in enumerate(METRICS)}
                                    for j, meth in enumerate(METHODS)}} for r in range(args.repeats)],
        "total_seconds": total,
        "paper": {"note": PAPER_NOTE, **{k: v for k, v in PAPER.items()}},
    }
    _cli.write_json_atomic(out / "results.json", results)

    facts0 = done[0][1]
    print(f"Solans et al. 2020, {args.dataset}: TR={facts0['n_train']} VAL={facts0['n_val']} "
          f"TS={facts0['n_test']} d={facts0['n_features']} repeats={args.repeats} (test-set metrics, mean)")
    table = []
    for r in rows:
        table.append([r["fraction"], r["n_poison"], r["clean"]["accuracy"], r["attack"]["accuracy"],
                      r["flip_inject"]["accuracy"], r["random_flip"]["accuracy"],
                      r["clean"]["dp_difference"], r["attack"]["dp_difference"], r["flip_inject"]["dp_difference"],
                      r["random_flip"]["dp_difference"], r["clean"]["disparate_impact_ratio"],
                      r["attack"]["disparate_impact_ratio"], r["clean"]["average_odds_difference"],
                      r["attack"]["average_odds_difference"], r["random_flip"]["average_odds_difference"]])
    print(_cli.format_table(table, ["frac", "m", "acc_clean", "acc_atk", "acc_inj", "acc_flip", "DP_clean",
                                    "DP_atk", "DP_inj", "DP_flip", "DI_clean", "DI_atk", "AOD_clean", "AOD_atk",
                                    "AOD_flip"],
                            floatfmt=".3f"))
    print(PAPER_NOTE)
    if not args.no_plots:
        _plots(out, results)
    print(f"wrote {out / 'results.json'}")
    return results


def _plots(out: Path, results):
    plt = _cli.pyplot()
    rows = results["rows"]
    fr = [r["fraction"] for r in rows]
    labels = {"clean": "clean", "attack": "fairness attack", "flip_inject": "flipped-label injection",
              "random_flip": "random label flip"}
    styles = {"clean": "k--", "attack": "o-", "flip_inject": "s-", "random_flip": "^-"}
    for metric, fname, ylabel in (("dp_difference", "dp_difference.png", "DP difference P(+|unpriv) - P(+|priv)"),
                                  ("accuracy", "accuracy.png", "test accuracy")):
        fig, ax = plt.subplots(figsize=(4.8, 3.4))
        for meth in METHODS:
            mu = np.array([r[meth][metric] for r in rows])
            sd = np.array([r[meth][f"{metric}_std"] for r in rows])
            ax.errorbar(fr, mu, yerr=sd, fmt=styles[meth], label=labels[meth], capsize=2)
        ax.set_xlabel("poison fraction (of the training set)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"Solans et al. 2020 — {results['config']['dataset']}")
        ax.legend(fontsize=7)
        _cli.save_figure(fig, out / fname)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
