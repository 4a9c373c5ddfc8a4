r"""Every backdoor against every defense: clean accuracy and attack success after the defense (the form of
BackdoorBench's leaderboard), with the detection rates of the defenses that remove training samples.

Attacks (``--attacks``, each poisoning ``--poison-rate`` of the training set toward ``--target``):

- ``badnets`` (Gu et al. 2017, :mod:`poisoning.attacks.gu2017`): the 3x3 checkerboard one pixel from the
  bottom-right corner on images of the other classes, relabelled to the target;
- ``blended`` (Chen et al. 2017, :mod:`poisoning.attacks.chen2017`): a uniform-noise pattern blended at
  ``--blend-alpha`` (0.2), relabelled; tested at ``--blend-test-alpha`` (default the same);
- ``clean_label`` (Turner et al. 2019, :mod:`poisoning.attacks.turner2019`): target-class images
  perturbed by PGD (``--cl-eps``, on the clean model as the surrogate), then the four-corner trigger at
  amplitude ``--cl-amplitude``; labels unchanged; tested with the full-amplitude trigger;
- ``hidden_trigger`` (Saha et al. 2020, :mod:`poisoning.attacks.saha2020`): target-class images within
  ``--ht-eps`` whose penultimate features collide with source images carrying a random 4x4 patch at a
  random location (the clean model's features); labels unchanged, the trigger never in the training
  set; success measured on patched (random location) test images of the source class ``--ht-source``
  (default ``target + 1 mod K``).

Clean-label attacks draw all their poisons from the target class: at most the whole class (the count
is capped there and recorded as ``n_poison``).

Victims. ``badnets``, ``blended`` and ``clean_label``: the network trained from scratch on the poisoned
set from one fixed initialization (the clean model's). ``hidden_trigger``: the paper's transfer
setting, the clean model's feature extractor frozen and its last layer retrained on the poisoned set
(``--ht-victim scratch`` retrains the whole network instead).

Defenses (``--defenses``; :data:`DEFENSES`, one entry each): ``none``; the detection defenses
``ss`` (spectral signatures), ``ac`` (activation clustering), ``ci`` (cluster impurity) run on the
poisoned model's penultimate features of the poisoned training set, the flagged samples are removed
and the victim is retrained (TPR / FPR against the true poison mask); ``strip``, ``nc`` (Neural
Cleanse) and ``fp`` (fine-pruning) when :mod:`poisoning.defenses` provides them (see
:func:`available_defenses`). The detection defenses also run on the clean model and clean training
set (rows with ``attack = "none"``: their false-positive rate there).

Outputs (``--out``): ``results.json`` (``rows`` with ``attack``, ``defense``, ``clean_accuracy``,
``attack_success``, ``tpr``, ``fpr`` (``null`` where a defense removes no samples), ``n_poison`` and
more; ``paper``: BackdoorBench's numbers; the configuration), ``heatmap.png`` (attack x defense: attack
success and clean accuracy), ``triggered_examples.png``. Every finished cell is checkpointed
(``progress.npz``): a rerun with the same flags resumes; ``--fresh`` starts over.

Presets: ``quick`` (scikit-learn's digits upsampled to 28x28, a tiny network, a few steps: the test),
``cpu`` (10,000 training images, the BadNets CNN, 4 epochs), ``paper`` (the whole training set;
CIFAR-10 with PreAct-ResNet-18 as in BackdoorBench, 100 epochs, for accelerators).

Usage::

    python -m experiments.backdoor_matrix --dataset mnist --data-dir DIR --preset cpu
    python -m experiments.backdoor_matrix --dataset cifar10 --data-dir DIR --preset paper
    python -m experiments.backdoor_matrix --preset quick
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from experiments import _cli, gu2017

__all__ = ["PAPER", "ATTACKS", "DEFENSES", "Defense", "DefenseOutcome", "available_defenses", "Preset",
           "PRESETS", "train_config", "build_backdoor", "Victim", "build_parser", "main"]

PAPER = {
    "source": "BackdoorBench (Wu et al., NeurIPS 2022 Datasets & Benchmarks), CIFAR-10, PreAct-ResNet-18, "
              "10 % poison; clean accuracy / attack success",
    "rows": [
        {"attack": "badnets", "defense": "none", "clean_accuracy": 0.913, "attack_success": 0.950},
        {"attack": "badnets", "defense": "nc", "clean_accuracy": 0.891, "attack_success": 0.013},
        {"attack": "badnets", "defense": "fp", "clean_accuracy": 0.913, "attack_success": 0.571},
        {"attack": "badnets", "defense": "ac", "clean_accuracy": 0.888, "attack_success": 0.862},
        {"attack": "blended", "defense": "none", "clean_accuracy": 0.935, "attack_success": 0.999},
    ],
}
ATTACKS = ("badnets", "blended", "clean_label", "hidden_trigger")
DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10")


# ----------------------------------------------------------------------------------------------------
# presets
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Preset:
    """Sizes of a run: training images (``None``: all), test images, the network's knobs, training,
    crafting steps."""

    n_train: int | None
    n_test: int | None
    epochs: int
    batch_size: int
    learning_rate: float
    knobs: tuple = ()
    cl_steps: int = 10
    ht_steps: int = 300
    head_epochs: int = 4
    ci_max_components: int = 10
    n_defender: int = 1000
    strip_overlays: int = 100
    nc_rounds: int = 30


PRESETS = {
    "quick": Preset(n_train=300, n_test=150, epochs=4, batch_size=32, learning_rate=0.05,
                    knobs=(("width", 4), ("hidden", 32)), cl_steps=3, ht_steps=10, head_epochs=2,
                    ci_max_components=3, n_defender=50, strip_overlays=5, nc_rounds=2),
    "cpu": Preset(n_train=10_000, n_test=None, epochs=4, batch_size=128, learning_rate=0.05, cl_steps=10,
                  ht_steps=300, head_epochs=4, strip_overlays=10, nc_rounds=10),
    "paper": Preset(n_train=None, n_test=None, epochs=100, batch_size=128, learning_rate=0.01, cl_steps=100,
                    ht_steps=5000, head_epochs=20),
}


# ----------------------------------------------------------------------------------------------------
# data and the victim network
# ----------------------------------------------------------------------------------------------------
def load_data(dataset: str, data_dir, seed: int):
    """``(x, y, x_test, y_test, name, fallback)`` as NHWC float32 in [0, 1]; MNIST-family data sets fall
    back to scikit-learn's digits upsampled to 28x28 when the files are absent (``fallback = True``)."""
    from poisoning import datasets

    if dataset == "cifar10":
        ds = datasets.load_cifar10(_cli.resolve_data_dir(data_dir))
        return (np.asarray(ds.X_train, np.float32), np.asarray(ds.y_train, np.int32),
                np.asarray(ds.X_test, np.float32), np.asarray(ds.y_test, np.int32), "cifar10", False)
    if dataset != "digits":
        return gu2017.load_data(data_dir, seed, None, dataset)
    return (*gu2017.digits_28x28(seed), "digits", True)


