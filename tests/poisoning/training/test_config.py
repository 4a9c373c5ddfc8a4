"""TrainConfig: schedules, PyTorch-equivalent optimizers, head-only masks, validation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from poisoning.training import TrainConfig, make_optimizer, make_schedule


def test_schedules_step_cosine_and_warmup():
    step = make_schedule(TrainConfig(epochs=10, learning_rate=0.1, schedule="step", milestones=(5, 8)), 10)
    np.testing.assert_allclose([step(0), step(49), step(50), step(79), step(80), step(99)],
                               [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)
    cos = make_schedule(TrainConfig(epochs=4, learning_rate=0.2, schedule="cosine"), 5)
    np.testing.assert_allclose([cos(0), cos(10), cos(20)], [0.2, 0.1, 0.0], atol=1e-7)
    warm = make_schedule(TrainConfig(epochs=4, learning_rate=0.2, schedule="cosine", warmup_epochs=1), 5)
    np.testing.assert_allclose([warm(0), warm(2), warm(5), warm(20)], [0.0, 0.08, 0.2, 0.0], atol=1e-7)
    assert float(make_schedule(TrainConfig(learning_rate=0.3), 7)(123)) == pytest.approx(0.3)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_has_pytorch_semantics(nesterov):
    """torch.optim.SGD(lr, momentum=mu, weight_decay=wd, nesterov): g = grad + wd p; b = mu b + g;
    p -= lr * (g + mu b if nesterov else b)."""
    lr, mu, wd = 0.1, 0.9, 0.01
    cfg = TrainConfig(optimizer="nesterov" if nesterov else "sgd", learning_rate=lr, momentum=mu, weight_decay=wd)
    tx = make_optimizer(cfg, 1)
    p = jnp.asarray([1.0, -2.0])
    grads = [jnp.asarray([0.5, 0.25]), jnp.asarray([-1.0, 0.5]), jnp.asarray([0.2, 0.2])]
    state, ref, buf = tx.init(p), p, jnp.zeros(2)
    for g in grads:
        upd, state = tx.update(g, state, p)
        p = optax.apply_updates(p, upd)
        gt = g + wd * ref
        buf = mu * buf + gt
        ref = ref - lr * ((gt + mu * buf) if nesterov else buf)
    np.testing.assert_allclose(p, ref, rtol=1e-6)


def test_adam_adamw_and_head_only_masking():
    params = {"conv": {"kernel": jnp.ones(3)}, "head": {"kernel": jnp.ones(2)}}
    grads = jax.tree_util.tree_map(lambda a: 0.5 * a, params)
    adam = make_optimizer(TrainConfig(optimizer="adam", learning_rate=1e-2, weight_decay=0.1), 1)
    ref = optax.chain(optax.add_decayed_weights(0.1), optax.adam(1e-2))
    upd, _ = adam.update(grads, adam.init(params), params)
    want, _ = ref.update(grads, ref.init(params), params)
    for a, b in zip(jax.tree_util.tree_leaves(upd), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    adamw = make_optimizer(TrainConfig(optimizer="adamw", learning_rate=1e-2, weight_decay=0.1), 1)
    upd, _ = adamw.update(grads, adamw.init(params), params)
    assert not np.allclose(upd["conv"]["kernel"], want["conv"]["kernel"])  # decoupled decay differs
    head = make_optimizer(TrainConfig(trainable="head", weight_decay=0.1), 1)
    upd, _ = head.update(grads, head.init(params), params)
    assert float(jnp.max(jnp.abs(upd["conv"]["kernel"]))) == 0.0
    assert float(jnp.min(jnp.abs(upd["head"]["kernel"]))) > 0.0
    with pytest.raises(ValueError, match="head"):
        head.init({"conv": {"kernel": jnp.ones(3)}})


@pytest.mark.parametrize("kwargs, match", [
    (dict(epochs=0), "epochs"),
    (dict(batch_size=1.5), "batch_size"),
    (dict(optimizer="lbfgs"), "optimizer"),
    (dict(schedule="step"), "milestones"),
    (dict(schedule="linear"), "schedule"),
    (dict(milestones=(5, 3), schedule="step"), "increasing"),
    (dict(learning_rate=float("nan")), "learning_rate"),
    (dict(momentum=1.0), "momentum"),
    (dict(weight_decay=-1.0), "weight_decay"),
    (dict(compute_dtype="float16"), "compute_dtype"),
    (dict(trainable="backbone"), "trainable"),
    (dict(warmup_epochs=3, epochs=2), "warmup"),
    (dict(augment="cifar"), "augment"),
])
def test_bad_configs_are_rejected_with_the_field_name(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        TrainConfig(**kwargs)


def test_config_is_hashable_and_serializable():
    cfg = TrainConfig(milestones=[1, 2], schedule="step", epochs=3)
    assert cfg.milestones == (1, 2) and hash(cfg) == hash(cfg.replace())
    d = cfg.as_dict()
    assert d["milestones"] == [1, 2] and d["augment"] is None
