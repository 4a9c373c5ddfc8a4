"""Defenses that act during training, against Witches' Brew from scratch (the geiping2021 protocol).

The same brewed poisons (crafted once per target on the clean crafting model, or read from a
``geiping2021`` run with ``--poisons-from``) meet victims trained from scratch five ways:

- ``none``: plain SGD (the geiping2021 victim; with the noise control);
- ``adversarial``: adversarial poisoning (Geiping et al. 2021, "What doesn't kill you makes you
  robust(er)"): a quarter of every batch is poisoned on the fly against random targets of the batch
  (:class:`poisoning.defenses.adversarial_poisoning.AdversarialPoisoning`);
- ``dpsgd``: DP-SGD, per-example clipping and Gaussian noise (:class:`poisoning.defenses.dp_sgd.DPSGD`);
  its network has no BatchNorm, so ``nobn`` (plain SGD on that network) is its reference, and the
  epsilon it achieves (Rényi accounting, delta = 1e-5) is reported;
- ``gaussian``: Gaussian data augmentation (:class:`poisoning.defenses.gaussian_augmentation.GaussianAugmentation`).

Each row reports the attack's success and the victims' clean accuracy. Published (CIFAR-10, ResNet-18,
eps 16/255, 1 %): adversarial poisoning lowers Witches' Brew from about 90 % to below 10 % at about
3 points of clean accuracy (Geiping et al. 2021b, Table 1); DP-SGD needs noise that costs far more
accuracy for a similar drop (their Fig. 2).
"""

from __future__ import annotations

from typing import Any, Sequence

from experiments import _cli
from experiments import geiping2021 as g21

__all__ = ["DEFENSES", "victims", "main"]

DEFENSES = ("none", "adversarial", "dpsgd", "nobn", "gaussian")


def victims(names, *, eps: float, dp_clip: float, dp_noise: float, gauss_std: float, adv_steps: int):
    """The :class:`experiments.geiping2021.Victim` of each defense name."""
    from poisoning.defenses.adversarial_poisoning import AdversarialPoisoning
    from poisoning.defenses.dp_sgd import DPSGD
    from poisoning.defenses.gaussian_augmentation import GaussianAugmentation

    make = {
        "none": lambda: g21.Victim("none"),
        "adversarial": lambda: g21.Victim("adversarial", AdversarialPoisoning(eps=eps, steps=adv_steps, lr=eps / 2),
                                          info=(("eps", eps), ("steps", adv_steps), ("fraction", 0.25))),
        "dpsgd": lambda: g21.Victim("dpsgd", DPSGD(l2_clip=dp_clip, noise_multiplier=dp_noise),
                                    model=(("batch_norm", False),),
                                    info=(("l2_clip", dp_clip), ("noise_multiplier", dp_noise))),
        "nobn": lambda: g21.Victim("nobn", model=(("batch_norm", False),)),
        "gaussian": lambda: g21.Victim("gaussian", GaussianAugmentation(std=gauss_std), info=(("std", gauss_std),)),
    }
    return [make[n]() for n in names]


def build_parser():
    p = g21.build_parser(__doc__.splitlines()[0], default_out="runs/geiping2021_defense")
    p.add_argument("--defenses", default=",".join(DEFENSES), help=f"comma-separated subset of {','.join(DEFENSES)}")
    p.add_argument("--poisons-from", default=None,
                   help="geiping2021 / geiping2021_defense run folders (comma-separated): reuse their crafting "
                        "model, poisons and victims where the protocol matches")
    p.add_argument("--dp-clip", type=float, default=1.0, help="DP-SGD per-example clipping norm")
    p.add_argument("--dp-noise", type=float, default=0.5, help="DP-SGD noise multiplier")
    p.add_argument("--gauss-std", type=float, default=0.1, help="Gaussian augmentation's std (pixel units)")
    p.add_argument("--adv-steps", type=int, default=3, help="adversarial poisoning: crafting steps per batch")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    names = [d.strip() for d in args.defenses.split(",") if d.strip()]
    bad = [d for d in names if d not in DEFENSES]
    if bad or not names:
        raise SystemExit(f"--defenses: expected a comma-separated subset of {DEFENSES}, got {args.defenses!r}")
    proto = g21.protocol_from_args(args)
    eps = g21._floats(args.eps, "--eps", 1 / 255)[0] if args.eps else proto.eps
    vs = victims(names, eps=eps, dp_clip=args.dp_clip, dp_noise=args.dp_noise, gauss_std=args.gauss_std,
                 adv_steps=args.adv_steps)
    results = g21.run(args, vs, experiment="geiping2021_defense", controls="none" in names,
                      reuse=args.poisons_from)
    if "dpsgd" in names:
        from poisoning.defenses.dp_sgd import dp_epsilon

        n, b = results["n_train"], proto.batch_size
        eps_dp, order = dp_epsilon(args.dp_noise, b / n, proto.epochs * (n // b), 1e-5)
        results["dp_sgd"] = {"epsilon": eps_dp, "delta": 1e-5, "order": order, "sample_rate": b / n,
                             "steps": proto.epochs * (n // b), "l2_clip": args.dp_clip, "noise_multiplier": args.dp_noise,
                             "note": "Rényi accounting of the Poisson-sampled Gaussian mechanism, reported for "
                                     "shuffled fixed-size batches (common practice, not a proof)"}
        print(f"DP-SGD: epsilon = {eps_dp:.2f} at delta = 1e-5 (order {order})")
        _cli.write_json_atomic(_cli.ensure_dir(args.out) / "results.json", results)
    return results


if __name__ == "__main__":
    main()
