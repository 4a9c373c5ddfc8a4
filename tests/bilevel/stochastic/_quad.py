"""A tiny float64 instance of benchopt's quadratic problem, shared by the tests (built once)."""

import functools

import jax.numpy as jnp
import numpy as np

from bilevel.stochastic import quadratic_benchmark


@functools.lru_cache(maxsize=None)
def small_quadratic():
    """n = 64 samples per level, dim z = 5, dim x = 3, mu = 0.2 (float64)."""
    return quadratic_benchmark(n_inner=64, n_outer=64, dim_inner=5, dim_outer=3, seed=0, dtype=jnp.float64, mu=0.2)


def exact_terms(bench, x):
    """Full-batch H, C (d_out x d_in), z*(x), grad_z f and grad_x f at (z*(x), x), from the data means."""
    di, do = bench.problem.inner_data, bench.problem.outer_data
    n, m = di["u"].shape[0], do["u"].shape[0]
    A = di["u"].T @ di["u"] / n
    C = di["p"].T @ di["q"] / n
    a = di["a"].mean(0)
    Ao, Bo, Co = do["u"].T @ do["u"] / m, do["w"].T @ do["w"] / m, do["p"].T @ do["q"] / m
    ao, bo = do["a"].mean(0), do["b"].mean(0)
    z = -jnp.linalg.solve(A, a + C.T @ x)
    gz = Ao @ z + Co.T @ x + ao
    gx = Bo @ x + Co @ z + bo
    return {"H": A, "C": C, "z": z, "gz": gz, "gx": gx,
            "hypergrad": gx - C @ jnp.linalg.solve(A, gz)}


def rel_distance(bench, x):
    x_star = bench.solution["outer"]
    return float(jnp.linalg.norm(x - x_star) / jnp.linalg.norm(bench.outer0 - x_star))


def assert_mean_close(draws, expected, z=6.0, atol=1e-12):
    """The Monte-Carlo mean of ``draws`` (first axis) equals ``expected`` within ``z`` standard errors."""
    draws = np.asarray(draws)
    mean = draws.mean(0)
    se = draws.std(0, ddof=1) / np.sqrt(draws.shape[0])
    err = np.abs(mean - np.asarray(expected))
    assert np.all(err <= z * se + atol), (err, se)
    return mean, se
