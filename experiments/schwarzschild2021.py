r"""The transfer-learning table of the poisoning benchmark of Schwarzschild et al. (2021).

One trial = a target test image, a base class (the class the target should be taken for), ``k = 25``
poisons made from base-class images of a 2,500-image fine-tuning set (correct labels: clean-label), an
:math:`\ell_\infty` budget :math:`\varepsilon = 8/255`. The poisons are crafted on the white-box
network (:mod:`poisoning.attacks.shafahi2018` feature collision, :mod:`~poisoning.attacks.zhu2019`
convex polytope, :mod:`~poisoning.attacks.aghakhani2021` bullseye polytope), replace their bases in
the fine-tuning set, and the victim fine-tunes:

- **frozen**: the feature extractor is fixed and the last layer retrained (here the convex
  multinomial-logistic head, :func:`poisoning.transfer.frozen_head_predictions`);
- **end-to-end**: every layer fine-tuned (SGD with momentum, crops and flips,
  :func:`poisoning.transfer.finetune_predictions`);

on the **white-box** network (the crafting one), a **grey-box** one (same architecture, another
pretraining seed) and **black-box** ones (VGG-11 and MobileNetV2, averaged, as in the paper). Success
= the target classified as the base class. Rates come with exact (Clopper-Pearson) 95 % intervals.

Trials are independent pure functions, run vmapped and sharded over every device
(:func:`poisoning.trials.map_trials`); the per-trial outcomes are checkpointed per setting, so an
interrupted run resumes.

Protocols (``--preset``):

- ``cpu`` (default): the extractors are pretrained on CIFAR-10 classes 0-4 by
  :mod:`experiments.pretrain` (ResNet-18 / VGG-11 width 16, MobileNetV2 x0.5, 8 epochs; CIFAR-100,
  the paper's pretraining set, is not in the offline data) and the victim fine-tunes on classes 5-9
  (500 training images per class = 2,500); 20 trials; crafting 200 Adam steps (lr 0.01);
  the frozen head is the convex logistic head (L2 ``1e-3``), end-to-end fine-tuning 2 epochs
  (lr 0.01, batch 64) on the first 10 trials, clean accuracy on 1,000 test images;
- ``paper``: full-width networks pretrained by the paper's recipe (``--protocol cifar100`` when its
  files are present), 100 trials, crafting 1,200 steps, end-to-end 40 epochs (lr 0.01 divided by 10 at
  epoch 30, batch 128, weight decay 2e-4), for accelerators.

Outputs (``--out``, default ``runs/schwarzschild2021``): ``results.json`` (``rows``: one per attack and
setting with ``attack``, ``setting``, ``trials``, ``success_rate``, ``ci95``, ``clean_accuracy``,
``seconds``, the paper's number), ``success.png`` (success per setting with intervals),
``poisons_<attack>.png`` (poisons beside their bases and the target).

Usage::

    python -m experiments.schwarzschild2021 --data-dir ../shared/data
    python -m experiments.schwarzschild2021 --attacks bp --trials 50 --boxes white
    python -m experiments.schwarzschild2021 --preset paper --protocol cifar100   # on a GPU
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import time
from typing import Any, Sequence

import numpy as np

from experiments import _cli

__all__ = ["ATTACKS", "PAPER", "Protocol", "load_transfer_data", "make_trials", "build_parser", "main"]

ATTACKS = ("none", "fc", "cp", "bp")
ATTACK_NAMES = {"none": "none (clean bases)", "fc": "feature collision", "cp": "convex polytope",
                "bp": "bullseye polytope"}
BOXES = ("white", "grey", "black")
SETTINGS = ("frozen", "end2end")
# Schwarzschild et al. 2021, CIFAR-10 transfer (README / index.md of aks2203/poisoning-benchmark), %
PAPER = {
    ("fc", "frozen"): {"white": 16.0, "grey": 7.0, "black": 3.5},
    ("fc", "end2end"): {"white": 4.0, "grey": 3.0, "black": 3.5},
    ("cp", "frozen"): {"white": 24.0, "grey": 7.0, "black": 4.5},
    ("cp", "end2end"): {"white": 17.0, "grey": 7.0, "black": 4.5},
    ("bp", "frozen"): {"white": 85.0, "black": 8.5},
}


@dataclasses.dataclass(frozen=True)
class Protocol:
    """The knobs of a preset (all recorded in results.json)."""

    trials: int = 20
    poisons: int = 25
    per_class: int = 500
    eps: float = 8 / 255
    steps: int = 200
    lr: float = 0.01
    opacity: float = 0.0
    head_reg: float = 1e-3
    e2e_trials: int = 10
    e2e_epochs: int = 2
    e2e_lr: float = 0.01
    e2e_batch: int = 64
    e2e_eval: int = 1000
    chunk: int = 5
    pretrain_preset: str = "cpu"


PRESETS = {
    "cpu": Protocol(),
    "paper": Protocol(trials=100, steps=1200, e2e_trials=100, e2e_epochs=40, e2e_batch=128, e2e_eval=10000, chunk=20,
                      pretrain_preset="paper"),
    "quick": Protocol(trials=2, poisons=3, per_class=8, steps=3, e2e_trials=2, e2e_epochs=1, e2e_batch=8, chunk=2),
}


def load_transfer_data(data_dir, cache_dir, per_class: int, quick: bool, seed: int):
    """The fine-tuning set (``per_class`` training images of each of CIFAR-10's classes 5-9, labels
    0-4), the test set of those classes, and whether the digits fallback was used (no CIFAR files:
    scikit-learn's digits 5-9, upsampled to 32x32x3, stand in)."""
    from experiments.pretrain import _digits
    from poisoning import datasets
    from poisoning.training import resolve_cache_dir

    fallback = False
    try:
        ds = datasets.load_cifar10(_cli.resolve_data_dir(data_dir), classes=(5, 6, 7, 8, 9),
                                   cache_dir=resolve_cache_dir(cache_dir) / "data")
        x_tr, y_tr, x_te, y_te = ds.X_train, ds.y_train.astype(np.int32), ds.X_test, ds.y_test.astype(np.int32)
    except FileNotFoundError as exc:
        print(f"[schwarzschild2021] CIFAR-10 not found ({exc}): scikit-learn's digits 5-9 stand in", flush=True)
        fallback = True
        x_tr, y_tr, x_te, y_te, _, _ = _digits((32, 32, 3), seed)
        keep_tr, keep_te = y_tr >= 5, y_te >= 5
        x_tr, y_tr, x_te, y_te = x_tr[keep_tr], y_tr[keep_tr] - 5, x_te[keep_te], y_te[keep_te] - 5
    rows = np.concatenate([np.flatnonzero(y_tr == c)[:per_class] for c in range(5)])
    return x_tr[rows].astype(np.float32), y_tr[rows], x_te.astype(np.float32), y_te, fallback


def make_trials(y_finetune, y_test, n_trials: int, n_poisons: int, seed: int):
    """``n_trials`` trials: a target test index, its class, a base class drawn among the others, and
    ``n_poisons`` fine-tuning indices of the base class (the images the poisons replace)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y_finetune)
    target_idx, base_cls, poison_idx = [], [], []
    for _ in range(n_trials):
        t = int(rng.integers(len(y_test)))
        b = int(rng.choice(classes[classes != y_test[t]]))
        pool = np.flatnonzero(y_finetune == b)
        if len(pool) < n_poisons:
            raise ValueError(f"--poisons {n_poisons} exceeds the {len(pool)} fine-tuning images of class {b}")
        target_idx.append(t)
        base_cls.append(b)
        poison_idx.append(np.sort(rng.choice(pool, n_poisons, replace=False)))
    return {"target": np.asarray(target_idx, np.int32), "base_class": np.asarray(base_cls, np.int32),
            "poison_idx": np.asarray(poison_idx, np.int32)}


def _extractors(boxes, preset, protocol, data_dir, cache_dir, seed, quick, model="resnet18",
                black=("vgg11", "mobilenetv2")):
    from experiments.pretrain import pretrain

    nets = {"white": [(model, seed)]}
    if "grey" in boxes:
        nets["grey"] = [(model, seed + 1)]
    if "black" in boxes:
        nets["black"] = [(name, seed) for name in black]
    out, info = {}, {}
    for box, specs in nets.items():
        out[box] = []
        for name, s in specs:
            p = pretrain(name, protocol, preset, seed=s, quick=quick, data_dir=data_dir, cache_dir=cache_dir,
                         progress=False)
            out[box].append(p)
            info[f"{box}:{name}:seed{s}"] = {"test_accuracy_pretraining": p.info.get("eval", {}).get("accuracy"),
                                            "protocol": p.info["protocol"], "folder": p.info["folder"]}
    return out, info


@functools.lru_cache(maxsize=None)  # one function object per configuration: compiled once
def _crafter(attack: str, model, proto: Protocol):
    """``craft(trial, variables, x_finetune, x_test) -> poisons``, one pure trial."""
    import jax.numpy as jnp

    from poisoning.attacks import aghakhani2021, shafahi2018, zhu2019

    mod = {"fc": shafahi2018, "cp": zhu2019, "bp": aghakhani2021}.get(attack)

    def craft(trial, variables, x_ft, x_te):
        if mod is None:  # the control: the bases enter unchanged (same trials, same victims' training)
            bases = jnp.take(x_ft, trial["poison_idx"], axis=0)
            zero = jnp.zeros((), bases.dtype)
            return {"poisons": bases, "loss": zero, "loss_start": zero}

        def phi(x):
            return model.apply(variables, x, train=False, features=True)

        bases = jnp.take(x_ft, trial["poison_idx"], axis=0)
        target = x_te[trial["target"]]
        kw = {"opacity": proto.opacity} if attack == "fc" else {}
        res = mod.craft(phi, bases, target, eps=proto.eps, lr=proto.lr, steps=proto.steps, **kw)
        return {"poisons": res.poisons, "loss": res.loss, "loss_start": res.loss_start}

    return craft


@functools.lru_cache(maxsize=None)  # one function object per configuration: compiled once
def _frozen_eval(model, num_classes: int, reg: float):
    import jax.numpy as jnp

    from poisoning.transfer import frozen_head_predictions

    def evaluate(trial, variables, F_ft, y_ft, x_te, F_te, y_te):
        def phi(x):
            return model.apply(variables, x, train=False, features=True)

        F_p = phi(trial["poisons"])
        F = F_ft.at[trial["poison_idx"]].set(F_p.astype(F_ft.dtype))
        F_eval = jnp.concatenate([phi(x_te[trial["target"]][None]), F_te], axis=0)
        pred = frozen_head_predictions(F, y_ft, F_eval, num_classes, reg=reg)
        return {"success": pred[0] == trial["base_class"], "accuracy": jnp.mean(pred[1:] == y_te),
                "target_pred": pred[0]}

    return evaluate


@functools.lru_cache(maxsize=None)  # one function object per configuration: compiled once
def _e2e_eval(model, proto: Protocol, n: int):
    import jax
    import jax.numpy as jnp

    from poisoning.training import Augment, TrainConfig
    from poisoning.transfer import finetune_predictions

    cfg = TrainConfig(epochs=proto.e2e_epochs, batch_size=min(proto.e2e_batch, n), optimizer="sgd",
                      learning_rate=proto.e2e_lr, momentum=0.9, weight_decay=2e-4,
                      schedule="step" if proto.e2e_epochs >= 40 else "constant",
                      milestones=(30,) if proto.e2e_epochs >= 40 else (), augment=Augment.cifar())

    def evaluate(trial, state, x_ft, y_ft, x_te, y_te):
        x = x_ft.at[trial["poison_idx"]].set(trial["poisons"].astype(x_ft.dtype))
        m = min(proto.e2e_eval, x_te.shape[0])  # clean accuracy on the first m test images
        x_eval = jnp.concatenate([x_te[trial["target"]][None], x_te[:m]], axis=0)
        key = jax.random.fold_in(jax.random.PRNGKey(0), trial["target"])
        pred = finetune_predictions(model, state, (x, y_ft), x_eval, cfg, key)
        return {"success": pred[0] == trial["base_class"], "accuracy": jnp.mean(pred[1:] == y_te[:m]),
                "target_pred": pred[0]}

    return evaluate


def _rate(success) -> dict:
    s, t = int(np.sum(success)), int(np.size(success))
    lo, hi = _cli.binomial_ci(s, t)
    return {"successes": s, "trials": t, "success_rate": s / t, "ci95": [lo, hi]}


def build_parser():
    p = _cli.base_parser(__doc__.splitlines()[0], default_out="runs/schwarzschild2021")
    p.add_argument("--preset", default="cpu", choices=("cpu", "paper"))
    p.add_argument("--protocol", default="cifar10-first5", help="pretraining protocol (experiments.pretrain)")
    p.add_argument("--model", default="resnet18", help="the white- and grey-box architecture (poisoning.models)")
    p.add_argument("--black", default="vgg11,mobilenetv2", help="the black-box architectures (averaged)")
    p.add_argument("--attacks", default=",".join(ATTACKS),
                   help="comma-separated subset of none,fc,cp,bp (none: the bases unchanged, the control)")
    p.add_argument("--boxes", default=",".join(BOXES), help="comma-separated subset of white,grey,black")
    p.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated subset of frozen,end2end")
    p.add_argument("--trials", type=int, default=None, help="trials (default: the preset's)")
    p.add_argument("--e2e-trials", type=int, default=None, help="end-to-end trials (the first ones)")
    p.add_argument("--steps", type=int, default=None, help="crafting steps")
    p.add_argument("--opacity", type=float, default=None,
                   help="feature collision: watermark the target into the bases first (0.2-0.3 in Shafahi et al.)")
    p.add_argument("--chunk", type=int, default=None, help="trials per compiled (vmapped, sharded) call")
    p.add_argument("--cache-dir", default=None, help="pretrained-model cache (default $BILEVEL_CACHE_DIR)")
    return p


def _split(value, allowed, flag):
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise SystemExit(f"{flag}: expected a comma-separated subset of {allowed}, got {value!r}")
    return items


def _plot_poisons(x_ft, x_te, trial, poisons, path, k=5):
    return _cli.save_poisons_beside_bases(x_te[trial["target"]], x_ft[np.asarray(trial["poison_idx"])[:k]], poisons, path,
                                          target_title="target", k=k)


def _plot_success(rows, path):
    """Success per setting: one panel per (setting, box), a bar per attack with its 95 % interval, the
    paper's number as a star."""
    plt = _cli.pyplot()
    panels = list(dict.fromkeys((r["setting"], r["box"]) for r in rows))
    attacks = list(dict.fromkeys(r["attack_key"] for r in rows))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels) + 1, 3.2), sharey=True, squeeze=False)
    for ax, (setting, box) in zip(axes[0], panels):
        sub = {r["attack_key"]: r for r in rows if (r["setting"], r["box"]) == (setting, box)}
        xs = np.arange(len(attacks))
        for x, a in zip(xs, attacks):
            r = sub.get(a)
            if r is None:
                continue
            rate = 100 * r["success_rate"]
            err = [[rate - 100 * r["ci95"][0]], [100 * r["ci95"][1] - rate]]
            ax.bar(x, rate, yerr=err, capsize=3, color="0.6" if a == "none" else "C0")
            if r["paper"] is not None:
                ax.plot(x, r["paper"], "k*", markersize=9)
        ax.set_xticks(xs), ax.set_xticklabels(attacks)
        ax.set_title(f"{setting} / {box}", fontsize=9)
        ax.set_ylim(0, 100)
    axes[0, 0].set_ylabel("success rate (%); * paper")
    fig.tight_layout()
    return _cli.save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    from poisoning.trials import map_trials
    from poisoning.training import extract_features
    from poisoning.transfer import frozen_head_predictions
    from poisoning.training.state import variables

    args = build_parser().parse_args(argv)
    out = _cli.ensure_dir(args.out)
    attacks = _split(args.attacks, ATTACKS, "--attacks")
    boxes = _split(args.boxes, BOXES, "--boxes")
    settings = _split(args.settings, SETTINGS, "--settings")
    proto = PRESETS["quick" if args.quick else args.preset]
    proto = dataclasses.replace(
        proto, **{k: v for k, v in (("trials", args.trials), ("e2e_trials", args.e2e_trials),
                                    ("steps", args.steps), ("chunk", args.chunk),
                                    ("opacity", args.opacity)) if v is not None})
    proto = dataclasses.replace(proto, e2e_trials=min(proto.e2e_trials, proto.trials))
    t_all = time.perf_counter()

    x_ft, y_ft, x_te, y_te, fallback = load_transfer_data(args.data_dir, args.cache_dir, proto.per_class,
                                                          args.quick, args.seed)
    if args.quick:
        x_te, y_te = x_te[:40], y_te[:40]
    trials = make_trials(y_ft, y_te, proto.trials, proto.poisons, args.seed)
    nets, net_info = _extractors(boxes, proto.pretrain_preset, args.protocol, args.data_dir, args.cache_dir,
                                 args.seed, args.quick, args.model,
                                 tuple(b.strip() for b in args.black.split(",") if b.strip()))
    white = nets["white"][0]
    # per-setting outcomes are checkpointed under a fingerprint of what they depend on, so a rerun with
    # other settings recomputes exactly the entries those settings change
    ckpt = _cli.Checkpoint(out / "checkpoint.npz")
    done = ckpt.load() or {}
    base = (args.protocol, args.model, args.seed, bool(args.quick), fallback, proto.trials, proto.poisons,
            proto.per_class, proto.eps, proto.steps, proto.lr)
    e2e_fields = (proto.e2e_trials, proto.e2e_epochs, proto.e2e_lr, proto.e2e_batch, proto.e2e_eval)

    def slot(box, i, net):  # the black box's members by name (--black picks them), the others by index
        return net.info["model_name"] if box == "black" else str(i)

    def fingerprint(attack, setting=None):
        parts = base + ((proto.opacity,) if attack == "fc" else ())
        if setting == "frozen":
            parts += (proto.head_reg,)
        elif setting == "end2end":
            parts += e2e_fields
        return hashlib.sha1(repr(parts).encode()).hexdigest()[:12]
    bar = _cli.progress(total=len(attacks) * (1 + len(boxes) * len(settings)), desc="schwarzschild2021")

    def cached(key, compute):
        prefix = key + ":"
        if not any(k.startswith(prefix) for k in done):
            t = time.perf_counter()
            result = compute()
            done[prefix + "seconds"] = np.asarray(time.perf_counter() - t)
            for field, value in result.items():
                done[prefix + field] = np.asarray(value)
            ckpt.save(done)
        bar.update(1)
        return {k[len(prefix):]: v for k, v in done.items() if k.startswith(prefix)}

    # clean accuracy of every victim (frozen head on the clean fine-tuning set)
    feats = {}
    clean_acc = {}
    for box in boxes:
        for i, net in enumerate(nets[box]):
            V = variables(net.state)
            F_ft = np.asarray(extract_features(net.model, net.state, x_ft))
            F_te = np.asarray(extract_features(net.model, net.state, x_te))
            feats[(box, i)] = (V, F_ft, F_te)
            pred = np.asarray(frozen_head_predictions(jnp.asarray(F_ft), jnp.asarray(y_ft), jnp.asarray(F_te), 5,
                                                      reg=proto.head_reg))
            clean_acc[(box, i)] = float(np.mean(pred == y_te))

    rows, crafted = [], {}
    for attack in attacks:
        craft = _crafter(attack, white.model, proto)
        res = cached(f"{attack}/poisons/{fingerprint(attack)}", lambda: map_trials(
            craft, trials, variables(white.state), x_ft, x_te, chunk=proto.chunk))
        craft_seconds = float(res["seconds"])
        crafted[attack] = res
        with_poisons = dict(trials, poisons=np.asarray(res["poisons"]))
        if attack != "none":
            _plot_poisons(x_ft, x_te, {k: v[0] for k, v in trials.items()}, np.asarray(res["poisons"][0]),
                          out / f"poisons_{attack}.png")
        for setting in settings:
            for box in boxes:
                outcomes = []
                for i, net in enumerate(nets[box]):
                    if setting == "frozen":
                        V, F_ft, F_te = feats[(box, i)]
                        ev = _frozen_eval(net.model, 5, proto.head_reg)
                        o = cached(f"{attack}/{setting}/{box}/{slot(box, i, net)}/{fingerprint(attack, setting)}", lambda: map_trials(
                            ev, with_poisons, V, F_ft, y_ft, x_te, F_te, y_te, chunk=proto.chunk))
                    else:
                        n = proto.e2e_trials
                        sub = {k: v[:n] for k, v in with_poisons.items()}
                        ev = _e2e_eval(net.model, proto, len(y_ft))
                        o = cached(f"{attack}/{setting}/{box}/{slot(box, i, net)}/{fingerprint(attack, setting)}", lambda: map_trials(
                            ev, sub, net.state, x_ft, y_ft, x_te, y_te, chunk=max(1, min(proto.chunk, n))))
                    outcomes.append(o)
                success = np.concatenate([np.asarray(o["success"]) for o in outcomes])
                row = {"attack": ATTACK_NAMES[attack], "attack_key": attack, "setting": setting, "box": box,
                       **_rate(success),
                       "clean_accuracy": float(np.mean([np.mean(o["accuracy"]) for o in outcomes])),
                       "clean_accuracy_unpoisoned": float(np.mean([clean_acc[(box, i)] for i in range(len(outcomes))]))
                       if setting == "frozen" else None,
                       "victims": len(outcomes),
                       "seconds": craft_seconds + sum(float(o["seconds"]) for o in outcomes),
                       "craft_seconds": craft_seconds,
                       "paper": PAPER.get((attack, setting), {}).get(box)}
                rows.append(row)
    bar.close()

    table = [[r["attack"], r["setting"], r["box"], r["trials"], f"{100 * r['success_rate']:.1f}",
              f"[{100 * r['ci95'][0]:.0f}, {100 * r['ci95'][1]:.0f}]", "-" if r["paper"] is None else f"{r['paper']:.1f}",
              f"{100 * r['clean_accuracy']:.1f}", f"{r['seconds']:.0f}"] for r in rows]
    print(_cli.format_table(table, ["attack", "setting", "box", "trials", "success %", "95 % CI", "paper %",
                                    "clean acc %", "s"]))
    if fallback:
        print("NOTE: digits fallback (no CIFAR-10 files): these numbers are not the protocol's")
    results = {
        "experiment": "schwarzschild2021",
        "out": str(out),
        "preset": "quick" if args.quick else args.preset,
        "protocol": dataclasses.asdict(proto),
        "pretraining": args.protocol,
        "model": args.model,
        "black_box": args.black,
        "fallback": fallback,
        "transfer_classes": "CIFAR-10 5-9 (dog, frog, horse, ship, truck)" if not fallback else "digits 5-9",
        "n_finetune": int(len(y_ft)), "n_test": int(len(y_te)),
        "networks": net_info,
        "clean_accuracy_frozen": {f"{b}:{i}": a for (b, i), a in clean_acc.items()},
        "devices": [str(d) for d in jax.devices()],
        "rows": rows,
        "loss": {a: {"start": float(np.mean(r["loss_start"])), "end": float(np.mean(r["loss"]))}
                 for a, r in crafted.items() if a != "none"},
        "seconds": time.perf_counter() - t_all,
        "notes": ("frozen = convex logistic head on the extractor's features (the paper trains the last "
                  "layer by SGD with augmentation); black-box = mean over VGG-11 and MobileNetV2; trials "
                  "are drawn with the experiment's seed (the paper uses fixed setup files)."),
    }
    _cli.write_json_atomic(out / "results.json", results)
    _plot_success(rows, out / "success.png")
    print(f"wrote {out / 'results.json'}, success.png and poisons_*.png")
    return results


if __name__ == "__main__":
    main()
