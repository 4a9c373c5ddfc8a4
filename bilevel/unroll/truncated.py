r"""Truncated back-propagation (Shaban et al. 2019): differentiate through the last :math:`k` steps only.

:class:`Truncated` runs :math:`T-k` steps with no derivative (``lax.stop_gradient``) and
backpropagates through the last :math:`k` only: memory :math:`O(k)`, the first :math:`k` terms of the
Neumann series of :mod:`bilevel.unroll`
(a biased estimate, exact in the limit :math:`k \to T`; ``Truncated(k=T)`` is ``Unrolled``).

Reference: A. Shaban, C.-A. Cheng, N. Hatch, B. Boots, *Truncated Back-propagation for Bilevel
Optimization*, AISTATS 2019.
"""

from __future__ import annotations

import dataclasses

import jax

from bilevel.unroll._common import (
    Checkpoint,
    as_jax_args,
    check_checkpoint,
    check_solver,
    check_steps,
    resolve_steps,
)
from bilevel.unroll.minibatches import MiniBatches
from bilevel.unroll.unrolled import solver_step, unrolled_solve

__all__ = ["Truncated"]


@dataclasses.dataclass(frozen=True)
class Truncated:
    """Run ``T - k`` steps without derivative, then differentiate through the last ``k`` steps.

    Attributes:
      k: number of differentiated steps, ``1 <= k <= T`` (``k = T`` is :class:`Unrolled`).
      steps: total number of inner steps ``T`` (default ``solver.maxiter``).
      checkpoint: rematerialization of the last ``k`` steps (as in :class:`Unrolled`).
      batches: optional :class:`MiniBatches`.

    The derivative w.r.t. ``init`` is zero unless ``k = T``.
    """

    k: int = 10
    steps: int | None = None
    checkpoint: Checkpoint = None
    batches: MiniBatches | None = None

    def __post_init__(self):
        check_steps("k", self.k)
        if self.steps is not None:
            check_steps("steps", self.steps)
        check_checkpoint(self.checkpoint)

    def solve(self, loss, solver, init, args):
        check_solver(solver)
        steps = resolve_steps(self.steps, solver)
        if self.k > steps:
            raise ValueError(f"argument 'k' ({self.k}) must be at most the number of steps ({steps})")
        args = as_jax_args(args)
        step = solver_step(loss, solver, self.batches, args)
        state = (init, solver.init_state(loss, init, *args))
        head = steps - self.k
        if head > 0:
            frozen = jax.lax.stop_gradient((state, args))
            state = jax.lax.stop_gradient(unrolled_solve(step, frozen[0], frozen[1], head))
        params, _ = unrolled_solve(step, state, args, self.k, self.checkpoint, start=head)
        return params

