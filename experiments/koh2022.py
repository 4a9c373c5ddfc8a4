r"""Koh, Steinhardt & Liang (2022), "Stronger data poisoning attacks break data sanitization defenses".

Protocol (the paper's Sec. 3-5; :mod:`poisoning.attacks.koh2022`): a smoothed-hinge linear SVM
(:func:`poisoning.victims.smooth_svm`, ``wd`` = 0.01 as for MNIST-1-7, C = 1/(n wd)) on two digit classes
(``--pair POS NEG`` -> labels 1 / 0, pixels in [0, 1]); ``eps n`` poison points (``--epsilon``, 3 %) at
``--locations`` distinct locations (copies), half per class. The attacker ascends the mean smoothed hinge
on the test set (as in the paper's release; ``--target val`` uses a held-out validation split of the
training images instead) with the implicit hypergradient (= the influence I_pert), and

- the *naive* attack starts at label-flipped clean points and projects onto the box [0, 1] only;
- the *sanitizer-aware* attack (``--init kkt``, default) first runs the KKT attack: decoy parameters
  (SVMs trained with label-flipped target points, plus the naive attack's retrained model) and for each
  the poison in the feasible set closest to making the decoy optimal; the best candidate warm-starts the
  influence attack, which projects onto sphere ∩ slab (per-class thresholds at the ``--percentile`` of
  clean scores around the poisoned centroids) ∩ [0, 1] ∩ {hinge loss under the current model below the
  ``--loss-percentile`` of the clean losses} with a ``--schedule`` step size. Copies at one location
  have k-NN score 0 (when ``counts >= k + 1``), so the k-NN defense needs no further constraint.
  ``--init flip`` gives the previous aware attack (label-flip start).

Each defense (sphere, slab, loss on the hinge, k-NN; :mod:`poisoning.defenses.evaluate`) is fit on the
poisoned data, removes the top ``--fraction`` of each class and the SVM is retrained. Table: clean error,
naive attack without / with defense, aware attack with defense. Paper headline (Enron 3 % -> 24 %, IMDB
12 % -> 29 % at eps = 3 %); its MNIST-1-7 numbers were not retrieved.

Usage::

    python -m experiments.koh2022                                   # digits 1 vs 7 (offline)
    python -m experiments.koh2022 --dataset mnist --data-dir DIR --n-train 2000
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple, Sequence

import numpy as np

from experiments import _cli

__all__ = ["build_parser", "run", "main", "PAPER_NOTE"]

PAPER_NOTE = ("paper (eps=3%, past sphere/slab/loss/SVD/k-NN): Enron 3% -> 24%, IMDB 12% -> 29%; "
              "MNIST-1-7 numbers not retrieved")


def build_parser():
    p = _cli.base_parser(__doc__.splitlines()[0], default_out="runs/koh2022")
    p.add_argument("--dataset", choices=("digits", "mnist"), default="digits")
    p.add_argument("--pair", nargs=2, type=int, default=(1, 7), metavar=("POS", "NEG"))
    p.add_argument("--epsilon", type=float, default=0.03, help="poison points as a fraction of n_train")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--step-size", type=float, default=0.5)
    p.add_argument("--locations", type=int, default=2, help="distinct poison locations (copies spread over them)")
    p.add_argument("--wd", type=float, default=0.01)
    p.add_argument("--t", type=float, default=0.01, help="smoothed-hinge temperature")
    p.add_argument("--fraction", type=float, default=0.05, help="fraction removed per class by each defense")
    p.add_argument("--percentile", type=float, default=90.0, help="attacker's threshold percentile of clean scores")
    p.add_argument("--n-train", type=int, default=0, help="subsample the training pair (0 = all)")
    p.add_argument("--target", choices=("test", "val"), default="test")
    p.add_argument("--init", choices=("kkt", "flip"), default="kkt",
                   help="aware attack start: KKT attack or label flips")
    p.add_argument("--loss-percentile", type=float, default=90.0,
                   help="aware attack: keep poison hinge below this percentile of clean losses (<0: off)")
    p.add_argument("--schedule", choices=("constant", "cosine"), default="cosine", help="aware step-size schedule")
    p.add_argument("--kkt-splits", type=int, default=0,
                   help="extra evenly spaced positive/negative splits tried per decoy (besides the KKT one)")
    p.add_argument("--decoy-weights", type=float, nargs="+", default=[0.05, 0.2],
                   help="weights (x n) of the label-flipped target points that make the decoys")
    p.add_argument("--no-plots", action="store_true")
    return p


def _load(args):
    from poisoning import datasets as data

    ds = _cli.load_digits_or_mnist(args.dataset, args.data_dir, args.seed)
    pos, neg = args.pair
    X, y = data.binary_pair(ds.X_train, ds.y_train, pos, neg, labels=(1, 0))
    Xt, yt = data.binary_pair(ds.X_test, ds.y_test, pos, neg, labels=(1, 0))
    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(len(y))
    Xv = yv = None
    if args.target == "val":
        n_val = len(y) // 5
        Xv, yv = X[perm[:n_val]], y[perm[:n_val]]
        perm = perm[n_val:]
    if args.n_train and args.n_train < len(perm):
        perm = perm[: args.n_train]
    X, y = X[np.sort(perm)], y[np.sort(perm)]
    return X.astype(np.float64), y, Xt.astype(np.float64), yt, Xv, yv


class Attacked(NamedTuple):
    """What the experiment keeps of an attack (and checkpoints): the poison, the victim trained with it,
    the objective history (target loss per iterate, or per KKT candidate), the best objective, wall seconds."""

    poison: Any
    params: Any
    history: np.ndarray
    objective: float
    seconds: float


def _summary(res) -> Attacked:
    seconds = float(res.seconds[-1]) + float(res.compile_seconds)
    return Attacked(res.poison, res.params, np.asarray(res.objective_history), float(res.objective), seconds)


def _cached(ckpt, name, fn, victim, X, y) -> Attacked:
    """Run attack ``fn`` (returning an :class:`~poisoning.attack.AttackResult`) unless the checkpoint holds
    its result (then retrain the victim on the stored poison)."""
    from poisoning.attack import PoisonPoints
    from poisoning.defenses.evaluate import fit_poisoned

    state = ckpt.load() or {}
    if f"{name}/X" in state:
        poison = PoisonPoints(state[f"{name}/X"], state[f"{name}/y"].astype(int), counts=state[f"{name}/counts"])
        return Attacked(poison, fit_poisoned(victim, X, y, poison), state[f"{name}/history"],
                        float(state[f"{name}/objective"]), float(state[f"{name}/seconds"]))
    res = _summary(fn())
    state.update({f"{name}/X": np.asarray(res.poison.X), f"{name}/y": np.asarray(res.poison.y),
                  f"{name}/counts": np.asarray(res.poison.counts), f"{name}/history": res.history,
                  f"{name}/objective": res.objective, f"{name}/seconds": res.seconds})
    ckpt.save(state)
    return res


def run(args) -> dict[str, Any]:
    import jax

    jax.config.update("jax_enable_x64", True)
    from poisoning import victims
    from poisoning.attacks import koh2022 as K
    from poisoning.defenses.evaluate import evaluate_defenses, hinge_score

    if args.quick:
        args.steps = min(args.steps, 10)
        args.kkt_splits = min(args.kkt_splits, 2)
        args.decoy_weights = args.decoy_weights[:1]
        if args.dataset == "mnist" and not args.n_train:
            args.n_train = 500
    X, y, Xt, yt, Xv, yv = _load(args)
    X_tgt, y_tgt = (Xt, yt) if args.target == "test" else (Xv, yv)
    n_poison = max(1, int(round(args.epsilon * len(y))))
    victim = victims.smooth_svm(args.wd, args.t)
    loss_pct = None if args.loss_percentile < 0 else args.loss_percentile
    common = dict(victim=victim, steps=args.steps, step_size=args.step_size, n_locations=args.locations,
                  percentile=args.percentile, seed=args.seed)
    out = _cli.ensure_dir(args.out)
    ckpt = _cli.Checkpoint(out / "checkpoint.npz")
    t0 = time.perf_counter()
    bar = _cli.progress(total=3, desc="koh2022 attacks")
    naive = _cached(ckpt, "naive", lambda: K.koh_attack(X, y, X_tgt, y_tgt, n_poison, aware=False, **common),
                    victim, X, y)
    bar.update()
    attacks, kkt = {"naive": naive}, None
    if args.init == "kkt":
        def _kkt():
            decoys = K.decoy_parameters(X, y, X_tgt, y_tgt, victim=victim, weights=tuple(args.decoy_weights))
            return K.kkt_attack(X, y, X_tgt, y_tgt, n_poison, decoys + [naive.params], victim=victim,
                                n_locations=args.locations, splits=args.kkt_splits, percentile=args.percentile,
                                loss_percentile=loss_pct, seed=args.seed)

        kkt = _cached(ckpt, "kkt", _kkt, victim, X, y)
    bar.update()
    aware = _cached(ckpt, "aware", lambda: K.koh_attack(X, y, X_tgt, y_tgt, n_poison, aware=True,
                                                        init=None if kkt is None else kkt.poison,
                                                        loss_percentile=loss_pct, schedule=args.schedule,
                                                        **common), victim, X, y)
    attacks["aware"] = aware
    if kkt is not None:
        attacks["kkt"] = kkt
    bar.update()
    bar.close()
    rows = evaluate_defenses(victim, X, y, Xt, yt, attacks, fraction=args.fraction, loss_score=hinge_score)
    total = time.perf_counter() - t0
    pos, neg = args.pair
    results = {
        "experiment": "koh2022",
        "dataset": args.dataset,
        "pair": [pos, neg],
        "config": {"n_train": int(len(y)), "n_test": int(len(yt)), "n_poison": n_poison, "epsilon": args.epsilon,
                   "locations": args.locations, "counts": np.asarray(aware.poison.counts).astype(int).tolist(),
                   "steps": args.steps, "step_size": args.step_size, "wd": args.wd,
                   "C": 1.0 / ((len(y) + n_poison) * args.wd), "t": args.t, "fraction": args.fraction,
                   "percentile": args.percentile, "target": args.target, "init": args.init,
                   "loss_percentile": loss_pct, "schedule": args.schedule, "kkt_splits": args.kkt_splits,
                   "decoy_weights": list(args.decoy_weights), "seed": args.seed,
                   "gradient": "implicit (IFT) = influence I_pert"},
        "rows": rows,
        "target_loss": {"naive_start": float(naive.history[0]), "naive_best": naive.objective,
                        "aware_start": float(aware.history[0]), "aware_best": aware.objective,
                        **({"kkt_best": kkt.objective} if kkt is not None else {})},
        "attack_seconds": {"naive": naive.seconds, "aware": aware.seconds,
                           **({"kkt": kkt.seconds} if kkt is not None else {})},
        "total_seconds": total,
        "paper": PAPER_NOTE,
    }
    _cli.write_json_atomic(out / "results.json", results)
    ckpt.clear()
    table = [[r["defense"], r["clean_error"], r["naive_no_defense"], r["naive_with_defense"]]
             + ([r["kkt_with_defense"]] if kkt is not None else [])
             + [r["aware_no_defense"], r["aware_with_defense"], r["aware_poison_kept"]] for r in rows]
    print(f"Koh et al. 2022, {args.dataset} {pos} vs {neg}: n={len(y)} test={len(yt)} poison={n_poison} "
          f"({args.epsilon:g}) in {args.locations} locations, remove {args.fraction:g}/class")
    print(_cli.format_table(table, ["defense", "clean", "naive", "naive+def"] + (["kkt+def"] if kkt is not None else [])
                            + ["aware", "aware+def", "aware kept"]))
    print(PAPER_NOTE)
    print(f"total {total:.1f} s")
    if not args.no_plots:
        _plot(out, results)
    print(f"wrote {out / 'results.json'}")
    return results


def _plot(out, results):
    plt = _cli.pyplot()
    rows = results["rows"]
    keys = ["clean_error", "naive_no_defense", "naive_with_defense", "aware_with_defense"]
    labels = ["clean", "naive, no defense", "naive + defense", "aware + defense"]
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    w = 0.2
    xs = np.arange(len(rows))
    for i, (k, lab) in enumerate(zip(keys, labels)):
        ax.bar(xs + (i - 1.5) * w, [r[k] for r in rows], w, label=lab)
    ax.set_xticks(xs)
    ax.set_xticklabels([r["defense"] for r in rows])
    ax.set_ylabel("test error")
    ax.set_title(f"{results['dataset']} {results['pair'][0]} vs {results['pair'][1]}, "
                 f"eps={results['config']['epsilon']:g}")
    ax.legend(fontsize=7)
    _cli.save_figure(fig, out / "test_error.png")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
