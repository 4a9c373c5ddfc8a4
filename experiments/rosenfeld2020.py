r"""Label-flip randomized smoothing (Rosenfeld et al., ICML 2020): certified accuracy against label flips.

Binary MNIST 1 vs 7 (n = 13,007; ``--data-dir``, else scikit-learn's digits 1 vs 7). The base learner is
ridge regression on the 0/1 labels over label-free features (a whitened PCA of all training images,
``--pca-dim``; 0 = the raw pixels), so the smoothed classifier's vote probability under label noise
``q`` has a deterministic Chernoff bound and needs no sampling or retraining
(:mod:`poisoning.certify.label_flip_smoothing`); the certified radius is the number of training labels
an adversary may flip without changing the prediction. One curve per ``--q``; abstentions count as
errors.

Published (as quoted by Levine & Feizi 2021, who compare SS-DPA with it): MNIST 1 vs 7, about 94.5 %
clean accuracy and below 70 % certified accuracy at their reported radii; SS-DPA's specialized binary
variant certifies every correct image up to 5,952 flips.

Outputs (``--out``, default ``runs/rosenfeld2020``): ``results.json`` (per q: ``radius``,
``certified_accuracy``, ``clean_accuracy``, ``median_certified``, ``abstain``; the same keys at the top
level for the q with the largest median, named by ``q``), ``certified_accuracy.png``.

Usage::

    python -m experiments.rosenfeld2020 --data-dir ../shared/data
    python -m experiments.rosenfeld2020 --data-dir ../shared/data --q 0.1,0.2,0.3,0.4 --pca-dim 0
    python -m experiments.rosenfeld2020 --quick
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from experiments import _cli

__all__ = ["PAPER", "build_parser", "run", "main"]

PAPER = {"source": "Rosenfeld et al. 2020 as quoted by Levine & Feizi 2021 (MNIST 1 vs 7)",
         "clean_accuracy": 0.945, "certified_accuracy_below": 0.70}


def build_parser():
    p = _cli.base_parser(__doc__.split("\n")[0], default_out="runs/rosenfeld2020")
    p.add_argument("--q", default="0.1,0.2,0.3,0.4", help="label-flip probabilities of the smoothing noise")
    p.add_argument("--pair", type=int, nargs=2, default=(1, 7), metavar=("POS", "NEG"))
    p.add_argument("--pca-dim", type=int, default=64, help="label-free whitened PCA features (0: raw pixels)")
    p.add_argument("--lam", type=float, default=1e-2, help="ridge penalty (times n)")
    p.add_argument("--max-radius", type=int, default=2000)
    p.add_argument("--n-test", type=int, default=None)
    p.add_argument("--no-plots", action="store_true")
    return p


def _load(args):
    from poisoning import datasets as data

    note = None
    ds = None
    if not args.quick:
        try:
            ds = data.load_mnist(_cli.resolve_data_dir(args.data_dir))
        except FileNotFoundError:
            note = "MNIST not found (pass --data-dir); ran on sklearn's 8x8 digits instead"
    if ds is None:
        ds = data.load_digits(seed=args.seed)
        note = note or "sklearn's 8x8 digits (a stand-in for MNIST)"
    pos, neg = args.pair
    X, y = data.binary_pair(ds.X_train, ds.y_train, pos, neg, labels=(1, 0))
    Xt, yt = data.binary_pair(ds.X_test, ds.y_test, pos, neg, labels=(1, 0))
    X, Xt = X.reshape(len(X), -1).astype(np.float64), Xt.reshape(len(Xt), -1).astype(np.float64)
    if args.n_test is not None:
        Xt, yt = Xt[: args.n_test], yt[: args.n_test]
    return ds.name, X, y.astype(np.int32), Xt, yt.astype(np.int32), note


def _features(X, Xt, dim):
    """SS-DPA's label-free whitened PCA of the training images (:func:`poisoning.certify.pca_features`)."""
    if dim <= 0:
        return X, Xt
    from poisoning.certify import pca_features

    transform = pca_features(X, dim)
    return (np.asarray(transform(X), np.float64).reshape(len(X), -1),
            np.asarray(transform(Xt), np.float64).reshape(len(Xt), -1))


