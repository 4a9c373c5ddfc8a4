r"""STRIP (Gao et al. 2019): a triggered input stays confidently classified whatever it is mixed with.

At run time, each input :math:`x` is superimposed with :math:`N` clean images :math:`x^{(j)}` drawn
(without replacement) from a held-out set,

.. math::  \tilde x^{(j)} = \mathrm{clip}\big(w_x\, x + w_o\, x^{(j)},\ 0,\ 1\big), \qquad j = 1..N,

(Gao et al. add the two images, :math:`w_x = w_o = 1`, with OpenCV's saturation at the maximum pixel
value; :math:`w_x = w_o = 0.5` is the average), and scored by the mean Shannon entropy (bits) of the
model's predictions,

.. math::  H(x) = \frac1N \sum_{j=1}^N -\sum_{k=1}^K p_k(\tilde x^{(j)}) \log_2 p_k(\tilde x^{(j)}).

A clean input loses its identity when mixed (high :math:`H`); an input carrying a strong trigger keeps
being sent to the target class (low :math:`H`). The detection boundary is set on clean calibration
inputs only, at the false-rejection rate ``frr`` (1 %): the ``frr``-quantile of their entropies
(``threshold="quantile"``), or the same percentile of a normal fitted to them (``"normal"``, Gao et
al.'s choice). An input is flagged as trojaned when :math:`H(x) < \text{threshold}`. Reported:

- FAR, the false-acceptance rate: triggered inputs *not* flagged;
- FRR on the calibration inputs (``frr`` by construction, up to ties) and the false-positive rate on
  other clean test inputs (what the defense costs on clean traffic, the number to report on a clean
  model as well).

Everything is computed in one ``jit``-compiled pass, ``batch_size`` inputs (times ``N`` mixtures) at
a time. :func:`plot_entropies` draws the two histograms.

Reference: Y. Gao, C. Xu, D. Wang, S. Chen, D. C. Ranasinghe, S. Nepal, *STRIP: A Defence Against
Trojan Attacks on Deep Neural Networks*, ACSAC 2019, arXiv:1902.06531.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from poisoning.defenses._inputs import check_images, check_number, check_positive_int
from poisoning.training.loop import as_float_images
from poisoning.training.state import variables

__all__ = ["StripConfig", "StripResult", "strip_entropy", "strip_threshold", "strip", "plot_entropies",
           "THRESHOLDS"]

THRESHOLDS = ("quantile", "normal")


@dataclasses.dataclass(frozen=True)
class StripConfig:
    """STRIP's settings (module docstring).

    Attributes:
      n_overlays: :math:`N`, clean images superimposed on each input (Gao et al.: 100).
      frr: the false-rejection rate the threshold is set to on the clean calibration inputs.
      input_weight, overlay_weight: :math:`w_x`, :math:`w_o` of the superimposition.
      threshold: ``"quantile"`` (empirical) or ``"normal"`` (percentile of a fitted normal).
      batch_size: inputs per forward pass (each with ``n_overlays`` mixtures).
    """

    n_overlays: int = 100
    frr: float = 0.01
    input_weight: float = 1.0
    overlay_weight: float = 1.0
    threshold: str = "quantile"
    batch_size: int = 20

    def __post_init__(self):
        check_positive_int("n_overlays", self.n_overlays)
        check_number("frr", self.frr, low=0, high=1, open_low=True)
        if self.frr >= 1:
            raise ValueError(f"argument 'frr' must be in (0, 1), got {self.frr!r}")
        check_number("input_weight", self.input_weight, low=0, open_low=True)
        check_number("overlay_weight", self.overlay_weight, low=0, open_low=True)
        if self.threshold not in THRESHOLDS:
            raise ValueError(f"argument 'threshold' must be one of {THRESHOLDS}, got {self.threshold!r}")
        check_positive_int("batch_size", self.batch_size)


class StripResult(NamedTuple):
    """What STRIP measured.

    Attributes:
      threshold: the entropy boundary (flag below it).
      far: fraction of triggered inputs accepted (entropy >= threshold); ``None`` without triggered inputs.
      frr: fraction of the calibration inputs rejected (about ``config.frr``).
      fpr: fraction of the clean test inputs rejected.
      entropy_calibration, entropy_clean, entropy_triggered: the per-input entropies (bits), for
        histograms (``entropy_triggered`` is empty without triggered inputs).
      flagged_clean, flagged_triggered: the per-input decisions.
    """

    threshold: float
    far: float | None
    frr: float
    fpr: float
    entropy_calibration: np.ndarray
    entropy_clean: np.ndarray
    entropy_triggered: np.ndarray
    flagged_clean: np.ndarray
    flagged_triggered: np.ndarray


def numpy_rng(key) -> np.random.Generator:
    """NumPy's generator seeded by the bits of the ``jax.random`` key ``key`` (typed or raw ``uint32``)."""
    k = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(k.dtype, jax.dtypes.prng_key):
        k = jax.random.key_data(k)
    if not jnp.issubdtype(k.dtype, jnp.integer):
        raise TypeError(f"argument 'key' must be a jax.random key, got dtype {k.dtype}")
    return np.random.default_rng(np.asarray(k).astype(np.uint32).ravel().tolist())


