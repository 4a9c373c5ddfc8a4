r"""TTSA (Hong, Wai, Wang & Yang, "A Two-Timescale Stochastic Algorithm Framework for Bilevel
Optimization: Complexity Analysis and Application to Actor-Critic", SIAM J. Optim. 2023).

Single loop on two time scales, the inner variable on the faster one:

.. math::

    z_{t+1} &= z_t - \alpha_t \nabla_z g(z_t, x_t; \xi) \\
    v_t &= K\eta \prod_{k<p} \big(I - \eta\nabla^2_{zz} g(z_{t+1}, x_t; \xi_k)\big)\, \nabla_z f(z_{t+1}, x_t; \zeta),
          \quad p \sim \mathcal U\{0, \dots, K-1\} \\
    x_{t+1} &= x_t - \beta_t \big(\nabla_x f(z_{t+1}, x_t; \zeta) - \nabla^2_{xz} g(z_{t+1}, x_t; \xi)\, v_t\big)

(the adjoint is Ghadimi & Wang's randomly truncated Neumann series,
:func:`~bilevel.stochastic.estimators.random_neumann_adjoint`; the cross term reuses the inner batch
:math:`\xi`, as benchopt does). Steps :math:`\alpha_t = c/(t+1)^{2/5}`,
:math:`\beta_t = c/(r (t+1)^{3/5})` (the paper's :math:`\alpha_t \propto t^{-2/5}, \beta_t \propto t^{-3/5}`,
Thm. 1: :math:`\mathbb E\|\nabla F\|^2 = O(T^{-2/5})`), constant Neumann step :math:`\eta = c`.
"""

from __future__ import annotations

import dataclasses

from bilevel.stochastic import estimators as E
from bilevel.stochastic import oracles as O
from bilevel.stochastic.sampling import CROSS, GRAD_INNER, GRAD_OUTER, draw_inner, draw_outer, solver_key, tally
from bilevel.stochastic.solvers.base import StochasticSolver, schedule

__all__ = ["TTSA"]


@dataclasses.dataclass(frozen=True)
class TTSA(StochasticSolver):
    """TTSA: one SGD step on z, a randomly truncated Neumann adjoint, one outer step."""

    step_size: float = 0.1
    outer_ratio: float = 1.0
    n_neumann_steps: int = 10
    inner_exponent: float = 0.4
    outer_exponent: float = 0.6
    batch_size: int | None = 64
    sampling: str = "shuffle"

    _positive = ("step_size", "outer_ratio")
    _nonnegative = ("inner_exponent", "outer_exponent")
    _counts = ("n_neumann_steps",)

    def _init_aux(self, problem, inner0, outer0, tape):
        return {"v": O.tzeros(inner0)}, tape

    def step(self, problem, state):
        bt, z, x, t = self.batching, state.inner, state.outer, state.step
        batch, _, tape = draw_inner(problem, bt, state.tape)
        z = O.taxpy(-schedule(self.step_size, self.inner_exponent, t), O.grad_inner(problem, z, x, batch), z)
        tape = tally(tape, bt, GRAD_INNER)
        outer_batch, _, tape = draw_outer(problem, bt, tape)
        gz, gx = O.grads_outer(problem, z, x, outer_batch)
        tape = tally(tape, bt, GRAD_OUTER)
        v, tape = E.random_neumann_adjoint(problem, bt, z, x, gz, tape, self.step_size, self.n_neumann_steps,
                                           solver_key(tape, t))
        d = O.tsub(gx, O.cross(problem, z, x, v, batch))
        tape = tally(tape, bt, CROSS)
        x = O.taxpy(-self._outer_lr(self.outer_exponent, t), d, x)
        return self._next(state, z, x, {"v": v}, tape)
