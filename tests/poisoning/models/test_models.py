"""poisoning.models: parameter counts against the published architectures, shapes, features, errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from poisoning.models import MODELS, count_params, default_input_shape, get_model

# The "rbg" generator compiles much faster on XLA:CPU than threefry (about 0.2 s per random draw of
# a new shape), which keeps these tests short; the models do not depend on the generator.
KEY = jax.random.key(0, impl="rbg")

# Parameter counts for 10 classes. Sources (each number is the one printed by, or derived layer by
# layer from, the published architecture; PyTorch counts parameters without BatchNorm buffers, as
# count_params does):
PUBLISHED = {
    # Gu et al. 2017, Table 1: conv1 16x1x5x5 (416), conv2 32x16x5x5 (12,832), fc1 512x512 (262,656),
    # fc2 512x10 (5,130).
    "badnets": 281_034,
    # LeCun et al. 1998 Sec. II.B with full C3 connectivity and a dense output: C1 156, C3 2,416,
    # C5 48,120, F6 10,164, output 850 (the common "LeNet-5 ~ 60k" count: 61,706).
    "lenet5": 61_706,
    # Geiping et al. 2021, forest/victims/models.py ConvNet(width=32): 896 + 18,496 + 36,928 + 73,856
    # + 147,584 + 11,530.
    "convnet": 289_290,
    # Kuang Liu's pytorch-cifar ResNet18 (the ResNet-18 of Schwarzschild et al. 2021): 11,173,962
    # ("11.17 M").
    "resnet18": 11_173_962,
    # He et al. 2016, Sec. 4.2 / Table 6: ResNet-20 "0.27M" (option A shortcuts: 269,722, the count
    # of akamaster/pytorch_resnet_cifar10).
    "resnet20": 269_722,
    # Kuang Liu's PreActResNet18 (no BN after the stem, none before the pooling): 11,171,146.
    "preact_resnet18": 11_171_146,
    # Kuang Liu's / the benchmark's VGG('VGG11'): 8 conv+BN layers and one 512x10 dense: 9,231,114.
    "vgg11": 9_231_114,
    # Kuang Liu's / the benchmark's CIFAR MobileNetV2: 2,296,922.
    "mobilenetv2": 2_296_922,
    # DPA's NetworkInNetwork (Gidaris et al. 2018 code, 3 stages, 3 input channels): 1,005,642.
    "nin": 1_005_642,
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_parameter_count_matches_published_architecture(name):
    assert count_params(get_model(name, 10), default_input_shape(name)) == PUBLISHED[name]


def test_parameter_count_variants():
    # ResNet-20 with 1x1 projection shortcuts ("option B"): + 16*32 + 32*64 weights + 2*(32+64) BN.
    assert count_params(get_model("resnet20", shortcut="projection"), (32, 32, 3)) == 272_474
    # NiN on MNIST (1 input channel): 25*192*2 = 9,600 fewer weights.
    assert count_params(get_model("nin"), (28, 28, 1)) == 1_005_642 - 9_600
    # CIFAR-100 heads: + 90 * (512 + 1).
    assert count_params(get_model("resnet18", 100), (32, 32, 3)) == 11_173_962 + 90 * 513
    # BadNets per-layer check through the knobs: width 16 -> 8 halves conv1, quarters conv2.
    assert count_params(get_model("badnets", width=8), (28, 28, 1)) == (8 * 25 + 8) + (16 * 8 * 25 + 16) + (
        256 * 512 + 512) + 5130


TINY = {
    "badnets": dict(width=2, hidden=8),
    "lenet5": {},
    "convnet": dict(width=2, batch_norm=True),
    "resnet18": dict(width=2, stage_sizes=(1, 1)),
    "resnet20": dict(width=2, stage_sizes=(1, 1)),
    "preact_resnet18": dict(width=2, stage_sizes=(1, 1), final_norm=True),
    "vgg11": dict(width=1, config=(2, "M", 4, "M")),
    "mobilenetv2": dict(width_mult=0.25, config=((1, 8, 1, 1), (2, 8, 1, 2)), last_channels=16),
    "nin": dict(channels=(4, 4, 4)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_logits_features_and_head(name):
    c = default_input_shape(name)[-1]
    model = get_model(name, 3, **TINY[name])
    x = jnp.asarray(np.random.default_rng(0).random((2, 16, 16, c)), jnp.float32)  # small images: fast
    variables = jax.jit(model.init)(KEY, x)
    logits, feats = jax.jit(lambda v, x: (model.apply(v, x), model.apply(v, x, features=True)))(variables, x)
    assert logits.shape == (2, 3) and feats.ndim == 2 and feats.shape[0] == 2
    head = variables["params"]["head"]
    assert head["kernel"].shape == (feats.shape[1], 3)
    np.testing.assert_allclose(feats @ head["kernel"] + head["bias"], logits, rtol=1e-5, atol=1e-5)
    assert bool(jnp.all(jnp.isfinite(logits)))


def test_batchnorm_train_mode_updates_running_statistics():
    model = get_model("resnet20", 4, width=2, stage_sizes=(1,))
    x = jnp.asarray(np.random.default_rng(1).random((4, 8, 8, 3)), jnp.float32)
    variables = jax.jit(model.init)(KEY, x)
    _, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
    before = variables["batch_stats"]["stem_bn"]["mean"]
    after = updates["batch_stats"]["stem_bn"]["mean"]
    assert not np.allclose(before, after)
    # inference mode uses (and does not change) the running statistics: deterministic per example
    apply = jax.jit(model.apply)
    np.testing.assert_allclose(apply(variables, x)[:1], apply(variables, x[:1]), rtol=1e-5, atol=1e-6)


def test_reshape_pooling_equals_flax_pooling():
    from poisoning.models._common import avg_pool, max_pool

    x = jnp.asarray(np.random.default_rng(4).random((2, 11, 10, 3)))  # 11 rows: the last one is dropped
    np.testing.assert_allclose(avg_pool(x, 2), nn.avg_pool(x, (2, 2), (2, 2)), rtol=1e-12)
    np.testing.assert_allclose(max_pool(x, 3), nn.max_pool(x, (3, 3), (3, 3)), rtol=1e-12)
    g1 = jax.grad(lambda x: jnp.sum(jnp.sin(max_pool(x, 2))))(x)
    g2 = jax.grad(lambda x: jnp.sum(jnp.sin(nn.max_pool(x, (2, 2), (2, 2)))))(x)
    np.testing.assert_allclose(g1, g2, rtol=1e-12)  # no ties in random data: the same subgradient


def test_normalization_is_the_first_operation():
    mean, std = (0.5,), (0.25,)
    plain = get_model("badnets", 10, width=2, hidden=4)
    normed = get_model("badnets", 10, width=2, hidden=4, mean=mean, std=std)
    x = jnp.asarray(np.random.default_rng(2).random((2, 28, 28)), jnp.float32)  # (N, H, W) accepted
    v = jax.jit(plain.init)(KEY, x)
    np.testing.assert_allclose(jax.jit(normed.apply)(v, x), jax.jit(plain.apply)(v, (x - 0.5) / 0.25), rtol=1e-5, atol=1e-6)


def test_bad_arguments_have_clear_errors():
    with pytest.raises(ValueError, match="'name'"):
        get_model("alexnet")
    with pytest.raises(ValueError, match="num_classes"):
        get_model("badnets", 0)
    with pytest.raises(TypeError, match="unknown knobs"):
        get_model("badnets", 10, depth=3)
    model = get_model("badnets", 10, width=2, hidden=4)
    with pytest.raises(ValueError, match="'x'"):
        model.init(KEY, jnp.zeros((28, 28)))
    with pytest.raises(TypeError, match="floating"):
        model.init(KEY, jnp.zeros((1, 28, 28, 1), jnp.uint8))
    with pytest.raises(ValueError, match="channels"):
        get_model("badnets", 10, mean=(0.1, 0.2), std=(1.0, 1.0)).init(KEY, jnp.zeros((1, 28, 28, 1)))
    with pytest.raises(ValueError, match="conv"):
        get_model("badnets", 10, conv="fast").init(KEY, jnp.zeros((1, 28, 28, 1)))


def test_lax_and_auto_convolutions_agree_and_lax_supports_forward_mode():
    x = jnp.asarray(np.random.default_rng(3).random((2, 6, 6, 3)))  # float64
    auto = get_model("resnet20", 5, width=2, stage_sizes=(1, 1))
    plain = get_model("resnet20", 5, width=2, stage_sizes=(1, 1), conv="lax")
    v = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), jax.jit(auto.init)(KEY, x))

    @jax.jit
    def both(x, t):
        f_auto = lambda x: jnp.sum(jnp.tanh(auto.apply(v, x)))  # noqa: E731
        f_plain = lambda x: jnp.sum(jnp.tanh(plain.apply(v, x)))  # noqa: E731
        return (auto.apply(v, x), plain.apply(v, x), jax.grad(f_auto)(x), jax.grad(f_plain)(x),
                jax.jvp(f_plain, (x,), (t,))[1])

    t = jnp.ones_like(x)
    ya, yp, ga, gp, jvp = both(x, t)
    np.testing.assert_allclose(ya, yp, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ga, gp, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(jvp, jnp.vdot(ga, t), rtol=1e-10)


def test_module_is_hashable_for_static_arguments():
    assert hash(get_model("resnet18", 10, width=4)) == hash(get_model("resnet18", 10, width=4))
    assert isinstance(get_model("vgg11"), nn.Module)
