"""Witches' Brew from scratch (Geiping et al., ICLR 2021): gradient-matching poisons, victims retrained.

One trial: a clean *crafting* model is trained on the training set; a target test image (one the
crafting model classifies correctly) and an adversarial class are drawn; ``budget`` x n training
images of the adversarial class are perturbed inside an l_inf ball of radius ``eps`` by
:func:`poisoning.attacks.geiping2021.craft` (labels unchanged); then fresh victims are trained **from
scratch**, from other initializations and data orders, on the poisoned set (``seeds`` of them, vmapped).
Success: the victim classifies the target as the adversarial class. The control replaces the same
images by uniform noise of the same ``eps`` ("noise"), which should succeed about as often as chance.

Protocols (``--preset``):

- ``cpu`` (default): CIFAR-10, 250 training images per class (n = 2,500, so 1 % = 25 poisons), the
  paper's five-layer ConvNet at width 8 with BatchNorm, 15 epochs of SGD (cosine), crops of 2 pixels
  and flips; 250 signed-Adam steps, two restarts; 10 targets x 2 victims. About 40 minutes on 2 cores
  (one victim: about 25 s on two free cores).
- ``fashion``: Fashion-MNIST (28x28x1), 1,000 training images per class (1 % = 100 poisons), the same
  ConvNet at width 8, 10 epochs, crops of 2 and flips; 10 targets x 1 victim. A CPU protocol whose
  crafting model fits its data far better than the ``cpu`` one's (Witches' Brew needs a well-trained
  crafting model: see the README's numbers).
- ``paper``: all of CIFAR-10, ResNet-18, 40 epochs, 250 steps, 8 restarts, 100 targets (accelerators).
- ``--dataset {cifar10,fashion_mnist,mnist}`` swaps the data set of any preset (MNIST without flips).
- ``--quick``: scikit-learn digits upsampled to 32x32, LeNet-5, a few steps (the tests).

Besides success, every victim records continuous measures (``results.json``, per target x victim):
``margin``, the target's adversarial logit minus its largest other logit (> 0 exactly when the attack
succeeds), ``adv_prob``, the adversarial class's softmax probability, and ``train_accuracy`` on its
(poisoned) training set; ``crafting_model_margin`` is the clean crafting model's margin on each target
and ``crafting_loss`` the brew's final alignment loss. Brew against noise *of the same victim seed*
is a paired comparison of margins, a signal that needs far fewer trials than success rates. Training
knobs: ``--lr``, ``--weight-decay``, ``--batch-size``, ``--crop``, ``--no-flip`` (no augmentation at
all with ``--crop 0 --no-flip``; the crafting objective then applies none either).

Sweeps: ``--eps 8,16`` (in /255) and ``--budgets 0.005,0.01`` run every combination and plot success
against each. Published: CIFAR-10, ResNet-18 from scratch, budget 1 %: 45 % at eps 8/255 (the
poisoning benchmark of Schwarzschild et al. 2021), about 90 % at eps 16/255 (Geiping et al., Table 1).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np

from experiments import _cli

__all__ = ["Protocol", "PRESETS", "PAPER", "Victim", "load_data", "make_trials", "main", "run"]

# success rate (%) of Witches' Brew from scratch on CIFAR-10 / ResNet-18 at budget 1 %
PAPER = {8: 45.0, 16: 90.0}


@dataclasses.dataclass(frozen=True)
class Protocol:
    """The from-scratch protocol (see the module docstring; ``eps`` in pixel units)."""

    per_class: int | None = 250
    n_test: int = 2000
    model: str = "convnet"
    width: int = 8
    epochs: int = 15
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 5e-4
    crop: int = 2
    targets: int = 10
    seeds: int = 2
    budget: float = 0.01
    eps: float = 16 / 255
    steps: int = 250
    restarts: int = 2
    brew_lr: float = 0.025
    ensemble: int = 1
    dataset: str = "cifar10"
    flip: bool = True


PRESETS = {
    "cpu": Protocol(),
    "paper": Protocol(per_class=None, n_test=10000, model="resnet18", width=64, epochs=40, batch_size=128,
                      lr=0.1, crop=4, targets=100, seeds=1, steps=250, restarts=8),
    "fashion": Protocol(dataset="fashion_mnist", per_class=1000, n_test=2000, model="convnet", width=8, epochs=10,
                        batch_size=64, crop=2, targets=10, seeds=1),
    "quick": Protocol(per_class=30, n_test=100, model="lenet5", epochs=1, batch_size=32, targets=2, seeds=2,
                      budget=0.05, steps=3, restarts=1, crop=0),
}


@dataclasses.dataclass(frozen=True)
class Victim:
    """How a victim trains: ``step`` (``None``: plain SGD; else a training-time defense, see
    :func:`poisoning.training.train`), changes to the :class:`~poisoning.training.TrainConfig`
    (e.g. an augmentation) and to the model's fields (e.g. no BatchNorm for DP-SGD)."""

    name: str
    step: Any = None
    config: tuple = ()
    model: tuple = ()
    info: tuple = ()


