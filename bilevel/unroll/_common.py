"""Argument checks and small helpers shared by the unrolled, truncated and back-gradient strategies."""

from __future__ import annotations

from typing import Literal

import jax.numpy as jnp
import jax
import numpy as np

from bilevel.solvers import InnerSolver

Checkpoint = None | Literal["sqrt", "log"] | int


def is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def check_steps(name: str, steps) -> int:
    if not is_int(steps) or steps < 1:
        raise ValueError(f"argument {name!r} must be an int >= 1, got {steps!r}")
    return int(steps)


def check_checkpoint(checkpoint) -> None:
    if checkpoint is None or checkpoint in ("sqrt", "log"):
        return
    if is_int(checkpoint) and checkpoint >= 1:
        return
    raise ValueError(
        f"argument 'checkpoint' must be None, 'sqrt', 'log' or an int >= 1 (block size), got {checkpoint!r}"
    )


def resolve_steps(steps, solver) -> int:
    if steps is not None:
        return check_steps("steps", steps)
    maxiter = getattr(solver, "maxiter", None)
    if maxiter is None:
        raise ValueError("argument 'steps' is needed when the solver has no maxiter")
    return check_steps("solver.maxiter", int(maxiter))


def as_jax_args(args) -> tuple:
    def conv(a):
        return jnp.asarray(a) if isinstance(a, (bool, int, float, complex, np.ndarray, np.generic)) else a

    return tuple(jax.tree_util.tree_map(conv, tuple(args)))


def is_inexact(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)



def check_solver(solver) -> None:
    if not isinstance(solver, InnerSolver):
        raise ValueError(f"argument 'solver' must be a bilevel.solvers.InnerSolver, got {type(solver).__name__}")