def _draw_overlays(key, n: int, m: int, n_overlays: int) -> np.ndarray:
    """``(n, n_overlays)`` indices into ``m`` overlays, distinct within each row, a function of ``key``.

    Drawn with NumPy's generator seeded by the key's bits: the same numbers for the same key, and no
    XLA compilation of a random-number kernel (which costs seconds on CPU for every new shape)."""
    rng = numpy_rng(key)
    if n_overlays == m:
        return np.argsort(rng.random((n, m)), axis=1).astype(np.int32)
    return np.argpartition(rng.random((n, m)), n_overlays - 1, axis=1)[:, :n_overlays].astype(np.int32)


@functools.partial(jax.jit, static_argnames=("model", "n_overlays", "batch_size"))
def _entropies(model, variables_, x, overlays, idx, w_x, w_o, n_overlays, batch_size):
    n = x.shape[0]
    chunks = -(-n // batch_size)
    pad = chunks * batch_size - n
    if pad:
        x = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)])
        idx = jnp.concatenate([idx, jnp.zeros((pad, n_overlays), idx.dtype)])
    x = x.reshape(chunks, batch_size, *x.shape[1:])
    idx = idx.reshape(chunks, batch_size, n_overlays)

    def one(args):
        xb, ib = args
        mixed = jnp.clip(w_x * xb[:, None] + w_o * overlays[ib], 0, 1)                      # (b, N, H, W, C)
        logits = model.apply(variables_, mixed.reshape(-1, *mixed.shape[2:]), train=False)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        h = -jnp.sum(jnp.exp(logp) * logp, axis=-1) / jnp.log(2.0)
        return jnp.mean(h.reshape(xb.shape[0], n_overlays), axis=1)

    return jax.lax.map(one, (x, idx)).reshape(-1)[:n]


def strip_entropy(model, state, x, overlays, key, *, n_overlays: int = 100, input_weight: float = 1.0,
                  overlay_weight: float = 1.0, batch_size: int = 20):
    """:math:`H(x)` of every image of ``x`` (module docstring): ``(n,)`` float32 entropies in bits.

    Args:
      model: a flax module of :mod:`poisoning.models` (or a
        :class:`~poisoning.defenses.fine_pruning.ChannelMask`); ``state`` its
        :class:`~poisoning.training.TrainState` or flax variables.
      x: ``(n, H, W[, C])`` inputs in [0, 1]; ``overlays``: ``(m, H, W[, C])`` clean held-out images,
        ``m >= n_overlays``.
      key: ``jax.random`` key drawing the overlays of each input.
    """
    check_positive_int("n_overlays", n_overlays)
    check_positive_int("batch_size", batch_size)
    check_number("input_weight", input_weight, low=0, open_low=True)
    check_number("overlay_weight", overlay_weight, low=0, open_low=True)
    overlays = check_images(overlays, "overlays")
    x = check_images(x, "x", like=overlays)
    if overlays.shape[0] < n_overlays:
        raise ValueError(f"argument 'overlays' has {overlays.shape[0]} images, fewer than n_overlays={n_overlays}")
    dtype = jnp.float32 if not jnp.issubdtype(x.dtype, jnp.floating) else x.dtype
    x = as_float_images(x, dtype)
    overlays = as_float_images(overlays, dtype).astype(x.dtype)
    idx = jnp.asarray(_draw_overlays(key, x.shape[0], overlays.shape[0], int(n_overlays)))
    return _entropies(model, variables(state), x, overlays, idx, jnp.asarray(input_weight, x.dtype),
                      jnp.asarray(overlay_weight, x.dtype), int(n_overlays), int(min(batch_size, x.shape[0])))


