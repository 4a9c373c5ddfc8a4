r"""Stochastic bilevel optimization: mini-batch hypergradient estimators and the solvers of benchopt's
bilevel benchmark, as pure ``jit``/``vmap``-able functions over pytrees.

.. math::  \min_x F(x) = f(z^\star(x), x), \quad z^\star(x) = \arg\min_z g(z, x), \quad
           g = \tfrac1n\textstyle\sum_i g_i,\ f = \tfrac1m\sum_j f_j .

- :mod:`~bilevel.stochastic.problem`: :class:`BilevelProblem` (mini-batch losses + data, a pytree),
  :func:`make_problem`;
- :mod:`~bilevel.stochastic.sampling`: mini-batch draws as pure functions of a key and a counter,
  oracle-call accounting (:class:`Tape`);
- :mod:`~bilevel.stochastic.estimators`: warm-started inner SGD, Neumann / random-Neumann / SGD / CG
  adjoints, SAGA / STORM / SPIDER variance reduction, with their expectations documented;
- :mod:`~bilevel.stochastic.solvers`: StocBiO, AmIGO, SOBA, SABA, MRBO, VRBO, TTSA, F2SA, BOME, FSLA
  and the full-batch implicit / unrolled baselines (``init``/``step`` of a frozen config);
- :mod:`~bilevel.stochastic.problems`: benchopt's quadratic problem (closed-form solution),
  regularization selection for logistic regression, data hyper-cleaning;
- :mod:`~bilevel.stochastic.driver`: :func:`run` for an iteration or time budget, curves, JSON.

Example::

    from bilevel.stochastic import SOBA, quadratic_benchmark, run
    bench = quadratic_benchmark(n_inner=1024, n_outer=1024, dim_inner=100, dim_outer=10)
    res = run(SOBA(step_size=0.1, batch_size=64), bench, seed=0, max_time=5.0, eval_every=256)
    print(res.checkpoints[-1]["suboptimality"])
"""

from bilevel.stochastic.driver import RunResult, run, run_seeds, time_to_target, write_json
from bilevel.stochastic.problem import BilevelProblem, make_problem
from bilevel.stochastic.problems import (
    Benchmark,
    auc,
    corrupt_labels,
    datacleaning_benchmark,
    logreg_benchmark,
    quadratic_benchmark,
)
from bilevel.stochastic.sampling import Batching, Tape, new_tape
from bilevel.stochastic.solvers import (
    BOME,
    F2SA,
    FSLA,
    MRBO,
    SABA,
    SOBA,
    SOLVERS,
    TTSA,
    VRBO,
    AmIGO,
    ImplicitGD,
    SolverState,
    StochasticSolver,
    StocBiO,
    UnrolledGD,
)

__all__ = [
    "BilevelProblem",
    "make_problem",
    "Batching",
    "Tape",
    "new_tape",
    "SOLVERS",
    "SolverState",
    "StochasticSolver",
    "StocBiO",
    "AmIGO",
    "SOBA",
    "SABA",
    "MRBO",
    "VRBO",
    "TTSA",
    "F2SA",
    "BOME",
    "FSLA",
    "ImplicitGD",
    "UnrolledGD",
    "Benchmark",
    "quadratic_benchmark",
    "logreg_benchmark",
    "datacleaning_benchmark",
    "corrupt_labels",
    "auc",
    "RunResult",
    "run",
    "run_seeds",
    "time_to_target",
    "write_json",
]
