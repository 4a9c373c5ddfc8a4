r"""What every stochastic bilevel solver shares: its state, the step-size schedule, input checks.

A solver is a frozen dataclass of hyperparameters (hashable, so ``jit`` treats it as static) with two
pure methods over pytrees:

- ``init(problem, inner0, outer0, key) -> SolverState`` (checks its inputs; ``key`` an int seed or a
  PRNG key, so ``jax.vmap(lambda k: solver.init(problem, z0, x0, k))(keys)`` gives one state per seed);
- ``step(problem, state) -> SolverState``: one outer iteration, ``jit``- and ``vmap``-able.

Conventions: ``inner`` is :math:`z` (the model), ``outer`` is :math:`x` (the hyperparameters);
``aux["v"]``, when a solver keeps an adjoint, approximates :math:`v^\star = H^{-1}\nabla_z f` with
the *positive* sign (so the direction is :math:`\nabla_x f - \nabla^2_{xz} g\, v`), whatever the
paper's sign. Step sizes follow benchopt's schedule :math:`\eta_t = c\,/\,(t+1)^{e}` with the
outer step :math:`c = \texttt{step\_size} / \texttt{outer\_ratio}`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from bilevel._checks import error_if, tree_all_finite
from bilevel.stochastic.problem import BilevelProblem, check_variables
from bilevel.stochastic.sampling import SAMPLING_MODES, Batching, Tape, check_batch_size, new_tape

__all__ = ["SolverState", "StochasticSolver", "schedule"]


class SolverState(NamedTuple):
    """State of a run: the two variables, solver-specific ``aux`` (a dict), the tape and the iteration."""

    inner: Any
    outer: Any
    aux: dict
    tape: Tape
    step: jax.Array


def schedule(constant, exponent, t):
    r""":math:`c / (t + 1)^{e}` (benchopt's ``update_lr``)."""
    return constant / (jnp.asarray(t, jnp.float32) + 1.0) ** exponent


# one compiled program for the solver-specific part of init (some draw and estimate, e.g. MRBO)
_init_aux_jit = jax.jit(lambda solver, *args: solver._init_aux(*args), static_argnums=0)


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class StochasticSolver:
    """Base class: subclasses add hyperparameter fields and implement ``_init_aux`` and ``step``.

    Class attributes listing field names drive the checks done at construction:
    ``_positive`` (finite, > 0), ``_nonnegative`` (finite, >= 0), ``_counts`` (int >= 1).
    """

    _positive = ()
    _nonnegative = ()
    _counts = ()
    needs_blocks = False  # SAGA-type memory per block (not with sampling="uniform")

    def __post_init__(self):
        for name in self._positive:
            value = getattr(self, name)
            if value is None:
                continue
            if not _is_real(value) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"argument {name!r} of {type(self).__name__} must be a finite number > 0, got {value!r}")
        for name in self._nonnegative:
            value = getattr(self, name)
            if not _is_real(value) or not math.isfinite(value) or value < 0:
                raise ValueError(f"argument {name!r} of {type(self).__name__} must be a finite number >= 0, got {value!r}")
        for name in self._counts:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"argument {name!r} of {type(self).__name__} must be an int >= 1, got {value!r}")
        if hasattr(self, "batch_size"):
            check_batch_size(self.batch_size)
        if hasattr(self, "sampling"):
            if self.sampling not in SAMPLING_MODES:
                raise ValueError(f"argument 'sampling' must be one of {SAMPLING_MODES}, got {self.sampling!r}")
            if self.needs_blocks and self.sampling == "uniform":
                raise ValueError(f"argument 'sampling' of {type(self).__name__}: its per-block memory needs "
                                 "'shuffle' or 'block', got 'uniform'")

    # -- public API ------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def batching(self) -> Batching:
        b = getattr(self, "batch_size", None)
        return Batching(b, b, getattr(self, "sampling", "shuffle"))

    def init(self, problem: BilevelProblem, inner0, outer0, key) -> SolverState:
        """The state at ``(inner0, outer0)`` for the run key ``key`` (int seed or PRNG key)."""
        inner0, outer0 = check_variables(problem, inner0, outer0)
        ok = tree_all_finite((inner0, outer0))
        inner0, outer0 = error_if((inner0, outer0), jnp.logical_not(ok),
                                  "arguments 'inner0'/'outer0' contain NaN or inf")
        tape = new_tape(key)
        aux, tape = _init_aux_jit(self, problem, inner0, outer0, tape)
        return SolverState(inner0, outer0, aux, tape, jnp.zeros((), jnp.int32))

    def step(self, problem: BilevelProblem, state: SolverState) -> SolverState:  # pragma: no cover
        raise NotImplementedError

    # -- helpers for subclasses ------------------------------------------------------------------
    def _init_aux(self, problem, inner0, outer0, tape):
        return {}, tape

    def _outer_lr(self, exponent, t):
        return schedule(self.step_size / self.outer_ratio, exponent, t)

    @staticmethod
    def _next(state: SolverState, inner, outer, aux, tape) -> SolverState:
        return SolverState(inner, outer, aux, tape, state.step + 1)
