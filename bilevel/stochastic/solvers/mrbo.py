r"""MRBO and VRBO (Yang, Ji & Liang, "Provably Faster Algorithms for Bilevel Optimization", NeurIPS 2021).

Both estimate the inner gradient :math:`\nabla_z g` and the hypergradient
:math:`h(z, x) = \nabla_x f - \nabla^2_{xz} g\, v_Q(z, x)` (:math:`v_Q` StocBiO's Neumann series,
:func:`~bilevel.stochastic.estimators.neumann_adjoint_pair`) by *recursive differences*: the two
terms of each difference are taken on the same batches, at the current and the previous point.

**MRBO** (momentum-based recursive, STORM; :func:`~bilevel.stochastic.estimators.storm_update`), single loop:

.. math::

    d^z_t &= \nabla_z g(z_t, x_t; \xi) + (1 - \eta_t)\big(d^z_{t-1} - \nabla_z g(z_{t-1}, x_{t-1}; \xi)\big) \\
    d^x_t &= h(z_t, x_t; \zeta, \xi) + (1 - \eta_t)\big(d^x_{t-1} - h(z_{t-1}, x_{t-1}; \zeta, \xi)\big) \\
    z_{t+1} &= z_t - \alpha_t d^z_t, \qquad x_{t+1} = x_t - \beta_t d^x_t,

with benchopt's schedules :math:`\alpha_t = c/(t+1)^{1/3}`, :math:`\beta_t = c/(r(t+1)^{1/3})`,
:math:`\eta_t = \eta_0/(t+1)^{2/3}` and the Neumann step :math:`c` (the paper's Thm. 1 uses
:math:`\eta_t \propto \alpha_t^2`, the same exponents). As in the paper (and unlike benchopt, which
starts from zero directions), :math:`d^z_0, d^x_0` are one mini-batch estimate at the start point.

**VRBO** (SARAH/SPIDER; :func:`~bilevel.stochastic.estimators.spider_update`), double loop: every
``period`` outer iterations the directions restart from full-batch values; in between

.. math::

    x_{t+1} &= x_t - \beta d^x, \quad\text{then } K \text{ times:}\quad
    d^z \mathrel{+}= \nabla_z g(z, x; \xi) - \nabla_z g(\bar z, \bar x; \xi), \quad
    d^x \mathrel{+}= h(z, x; \zeta, \xi) - h(\bar z, \bar x; \zeta, \xi), \\
    &\qquad (\bar z, \bar x) \leftarrow (z, x), \quad z \leftarrow z - \alpha d^z,

with constant steps and ``period = (n_inner + n_outer) * period_frac / batch_size`` (benchopt's rule).
:math:`(\bar z, \bar x)` is the last point at which the directions were updated, so the recursion
also accounts for the change of :math:`x` at the outer step (benchopt's VRBO compares the first
inner point with a stale :math:`\bar z` at the *new* :math:`x` and drops that change).
"""

from __future__ import annotations

import dataclasses

import jax

from bilevel.stochastic import estimators as E
from bilevel.stochastic import oracles as O
from bilevel.stochastic.sampling import (CROSS, GRAD_INNER, GRAD_OUTER, Batching, draw_inner, draw_outer,
                                         tally)
from bilevel.stochastic.solvers.base import StochasticSolver, schedule

__all__ = ["MRBO", "VRBO"]


def _paired_estimates(problem, bt, z, x, z_old, x_old, tape, hia_lr, n_neumann):
    """Inner gradients and hypergradient estimates at (z, x) and (z_old, x_old) on shared batches."""
    batch, _, tape = draw_inner(problem, bt, tape)
    g, pull = jax.vjp(lambda x_: O.grad_inner(problem, z, x_, batch), x)
    g_old, pull_old = jax.vjp(lambda x_: O.grad_inner(problem, z_old, x_, batch), x_old)
    tape = tally(tape, bt, GRAD_INNER, 2)
    outer_batch, _, tape = draw_outer(problem, bt, tape)
    gz, gx = O.grads_outer(problem, z, x, outer_batch)
    gz_old, gx_old = O.grads_outer(problem, z_old, x_old, outer_batch)
    tape = tally(tape, bt, GRAD_OUTER, 2)
    v, v_old, tape = E.neumann_adjoint_pair(problem, bt, z, x, gz, z_old, x_old, gz_old, tape, hia_lr, n_neumann)
    h = O.tsub(gx, pull(v)[0])
    h_old = O.tsub(gx_old, pull_old(v_old)[0])
    tape = tally(tape, bt, CROSS, 2)
    return (g, h), (g_old, h_old), v, tape


def _single_estimates(problem, bt, z, x, tape, hia_lr, n_neumann):
    batch, _, tape = draw_inner(problem, bt, tape)
    g = O.grad_inner(problem, z, x, batch)
    tape = tally(tape, bt, GRAD_INNER)
    h, v, tape = E.hypergradient_estimate(problem, bt, z, x, tape, method="neumann", step=hia_lr, n_steps=n_neumann)
    return g, h, v, tape


