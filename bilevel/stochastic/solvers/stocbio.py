r"""StocBiO (Ji, Yang & Liang, "Bilevel Optimization: Convergence Analysis and Enhanced Design", ICML 2021).

A double-loop method: warm-started SGD on the inner problem, then a stochastic hypergradient whose
adjoint is a truncated Neumann series (:func:`~bilevel.stochastic.estimators.neumann_adjoint`):

.. math::

    z_{t}^{k+1} &= z_t^k - \alpha\, \nabla_z g(z_t^k, x_t; \xi_k), \quad k < K, \qquad z_{t+1} = z_t^K \\
    v_t &= \eta \sum_{q=0}^{Q} \prod_{j<q} \big(I - \eta\, \nabla^2_{zz} g(z_{t+1}, x_t; \xi'_j)\big)
           \nabla_z f(z_{t+1}, x_t; \zeta) \\
    x_{t+1} &= x_t - \beta \big(\nabla_x f(z_{t+1}, x_t; \zeta) - \nabla^2_{xz} g(z_{t+1}, x_t; \xi'')\, v_t\big).

Constant steps :math:`\alpha = \eta = \texttt{step\_size}`, :math:`\beta = \texttt{step\_size}/\texttt{outer\_ratio}`
(benchopt's defaults: 0.1, 1, :math:`K = Q = 10`, batch 64). Converges to a neighbourhood of a
stationary point whose radius shrinks with the batch size and the steps (Ji et al., Thm. 3);
the Neumann truncation adds a bias :math:`\|(I-\eta H)^{Q+1}H^{-1}\nabla_z f\|`.
"""

from __future__ import annotations

import dataclasses

from bilevel.stochastic import estimators as E
from bilevel.stochastic import oracles as O
from bilevel.stochastic.sampling import CROSS, GRAD_OUTER, tally, draw_inner, draw_outer
from bilevel.stochastic.solvers.base import StochasticSolver

__all__ = ["StocBiO"]


@dataclasses.dataclass(frozen=True)
class StocBiO(StochasticSolver):
    """StocBiO: ``n_inner_steps`` SGD steps, ``n_neumann_steps`` Neumann terms, one outer step."""

    step_size: float = 0.1
    outer_ratio: float = 1.0
    n_inner_steps: int = 10
    n_neumann_steps: int = 10
    batch_size: int | None = 64
    sampling: str = "shuffle"

    _positive = ("step_size", "outer_ratio")
    _counts = ("n_inner_steps", "n_neumann_steps")

    def _init_aux(self, problem, inner0, outer0, tape):
        return {"v": O.tzeros(inner0)}, tape

    def step(self, problem, state):
        bt, z, x, tape = self.batching, state.inner, state.outer, state.tape
        lr = self.step_size
        z, tape = E.sgd_inner(problem, bt, z, x, tape, lr, self.n_inner_steps)
        outer_batch, _, tape = draw_outer(problem, bt, tape)
        gz, gx = O.grads_outer(problem, z, x, outer_batch)
        tape = tally(tape, bt, GRAD_OUTER)
        v, tape = E.neumann_adjoint(problem, bt, z, x, gz, tape, lr, self.n_neumann_steps)
        batch, _, tape = draw_inner(problem, bt, tape)
        d = O.tsub(gx, O.cross(problem, z, x, v, batch))
        tape = tally(tape, bt, CROSS)
        x = O.taxpy(-self._outer_lr(0.0, state.step), d, x)
        return self._next(state, z, x, {"v": v}, tape)