def train_config(preset: Preset, preset_name: str, dataset: str = "mnist"):
    """The victim's training recipe: SGD with momentum 0.9, a cosine schedule, weight decay 5e-4 (none in
    the quick preset); CIFAR-10 with random crops and flips (BackdoorBench's augmentation)."""
    from poisoning.training import Augment, TrainConfig

    return TrainConfig(epochs=preset.epochs, batch_size=preset.batch_size, optimizer="sgd",
                       learning_rate=preset.learning_rate, momentum=0.9,
                       weight_decay=0.0 if preset_name == "quick" else 5e-4, schedule="cosine",
                       augment=Augment.cifar() if dataset == "cifar10" else None)


def make_model(dataset: str, preset_name: str, knobs: dict):
    from poisoning.models import CIFAR10_MEAN, CIFAR10_STD, MNIST_MEAN, MNIST_STD, get_model

    if dataset == "cifar10":
        if preset_name == "paper":
            return get_model("preact_resnet18", 10, mean=CIFAR10_MEAN, std=CIFAR10_STD, **knobs), "preact_resnet18"
        return get_model("resnet18", 10, mean=CIFAR10_MEAN, std=CIFAR10_STD, width=16, **knobs), "resnet18(w16)"
    return get_model("badnets", 10, mean=MNIST_MEAN, std=MNIST_STD, **knobs), "badnets"


