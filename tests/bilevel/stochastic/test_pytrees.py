"""Solvers work on pytree variables: a dict-structured copy of the quadratic gives the same iterates."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilevel.stochastic import SABA, ImplicitGD, make_problem
from bilevel.stochastic.driver import make_chunk
from bilevel.stochastic.problems import quadratic_inner_loss
from tests.bilevel.stochastic._quad import small_quadratic


def _split(z):
    return {"head": z[:2], "tail": z[2:]}


def _join(tree):
    return jnp.concatenate([tree["head"], tree["tail"]])


def _tree_loss(z, x, batch):
    return quadratic_inner_loss(_join(z), x["x"], batch)


@pytest.mark.parametrize("solver", [SABA(batch_size=16),
                                    ImplicitGD(n_inner_steps=5, adjoint_maxiter=5)], ids=lambda s: s.name)
def test_pytree_variables_match_flat_arrays(solver):
    bench = small_quadratic()
    p = bench.problem
    tree_problem = make_problem(_tree_loss, _tree_loss, p.inner_data, p.outer_data, name="tree")
    flat = jax.jit(make_chunk(solver, 3))(p, solver.init(p, bench.inner0, bench.outer0, 7))
    tree = jax.jit(make_chunk(solver, 3))(
        tree_problem, solver.init(tree_problem, _split(bench.inner0), {"x": bench.outer0}, 7))
    np.testing.assert_allclose(_join(tree.inner), flat.inner, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(tree.outer["x"], flat.outer, rtol=1e-9, atol=1e-12)
    assert int(jnp.sum(tree.tape.calls)) == int(jnp.sum(flat.tape.calls))
