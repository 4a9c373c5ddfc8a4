"""Sleeper Agent: gradient matching toward a hidden trigger, model selection, retraining rounds."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from poisoning import triggers
from poisoning.attacks import geiping2021 as wb
from poisoning.attacks import souri2022 as sa


class TinyCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(3, (3, 3), strides=(2, 2))(x))
        return nn.Dense(4)(x.reshape(x.shape[0], -1))


def test_sleeper_agent_rounds_retrain_stay_in_the_ball_and_align_with_the_triggered_sources():
    rng = np.random.default_rng(0)
    net = TinyCNN()
    bases = jnp.asarray(rng.uniform(size=(4, 8, 8, 1)), jnp.float32)
    sources = jnp.asarray(rng.uniform(size=(3, 8, 8, 1)), jnp.float32)
    v = net.init(jax.random.key(0), bases)
    trig = triggers.Patch(pattern=jnp.asarray(rng.uniform(size=(3, 3, 1)), jnp.float32), mask=jnp.ones((3, 3)),
                          row=-3, col=-3)
    calls = []

    def retrain(poisons):
        calls.append(np.asarray(poisons))
        return jax.tree_util.tree_map(lambda a: a * 1.01, v)

    cfg = wb.BrewConfig(eps=0.1, steps=12, restarts=1, lr=0.02)
    res = sa.craft(net.apply, v, bases, sources, trig, 2, jax.random.key(1), cfg, rounds=3, retrain=retrain)
    assert len(calls) == 2 and res.history.shape == (12,)
    d = np.asarray(res.poisons - bases)
    assert np.abs(d).max() <= 0.1 + 1e-6 and float(res.poisons.min()) >= 0 and float(res.poisons.max()) <= 1
    patched = triggers.apply(trig, sources)
    y_t = jnp.full((3,), 2)
    start = wb.gradient_matching_loss(net.apply, v, bases, jnp.full((4,), 2), patched, y_t)
    end = wb.gradient_matching_loss(net.apply, v, res.poisons, jnp.full((4,), 2), patched, y_t)
    assert float(end) < float(start)
    # model selection: the candidate with the largest adversarial gradient
    cands = [v, jax.tree_util.tree_map(lambda a: 3.0 * a, v)]
    norms = [float(optax.tree_utils.tree_norm(wb.parameter_gradient(net.apply, c, patched, y_t))) for c in cands]
    assert sa.select_model(net.apply, cands, sources, trig, 2) == int(np.argmax(norms))
    with pytest.raises(ValueError, match="'retrain'"):
        sa.craft(net.apply, v, bases, sources, trig, 2, jax.random.key(1), cfg, rounds=2)
    with pytest.raises(ValueError, match="'rounds'"):
        sa.craft(net.apply, v, bases, sources, trig, 2, jax.random.key(1), cfg, rounds=0)
