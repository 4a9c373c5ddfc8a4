"""Fine-pruning: the channel mask equals zeroing the layer's filters (BadNets CNN and LeNet-5), the mean
activations equal a forward pass written by hand, the search stops at the allowed accuracy drop, and on a
backdoored network fine-pruning lowers the attack success while keeping the clean accuracy."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from poisoning.defenses.fine_pruning import (
    ChannelMask,
    FinePruningConfig,
    channel_activations,
    conv_layers,
    fine_pruning,
    prune_by_activation,
)
from poisoning.models import BadNetsCNN, LeNet5
from poisoning.models._common import avg_pool
from poisoning.training import TrainConfig, predict
from tests.poisoning.defenses._backdoor_models import backdoored_digits, numpy_init

pytestmark = pytest.mark.xla_optimized   # run-bound: trains networks (tests/conftest.py)


@pytest.mark.parametrize("model,layer,size", [(BadNetsCNN(num_classes=10, width=4, hidden=16), "conv2", 16),
                                              (LeNet5(num_classes=10, pad=4), "c3", 8)])
def test_channel_mask_is_zeroing_the_filters(model, layer, size):
    x = np.random.default_rng(0).uniform(size=(3, size, size, 1)).astype(np.float32)
    variables = numpy_init(model, x)
    assert conv_layers(model, x)[-1] == layer
    C = variables["params"][layer]["bias"].shape[0]
    keep = np.arange(C) % 3 != 1
    zeroed = jax.tree_util.tree_map(lambda a: a, variables)
    p = dict(zeroed["params"])
    p[layer] = {"kernel": p[layer]["kernel"] * keep, "bias": p[layer]["bias"] * keep}
    want = model.apply({"params": p}, x)
    got = ChannelMask(model, layer, tuple(keep)).apply(variables, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(model.apply(variables, x), want)          # the mask does something
    # the pruned channels read 0 in the activations of the masked model
    acts = np.asarray(channel_activations(ChannelMask(model, layer, tuple(keep)), variables, x, layer=layer))
    assert np.all(acts[~keep] == 0) and np.any(acts[keep] > 0)


def test_activations_match_a_hand_written_forward_pass():
    model = BadNetsCNN(num_classes=10, width=4, hidden=16)
    x = np.random.default_rng(0).uniform(size=(7, 16, 16, 1)).astype(np.float32)
    variables = numpy_init(model, x)
    p = variables["params"]
    h = nn.relu(nn.Conv(4, (5, 5), padding="VALID").apply({"params": p["conv1"]}, x))
    h = nn.relu(nn.Conv(8, (5, 5), padding="VALID").apply({"params": p["conv2"]}, avg_pool(h, 2)))
    want = np.asarray(h).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(channel_activations(model, variables, x, batch_size=3), want, rtol=1e-5, atol=1e-7)


def test_search_and_fine_pruning_on_a_backdoored_network():
    b = backdoored_digits()
    drop = 0.04
    pr = prune_by_activation(b.model, b.backdoored, b.x_val, b.y_val, max_accuracy_drop=drop)
    assert pr.layer == "conv2" and pr.activations.shape == (32,) and pr.accuracies.shape == (32,)
    assert np.all(np.diff(pr.activations[pr.order]) >= 0)
    base = float(np.mean(np.asarray(predict(b.model, b.backdoored, b.x_val)).argmax(-1) == b.y_val))
    assert pr.accuracies[0] == pytest.approx(base)
    k = pr.n_pruned
    assert 0 < k < 32 and pr.keep.sum() == 32 - k and not pr.keep[pr.order[:k]].any()
    assert np.all(pr.accuracies[:k + 1] >= base - drop - 1e-9)               # every step within the drop
    assert k == 31 or pr.accuracies[k + 1] < base - drop                     # and the next one breaks it
    cfg = FinePruningConfig(max_accuracy_drop=drop,
                            finetune=TrainConfig(epochs=10, batch_size=50, optimizer="sgd", learning_rate=0.03))
    out = fine_pruning(b.model, b.backdoored, b.x_val, b.y_val, jax.random.key(3), cfg)
    assert out.model.keep == tuple(pr.keep.tolist()) and out.model.n_pruned == k
    acc0, asr0 = b.accuracy(b.backdoored), b.attack_success(b.backdoored)
    acc1, asr1 = b.accuracy(out.state, out.model), b.attack_success(out.state, out.model)
    assert asr0 > 0.9 and asr1 < 0.5           # measured 0.99 -> 0.12 (pruning alone: 0.91)
    assert acc1 >= acc0 - drop                 # measured 0.953 -> 0.933
    # the mask stays fixed through the fine-tuning: the pruned channels are still silent
    acts = np.asarray(channel_activations(out.model, out.state, b.x_val))
    assert np.all(acts[~pr.keep] == 0)


def test_on_the_clean_network_pruning_keeps_the_clean_accuracy():
    # pruning only (the fine-tuning of a new mask would be one more compilation of the training loop)
    b = backdoored_digits()
    out = fine_pruning(b.model, b.clean, b.x_val, b.y_val, jax.random.key(3), FinePruningConfig(finetune=None))
    assert out.pruning.n_pruned > 0 and out.state is b.clean
    assert b.accuracy(out.state, out.model) >= b.accuracy(b.clean) - 0.04 - 0.03   # measured 0.955 -> 0.929
    assert b.attack_success(out.state, out.model) < 0.05


def test_bad_inputs_are_named():
    model = BadNetsCNN(num_classes=10, width=4, hidden=16)
    x = np.zeros((4, 16, 16, 1), np.float32)
    y = np.zeros(4, np.int32)
    variables = numpy_init(model, x)
    with pytest.raises(ValueError, match="max_accuracy_drop"):
        prune_by_activation(model, variables, x, y, max_accuracy_drop=4)
    with pytest.raises(ValueError, match="y_val"):
        prune_by_activation(model, variables, x, y[:3])
    with pytest.raises(ValueError, match="y_val"):
        prune_by_activation(model, variables, x, y + 10)
    with pytest.raises(ValueError, match="x_val"):
        prune_by_activation(model, variables, np.full_like(x, np.nan), y)
    with pytest.raises(ValueError, match="layer"):
        channel_activations(model, variables, x, layer="conv9")
    with pytest.raises(ValueError, match="keep"):
        ChannelMask(model, "conv2", ())
    with pytest.raises(TypeError, match="finetune"):
        FinePruningConfig(finetune={"epochs": 1})
    with pytest.raises(TypeError, match="state"):
        fine_pruning(model, variables, x, y, jax.random.key(0))
