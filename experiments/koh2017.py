r"""Reproduce Koh & Liang (2017, §5.2): training-set attacks by influence on frozen features.

Paper (Dogfish: ImageNet dog vs fish, 900 train / 300 test images per class; Inception-v3 features,
only the top logistic layer retrained, weight decay 0.001): each correctly classified test image is
attacked on its own by perturbing the ``k`` most influential training images (largest
:math:`\|\mathcal I_{\text{pert,loss}}\|_1`) inside the 8-bit box (every pixel within half a quantization
level of its original), signed steps along :math:`\mathcal I_{\text{pert,loss}}` with the top layer
retrained at every step, at most 100 steps, stopping once the target's true-class probability is below
0.5; ``k`` = 1, then 2, ... until the target flips. Flipped with one image: 57 % (335 / 591); with two:
77 %; with ten: all but one.

CPU protocol here (:mod:`poisoning.attacks.koh2017`):

- extractor: the cached ResNet-18 of width 16 pretrained on CIFAR-10 classes 0-4
  (:func:`experiments.pretrain.pretrain`, ``--model``), its 128-d penultimate layer frozen;
- transfer task: CIFAR-10 dog (5) vs ship (8) (``--pair``; both outside the pretraining classes, as
  dog / fish are outside Inception's fine-tuning), ``--n-train`` / ``--n-test`` images per class drawn
  with ``--seed``;
- victim: binary logistic regression on the features with ``reg = 0.001`` (the paper's weight decay:
  :math:`\frac1n\sum_i \ell_i + \frac{\text{reg}}2\|w\|^2`), retrained by Newton's method, derivatives by
  the implicit function theorem;
- targets: ``--targets`` correctly classified test images (a seeded random order; a larger
  ``--targets`` extends a smaller run);
- budgets ``--eps`` in 8-bit levels: 0.5 (the paper's) and 8 (the poisoning benchmark's 8/255), each
  with signed steps of ``--step-ratio`` times the radius (the paper's 0.02 / 0.5 = 0.04: the box edge is
  reached in 25 steps), ``--steps`` at most (100);
- ``k`` in ``--budgets`` (1 2 10), tried in order for each target until it flips, as the release does:
  the rate at ``k`` is the fraction flipped with at most ``k`` perturbed images. Flipped = the attack
  stopped with the target predicted as the other class and the victim retrained from scratch on the
  perturbed set agrees (flips it does not confirm are counted in ``flips_not_confirmed_by_retraining``
  and the next ``k`` is tried).

Without the CIFAR-10 files (``--data-dir`` / ``$BILEVEL_DATA_DIR``) the extractor and the data fall back
to scikit-learn's digits upsampled to 32x32x3 (:func:`experiments.pretrain.load_protocol`), the extractor
pretrained on all ten digits, the attack on the digits ``--pair``: ``"fallback": true`` in the results.

Outputs (``--out``): ``results.json`` (``attack``, ``setting``, ``trials``, ``success_rate`` per ``k`` at
the paper's radius, ``clean_accuracy``, ``seconds``, one row per radius with the successes, rates and
exact binomial 95 % intervals, the protocol, the paper's numbers), ``success_rate.png`` (rate vs ``k``,
ours and the paper's) and ``perturbations.png`` (originals, perturbed images, amplified differences).
Every target is checkpointed (``<out>/checkpoint.npz``); a rerun resumes (``--fresh`` starts over).

Usage::

    python -m experiments.koh2017 --data-dir DIR                  # CIFAR-10 dog vs ship, 50 targets
    python -m experiments.koh2017 --data-dir DIR --targets 20 --eps 0.5
    python -m experiments.koh2017 --quick                         # a smoke run
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from experiments import _cli

__all__ = ["PAPER", "build_parser", "run", "main"]

PAPER = {
    "source": "Koh & Liang, ICML 2017, Sec. 5.2 (Dogfish training-set attack); kohpangwei/influence-release",
    "dataset": "Dogfish: ImageNet dog vs fish, 900 train / 300 test per class",
    "model": "Inception-v3 features (2048-d), top logistic layer retrained, weight decay 0.001",
    "targets": 591,
    "eps": "0.5/255 (same 8-bit image); signed steps 0.02/255; 100 steps",
    "success_rate": {"1": 335 / 591, "2": 0.77, "10": 590 / 591},
}
SHOW = 4  # targets kept for the figure


def build_parser():
    p = _cli.base_parser(__doc__.splitlines()[0], default_out="runs/koh2017")
    p.add_argument("--targets", type=int, default=50, help="test targets attacked (one at a time)")
    p.add_argument("--pair", type=int, nargs=2, default=(5, 8), metavar=("C0", "C1"),
                   help="the transfer task's classes (CIFAR-10 dog, ship; digits on the fallback)")
    p.add_argument("--n-train", type=int, default=900, help="training images per class")
    p.add_argument("--n-test", type=int, default=300, help="test images per class")
    p.add_argument("--budgets", type=int, nargs="+", default=(1, 2, 10), help="perturbed images k, tried in order")
    p.add_argument("--eps", type=float, nargs="+", default=(0.5, 8.0), help="l_inf radii in 8-bit levels (x/255)")
    p.add_argument("--steps", type=int, default=100, help="attack steps per k")
    p.add_argument("--step-ratio", type=float, default=0.04, help="signed step / radius (paper 0.02/0.5)")
    p.add_argument("--threshold", type=float, default=0.5, help="stop when the true-class probability is below")
    p.add_argument("--reg", type=float, default=1e-3, help="the top layer's L2 weight (paper's weight decay)")
    p.add_argument("--model", default="resnet18", help="the extractor (a poisoning.models name)")
    p.add_argument("--extractor-seed", type=int, default=0, help="the extractor's pretraining seed")
    p.add_argument("--cache-dir", default=None, help="pretrained-model cache (default $BILEVEL_CACHE_DIR or "
                   "~/.cache/bilevel-poisoning)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--no-plots", action="store_true", help="skip the figures")
    return p


def _check_args(args):
    if args.targets < 1:
        raise SystemExit("--targets must be >= 1")
    if args.n_train < 1 or args.n_test < 1:
        raise SystemExit("--n-train and --n-test must be >= 1")
    if args.pair[0] == args.pair[1]:
        raise SystemExit("--pair needs two different classes")
    if any(b < 1 for b in args.budgets) or list(args.budgets) != sorted(set(args.budgets)):
        raise SystemExit("--budgets must be increasing integers >= 1")
    if any(not (np.isfinite(e) and e > 0) for e in args.eps):
        raise SystemExit("--eps must be positive (8-bit levels)")
    if not 0 < args.threshold < 1:
        raise SystemExit("--threshold must be in (0, 1)")
    if not args.step_ratio > 0 or args.steps < 1:
        raise SystemExit("--step-ratio must be > 0 and --steps >= 1")


def _draw(y, n, rng):
    """``n`` random indices per class (0, 1), fewer where a class has fewer."""
    return np.concatenate([rng.permutation(np.flatnonzero(y == c))[:n] for c in (0, 1)])


def _data(args):
    """The extractor (frozen features) and the binary transfer task: ``(phi, X_tr, y_tr, X_te, y_te, info)``."""
    from experiments.pretrain import load_protocol, pretrain
    from poisoning.datasets import load_cifar10
    from poisoning.training import resolve_cache_dir

    pre = pretrain(args.model, "cifar10-first5", "cpu", seed=args.extractor_seed, quick=args.quick,
                   data_dir=args.data_dir, cache_dir=args.cache_dir, progress=False)
    fallback = bool(pre.info["fallback"])
    c0, c1 = args.pair
    if fallback:
        d = load_protocol("digits", (32, 32, 3), seed=args.seed)
        relabel = lambda X, y: (X[np.isin(y, args.pair)], (y[np.isin(y, args.pair)] == c1).astype(np.int32))
        (X_tr, y_tr), (X_te, y_te) = relabel(d.x_train, d.y_train), relabel(d.x_test, d.y_test)
        task = f"digits {c0} vs {c1} (fallback: the CIFAR-10 files were not found), upsampled to 32x32x3"
    else:
        names = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
        if min(args.pair) < 5 or max(args.pair) > 9:
            raise SystemExit("--pair must be CIFAR-10 classes 5-9 (the extractor saw classes 0-4)")
        ds = load_cifar10(args.data_dir, classes=tuple(args.pair), cache_dir=resolve_cache_dir(args.cache_dir) / "data")
        X_tr, y_tr, X_te, y_te = ds.X_train, ds.y_train.astype(np.int32), ds.X_test, ds.y_test.astype(np.int32)
        task = f"CIFAR-10 {names[c0]} ({c0}) vs {names[c1]} ({c1})"
    rng = np.random.default_rng(args.seed)
    itr, ite = _draw(y_tr, args.n_train, rng), _draw(y_te, args.n_test, rng)
    model, variables = pre.model, pre.state.variables

    def extractor_features(x):  # the frozen penultimate layer, inference mode (running BatchNorm statistics)
        return model.apply(variables, x, train=False, features=True)

    info = {"extractor": f"{pre.info['model_name']} pretrained on {pre.info['protocol']}", "fallback": fallback,
            "extractor_test_accuracy": pre.info.get("eval", {}).get("accuracy"), "extractor_folder": pre.info["folder"],
            "task": task}
    return extractor_features, X_tr[itr], y_tr[itr], X_te[ite], y_te[ite], info


def run(args) -> dict[str, Any]:
    import jax

    from poisoning import victims
    from poisoning.attacks import koh2017

    _check_args(args)
    t_start = time.perf_counter()
    phi, X, y, X_te, y_te, info = _data(args)
    victim = victims.on_features(victims.logistic(args.reg), phi)
    clean = victim.fit(X, y)
    pred = np.asarray(victim.predict(clean, X_te))
    clean_accuracy = float(np.mean(pred == y_te))
    correct = np.flatnonzero(pred == y_te)
    order = np.random.default_rng([args.seed, 1]).permutation(correct)
    targets = order[:args.targets]
    T, E, budgets = len(targets), len(args.eps), list(args.budgets)
    if T < args.targets:
        print(f"[koh2017] only {T} correctly classified test images: attacking all of them")

    out = _cli.ensure_dir(args.out)
    ckpt = _cli.Checkpoint(out / "checkpoint.npz")
    fingerprint = json.dumps({k: v for k, v in vars(args).items() if k not in ("out", "fresh", "no_plots", "targets")},
                             sort_keys=True, default=list)
    if args.fresh:
        ckpt.clear()
    state = ckpt.load()
    keys = ("target", "flipped_at", "not_confirmed", "steps", "p_clean", "p_final", "max_change", "seconds")
    if state is not None and (str(state.get("fingerprint")) != fingerprint or any(k not in state for k in keys)):
        state = None  # another configuration (or an older format) is never resumed
    done = {k: list(state[k]) for k in keys} if state is not None else {k: [] for k in keys}
    images = {k: v for k, v in (state or {}).items() if k.startswith("img_")}
    if done["target"] and list(done["target"]) != list(targets[:len(done["target"])]):
        done, images = {k: [] for k in keys}, {}  # other targets (another draw): start over
    n0 = len(done["target"])
    if n0:
        print(f"[koh2017] resuming from {ckpt.path}: {n0} of {T} targets done")

    bar = _cli.progress(range(n0, T), desc="targets", total=T, initial=n0)
    for i in bar:
        t0 = time.perf_counter()
        j = int(targets[i])
        x_t, y_t = X_te[j:j + 1], y_te[j:j + 1]
        grad = koh2017.influence_gradient(victim, X, y, x_t, y_t)
        ranked = koh2017.select_images(victim, X, y, x_t, y_t, max(budgets), gradient=grad)
        row = {k: [] for k in ("flipped_at", "not_confirmed", "steps", "p_final", "max_change")}
        row["p_clean"] = float(np.exp(-np.asarray(victim.loss(clean, x_t, y_t))[0]))
        for e, levels in enumerate(args.eps):
            eps = levels / 255.0
            flipped_at, not_confirmed, steps, r = 0, 0, 0, None
            for k in budgets:
                r = koh2017.attack(victim, X, y, x_t, y_t, k, eps=eps, steps=args.steps,
                                   step_size=args.step_ratio * eps, threshold=args.threshold, indices=ranked[:k])
                steps += r.n_steps
                if r.flipped:  # a success counts when the victim retrained from scratch confirms it
                    keep = np.setdiff1d(np.arange(len(y)), r.indices)
                    params = victim.fit(np.concatenate([X[keep], r.X_perturbed]), np.concatenate([y[keep], r.labels]))
                    if int(np.asarray(victim.predict(params, x_t))[0]) != int(y_t[0]):
                        flipped_at = k
                        break
                    not_confirmed += 1
            row["flipped_at"].append(flipped_at)
            row["not_confirmed"].append(not_confirmed)
            row["steps"].append(steps)
            row["p_final"].append(r.p_true)
            row["max_change"].append(float(np.max(np.abs(r.X_perturbed - r.X_original))) * 255.0)
            if i < SHOW:
                images[f"img_{i}_{e}_orig"] = r.X_original[0]
                images[f"img_{i}_{e}_pert"] = r.X_perturbed[0]
                images[f"img_{i}_{e}_meta"] = np.asarray([len(r.indices), int(r.flipped), r.p_true_clean, r.p_true])
            if i < SHOW and e == 0:
                images[f"img_{i}_target"] = x_t[0]
        # every attack compiles its own loop (the box around its images is a constant of the compiled code);
        # without this, the executables kept in JAX's caches exhaust the process's memory maps
        # (vm.max_map_count) after ~100 attacks on the ResNet features
        jax.clear_caches()
        done["target"].append(j)
        for k in row:
            done[k].append(row[k])
        done["seconds"].append(time.perf_counter() - t0)
        ckpt.save({"fingerprint": fingerprint, **{k: np.asarray(v) for k, v in done.items()}, **images})
        bar.set_postfix(flipped="/".join(str(int(np.sum(np.asarray(done["flipped_at"])[:, e] > 0))) for e in range(E)))
    bar.close()

    flipped_at = np.asarray(done["flipped_at"]).reshape(T, E)
    rows = []
    for e, levels in enumerate(args.eps):
        fa = flipped_at[:, e]
        successes = {str(k): int(np.sum((fa > 0) & (fa <= k))) for k in budgets}
        rows.append({
            "eps": levels / 255.0, "eps_levels": levels, "step_size": args.step_ratio * levels / 255.0,
            "successes": successes,
            "success_rate": {k: s / T for k, s in successes.items()},
            "ci95": {k: list(_cli.binomial_ci(s, T)) for k, s in successes.items()},
            "mean_steps": float(np.mean(np.asarray(done["steps"])[:, e])),
            "flips_not_confirmed_by_retraining": int(np.sum(np.asarray(done["not_confirmed"])[:, e])),
            "mean_p_true_clean": float(np.mean(done["p_clean"])),
            "mean_p_true_final": float(np.mean(np.asarray(done["p_final"])[:, e])),
            "max_change_levels": float(np.max(np.asarray(done["max_change"])[:, e])),
        })
    main_row = rows[int(np.argmin([abs(r["eps_levels"] - 0.5) for r in rows]))]
    setting = ("digits" if info["fallback"] else f"cifar10-{args.pair[0]}v{args.pair[1]}") + f"-{args.model}-frozen"
    results = {
        "attack": "koh2017-influence", "setting": setting, "fallback": info["fallback"], "trials": T,
        "success_rate": main_row["success_rate"], "successes": main_row["successes"], "ci95": main_row["ci95"],
        "eps": main_row["eps"], "clean_accuracy": clean_accuracy,
        "seconds": float(np.sum(done["seconds"])), "seconds_total_this_call": time.perf_counter() - t_start,
        "rows": rows,
        "protocol": {**info, "n_train": int(len(y)), "n_test": int(len(y_te)), "reg": args.reg, "budgets": budgets,
                     "steps": args.steps, "step_ratio": args.step_ratio, "threshold": args.threshold,
                     "seed": args.seed, "quick": bool(args.quick), "targets": [int(t) for t in targets],
                     "rate_at_k": "fraction of targets flipped with at most k perturbed images (k tried in order)"},
        "per_target": {"target": [int(t) for t in done["target"]], "flipped_at": flipped_at.tolist(),
                       "steps": np.asarray(done["steps"]).tolist(),
                       "p_true_clean": np.asarray(done["p_clean"]).tolist(),
                       "p_true_final": np.asarray(done["p_final"]).tolist()},
        "paper": PAPER,
    }
    _cli.write_json_atomic(out / "results.json", results)
    if not args.no_plots:
        _plot_rates(rows, budgets, T, out / "success_rate.png")
        _plot_images(images, args.eps, out / "perturbations.png")
    return results


def _plot_rates(rows, budgets, T, path):
    plt = _cli.pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for r in rows:
        rate = np.asarray([r["success_rate"][str(k)] for k in budgets])
        ci = np.asarray([r["ci95"][str(k)] for k in budgets])
        ax.errorbar(budgets, rate, yerr=[rate - ci[:, 0], ci[:, 1] - rate], marker="o", capsize=3,
                    label=f"ours, eps = {r['eps_levels']:g}/255 ({T} targets)")
    paper = PAPER["success_rate"]
    ax.plot([int(k) for k in paper], list(paper.values()), "k--s", label="paper (Dogfish, eps = 0.5/255)")
    ax.set_xscale("log"), ax.set_xticks(budgets), ax.set_xticklabels([str(k) for k in budgets])
    ax.set_ylim(-0.02, 1.02), ax.set_xlabel("perturbed training images k"), ax.set_ylabel("targets flipped")
    ax.legend(fontsize=7, loc="center left")
    return _cli.save_figure(fig, path)


def _plot_images(images, eps_levels, path):
    shown = sorted({int(k.split("_")[1]) for k in images if k.endswith("_target")})
    if not shown:
        return None
    plt = _cli.pyplot()
    cols = 1 + 3 * len(eps_levels)
    fig, axes = plt.subplots(len(shown), cols, figsize=(1.5 * cols, 1.6 * len(shown)), squeeze=False)
    show = lambda a: np.clip(np.squeeze(np.asarray(a, float)), 0, 1)
    for r, i in enumerate(shown):
        axes[r, 0].imshow(show(images[f"img_{i}_target"]))
        axes[r, 0].set_title("target" if r == 0 else "", fontsize=7)
        for e, levels in enumerate(eps_levels):
            orig, pert = np.asarray(images[f"img_{i}_{e}_orig"], float), np.asarray(images[f"img_{i}_{e}_pert"], float)
            k, flipped, _, p = images[f"img_{i}_{e}_meta"]
            diff = 0.5 + (pert - orig) / (2 * levels / 255.0)  # +-eps -> [0, 1]
            c = 1 + 3 * e
            for a, img, title in ((axes[r, c], orig, "top image"), (axes[r, c + 1], pert, f"perturbed {levels:g}/255"),
                                  (axes[r, c + 2], diff, "difference / eps")):
                a.imshow(show(img))
                if r == 0:
                    a.set_title(title, fontsize=7)
            axes[r, c + 1].set_xlabel(f"k={int(k)} {'flipped' if flipped else 'not flipped'} p={p:.2f}", fontsize=6)
    for a in axes.ravel():
        a.set_xticks([]), a.set_yticks([])
    return _cli.save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.targets, args.n_train, args.n_test = min(args.targets, 2), min(args.n_train, 40), min(args.n_test, 20)
        args.budgets, args.steps = [1, 2], min(args.steps, 10)
    res = run(args)
    table = []
    for r in res["rows"]:
        for k, s in r["successes"].items():
            lo, hi = r["ci95"][k]
            paper = PAPER["success_rate"].get(k) if abs(r["eps_levels"] - 0.5) < 1e-9 else None
            table.append([f"{r['eps_levels']:g}/255", k, f"{s}/{res['trials']}", f"{100 * s / res['trials']:.1f}%",
                          f"[{100 * lo:.0f}, {100 * hi:.0f}]%", "-" if paper is None else f"{100 * paper:.1f}%"])
    print(f"Koh & Liang 2017 influence attack, {res['protocol']['task']}, {res['protocol']['extractor']}; "
          f"clean test accuracy {res['clean_accuracy']:.3f}; {res['trials']} targets, {res['seconds']:.0f} s")
    print(_cli.format_table(table, ["eps", "k", "flipped", "rate", "95% CI", "paper (Dogfish)"]))
    print(f"wrote {Path(args.out) / 'results.json'}")
    return res


if __name__ == "__main__":
    main()
