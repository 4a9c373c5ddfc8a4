"""Bad input fails early with an error naming the argument; the problem builders check their data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilevel.stochastic import (SABA, SOBA, SOLVERS, StocBiO, auc, corrupt_labels, datacleaning_benchmark,
                                logreg_benchmark, make_problem, quadratic_benchmark, run)
from bilevel.stochastic.problems import quadratic_inner_loss
from tests.bilevel.stochastic._quad import small_quadratic


@pytest.mark.parametrize("name", sorted(SOLVERS))
@pytest.mark.parametrize("value", [0.0, -0.1, float("nan"), float("inf")])
def test_step_size_must_be_positive_and_finite(name, value):
    with pytest.raises(ValueError, match="step_size"):
        SOLVERS[name](step_size=value)


@pytest.mark.parametrize("kwargs,arg", [
    ({"batch_size": 0}, "batch_size"), ({"batch_size": 2.5}, "batch_size"), ({"sampling": "random"}, "sampling"),
    ({"outer_ratio": 0.0}, "outer_ratio"), ({"n_inner_steps": 0}, "n_inner_steps"),
    ({"n_neumann_steps": -1}, "n_neumann_steps"),
])
def test_bad_hyperparameters_name_the_argument(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        StocBiO(**kwargs)


def test_saba_needs_blocks():
    with pytest.raises(ValueError, match="sampling"):
        SABA(sampling="uniform")


def test_bad_start_point_names_the_argument():
    bench = small_quadratic()
    p = bench.problem
    with pytest.raises(ValueError, match="inner0"):
        SOBA().init(p, jnp.zeros(4), bench.outer0, 0)  # wrong shape
    with pytest.raises(ValueError, match="outer0"):
        SOBA().init(p, bench.inner0, jnp.zeros(4), 0)
    with pytest.raises(ValueError, match="outer0"):
        SOBA().init(p, bench.inner0, jnp.zeros((3, 2)), 0)
    with pytest.raises(ValueError, match="inner0"):
        SOBA().init(p, bench.inner0.at[0].set(jnp.nan), bench.outer0, 0)
    with pytest.raises(ValueError, match="outer0"):
        SOBA().init(p, bench.inner0, jnp.array([1, 2, 3]), 0)  # integer
    # under jit the NaN check still fires (a host callback)
    with pytest.raises(Exception, match="NaN"):
        jax.block_until_ready(jax.jit(lambda z: SOBA().init(p, z, bench.outer0, 0).inner)(
            bench.inner0.at[1].set(jnp.nan)))


def test_problem_data_checks():
    X = np.ones((5, 2))
    with pytest.raises(ValueError, match="inner_data"):
        make_problem(quadratic_inner_loss, quadratic_inner_loss, {"a": X, "b": np.ones((4, 2))}, {"a": X})
    with pytest.raises(ValueError, match="outer_data"):
        make_problem(quadratic_inner_loss, quadratic_inner_loss, {"a": X}, {"a": np.full((5, 2), np.nan)})
    with pytest.raises(TypeError, match="inner_loss"):
        make_problem(None, quadratic_inner_loss, {"a": X}, {"a": X})
    with pytest.raises(ValueError, match="dim_inner"):
        quadratic_benchmark(dim_inner=0)
    with pytest.raises(ValueError, match="mu"):
        quadratic_benchmark(mu=-1.0)
    with pytest.raises(ValueError, match="X_val"):
        logreg_benchmark(np.ones((10, 3)), np.r_[np.zeros(5), np.ones(5)], np.ones((4, 2)), np.ones(4))
    with pytest.raises(ValueError, match="reg"):
        logreg_benchmark(np.ones((10, 3)), np.r_[np.zeros(5), np.ones(5)], np.ones((4, 3)), np.ones(4), reg="l1")


def test_run_needs_a_budget():
    bench = small_quadratic()
    with pytest.raises(ValueError, match="max_iter"):
        run(SOBA(), bench)
    with pytest.raises(ValueError, match="max_time"):
        run(SOBA(), bench, max_time=-1.0)
    with pytest.raises(ValueError, match="eval_every"):
        run(SOBA(), bench, max_iter=10, eval_every=0)


def test_diverging_run_is_flagged():
    bench = small_quadratic()
    res = run(SOBA(step_size=50.0, inner_exponent=0.0, outer_exponent=0.0, batch_size=16), bench, max_iter=400,
              eval_every=50, progress=False)
    assert res.diverged and len(res.checkpoints) < 9


def test_quadratic_closed_form_is_stationary():
    bench = small_quadratic()
    m = bench.metrics(bench.solution["inner"], bench.solution["outer"])
    assert float(m["hypergrad_norm"]) < 1e-8 and abs(float(m["suboptimality"])) < 1e-10
    assert float(m["inner_residual"]) < 1e-8
    # the exact hypergradient by autodiff through z*(x) = P x + q agrees with the closed form
    cf = bench.solution["closed_form"]
    F = lambda x: bench.problem.outer_full(cf["P"] @ x + cf["q"], x)
    x = bench.outer0
    np.testing.assert_allclose(jax.grad(F)(x), cf["hessian"] @ x + cf["grad0"], rtol=1e-9, atol=1e-10)


def test_logreg_and_datacleaning_builders():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 3))
    y = (X[:, 0] > 0).astype(int)
    bench = logreg_benchmark(X[:30], y[:30], X[30:], y[30:], X[30:], y[30:], reg="scalar")
    assert bench.outer0.shape == (1,)
    m = bench.metrics(bench.inner0, bench.outer0)
    assert 0.0 <= float(m["test_accuracy"]) <= 1.0 and float(m["outer"]) < np.log(2)  # the fit beats z = 0
    y10 = rng.integers(0, 4, 40)
    y_bad, changed = corrupt_labels(y10[:30], 0.5, 4, seed=0)
    assert 0 < changed.sum() < 30 and np.all((y_bad != y10[:30]) == changed)
    dc = datacleaning_benchmark(X[:30], y_bad, X[30:35], y10[30:35], X[35:], y10[35:], clean_mask=~changed)
    m = dc.metrics(dc.inner0, dc.outer0)
    assert dc.inner0.shape == (3, 4) and dc.outer0.shape == (30,)
    assert float(m["weight_auc"]) == pytest.approx(0.5)  # all weights equal: chance level


def test_auc_matches_rank_definition():
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 50).astype(float)  # many ties
    pos = rng.random(50) < 0.4
    assert float(auc(s, pos)) == pytest.approx(sklearn.roc_auc_score(pos, s), abs=1e-6)
