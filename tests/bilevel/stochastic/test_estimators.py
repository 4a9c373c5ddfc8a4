"""Hypergradient estimators: their Monte-Carlo means match the documented expectations.

On the quadratic problem the Hessian H, the cross matrix C and the exact hypergradient are known.
With i.i.d. block sampling (b divides n) every estimator's expectation has a closed form (see
bilevel/stochastic/estimators.py); the mean of many draws must match it within a few standard
errors, and the biased ones must be told apart from the exact hypergradient.
"""

import jax
import jax.numpy as jnp
import numpy as np

from bilevel.stochastic import Batching, new_tape
from bilevel.stochastic import estimators as E
from bilevel.stochastic import oracles as O
from bilevel.stochastic.problem import take_rows
from tests.bilevel.stochastic._quad import assert_mean_close, exact_terms, small_quadratic

N_DRAWS = 4000
BT = Batching(16, 16, "block")


def _draws(fn):
    keys = jnp.arange(N_DRAWS)
    return np.asarray(jax.jit(jax.vmap(lambda k: fn(new_tape(jax.random.PRNGKey(k)), k)))(keys))


def _setup():
    bench = small_quadratic()
    x = bench.outer0 + 0.3
    ex = exact_terms(bench, x)
    return bench, x, ex


def test_neumann_expectation_and_bias():
    bench, x, ex = _setup()
    eta, q = 0.3, 3
    draws = _draws(lambda tape, k: E.hypergradient_estimate(bench.problem, BT, ex["z"], x, tape, method="neumann",
                                                            step=eta, n_steps=q)[0])
    H, I = ex["H"], jnp.eye(5)
    v_mean = jnp.linalg.solve(H, (I - jnp.linalg.matrix_power(I - eta * H, q + 1)) @ ex["gz"])
    expected = np.asarray(ex["gx"] - ex["C"] @ v_mean)
    _, se = assert_mean_close(draws, expected)
    # the documented truncation bias is large enough for this test to tell it from the exact hypergradient
    assert np.abs(expected - np.asarray(ex["hypergrad"])).max() > 6 * se.max()


def test_random_neumann_expectation():
    bench, x, ex = _setup()
    eta, q = 0.3, 8
    draws = _draws(lambda tape, k: E.hypergradient_estimate(
        bench.problem, BT, ex["z"], x, tape, method="random_neumann", step=eta, n_steps=q,
        key=jax.random.PRNGKey(k + 10**6))[0])
    H, I = ex["H"], jnp.eye(5)
    v_mean = jnp.linalg.solve(H, (I - jnp.linalg.matrix_power(I - eta * H, q)) @ ex["gz"])
    assert_mean_close(draws, ex["gx"] - ex["C"] @ v_mean)


def test_sgd_adjoint_expectation_and_warm_start_unbiased():
    bench, x, ex = _setup()
    eta, k = 0.3, 5
    v_star = jnp.linalg.solve(ex["H"], ex["gz"])
    v0 = jnp.zeros(5)
    draws = _draws(lambda tape, i: E.sgd_adjoint(bench.problem, BT, ex["z"], x, v0, ex["gz"], tape, eta, k)[0])
    I = jnp.eye(5)
    assert_mean_close(draws, v_star + jnp.linalg.matrix_power(I - eta * ex["H"], k) @ (v0 - v_star))
    # warm-started at the solution, the estimate is unbiased for v*
    draws = _draws(lambda tape, i: E.sgd_adjoint(bench.problem, BT, ex["z"], x, v_star, ex["gz"], tape, eta, k)[0])
    assert_mean_close(draws, v_star)
    # and so is the full hypergradient built on it
    draws = _draws(lambda tape, i: E.hypergradient_estimate(bench.problem, BT, ex["z"], x, tape, method="sgd",
                                                            step=eta, n_steps=k, v0=v_star)[0])
    # outer batch noise enters b = grad_z f; E[v] = v* still (linear in b), so E = exact hypergradient
    assert_mean_close(draws, ex["hypergrad"])