class Victim(gu2017.Trainer):
    """Trains one network from one fixed initialization (``seed``) on any training set, from scratch
    (:meth:`fit`, gu2017's trainer) or by retraining the last layer of a pretrained state
    (:meth:`fit_head`). Removal of samples is a loss weight of 0 with the kept samples weighted
    ``n / n_kept`` (one compilation)."""

    def __init__(self, model, cfg, sample, seed: int, head_epochs: int):
        super().__init__(cfg, {}, sample, seed, model=model)
        self.head_cfg = cfg.replace(trainable="head", epochs=head_epochs, weight_decay=0.0)
        self.apply_fn = lambda v, x: model.apply(v, x, train=False)      # (variables, x) -> logits
        self.feature_fn = lambda v, x: model.apply(v, x, train=False, features=True)

    def fit_head(self, pretrained, x, y, keep=None):
        import jax

        from poisoning.training import reset_optimizer, train

        start = reset_optimizer(pretrained, self.head_cfg, steps_per_epoch=len(x) // self.head_cfg.batch_size)
        return train(self.model, start, self.weighted(x, y, keep), self.head_cfg, key=jax.random.key(self.seed + 2))

    def logits(self, state, x, model=None):
        from poisoning.training import predict

        return np.asarray(predict(self.model if model is None else model, state, x))

    def accuracy(self, state, x, y, model=None):
        return float(np.mean(self.logits(state, x, model).argmax(-1) == y))

    def variables(self, state):
        from poisoning.training import variables

        return variables(state)


# ----------------------------------------------------------------------------------------------------
# attacks: each builds a poisoned set, a victim rule and a triggered test set
# ----------------------------------------------------------------------------------------------------
class Backdoor(NamedTuple):
    """A poisoned training set and how to test it: ``test_images`` (triggered) whose prediction as
    ``target`` counts as success; ``victim``: ``"scratch"`` or ``"head"``; ``examples``: images to plot."""

    poisoned: Any  # poisoning.attacks.gu2017.PoisonedSet
    test_images: np.ndarray
    target: int
    victim: str
    examples: dict
    info: dict


def _n_clean_label(rate: float, n: int, y, target: int) -> int:
    m = int(round(rate * n))
    return max(1, min(m, int(np.sum(y == target))))


def build_backdoor(name: str, args, victim: Victim, clean_state, x, y, xt, yt, preset: Preset) -> Backdoor:
    import jax

    from poisoning import triggers

    key = jax.random.key(args.seed + 17)
    t = args.target
    C = x.shape[-1]
    others = yt != t
    if name == "badnets":
        from poisoning.attacks import gu2017 as badnets

        trig = triggers.badnets_pattern(C)
        ps = badnets.poison_dataset(key, x, y, trig, args.poison_rate, target=t)
        test = np.asarray(triggers.apply(trig, xt[others]))
        return Backdoor(ps, test, t, "scratch", {"poison": ps.images[ps.is_poison][:4], "test": test[:4]},
                        {"trigger": "3x3 checkerboard, bottom-right"})
    if name == "blended":
        from poisoning.attacks import chen2017

        cfg = chen2017.BlendedConfig(alpha=args.blend_alpha, test_alpha=args.blend_test_alpha, rate=args.poison_rate)
        trig = chen2017.make_trigger(jax.random.fold_in(key, 1), x.shape[1:], cfg)
        ps = chen2017.poison_dataset(key, x, y, trig, cfg, target=t)
        test = np.asarray(triggers.apply(chen2017.eval_trigger(trig, cfg.test_alpha), xt[others]))
        return Backdoor(ps, test, t, "scratch", {"poison": ps.images[ps.is_poison][:4], "test": test[:4]},
                        {"alpha": cfg.alpha, "test_alpha": cfg.test_alpha or cfg.alpha})
    if name == "clean_label":
        from poisoning.attacks import turner2019

        cfg = turner2019.CleanLabelConfig(eps=args.cl_eps, steps=preset.cl_steps, amplitude=args.cl_amplitude,
                                          rate=args.poison_rate)
        m = _n_clean_label(args.poison_rate, len(x), y, t)
        ps = turner2019.poison_dataset(key, victim.apply_fn, victim.variables(clean_state), x, y, cfg, target=t,
                                       n_poison=m)
        # how hard the perturbation made the poisons: the surrogate's accuracy on them (before the trigger)
        test = np.asarray(turner2019.apply_trigger(turner2019.eval_trigger(C, cfg), xt[others]))
        sur_acc = victim.accuracy(clean_state, ps.images[ps.is_poison], y[ps.is_poison])
        return Backdoor(ps, test, t, "scratch", {"poison": ps.images[ps.is_poison][:4], "test": test[:4]},
                        {"eps": cfg.eps, "pgd_steps": cfg.steps, "amplitude": cfg.amplitude,
                         "surrogate_accuracy_on_poisons": sur_acc})
    if name == "hidden_trigger":
        from poisoning.attacks import saha2020

        src = (t + 1) % 10 if args.ht_source is None else args.ht_source
        cfg = saha2020.HiddenTriggerConfig(eps=args.ht_eps, steps=preset.ht_steps, lr=args.ht_lr,
                                           rate=args.poison_rate)
        board = (np.asarray(jax.random.uniform(jax.random.fold_in(key, 2), (4, 4))) > 0.5).astype(np.float32)
        patch = triggers.Patch(np.repeat(board[..., None], C, -1), np.ones((4, 4), np.float32), row=-5, col=-5)
        m = _n_clean_label(args.poison_rate, len(x), y, t)
        t0 = time.perf_counter()
        ps, rec = saha2020.poison_dataset(key, victim.feature_fn, victim.variables(clean_state), x, y, patch, cfg,
                                          target=t, source=src, n_poison=m)
        secs = time.perf_counter() - t0
        test = np.asarray(saha2020.patch_at_random(jax.random.fold_in(key, 3), patch, xt[yt == src]))
        return Backdoor(ps, test, t, args.ht_victim, {"poison": ps.images[ps.is_poison][:4], "test": test[:4]},
                        {"source": src, "eps": cfg.eps, "steps": cfg.steps, "collision_loss_start":
                         float(rec.loss_start), "collision_loss": float(rec.loss), "craft_seconds": secs})
    raise ValueError(f"unknown attack {name!r}")


# ----------------------------------------------------------------------------------------------------
# defenses: one table entry each
# ----------------------------------------------------------------------------------------------------
class DefenseContext(NamedTuple):
    """What a defense may use: the victim, the model trained on the training set ``(x, y)`` and how it
    was trained (``retrain(keep) -> state``), the defender's clean data ``(x_clean, y_clean)``,
    the run's arguments and seed."""

    victim: Victim
    state: Any
    x: np.ndarray
    y: np.ndarray
    retrain: Callable
    x_clean: np.ndarray
    y_clean: np.ndarray
    args: Any
    preset: Preset
    seed: int
    x_test_clean: np.ndarray | None = None
    x_triggered: np.ndarray | None = None


class DefenseOutcome(NamedTuple):
    """``flagged``: training samples the defense removes (``None``: it removes none, e.g. a model repair);
    ``state``: the model after the defense (``None``: retrain without ``flagged``); ``info``: extras;
    ``model``: the flax module to run ``state`` with when the defense changed it (pruning)."""

    flagged: np.ndarray | None
    state: Any
    info: dict
    model: Any = None


@dataclasses.dataclass(frozen=True)
class Defense:
    """One entry of the defense table: ``run(ctx) -> DefenseOutcome``; ``on_clean``: also run it on the
    clean model and clean set (its false-positive rate there)."""

    name: str
    run: Callable
    description: str
    on_clean: bool = False


def _none(ctx: DefenseContext) -> DefenseOutcome:
    return DefenseOutcome(None, ctx.state, {})


def _ss(ctx):
    from poisoning.defenses.spectral_signatures import spectral_signatures

    det = spectral_signatures(ctx.victim.features(ctx.state, ctx.x), ctx.y, eps=ctx.args.ss_eps)
    return DefenseOutcome(det.flagged, None, {})


def _ac(ctx):
    from poisoning.defenses.activation_clustering import activation_clustering

    det = activation_clustering(ctx.victim.features(ctx.state, ctx.x), ctx.y, seed=ctx.seed)
    return DefenseOutcome(det.flagged, None, {})


def _ci(ctx):
    from poisoning.defenses.cluster_impurity import cluster_impurity

    v, s = ctx.victim, ctx.state
    det = cluster_impurity(v.features(s, ctx.x), ctx.y, ctx.x, lambda im: v.logits(s, im).argmax(-1),
                           max_components=ctx.preset.ci_max_components, seed=ctx.seed)
    return DefenseOutcome(det.flagged, None, {})


DEFENSES: dict[str, Defense] = {
    "none": Defense("none", _none, "no defense: the poisoned model"),
    "ss": Defense("ss", _ss, "spectral signatures (Tran et al. 2018): remove 1.5 eps n_c per class, retrain",
                  on_clean=True),
    "ac": Defense("ac", _ac, "activation clustering (Chen et al. 2018): ICA + 2-means per class, retrain",
                  on_clean=True),
    "ci": Defense("ci", _ci, "cluster impurity (Xiang et al. 2019): GMM/BIC clusters, blur test, retrain",
                  on_clean=True),
}


def available_defenses() -> dict[str, Defense]:
    """:data:`DEFENSES` plus the entries of the optional defenses whose modules import cleanly."""
    table = dict(DEFENSES)
    table.update(_optional_defenses())
    return table


def _strip(ctx):
    """STRIP (Gao et al. 2019) as a training-set filter: the poisoned model's STRIP entropy of every
    training image, thresholded at FRR 1 % on the defender's clean images; low-entropy images are
    removed and the victim retrained. The run-time numbers of the paper (FAR of triggered test inputs,
    FPR of clean ones, same threshold) go to ``defense_info``."""
    import jax

    from poisoning.defenses import strip as S

    n_over = ctx.preset.strip_overlays
    half = len(ctx.x_clean) // 2
    overlays, calib = ctx.x_clean[:half], ctx.x_clean[half:]
    key = jax.random.key(ctx.seed + 31)
    kw = dict(n_overlays=n_over, batch_size=20)
    h_cal = np.asarray(S.strip_entropy(ctx.victim.model, ctx.state, calib, overlays, jax.random.fold_in(key, 0), **kw))
    thr = S.strip_threshold(h_cal, 0.01)
    h_train = np.asarray(S.strip_entropy(ctx.victim.model, ctx.state, ctx.x, overlays, jax.random.fold_in(key, 1),
                                         **kw))
    info = {"threshold": thr, "n_overlays": n_over}
    if ctx.x_triggered is not None:
        res = S.strip(ctx.victim.model, ctx.state, overlays, calib, ctx.x_test_clean, ctx.x_triggered,
                      jax.random.fold_in(key, 2), S.StripConfig(n_overlays=n_over, frr=0.01))
        info.update(runtime_far=res.far, runtime_fpr=res.fpr)
    return DefenseOutcome(h_train < thr, None, info)


def _nc(ctx):
    """Neural Cleanse (Wang et al. 2019): reverse-engineer a trigger per label on the defender's clean
    images, flag anomalous labels, repair by unlearning (no training sample is removed)."""
    import jax

    from poisoning.defenses import neural_cleanse as N

    cfg = N.NeuralCleanseConfig(rounds=ctx.preset.nc_rounds,
                                unlearn=N.NeuralCleanseConfig().unlearn.replace(batch_size=min(32, len(ctx.x_clean))))
    key = jax.random.key(ctx.seed + 41)
    res = N.neural_cleanse(ctx.victim.model, ctx.state, ctx.x_clean, key, cfg)
    state = N.unlearn(ctx.victim.model, ctx.state, ctx.x_clean, ctx.y_clean, res, jax.random.fold_in(key, 1), cfg)
    info = {"flagged_labels": res.flagged_labels, "anomaly_index": np.asarray(res.anomaly_index).tolist(),
            "l1_norms": np.asarray(res.l1_norms).tolist()}
    return DefenseOutcome(None, state, info)


def _fp(ctx):
    """Fine-pruning (Liu et al. 2018): prune the last convolution's channels by increasing mean clean
    activation until clean accuracy drops by 4 points, then fine-tune on the defender's clean images."""
    import jax

    from poisoning.defenses import fine_pruning as F

    ft = F.FinePruningConfig().finetune.replace(batch_size=min(64, len(ctx.x_clean)))
    res = F.fine_pruning(ctx.victim.model, ctx.state, ctx.x_clean, ctx.y_clean, jax.random.key(ctx.seed + 51),
                         F.FinePruningConfig(finetune=ft))
    info = {"layer": res.pruning.layer, "n_pruned": int(res.pruning.n_pruned)}
    return DefenseOutcome(None, res.state, info, model=res.model)


_OPTIONAL = {
    "strip": ("poisoning.defenses.strip", ("strip", "strip_entropy", "strip_threshold", "StripConfig"),
              Defense("strip", _strip, "STRIP (Gao et al. 2019): low superimposition entropy flagged at FRR 1 %, "
                      "removed, retrain", on_clean=True)),
    "nc": ("poisoning.defenses.neural_cleanse", ("neural_cleanse", "unlearn", "NeuralCleanseConfig"),
           Defense("nc", _nc, "Neural Cleanse (Wang et al. 2019): reversed triggers, anomaly index > 2, unlearning")),
    "fp": ("poisoning.defenses.fine_pruning", ("fine_pruning", "FinePruningConfig"),
           Defense("fp", _fp, "fine-pruning (Liu et al. 2018): prune dormant last-conv channels, fine-tune")),
}


def _optional_defenses() -> dict[str, Defense]:
    """The entries of :data:`_OPTIONAL` whose module imports and provides the functions used."""
    import importlib

    out = {}
    for name, (module, needed, entry) in _OPTIONAL.items():
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        if all(hasattr(mod, attr) for attr in needed):
            out[name] = entry
    return out


# ----------------------------------------------------------------------------------------------------
# plots
# ----------------------------------------------------------------------------------------------------
def plot_heatmap(rows, attacks, defenses, path):
    plt = _cli.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(2.2 + 1.1 * len(defenses) * 2, 1.2 + 0.6 * len(attacks)))
    for ax, key, title in ((axes[0], "attack_success", "attack success (%)"),
                           (axes[1], "clean_accuracy", "clean accuracy (%)")):
        grid = np.full((len(attacks), len(defenses)), np.nan)
        for r in rows:
            if r["attack"] in attacks and r["defense"] in defenses and r[key] is not None:
                grid[attacks.index(r["attack"]), defenses.index(r["defense"])] = r[key]
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for i in range(len(attacks)):
            for j in range(len(defenses)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{100 * grid[i, j]:.0f}", ha="center", va="center", fontsize=8,
                            color="black" if grid[i, j] > 0.5 else "white")
        ax.set_xticks(range(len(defenses)), defenses)
        ax.set_yticks(range(len(attacks)), attacks)
        ax.set_title(title)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return _cli.save_figure(fig, path)


