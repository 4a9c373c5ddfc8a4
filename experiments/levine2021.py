r"""Deep Partition Aggregation and SS-DPA (Levine & Feizi, ICLR 2021): certified accuracy on MNIST.

The training set is split by the hash :math:`h(x) = (\sum_j \text{pixel}_j) \bmod k` into :math:`k`
partitions (:mod:`poisoning.certify.partition`); one base classifier per partition is trained, all
of a chunk at once with ``jax.vmap`` (:mod:`poisoning.certify.dpa`); the test prediction is their
plurality vote (ties to the smaller class) with the certified radius
:math:`\rho = \lfloor (n_c - \max_{c' \ne c}(n_{c'} + [c' < c]))/2 \rfloor` (:mod:`poisoning.certify.aggregate`):

- ``--mode dpa``: :math:`\rho` insertions or deletions of training samples (general poisoning);
- ``--mode fa``: Finite Aggregation (Wang, Levine & Feizi, ICML 2022; :mod:`poisoning.certify.finite_aggregation`):
  ``k*d`` buckets by the same hash mod ``k*d``, each spread over ``--d`` of the ``k*d`` base learners
  (each learner trains on about ``n/k`` images, as a DPA learner does); the certificate counts
  insertions or deletions (and label flips) against the votes of every learner a bucket reaches.
  ``python -m experiments.wang2022`` is this mode with its own defaults and output folder;
- ``--mode ssdpa``: :math:`\rho` label flips. The paper's base classifiers are semi-supervised (RotNet
  features of all unlabeled images + the partition's labels); here the label-free representation is a
  whitened PCA of all training images (``--pca-dim``) and each base classifier a softmax regression on it
  with its partition's labels (a documented simplification: PCA is far weaker than RotNet; ``--no-whiten``
  keeps the variances' ratios, ``--pca-dim 0`` uses the raw pixels, i.e. DPA's base learners).

Protocols:

- default (CPU): ``--base logistic`` (softmax regression on the pixels, full-batch SGD with momentum, 100
  steps; :func:`poisoning.certify.default_train_config`), MNIST (``--data-dir``, else sklearn's digits),
  k = 1200 (DPA) / 3000 (SS-DPA), all 10,000 test images. A cheap base learner: the paper's NiN base
  classifiers are far more accurate, so our clean accuracy and radii are lower;
- ``--preset paper``: NiN base learners (:class:`poisoning.models.NetworkInNetwork`, the paper's recipe as
  far as :func:`~poisoning.certify.default_train_config` knows it), for an accelerator;
- ``--quick``: digits, k = 10, a few steps (tests and smoke checks).

Measured here (MNIST, all 10,000 test images, logistic base learners; 20-45 s per run on 2 CPU cores,
up to 13 minutes at ``nice 10`` while other jobs saturate them):

=========================================  ==========  ================  ===================================
run                                        clean acc   median certified  paper (NiN / RotNet base learners)
=========================================  ==========  ================  ===================================
DPA, k = 1200, pixels                      85.5 %      300               95.8 %, 448
SS-DPA, k = 3000, whitened PCA-64          87.0 %      256 label flips   median 647
SS-DPA, k = 3000, PCA-64 ``--no-whiten``   81.8 %      391 label flips   median 647
SS-DPA, k = 3000, pixels (--pca-dim 0)     82.0 %      385 label flips   median 647
SS-DPA, k = 1200, whitened PCA-64          87.5 %      187 label flips
=========================================  ==========  ================  ===================================

The k base models train in chunks of ``--chunk``; the votes of every finished chunk are checkpointed
(``OUT/checkpoint.npz``), so a killed run continues with ``--resume``.

Outputs (``--out``, default ``runs/levine2021``): ``results.json`` (``radius`` and ``certified_accuracy``
lists, ``clean_accuracy``, ``median_certified``, ``base_accuracy``, ``seconds``, ``protocol``, ``paper``),
``certified_accuracy.png`` (certified accuracy against the attack size).

Usage::

    python -m experiments.levine2021 --data-dir ../shared/data                       # DPA, k = 1200
    python -m experiments.levine2021 --data-dir ../shared/data --mode ssdpa          # SS-DPA, k = 3000
    python -m experiments.levine2021 --data-dir ../shared/data --preset paper        # NiN, accelerator

Reference: A. Levine, S. Feizi, *Deep Partition Aggregation: Provable Defenses against General Poisoning
Attacks*, ICLR 2021.
"""

from __future__ import annotations

import json
import time
from typing import Any, Sequence

import numpy as np

from experiments import _cli