DATASETS = {"cifar10": "CIFAR-10", "fashion_mnist": "Fashion-MNIST", "mnist": "MNIST"}
# per-channel pixel statistics of the training sets (the models normalize their inputs)
_STATS = {"fashion_mnist": ((0.2860,), (0.3530,)), "mnist": ((0.1307,), (0.3081,))}


def load_data(data_dir, cache_dir, proto: Protocol, seed: int):
    """Training and test images of ``proto.dataset`` (CIFAR-10 32x32x3, or MNIST / Fashion-MNIST 28x28x1;
    ``per_class`` per class, a seeded stratified subset) and whether scikit-learn's digits (upsampled to
    the data set's shape) stood in for missing files."""
    from poisoning import datasets

    if proto.dataset not in DATASETS:
        raise ValueError(f"--dataset must be one of {sorted(DATASETS)}, got {proto.dataset!r}")
    fallback = False
    try:
        if proto.dataset == "cifar10":
            from poisoning.training import resolve_cache_dir

            ds = datasets.load_cifar10(_cli.resolve_data_dir(data_dir), cache_dir=resolve_cache_dir(cache_dir) / "data")
        else:
            loader = datasets.load_mnist if proto.dataset == "mnist" else datasets.load_fashion_mnist
            ds = loader(_cli.resolve_data_dir(data_dir), flatten=False)
        x_tr, y_tr, x_te, y_te = ds.X_train, ds.y_train.astype(np.int32), ds.X_test, ds.y_test.astype(np.int32)
        if proto.dataset != "cifar10":
            x_tr, x_te = np.asarray(x_tr)[..., None], np.asarray(x_te)[..., None]
    except FileNotFoundError as exc:
        from experiments.pretrain import _digits

        print(f"[geiping2021] {DATASETS[proto.dataset]} not found ({exc}): scikit-learn's digits stand in", flush=True)
        fallback = True
        shape = (32, 32, 3) if proto.dataset == "cifar10" else (28, 28, 1)
        x_tr, y_tr, x_te, y_te, _, _ = _digits(shape, seed)
    rng = np.random.default_rng(seed)
    if proto.per_class is not None:
        rows = []
        for c in range(10):
            pool = np.flatnonzero(y_tr == c)
            if len(pool) < proto.per_class:
                raise ValueError(f"per_class={proto.per_class} exceeds the {len(pool)} training images of class {c}")
            rows.append(rng.choice(pool, proto.per_class, replace=False))
        rows = rng.permutation(np.concatenate(rows))
        x_tr, y_tr = x_tr[rows], y_tr[rows]
    te = rng.permutation(len(y_te))[: proto.n_test]
    return (np.asarray(x_tr, np.float32), y_tr, np.asarray(x_te[te], np.float32), y_te[te], fallback)


def n_poisons(proto: Protocol, n: int) -> int:
    k = int(round(proto.budget * n))
    if not 0 < proto.budget <= 1 or k < 1:
        raise ValueError(f"--budgets {proto.budget} gives {k} poisons out of {n} training images")
    return k


