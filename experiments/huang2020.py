"""MetaPoison (Huang et al., NeurIPS 2020) on the geiping2021 from-scratch protocol.

Same data, crafting model, targets, poison indices, victims and noise control as ``geiping2021``; the
poisons come from :func:`poisoning.attacks.huang2020.craft` instead: Adam on the perturbations through
``--unroll`` K training steps (the engine's own :func:`~poisoning.training.train_step`, augmentation
included) of an ensemble of ``--members`` networks trained from scratch for staggered numbers of epochs
(1/M, 2/M, ..., 1 of the protocol's epochs), which keep training on poisoned data while the poisons are
crafted. Published: about 90 % success at 1 % poisons on CIFAR-10 from scratch (Huang et al. 2020,
Fig. 4; ResNet-20, eps 8/255 plus ReColorAdv; K = 2, M = 24, 60 steps). We use the l_inf ball only.
"""

from __future__ import annotations

from typing import Any, Sequence

from experiments import geiping2021 as g21

__all__ = ["main", "PAPER"]

PAPER = 90.0


def build_parser():
    p = g21.build_parser(__doc__.splitlines()[0], default_out="runs/huang2020")
    p.add_argument("--members", type=int, default=4, help="ensemble members at staggered training stages")
    p.add_argument("--unroll", type=int, default=2, help="K, training steps unrolled per crafting step")
    p.add_argument("--meta-steps", type=int, default=60, help="crafting steps")
    p.add_argument("--meta-lr", type=float, default=0.01, help="Adam step size (pixel units)")
    return p


def crafter(members: int, unroll: int, steps: int, lr: float):
    """The :func:`experiments.geiping2021.run` crafter of MetaPoison."""

    def build(ctx, eps):
        import jax
        import jax.numpy as jnp
        from poisoning.attacks import huang2020 as mp
        from poisoning.training import init_state, train_epochs

        model, X, Y, XT, proto, n = ctx["model"], ctx["X"], ctx["Y"], ctx["XT"], ctx["proto"], ctx["n"]
        cfg = g21._train_config(proto)
        spe = n // cfg.batch_size
        template = None
        states = []
        for m in range(members):
            epochs = max(1, round(proto.epochs * (m + 1) / members))

            def train_member(m=m, epochs=epochs):
                k_init, k_train = jax.random.split(jax.random.key(ctx["seed"] + 9000 + m))
                st = init_state(model, cfg, X, k_init, steps_per_epoch=spe)
                st, _ = train_epochs(model, st, (X, Y), cfg, epochs, key=k_train)
                return {f"leaf{i}": a for i, a in enumerate(jax.tree_util.tree_leaves(st))}

            saved = ctx["cached"](f"meta_member/{m}/{members}/{ctx['fp']()}", train_member)
            if template is None:
                template = jax.eval_shape(lambda: init_state(model, cfg, X, jax.random.key(0), steps_per_epoch=spe))
            leaves = [jnp.asarray(saved[f"leaf{i}"]) for i in range(len(jax.tree_util.tree_leaves(template)))]
            states.append(jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), leaves))
        stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *states)
        mc = mp.MetaConfig(eps=float(eps), steps=steps, unroll=unroll, lr=lr,
                           clean_batch=min(32, max(1, proto.batch_size // 2)))

        @jax.jit
        def craft(idx, t, a, key):
            res, _ = mp.craft(model, cfg, stacked, X[idx], Y[idx], (X, Y), XT[t][None], a[None], key, mc)
            return res.poisons, res.history[-1]

        return craft

    return build


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    for flag in ("members", "unroll", "meta_steps"):
        if getattr(args, flag) < 1:
            raise SystemExit(f"--{flag.replace('_', '-')} must be >= 1")
    res = g21.run(args, [g21.Victim("none")], experiment="huang2020", attack="metapoison",
                  crafter=crafter(args.members, args.unroll, args.meta_steps, args.meta_lr),
                  crafter_tag=("metapoison", args.members, args.unroll, args.meta_steps, args.meta_lr),
                  paper={8: PAPER, 16: PAPER})
    return res


if __name__ == "__main__":
    main()
