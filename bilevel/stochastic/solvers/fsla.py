r"""FSLA (Li, Gu & Huang, "A Fully Single Loop Algorithm for Bilevel Optimization without Hessian
Inverse", AAAI 2022).

One SGD step on :math:`z`, one on the adjoint quadratic, and a STORM-corrected
(:func:`~bilevel.stochastic.estimators.storm_update`) hypergradient for :math:`x`:

.. math::

    z_{t+1} &= z_t - \alpha_t \nabla_z g(z_t, x_t; \xi_1) \\
    v_{t+1} &= v_t - \alpha_t\big(\nabla^2_{zz} g(z_{t+1}, x_t; \xi_2)\, v_t - \nabla_z f(z_{t+1}, x_t; \zeta_1)\big) \\
    h_t &= \nabla_x f(z_{t+1}, x_t; \zeta_2) - \nabla^2_{xz} g(z_{t+1}, x_t; \xi_3)\, v_{t+1} \\
    d_t &= h_t + (1 - \eta_t)\big(d_{t-1} - h(z_t, x_{t-1}, v_t; \zeta_2, \xi_3)\big), \qquad
    x_{t+1} = x_t - \beta_t d_t,

where the correction term re-evaluates the previous iteration's direction point on the new batches.
benchopt's schedules: :math:`\alpha_t = c/\sqrt{t+1}`, :math:`\eta_t = c/\sqrt{t+1}`,
:math:`\beta_t = c/(r\sqrt{t+1})`. As in the paper (benchopt starts from zero), :math:`d_0` is one
mini-batch estimate at the start point.
"""

from __future__ import annotations

import dataclasses

from bilevel.stochastic import estimators as E
from bilevel.stochastic import oracles as O
from bilevel.stochastic.sampling import CROSS, GRAD_INNER, GRAD_OUTER, HVP, draw_inner, draw_outer, tally
from bilevel.stochastic.solvers.base import StochasticSolver, schedule

__all__ = ["FSLA"]


def _direction(problem, z, x, v, outer_batch, inner_batch):
    _, gx = O.grads_outer(problem, z, x, outer_batch)
    return O.tsub(gx, O.cross(problem, z, x, v, inner_batch))


@dataclasses.dataclass(frozen=True)
class FSLA(StochasticSolver):
    """FSLA: single loop, one adjoint SGD step, STORM momentum on the outer direction."""

    step_size: float = 0.1
    outer_ratio: float = 1.0
    eta: float | None = None
    batch_size: int | None = 64
    sampling: str = "shuffle"

    _positive = ("step_size", "outer_ratio", "eta")

    def _init_aux(self, problem, inner0, outer0, tape):
        bt = self.batching
        ob, _, tape = draw_outer(problem, bt, tape)
        ib, _, tape = draw_inner(problem, bt, tape)
        v0 = O.tzeros(inner0)
        d0 = _direction(problem, inner0, outer0, v0, ob, ib)
        tape = tally(tally(tape, bt, GRAD_OUTER), bt, CROSS)
        return {"v": v0, "d_outer": d0, "outer_prev": outer0}, tape

    def step(self, problem, state):
        bt, z, x, aux, t = self.batching, state.inner, state.outer, state.aux, state.step
        lr = schedule(self.step_size, 0.5, t)
        eta = schedule(self.eta if self.eta is not None else self.step_size, 0.5, t)
        b1, _, tape = draw_inner(problem, bt, state.tape)
        z_old = z
        z = O.taxpy(-lr, O.grad_inner(problem, z, x, b1), z)
        b2, _, tape = draw_inner(problem, bt, tape)
        o1, _, tape = draw_outer(problem, bt, tape)
        v_old = aux["v"]
        gz, _ = O.grads_outer(problem, z, x, o1)
        v = O.taxpy(-lr, O.tsub(O.hvp(problem, z, x, v_old, b2), gz), v_old)
        o2, _, tape = draw_outer(problem, bt, tape)
        b3, _, tape = draw_inner(problem, bt, tape)
        h = _direction(problem, z, x, v, o2, b3)
        h_old = _direction(problem, z_old, aux["outer_prev"], v_old, o2, b3)
        tape = tally(tally(tally(tally(tape, bt, GRAD_INNER), bt, HVP), bt, GRAD_OUTER, 3), bt, CROSS, 2)
        d = E.storm_update(aux["d_outer"], h, h_old, eta)
        x_new = O.taxpy(-self._outer_lr(0.5, t), d, x)
        return self._next(state, z, x_new, {"v": v, "d_outer": d, "outer_prev": x}, tape)