def make_trials(y_train, y_test, correct, proto: Protocol, seed: int):
    """Targets among the test images the crafting model classifies correctly (``correct``), an
    adversarial class drawn among the others, and the training indices of the adversarial class that
    the poisons replace (``budget`` x n of them)."""
    rng = np.random.default_rng(seed + 1)
    k = n_poisons(proto, len(y_train))
    pool = np.flatnonzero(correct)
    if len(pool) < proto.targets:
        raise ValueError(f"only {len(pool)} test images are classified correctly; --targets {proto.targets} is too many")
    targets = rng.permutation(pool)[: proto.targets]  # a prefix: the first trials do not depend on --targets
    adv, idx = [], []
    for t in targets:
        a = int(rng.choice([c for c in range(10) if c != y_test[t]]))
        cls = np.flatnonzero(y_train == a)
        if len(cls) < k:
            raise ValueError(f"a budget of {k} poisons exceeds the {len(cls)} training images of class {a}")
        adv.append(a)
        idx.append(np.sort(rng.choice(cls, k, replace=False)))
    return {"target": targets.astype(np.int32), "adv": np.asarray(adv, np.int32), "poison_idx": np.stack(idx)}


def _model(proto: Protocol, victim: Victim | None = None, fallback: bool = False):
    from poisoning.models import CIFAR10_MEAN, CIFAR10_STD, MODELS, get_model

    knobs = {}
    if proto.model == "convnet":
        knobs.update(width=proto.width, batch_norm=True)
    elif proto.model == "lenet5":
        if proto.dataset == "cifar10":
            knobs["pad"] = 0  # 32x32 input
    else:
        knobs["width"] = proto.width
    if not fallback:
        mean, std = _STATS.get(proto.dataset, (CIFAR10_MEAN, CIFAR10_STD))
        knobs.update(mean=mean, std=std)
    fields = set(MODELS[proto.model][0].__dataclass_fields__)
    # a victim's model changes apply where the network has that field (no BatchNorm to remove in LeNet-5)
    knobs.update({k: v for k, v in (dict(victim.model) if victim else {}).items() if k in fields})
    return get_model(proto.model, 10, **knobs)


def _train_config(proto: Protocol, victim: Victim | None = None):
    from poisoning.training import Augment, TrainConfig

    aug = Augment(crop_padding=proto.crop, flip=proto.flip)
    cfg = TrainConfig(epochs=proto.epochs, batch_size=proto.batch_size, optimizer="sgd", learning_rate=proto.lr,
                      momentum=0.9, weight_decay=proto.weight_decay, schedule="cosine", augment=aug)
    return cfg.replace(**dict(victim.config)) if victim else cfg


@functools.lru_cache(maxsize=32)
def trainer(proto: Protocol, n: int, victim: Victim | None = None, fallback: bool = False, vmap: int | None = None):
    """``fit(x, y, seeds) -> states``: victims trained from scratch, one per seed (a seed sets the
    initialization, the data order and the augmentation), ``vmap`` of them at a time (``lax.map`` with
    ``batch_size``; default: all at once on accelerators, one at a time on CPU, where XLA runs a
    vmapped convolution as a grouped one, several times slower than a loop). Cached: the same protocol
    and victim give the same compiled function."""
    import jax
    from poisoning.training import init_state, train

    model, cfg = _model(proto, victim, fallback), _train_config(proto, victim)
    spe = n // cfg.batch_size
    step = victim.step if victim else None

    @jax.jit
    def fit(x, y, seeds):
        def one(s):
            k_init, k_train = jax.random.split(jax.random.key(s))
            state = init_state(model, cfg, x, k_init, steps_per_epoch=spe)
            return train(model, state, (x, y), cfg, key=k_train, step=step)

        size = vmap or (1 if jax.default_backend() == "cpu" else seeds.shape[0])
        return jax.lax.map(one, seeds, batch_size=min(size, seeds.shape[0]))

    return model, fit


def _outcomes(model, states, x_target, adv, x_test, y_test, x_train, y_train):
    pt, acc, margin, prob, train_acc = _predict_victims(model, states, x_target, adv, x_test, y_test, x_train, y_train)
    return {"success": np.asarray(pt == adv), "prediction": np.asarray(pt), "accuracy": np.asarray(acc),
            "margin": np.asarray(margin), "adv_prob": np.asarray(prob), "train_accuracy": np.asarray(train_acc)}


def _target_margin(logits, adv):
    """The adversarial class's logit minus the largest other logit (> 0: the attack succeeds), and its
    softmax probability: continuous measures of how far a victim moved the target."""
    import jax.numpy as jnp

    others = jnp.where(jnp.arange(logits.shape[-1]) == adv, -jnp.inf, logits)
    return logits[adv] - jnp.max(others), jax.nn.softmax(logits)[adv]