@dataclasses.dataclass(frozen=True)
class MRBO(StochasticSolver):
    """MRBO: STORM recursive momentum on the inner gradient and on the Neumann hypergradient."""

    step_size: float = 0.1
    outer_ratio: float = 1.0
    eta: float = 0.5
    n_neumann_steps: int = 10
    batch_size: int | None = 64
    sampling: str = "shuffle"

    _positive = ("step_size", "outer_ratio", "eta")
    _counts = ("n_neumann_steps",)

    def __post_init__(self):
        super().__post_init__()
        if self.eta > 1:
            raise ValueError(f"argument 'eta' of MRBO must be in (0, 1], got {self.eta!r}")

    def _init_aux(self, problem, inner0, outer0, tape):
        g, h, v, tape = _single_estimates(problem, self.batching, inner0, outer0, tape, self.step_size,
                                          self.n_neumann_steps)
        return {"v": v, "d_inner": g, "d_outer": h, "inner_prev": inner0, "outer_prev": outer0}, tape

    def step(self, problem, state):
        z, x, aux, t = state.inner, state.outer, state.aux, state.step
        (g, h), (g_old, h_old), v, tape = _paired_estimates(
            problem, self.batching, z, x, aux["inner_prev"], aux["outer_prev"], state.tape, self.step_size,
            self.n_neumann_steps)
        eta = schedule(self.eta, 2.0 / 3.0, t)
        d_z = E.storm_update(aux["d_inner"], g, g_old, eta)
        d_x = E.storm_update(aux["d_outer"], h, h_old, eta)
        z_new = O.taxpy(-schedule(self.step_size, 1.0 / 3.0, t), d_z, z)
        x_new = O.taxpy(-self._outer_lr(1.0 / 3.0, t), d_x, x)
        aux = {"v": v, "d_inner": d_z, "d_outer": d_x, "inner_prev": z, "outer_prev": x}
        return self._next(state, z_new, x_new, aux, tape)


@dataclasses.dataclass(frozen=True)
class VRBO(StochasticSolver):
    """VRBO: SPIDER recursive differences with periodic full-batch restarts, ``n_inner_steps`` per outer step."""

    step_size: float = 0.1
    outer_ratio: float = 1.0
    n_inner_steps: int = 10
    n_neumann_steps: int = 10
    period_frac: float = 128.0
    batch_size: int | None = 64
    sampling: str = "shuffle"

    _positive = ("step_size", "outer_ratio", "period_frac")
    _counts = ("n_inner_steps", "n_neumann_steps")

    def period(self, problem) -> int:
        """Outer iterations between two full-batch restarts (>= 1)."""
        b = self.batch_size or max(problem.n_inner, problem.n_outer)
        return max(1, int((problem.n_inner + problem.n_outer) * self.period_frac / b))

    def _init_aux(self, problem, inner0, outer0, tape):
        zeros_z, zeros_x = O.tzeros(inner0), O.tzeros(outer0)
        return {"v": zeros_z, "d_inner": zeros_z, "d_outer": zeros_x, "inner_prev": inner0,
                "outer_prev": outer0}, tape

    def _restart(self, problem, z, x, aux, tape):
        full = Batching(None, None, self.sampling)
        g = O.grad_inner(problem, z, x, problem.inner_data)
        tape = tally(tape, full, GRAD_INNER)
        h, v, tape = E.hypergradient_estimate(problem, full, z, x, tape, method="neumann", step=self.step_size,
                                              n_steps=self.n_neumann_steps)
        return {"v": v, "d_inner": g, "d_outer": h, "inner_prev": z, "outer_prev": x}, tape

    def step(self, problem, state):
        bt = self.batching
        z, x, t = state.inner, state.outer, state.step
        aux, tape = jax.lax.cond(t % self.period(problem) == 0,
                                 lambda a, tp: self._restart(problem, z, x, a, tp),
                                 lambda a, tp: (a, tp), state.aux, state.tape)
        x = O.taxpy(-self.step_size / self.outer_ratio, aux["d_outer"], x)

        def body(_, carry):
            z, aux, tape = carry
            (g, h), (g_old, h_old), v, tape = _paired_estimates(
                problem, bt, z, x, aux["inner_prev"], aux["outer_prev"], tape, self.step_size, self.n_neumann_steps)
            d_z = E.spider_update(aux["d_inner"], g, g_old)
            d_x = E.spider_update(aux["d_outer"], h, h_old)
            aux = {"v": v, "d_inner": d_z, "d_outer": d_x, "inner_prev": z, "outer_prev": x}
            return O.taxpy(-self.step_size, d_z, z), aux, tape

        z, aux, tape = jax.lax.fori_loop(0, self.n_inner_steps, body, (z, aux, tape))
        return self._next(state, z, x, aux, tape)
