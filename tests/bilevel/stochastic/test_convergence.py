"""Every solver reaches the closed-form solution of a small quadratic bilevel problem.

Tolerances are on ``||x_T - x*|| / ||x_0 - x*||`` (fixed seed, float64) and follow each method's
theory: exact (linear) convergence for the variance-reduced SABA and the deterministic baselines; a
neighbourhood set by the step size, the batch noise and the Neumann truncation bias
``(1 - eta mu)^(Q+1)`` (= 0.023 here: eta = 0.3, mu = 0.2, Q = 60) for the constant-step and
momentum methods; the slow ``O(t^-a)`` rates of the decreasing-step single-loop methods; the penalty
bias ``O(1/lambda)`` of the first-order F2SA and BOME.
"""

import pytest

from bilevel.stochastic import (BOME, F2SA, FSLA, MRBO, SABA, SOBA, TTSA, VRBO, AmIGO, ImplicitGD, StocBiO,
                                UnrolledGD, run)
from tests.bilevel.stochastic._quad import rel_distance, small_quadratic

B = dict(batch_size=16, sampling="block")

CASES = [
    # (solver, iterations, tolerance, why)
    (SABA(step_size=0.2, outer_ratio=5, **B), 3000, 1e-8, "SAGA variance reduction: linear convergence (Thm. 3)"),
    (ImplicitGD(step_size=1.0), 40, 1e-4, "exact hypergradient, gradient descent on a strongly convex F"),
    (UnrolledGD(step_size=1.0, n_inner_steps=50, inner_step_size=0.5), 200, 1e-2,
     "unrolling bias (1 - 0.5 mu)^50 = 5e-3"),
    (VRBO(step_size=0.3, outer_ratio=3, n_neumann_steps=60, period_frac=1.0, **B), 200, 5e-2,
     "SPIDER, constant steps: Neumann bias 0.023"),
    (StocBiO(step_size=0.3, outer_ratio=3, n_neumann_steps=60, batch_size=32, sampling="block"), 1500, 5e-2,
     "constant steps: O(beta sigma^2 / b) neighbourhood + Neumann bias"),
    (MRBO(step_size=0.3, outer_ratio=3, n_neumann_steps=60, **B), 1500, 1e-1, "STORM, O(t^-1/3) steps"),
    (TTSA(step_size=0.3, n_neumann_steps=60, **B), 6000, 5e-2, "two time scales, O(t^-2/5) rate"),
    (AmIGO(step_size=0.3, outer_ratio=3, **B), 1500, 1e-1, "warm-started SGD adjoint, constant steps"),
    (SOBA(step_size=0.3, outer_ratio=3, **B), 6000, 1.5e-1, "decreasing steps 1/sqrt(t): slow O(t^-1/4)"),
    (FSLA(step_size=0.3, outer_ratio=3, **B), 6000, 1.5e-1, "single loop, 1/sqrt(t) steps"),
    (F2SA(step_size=0.1, delta_lmbda=0.02, common_batch=True, **B), 3000, 3e-1,
     "penalty bias O(1/lambda), lambda_T = 23, and steps decaying as t^-5/7"),
    (BOME(step_size=0.3, n_inner_steps=30), 600, 1.5e-1,
     "dynamic barrier = penalty with lambda ~ 7: O(1/lambda) KKT neighbourhood"),
]


@pytest.mark.parametrize("solver,steps,tol,why", CASES, ids=[c[0].name for c in CASES])
def test_reaches_closed_form_solution(solver, steps, tol, why):
    bench = small_quadratic()
    res = run(solver, bench, seed=0, max_iter=steps, eval_every=steps, progress=False)
    assert not res.diverged
    err = rel_distance(bench, res.final_state.outer)
    assert err <= tol, f"{solver.name}: relative distance {err:.3e} > {tol:.1e} ({why})"
    # and it moved the right way from the start (a solver that does nothing fails the test)
    assert res.checkpoints[-1]["suboptimality"] < 0.05 * res.checkpoints[0]["suboptimality"]