@functools.partial(jax.jit, static_argnums=0)
def _predict_victims(model, states, x_target, adv, x_test, y_test, x_train, y_train):
    """Per victim (one at a time): the predicted class of the target, the test accuracy, the target's
    adversarial margin and probability (:func:`_target_margin`) and the accuracy on its (poisoned)
    training set."""
    import jax.numpy as jnp
    from poisoning.training import predict

    def one(st):
        logits = predict(model, st, x_target[None])[0]
        margin, prob = _target_margin(logits, adv)
        acc = jnp.mean(jnp.argmax(predict(model, st, x_test), -1) == y_test)
        train_acc = jnp.mean(jnp.argmax(predict(model, st, x_train), -1) == y_train)
        return jnp.argmax(logits), acc, margin, prob, train_acc

    return jax.lax.map(one, states)


# what each retrained victim records (checkpointed per victim)
_FIELDS = ("success", "prediction", "accuracy", "margin", "adv_prob", "train_accuracy")


def _rate(success) -> dict:
    s, t = int(np.sum(success)), int(np.size(success))
    lo, hi = _cli.binomial_ci(s, t)
    return {"successes": s, "trials": t, "success_rate": s / t, "ci95": [lo, hi]}


def build_parser(description=None, default_out="runs/geiping2021"):
    p = _cli.base_parser(description or __doc__.splitlines()[0], default_out=default_out)
    p.add_argument("--preset", default="cpu", choices=("cpu", "fashion", "paper"))
    p.add_argument("--dataset", default=None, choices=tuple(DATASETS),
                   help="the data set (default: the preset's; MNIST trains without flips)")
    p.add_argument("--targets", type=int, default=None, help="targets (default: the preset's)")
    p.add_argument("--seeds", type=int, default=None, help="victims retrained per target (vmapped)")
    p.add_argument("--eps", default=None, help="comma-separated l_inf radii in /255 (default: 16)")
    p.add_argument("--budgets", default=None, help="comma-separated fractions of the training set (default: 0.01)")
    p.add_argument("--steps", type=int, default=None, help="signed-Adam crafting steps")
    p.add_argument("--restarts", type=int, default=None, help="crafting restarts")
    p.add_argument("--epochs", type=int, default=None, help="training epochs of every model")
    p.add_argument("--ensemble", type=int, default=None, help="crafting models (other seeds; losses averaged)")
    p.add_argument("--model", default=None, help="the network (poisoning.models name; default: the preset's)")
    p.add_argument("--width", type=int, default=None, help="the network's width knob")
    p.add_argument("--per-class", type=int, default=None, help="training images per class")
    p.add_argument("--crop", type=int, default=None, help="random-crop padding of the training augmentation (0: flips only)")
    p.add_argument("--lr", type=float, default=None, help="SGD learning rate of every model")
    p.add_argument("--weight-decay", type=float, default=None, help="weight decay of every model")
    p.add_argument("--batch-size", type=int, default=None, help="training batch size of every model")
    p.add_argument("--no-flip", action="store_true", help="no random flips (in training and inside the objective)")
    p.add_argument("--same-init", action="store_true",
                   help="victims retrain from the crafting model's initialization and data order (the most "
                        "favourable case for the attacker: only the poisons differ)")
    p.add_argument("--vmap", type=int, default=None,
                   help="victims trained at once (vmapped); default: all on accelerators, 1 on CPU")
    p.add_argument("--cache-dir", default=None, help="decompressed-data cache (default $BILEVEL_CACHE_DIR)")
    return p


def _floats(value, flag, scale=1.0):
    try:
        vals = [float(v) * scale for v in value.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"{flag}: expected comma-separated numbers, got {value!r}") from None
    if not vals or any(not np.isfinite(v) or v <= 0 for v in vals):
        raise SystemExit(f"{flag}: expected positive numbers, got {value!r}")
    return vals