def run(args) -> dict[str, Any]:
    import jax

    from poisoning.certify import label_flip_smoothing as LS

    jax.config.update("jax_enable_x64", True)   # Chernoff exponents over 13,000 terms
    t0 = time.perf_counter()
    qs = [float(v) for v in str(args.q).split(",") if v.strip()]
    if not qs or any(not 0 < q < 0.5 for q in qs):
        raise SystemExit(f"--q: every value must be in (0, 0.5), got {args.q!r}")
    name, X, y, Xt, yt, note = _load(args)
    H, Ht = _features(X, Xt, args.pca_dim)
    beta = np.asarray(LS.ridge_label_weights(H, Ht, args.lam))
    plain = float(np.mean((beta @ y >= 0.5).astype(int) == yt))
    out = _cli.ensure_dir(args.out)
    curves = {}
    for q in _cli.progress(qs, desc="noise levels"):
        up1, up0 = (np.asarray(a) for a in LS.chernoff_bounds(beta, y, q))
        pred = np.where(up0 < 0.5, 1, np.where(up1 < 0.5, 0, -1))
        p_lower = np.where(pred == 1, 1 - up0, np.where(pred == 0, 1 - up1, 0.0))
        radius = np.asarray(LS.flip_radius(p_lower, q, args.max_radius))
        robust = np.where(pred == yt, radius, -1)
        radii = np.arange(0, max(int(robust.max()), 0) + 2)
        acc = np.array([np.mean(robust >= r) for r in radii])
        srt = np.sort(robust)[::-1]
        curves[str(q)] = {
            "q": q, "radius": radii.tolist(), "certified_accuracy": acc.tolist(),
            "clean_accuracy": float(np.mean(pred == yt)), "abstain": float(np.mean(pred < 0)),
            "median_certified": int(srt[(len(srt) + 1) // 2 - 1]),
            "capped": bool(np.any(radius >= args.max_radius)),
        }
    results = {
        "experiment": "rosenfeld2020", "dataset": name, "data_note": note, "pair": list(args.pair),
        "n_train": int(len(y)), "n_test": int(len(yt)), "features": f"whitened PCA-{args.pca_dim}" if args.pca_dim > 0
        else "pixels", "lam": args.lam, "unsmoothed_accuracy": plain, "curves": curves, "paper": PAPER,
        "seconds": time.perf_counter() - t0,
    }
    # the top-level keys: the curve of the noise level with the largest median certified radius
    best = max(curves.values(), key=lambda c: (c["median_certified"], -c["q"]))
    results.update({k: best[k] for k in ("q", "radius", "certified_accuracy", "clean_accuracy", "median_certified")})
    _cli.write_json_atomic(out / "results.json", results)
    if not args.no_plots:
        plt = _cli.pyplot()
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for c in curves.values():
            ax.plot(c["radius"], c["certified_accuracy"], label=f"q = {c['q']:g}")
        ax.axhline(PAPER["clean_accuracy"], color="grey", lw=0.6, ls=":", label="paper's clean accuracy")
        ax.set_xlabel("label flips")
        ax.set_ylabel("certified accuracy")
        ax.set_title(f"label-flip smoothing, {name} {args.pair[0]} vs {args.pair[1]}")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
        _cli.save_figure(fig, out / "certified_accuracy.png")
    rows = [[f"ours q={c['q']:g}", f"{c['clean_accuracy']:.4f}", f"{c['abstain']:.4f}", c["median_certified"]]
            for c in curves.values()]
    rows.append(["paper (quoted)", f"{PAPER['clean_accuracy']:.4f}", "-", "-"])
    if note:
        print(f"note: {note}")
    print(f"{name} {args.pair[0]} vs {args.pair[1]}: n = {len(y)}, {results['features']}, ridge lam {args.lam:g}; "
          f"unsmoothed accuracy {plain:.4f}")
    print(_cli.format_table(rows, ["", "clean acc", "abstain", "median certified flips"]))
    print(f"{results['seconds']:.1f} s; results in {out}")
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
