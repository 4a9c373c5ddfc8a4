r"""The single-pixel perturbation backdoor of Xiang, Miller & Kesidis (IEEE MLSP 2019) against spectral
signatures (SS), activation clustering (AC) and their cluster-impurity defense (CI): the seed's table of
(TPR, FPR) per perturbation size, single- and multiple-source, on a CPU protocol.

Protocol (CPU; the paper's is CIFAR-10, ResNet-20, 200 epochs):

- data: Fashion-MNIST (``--dataset``; MNIST works too; without files, scikit-learn's digits
  upsampled, flagged ``"fallback": true``); the network is the BadNets CNN
  (:class:`poisoning.models.BadNetsCNN`), trained as in :mod:`experiments.gu2017`;
- trigger: one pixel in the non-background region, fixed for all backdoor images: the pixel of the
  central 14x14 region whose mean training intensity is closest to 0.5; the perturbation
  :math:`\delta` (``--deltas``, 0.15 ... 0.40) is added and the result clipped to [0, 1]
  (:class:`poisoning.triggers.Pixel`);
- backdoor: ``--n-poison`` (600) training images of the source class(es) get the trigger and the
  target label (in place): single-source (``--source`` -> ``--target``) and multiple-source (every
  other class -> ``--target``);
- for each setting: clean accuracy and attack success of the poisoned network; SS, AC and CI on its
  penultimate features (TPR / FPR); retraining on the kept samples, clean accuracy and attack success
  after; and the three defenses on the clean network's clean training set (FPR there).

Published (CIFAR-10, ResNet-20): CI TPR 0.976-0.995 at FPR 0.001-0.005; AC TPR 0.570-0.867 at FPR
0.001-0.100; SS TPR 0.39-0.59 at FPR 0.5. ``results.json`` holds ``rows`` (``attack``, ``defense``,
``delta``, ``sources``, ``clean_accuracy``, ``attack_success``, ``tpr``, ``fpr``, and the retrained
model's numbers), ``ordering`` (whether CI > AC > SS in TPR per setting) and the paper's numbers;
``tpr_fpr.png`` plots TPR and FPR against the perturbation size.

Usage::

    python -m experiments.xiang2019 --data-dir DIR                     # Fashion-MNIST, 3 sizes
    python -m experiments.xiang2019 --data-dir DIR --deltas 0.15,0.2,0.25,0.3,0.35,0.4
    python -m experiments.xiang2019 --quick
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from experiments import _cli
from experiments import gu2017 as g

__all__ = ["PAPER", "choose_pixel", "build_parser", "main"]

PAPER = {
    "source": "Xiang, Miller & Kesidis, IEEE MLSP 2019, CIFAR-10, ResNet-20",
    "ci": {"tpr": [0.976, 0.995], "fpr": [0.001, 0.005]},
    "ac": {"tpr": [0.570, 0.867], "fpr": [0.001, 0.100]},
    "ss": {"tpr": [0.39, 0.59], "fpr": [0.5, 0.5]},
}


def choose_pixel(x) -> tuple[int, int]:
    """The pixel of the central half (rows and columns H/4 .. 3H/4) whose mean intensity over ``x``
    ``(n, H, W[, C])`` is closest to 0.5: in the non-background region, with room for a perturbation."""
    m = np.asarray(x, np.float64).mean(axis=0)
    m = m.mean(axis=-1) if m.ndim == 3 else m
    H, W = m.shape
    r0, c0 = H // 4, W // 4
    centre = m[r0:H - r0, c0:W - c0]
    r, c = np.unravel_index(np.argmin(np.abs(centre - 0.5)), centre.shape)
    return int(r + r0), int(c + c0)


def build_parser():
    p = _cli.base_parser(__doc__.splitlines()[0], default_out="runs/xiang2019")
    p.add_argument("--dataset", choices=("fashion_mnist", "mnist"), default="fashion_mnist")
    p.add_argument("--deltas", default="0.15,0.25,0.4", help="perturbation sizes")
    p.add_argument("--sources", default="single,multiple", help="single and/or multiple")
    p.add_argument("--source", type=int, default=1, help="source class of the single-source backdoor")
    p.add_argument("--target", type=int, default=0)
    p.add_argument("--n-poison", type=int, default=600)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--defenses", default="ss,ac,ci")
    p.add_argument("--ss-eps", type=float, default=0.1)
    p.add_argument("--no-retrain", action="store_true", help="skip retraining after each defense")
    p.add_argument("--fresh", action="store_true")
    return p


def _plot(rows, path):
    plt = _cli.pyplot()
    modes = sorted({r["sources"] for r in rows if r["sources"]})
    fig, axes = plt.subplots(1, max(len(modes), 1), figsize=(5 * max(len(modes), 1), 3.6), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for d, color in zip(g.DEFENSES, ("C0", "C1", "C2")):
            rr = sorted((r for r in rows if r["sources"] == mode and r["defense"] == d), key=lambda r: r["delta"])
            if rr:
                ax.plot([r["delta"] for r in rr], [r["tpr"] for r in rr], "-o", color=color, label=f"{d.upper()} TPR")
                ax.plot([r["delta"] for r in rr], [r["fpr"] for r in rr], "--x", color=color, label=f"{d.upper()} FPR")
        ax.set_xlabel("perturbation size"), ax.set_ylim(-0.02, 1.02), ax.set_title(f"{mode}-source")
        ax.legend(fontsize=7)
    return _cli.save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from poisoning import triggers

    args = build_parser().parse_args(argv)
    try:
        deltas = sorted({float(d) for d in args.deltas.split(",") if d.strip()})
    except ValueError:
        raise SystemExit(f"--deltas: cannot read {args.deltas!r}")
    if not deltas or any(not 0 < d <= 1 for d in deltas):
        raise SystemExit("--deltas must be numbers in (0, 1]")
    modes = [m.strip() for m in args.sources.split(",") if m.strip()]
    if not modes or any(m not in ("single", "multiple") for m in modes):
        raise SystemExit("--sources must be a comma list of single, multiple")
    defenses = [d.strip() for d in args.defenses.split(",") if d.strip()]
    if any(d not in g.DEFENSES for d in defenses):
        raise SystemExit(f"--defenses must be a comma list of {g.DEFENSES}")
    if not (0 <= args.target < 10 and 0 <= args.source < 10 and args.source != args.target):
        raise SystemExit("--source and --target must be distinct classes in 0..9")
    if args.n_poison < 1:
        raise SystemExit("--n-poison must be >= 1")
    out = Path(args.out)
    x, y, xt, yt, data_name, fallback = g.load_data(args.data_dir, args.seed, 300 if args.quick else args.n_train,
                                                    args.dataset)
    n_poison = min(args.n_poison, 5) if args.quick else args.n_poison
    if args.quick:
        xt, yt = xt[:100], yt[:100]
    cfg, knobs = g.recipe(args.epochs, args.quick)
    trainer = g.Trainer(cfg, knobs, x, args.seed)
    row, col = choose_pixel(x)
    ci_max = 3 if args.quick else 10
    config = {k: v for k, v in vars(args).items() if k not in ("out", "fresh")}
    ckpt = _cli.Checkpoint(out / "progress.npz")
    saved = None if args.fresh else ckpt.load()
    done: dict[str, list] = {}
    if saved is not None and str(saved["config"]) == json.dumps(config, sort_keys=True):
        done = json.loads(str(saved["done"]))

    def save(key, rows):
        done[key] = _cli.to_jsonable(rows)
        ckpt.save({"config": json.dumps(config, sort_keys=True), "done": json.dumps(done)})

    def defend(state, xs, ys, is_poison):
        return g.run_defenses(defenses, trainer, state, xs, ys, is_poison, ss_eps=args.ss_eps,
                              ac_criterion="relative_size", ci_threshold=0.5, seed=args.seed,
                              ci_max_components=ci_max)[0]

    t_start = time.perf_counter()
    if "clean" not in done:
        state = trainer.fit(x, y)
        acc = trainer.accuracy(state, xt, yt)
        rows = [dict(g._row("none", None, "none", None, acc, None), delta=None, sources=None)]
        for name, (det, rates, secs) in defend(state, x, y, np.zeros(len(y), bool)).items():
            rows.append(dict(g._row("none", None, name, None, acc, None, rates, seconds=secs), delta=None,
                             sources=None))
        save("clean", rows)
    clean_acc = done["clean"][0]["clean_accuracy"]
    print(f"[xiang2019] {data_name}: clean accuracy {clean_acc:.4f}; pixel ({row}, {col}); defenses on the clean "
          "set: " + ", ".join(f"{r['defense']} FPR {r['fpr']:.4f}" for r in done["clean"][1:]), flush=True)

    for mode in modes:
        setting = g.Setting("single", args.target, args.source if mode == "single" else None)
        for delta in deltas:
            key = f"{mode}:{delta}"
            if key in done:
                continue
            trig = triggers.Pixel(np.float32(delta), row=row, col=col)
            from poisoning.attacks.gu2017 import poison_dataset
            from poisoning.backdoor import eligible
            import jax

            n_elig = int(eligible(y, target=setting.target, source=setting.source).sum())
            pset = poison_dataset(jax.random.key(args.seed), x, y, trig, min(n_poison / n_elig, 1.0),
                                  target=setting.target, source=setting.source, of="eligible")
            state = trainer.fit(pset.images, pset.labels)
            acc = trainer.accuracy(state, xt, yt)
            asr, hits, n_t = g.attack_success(trainer, state, trig, setting, xt, yt)
            base = {"delta": delta, "sources": mode, "pixel": [row, col], "n_poison": int(pset.is_poison.sum())}
            rows = [dict(g._row("pixel", setting, "none", "pixel", acc, asr), **base)]
            print(f"[xiang2019] {mode}-source, delta {delta}: clean accuracy {acc:.4f}, attack success {asr:.4f}",
                  flush=True)
            for name, (det, rates, secs) in defend(state, pset.images, pset.labels, pset.is_poison).items():
                extra = {"seconds": secs}
                if not args.no_retrain:
                    re = trainer.fit(pset.images, pset.labels, keep=~det.flagged)
                    extra.update(retrained_clean_accuracy=trainer.accuracy(re, xt, yt),
                                 retrained_attack_success=g.attack_success(trainer, re, trig, setting, xt, yt)[0])
                rows.append(dict(g._row("pixel", setting, name, "pixel", acc, asr, rates, **extra), **base))
                print(f"[xiang2019]   {name}: TPR {rates.tpr:.4f} FPR {rates.fpr:.4f}"
                      + (f" -> retrained attack success {extra['retrained_attack_success']:.4f}"
                         if "retrained_attack_success" in extra else ""), flush=True)
            save(key, rows)

    rows = [r for key in ["clean"] + [f"{m}:{d}" for m in modes for d in deltas] for r in done[key]]
    ordering = {}
    for mode in modes:
        for delta in deltas:
            tpr = {r["defense"]: r["tpr"] for r in rows if r["sources"] == mode and r["delta"] == delta
                   and r["defense"] in g.DEFENSES}
            if all(d in tpr for d in g.DEFENSES):
                ordering[f"{mode}:{delta}"] = bool(tpr["ci"] > tpr["ac"] > tpr["ss"])
    results = {"experiment": "xiang2019", "dataset": data_name, "fallback": fallback, "pixel": [row, col],
               "config": config, "paper": PAPER, "ordering_ci_gt_ac_gt_ss": ordering, "rows": rows,
               "seconds": time.perf_counter() - t_start}
    _cli.write_json_atomic(out / "results.json", results)
    _plot(rows, out / "tpr_fpr.png")
    print(_cli.format_table(
        [[r["sources"] or "-", r["delta"] if r["delta"] is not None else "-", r["defense"], r["clean_accuracy"],
          "-" if r["attack_success"] is None else r["attack_success"], "-" if r["tpr"] is None else r["tpr"],
          "-" if r["fpr"] is None else r["fpr"],
          r.get("retrained_attack_success", "-")] for r in rows],
        ["sources", "delta", "defense", "clean_acc", "attack_success", "tpr", "fpr", "retrained_asr"]))
    print(f"paper ({PAPER['source']}): " + "; ".join(
        f"{d.upper()} TPR {PAPER[d]['tpr'][0]}-{PAPER[d]['tpr'][1]}, FPR {PAPER[d]['fpr'][0]}-{PAPER[d]['fpr'][1]}"
        for d in ("ci", "ac", "ss")))
    print(f"ordering CI > AC > SS: {ordering}\nwrote {out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