def test_cg_adjoint_has_the_jensen_bias():
    bench, x, ex = _setup()
    n_blocks = 64 // 16
    expected = []
    for j in range(n_blocks):  # E_xi[H_xi^{-1}] b by enumerating the blocks
        batch = take_rows(bench.problem.inner_data, jnp.arange(16 * j, 16 * (j + 1)))
        Hj = jax.jacfwd(lambda z: O.grad_inner(bench.problem, z, x, batch))(ex["z"])
        expected.append(jnp.linalg.solve(Hj, ex["gz"]))
    expected = jnp.mean(jnp.stack(expected), 0)
    draws = _draws(lambda tape, i: E.cg_adjoint(bench.problem, BT, ex["z"], x, ex["gz"], tape, n_steps=10)[0])
    assert_mean_close(draws, expected)
    v_star = np.asarray(jnp.linalg.solve(ex["H"], ex["gz"]))
    assert np.abs(np.asarray(expected) - v_star).max() > 1e-2  # the documented bias is not zero here


def test_conjugate_gradient_solves_spd_system():
    rng = np.random.default_rng(0)
    M = rng.standard_normal((6, 6))
    A = jnp.asarray(M @ M.T + np.eye(6))
    b = jnp.asarray(rng.standard_normal(6))
    v, k = E.conjugate_gradient(lambda u: A @ u, b, jnp.zeros(6), 50, tol=1e-12)
    np.testing.assert_allclose(A @ v, b, atol=1e-9)
    assert int(k) <= 8
    # zero right-hand side: no division by zero
    v0, _ = E.conjugate_gradient(lambda u: A @ u, jnp.zeros(6), jnp.zeros(6), 5)
    assert np.all(np.asarray(v0) == 0)


def test_implicit_direction_unbiased_at_fixed_adjoint():
    bench, x, ex = _setup()
    v = jnp.linspace(-1.0, 1.0, 5)
    draws = _draws(lambda tape, i: E.implicit_direction(bench.problem, BT, ex["z"], x, v, tape)[0])
    assert_mean_close(draws, ex["gx"] - ex["C"] @ v)


def test_uniform_rows_unbiased_for_any_n():
    """'uniform' sampling is unbiased even when b does not divide n (here 64 rows, b = 10)."""
    bench, x, ex = _setup()
    bt = Batching(10, 10, "uniform")
    draws = _draws(lambda tape, i: O.grad_inner(bench.problem, ex["z"] + 0.1, x, E.draw_inner(bench.problem, bt, tape)[0]))
    full = O.grad_inner(bench.problem, ex["z"] + 0.1, x, bench.problem.inner_data)
    assert_mean_close(draws, full)


def test_saga_direction_unbiased_given_memory():
    rng = np.random.default_rng(1)
    n_blocks, d = 4, 3
    table = jnp.asarray(rng.standard_normal((n_blocks, d)))
    mean = table.mean(0)
    new = jnp.asarray(rng.standard_normal((n_blocks, d)))  # the fresh value each block would give
    dirs = [E.saga_update(table, mean, new[j], j, 1.0 / n_blocks)[0] for j in range(n_blocks)]
    np.testing.assert_allclose(np.mean(dirs, 0), new.mean(0), atol=1e-12)  # exact expectation over blocks
    _, mem, avg = E.saga_update(table, mean, new[2], 2, 1.0 / n_blocks)
    np.testing.assert_allclose(avg, mem.mean(0), atol=1e-12)  # running average stays the table's mean


def test_storm_and_spider_updates():
    d, new, old = jnp.array([1.0, 2.0]), jnp.array([3.0, 5.0]), jnp.array([2.0, 1.0])
    np.testing.assert_allclose(E.storm_update(d, new, old, 1.0), new)  # eta = 1: plain SGD
    np.testing.assert_allclose(E.storm_update(d, new, old, 0.0), d + new - old)  # eta = 0: SPIDER
    np.testing.assert_allclose(E.spider_update(d, new, old), d + new - old)