def protocol_from_args(args) -> Protocol:
    proto = PRESETS["quick" if args.quick else args.preset]
    changes = {k: v for k, v in (("targets", args.targets), ("seeds", args.seeds), ("steps", args.steps),
                                 ("restarts", args.restarts), ("epochs", args.epochs),
                                 ("ensemble", getattr(args, "ensemble", None)), ("width", getattr(args, "width", None)),
                                 ("per_class", getattr(args, "per_class", None))) if v is not None}
    for name in changes:
        if changes[name] < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {changes[name]}")
    if getattr(args, "dataset", None):
        changes["dataset"] = args.dataset
        changes["flip"] = args.dataset != "mnist"  # a mirrored digit is another digit
    if getattr(args, "no_flip", False):
        changes["flip"] = False
    for name in ("lr", "weight_decay", "batch_size"):
        v = getattr(args, name, None)
        if v is not None:
            if not (np.isfinite(v) and v >= 0) or (name != "weight_decay" and v <= 0):
                raise SystemExit(f"--{name.replace('_', '-')} must be a positive number, got {v}")
            changes[name] = v
    if getattr(args, "crop", None) is not None:
        if args.crop < 0:
            raise SystemExit(f"--crop must be >= 0, got {args.crop}")
        changes["crop"] = args.crop
    if getattr(args, "model", None):
        from poisoning.models import MODELS

        if args.model not in MODELS:
            raise SystemExit(f"--model must be one of {sorted(MODELS)}, got {args.model!r}")
        changes["model"] = args.model
    return dataclasses.replace(proto, **changes)


def _plot_poisons(x_ft, x_te, trial, poisons, path, k=5):
    return _cli.save_poisons_beside_bases(x_te[trial["target"]], x_ft[np.asarray(trial["poison_idx"])[:k]], poisons, path,
                                          target_title=f"target -> {trial['adv']}", k=k)


def _plot_success(rows, path):
    """Success (with 95 % intervals) per setting, one bar per (attack, defense); against eps and
    against the budget when several were run."""
    plt = _cli.pyplot()
    groups = list(dict.fromkeys((r["attack"], r["defense"]) for r in rows))
    eps_vals = sorted({r["eps_255"] for r in rows})
    bud_vals = sorted({r["budget"] for r in rows})
    panels = [("setting", None)] + [("eps", b) for b in bud_vals if len(eps_vals) > 1] + \
             [("budget", e) for e in eps_vals if len(bud_vals) > 1]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (kind, fixed) in zip(axes[0], panels):
        if kind == "setting":
            settings = list(dict.fromkeys(r["setting"] for r in rows))
            w = 0.8 / len(groups)
            for g, (a, d) in enumerate(groups):
                for s, setting in enumerate(settings):
                    r = next((r for r in rows if (r["attack"], r["defense"], r["setting"]) == (a, d, setting)), None)
                    if r is None:
                        continue
                    rate = 100 * r["success_rate"]
                    ax.bar(s + g * w, rate, w, yerr=[[rate - 100 * r["ci95"][0]], [100 * r["ci95"][1] - rate]],
                           capsize=2, color="0.6" if a == "noise" else f"C{g}",
                           label=f"{a} / {d}" if s == 0 else None)
                    if r["paper"] is not None and a == "brew" and d == "none":
                        ax.plot(s + g * w, r["paper"], "k*", markersize=9)
            ax.set_xticks(np.arange(len(settings)) + 0.4 - w / 2)
            ax.set_xticklabels(settings, fontsize=7)
            ax.legend(fontsize=7)
        else:
            for g, (a, d) in enumerate(groups):
                sel = [r for r in rows if (r["attack"], r["defense"]) == (a, d)
                       and r["budget" if kind == "eps" else "eps_255"] == fixed]
                sel.sort(key=lambda r: r["eps_255" if kind == "eps" else "budget"])
                xs = [r["eps_255" if kind == "eps" else "budget"] for r in sel]
                ax.errorbar(xs, [100 * r["success_rate"] for r in sel], marker="o", label=f"{a} / {d}",
                            color="0.6" if a == "noise" else f"C{g}")
            ax.set_xlabel("eps (/255)" if kind == "eps" else "budget (fraction of the training set)")
            ax.set_title(f"budget {fixed}" if kind == "eps" else f"eps {fixed:g}/255", fontsize=9)
            ax.legend(fontsize=7)
        ax.set_ylim(0, 100)
        ax.set_ylabel("success (%); * paper")
    fig.tight_layout()
    return _cli.save_figure(fig, path)