def plot_examples(clean, examples, path):
    plt = _cli.pyplot()
    names = [a for a in ATTACKS if a in examples]
    cols = 4
    fig, axes = plt.subplots(1 + 2 * len(names), cols, figsize=(1.4 * cols, 1.4 * (1 + 2 * len(names))),
                             squeeze=False)
    panels = [("clean", clean)] + [(f"{a}\n{kind}", examples[a][kind]) for a in names for kind in ("poison", "test")]
    for r, (title, ims) in enumerate(panels):
        for j in range(cols):
            ax = axes[r, j]
            ax.set_xticks([]), ax.set_yticks([])
            if j < len(ims):
                im = np.clip(np.asarray(ims[j]), 0, 1)
                ax.imshow(im[..., 0] if im.shape[-1] == 1 else im, cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_ylabel(title, fontsize=7)
    fig.tight_layout()
    return _cli.save_figure(fig, path)


# ----------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------
def build_parser():
    p = _cli.base_parser(__doc__.splitlines()[0], default_out="runs/backdoor_matrix")
    p.add_argument("--dataset", choices=DATASETS, default="mnist")
    p.add_argument("--preset", choices=tuple(PRESETS), default="cpu")
    p.add_argument("--attacks", default=",".join(ATTACKS), help=f"comma list of {ATTACKS}")
    p.add_argument("--defenses", default="none,ss,ac,ci,strip,nc,fp",
                   help="comma list of defenses (those not available are skipped with a note)")
    p.add_argument("--poison-rate", type=float, default=0.1, help="poisoned fraction of the training set")
    p.add_argument("--target", type=int, default=0, help="the backdoor's target class")
    p.add_argument("--n-train", type=int, default=None, help="override the preset's number of training images")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    p.add_argument("--blend-alpha", type=float, default=0.2)
    p.add_argument("--blend-test-alpha", type=float, default=None)
    p.add_argument("--cl-eps", type=float, default=None, help="clean-label PGD radius (default 0.3 on MNIST-like "
                   "data, 8/255 on CIFAR-10)")
    p.add_argument("--cl-amplitude", type=float, default=1.0, help="clean-label trigger amplitude in the poisons")
    p.add_argument("--ht-eps", type=float, default=None, help="hidden-trigger radius (default as --cl-eps, "
                   "16/255 on CIFAR-10)")
    p.add_argument("--ht-lr", type=float, default=0.01)
    p.add_argument("--ht-source", type=int, default=None, help="hidden-trigger source class (default target+1)")
    p.add_argument("--ht-victim", choices=("head", "scratch"), default="head")
    p.add_argument("--ss-eps", type=float, default=None, help="SS's bound on a class's poison fraction "
                   "(default --poison-rate)")
    p.add_argument("--fresh", action="store_true", help="ignore a saved checkpoint")
    p.add_argument("--report-only", action="store_true",
                   help="write results.json and the plots from the checkpoint's finished cells; compute nothing")
    return p


def _parse_list(text, allowed, flag):
    items = [s.strip() for s in (text or "").split(",") if s.strip()]
    bad = [s for s in items if s not in allowed]
    if bad:
        raise SystemExit(f"{flag}: unknown {bad}; choose from {tuple(allowed)}")
    if not items:
        raise SystemExit(f"{flag}: nothing to run")
    return list(dict.fromkeys(items))


def _row(attack, defense, acc, asr, *, flagged=None, is_poison=None, **extra):
    from poisoning.defenses.detection import detection_rates

    r = {"attack": attack, "defense": defense, "clean_accuracy": acc, "attack_success": asr, "tpr": None,
         "fpr": None}
    if flagged is not None:
        rates = detection_rates(np.asarray(flagged, bool), np.asarray(is_poison, bool))
        r.update(tpr=rates.tpr, fpr=rates.fpr, flagged=rates.true_positives + rates.false_positives)
    r.update(extra)
    return r


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.preset = "quick"
    if args.preset == "quick" and args.dataset != "cifar10":
        args.dataset = "digits"
    preset = PRESETS[args.preset]
    if not 0 < args.poison_rate < 1:
        raise SystemExit(f"--poison-rate must be in (0, 1), got {args.poison_rate}")
    if not 0 <= args.target < 10:
        raise SystemExit(f"--target must be a class in 0..9, got {args.target}")
    if args.ht_source is not None and (not 0 <= args.ht_source < 10 or args.ht_source == args.target):
        raise SystemExit(f"--ht-source must be a class in 0..9 other than --target, got {args.ht_source}")
    attacks = _parse_list(args.attacks, ATTACKS, "--attacks")
    table = available_defenses()
    wanted = [s.strip() for s in (args.defenses or "").split(",") if s.strip()]
    known = set(DEFENSES) | {"strip", "nc", "fp"}
    bad = [d for d in wanted if d not in known]
    if bad:
        raise SystemExit(f"--defenses: unknown {bad}; choose from {sorted(known)}")
    missing = [d for d in wanted if d not in table]
    defenses = [d for d in dict.fromkeys(wanted) if d in table]
    if missing:
        print(f"[backdoor_matrix] defenses not available in this tree, skipped: {missing}", flush=True)
    if not defenses:
        raise SystemExit("--defenses: nothing to run")
    cifar = args.dataset == "cifar10"
    if args.cl_eps is None:
        args.cl_eps = 8 / 255 if cifar else 0.3
    if args.ht_eps is None:
        args.ht_eps = 16 / 255 if cifar else args.cl_eps
    if args.ss_eps is None:
        args.ss_eps = args.poison_rate
    if args.n_train is not None:
        preset = dataclasses.replace(preset, n_train=args.n_train)
    if args.epochs is not None:
        preset = dataclasses.replace(preset, epochs=args.epochs)

    out = Path(args.out)
    x, y, xt, yt, data_name, fallback = load_data(args.dataset, args.data_dir, args.seed)
    if preset.n_train is not None:
        x, y = x[:preset.n_train], y[:preset.n_train]
    if preset.n_test is not None:
        xt, yt = xt[:preset.n_test + preset.n_defender], yt[:preset.n_test + preset.n_defender]
    # the defender's clean data (for repairs): the first images of the test set, not used for scoring
    x_def, y_def, xt, yt = xt[:preset.n_defender], yt[:preset.n_defender], xt[preset.n_defender:], yt[preset.n_defender:]
    cfg = train_config(preset, args.preset, args.dataset)
    knobs = dict(preset.knobs)
    model, model_name = make_model(args.dataset, args.preset, knobs)
    victim = Victim(model, cfg, x, args.seed, preset.head_epochs)

    config = {k: v for k, v in vars(args).items() if k not in ("out", "fresh", "report_only")}
    config["preset_values"] = dataclasses.asdict(preset)
    # the cells are keyed by attack and defense: adding either to a finished run resumes it
    fingerprint = json.dumps(_cli.to_jsonable({k: v for k, v in config.items() if k not in ("attacks", "defenses")}),
                             sort_keys=True)
    ckpt = _cli.Checkpoint(out / "progress.npz")
    saved = None if args.fresh else ckpt.load()
    done: dict[str, Any] = {}
    if saved is not None and str(saved["config"]) == fingerprint:
        done = json.loads(str(saved["done"]))
        print(f"[backdoor_matrix] resuming: {len(done)} cell(s) already done", flush=True)

    def save(key, value):
        done[key] = _cli.to_jsonable(value)
        ckpt.save({"config": fingerprint, "done": json.dumps(done)})

    t_start = time.perf_counter()
    print(f"[backdoor_matrix] {data_name}{' (fallback)' if fallback else ''}: {len(x)} train, {len(xt)} test, "
          f"{len(x_def)} held by the defender; {model_name}; attacks {attacks}; defenses {defenses}", flush=True)
    pending = ["none|none"] + [f"none|{d}" for d in defenses if d != "none" and table[d].on_clean] \
        + [f"{a}|{d}" for a in attacks for d in defenses] + [f"examples|{a}" for a in attacks]
    clean_state = None
    if args.report_only:
        if "none|none" not in done:
            raise SystemExit(f"--report-only: no finished cell in {ckpt.path} for these flags")
    if not args.report_only and any(k not in done for k in pending):
        t0 = time.perf_counter()
        clean_state = victim.fit(x, y)  # the surrogate / feature extractor of the attacks: retrained on resume
        clean_acc = victim.accuracy(clean_state, xt, yt)
        print(f"[backdoor_matrix] clean model: accuracy {clean_acc:.4f} ({time.perf_counter() - t0:.1f} s)",
              flush=True)
        if "none|none" not in done:
            save("none|none", _row("none", "none", clean_acc, None, n_poison=0))
    clean_acc = done["none|none"]["clean_accuracy"]
    no_poison = np.zeros(len(y), bool)
    for d in defenses if not args.report_only else ():
        if d != "none" and table[d].on_clean and f"none|{d}" not in done:
            t0 = time.perf_counter()
            ctx = DefenseContext(victim, clean_state, x, y, lambda keep: victim.fit(x, y, keep), x_def, y_def, args,
                                 preset, args.seed, xt[:500], None)
            res = table[d].run(ctx)
            save(f"none|{d}", _row("none", d, clean_acc, None, flagged=res.flagged, is_poison=no_poison, n_poison=0,
                                   seconds=time.perf_counter() - t0, note="detection on the clean model and set"))
            print(f"[backdoor_matrix] {d} on the clean set: FPR {done[f'none|{d}']['fpr']:.4f}", flush=True)

    examples = {}
    bar = _cli.progress(total=len(attacks) * len(defenses), desc="cells")
    for a in attacks:
        cells = [d for d in defenses if f"{a}|{d}" not in done]
        if args.report_only or (not cells and f"examples|{a}" in done):
            if f"examples|{a}" not in done:
                continue
            bar.update(len(defenses))
            examples[a] = {k: np.asarray(v, np.float32) for k, v in done[f"examples|{a}"].items()}
            continue
        t0 = time.perf_counter()
        bd = build_backdoor(a, args, victim, clean_state, x, y, xt, yt, preset)
        ps = bd.poisoned
        craft_s = time.perf_counter() - t0
        examples[a] = bd.examples
        if f"examples|{a}" not in done:
            save(f"examples|{a}", bd.examples)
        if bd.victim == "head":
            retrain = functools.partial(victim.fit_head, clean_state, ps.images, ps.labels)
        else:
            retrain = functools.partial(victim.fit, ps.images, ps.labels)
        t0 = time.perf_counter()
        state = retrain(None)
        acc = victim.accuracy(state, xt, yt)
        hits = int(np.sum(victim.logits(state, bd.test_images).argmax(-1) == bd.target))
        n_test = len(bd.test_images)
        print(f"[backdoor_matrix] {a}: {int(ps.is_poison.sum())} poisons (crafted in {craft_s:.1f} s), victim "
              f"'{bd.victim}' trained in {time.perf_counter() - t0:.1f} s: clean accuracy {acc:.4f}, attack success "
              f"{hits / n_test:.4f} | {bd.info}", flush=True)
        # the same triggered test images on the clean model: the success rate no poisoning would give
        base = float(np.mean(victim.logits(clean_state, bd.test_images).argmax(-1) == bd.target))
        common = {"n_poison": int(ps.is_poison.sum()), "victim": bd.victim, "attack_info": bd.info,
                  "attack_success_clean_model": base}
        for d in defenses:
            key = f"{a}|{d}"
            if key in done:
                bar.update(1)
                continue
            t0 = time.perf_counter()
            ctx = DefenseContext(victim, state, ps.images, ps.labels, retrain, x_def, y_def, args, preset, args.seed,
                                 xt[:500], bd.test_images[:500])
            res = table[d].run(ctx)
            d_state = res.state
            if d_state is None:
                d_state = retrain(~np.asarray(res.flagged, bool))
            d_acc = victim.accuracy(d_state, xt, yt, model=res.model)
            d_hits = int(np.sum(victim.logits(d_state, bd.test_images, model=res.model).argmax(-1) == bd.target))
            row = _row(a, d, d_acc, d_hits / n_test, flagged=res.flagged, is_poison=ps.is_poison,
                       attack_success_ci95=_cli.binomial_ci(d_hits, n_test), n_triggered=n_test,
                       seconds=time.perf_counter() - t0, **common, **({"defense_info": res.info} if res.info else {}))
            save(key, row)
            print(f"[backdoor_matrix]   {d}: clean accuracy {d_acc:.4f}, attack success {d_hits / n_test:.4f}"
                  + (f", TPR {row['tpr']:.3f} FPR {row['fpr']:.3f}" if row["tpr"] is not None else "")
                  + f" ({row['seconds']:.1f} s)", flush=True)
            bar.update(1)
    bar.close()

    rows = [done["none|none"]] + [done[f"none|{d}"] for d in defenses if d != "none" and f"none|{d}" in done] \
        + [done[f"{a}|{d}"] for a in attacks for d in defenses if f"{a}|{d}" in done]
    cells_missing = [f"{a}|{d}" for a in attacks for d in defenses if f"{a}|{d}" not in done]
    paper = {(p["attack"], p["defense"]): p for p in PAPER["rows"]}
    for r in rows:
        p = paper.get((r["attack"], r["defense"]))
        r["paper_clean_accuracy"] = p["clean_accuracy"] if p else None
        r["paper_attack_success"] = p["attack_success"] if p else None
    results = {
        "experiment": "backdoor_matrix", "dataset": data_name, "fallback": fallback, "model": model_name,
        "preset": args.preset, "n_train": len(x), "n_test": len(xt), "n_defender": len(x_def),
        "poison_rate": args.poison_rate, "target": args.target, "attacks": attacks, "defenses": defenses,
        "defenses_missing": missing, "cells_missing": cells_missing, "config": config, "train_config": cfg.as_dict(),
        "clean_accuracy": clean_acc, "paper": PAPER, "rows": rows, "seconds": time.perf_counter() - t_start,
    }
    _cli.write_json_atomic(out / "results.json", results)
    plot_heatmap(rows, attacks, defenses, out / "heatmap.png")
    plot_examples(x[:4], examples, out / "triggered_examples.png")

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}"

    print(_cli.format_table(
        [[r["attack"], r["defense"], pct(r["clean_accuracy"]), pct(r["attack_success"]),
          "-" if r["tpr"] is None else f"{r['tpr']:.3f}", "-" if r["fpr"] is None else f"{r['fpr']:.3f}",
          f"{pct(r['paper_clean_accuracy'])} / {pct(r['paper_attack_success'])}" if r["paper_clean_accuracy"] else ""]
         for r in rows],
        ["attack", "defense", "clean_acc %", "attack_success %", "tpr", "fpr", "BackdoorBench (CIFAR-10) acc / asr"]))
    print(f"paper: {PAPER['source']}" + (" -- this run is on digits, a stand-in" if fallback else ""))
    print(f"wrote {out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