MODES = ("dpa", "ssdpa", "fa")
DEFAULT_K = {"dpa": 1200, "ssdpa": 3000, "fa": 1200}
DEFAULT_D = 16

# The paper's MNIST numbers (Levine & Feizi 2021, as quoted in the project's issue 13).
PAPER = {
    "dpa": {"k": 1200, "base": "nin", "median_certified": 448, "clean_accuracy": 0.958,
            "threat": "insertions/deletions of training samples"},
    "ssdpa": {"k": 3000, "base": "semi-supervised (RotNet features)", "median_certified": 647,
              "threat": "label flips"},
    # Wang, Levine & Feizi 2022 (abstract; the per-radius tables were not transcribed)
    "fa": {"k": 1200, "d": 16, "base": "nin", "median_certified": None,
           "claim": "certified fraction up to 3.05 points above DPA's at the same clean accuracy (MNIST)",
           "threat": "insertions/deletions of training samples"},
}


def build_parser():
    p = _cli.base_parser(__doc__.split("\n")[0], default_out="runs/levine2021")
    p.add_argument("--mode", choices=MODES, default="dpa")
    p.add_argument("--k", type=int, default=None, help="number of partitions (default 1200 DPA / FA, 3000 SS-DPA)")
    p.add_argument("--d", type=int, default=None, help=f"FA: base learners per sample (default {DEFAULT_D})")
    p.add_argument("--base", choices=("logistic", "cnn", "nin"), default=None,
                   help="base learner (default logistic; nin with --preset paper)")
    p.add_argument("--preset", choices=("cpu", "paper"), default="cpu")
    p.add_argument("--dataset", choices=("auto", "mnist", "digits"), default="auto",
                   help="auto: MNIST when --data-dir holds it, else sklearn's digits")
    p.add_argument("--pca-dim", type=int, default=64,
                   help="SS-DPA: dimension of the label-free PCA features (0: raw pixels, no unlabeled data)")
    p.add_argument("--no-whiten", action="store_true", help="SS-DPA: PCA features not whitened (one common scale)")
    p.add_argument("--chunk", type=int, default=200, help="base models trained per vmapped call (and checkpoint)")
    p.add_argument("--epochs", type=int, default=None, help="override the base learner's epochs")
    p.add_argument("--learning-rate", type=float, default=None, help="override the base learner's learning rate")
    p.add_argument("--pad-to", type=int, default=None,
                   help="padded partition size S fixed in advance (default: the largest clean partition); "
                        "base learner i is then a function of its own partition only, up to S samples")
    p.add_argument("--n-test", type=int, default=None, help="first N test images (default all)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    p.add_argument("--no-plots", action="store_true")
    return p


def _load(args):
    from poisoning import datasets as data

    want = "digits" if args.quick and args.dataset == "auto" else args.dataset
    if want in ("auto", "mnist"):
        try:
            return data.load_mnist(_cli.resolve_data_dir(args.data_dir), flatten=False), None
        except FileNotFoundError:
            if want == "mnist":
                raise
            note = "MNIST not found (pass --data-dir); ran on sklearn's 8x8 digits instead"
            return data.load_digits(flatten=False, seed=args.seed), note
    return data.load_digits(flatten=False, seed=args.seed), "sklearn's 8x8 digits (a stand-in for MNIST)"


def run(args) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    from poisoning import certify as C

    t0 = time.perf_counter()
    base = args.base or ("nin" if args.preset == "paper" else "logistic")
    if args.mode == "ssdpa" and base != "logistic":
        raise SystemExit("--mode ssdpa: the base classifier here is a softmax regression on label-free PCA "
                         "features (--base logistic)")
    ds, data_note = _load(args)
    X, y = np.asarray(ds.X_train, np.float32), np.asarray(ds.y_train, np.int32)
    Xt, yt = np.asarray(ds.X_test, np.float32), np.asarray(ds.y_test, np.int32)
    if args.n_test is not None:
        if args.n_test < 1:
            raise SystemExit("--n-test must be >= 1")
        Xt, yt = Xt[: args.n_test], yt[: args.n_test]
    num_classes = int(max(y.max(), yt.max())) + 1
    k = args.k if args.k is not None else (10 if args.quick else DEFAULT_K[args.mode])
    try:
        k = C.check_num_partitions(k, len(y))
    except ValueError as e:
        raise SystemExit(f"--k: {e}") from e
    if args.chunk < 1:
        raise SystemExit("--chunk must be >= 1")

    # the partition hashes the images (never the labels); its padded size is fixed for the whole run
    if args.d is not None and args.mode != "fa":
        raise SystemExit("--d is Finite Aggregation's parameter (--mode fa)")
    d = (args.d if args.d is not None else (2 if args.quick else DEFAULT_D)) if args.mode == "fa" else 1
    if d < 1:
        raise SystemExit("--d must be >= 1")
    shifts = None
    if args.mode == "fa":
        try:
            _, fa_mask, shifts = C.fa_layout(X, k, d)
        except ValueError as e:
            raise SystemExit(f"--k/--d: {e}") from e
        sizes = np.asarray(fa_mask).sum(axis=1)
    else:
        part = np.asarray(C.partition_indices(X, k))
        sizes = np.bincount(part, minlength=k)
    m = k * d   # base learners
    cfg = C.default_train_config(base, int(sizes.max()), quick=args.quick)
    if args.pad_to is not None and args.pad_to < int(sizes.max()):
        raise SystemExit(f"--pad-to {args.pad_to} is smaller than the largest partition ({int(sizes.max())})")
    size = int(args.pad_to or sizes.max())
    if cfg.batch_size >= int(sizes.max()):   # full-batch learners: one batch of the padded size
        cfg = cfg.replace(batch_size=size)
    size = -(-size // cfg.batch_size) * cfg.batch_size  # mini-batch learners: whole batches
    if args.mode == "fa":
        index, mask, _ = C.fa_layout(X, k, d, shifts=shifts, size=size)
    else:
        index, mask = C.partition_layout(part, k, size=size)
    if args.pca_dim < 0:
        raise SystemExit("--pca-dim must be >= 0")
    if args.mode == "ssdpa" and args.pca_dim > 0:
        transform = C.pca_features(X, args.pca_dim, whiten=not args.no_whiten)   # label-free: every base classifier shares it
        X_in, Xt_in = np.asarray(transform(X)), np.asarray(transform(Xt))
    else:
        X_in, Xt_in = X, Xt
    model = C.base_model(base, num_classes, X.shape[1:])
    if args.quick:
        cfg = cfg.replace(epochs=min(cfg.epochs, 20))
    if args.epochs is not None:
        cfg = cfg.replace(epochs=args.epochs)
    if args.learning_rate is not None:
        cfg = cfg.replace(learning_rate=args.learning_rate)

    config = {"mode": args.mode, "k": k, "d": d, "shifts": None if shifts is None else shifts.tolist(), "base": base, "preset": args.preset, "dataset": ds.name,
              "n_train": int(len(y)), "n_test": int(len(yt)), "padded_size": size, "seed": args.seed,
              "chunk": args.chunk, "pca_dim": args.pca_dim if args.mode == "ssdpa" else None,
              "whiten": (not args.no_whiten) if args.mode == "ssdpa" and args.pca_dim else None,
              "train": cfg.as_dict(), "quick": bool(args.quick)}
    out = _cli.ensure_dir(args.out)
    ckpt = _cli.Checkpoint(out / "checkpoint.npz")
    votes = np.zeros((m, len(yt)), np.int8 if num_classes <= 127 else np.int32)
    done, seconds_before = 0, 0.0
    if args.resume and ckpt.exists():
        state = ckpt.load()
        if json.loads(str(state["config"])) != json.loads(json.dumps(_cli.to_jsonable(config))):
            raise SystemExit(f"--resume: checkpoint {ckpt.path} was written with other settings")
        done, votes = int(state["done"]), np.asarray(state["votes"]).astype(votes.dtype)
        seconds_before = float(state["seconds"])
        print(f"resuming from {ckpt.path}: {done} of {m} base models done")

    key = jax.random.key(args.seed)
    Xj, yj, Xtj = jnp.asarray(X_in), jnp.asarray(y), jnp.asarray(Xt_in)
    starts = list(range(done, m, args.chunk))
    bar = _cli.progress(total=m, initial=done, desc=f"{args.mode} base models", unit="model")
    t_train = time.perf_counter()
    for s in starts:
        ids = np.arange(s, min(s + args.chunk, m))
        if len(ids) < args.chunk and len(ids) != m:  # the last chunk: pad with repeats, one compiled shape
            ids_run = np.concatenate([ids, np.full(args.chunk - len(ids), ids[-1])])
        else:
            ids_run = ids
        v = C.train_and_vote(model, cfg, Xj, yj, index, mask, jnp.asarray(ids_run), Xtj, key)
        votes[ids] = np.asarray(v)[: len(ids)]
        done = int(ids[-1]) + 1
        ckpt.save({"config": json.dumps(_cli.to_jsonable(config)), "done": done, "votes": votes,
                   "seconds": seconds_before + time.perf_counter() - t_train})
        bar.update(len(ids))
    bar.close()
    train_seconds = seconds_before + time.perf_counter() - t_train

    if args.mode == "fa":
        pred, radius = C.fa_certified_radius(jnp.asarray(votes.astype(np.int32)), num_classes, shifts)
    else:
        pred, radius = C.certify_votes(jnp.asarray(votes.astype(np.int32)), num_classes)
    pred, radius = np.asarray(pred), np.asarray(radius)
    radii = np.arange(0, int(radius.max()) + 2)
    curve = np.asarray(C.certified_accuracy(pred, radius, yt, radii))
    median = int(C.median_certified(pred, radius, yt))
    clean = float(np.mean(pred == yt))
    base_acc = np.mean(votes == yt[None, :], axis=1)
    paper = PAPER[args.mode]
    scheme = {"dpa": "DPA (insertions/deletions)", "ssdpa": "SS-DPA (label flips)",
              "fa": f"Finite Aggregation (insertions/deletions), d = {d}, shifts {shifts.tolist() if shifts is not None else ''}"}
    protocol = (
        f"{scheme[args.mode]} on {ds.name}: "
        f"hash = pixel sum mod {'k*d' if args.mode == 'fa' else 'k'}, k = {k}: {m} base learners on "
        f"{sizes.min()}-{sizes.max()} images (mean "
        f"{sizes.mean():.1f}), padded to {size}; base learner {base} "
        f"({'softmax regression on label-free ' + ('' if args.no_whiten else 'whitened ') + 'PCA-' + str(args.pca_dim) + ' features of all training images' if args.mode == 'ssdpa' and args.pca_dim else 'on the pixels'}), "
        f"{cfg.optimizer} lr {cfg.learning_rate:g}, {cfg.epochs} epochs of batch {cfg.batch_size}, weight decay "
        f"{cfg.weight_decay:g}; {len(yt)} test images; plurality vote, ties to the smaller class; radius "
        + ("the largest r whose r heaviest buckets (votes they can move) sum to at most the vote gap "
              "(Wang et al. 2022)." if args.mode == "fa"
           else "floor((n_c - max_c'(n_c' + [c' < c])) / 2).")
        + ("" if base == "nin" else " A cheap base learner (CPU protocol): the paper's NiN base classifiers are "
           "much more accurate, hence its larger radii.")
    )
    results = {
        "experiment": "wang2022" if args.mode == "fa" else "levine2021", "mode": args.mode, "dataset": ds.name, "data_note": data_note,
        "config": config, "protocol": protocol,
        "radius": radii.tolist(), "certified_accuracy": curve.tolist(),
        "clean_accuracy": clean, "median_certified": median,
        "base_accuracy": {"mean": float(base_acc.mean()), "min": float(base_acc.min()), "max": float(base_acc.max())},
        "partition_sizes": {"min": int(sizes.min()), "max": int(sizes.max()), "mean": float(sizes.mean()),
                            "empty": int(np.sum(sizes == 0))},
        "seconds": time.perf_counter() - t0 + seconds_before, "train_seconds": train_seconds,
        "paper": paper,
    }
    _cli.write_json_atomic(out / "results.json", results)
    if not args.no_plots:
        plt = _cli.pyplot()
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        ax.plot(radii, curve, label=f"ours ({base}, k={k}{f', d={d}' if args.mode == 'fa' else ''})")
        ax.axhline(0.5, color="grey", lw=0.6, ls=":")
        if paper["median_certified"] is not None:
            ax.scatter([paper["median_certified"]], [0.5], marker="x", color="C3",
                       label=f"paper median ({paper['median_certified']}, k={paper['k']})")
        ax.set_xlabel("label flips" if args.mode == "ssdpa" else "poisoned samples (insertions + deletions)")
        ax.set_ylabel("certified accuracy")
        ax.set_title(f"{ {'dpa': 'DPA', 'ssdpa': 'SS-DPA', 'fa': 'Finite Aggregation'}[args.mode]} on {ds.name}")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
        _cli.save_figure(fig, out / "certified_accuracy.png")
    rows = [["ours", base, k, f"{clean:.4f}", median],
            ["paper", paper["base"], paper["k"], f"{paper.get('clean_accuracy', float('nan')):.4f}"
             if "clean_accuracy" in paper else "-",
             paper["median_certified"] if paper["median_certified"] is not None else paper.get("claim", "-")]]
    print(protocol)
    if data_note:
        print(f"note: {data_note}")
    print(_cli.format_table(rows, ["", "base", "k", "clean acc", "median certified"]))
    print(f"mean base-classifier accuracy {base_acc.mean():.4f}; {results['seconds']:.1f} s; results in {out}")
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
