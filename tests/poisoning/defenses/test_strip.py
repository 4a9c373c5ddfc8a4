"""STRIP: the entropy against a hand computation, the threshold at the requested FRR, triggered inputs of
a backdoored network far less entropic than clean ones (low FAR), and on a clean network the triggered
inputs pass (high FAR) while the false-positive rate stays near the FRR."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from poisoning.defenses.strip import StripConfig, plot_entropies, strip, strip_entropy, strip_threshold
from tests.poisoning.defenses._backdoor_models import backdoored_digits, numpy_init

pytestmark = pytest.mark.xla_optimized   # run-bound: trains networks (tests/conftest.py)


class _Linear(nn.Module):
    num_classes: int = 3

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


def _entropy_bits(logits):
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return -(p * np.log2(p)).sum(-1)


def test_entropy_matches_a_hand_computation():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(5, 4, 4, 1)).astype(np.float32)
    overlays = rng.uniform(size=(7, 4, 4, 1)).astype(np.float32)
    model = _Linear()
    variables = numpy_init(model, x)
    variables = jax.tree_util.tree_map(lambda a: 3.0 * a, variables)        # confident enough to differ
    w = np.asarray(variables["params"]["Dense_0"]["kernel"], np.float64)
    b = np.asarray(variables["params"]["Dense_0"]["bias"], np.float64)
    for wx, wo in ((1.0, 1.0), (0.5, 0.5)):               # the last is used below
        # with every overlay used, the mean does not depend on which input got which order
        h = np.asarray(strip_entropy(model, variables, x, overlays, jax.random.key(1), n_overlays=7,
                                     input_weight=wx, overlay_weight=wo, batch_size=2))
        mixed = np.clip(wx * x[:, None].astype(np.float64) + wo * overlays[None], 0, 1).reshape(5, 7, -1)
        want = _entropy_bits(mixed @ w + b).mean(axis=1)
        np.testing.assert_allclose(h, want, rtol=1e-4, atol=1e-5)
    # a model that ignores its input has the uniform entropy log2 K
    zero = jax.tree_util.tree_map(jnp.zeros_like, variables)
    h0 = strip_entropy(model, zero, x, overlays, jax.random.key(2), n_overlays=7, batch_size=2)
    np.testing.assert_allclose(h0, np.log2(3), rtol=1e-6)
    # strip() splits one pass over its input sets back into them; without triggered inputs no FAR
    res = strip(model, variables, overlays, x[:2], x[2:], None, jax.random.key(1),
                StripConfig(n_overlays=7, batch_size=2, frr=0.5, input_weight=0.5, overlay_weight=0.5))
    np.testing.assert_allclose(np.concatenate([res.entropy_calibration, res.entropy_clean]), h, rtol=1e-6)
    assert res.far is None and res.entropy_triggered.size == 0 and res.flagged_clean.shape == (3,)


def test_threshold_sits_at_the_requested_frr():
    h = np.random.default_rng(1).normal(2.0, 0.5, size=2001)
    t = strip_threshold(h, 0.05)
    assert np.mean(h < t) == pytest.approx(0.05, abs=1e-3)
    # the normal fit: mean + std * Phi^-1(0.05), Phi^-1(0.05) = -1.6448536
    assert strip_threshold(h, 0.05, "normal") == pytest.approx(h.mean() - 1.6448536 * h.std(ddof=1), rel=1e-6)
    with pytest.raises(ValueError, match="frr"):
        strip_threshold(h, 1.0)
    with pytest.raises(ValueError, match="method"):
        strip_threshold(h, 0.01, "median")
    with pytest.raises(ValueError, match="calibration_entropy"):
        strip_threshold([1.0, np.nan], 0.01)


def test_strip_detects_triggered_inputs_of_a_backdoored_network_and_passes_them_on_a_clean_one():
    b = backdoored_digits()
    cfg = StripConfig(n_overlays=20, frr=0.05)
    key = jax.random.key(0)
    args = (b.x_val[:150], b.x_val[150:], b.x_test[:200], b.x_test_triggered[:200], key, cfg)
    bad = strip(b.model, b.backdoored, *args)
    clean = strip(b.model, b.clean, *args)
    # triggered inputs keep their (target) prediction under superimposition: lower entropy. Additive
    # superimposition of upsampled digits often covers the 3x3 corner pattern, so the separation is
    # partial here: measured medians 0.30 vs 0.63 bits, FAR 0.47
    auc = np.mean(bad.entropy_triggered[:, None] < bad.entropy_clean[None, :])
    assert auc > 0.75, auc                             # measured 0.89 (0.56 on the clean twin)
    assert np.median(bad.entropy_triggered) < 0.7 * np.median(bad.entropy_clean)
    assert bad.frr == pytest.approx(0.05, abs=0.01)
    assert bad.fpr < 0.15                              # measured 0.055 on 200 clean test inputs
    assert bad.entropy_triggered.shape == (200,) and bad.flagged_clean.shape == (200,)
    # the clean twin: the trigger means nothing, triggered inputs look clean (FAR near 1); the FPR stays
    # near the FRR
    assert clean.far > 0.85 and bad.far < clean.far - 0.3       # measured 0.96 and 0.47
    assert clean.fpr < 0.15                                      # measured 0.04
    assert np.mean(clean.entropy_triggered[:, None] < clean.entropy_clean[None, :]) < 0.65
    import matplotlib

    matplotlib.use("Agg")
    ax = plot_entropies(bad)
    assert len(ax.patches) > 0
    import matplotlib.pyplot as plt

    plt.close(ax.figure)


def test_bad_inputs_are_named():
    x = np.zeros((4, 4, 4, 1), np.float32)
    model = _Linear()
    variables = numpy_init(model, x)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="overlays"):
        strip_entropy(model, variables, x, x[:2], key, n_overlays=3)
    with pytest.raises(ValueError, match="'x'"):
        strip_entropy(model, variables, np.zeros((2, 5, 5, 1), np.float32), x, key, n_overlays=2)
    with pytest.raises(ValueError, match="'x'"):
        strip_entropy(model, variables, np.full((2, 4, 4, 1), np.nan, np.float32), x, key, n_overlays=2)
    with pytest.raises(ValueError, match="x_triggered"):
        strip(model, variables, x, x, x, x + 2.0, key, StripConfig(n_overlays=2))
    with pytest.raises(ValueError, match="n_overlays"):
        StripConfig(n_overlays=0)
    with pytest.raises(ValueError, match="frr"):
        StripConfig(frr=0.0)
    with pytest.raises(ValueError, match="threshold"):
        StripConfig(threshold="mean")
    with pytest.raises(TypeError, match="config"):
        strip(model, variables, x, x, x, x, key, {"n_overlays": 2})
    with pytest.raises(TypeError, match="result"):
        plot_entropies({"threshold": 0.1})
