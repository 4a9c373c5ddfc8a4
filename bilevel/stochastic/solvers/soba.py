r"""SOBA and SABA (Dagréou, Ablin, Vaiter & Moreau, "A Framework for Bilevel Optimization That Enables
Stochastic and Global Variance Reduction Algorithms", NeurIPS 2022).

Single-loop: the inner variable, the adjoint and the outer variable move *together*, each along an
unbiased estimate of a direction that is a plain sum of sample terms:

.. math::

    D_z &= \nabla_z g(z, x), \qquad D_v = \nabla^2_{zz} g(z, x)\, v - \nabla_z f(z, x), \qquad
    D_x = \nabla_x f(z, x) - \nabla^2_{xz} g(z, x)\, v \\
    z_{t+1} &= z_t - \rho_t D_z^t, \qquad v_{t+1} = v_t - \rho_t D_v^t, \qquad x_{t+1} = x_t - \gamma_t D_x^t

(the paper writes :math:`v \approx -H^{-1}\nabla_z f`; here :math:`v \approx +H^{-1}\nabla_z f`, the
same algorithm). All three directions are evaluated at :math:`(z_t, v_t, x_t)` with one inner batch
:math:`\xi` (gradient, HVP and cross product from one linearization) and one outer batch :math:`\zeta`.

- **SOBA** uses the plain mini-batch estimates and decreasing steps :math:`\rho_t = \rho/(t+1)^{a}`,
  :math:`\gamma_t = \gamma/(t+1)^{b}`. The paper's theorem takes :math:`a = 2/5, b = 3/5`
  (rate :math:`O(T^{-2/5})` on :math:`\|\nabla F\|^2`); benchopt's default, used here, is :math:`a = b = 1/2`.
- **SABA** replaces each sample term by its SAGA estimate
  (:func:`~bilevel.stochastic.estimators.saga_update`): one memory slot per block of the inner
  and outer data. With constant steps it converges at rate :math:`O(1/T)` and linearly under a
  PL condition (Thms. 2-3): on the strongly convex quadratic problem it reaches the exact solution.
  Memory starts at zero (benchopt's ``mode_init_memory="zero"``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from bilevel.stochastic import estimators as E
from bilevel.stochastic import oracles as O
from bilevel.stochastic.sampling import CROSS, GRAD_INNER, GRAD_OUTER, HVP, tally, draw_inner, draw_outer, num_blocks
from bilevel.stochastic.solvers.base import StochasticSolver, schedule

__all__ = ["SOBA", "SABA"]


def _soba_oracles(problem, bt, z, x, v, tape):
    batch, block_in, tape = draw_inner(problem, bt, tape)
    g, hv, cv = O.grad_hvp_cross(problem, z, x, v, batch)
    tape = tally(tally(tally(tape, bt, GRAD_INNER), bt, HVP), bt, CROSS)
    outer_batch, block_out, tape = draw_outer(problem, bt, tape)
    gz, gx = O.grads_outer(problem, z, x, outer_batch)
    tape = tally(tape, bt, GRAD_OUTER)
    return (g, hv, cv, gz, gx), (block_in, block_out), tape


@dataclasses.dataclass(frozen=True)
class SOBA(StochasticSolver):
    """SOBA: one joint SGD step on (z, v, x) per iteration, decreasing steps."""

    step_size: float = 0.1
    outer_ratio: float = 1.0
    inner_exponent: float = 0.5
    outer_exponent: float = 0.5
    batch_size: int | None = 64
    sampling: str = "shuffle"

    _positive = ("step_size", "outer_ratio")
    _nonnegative = ("inner_exponent", "outer_exponent")

    def _init_aux(self, problem, inner0, outer0, tape):
        return {"v": O.tzeros(inner0)}, tape

    def step(self, problem, state):
        z, x, v = state.inner, state.outer, state.aux["v"]
        (g, hv, cv, gz, gx), _, tape = _soba_oracles(problem, self.batching, z, x, v, state.tape)
        rho = schedule(self.step_size, self.inner_exponent, state.step)
        gamma = self._outer_lr(self.outer_exponent, state.step)
        z = O.taxpy(-rho, g, z)
        v = O.taxpy(-rho, O.tsub(hv, gz), v)
        x = O.taxpy(-gamma, O.tsub(gx, cv), x)
        return self._next(state, z, x, {"v": v}, tape)


@dataclasses.dataclass(frozen=True)
class SABA(StochasticSolver):
    """SABA: SOBA with SAGA variance reduction on every sample term, constant steps."""

    step_size: float = 0.1
    outer_ratio: float = 1.0
    batch_size: int | None = 64
    sampling: str = "shuffle"

    _positive = ("step_size", "outer_ratio")
    needs_blocks = True

    def _init_aux(self, problem, inner0, outer0, tape):
        n_in = num_blocks(problem.n_inner, self.batch_size)
        n_out = num_blocks(problem.n_outer, self.batch_size)
        table = lambda tree, n: jax.tree_util.tree_map(lambda l: jnp.zeros((n,) + l.shape, l.dtype), tree)
        memory = {"g": table(inner0, n_in), "hv": table(inner0, n_in), "cv": table(outer0, n_in),
                  "gz": table(inner0, n_out), "gx": table(outer0, n_out)}
        means = {"g": O.tzeros(inner0), "hv": O.tzeros(inner0), "cv": O.tzeros(outer0),
                 "gz": O.tzeros(inner0), "gx": O.tzeros(outer0)}
        return {"v": O.tzeros(inner0), "memory": memory, "means": means}, tape

    def step(self, problem, state):
        z, x, aux = state.inner, state.outer, state.aux
        v = aux["v"]
        terms, (block_in, block_out), tape = _soba_oracles(problem, self.batching, z, x, v, state.tape)
        n_in = num_blocks(problem.n_inner, self.batch_size)
        n_out = num_blocks(problem.n_outer, self.batch_size)
        memory, means, d = dict(aux["memory"]), dict(aux["means"]), {}
        for name, new in zip(("g", "hv", "cv", "gz", "gx"), terms):
            inner_term = name in ("g", "hv", "cv")
            block, weight = (block_in, 1.0 / n_in) if inner_term else (block_out, 1.0 / n_out)
            d[name], memory[name], means[name] = E.saga_update(memory[name], means[name], new, block, weight)
        rho = self.step_size
        gamma = self.step_size / self.outer_ratio
        z = O.taxpy(-rho, d["g"], z)
        v = O.taxpy(-rho, O.tsub(d["hv"], d["gz"]), v)
        x = O.taxpy(-gamma, O.tsub(d["gx"], d["cv"]), x)
        return self._next(state, z, x, {"v": v, "memory": memory, "means": means}, tape)
