"""Same seed, same bits; ``jit(vmap(step))`` over seeds equals a Python loop over seeds; the driver."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilevel.stochastic import (BOME, F2SA, FSLA, MRBO, SABA, SOBA, SOLVERS, TTSA, VRBO, AmIGO, ImplicitGD, StocBiO,
                                UnrolledGD, run, run_seeds, time_to_target)
from bilevel.stochastic.driver import make_chunk
from tests.bilevel.stochastic._quad import small_quadratic

SMALL = dict(batch_size=16, sampling="shuffle")
SOLVER_CASES = [StocBiO(n_inner_steps=2, n_neumann_steps=2, **SMALL), AmIGO(n_inner_steps=2, **SMALL), SOBA(**SMALL),
                SABA(**SMALL), MRBO(n_neumann_steps=2, **SMALL), VRBO(n_inner_steps=2, n_neumann_steps=2, period_frac=0.5, **SMALL),
                TTSA(n_neumann_steps=3, **SMALL), F2SA(n_inner_steps=2, **SMALL), BOME(n_inner_steps=2, batch_size=16),
                FSLA(**SMALL), ImplicitGD(n_inner_steps=5, adjoint_maxiter=5), UnrolledGD(n_inner_steps=3)]
STEPS = 4


def test_every_solver_is_covered():
    assert {type(s).__name__ for s in SOLVER_CASES} == set(SOLVERS)


@pytest.mark.parametrize("solver", SOLVER_CASES, ids=[s.name for s in SOLVER_CASES])
def test_same_seed_same_bits_and_vmap_equals_loop(solver):
    bench = small_quadratic()
    p = bench.problem
    chunk = jax.jit(make_chunk(solver, STEPS))
    init = lambda k: solver.init(p, bench.inner0, bench.outer0, k)
    seeds = [3, 4, 5]
    keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
    states = jax.vmap(init)(keys)
    pick = lambda i: jax.tree_util.tree_map(lambda a: a[i], states)
    loop = [chunk(p, pick(i)) for i in range(len(seeds))]
    again = chunk(p, pick(0))
    for a, b in zip(jax.tree_util.tree_leaves(loop[0]), jax.tree_util.tree_leaves(again)):
        np.testing.assert_array_equal(a, b)  # bit for bit
    batched = jax.jit(jax.vmap(make_chunk(solver, STEPS), in_axes=(None, 0)))(p, states)
    for i in range(len(seeds)):
        for a, b in zip(jax.tree_util.tree_leaves(loop[i]), jax.tree_util.tree_leaves(batched)):
            np.testing.assert_allclose(b[i], a, rtol=1e-10, atol=1e-12)
    # different seeds draw different batches (stochastic solvers only)
    if getattr(solver, "batch_size", None) is not None:
        assert not np.allclose(loop[0].outer, loop[1].outer)
    assert int(loop[0].step) == STEPS


def test_driver_curve_json_and_time_to_target(tmp_path):
    bench = small_quadratic()
    path = tmp_path / "run.json"
    res = run(SABA(step_size=0.2, outer_ratio=5, batch_size=16), bench, seed=1, max_iter=300, eval_every=100,
              progress=False, json_path=path)
    assert [c["iteration"] for c in res.checkpoints] == [0, 100, 200, 300]
    times = [c["time"] for c in res.checkpoints]
    assert times[0] == 0.0 and all(b > a for a, b in zip(times, times[1:]))
    first, last = res.checkpoints[0], res.checkpoints[-1]
    assert last["suboptimality"] < first["suboptimality"]
    # SABA: per iteration 1 inner gradient, 1 HVP, 1 cross product (batch 16), 1 outer gradient (batch 16)
    assert last["calls"] == {"grad_inner": 300, "grad_outer": 300, "hvp": 300, "cross": 300}
    assert last["samples"] == 300 * 4 * 16
    for key in ("inner_residual", "adjoint_residual", "outer", "hypergrad_norm"):
        assert np.isfinite(last[key])
    on_disk = json.loads(path.read_text())
    assert on_disk["solver"] == "SABA" and len(on_disk["checkpoints"]) == 4
    target = 0.5 * (first["outer"] + last["outer"])
    t = time_to_target(res, target)
    assert t is not None and 0 < t <= times[-1]
    assert time_to_target(res, -1e9) is None
    stopped = run(SABA(step_size=0.2, outer_ratio=5, batch_size=16), bench, seed=1, max_iter=300, eval_every=100,
                  progress=False, stop_at=target)
    assert stopped.checkpoints[-1]["outer"] <= target and len(stopped.checkpoints) <= 4


def test_run_seeds_vmap_matches_sequential():
    bench = small_quadratic()
    solver = SOBA(batch_size=16)
    seq = run_seeds(solver, bench, [0, 1], max_iter=20, eval_every=10, progress=False)
    vm = run_seeds(solver, bench, [0, 1], vmap=True, max_iter=20, eval_every=10, progress=False)
    for a, b in zip(seq, vm):
        assert a.seed == b.seed and b.vmapped
        np.testing.assert_allclose(b.checkpoints[-1]["outer"], a.checkpoints[-1]["outer"], rtol=1e-10)
        assert b.checkpoints[-1]["calls"] == a.checkpoints[-1]["calls"]
