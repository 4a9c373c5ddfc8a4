r"""Reproduce Muñoz-González et al. (2017), gradient poisoning of multiclass and binary learners.

Protocol (Muñoz-González et al. 2017, §4-5; :func:`poisoning.datasets.munoz_protocol`):
disjoint random TR / VAL / TS draws, features in [0, 1]. Attack (:mod:`poisoning.attacks.munoz2017`):
poison points added one at a time, each optimized by projected ascent on the unit hypergradient
(backtracking line search) inside the box [0, 1], the hypergradient by implicit differentiation
(``--method implicit``, victim trained to convergence; softmax regression preconditioned by a low-rank
K-FAC change of variables, :func:`poisoning.attacks.munoz2017.kfac_basis`) or by back-gradient through
``--T`` steps of gradient descent (``--method backgradient``, the paper's method; the victim is then
those T steps).

Settings (``--setting``; explicit flags override its defaults):

- ``mnist-generic``: MNIST, 10-class softmax LR, 1000 / 1000 / 8000, up to 60 points, maximize the
  validation cross-entropy; points start as clones of training points with random other labels.
  ``test_error`` = test error over all classes. Paper: error "almost doubles" at < 6 %.
- ``mnist-specific`` (8 -> 3, ``--pair 8 3``): 1000 / 4000 / 5000, up to 40 points; the attacker's
  validation set is the validation 8s relabelled 3 (minimize their cross-entropy); points start as
  training 3s and 8s with labels swapped. ``test_error`` = error on the test 8s (also
  ``test_error_all``, ``test_8_as_3``). Paper: ~20 % -> ~50 % at < 4 %.
- ``spambase-lr`` / ``spambase-adaline`` / ``spambase-mlp``: Spambase (binary), 100 / 400 / rest, up to
  20 points, perfect knowledge, error-generic, points start as clones of training points with
  flipped labels (paper's T = 100 / 80 / 200 for back-gradient). Paper: LR and Adaline up to ~30 %
  test error at 15 % poisoning, MLP up to ~25 %.
- ``digits`` (default; offline sklearn digits, 300 / 300 / 1000, generic).
- ``cnn`` (§5, deep networks): MNIST digits 1, 5 and 6 (labels 0, 1, 2), 1000 / 1000 / 8000, up to 10
  points, error-generic, against a small CNN (:func:`poisoning.attacks.munoz2017.cnn_victim`: two 5x5
  convolutions with 8 and 16 channels, ReLU, 2x2 max-pooling, a dense layer) trained from a fixed
  initialization by ``--T`` full-batch heavy-ball steps (``--gd-lr`` 0.05, ``--momentum`` 0.9;
  ``--batch-size`` for mini-batch SGD). The hypergradient always reverses those steps exactly
  (``--method backgradient``, int64 fixed point); ``hypergradient_check`` holds its cosine with reverse
  mode through the stored steps (``Unrolled``) at the first point's start (not with ``--quick``). On CPU
  the network computes in float32 (``--compute-dtype auto``; XLA:CPU's fast convolutions are float32
  only), float64 elsewhere.
  Without an MNIST folder it falls back to sklearn's 8x8 digits 1, 5, 6 (200 / 150 / rest).

Baseline: the same budget of validation points with random wrong labels added to TR
(``test_error_random_flip``). ``--splits N`` repeats on N data splits (seeds ``seed .. seed+N-1``) and
averages. ``results.json`` holds ``clean`` and one row per budget (``n_poison``, ``fraction`` =
n_poison / (n_train + n_poison), mean ``test_error``, ``test_error_random_flip``, their per-split
values, ``seconds`` = attack wall time up to that budget, compiled code only); ``test_error.png`` plots
test error vs poison fraction, ``poison_points.png`` the first poison images (MNIST / digits).
With ``--method backgradient`` on softmax LR it also reports ``hypergradient_check``: the cosine
between the back-gradient and the implicit hypergradient at the first poison point's start.

Long runs checkpoint after every ``--chunk`` points (``<out>/checkpoint.npz``) and resume from it
(``--fresh`` ignores it): a chunk is a :func:`poisoning.attack.run` with the points already optimized
added to the training set, which is exactly the sequential attack.

Usage::

    python -m experiments.munoz2017                                   # digits (offline)
    python -m experiments.munoz2017 --setting mnist-generic --data-dir DIR
    python -m experiments.munoz2017 --setting mnist-specific --data-dir DIR
    python -m experiments.munoz2017 --setting mnist-specific --method backgradient --data-dir ...
    python -m experiments.munoz2017 --setting spambase-adaline --splits 5 --data-dir ...
    python -m experiments.munoz2017 --setting cnn --data-dir DIR --chunk 5      # digits 1/5/6, a CNN
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from experiments import _cli

__all__ = ["build_parser", "run", "main", "PAPER", "SETTINGS"]

# defaults per setting: dataset, mode, learner, sizes (n_test None = the rest), budgets, back-gradient T
SETTINGS = {
    "digits": dict(dataset="digits", mode="generic", learner="lr", sizes=(300, 300, 1000),
                   budgets=(0, 5, 10, 20), T=60),
    "mnist-generic": dict(dataset="mnist", mode="generic", learner="lr", sizes=(1000, 1000, 8000),
                          budgets=(0, 5, 10, 20, 30, 40, 50, 60), T=60),
    "mnist-specific": dict(dataset="mnist", mode="specific", learner="lr", sizes=(1000, 4000, 5000),
                           budgets=(0, 5, 10, 15, 20, 25, 30, 35, 40), T=60),
    "spambase-lr": dict(dataset="spambase", mode="generic", learner="lr", sizes=(100, 400, None),
                        budgets=(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20), T=100),
    "spambase-adaline": dict(dataset="spambase", mode="generic", learner="adaline", sizes=(100, 400, None),
                             budgets=(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20), T=80),
    "spambase-mlp": dict(dataset="spambase", mode="generic", learner="mlp", sizes=(100, 400, None),
                         budgets=(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20), T=200),
    "cnn": dict(dataset="mnist", mode="generic", learner="cnn", sizes=(1000, 1000, 8000),
                budgets=tuple(range(11)), T=100, classes=(1, 5, 6)),
}
CNN_DIGITS_SIZES = (200, 150, None)  # the offline fallback: sklearn digits 1/5/6 have 546 images

PAPER = {
    "mnist-generic": "paper (MNIST, LR, T=60): test error 'almost doubles' with < 6% poisoning (60 pts / 1000); "
                     "random flips much weaker (Fig. 4)",
    "mnist-specific": "paper (MNIST, LR, 8->3): error on 8s ~20% -> ~50% with < 4% poisoning (40 pts / 1000)",
    "spambase-lr": "paper (Spambase, PK, LR): test error up to ~30% at 15% poisoning (clean ~10%)",
    "spambase-adaline": "paper (Spambase, PK, Adaline): test error up to ~30% at 15% poisoning (clean ~10%)",
    "spambase-mlp": "paper (Spambase, PK, MLP): test error up to ~25% at 15% poisoning",
    "digits": "no paper number (offline stand-in for MNIST error-generic)",
    "cnn": "paper (MNIST digits 1/5/6, CNN trained by SGD, 1000 training points, back-gradient, error-generic, "
           "§5): the test error increases with the number of poisons, up to 10 (1%); the figure's values are "
           "not transcribed here",
}


def build_parser():
    p = _cli.base_parser(__doc__.splitlines()[0], default_out="runs/munoz2017")
    p.add_argument("--setting", choices=tuple(SETTINGS), default="digits",
                   help="preset of dataset / mode / learner / sizes / budgets / T (flags below override)")
    p.add_argument("--dataset", choices=("digits", "mnist", "spambase"), default=None)
    p.add_argument("--mode", choices=("generic", "specific"), default=None)
    p.add_argument("--learner", choices=("lr", "adaline", "mlp", "cnn"), default=None)
    p.add_argument("--classes", nargs="+", type=int, default=None,
                   help="keep only these classes, relabelled 0..k-1 (setting cnn: 1 5 6)")
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-val", type=int, default=None)
    p.add_argument("--n-test", type=int, default=None, help="default: the setting's (spambase: the rest)")
    p.add_argument("--budgets", nargs="+", type=int, default=None)
    p.add_argument("--method", choices=("implicit", "backgradient"), default=None,
                   help="default: implicit (cnn: backgradient, its only method)")
    p.add_argument("--pair", nargs=2, type=int, default=(8, 3), metavar=("SOURCE", "TARGET"))
    p.add_argument("--reg", type=float, default=1e-3, help="L2 weight of the victim")
    p.add_argument("--T", type=int, default=None, help="gradient-descent steps of the back-gradient victim")
    p.add_argument("--gd-lr", type=float, default=None,
                   help="step of the back-gradient victim's gradient descent (default: the safe 1/L; cnn 0.05)")
    p.add_argument("--momentum", type=float, default=None,
                   help="heavy-ball momentum of the back-gradient victim (default: none; cnn 0.9, exactly reversed)")
    p.add_argument("--batch-size", type=int, default=None, help="cnn: mini-batch SGD (default: full batch)")
    p.add_argument("--channels", nargs="+", type=int, default=(8, 16), help="cnn: channels of each conv block")
    p.add_argument("--compute-dtype", choices=("auto", "float32", "float64"), default="auto",
                   help="cnn: precision of the network's layers (auto: float32 on CPU, float64 elsewhere)")
    p.add_argument("--steps", type=int, default=20, help="max ascent steps per poison point")
    p.add_argument("--step-size", type=float, default=1.0, help="initial step (L2 length) of the line search")
    p.add_argument("--splits", type=int, default=1, help="data splits (seeds seed, seed+1, ...), averaged")
    p.add_argument("--chunk", type=int, default=10, help="poison points per checkpoint")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--no-plots", action="store_true")
    return p


def _config(args) -> dict[str, Any]:
    s = SETTINGS[args.setting]
    cfg = {k: getattr(args, k) if getattr(args, k) is not None else s[k] for k in ("dataset", "mode", "learner")}
    n_tr, n_va, n_te = s["sizes"]
    cfg["classes"] = tuple(args.classes) if args.classes is not None else s.get("classes")
    if (cfg["learner"] == "cnn" and args.dataset is None and cfg["dataset"] == "mnist"
            and _cli.resolve_data_dir(args.data_dir) is None):
        print("setting cnn: no --data-dir / $BILEVEL_DATA_DIR, falling back to sklearn's 8x8 digits")
        cfg["dataset"] = "digits"
    if cfg["learner"] == "cnn" and cfg["dataset"] == "digits" and s["dataset"] != "digits":
        n_tr, n_va, n_te = CNN_DIGITS_SIZES
    elif cfg["dataset"] != s["dataset"]:  # flags changed the data set: its usual sizes
        n_tr, n_va, n_te = {"digits": (300, 300, 1000), "mnist": (1000, 1000, 8000),
                            "spambase": (100, 400, None)}[cfg["dataset"]]
        if cfg["dataset"] == "mnist" and cfg["mode"] == "specific":
            n_va, n_te = 4000, 5000
    for name in ("n_train", "n_val", "n_test"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    cfg["n_train"] = args.n_train if args.n_train is not None else n_tr
    cfg["n_val"] = args.n_val if args.n_val is not None else n_va
    cfg["n_test"] = args.n_test if args.n_test is not None else n_te
    cfg["budgets"] = sorted(set(int(b) for b in (args.budgets if args.budgets is not None else s["budgets"])))
    cfg["T"] = int(args.T if args.T is not None else s["T"])
    cfg["steps"] = int(args.steps)
    if args.quick:
        cfg["n_train"], cfg["n_val"] = min(cfg["n_train"], 100), min(cfg["n_val"], 100)
        cfg["n_test"] = min(cfg["n_test"] or 200, 200)
        cfg["steps"] = min(cfg["steps"], 3)
        cfg["budgets"] = sorted({b for b in cfg["budgets"] if b <= 2} | {0, 2})
        cfg["T"] = min(cfg["T"], 20)
        if cfg["learner"] == "cnn":  # compilation dominates: the smallest run that still trains a network
            cfg["n_train"], cfg["n_val"], cfg["n_test"] = min(cfg["n_train"], 60), min(cfg["n_val"], 60), 100
            cfg["steps"], cfg["T"] = min(cfg["steps"], 2), min(cfg["T"], 10)
    if not cfg["budgets"] or cfg["budgets"][0] < 0:
        raise SystemExit("--budgets must be >= 0")
    if cfg["mode"] == "specific" and cfg["dataset"] == "spambase":
        raise SystemExit("--mode specific needs a multiclass data set (digits or mnist)")
    if cfg["learner"] == "adaline" and cfg["dataset"] != "spambase":
        raise SystemExit("--learner adaline is binary: use it with --dataset spambase")
    if args.splits < 1 or args.chunk < 1:
        raise SystemExit("--splits and --chunk must be >= 1")
    if cfg["learner"] == "cnn" and cfg["dataset"] == "spambase":
        raise SystemExit("--learner cnn needs square images: use it with --dataset mnist or digits")
    cfg["method"] = args.method or ("backgradient" if cfg["learner"] == "cnn" else "implicit")
    if cfg["learner"] == "cnn" and cfg["method"] != "backgradient":
        raise SystemExit("--learner cnn is differentiated by back-gradient only (--method backgradient)")
    if args.batch_size is not None and args.batch_size < 1:
        raise SystemExit("--batch-size must be >= 1")
    if args.momentum is not None and not 0.0 <= args.momentum < 1.0:
        raise SystemExit("--momentum must be in [0, 1)")
    if cfg["classes"] is not None and len(set(cfg["classes"])) < 2:
        raise SystemExit("--classes needs at least two distinct classes")
    return cfg


def _load(cfg, args):
    from poisoning import datasets as data

    if cfg["dataset"] == "spambase":
        return data.load_spambase(_cli.resolve_data_dir(args.data_dir))
    ds = _cli.load_digits_or_mnist(cfg["dataset"], args.data_dir, args.seed)
    return ds if cfg["classes"] is None else keep_classes(ds, cfg["classes"])


def keep_classes(ds, classes):
    """``ds`` restricted to ``classes`` (original labels), relabelled ``0..len(classes)-1`` in that order."""
    from poisoning.datasets import Dataset

    classes = [int(c) for c in classes]
    lut = np.full(max(int(ds.y_train.max()), int(ds.y_test.max()), max(classes)) + 1, -1, np.int64)
    lut[classes] = np.arange(len(classes))
    parts = []
    for X, y in ((ds.X_train, ds.y_train), (ds.X_test, ds.y_test)):
        keep = np.isin(y, classes)
        parts += [np.asarray(X)[keep], lut[np.asarray(y)[keep]]]
    if len(parts[1]) == 0:
        raise SystemExit(f"--classes {classes}: no such examples in {ds.name}")
    return Dataset(*parts, name=ds.name, meta={**ds.meta, "classes": classes})


def _learner(cfg, args, X_tr, n_classes, method=None):
    """The victim for ``cfg`` (``method`` overrides ``--method``)."""
    from bilevel import CG, Implicit
    from poisoning.attacks import munoz2017 as M

    method = method or args.method
    name, reg, T = cfg["learner"], args.reg, cfg["T"]
    if name == "cnn":
        import jax
        import jax.numpy as jnp

        side = int(round(np.sqrt(X_tr.shape[1])))
        if side * side != X_tr.shape[1]:
            raise SystemExit(f"--learner cnn needs square images, got {X_tr.shape[1]} features")
        lr = 0.05 if args.gd_lr is None else float(args.gd_lr)
        if not lr > 0:
            raise SystemExit("--gd-lr must be > 0")
        dt = args.compute_dtype
        dt = {"float32": jnp.float32, "float64": None}.get(dt, jnp.float32 if jax.default_backend() == "cpu" else None)
        mom = 0.9 if args.momentum is None else float(args.momentum)
        if not mom > 0:
            raise SystemExit("--momentum must be > 0 for the cnn (exact reversal of heavy-ball SGD)")
        reverse = "unrolled" if method == "unrolled" else "backgradient"
        return M.cnn_victim(n_classes, side, channels=tuple(args.channels), steps=T, learning_rate=lr, momentum=mom,
                            batch_size=args.batch_size, compute_dtype=dt, seed=args.seed, reverse=reverse,
                            checkpoint="sqrt"), lr
    lr = M.gd_learning_rate(X_tr, reg, curvature=1.0 if name == "adaline" else 0.5)
    if args.gd_lr is not None:
        if not args.gd_lr > 0:
            raise SystemExit("--gd-lr must be > 0")
        lr = float(args.gd_lr)
    if name == "lr":
        basis = M.GramBasis.from_data(X_tr, rank=min(20, X_tr.shape[1]))
        return M.softmax_victim(n_classes, reg, method=method, steps=T, learning_rate=lr,
                                momentum=args.momentum or None, precondition=basis,
                                implicit=Implicit(linear_solver=CG(tol=1e-8), on_failure="ignore")), lr
    mom = args.momentum or None
    if name == "adaline":
        return M.adaline_victim(reg, method=method, steps=T, learning_rate=lr, momentum=mom), lr
    return M.mlp_victim(n_classes, 10, reg, method=method, steps=T, learning_rate=lr, momentum=mom), lr


def _attack_chunked(attack, X_tr, y_tr, X0, yp, X_att, y_att, steps, chunk, ckpt, key, bar):
    """The sequential attack on all of ``X0`` in chunks of ``chunk`` points, checkpointed under ``key``.
    Returns ``(X_poison, seconds per point (cumulative), compile seconds)``."""
    from poisoning.attack import PoisonPoints
    from poisoning.attack import run as run_attack

    m = len(X0)
    state = ckpt.load() or {}
    Xp = np.asarray(state.get(key + "_X", np.zeros((0, X0.shape[1]))), np.float64)
    secs = list(np.asarray(state.get(key + "_seconds", np.zeros(0)), np.float64))
    compile_s = float(state.get(key + "_compile", 0.0))
    bar.update(len(Xp))
    while len(Xp) < m:
        k = len(Xp)
        c = min(chunk, m - k)
        res = run_attack(attack, np.concatenate([X_tr, Xp]), np.concatenate([y_tr, yp[:k]]),
                         PoisonPoints(X0[k:k + c], yp[k:k + c]), (X_att, y_att), steps=steps, mode="sequential",
                         callback=lambda i, p: bar.update(1))
        base = secs[-1] if secs else 0.0
        secs += [base + float(s) for s in res.seconds]
        compile_s += float(res.compile_seconds)
        Xp = np.concatenate([Xp, np.asarray(res.poison.X, np.float64)])
        ckpt.save({**(ckpt.load() or {}), key + "_X": Xp, key + "_seconds": np.asarray(secs),
                   key + "_compile": compile_s})
    return Xp, np.asarray(secs), compile_s


def _one_split(cfg, args, ds, seed, ckpt, bar) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    from poisoning import datasets as data
    from poisoning.attack import PoisonPoints, hypergradient
    from poisoning.attacks import munoz2017 as M

    split = data.munoz_protocol(ds, cfg["n_train"], cfg["n_val"], cfg["n_test"], seed=seed)
    f64, i64 = (lambda a: np.asarray(a, np.float64)), (lambda a: np.asarray(a, np.int64))
    X_tr, y_tr, X_va, y_va, X_te, y_te = (f64(split.X_train), i64(split.y_train), f64(split.X_val),
                                          i64(split.y_val), f64(split.X_test), i64(split.y_test))
    n_classes = int(max(y_tr.max(), y_va.max(), y_te.max())) + 1
    src, tgt = args.pair
    mode, budgets, m = cfg["mode"], cfg["budgets"], max(cfg["budgets"])
    if mode == "specific":  # the attacker's validation set: the source-class points, target labels
        keep = y_va == src
        X_att, y_att = X_va[keep], np.full(int(keep.sum()), int(tgt))
        X0, yp = M.init_specific(X_tr, y_tr, max(m, 1), src, tgt, seed)
    else:
        X_att, y_att = X_va, y_va
        X0, yp = M.init_generic(X_tr, y_tr, max(m, 1), n_classes, seed)
    Xf, yf = M.random_flip_poison(X_va, y_va, max(m, 1), n_classes, seed=seed)

    learner, lr = _learner(cfg, args, X_tr, n_classes)
    attack = M.munoz_attack(learner, mode, step_size=args.step_size)

    t0 = time.perf_counter()
    if m > 0:
        Xp, seconds, compile_s = _attack_chunked(attack, X_tr, y_tr, X0[:m], yp[:m], X_att, y_att, cfg["steps"],
                                                 args.chunk, ckpt, f"s{seed}", bar)
    else:
        Xp, seconds, compile_s = X0[:0], np.zeros(0), 0.0
    wall = time.perf_counter() - t0

    # ---- every budget from one weighted fit (poison rows beyond the budget get weight 0) ----
    fit = jax.jit(learner.fit)  # one compilation for the attack and the random flips (same shapes)

    def fitter(X_extra, y_extra):
        Xall = jnp.asarray(np.concatenate([X_tr, X_extra]))
        yall = jnp.asarray(np.concatenate([y_tr, y_extra]).astype(np.int64))
        n_extra = len(y_extra)
        return lambda b: fit(Xall, yall, jnp.asarray(np.concatenate([np.ones(len(y_tr)),
                                                                      np.arange(n_extra) < b]).astype(float)))

    def evaluate(params):
        pred = np.asarray(learner.predict(params, X_te))
        err_all = float(np.mean(pred != y_te))
        if mode == "generic":
            return {"test_error": err_all}
        s = y_te == src
        return {"test_error": float(np.mean(pred[s] != src)), "test_error_all": err_all,
                "test_8_as_3": float(np.mean(pred[s] == tgt))}

    obj = lambda p: float(attack.objective(learner, p, jnp.asarray(X_att), jnp.asarray(y_att)))
    fit_attack = fitter(Xp if m > 0 else X0[:1], yp[:max(m, 1)])
    fit_flip = fitter(Xf, yf)
    rows = []
    for b in budgets:
        p, pf = fit_attack(b), fit_flip(b)
        rows.append({"n_poison": b, "fraction": b / (cfg["n_train"] + b), **evaluate(p), "objective": obj(p),
                     **{k + "_random_flip": v for k, v in evaluate(pf).items()}, "objective_random_flip": obj(pf),
                     "seconds": float(seconds[b - 1]) if b > 0 else 0.0})
    out = {"seed": seed, "rows": rows, "clean": rows[0] if budgets[0] == 0 else None, "X0": X0[:m], "X_poison": Xp,
           "compile_seconds": compile_s, "wall_seconds": wall, "gd_lr": lr, "learner": learner.name,
           "n_val_attacker": int(len(y_att))}

    # the back-gradient vs a reference (cnn --quick: skipped, two more compilations; the tests check it on a tiny CNN)
    if args.method == "backgradient" and (cfg["learner"] == "lr" or (cfg["learner"] == "cnn" and not args.quick)):
        ref = "implicit" if cfg["learner"] == "lr" else "unrolled"  # IFT at convergence / the stored steps
        ref_attack = M.munoz_attack(_learner(cfg, args, X_tr, n_classes, ref)[0], mode)
        g = [np.asarray(jax.jit(lambda x, a=a: hypergradient(a, X_tr, y_tr, PoisonPoints(x, yp[:1]),
                                                             (X_att, y_att))[1])(jnp.asarray(X0[:1]))).ravel()
             for a in (attack, ref_attack)]
        out["hypergradient_check"] = {
            f"cosine_backgradient_vs_{ref}": float(g[0] @ g[1] / (np.linalg.norm(g[0]) * np.linalg.norm(g[1]))),
            "norm_backgradient": float(np.linalg.norm(g[0])), f"norm_{ref}": float(np.linalg.norm(g[1]))}
    return out


def run(args) -> dict[str, Any]:
    import jax

    jax.config.update("jax_enable_x64", True)

    cfg = _config(args)
    args.method = cfg["method"]
    ds = _load(cfg, args)
    out = _cli.ensure_dir(args.out)
    ckpt = _cli.Checkpoint(out / "checkpoint.npz")
    fingerprint = json.dumps({**cfg, "setting": args.setting, "method": args.method, "reg": args.reg,
                              "step_size": args.step_size, "pair": list(args.pair), "seed": args.seed,
                              "gd_lr": args.gd_lr, "momentum": args.momentum, "batch_size": args.batch_size,
                              "channels": list(args.channels), "compute_dtype": args.compute_dtype}, sort_keys=True)
    if args.fresh:
        ckpt.clear()  # before loading: --fresh also recovers from a damaged checkpoint
    state = ckpt.load()
    if state is not None and str(state.get("fingerprint")) != fingerprint:
        ckpt.clear()  # a checkpoint of another configuration is never resumed
    if not ckpt.exists():
        ckpt.save({"fingerprint": fingerprint})
    m = max(cfg["budgets"])
    seeds = [args.seed + i for i in range(args.splits)]
    bar = _cli.progress(total=m * len(seeds), desc="poison points")
    splits = [_one_split(cfg, args, ds, s, ckpt, bar) for s in seeds]
    bar.close()

    keys = [k for k in splits[0]["rows"][0] if k not in ("n_poison", "fraction")]
    rows = []
    for j, b in enumerate(cfg["budgets"]):
        r = {"n_poison": b, "fraction": splits[0]["rows"][j]["fraction"]}
        for k in keys:
            vals = [s["rows"][j][k] for s in splits]
            r[k] = float(np.mean(vals))
            if k.startswith("test_error"):
                r[k + "_per_split"] = vals
                r[k + "_std"] = float(np.std(vals))
        rows.append(r)
    label = "test err (8s)" if cfg["mode"] == "specific" else "test err"
    results = {
        "experiment": "munoz2017", "setting": args.setting, "dataset": cfg["dataset"], "mode": cfg["mode"],
        "method": args.method, "learner": splits[0]["learner"],
        "config": {**{k: cfg[k] for k in ("n_train", "n_val", "n_test", "budgets", "steps")},
                   "n_val_attacker": splits[0]["n_val_attacker"], "seeds": seeds, "step_size": args.step_size,
                   "reg": args.reg, "T": cfg["T"] if args.method == "backgradient" else None,
                   "gd_lr": splits[0]["gd_lr"], "pair": list(args.pair), "quick": bool(args.quick),
                   "classes": None if cfg["classes"] is None else list(cfg["classes"]), "momentum": args.momentum,
                   "batch_size": args.batch_size, "chunk": args.chunk,
                   **({"channels": list(args.channels), "compute_dtype": args.compute_dtype,
                       "momentum": 0.9 if args.momentum is None else args.momentum}
                      if cfg["learner"] == "cnn" else {})},
        "clean": rows[0] if cfg["budgets"][0] == 0 else None, "rows": rows,
        "clean_accuracy": 1.0 - rows[0]["test_error"] if cfg["budgets"][0] == 0 else None,
        "seconds": float(sum(s["rows"][-1]["seconds"] for s in splits)),  # attack time, kept across resumes
        "compile_seconds": float(np.mean([s["compile_seconds"] for s in splits])),
        "seconds_per_point": (float(np.mean([s["rows"][-1]["seconds"] for s in splits])) / m) if m else 0.0,
        "paper": PAPER.get(args.setting, "") + ("" if cfg["dataset"] == SETTINGS[args.setting]["dataset"] else
                                                f" [ours ran on {cfg['dataset']}, not the paper's data set]"),
    }
    if "hypergradient_check" in splits[0]:
        results["hypergradient_check"] = [s["hypergradient_check"] for s in splits]
    _cli.write_json_atomic(out / "results.json", results)

    table = [[r["n_poison"], f"{100 * r['fraction']:.1f}%", r["test_error"], r["test_error_random_flip"],
              r["objective"], r["seconds"]] for r in rows]
    print(f"Munoz-Gonzalez et al. 2017, {args.setting}: {cfg['dataset']} {cfg['mode']} ({args.method}, "
          f"{results['learner']}): TR={cfg['n_train']} VAL={splits[0]['n_val_attacker']} TS={cfg['n_test'] or 'rest'}, "
          f"{len(seeds)} split(s)")
    print(_cli.format_table(table, ["n_poison", "fraction", label, label + " flips", "val objective", "seconds"]))
    c, last = rows[0]["test_error"], rows[-1]
    print(f"ours: {label} {c:.3f} -> {last['test_error']:.3f} at {100 * last['fraction']:.1f}% poisoning "
          f"(x{last['test_error'] / max(c, 1e-12):.2f}); random flips {last['test_error_random_flip']:.3f}; "
          f"{results['seconds_per_point']:.1f} s per poison point")
    if "hypergradient_check" in results:
        for key in [k for k in results["hypergradient_check"][0] if k.startswith("cosine_")]:
            print(f"{key.replace('cosine_', '').replace('_', ' ')} hypergradient cosine at the start:",
                  [round(h[key], 4) for h in results["hypergradient_check"]])
    print(results["paper"])
    if not args.no_plots:
        _plots(out, results, splits[0]["X0"], splits[0]["X_poison"])
    print(f"wrote {out / 'results.json'}")
    return results


def _plots(out: Path, results, X0, Xp):
    plt = _cli.pyplot()
    rows = results["rows"]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    fr = [100 * r["fraction"] for r in rows]
    ax.errorbar(fr, [r["test_error"] for r in rows], yerr=[r["test_error_std"] for r in rows], fmt="o-",
                capsize=2, label=f"attack ({results['method']})")
    ax.errorbar(fr, [r["test_error_random_flip"] for r in rows], yerr=[r["test_error_random_flip_std"] for r in rows],
                fmt="s--", capsize=2, label="random label flips")
    ax.set_xlabel("poison fraction (%)")
    ax.set_ylabel("test error" + (" on 8s" if results["mode"] == "specific" else ""))
    ax.set_title(f"{results['setting']} ({results['learner']})", fontsize=8)
    ax.legend(fontsize=8)
    _cli.save_figure(fig, out / "test_error.png")
    if len(Xp):
        _cli.save_poison_grid(X0, Xp, out / "poison_points.png")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
