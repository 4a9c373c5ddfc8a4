r"""Unrolled differentiation: hypergradients through exactly :math:`T` inner steps.

:class:`Unrolled` (Domke 2012; Maclaurin et al. 2015; Franceschi et al. 2017) runs :math:`T` steps of
``solver.update`` with :func:`jax.lax.scan` and lets JAX differentiate them: reverse mode (``grad``, ``vjp``) stores the trajectory (memory :math:`O(T)`), forward mode
(``jvp``, ``jacfwd``; Franceschi's "forward-mode hypergradient", RTRL) propagates tangents with
memory independent of :math:`T`, at one pass per input direction. Rematerialization
(Griewank & Walther 2000; Chen et al. 2016) trades compute for memory: ``checkpoint="sqrt"``
splits the :math:`T` steps into :math:`\lceil\sqrt T\rceil` blocks, each wrapped in
:func:`jax.checkpoint`, so only block boundaries are stored and one block is recomputed at a time
(memory :math:`O(\sqrt T)`, one extra forward pass); ``checkpoint="log"`` nests binary levels
(memory :math:`O(\log T)`, :math:`O(T\log T)` compute); ``checkpoint=k`` (int) stores every
:math:`k`-th state. Step counts that are not a product of the block sizes are padded with
steps whose result is discarded (a select on the step index; at most one block of extra compute
for ``"sqrt"`` and int, typically < 15% for ``"log"``).

References: J. Domke, AISTATS 2012; D. Maclaurin, D. Duvenaud, R. P. Adams, ICML 2015; L. Franceschi,
M. Donini, P. Frasconi, M. Pontil, ICML 2017; A. Griewank, A. Walther, ACM TOMS 2000; T. Chen et al. 2016.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np

from bilevel.solvers import InnerSolver
from bilevel.unroll._common import (
    Checkpoint,
    as_jax_args,
    check_checkpoint,
    check_solver,
    check_steps,
    resolve_steps,
)
from bilevel.unroll.minibatches import MiniBatches, selector

__all__ = ["Unrolled", "unrolled_solve", "checkpoint_blocks"]


def checkpoint_blocks(steps: int, checkpoint: Checkpoint = None) -> tuple[int, ...]:
    """Nested block sizes (outermost first) used by :func:`unrolled_solve`; their product is >= ``steps``.

    ``None`` -> ``(T,)``; ``"sqrt"`` -> ``(ceil(T/b), b)`` with ``b = ceil(sqrt T)``; an int ``k`` ->
    ``(ceil(T/k), k)``; ``"log"`` -> levels of size 3 and 2 (about ``log2 T`` of them) with the smallest
    product >= ``T``.
    """
    steps = check_steps("steps", steps)
    check_checkpoint(checkpoint)
    if checkpoint is None or steps == 1:
        return (steps,)
    if checkpoint == "sqrt":
        b = math.isqrt(steps - 1) + 1  # ceil(sqrt(steps))
        sizes = [-(-steps // b), b]
    elif checkpoint == "log":
        # Levels of size 2 and 3 whose product is the smallest one >= steps (fewest levels on ties).
        best = None
        for threes in range(int(math.log(steps, 3)) + 2):
            twos = 0
            while 3**threes * 2**twos < steps:
                twos += 1
            cand = (3**threes * 2**twos, twos + threes, threes, twos)
            best = cand if best is None or cand[:2] < best[:2] else best
        sizes = [3] * best[2] + [2] * best[3]
    else:
        b = min(int(checkpoint), steps)
        sizes = [-(-steps // b), b]
    sizes = [s for s in sizes if s > 1] or [1]
    return tuple(sizes)


def _nested_scan(step, carry, ts, limit):
    """Scan ``step(carry, t)`` over the array of step indices ``ts`` (one scan level per axis); each
    block of a non-innermost level is a :func:`jax.checkpoint`. Results of steps with ``t >= limit`` are discarded."""
    if ts.ndim == 1:

        def body(c, t):
            new = step(c, t)
            if limit is not None:
                # A select, not a lax.cond: the residuals of a cond would keep a copy of every array
                # the step closes over (e.g. the training data) per step.
                new = jax.tree_util.tree_map(lambda n, o: jnp.where(t < limit, n, o), new, c)
            return new, None

        return jax.lax.scan(body, carry, ts)[0]

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def block(c, sub):
        return _nested_scan(step, c, sub, limit)

    return jax.lax.scan(lambda c, sub: (block(c, sub), None), carry, ts)[0]


def unrolled_solve(
    step_fn: Callable,
    init_state: Any,
    args: tuple = (),
    steps: int = 1,
    checkpoint: Checkpoint = None,
    *,
    start: int = 0,
):
    """Apply ``state <- step_fn(state, t, *args)`` for ``t = start, ..., start + steps - 1`` with
    :func:`jax.lax.scan`; differentiable in ``init_state`` and ``args`` (forward and reverse mode).

    Args:
      step_fn: pure function ``step_fn(state, t, *args) -> state`` (same pytree structure and
        dtypes; ``t`` is an int32 scalar, e.g. to pick a mini-batch or a learning-rate schedule).
      init_state: initial state pytree.
      args: tuple of extra arguments (hyperparameters, data): derivatives flow to them.
      steps: number of steps ``T >= 1``.
      checkpoint: ``None`` (store every step's residuals in reverse mode), ``"sqrt"``, ``"log"`` or an
        int block size; see :func:`checkpoint_blocks`. Only reverse mode is affected.
      start: index of the first step.

    Returns:
      The state after ``steps`` steps.
    """
    if not callable(step_fn):
        raise TypeError(f"argument 'step_fn' must be callable, got {type(step_fn).__name__}")
    steps = check_steps("steps", steps)
    check_checkpoint(checkpoint)
    if not isinstance(args, tuple):
        raise TypeError(f"argument 'args' must be a tuple, got {type(args).__name__}")
    t0 = jnp.asarray(start, jnp.int32)
    out = jax.eval_shape(step_fn, init_state, t0, *args)
    in_struct = jax.tree_util.tree_structure(init_state)
    if jax.tree_util.tree_structure(out) != in_struct:
        raise ValueError(
            "step_fn must return a state with the structure of init_state: got "
            f"{jax.tree_util.tree_structure(out)} for {in_struct}"
        )
    # Cast the initial state to the step's output types (drops weak types) so scan/cond carries agree.
    state = jax.tree_util.tree_map(
        lambda x, o: jnp.asarray(x, dtype=o.dtype).reshape(o.shape), init_state, out
    )
    sizes = checkpoint_blocks(steps, checkpoint)
    total = int(np.prod(sizes))
    ts = (jnp.arange(total, dtype=jnp.int32) + t0).reshape(sizes)
    limit = None if total == steps else t0 + steps

    def step(c, t):
        return step_fn(c, t, *args)

    return _nested_scan(step, state, ts, limit)


def solver_step(loss: Callable, solver: InnerSolver, batches, args: tuple) -> Callable:
    select = selector(batches, args)

    def step(state, t, *a):
        params, s = state
        params, s, _ = solver.update(loss, params, s, *select(a, t))
        return params, s

    return step



@dataclasses.dataclass(frozen=True)
class Unrolled:
    """Differentiate through exactly ``steps`` iterations of ``solver.update`` (a ``lax.scan``).

    Attributes:
      steps: number of inner steps ``T`` (default ``solver.maxiter``); the solver's ``tol`` is not used.
      checkpoint: rematerialization for reverse mode: ``None``, ``"sqrt"``, ``"log"`` or an int block
        size (see :func:`checkpoint_blocks`).
      mode: ``"reverse"`` (default) or ``"forward"``: the derivative the result is meant for. The
        computation is the same ``lax.scan`` either way, so ``jax.grad`` *and* ``jax.jvp``/``jacfwd``
        work in both; ``"forward"`` declares that the memory of reverse mode is irrelevant and
        rejects a ``checkpoint`` (which would only add recomputation). Forward mode needs memory
        independent of ``T`` and one pass per input direction: the better choice for a few
        hyperparameters and long inner loops.
      batches: optional :class:`MiniBatches` for a stochastic inner loop.

    Reverse mode needs a solver whose ``update`` JAX can reverse-differentiate: ``GradientDescent``
    and ``OptaxSolver`` can, ``LBFGS`` and ``Newton`` (``while_loop`` line searches) only in forward mode.
    Gradients also flow to ``init`` (the unrolled map depends on it), unlike with ``Implicit``.
    """

    steps: int | None = None
    checkpoint: Checkpoint = None
    mode: Literal["reverse", "forward"] = "reverse"
    batches: MiniBatches | None = None

    def __post_init__(self):
        if self.steps is not None:
            check_steps("steps", self.steps)
        check_checkpoint(self.checkpoint)
        if self.mode not in ("reverse", "forward"):
            raise ValueError(f"argument 'mode' must be 'reverse' or 'forward', got {self.mode!r}")
        if self.mode == "forward" and self.checkpoint is not None:
            raise ValueError("argument 'checkpoint' only affects reverse mode: use checkpoint=None with mode='forward'")

    def solve(self, loss, solver, init, args):
        check_solver(solver)
        steps = resolve_steps(self.steps, solver)
        args = as_jax_args(args)
        step = solver_step(loss, solver, self.batches, args)
        state0 = (init, solver.init_state(loss, init, *args))
        params, _ = unrolled_solve(step, state0, args, steps, self.checkpoint)
        return params

