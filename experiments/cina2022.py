"""Sponge poisoning (Cinà et al. 2022): activation density and accuracy of networks trained with it.

Victims are trained from scratch on the geiping2021 protocol's data (CIFAR-10 subset, the five-layer
ConvNet with BatchNorm; ``--quick``: digits) with plain SGD and with
:class:`poisoning.attacks.cina2022.SpongeTraining` at each ``--lams`` value (the attacker controls the
loss of the first ``--fraction`` of every batch; sigma = 1e-4 as in the paper). Reported per victim: the
l0 activation density on test images (fraction of non-zero ReLU outputs, the quantity sparsity-aware
accelerators save energy on), its ratio to the clean victim's, and test accuracy. Published: up to
1.5x the energy of the clean model on ASIC simulations at an unchanged accuracy (CIFAR-10, GTSRB,
CelebA; ResNet-18, VGG-16).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import numpy as np

from experiments import _cli
from experiments import geiping2021 as g21

__all__ = ["main"]


def build_parser():
    p = _cli.base_parser(__doc__.splitlines()[0], default_out="runs/cina2022")
    p.add_argument("--preset", default="cpu", choices=("cpu", "paper"))
    p.add_argument("--lams", default="1,5", help="comma-separated sponge weights lambda (0 = clean is always run)")
    p.add_argument("--sigma", type=float, default=1e-4, help="smoothing of the l0 count")
    p.add_argument("--fraction", type=float, default=0.1, help="share of each batch the attacker controls")
    p.add_argument("--seeds", type=int, default=2, help="victims per setting")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the preset's)")
    p.add_argument("--cache-dir", default=None)
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    from poisoning.attacks.cina2022 import SpongeTraining, activation_density
    from poisoning.training.state import variables

    args = build_parser().parse_args(argv)
    lams = [0.0] + g21._floats(args.lams, "--lams")
    if args.seeds < 1:
        raise SystemExit("--seeds must be >= 1")
    proto = g21.PRESETS["quick" if args.quick else args.preset]
    if args.epochs is not None:
        proto = dataclasses.replace(proto, epochs=args.epochs)
    out = _cli.ensure_dir(args.out)
    t_all = time.perf_counter()
    x_tr, y_tr, x_te, y_te, fallback = g21.load_data(args.data_dir, args.cache_dir, proto, args.seed)
    X, Y, XT, YT = (jnp.asarray(a) for a in (x_tr, y_tr, x_te, y_te))
    x_dens = XT[:500]
    ckpt = _cli.Checkpoint(out / "checkpoint.npz")
    done = ckpt.load() or {}
    rows = []
    for lam in _cli.progress(lams, desc="cina2022"):
        key = f"lam={lam:g}/{args.sigma:g}/{args.fraction:g}/{args.seeds}/{proto.epochs}/{bool(args.quick)}/{fallback}/{args.seed}"
        if key + ":density" not in done:
            t0 = time.perf_counter()
            victim = g21.Victim("sponge", SpongeTraining(lam=lam, sigma=args.sigma, fraction=args.fraction)) if lam else None
            model, fit = g21.trainer(proto, len(y_tr), victim, fallback)
            states = fit(X, Y, jnp.arange(args.seeds) + args.seed)
            dens, acc = [], []
            for s in range(args.seeds):
                st = jax.tree_util.tree_map(lambda a: a[s], states)
                v = variables(st)
                dens.append(float(activation_density(model, v, x_dens)))
                logits = model.apply(v, XT, train=False)
                acc.append(float(jnp.mean(jnp.argmax(logits, -1) == YT)))
            done[key + ":density"], done[key + ":accuracy"] = np.asarray(dens), np.asarray(acc)
            done[key + ":seconds"] = np.asarray(time.perf_counter() - t0)
            ckpt.save(done)
        rows.append({"attack": "sponge" if lam else "none", "setting": f"lambda={lam:g}", "lam": lam,
                     "sigma": args.sigma, "fraction": args.fraction, "trials": args.seeds,
                     "density": done[key + ":density"].tolist(), "density_mean": float(np.mean(done[key + ":density"])),
                     "clean_accuracy": float(np.mean(done[key + ":accuracy"])),
                     "accuracy": done[key + ":accuracy"].tolist(), "seconds": float(done[key + ":seconds"])})
    base = rows[0]["density_mean"]
    for r in rows:
        r["density_ratio"] = r["density_mean"] / base
        r["success_rate"] = None  # an availability attack: its measure is the density ratio
    print(_cli.format_table([[r["setting"], f"{r['density_mean']:.3f}", f"{r['density_ratio']:.2f}x",
                              f"{100 * r['clean_accuracy']:.1f}"] for r in rows],
                            ["setting", "l0 density", "vs clean", "test acc %"]))
    print("paper (Cina et al. 2022): up to 1.5x the clean model's energy (ASIC simulation) at unchanged accuracy")
    if fallback:
        print("NOTE: digits fallback (no CIFAR-10 files): these numbers are not the protocol's")
    plt = _cli.pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(8, 3.2))
    ax[0].bar([r["setting"] for r in rows], [r["density_mean"] for r in rows], color=["0.6"] + ["C3"] * (len(rows) - 1))
    ax[0].set_ylabel("l0 activation density")
    ax[1].bar([r["setting"] for r in rows], [100 * r["clean_accuracy"] for r in rows], color=["0.6"] + ["C0"] * (len(rows) - 1))
    ax[1].set_ylabel("test accuracy (%)")
    fig.tight_layout()
    _cli.save_figure(fig, out / "density.png")
    results = {"experiment": "cina2022", "preset": "quick" if args.quick else args.preset,
               "protocol": dataclasses.asdict(proto), "fallback": fallback, "rows": rows,
               "paper": {"energy_ratio_up_to": 1.5, "note": "ASIC-simulated energy, not l0 density"},
               "density_images": int(x_dens.shape[0]), "seconds": time.perf_counter() - t_all}
    _cli.write_json_atomic(out / "results.json", results)
    print(f"wrote {out / 'results.json'} and density.png")
    return results


if __name__ == "__main__":
    main()
