r"""Neural Cleanse (Wang et al. 2019): reverse-engineer the smallest trigger for every label, flag the
label whose trigger is anomalously small, and unlearn it.

**Reverse engineering.** For every label :math:`t`, a mask :math:`m = \sigma(a) \in (0,1)^{H \times W}`
and a pattern :math:`p = \tfrac12(\tanh b + 1) \in (0,1)^{H \times W \times C}` define the trigger
:math:`A(x) = (1 - m) \odot x + m \odot p` (a full-image :class:`poisoning.triggers.Patch`). Adam
(optax; Wang et al.'s :math:`\beta = (0.5, 0.9)`) minimizes, over mini-batches of clean images,

.. math::  \mathrm{CE}\big(f(A(x)), t\big) + \lambda_t \|m\|_1 .

The cost :math:`\lambda_t` is adjusted as in the authors' code: it starts at 0; once the attack success
(fraction of the round's batches sent to :math:`t`) has been :math:`\ge` ``attack_success_threshold``
(99 %) for ``patience`` rounds it is set to ``init_cost``; afterwards ``patience`` successful rounds in
a row multiply it by ``cost_multiplier`` and ``patience`` failed rounds divide it by
``cost_multiplier ** 1.5``. A round is ``steps_per_round`` Adam steps. The trigger kept for a label is
the one of smallest :math:`\|m\|_1` among the ends of rounds that reached the success threshold (the
last one if none did: ``reached`` is then ``False``). All labels are optimized at once (``jax.vmap``
over labels inside one ``jit``-compiled ``lax.scan``).

**Detection.** With :math:`L_t = \|m_t\|_1`, the anomaly index is

.. math::  I_t = \frac{|L_t - \mathrm{median}(L)|}{1.4826\ \mathrm{median}(|L - \mathrm{median}(L)|)}

(1.4826 makes the median absolute deviation a consistent estimator of a normal's standard deviation).
A label is flagged when :math:`L_t < \mathrm{median}(L)` and :math:`I_t >` ``anomaly_threshold`` (2).

**Repair by unlearning** (:func:`unlearn`): fine-tune on clean data in which a fraction (20 %) of the
images carry a flagged label's reversed trigger *with their true labels*. A model with no flagged label
is returned unchanged.

Reference: B. Wang, Y. Yao, S. Shan, H. Li, B. Viswanath, H. Zheng, B. Y. Zhao, *Neural Cleanse:
Identifying and Mitigating Backdoor Attacks in Neural Networks*, IEEE S&P 2019 (and the authors'
``visualizer.py``).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from poisoning import triggers
from poisoning.defenses._inputs import check_images, check_number, check_positive_int
from poisoning.defenses.strip import numpy_rng
from poisoning.training.config import TrainConfig
from poisoning.training.loop import train
from poisoning.training.state import TrainState, reset_optimizer, variables

__all__ = [
    "NeuralCleanseConfig",
    "NeuralCleanseResult",
    "reverse_engineer",
    "anomaly_index",
    "cost_schedule",
    "neural_cleanse",
    "reversed_trigger",
    "unlearn",
    "plot_reversed_triggers",
    "MAD_CONSISTENCY",
]

MAD_CONSISTENCY = 1.4826
_OWNER = "NeuralCleanseConfig"


@dataclasses.dataclass(frozen=True)
class NeuralCleanseConfig:
    """Neural Cleanse's settings (module docstring; defaults follow the authors' MNIST / GTSRB code
    except ``rounds``, which they run to 1000 with early stopping).

    Attributes:
      rounds: rounds of the cost schedule.
      steps_per_round: Adam steps per round (the authors: 1000 images / batch 32 = 31).
      batch_size: clean images per step.
      learning_rate: Adam's step (0.1).
      init_cost: :math:`\\lambda` once the cost is first switched on (1e-3).
      attack_success_threshold: the success a reversed trigger must reach (0.99).
      patience: rounds before the cost is switched on / changed (5).
      cost_multiplier: factor up (and ``** 1.5`` down) of the cost (2).
      anomaly_threshold: flag labels with an anomaly index above it (2).
      unlearn_fraction: the fraction of the unlearning set carrying a reversed trigger (0.2).
      unlearn: the training recipe of the unlearning fine-tuning (a fresh optimizer).
    """

    rounds: int = 30
    steps_per_round: int = 31
    batch_size: int = 32
    learning_rate: float = 0.1
    init_cost: float = 1e-3
    attack_success_threshold: float = 0.99
    patience: int = 5
    cost_multiplier: float = 2.0
    anomaly_threshold: float = 2.0
    unlearn_fraction: float = 0.2
    unlearn: TrainConfig = TrainConfig(epochs=1, batch_size=32, optimizer="sgd", learning_rate=0.01, momentum=0.9)

    def __post_init__(self):
        for name in ("rounds", "steps_per_round", "batch_size", "patience"):
            check_positive_int(name, getattr(self, name), owner=_OWNER)
        check_number("learning_rate", self.learning_rate, low=0, open_low=True, owner=_OWNER)
        check_number("init_cost", self.init_cost, low=0, open_low=True, owner=_OWNER)
        check_number("attack_success_threshold", self.attack_success_threshold, low=0, high=1, open_low=True,
                     owner=_OWNER)
        check_number("cost_multiplier", self.cost_multiplier, low=0, open_low=True, owner=_OWNER)
        if self.cost_multiplier <= 1:
            raise ValueError(f"NeuralCleanseConfig.cost_multiplier must be > 1, got {self.cost_multiplier!r}")
        check_number("anomaly_threshold", self.anomaly_threshold, low=0, open_low=True, owner=_OWNER)
        check_number("unlearn_fraction", self.unlearn_fraction, low=0, high=1, open_low=True, owner=_OWNER)
        if not isinstance(self.unlearn, TrainConfig):
            raise TypeError(f"NeuralCleanseConfig.unlearn must be a TrainConfig, got {type(self.unlearn).__name__}")


class NeuralCleanseResult(NamedTuple):
    """What Neural Cleanse found, one row per label.

    Attributes:
      masks: ``(K, H, W)`` reversed masks in (0, 1).
      patterns: ``(K, H, W, C)`` reversed patterns in (0, 1).
      l1_norms: ``(K,)`` :math:`\\|m_t\\|_1`.
      attack_success: ``(K,)`` success of each reversed trigger on the clean images (all of them).
      reached: ``(K,)`` whether the optimization reached ``attack_success_threshold``.
      costs: ``(K,)`` the final :math:`\\lambda_t`.
      anomaly_index: ``(K,)`` :math:`I_t`.
      flagged: ``(K,)`` bool, the labels judged backdoor targets.
    """

    masks: np.ndarray
    patterns: np.ndarray
    l1_norms: np.ndarray
    attack_success: np.ndarray
    reached: np.ndarray
    costs: np.ndarray
    anomaly_index: np.ndarray
    flagged: np.ndarray

    @property
    def flagged_labels(self) -> list[int]:
        return [int(t) for t in np.flatnonzero(self.flagged)]


def anomaly_index(l1_norms) -> np.ndarray:
    """:math:`I_t = |L_t - \\mathrm{med}(L)| / (1.4826\\,\\mathrm{MAD}(L))` (module docstring); where the
    MAD is 0, ``inf`` for the labels away from the median and 0 at it."""
    L = np.asarray(l1_norms, np.float64)
    if L.ndim != 1 or L.size < 2:
        raise ValueError(f"argument 'l1_norms' must be 1-D with >= 2 values, got shape {L.shape}")
    if not np.all(np.isfinite(L)):
        raise ValueError("argument 'l1_norms' contains NaN or inf")
    dev = np.abs(L - np.median(L))
    mad = MAD_CONSISTENCY * np.median(dev)
    if mad == 0:
        return np.where(dev > 0, np.inf, 0.0)
    return dev / mad


def _trigger_images(x, mask, pattern):
    m = mask[None, :, :, None]
    return (1 - m) * x + m * pattern[None]


def cost_schedule(cost, set_count, up_count, down_count, success, config: NeuralCleanseConfig):
    """One round of the authors' cost schedule (module docstring), elementwise over labels.

    ``success``: whether the round's attack success reached ``config.attack_success_threshold``.
    Returns the new ``(cost, set_count, up_count, down_count)``: while the cost is 0, ``patience``
    successful rounds in a row set it to ``init_cost`` (and reset the other counters); then
    ``patience`` successes in a row multiply it by ``cost_multiplier`` and ``patience`` failures
    divide it by ``cost_multiplier ** 1.5`` (each resets its counter)."""
    p = config.patience
    off = cost == 0
    set_count = jnp.where(off & success, set_count + 1, 0)
    switch_on = off & success & (set_count >= p)
    cost = jnp.where(switch_on, jnp.asarray(config.init_cost, jnp.result_type(cost)), cost)
    up_count = jnp.where(success, jnp.where(switch_on, 0, up_count) + 1, 0)
    down_count = jnp.where(success, 0, jnp.where(switch_on, 0, down_count) + 1)
    go_up = up_count >= p
    go_down = ~go_up & (down_count >= p)
    cost = jnp.where(go_up, cost * config.cost_multiplier,
                     jnp.where(go_down, cost / config.cost_multiplier ** 1.5, cost))
    return cost, set_count, jnp.where(go_up, 0, up_count), jnp.where(go_down, 0, down_count)


def _reverse_impl(model, variables_, x, labels, raw0, batches, config: NeuralCleanseConfig, eval_batch: int):
    n, H, W, C = x.shape
    K = labels.shape[0]
    dtype = x.dtype
    tx = optax.adam(config.learning_rate, b1=0.5, b2=0.9)
    thr = config.attack_success_threshold

    def decode(raw):
        return jax.nn.sigmoid(raw["mask"]), 0.5 * (jnp.tanh(raw["pattern"]) + 1)

    def loss_fn(raw, cost, xb, t):
        mask, pattern = decode(raw)
        logits = model.apply(variables_, _trigger_images(xb, mask, pattern), train=False).astype(jnp.float32)
        ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.full(xb.shape[0], t)))
        return ce + cost * jnp.sum(mask), jnp.mean(jnp.argmax(logits, -1) == t)

    grad_fn = jax.grad(loss_fn, has_aux=True)

    opt0 = jax.vmap(tx.init)(raw0)
    zeros_i = jnp.zeros(K, jnp.int32)
    carry0 = dict(raw=raw0, opt=opt0, cost=jnp.zeros(K, dtype), set_count=zeros_i, up_count=zeros_i,
                  down_count=zeros_i, best_l1=jnp.full(K, jnp.inf, dtype), best=raw0)

    def step(state, xb):
        raw, opt, cost = state

        def one(raw_t, opt_t, cost_t, t):
            g, acc = grad_fn(raw_t, cost_t, xb, t)
            upd, opt_t = tx.update(g, opt_t, raw_t)
            return optax.apply_updates(raw_t, upd), opt_t, acc

        raw, opt, acc = jax.vmap(one)(raw, opt, cost, labels)
        return (raw, opt, cost), acc

    def round_(c, idx):
        (raw, opt, _), accs = jax.lax.scan(step, (c["raw"], c["opt"], c["cost"]), x[idx])
        acc = jnp.mean(accs, axis=0)                                                     # (K,)
        ok = acc >= thr
        l1 = jnp.sum(jax.nn.sigmoid(raw["mask"]), axis=(1, 2))
        better = ok & (l1 < c["best_l1"])
        best = jax.tree_util.tree_map(lambda b, new: jnp.where(better.reshape((K,) + (1,) * (new.ndim - 1)), new, b),
                                      c["best"], raw)
        best_l1 = jnp.where(better, l1, c["best_l1"])
        cost, set_count, up_count, down_count = cost_schedule(c["cost"], c["set_count"], c["up_count"],
                                                              c["down_count"], ok, config)
        return dict(raw=raw, opt=opt, cost=cost, set_count=set_count, up_count=up_count, down_count=down_count,
                    best_l1=best_l1, best=best), acc

    final, history = jax.lax.scan(round_, carry0, batches)
    reached = jnp.isfinite(final["best_l1"])
    chosen = jax.tree_util.tree_map(lambda b, last: jnp.where(reached.reshape((K,) + (1,) * (b.ndim - 1)), b, last),
                                    final["best"], final["raw"])
    masks, patterns = jax.vmap(decode)(chosen)
    return masks, patterns, _success(model, variables_, x, masks, patterns, labels, eval_batch), reached, \
        final["cost"], history


_reverse = jax.jit(_reverse_impl, static_argnames=("model", "config", "eval_batch"))


def _success(model, variables_, x, masks, patterns, labels, batch_size):
    """Fraction of ``x`` sent to each label by its reversed trigger, ``batch_size`` images at a time."""
    n = x.shape[0]
    chunks = -(-n // batch_size)
    pad = chunks * batch_size - n
    xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
    xp = xp.reshape(chunks, batch_size, *x.shape[1:])
    valid = (jnp.arange(chunks * batch_size) < n).reshape(chunks, batch_size)

    def per_label(args):
        mask, pattern, t = args

        def one(a):
            xb, vb = a
            logits = model.apply(variables_, _trigger_images(xb, mask, pattern), train=False)
            return jnp.sum((jnp.argmax(logits, -1) == t) & vb)

        return jnp.sum(jax.lax.map(one, (xp, valid))) / n

    return jax.lax.map(per_label, (masks, patterns, labels))


def _num_classes(model, num_classes):
    k = getattr(model, "num_classes", None) if num_classes is None else num_classes
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 2:
        raise ValueError(f"argument 'num_classes' must be an int >= 2 (the model does not say), got {k!r}")
    return int(k)


def reverse_engineer(model, state, x_clean, key, config: NeuralCleanseConfig = NeuralCleanseConfig(), *,
                     num_classes: int | None = None, labels=None, batch_size: int = 500):
    """The reversed ``(masks (K', H, W), patterns (K', H, W, C), attack_success (K',), reached (K',),
    costs (K',))`` of ``labels`` (default: every class of the model), optimized on the clean images
    ``x_clean`` (module docstring). ``attack_success`` is measured on all of ``x_clean``."""
    if not isinstance(config, NeuralCleanseConfig):
        raise TypeError(f"argument 'config' must be a NeuralCleanseConfig, got {type(config).__name__}")
    x = check_images(x_clean, "x_clean")
    K = _num_classes(model, num_classes)
    labels = np.arange(K) if labels is None else np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer) \
            or labels.min() < 0 or labels.max() >= K:
        raise ValueError(f"argument 'labels' must be a non-empty 1-D array of classes in [0, {K}), got {labels!r}")
    vars_ = variables(state)
    lab = jnp.asarray(labels, jnp.int32)
    # a random start (raw parameters uniform in [-2, 2]: mask and pattern values in about (0.12, 0.88);
    # the authors start from uniform ones) and the mini-batches of every round, drawn with NumPy from the
    # key (no XLA compilation of a random-number kernel)
    rng = numpy_rng(key)
    n, H, W, C = x.shape
    raw0 = {"mask": jnp.asarray(rng.uniform(-2, 2, (len(lab), H, W)), x.dtype),
            "pattern": jnp.asarray(rng.uniform(-2, 2, (len(lab), H, W, C)), x.dtype)}
    batches = jnp.asarray(rng.integers(0, n, (config.rounds, config.steps_per_round, config.batch_size)), jnp.int32)
    masks, patterns, asr, reached, costs, _ = _reverse(model, vars_, x, lab, raw0, batches, config,
                                                       int(min(batch_size, x.shape[0])))
    return (np.asarray(masks), np.asarray(patterns), np.asarray(asr), np.asarray(reached), np.asarray(costs))


def neural_cleanse(model, state, x_clean, key, config: NeuralCleanseConfig = NeuralCleanseConfig(), *,
                   num_classes: int | None = None) -> NeuralCleanseResult:
    """Reverse-engineer a trigger for every label on the clean images ``x_clean`` and flag the
    anomalously small ones (module docstring).

    Args:
      model: a flax module of :mod:`poisoning.models` (its ``num_classes`` gives the labels, else pass
        ``num_classes``); ``state``: its :class:`~poisoning.training.TrainState` or flax variables.
      x_clean: ``(n, H, W[, C])`` the defender's clean images in [0, 1].
      key: ``jax.random`` key (initialization and mini-batches).
    """
    masks, patterns, asr, reached, costs = reverse_engineer(model, state, x_clean, key, config,
                                                            num_classes=num_classes)
    l1 = masks.reshape(len(masks), -1).sum(axis=1)
    idx = anomaly_index(l1)
    flagged = (l1 < np.median(l1)) & (idx > config.anomaly_threshold)
    return NeuralCleanseResult(masks, patterns, l1, asr, reached, costs, idx, flagged)


def reversed_trigger(result: NeuralCleanseResult, label: int) -> triggers.Patch:
    """The reversed trigger of ``label`` as a full-image :class:`poisoning.triggers.Patch`."""
    if not isinstance(result, NeuralCleanseResult):
        raise TypeError(f"argument 'result' must be a NeuralCleanseResult, got {type(result).__name__}")
    K = len(result.masks)
    if not isinstance(label, (int, np.integer)) or isinstance(label, bool) or not 0 <= label < K:
        raise ValueError(f"argument 'label' must be an int in [0, {K}), got {label!r}")
    return triggers.Patch(jnp.asarray(result.patterns[label]), jnp.asarray(result.masks[label]), row=0, col=0)


def unlearn(model, state: TrainState, x_clean, y_clean, result: NeuralCleanseResult, key,
            config: NeuralCleanseConfig = NeuralCleanseConfig(), *, labels=None) -> TrainState:
    """Wang et al.'s repair: fine-tune ``state`` with ``config.unlearn`` on ``(x_clean, y_clean)`` where
    a random ``config.unlearn_fraction`` of the images carry a reversed trigger of ``labels`` (default:
    the flagged ones; split evenly among them) and keep their true labels. Returns ``state`` unchanged
    when there is no label to unlearn."""
    if not isinstance(state, TrainState):
        raise TypeError(f"argument 'state' must be a TrainState, got {type(state).__name__}")
    if not isinstance(config, NeuralCleanseConfig):
        raise TypeError(f"argument 'config' must be a NeuralCleanseConfig, got {type(config).__name__}")
    labels = result.flagged_labels if labels is None else [int(t) for t in np.atleast_1d(labels)]
    if not labels:
        return state
    x = check_images(x_clean, "x_clean")
    y = np.asarray(y_clean)
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"argument 'y_clean' must be ({x.shape[0]},) integer labels, got {y.shape} {y.dtype}")
    n = x.shape[0]
    m = int(round(config.unlearn_fraction * n))
    chosen = numpy_rng(key).permutation(n)[:m]
    xs = x
    for i, part in enumerate(np.array_split(chosen, len(labels))):
        if len(part):
            stamped = triggers.apply(reversed_trigger(result, labels[i]), xs[part])
            xs = xs.at[part].set(stamped.astype(xs.dtype))
    spe = n // config.unlearn.batch_size
    if spe < 1:
        raise ValueError(f"argument 'x_clean' has {n} images, fewer than the unlearning's batch_size="
                         f"{config.unlearn.batch_size}")
    start = reset_optimizer(state, config.unlearn, steps_per_epoch=spe)
    return train(model, start, (xs, jnp.asarray(y)), config.unlearn, key=key)


def plot_reversed_triggers(result: NeuralCleanseResult, path=None, *, title: str | None = None):
    """One panel per label: the reversed trigger :math:`m \\odot p` with its L1 norm and anomaly index
    (flagged labels in red). Saves to ``path`` (PNG) when given; returns the figure."""
    if not isinstance(result, NeuralCleanseResult):
        raise TypeError(f"argument 'result' must be a NeuralCleanseResult, got {type(result).__name__}")
    import matplotlib.pyplot as plt

    K = len(result.masks)
    cols = min(K, 10)
    rows = -(-K // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows), squeeze=False)
    for t, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if t >= K:
            continue
        img = result.masks[t][..., None] * result.patterns[t]
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
        color = "red" if result.flagged[t] else "black"
        ax.set_title(f"{t}: L1 {result.l1_norms[t]:.1f}\nI={result.anomaly_index[t]:.1f}", fontsize=7, color=color)
    fig.suptitle(title or "Neural Cleanse: reversed triggers (mask x pattern)", fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
