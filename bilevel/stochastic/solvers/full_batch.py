r"""Full-batch baselines built on the deterministic core: implicit and unrolled hypergradient descent.

Both take the exact (full-data) hypergradient of an approximate inner solution and a fixed outer
step :math:`x \leftarrow x - \beta\, \widehat{\nabla F}(x)`, warm-starting the inner solve at the
previous solution (benchopt's ``jaxopt_GD`` and ``jaxopt_ITD``):

- :class:`ImplicitGD`: :math:`\hat z = ` at most ``n_inner_steps`` of L-BFGS (or gradient descent,
  :mod:`bilevel.solvers`) on :math:`g(\cdot, x)`, differentiated by the implicit function theorem
  (adjoint by warm-started CG):
  :math:`\widehat{\nabla F} = \nabla_x f - \nabla^2_{xz} g\,[\nabla^2_{zz} g]^{-1}\nabla_z f` at :math:`\hat z`.
  Exact at an exact inner solution.
- :class:`UnrolledGD`: :math:`\hat z = ` ``n_inner_steps`` gradient steps (step ``inner_step_size``),
  differentiated through the steps (:class:`bilevel.unroll.Unrolled`): the first
  ``n_inner_steps`` terms of the Neumann series of the implicit hypergradient. Warm-started, this
  is the classical "iterative differentiation" baseline.

Oracle counts are per-call, full batch: the L-BFGS line search may evaluate more gradients than the
inner steps counted (a lower bound); CG counts its actual iterations.
"""

from __future__ import annotations

import dataclasses

import jax

from bilevel.minimize import minimize
from bilevel.stochastic import estimators as E
from bilevel.solvers import LBFGS, GradientDescent
from bilevel.stochastic import oracles as O
from bilevel.stochastic.sampling import CROSS, GRAD_INNER, GRAD_OUTER, HVP, count
from bilevel.stochastic.solvers.base import StochasticSolver
from bilevel.unroll import Unrolled

__all__ = ["ImplicitGD", "UnrolledGD"]

INNER_SOLVERS = ("lbfgs", "gd")


def _count_full(tape, grad_inner, hvp, cross):
    tape = count(tape, GRAD_INNER, grad_inner, full=True)
    tape = count(tape, HVP, hvp, full=True)
    tape = count(tape, CROSS, cross, full=True)
    return count(tape, GRAD_OUTER, 1, full=True)


@dataclasses.dataclass(frozen=True)
class ImplicitGD(StochasticSolver):
    """Outer gradient descent with the implicit hypergradient of a warm-started full-batch inner solve.

    The inner solve is :class:`bilevel.solvers.LBFGS` (or :class:`~bilevel.solvers.GradientDescent`) run
    for at most ``n_inner_steps``; the adjoint :math:`H v = \nabla_z f` is solved by conjugate
    gradients (:func:`~bilevel.stochastic.estimators.conjugate_gradient`, warm-started at the previous
    :math:`v`, relative tolerance ``adjoint_tol``), the same IFT hypergradient as
    :class:`bilevel.Implicit`, with the adjoint kept in the state.
    """

    step_size: float = 1.0
    n_inner_steps: int = 100
    inner_solver: str = "lbfgs"
    inner_step_size: float = 0.1
    inner_tol: float = 1e-4
    adjoint_maxiter: int = 100
    adjoint_tol: float = 1e-6

    _positive = ("step_size", "inner_step_size", "inner_tol", "adjoint_tol")
    _counts = ("n_inner_steps", "adjoint_maxiter")

    def __post_init__(self):
        super().__post_init__()
        if self.inner_solver not in INNER_SOLVERS:
            raise ValueError(f"argument 'inner_solver' must be one of {INNER_SOLVERS}, got {self.inner_solver!r}")

    def _solver(self):
        if self.inner_solver == "lbfgs":
            return LBFGS(maxiter=self.n_inner_steps, tol=self.inner_tol, on_failure="ignore")
        return GradientDescent(learning_rate=self.inner_step_size, maxiter=self.n_inner_steps, tol=self.inner_tol,
                               on_failure="ignore")

    def _init_aux(self, problem, inner0, outer0, tape):
        return {"v": O.tzeros(inner0)}, tape

    def step(self, problem, state):
        x = state.outer
        z, info = self._solver().run(problem.inner_full, state.inner, x)
        gz, gx = O.grads_outer(problem, z, x, problem.outer_data)
        v, k = E.conjugate_gradient(lambda u: O.hvp(problem, z, x, u, problem.inner_data), gz, state.aux["v"],
                                    self.adjoint_maxiter, self.adjoint_tol)
        d = O.tsub(gx, O.cross(problem, z, x, v, problem.inner_data))
        x = O.taxpy(-self.step_size, d, x)
        tape = _count_full(state.tape, info.num_steps, k + 1, 1)
        return self._next(state, z, x, {"v": v}, tape)


@dataclasses.dataclass(frozen=True)
class UnrolledGD(StochasticSolver):
    """Outer gradient descent with the hypergradient through ``n_inner_steps`` warm-started GD steps."""

    step_size: float = 1.0
    n_inner_steps: int = 10
    inner_step_size: float = 0.1
    warm_start: bool = True

    _positive = ("step_size", "inner_step_size")
    _counts = ("n_inner_steps",)

    def step(self, problem, state):
        data_in, data_out = problem.inner_data, problem.outer_data
        solver = GradientDescent(learning_rate=self.inner_step_size, maxiter=self.n_inner_steps, on_failure="ignore")
        method = Unrolled(steps=self.n_inner_steps)
        z_start = state.inner if self.warm_start else state.aux["inner0"]

        def value(x, z0):
            z = minimize(lambda z_, x_: problem.inner_loss(z_, x_, data_in), z0, x, solver=solver, method=method)
            return problem.outer_loss(z, x, data_out), z

        (_, z), g = jax.value_and_grad(value, has_aux=True)(state.outer, jax.lax.stop_gradient(z_start))
        x = O.taxpy(-self.step_size, g, state.outer)
        k = self.n_inner_steps
        tape = _count_full(state.tape, k, k, k)
        return self._next(state, z, x, state.aux, tape)

    def _init_aux(self, problem, inner0, outer0, tape):
        return ({} if self.warm_start else {"inner0": inner0}), tape
