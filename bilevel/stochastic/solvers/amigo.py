r"""AmIGO (Arbel & Mairal, "Amortized Implicit Differentiation for Stochastic Bilevel Optimization", ICLR 2022).

Like StocBiO, but the adjoint is *amortized*: warm-started SGD on the adjoint quadratic
:math:`\tfrac12 v^\top H v - \nabla_z f^\top v` (:func:`~bilevel.stochastic.estimators.sgd_adjoint`),

.. math::

    z_{t+1} &= \text{K steps of } z \leftarrow z - \alpha \nabla_z g(z, x_t; \xi_k) \text{ from } z_t \\
    v_{t+1} &= \text{K steps of } v \leftarrow v - \eta\big(\nabla^2_{zz} g(z_{t+1}, x_t; \xi'_k)\,v
               - \nabla_z f(z_{t+1}, x_t; \zeta)\big) \text{ from } v_t \\
    x_{t+1} &= x_t - \beta\big(\nabla_x f(z_{t+1}, x_t; \zeta) - \nabla^2_{xz} g(z_{t+1}, x_t; \xi'')\, v_{t+1}\big).

Constant steps :math:`\alpha = \eta = \texttt{step\_size}`, :math:`\beta = \texttt{step\_size}/\texttt{outer\_ratio}`.
With warm starts the errors of :math:`z` and :math:`v` contract geometrically between outer steps,
so the method converges at the rate of SGD on :math:`F` (Arbel & Mairal, Thm. 1), to a neighbourhood
of size :math:`O(\beta\sigma^2)` for constant steps.
"""

from __future__ import annotations

import dataclasses

from bilevel.stochastic import estimators as E
from bilevel.stochastic import oracles as O
from bilevel.stochastic.sampling import CROSS, GRAD_OUTER, tally, draw_inner, draw_outer
from bilevel.stochastic.solvers.base import StochasticSolver

__all__ = ["AmIGO"]


@dataclasses.dataclass(frozen=True)
class AmIGO(StochasticSolver):
    """AmIGO: ``n_inner_steps`` SGD steps on z, as many on the warm-started adjoint, one outer step."""

    step_size: float = 0.1
    outer_ratio: float = 1.0
    n_inner_steps: int = 10
    batch_size: int | None = 64
    sampling: str = "shuffle"

    _positive = ("step_size", "outer_ratio")
    _counts = ("n_inner_steps",)

    def _init_aux(self, problem, inner0, outer0, tape):
        return {"v": O.tzeros(inner0)}, tape

    def step(self, problem, state):
        bt, z, x, tape = self.batching, state.inner, state.outer, state.tape
        lr = self.step_size
        z, tape = E.sgd_inner(problem, bt, z, x, tape, lr, self.n_inner_steps)
        outer_batch, _, tape = draw_outer(problem, bt, tape)
        gz, gx = O.grads_outer(problem, z, x, outer_batch)
        tape = tally(tape, bt, GRAD_OUTER)
        v, tape = E.sgd_adjoint(problem, bt, z, x, state.aux["v"], gz, tape, lr, self.n_inner_steps)
        batch, _, tape = draw_inner(problem, bt, tape)
        d = O.tsub(gx, O.cross(problem, z, x, v, batch))
        tape = tally(tape, bt, CROSS)
        x = O.taxpy(-self._outer_lr(0.0, state.step), d, x)
        return self._next(state, z, x, {"v": v}, tape)