def run(args, victims: Sequence[Victim], *, experiment: str, controls: bool = True, reuse=None,
        attack: str = "brew", crafter: Callable | None = None, crafter_tag: tuple = (),
        paper: dict | None = None) -> dict[str, Any]:
    """Craft once per (eps, budget, target) and retrain every victim of ``victims`` on the poisoned set
    (and, with ``controls``, the undefended victim on noise of the same eps). Checkpointed per entry;
    ``reuse``: other runs' folders (comma-separated) whose entries (crafting model, poisons, victims) are
    taken where the protocol matches. ``crafter(ctx, eps) -> craft(idx, target, adv, key) -> (poisons,
    loss)`` replaces Witches' Brew by another attack named ``attack`` (``ctx``: the data, the model, the
    trainer, the protocol, the checkpoint cache); ``crafter_tag`` fingerprints its settings; ``paper``
    maps eps (in /255) to the attack's published success (default: Witches' Brew's)."""
    import jax
    import jax.numpy as jnp

    from poisoning.attacks import geiping2021 as wb
    from poisoning.training import Augment, predict
    from poisoning.training.state import variables

    proto0 = protocol_from_args(args)
    eps_list = _floats(args.eps, "--eps", 1 / 255) if args.eps else [proto0.eps]
    budgets = _floats(args.budgets, "--budgets") if args.budgets else [proto0.budget]
    out = _cli.ensure_dir(args.out)
    t_all = time.perf_counter()
    x_tr, y_tr, x_te, y_te, fallback = load_data(args.data_dir, args.cache_dir, proto0, args.seed)
    n = len(y_tr)
    X, Y, XT, YT = (jnp.asarray(a) for a in (x_tr, y_tr, x_te, y_te))

    ckpt = _cli.Checkpoint(out / "checkpoint.npz")
    done = ckpt.load() or {}
    for folder in [f for f in (reuse or "").split(",") if f.strip()]:
        other = _cli.Checkpoint(Path(folder.strip()) / "checkpoint.npz").load()
        if other is None:
            raise SystemExit(f"--poisons-from {folder}: no checkpoint.npz there")
        done.update({k: v for k, v in other.items() if k not in done})  # every entry is fingerprinted

    def cached(key, compute):
        prefix = key + ":"
        if not any(k.startswith(prefix) for k in done):
            t = time.perf_counter()
            result = compute()
            done[prefix + "seconds"] = np.asarray(time.perf_counter() - t)
            for field, value in result.items():
                done[prefix + field] = np.asarray(value)
            ckpt.save(done)
        return {k[len(prefix):]: v for k, v in done.items() if k.startswith(prefix)}

    train_fields = ("per_class", "n_test", "model", "width", "epochs", "batch_size", "lr", "weight_decay", "crop")
    base = (args.seed, bool(args.quick), fallback) + tuple(getattr(proto0, f) for f in train_fields)
    if proto0.dataset != "cifar10" or not proto0.flip:  # (cifar10 with flips keeps the fingerprints of earlier runs)
        base += (proto0.dataset, proto0.flip)

    def fp(*parts):
        return hashlib.sha1(repr(base + parts).encode()).hexdigest()[:12]

    # the crafting model: trained once on the clean set (seed = --seed), its leaves checkpointed
    model, fit = trainer(proto0, n, fallback=fallback, vmap=args.vmap)
    template = jax.eval_shape(lambda: fit(X, Y, jnp.asarray([args.seed])))
    clean = cached(f"craft_model/{fp()}", lambda: {
        f"leaf{i}": a for i, a in enumerate(jax.tree_util.tree_leaves(fit(X, Y, jnp.asarray([args.seed]))))})
    leaves = [jnp.asarray(clean[f"leaf{i}"]) for i in range(len(jax.tree_util.tree_leaves(template)))]
    craft_state = jax.tree_util.tree_map(lambda a: a[0], jax.tree_util.tree_unflatten(
        jax.tree_util.tree_structure(template), leaves))
    V = variables(craft_state)
    for m in range(1, proto0.ensemble):  # more crafting models, other seeds (an ensemble: losses averaged)
        extra = cached(f"craft_model/{fp(m)}", lambda: {
            f"leaf{i}": a for i, a in enumerate(jax.tree_util.tree_leaves(fit(X, Y, jnp.asarray([args.seed + 5000 * m]))))})
        member = jax.tree_util.tree_map(lambda a: a[0], jax.tree_util.tree_unflatten(
            jax.tree_util.tree_structure(template), [jnp.asarray(extra[f"leaf{i}"]) for i in range(len(leaves))]))
        V = (V if isinstance(V, tuple) else (V,)) + (variables(member),)
    test_logits = predict(model, craft_state, XT)
    test_pred = np.asarray(jnp.argmax(test_logits, -1))
    craft_acc = float(np.mean(test_pred == y_te))
    craft_train_acc = float(np.mean(np.asarray(jnp.argmax(predict(model, craft_state, X), -1)) == y_tr))
    print(f"[{experiment}] crafting model: test accuracy {100 * craft_acc:.1f} %, training accuracy "
          f"{100 * craft_train_acc:.1f} % ({n} training images)", flush=True)

    def apply_fn(v, x):
        return model.apply(v, x, train=False)

    fits = {v.name: fit if v == Victim("none") else trainer(proto0, n, v, fallback, args.vmap)[1] for v in victims}
    fits.setdefault("none", fit)
    rows, examples = [], {}
    settings = [(e, b) for b in budgets for e in eps_list]
    bar = _cli.progress(total=len(settings) * proto0.targets, desc=experiment)
    for eps, budget in settings:
        proto = dataclasses.replace(proto0, eps=eps, budget=budget)
        trials = make_trials(y_tr, y_te, test_pred == y_te, proto, args.seed)
        setting = f"eps={eps * 255:g}/255, budget={100 * budget:g}%"
        bcfg = wb.BrewConfig(eps=eps, steps=proto.steps, restarts=proto.restarts, lr=proto.brew_lr,
                             augment=Augment(crop_padding=proto.crop, flip=proto.flip))
        ens = (proto.ensemble,) if proto.ensemble > 1 else ()
        if crafter is None:
            tag = (proto.steps, proto.restarts, proto.brew_lr, *ens)
            craft = jax.jit(lambda idx, t, a, k: (lambda r: (r.poisons, r.loss))(
                wb.craft(apply_fn, V, X[idx], Y[idx], XT[t][None], a[None], k, bcfg)))
        else:
            tag = tuple(crafter_tag)
            ctx = dict(model=model, fit=fit, X=X, Y=Y, XT=XT, proto=proto, seed=args.seed, n=n, cached=cached, fp=fp)
            craft = crafter(ctx, eps)
        outcome = {}
        clean_margin = [float(_target_margin(test_logits[int(t)], int(a))[0])
                        for t, a in zip(trials["target"], trials["adv"])]
        craft_loss = []
        for i in range(proto.targets):
            t, a, idx = int(trials["target"][i]), int(trials["adv"][i]), trials["poison_idx"][i]
            crafted = cached(f"{attack}/{i}/{fp(eps, budget, *tag)}",
                             lambda: dict(zip(("poisons", "loss"), jax.block_until_ready(
                                 craft(jnp.asarray(idx), t, jnp.asarray(a), jax.random.key(10_000 + i))))))
            craft_loss.append(float(np.mean(crafted["loss"])))
            noise = jnp.clip(X[idx] + jax.random.uniform(jax.random.key(20_000 + i), X[idx].shape, X.dtype, -eps, eps), 0, 1)
            seeds = np.asarray([1 + args.seed + 100 * (i + 1) + j for j in range(proto.seeds)])
            if getattr(args, "same_init", False):  # the crafting model's own initialization and data order
                seeds = np.full(proto.seeds, args.seed)
            jobs = [(attack, v) for v in victims] + ([("noise", Victim("none"))] if controls else [])
            for kind, v in jobs:
                poisons = jnp.asarray(crafted["poisons"]) if kind == attack else noise
                fpv = fp(eps, budget, *tag, v, *(("same_init",) if getattr(args, "same_init", False) else ()))
                keys = [f"{kind}/{v.name}/{i}/{j}/{fpv}:" for j in range(proto.seeds)]  # one entry per victim
                missing = [j for j, k in enumerate(keys) if any(k + f not in done for f in _FIELDS)]
                if missing:
                    t0 = time.perf_counter()
                    o = _outcomes(model if not v.model else _model(proto, v, fallback),
                                  fits[v.name](X.at[jnp.asarray(idx)].set(poisons), Y, jnp.asarray(seeds[missing])),
                                  XT[t], a, XT, YT, X.at[jnp.asarray(idx)].set(poisons), Y)
                    for m, j in enumerate(missing):
                        for field in _FIELDS:
                            done[keys[j] + field] = np.asarray(o[field][m])
                        done[keys[j] + "seconds"] = np.asarray((time.perf_counter() - t0) / len(missing))
                    ckpt.save(done)
                outcome.setdefault((kind, v.name), []).append(
                    {f: np.stack([done[k + f] for k in keys]) for f in _FIELDS + ("seconds",)})
            if i == 0:
                examples[setting] = (dict(target=t, adv=a, poison_idx=idx), np.asarray(crafted["poisons"]))
            bar.update(1)
        for (kind, vname), outs in outcome.items():
            succ = np.stack([np.asarray(o["success"]) for o in outs])
            vic = {v.name: v for v in victims}.get(vname, Victim("none"))
            rows.append({
                "attack": kind, "defense": vname, "setting": setting, "eps": eps, "eps_255": round(eps * 255, 3),
                "budget": budget, "poisons": int(len(trials["poison_idx"][0])), **_rate(succ),
                "targets_hit": int(np.sum(succ.any(axis=1))), "per_target": succ.astype(int).tolist(),
                "clean_accuracy": float(np.mean([np.mean(o["accuracy"]) for o in outs])),
                "train_accuracy": float(np.mean([np.mean(o["train_accuracy"]) for o in outs])),
                "margin": np.round(np.stack([o["margin"] for o in outs]).astype(float), 3).tolist(),
                "adv_prob": np.round(np.stack([o["adv_prob"] for o in outs]).astype(float), 4).tolist(),
                "median_margin": float(np.median(np.stack([o["margin"] for o in outs]))),
                "mean_adv_prob": float(np.mean(np.stack([o["adv_prob"] for o in outs]))),
                "crafting_model_margin": np.round(np.asarray(clean_margin, float), 3).tolist(),
                "crafting_loss": np.round(np.asarray(craft_loss, float), 4).tolist() if kind == attack else None,
                "seconds": float(sum(float(np.sum(o["seconds"])) for o in outs)),
                "paper": (PAPER if paper is None else paper).get(int(round(eps * 255)))
                if kind == attack and vname == "none" and budget == 0.01 else None,
                "defense_info": dict(vic.info),
            })
    bar.close()

    table = [[r["attack"], r["defense"], r["setting"], r["trials"], f"{100 * r['success_rate']:.1f}",
              f"[{100 * r['ci95'][0]:.0f}, {100 * r['ci95'][1]:.0f}]", "-" if r["paper"] is None else f"{r['paper']:.0f}",
              f"{100 * r['clean_accuracy']:.1f}", f"{100 * r['train_accuracy']:.1f}", f"{r['median_margin']:.2f}",
              f"{100 * r['mean_adv_prob']:.1f}", f"{r['seconds']:.0f}"] for r in rows]
    print(_cli.format_table(table, ["attack", "defense", "setting", "trials", "success %", "95 % CI", "paper %",
                                    "clean acc %", "train acc %", "median margin", "adv prob %", "s"]))
    if fallback:
        print("NOTE: digits fallback (no CIFAR-10 files): these numbers are not the protocol's")
    results = {
        "experiment": experiment, "out": str(out), "preset": "quick" if args.quick else args.preset,
        "protocol": dataclasses.asdict(proto0), "eps": eps_list, "budgets": budgets, "fallback": fallback,
        "dataset": "digits (fallback)" if fallback else DATASETS[proto0.dataset], "n_train": n, "n_test": int(len(y_te)),
        "crafting_model_accuracy": craft_acc, "crafting_model_train_accuracy": craft_train_acc, "devices": [str(d) for d in jax.devices()], "rows": rows,
        "seconds": time.perf_counter() - t_all,
        "notes": ("trials = targets x victims retrained from scratch (other seeds than the crafting model); "
                  "targets are test images the crafting model classifies correctly; margin: the victim's adversarial "
                  "logit minus its largest other logit on the target (> 0: success), per target x victim; "
                  "crafting_model_margin: the same on the clean crafting model; the 95 % interval is "
                  "Clopper-Pearson over all trials (victims of one target are not independent: see "
                  "targets_hit and per_target)."),
    }
    _cli.write_json_atomic(out / "results.json", results)
    _plot_success(rows, out / "success.png")
    for j, (setting, (trial, poisons)) in enumerate(examples.items()):
        _plot_poisons(x_tr, x_te, trial, poisons, out / f"poisons_{j}.png")
    print(f"wrote {out / 'results.json'}, success.png and poisons_*.png")
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    return run(args, [Victim("none")], experiment="geiping2021")


if __name__ == "__main__":
    main()