def strip_threshold(calibration_entropy, frr: float = 0.01, method: str = "quantile") -> float:
    """The entropy below which an input is flagged, so that a fraction ``frr`` of the clean calibration
    entropies fall below it: their empirical ``frr``-quantile, or the ``frr``-percentile of a normal
    with their mean and standard deviation (``method="normal"``)."""
    h = np.asarray(calibration_entropy, np.float64)
    if h.ndim != 1 or h.size < 2:
        raise ValueError(f"argument 'calibration_entropy' must be 1-D with >= 2 values, got shape {h.shape}")
    if not np.all(np.isfinite(h)):
        raise ValueError("argument 'calibration_entropy' contains NaN or inf")
    check_number("frr", frr, low=0, high=1, open_low=True)
    if frr >= 1:
        raise ValueError(f"argument 'frr' must be in (0, 1), got {frr!r}")
    if method == "quantile":
        return float(np.quantile(h, frr))
    if method == "normal":
        from scipy.stats import norm

        return float(h.mean() + h.std(ddof=1) * norm.ppf(frr))
    raise ValueError(f"argument 'method' must be one of {THRESHOLDS}, got {method!r}")


def strip(model, state, overlays, x_calibration, x_clean, x_triggered, key,
          config: StripConfig = StripConfig()) -> StripResult:
    """Run STRIP: threshold on ``x_calibration`` at ``config.frr``, FAR on ``x_triggered`` (may be
    ``None``), false-positive rate on ``x_clean`` (module docstring).

    Args:
      model, state: the deployed network (a flax module and its ``TrainState`` / variables).
      overlays: the defender's held-out clean images superimposed on every input.
      x_calibration: clean inputs that set the threshold (e.g. other held-out images).
      x_clean: clean test inputs (their rejection rate is the false-positive rate).
      x_triggered: triggered test inputs, or ``None`` (e.g. on a clean model, to report the FPR only).
      key: ``jax.random`` key drawing the overlays of every input.
    """
    if not isinstance(config, StripConfig):
        raise TypeError(f"argument 'config' must be a StripConfig, got {type(config).__name__}")
    sets = [_named(x_calibration, "x_calibration"), _named(x_clean, "x_clean")]
    if x_triggered is not None:
        sets.append(_named(x_triggered, "x_triggered"))
    for x, name in zip(sets[1:], ("x_clean", "x_triggered")):
        if x.shape[1:] != sets[0].shape[1:]:
            raise ValueError(f"argument {name!r} has images of shape {x.shape[1:]}, x_calibration "
                             f"{sets[0].shape[1:]}")
    # one pass over the three sets (one compilation, whatever their sizes)
    dtype = jnp.result_type(*[x.dtype for x in sets])
    h = np.asarray(strip_entropy(model, state, jnp.concatenate([x.astype(dtype) for x in sets]), overlays, key,
                                 n_overlays=config.n_overlays, input_weight=config.input_weight,
                                 overlay_weight=config.overlay_weight, batch_size=config.batch_size))
    ends = np.cumsum([len(x) for x in sets])
    h_cal, h_clean = h[:ends[0]], h[ends[0]:ends[1]]
    h_trig = h[ends[1]:] if x_triggered is not None else np.zeros(0, np.float32)
    t = strip_threshold(h_cal, config.frr, config.threshold)
    flagged_clean, flagged_trig = h_clean < t, h_trig < t
    far = float(np.mean(~flagged_trig)) if h_trig.size else None
    return StripResult(t, far, float(np.mean(h_cal < t)), float(np.mean(flagged_clean)), h_cal, h_clean, h_trig,
                       flagged_clean, flagged_trig)


def _named(x, name):
    """Validate ``x`` under its own argument name (so an error says which input set is bad)."""
    return check_images(x, name)


def plot_entropies(result: StripResult, ax=None, *, bins: int = 30, title: str | None = None):
    """Histograms of the clean and triggered entropies with the threshold (Gao et al.'s Fig. 5) on
    the matplotlib axes ``ax`` (a new figure if ``None``); returns the axes."""
    if not isinstance(result, StripResult):
        raise TypeError(f"argument 'result' must be a StripResult, got {type(result).__name__}")
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    both = np.concatenate([result.entropy_clean, result.entropy_triggered])
    edges = np.linspace(float(both.min()), float(both.max()) + 1e-6, bins + 1)
    ax.hist(result.entropy_clean, bins=edges, alpha=0.6, density=True, label="clean")
    if result.entropy_triggered.size:
        ax.hist(result.entropy_triggered, bins=edges, alpha=0.6, density=True, label="triggered")
    ax.axvline(result.threshold, color="k", ls="--", lw=1, label=f"threshold (FRR {result.frr:.2%})")
    ax.set_xlabel("mean entropy of superimposed inputs (bits)")
    ax.set_ylabel("density")
    far = "" if result.far is None else f"FAR {result.far:.2%}, "
    ax.set_title(title or f"STRIP: {far}FPR {result.fpr:.2%}")
    ax.legend(fontsize=8)
    return ax
