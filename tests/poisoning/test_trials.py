"""map_trials: vmapped, sharded trials give what a loop over trials gives."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from poisoning.trials import map_trials, trial_mesh


def _trial(trial, scale):
    x, k = trial["x"], trial["k"]
    return {"sum": scale * jnp.sum(x) + k, "x2": x * x}


def test_chunks_and_padding_equal_a_loop():
    rng = np.random.default_rng(0)
    trials = {"x": rng.standard_normal((5, 3)), "k": np.arange(5)}
    out = map_trials(_trial, trials, np.asarray(2.0), chunk=2)  # chunks 2, 2, 1 (the last one padded)
    assert out["sum"].shape == (5,) and out["x2"].shape == (5, 3)
    for i in range(5):
        ref = _trial({"x": trials["x"][i], "k": trials["k"][i]}, 2.0)
        np.testing.assert_allclose(out["sum"][i], ref["sum"], rtol=1e-12)
        np.testing.assert_allclose(out["x2"][i], ref["x2"], rtol=1e-12)
    seen = []
    map_trials(_trial, trials, np.asarray(2.0), chunk=3, callback=lambda done, total: seen.append((done, total)))
    assert seen == [(3, 5), (5, 5)]


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="'trials'"):
        map_trials(_trial, {"x": np.zeros((3, 2)), "k": np.zeros(2)}, 1.0)
    with pytest.raises(ValueError, match="'chunk'"):
        map_trials(_trial, {"x": np.zeros((3, 2)), "k": np.zeros(3)}, 1.0, chunk=0)
    with pytest.raises(ValueError, match="'devices'"):
        trial_mesh([])


_SHARDED = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from poisoning.attacks import aghakhani2021
    from poisoning.trials import map_trials
    from tests.poisoning.test_transfer import conv_features
    assert len(jax.devices()) == 4, jax.devices()
    rng = np.random.default_rng(0)
    trials = {"bases": rng.uniform(size=(5, 3, 8, 8, 3)).astype(np.float32),
              "target": rng.uniform(size=(5, 8, 8, 3)).astype(np.float32)}
    def craft(tr):
        r = aghakhani2021.craft(conv_features, tr["bases"], tr["target"], steps=15)
        return {"poisons": r.poisons, "loss": r.loss}
    out = map_trials(craft, trials)                       # 5 trials padded to 8, 2 per device
    one = jax.jit(craft)
    for i in range(5):
        r = one({k: v[i] for k, v in trials.items()})
        np.testing.assert_allclose(out["poisons"][i], np.asarray(r["poisons"]), atol=1e-6)
        np.testing.assert_allclose(out["loss"][i], float(r["loss"]), rtol=1e-5)
    print("OK", len(jax.devices()))
""")


def test_sharded_over_four_devices_equals_one_trial_at_a_time():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    res = subprocess.run([sys.executable, "-c", _SHARDED], env=env, cwd=root, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "OK 4" in res.stdout
