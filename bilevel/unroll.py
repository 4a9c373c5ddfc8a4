r"""Unrolled, truncated and back-gradient differentiation: hypergradients *through* the inner steps.

The inner solver is an iteration :math:`s_{t+1} = \Phi_t(s_t, \theta)` (state :math:`s = (x, \dots)`,
hyperparameters and data :math:`\theta` = ``args``) run for exactly :math:`T` steps; the returned
:math:`x_T(\theta)` is differentiated as the composition of the :math:`T` maps, *not* as the exact
minimizer (compare :class:`bilevel.minimize.Implicit`). For gradient descent on
:math:`\mathcal L(x,\theta)` with step :math:`\eta` the reverse-mode recursion (the adjoint of the
unrolled map) is

.. math::

    \bar x_T = \nabla_x f, \qquad
    \bar x_{t} = (I - \eta \nabla^2_{xx}\mathcal L(x_t))\,\bar x_{t+1}, \qquad
    \bar\theta = -\eta \sum_{t=0}^{T-1} \nabla^2_{\theta x}\mathcal L(x_t)\,\bar x_{t+1},

a truncated Neumann series of the implicit hypergradient
:math:`-\nabla^2_{\theta x}\mathcal L\,(\nabla^2_{xx}\mathcal L)^{-1}\nabla_x f`, to which it converges
geometrically (rate :math:`1 - \eta\mu` for a :math:`\mu`-strongly convex inner loss) when the
iterates converge. The strategies below are ``method`` objects of :func:`bilevel.minimize` (same
signature as :class:`~bilevel.minimize.Implicit`): ``minimize(loss, init, *args, solver=, method=)``.

:class:`Unrolled` (Domke 2012; Maclaurin et al. 2015; Franceschi et al. 2017)
    Runs :math:`T` steps of ``solver.update`` with :func:`jax.lax.scan` and lets JAX differentiate
    them: reverse mode (``grad``, ``vjp``) stores the trajectory (memory :math:`O(T)`), forward mode
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

:class:`Truncated` (Shaban et al. 2019)
    Runs :math:`T-k` steps with no derivative (``lax.stop_gradient``) and backpropagates through the
    last :math:`k` only: memory :math:`O(k)`, the first :math:`k` terms of the Neumann series above
    (a biased estimate, exact in the limit :math:`k \to T`; ``Truncated(k=T)`` is ``Unrolled``).

:class:`BackGradient` (Domke 2012; Maclaurin, Duvenaud & Adams 2015; Muñoz-González et al. 2017)
    A :func:`jax.custom_vjp` over the whole :math:`T`-step map :math:`x_T = \Phi(x_0, \theta)` of
    gradient descent or heavy-ball momentum. The forward pass keeps only the final state; the backward
    pass *reverses the trajectory step by step* while accumulating the adjoint, so no trajectory is
    stored. The momentum parametrization is the one of ``optax.sgd`` (hence of
    :class:`bilevel.solvers.GradientDescent`, so ``BackGradient`` and ``Unrolled`` run the same
    iterates):

    .. math::  v_{t+1} = \gamma v_t + \nabla_x\mathcal L(x_t,\theta), \qquad x_{t+1} = x_t - \eta v_{t+1},
               \qquad v_0 = 0

    (Maclaurin's :math:`v' \leftarrow \gamma v' - (1-\gamma)\nabla`, :math:`x \leftarrow x + \alpha v'`
    is the same iteration with :math:`v' = -(1-\gamma)v` and :math:`\alpha = \eta/(1-\gamma)`). Its
    inverse is :math:`x_t = x_{t+1} + \eta v_{t+1}`,
    :math:`v_t = (v_{t+1} - \nabla_x\mathcal L(x_t))/\gamma`; the adjoint recursion run alongside it is

    .. math::  \bar v \leftarrow \bar v - \eta\bar x, \quad
               \bar x \leftarrow \bar x + \nabla^2_{xx}\mathcal L(x_t)\,\bar v, \quad
               \bar\theta \leftarrow \bar\theta + \nabla^2_{\theta x}\mathcal L(x_t)\,\bar v, \quad
               \bar v \leftarrow \gamma\bar v .

    *Exact reversal* (``exact=True``, momentum only): in floating point the division by
    :math:`\gamma` amplifies rounding errors by :math:`1/\gamma` per step, so the float reversal
    (``exact=False``) diverges from the true trajectory after a few dozen steps. Following Maclaurin
    et al. (Sec. 3, Alg. 3), :math:`x` and :math:`v` are instead held as int64 fixed-point numbers
    with ``radix_bits`` fractional bits; :math:`\gamma` is taken as a rational :math:`n/d`
    (``Fraction(momentum).limit_denominator(2**16)``, e.g. ``0.9 = 9/10``) and :math:`v \cdot n/d` is
    computed *reversibly*: the remainder :math:`v \bmod d` is pushed onto a per-parameter
    arbitrary-precision integer (the *information buffer*, base-:math:`d` digit), :math:`v` becomes
    :math:`\lfloor v/d\rfloor n` plus a base-:math:`n` digit popped from the buffer. Each step
    therefore stores exactly the :math:`\log_2(d/n) = \log_2(1/\gamma)` bits that the
    multiplication destroys (0.152 bits for :math:`\gamma=0.9`), and the backward pass undoes every
    integer operation bit for bit: the reconstructed :math:`x_0, v_0` and the emptied buffer are
    checked at the end (``on_failure``). The gradient is quantized to the same grid before it is
    added, and :math:`\eta v` is rounded to it, so the fixed-point forward map is a bijection.
    *Memory*: the buffer is a ``uint32`` array of
    :math:`\lceil (T\log_2(1/\gamma) + \log_2 d + \log_2\frac{1}{1-\gamma} + 3)/32\rceil + 1` limbs per
    parameter, one of them spare to detect overflow (7 limbs = 28 bytes per parameter for
    :math:`T=1000`, :math:`\gamma=0.9`; 2 limbs for :math:`T \le 147`; see
    :func:`information_buffer_limbs`). It is allocated once and does grow with :math:`T`, but
    :math:`64/\log_2(1/\gamma) \approx 420` times more slowly than a stored float64 trajectory of
    :math:`x` (which would also need :math:`v`). The
    hypergradient computed is that of the real-valued map evaluated along the fixed-point trajectory,
    which differs from the float64 trajectory by :math:`O(2^{-\text{radix\_bits}})` per step.

    *Approximate reversal* (``exact=False``): plain gradient descent (no momentum) cannot be inverted
    in closed form (:math:`x_t` solves :math:`x_t - \eta\nabla\mathcal L(x_t) = x_{t+1}`), so it is
    reversed to first order as in Domke (2012) and Muñoz-González et al. (2017):
    :math:`x_t \approx x_{t+1} + \eta\nabla\mathcal L(x_{t+1})` (error :math:`O(\eta^2\|\nabla^2
    \mathcal L\,\nabla\mathcal L\|)` per step, compounding backwards). Near convergence the reversed
    path stays at the minimizer and the result approaches the implicit hypergradient; far from it the
    error is visible (see the tests). With momentum, ``exact=False`` runs the float reversal above
    (unstable, for comparison only). ``exact=None`` (default) picks exact reversal when
    ``momentum > 0`` and approximate otherwise. Reverse mode only (``jax.jvp`` is not defined for a
    ``custom_vjp``; use :class:`Unrolled` for forward mode).

Mini-batches (:class:`MiniBatches`)
    Any strategy above can run a stochastic inner loop whose data order is a pure function of a PRNG
    key, so it is replayed identically by the forward pass, by rematerialization and by the
    back-gradient reversal. The per-example data stay ordinary arguments of the loss (so derivatives
    flow to them, e.g. for data poisoning, and the same loss serves full-batch methods):
    ``MiniBatches(batch_size, key, argnums)`` names the positions in ``args`` holding per-example
    arrays (leading axis :math:`n`); at step :math:`t` those arguments are replaced by rows
    ``perm[b*B:(b+1)*B]`` of ``perm = jax.random.permutation(fold_in(key, epoch), n)``, with
    ``epoch, b = divmod(t, n // B)`` (the last incomplete batch of an epoch is dropped). See
    :func:`batch_indices`.

Lower level: :func:`unrolled_solve` scans any pure ``step_fn(state, t, *args) -> state`` (e.g. a flax
model's train step) with the same checkpointing; :func:`back_gradient_solve` reverses gradient descent
or momentum driven by any pure ``grad_fn(params, t, *args) -> gradient``.

References:
  J. Domke, *Generic Methods for Optimization-Based Modeling*, AISTATS 2012.
  D. Maclaurin, D. Duvenaud, R. P. Adams, *Gradient-based Hyperparameter Optimization through
  Reversible Learning*, ICML 2015.
  L. Muñoz-González et al., *Towards Poisoning of Deep Learning Algorithms with Back-gradient
  Optimization*, AISec 2017.
  L. Franceschi, M. Donini, P. Frasconi, M. Pontil, *Forward and Reverse Gradient-Based Hyperparameter
  Optimization*, ICML 2017.
  A. Shaban, C.-A. Cheng, N. Hatch, B. Boots, *Truncated Back-propagation for Bilevel Optimization*,
  AISTATS 2019.
  A. Griewank, A. Walther, *Algorithm 799: Revolve*, ACM TOMS 2000; T. Chen et al., *Training Deep
  Nets with Sublinear Memory Cost*, 2016.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from fractions import Fraction
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from bilevel._checks import BilevelError, OnFailure, check_on_failure, error_if
from bilevel.solvers import GradientDescent, InnerSolver

__all__ = [
    "Unrolled",
    "Truncated",
    "BackGradient",
    "MiniBatches",
    "unrolled_solve",
    "back_gradient_solve",
    "batch_indices",
    "checkpoint_blocks",
    "information_buffer_limbs",
]

Checkpoint = None | Literal["sqrt", "log"] | int

_MAX_DENOMINATOR = 2**16


# ----------------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------------
def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check_steps(name: str, steps) -> int:
    if not _is_int(steps) or steps < 1:
        raise ValueError(f"argument {name!r} must be an int >= 1, got {steps!r}")
    return int(steps)


def _check_checkpoint(checkpoint) -> None:
    if checkpoint is None or checkpoint in ("sqrt", "log"):
        return
    if _is_int(checkpoint) and checkpoint >= 1:
        return
    raise ValueError(
        f"argument 'checkpoint' must be None, 'sqrt', 'log' or an int >= 1 (block size), got {checkpoint!r}"
    )


def _resolve_steps(steps, solver) -> int:
    if steps is not None:
        return _check_steps("steps", steps)
    maxiter = getattr(solver, "maxiter", None)
    if maxiter is None:
        raise ValueError("argument 'steps' is needed when the solver has no maxiter")
    return _check_steps("solver.maxiter", int(maxiter))


def _as_jax_args(args) -> tuple:
    def conv(a):
        return jnp.asarray(a) if isinstance(a, (bool, int, float, complex, np.ndarray, np.generic)) else a

    return tuple(jax.tree_util.tree_map(conv, tuple(args)))


def _is_inexact(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


# ----------------------------------------------------------------------------------------------------
# mini-batches
# ----------------------------------------------------------------------------------------------------
def batch_indices(t, n: int, batch_size: int, key) -> jax.Array:
    """Row indices of step ``t``'s mini-batch: ``perm[b*B:(b+1)*B]`` with
    ``perm = jax.random.permutation(fold_in(key, epoch), n)`` and ``epoch, b = divmod(t, n // B)``.

    Pure in ``(t, key)``: the same key replays the same data order (traced ``t`` allowed).
    """
    per_epoch = n // batch_size
    t = jnp.asarray(t)
    epoch, b = t // per_epoch, t % per_epoch
    perm = jax.random.permutation(jax.random.fold_in(key, epoch), n)
    return jax.lax.dynamic_slice_in_dim(perm, b * batch_size, batch_size)


@dataclasses.dataclass(frozen=True, eq=False)  # eq by identity: ``key`` may be an array
class MiniBatches:
    """Stochastic inner loop: step ``t`` sees a mini-batch of the per-example arguments.

    Attributes:
      batch_size: rows per step (``1 <= batch_size <= n``); ``n // batch_size`` steps per epoch.
      key: a PRNG key (``jax.random.key``/``PRNGKey``) or an int seed; fixes the data order.
      argnums: positions in ``args`` (of ``minimize(loss, init, *args)``) holding per-example data:
        every leaf of those arguments has leading axis ``n`` and is sliced by :func:`batch_indices`.
        The loss keeps its signature; it just receives fewer rows.
    """

    batch_size: int
    key: Any = 0
    argnums: tuple[int, ...] | int = ()

    def __post_init__(self):
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ValueError(f"argument 'batch_size' must be an int >= 1, got {self.batch_size!r}")
        argnums = (self.argnums,) if _is_int(self.argnums) else tuple(self.argnums)
        if not argnums or not all(_is_int(i) for i in argnums):
            raise ValueError(
                "argument 'argnums' must name the positions in args of the per-example data, e.g. "
                f"argnums=(1, 2) for loss(params, reg, X, y); got {self.argnums!r}"
            )
        object.__setattr__(self, "argnums", argnums)

    def prng_key(self):
        if _is_int(self.key):
            return jax.random.PRNGKey(int(self.key))
        return self.key

    def num_examples(self, args: tuple) -> int:
        """Validate ``argnums`` against ``args`` and return ``n``."""
        nargs = len(args)
        sizes = set()
        for i in self.argnums:
            if not -nargs <= i < nargs:
                raise ValueError(f"argument 'argnums' of MiniBatches: {i} is out of range for {nargs} args")
            for leaf in jax.tree_util.tree_leaves(args[i]):
                shape = jnp.shape(leaf)
                if not shape:
                    raise ValueError(f"argument 'argnums' of MiniBatches: args[{i}] has a scalar leaf")
                sizes.add(shape[0])
        if len(sizes) != 1:
            raise ValueError(
                "argument 'argnums' of MiniBatches: per-example args must share their leading axis, "
                f"got {sorted(sizes)}"
            )
        n = sizes.pop()
        if self.batch_size > n:
            raise ValueError(f"argument 'batch_size' ({self.batch_size}) exceeds the number of examples ({n})")
        return n

    def select(self, args: tuple, t, n: int) -> tuple:
        idx = batch_indices(t, n, self.batch_size, self.prng_key())
        pos = {i % len(args) for i in self.argnums}
        return tuple(
            jax.tree_util.tree_map(lambda a: jnp.take(a, idx, axis=0), a) if i in pos else a
            for i, a in enumerate(args)
        )


def _selector(batches: MiniBatches | None, args: tuple) -> Callable:
    """``select(args, t) -> args_t`` (identity without mini-batches)."""
    if batches is None:
        return lambda a, t: a
    if not isinstance(batches, MiniBatches):
        raise ValueError(f"argument 'batches' must be a MiniBatches or None, got {type(batches).__name__}")
    n = batches.num_examples(args)
    return lambda a, t: batches.select(a, t, n)


# ----------------------------------------------------------------------------------------------------
# unrolled scan with rematerialization
# ----------------------------------------------------------------------------------------------------
def checkpoint_blocks(steps: int, checkpoint: Checkpoint = None) -> tuple[int, ...]:
    """Nested block sizes (outermost first) used by :func:`unrolled_solve`; their product is >= ``steps``.

    ``None`` -> ``(T,)``; ``"sqrt"`` -> ``(ceil(T/b), b)`` with ``b = ceil(sqrt T)``; an int ``k`` ->
    ``(ceil(T/k), k)``; ``"log"`` -> levels of size 3 and 2 (about ``log2 T`` of them) with the smallest
    product >= ``T``.
    """
    steps = _check_steps("steps", steps)
    _check_checkpoint(checkpoint)
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
    steps = _check_steps("steps", steps)
    _check_checkpoint(checkpoint)
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


def _solver_step(loss: Callable, solver: InnerSolver, batches, args: tuple) -> Callable:
    select = _selector(batches, args)

    def step(state, t, *a):
        params, s = state
        params, s, _ = solver.update(loss, params, s, *select(a, t))
        return params, s

    return step


def _check_solver(solver) -> None:
    if not isinstance(solver, InnerSolver):
        raise ValueError(f"argument 'solver' must be a bilevel.solvers.InnerSolver, got {type(solver).__name__}")


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
            _check_steps("steps", self.steps)
        _check_checkpoint(self.checkpoint)
        if self.mode not in ("reverse", "forward"):
            raise ValueError(f"argument 'mode' must be 'reverse' or 'forward', got {self.mode!r}")
        if self.mode == "forward" and self.checkpoint is not None:
            raise ValueError("argument 'checkpoint' only affects reverse mode: use checkpoint=None with mode='forward'")

    def solve(self, loss, solver, init, args):
        _check_solver(solver)
        steps = _resolve_steps(self.steps, solver)
        args = _as_jax_args(args)
        step = _solver_step(loss, solver, self.batches, args)
        state0 = (init, solver.init_state(loss, init, *args))
        params, _ = unrolled_solve(step, state0, args, steps, self.checkpoint)
        return params


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
        _check_steps("k", self.k)
        if self.steps is not None:
            _check_steps("steps", self.steps)
        _check_checkpoint(self.checkpoint)

    def solve(self, loss, solver, init, args):
        _check_solver(solver)
        steps = _resolve_steps(self.steps, solver)
        if self.k > steps:
            raise ValueError(f"argument 'k' ({self.k}) must be at most the number of steps ({steps})")
        args = _as_jax_args(args)
        step = _solver_step(loss, solver, self.batches, args)
        state = (init, solver.init_state(loss, init, *args))
        head = steps - self.k
        if head > 0:
            frozen = jax.lax.stop_gradient((state, args))
            state = jax.lax.stop_gradient(unrolled_solve(step, frozen[0], frozen[1], head))
        params, _ = unrolled_solve(step, state, args, self.k, self.checkpoint, start=head)
        return params


# ----------------------------------------------------------------------------------------------------
# back-gradient: reversible gradient descent / momentum
# ----------------------------------------------------------------------------------------------------
def _momentum_fraction(momentum: float) -> Fraction:
    return Fraction(float(momentum)).limit_denominator(_MAX_DENOMINATOR)


def information_buffer_limbs(steps: int, momentum: float) -> int:
    """Number of 32-bit limbs per parameter of the exact-reversal information buffer.

    The buffer holds at most :math:`T\\log_2(d/n) + \\log_2\\frac{d/n}{d/n-1} + \\log_2 d` bits for
    :math:`\\gamma = n/d` (see the module docstring); one spare limb detects overflow.
    """
    steps = _check_steps("steps", steps)
    frac = _momentum_fraction(momentum)
    n, d = frac.numerator, frac.denominator
    if not 0 < n < d:
        raise ValueError(f"argument 'momentum' must be in (0, 1) for exact reversal, got {momentum!r}")
    c = d / n
    bits = steps * math.log2(c) + math.log2(c / (c - 1.0)) + math.log2(d) + 3.0
    return int(math.ceil(bits / 32.0)) + 1


_U32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)


def _buffer_push(buf, digit, base):
    """``buf <- buf * base + digit`` on a (limbs, P) uint32 big integer (limb 0 least significant).
    Returns the new buffer and whether it overflowed."""
    base = np.uint64(base)

    def body(carry, limb):
        tmp = limb.astype(jnp.uint64) * base + carry
        return tmp >> _S32, (tmp & _U32).astype(jnp.uint32)

    carry, new = jax.lax.scan(body, digit.astype(jnp.uint64), buf)
    return new, jnp.any(carry != 0)


def _buffer_pop(buf, base):
    """``(buf // base, buf % base)`` on a (limbs, P) uint32 big integer."""
    base = np.uint64(base)

    def body(rem, limb):
        cur = (rem << _S32) | limb.astype(jnp.uint64)
        return cur % base, (cur // base).astype(jnp.uint32)

    rem, new = jax.lax.scan(body, jnp.zeros(buf.shape[1:], jnp.uint64), buf, reverse=True)
    return new, rem


def _mul_gamma(v, buf, n, d):
    """Exactly reversible ``v <- v * n / d`` (int64 ``v``), Maclaurin et al. 2015, Alg. 3."""
    buf, over = _buffer_push(buf, jnp.mod(v, d), d)
    v = jnp.floor_divide(v, d) * n
    buf, digit = _buffer_pop(buf, n)
    return v + digit.astype(jnp.int64), buf, over


def _div_gamma(v, buf, n, d):
    """Inverse of :func:`_mul_gamma`."""
    buf, over = _buffer_push(buf, jnp.mod(v, n), n)
    v = jnp.floor_divide(v, n) * d
    buf, digit = _buffer_pop(buf, d)
    return v + digit.astype(jnp.int64), buf, over


@dataclasses.dataclass(frozen=True)
class _BGConfig:
    steps: int
    learning_rate: float
    momentum: float  # 0.0 for plain gradient descent
    exact: bool
    radix_bits: int
    num: int
    den: int
    limbs: int
    on_failure: str


def _split_diff(tree):
    """Leaves of ``tree`` split into differentiable (inexact) ones and the rest, with a merge function."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    mask = [_is_inexact(leaf) for leaf in leaves]
    diff = [leaf for leaf, m in zip(leaves, mask) if m]
    rest = [leaf for leaf, m in zip(leaves, mask) if not m]

    def merge(diff_leaves):
        it_d, it_r = iter(diff_leaves), iter(rest)
        return jax.tree_util.tree_unflatten(treedef, [next(it_d) if m else next(it_r) for m in mask])

    def cotangent(diff_bars):
        it = iter(diff_bars)
        out = [
            next(it) if m else np.zeros(np.shape(leaf), dtype=jax.dtypes.float0)
            for leaf, m in zip(leaves, mask)
        ]
        return jax.tree_util.tree_unflatten(treedef, out)

    return diff, merge, cotangent


def _fixed_scale(cfg):
    return float(2.0 ** cfg.radix_bits)


def _bg_forward(gflat, cfg: _BGConfig, x0, operands):
    """Forward T steps; returns (x_T, final carry, ok flag)."""
    ts = jnp.arange(cfg.steps, dtype=jnp.int32)
    lr = cfg.learning_rate
    if not cfg.exact:
        if cfg.momentum == 0.0:

            def body(x, t):
                return x - lr * gflat(x, t, operands), None

            x = jax.lax.scan(body, x0, ts)[0]
            return x, (x, None), jnp.asarray(True)

        gamma = cfg.momentum

        def body(c, t):
            x, v = c
            v = gamma * v + gflat(x, t, operands)
            return (x - lr * v, v), None

        x, v = jax.lax.scan(body, (x0, jnp.zeros_like(x0)), ts)[0]
        return x, (x, v), jnp.asarray(True)

    scale = _fixed_scale(cfg)
    bound = 2.0 ** (61 - cfg.radix_bits)  # |x|, |v|, |g| must stay below (room for one addition)
    n, d = cfg.num, cfg.den
    dtype = x0.dtype

    def body(c, t):
        X, V, buf, ok = c
        x = (X.astype(jnp.float64) / scale).astype(dtype)
        g = gflat(x, t, operands)
        ok = ok & jnp.all(jnp.abs(g) < bound)
        G = jnp.round(g.astype(jnp.float64) * scale).astype(jnp.int64)
        V, buf, over = _mul_gamma(V, buf, n, d)
        V = V + G
        X = X - jnp.round(lr * V.astype(jnp.float64)).astype(jnp.int64)
        ok = ok & ~over & jnp.all(jnp.abs(V) < bound * scale) & jnp.all(jnp.abs(X) < bound * scale)
        return (X, V, buf, ok), None

    X0 = jnp.round(x0.astype(jnp.float64) * scale).astype(jnp.int64)
    ok0 = jnp.all(jnp.abs(x0) < bound)
    buf0 = jnp.zeros((cfg.limbs,) + x0.shape, jnp.uint32)
    X, V, buf, ok = jax.lax.scan(body, (X0, jnp.zeros_like(X0), buf0, ok0), ts)[0]
    x = (X.astype(jnp.float64) / scale).astype(dtype)
    return x, (X, V, buf, X0), ok


def _check_forward(x, ok, cfg):
    return error_if(
        x,
        jnp.logical_not(ok),
        "BackGradient exact reversal: fixed-point overflow (|x|, |v| or |gradient| reached "
        f"2**{61 - cfg.radix_bits} with radix_bits={cfg.radix_bits}, or the information buffer "
        f"of {cfg.limbs} limbs overflowed). Lower radix_bits, rescale the problem, or use exact=False.",
        on_failure=cfg.on_failure,
        error=BilevelError,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _back_gradient(gflat, cfg, x0, operands):
    x, _, ok = _bg_forward(gflat, cfg, x0, operands)
    return _check_forward(x, ok, cfg)


def _back_gradient_fwd(gflat, cfg, x0, operands):
    x, carry, ok = _bg_forward(gflat, cfg, x0, operands)
    x = _check_forward(x, ok, cfg)
    return x, (carry, operands)


def _back_gradient_bwd(gflat, cfg, res, xbar):
    carry, operands = res
    diff, merge, cotangent = _split_diff(operands)
    lr = cfg.learning_rate
    ts = jnp.arange(cfg.steps, dtype=jnp.int32)
    zeros_diff = [jnp.zeros_like(leaf) for leaf in diff]

    def vjp_at(x, t, cot):
        g, pullback = jax.vjp(lambda x_, d_: gflat(x_, t, merge(d_)), x, diff)
        hx, hd = pullback(cot)
        return g, hx, hd

    def add(a, b):
        return [u + w for u, w in zip(a, b)]

    if not cfg.exact and cfg.momentum == 0.0:
        # Approximate reversal of x_{t+1} = x_t - lr g_t(x_t):  x_t ~ x_{t+1} + lr g_t(x_{t+1}).
        def body(c, t):
            x, xb, db = c
            x_prev = x + lr * gflat(x, t, operands)
            _, hx, hd = vjp_at(x_prev, t, -lr * xb)
            return (x_prev, xb + hx, add(db, hd)), None

        (x, xb, db), _ = jax.lax.scan(body, (carry[0], xbar, zeros_diff), ts, reverse=True)
        return xb, cotangent(db)

    gamma_f = cfg.num / cfg.den if cfg.exact else cfg.momentum

    if not cfg.exact:
        # Float reversal of heavy-ball momentum (unstable: divides rounding errors by gamma).
        def body(c, t):
            x, v, xb, vb, db = c
            x_prev = x + lr * v
            vb = vb - lr * xb
            g, hx, hd = vjp_at(x_prev, t, vb)
            v_prev = (v - g) / gamma_f
            return (x_prev, v_prev, xb + hx, gamma_f * vb, add(db, hd)), None

        x, v = carry
        init = (x, v, xbar, jnp.zeros_like(xbar), zeros_diff)
        (_, _, xb, _, db), _ = jax.lax.scan(body, init, ts, reverse=True)
        return xb, cotangent(db)

    scale = _fixed_scale(cfg)
    n, d = cfg.num, cfg.den
    X, V, buf, X0 = carry
    dtype = xbar.dtype

    def body(c, t):
        X, V, buf, xb, vb, db = c
        X = X + jnp.round(lr * V.astype(jnp.float64)).astype(jnp.int64)
        x = (X.astype(jnp.float64) / scale).astype(dtype)
        vb = vb - lr * xb
        g, hx, hd = vjp_at(x, t, vb)
        G = jnp.round(g.astype(jnp.float64) * scale).astype(jnp.int64)
        V, buf, _ = _div_gamma(V - G, buf, n, d)
        return (X, V, buf, xb + hx, gamma_f * vb, add(db, hd)), None

    init = (X, V, buf, xbar, jnp.zeros_like(xbar), zeros_diff)
    (Xr, Vr, bufr, xb, _, db), _ = jax.lax.scan(body, init, ts, reverse=True)
    drift = jnp.maximum(jnp.max(jnp.abs(Xr - X0)), jnp.max(jnp.abs(Vr))).astype(jnp.float64)
    failed = (drift > 0) | jnp.any(bufr != 0)
    xb = error_if(
        xb,
        failed,
        "BackGradient exact reversal did not return to the initial state (drift {drift:.0f} units of "
        f"2**-{cfg.radix_bits}, or a non-empty information buffer): the gradient function is not "
        "deterministic between the forward and the backward pass.",
        on_failure=cfg.on_failure,
        error=BilevelError,
        fmt_args={"drift": drift},
    )
    return xb, cotangent(db)


_back_gradient.defvjp(_back_gradient_fwd, _back_gradient_bwd)


def back_gradient_solve(
    grad_fn: Callable,
    init: Any,
    args: tuple = (),
    *,
    steps: int,
    learning_rate: float,
    momentum: float | None = None,
    exact: bool | None = None,
    radix_bits: int = 40,
    on_failure: OnFailure = "raise",
):
    """``steps`` steps of gradient descent / heavy-ball momentum driven by ``grad_fn``, with the
    reverse-mode derivative computed by reversing the trajectory (no trajectory stored).

    Iteration (``optax.sgd``'s): ``v <- momentum * v + grad_fn(x, t, *args)``, ``x <- x - learning_rate * v``
    (``v = 0`` initially; plain gradient descent when ``momentum`` is ``None`` or 0).

    Args:
      grad_fn: pure ``grad_fn(params, t, *args) -> gradient`` (pytree like ``params``; ``t`` the step
        index, e.g. to pick a mini-batch); may close over arrays (they get derivatives too).
      init: initial params ``x_0`` (gets a derivative).
      args: tuple of hyperparameters and data (get derivatives; integer leaves get none).
      steps: number of steps ``T``.
      learning_rate, momentum: the step size and momentum ``0 <= momentum < 1`` (Python floats).
      exact: ``True``: bit-exact fixed-point reversal (needs ``momentum > 0`` and ``jax_enable_x64``);
        ``False``: float reversal (approximate for gradient descent, unstable for momentum); ``None``:
        exact iff ``momentum > 0``.
      radix_bits: fractional bits of the int64 fixed-point representation (exact mode): resolution
        ``2**-radix_bits``, range ``|x|, |v|, |g| < 2**(61 - radix_bits)``.
      on_failure: policy for fixed-point overflow and for a reversal that does not return to
        ``x_0`` exactly (``"raise"``, ``"warn"``, ``"ignore"``).

    Returns:
      ``x_T`` (pytree like ``init``); reverse-mode differentiable in ``init``, ``args`` and closed-over
      arrays (``jax.grad``/``vjp``, also under ``jit``/``vmap``; not ``jvp``).
    """
    if not callable(grad_fn):
        raise TypeError(f"argument 'grad_fn' must be callable, got {type(grad_fn).__name__}")
    steps = _check_steps("steps", steps)
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float, np.floating)):
        raise ValueError(f"argument 'learning_rate' must be a Python float, got {learning_rate!r}")
    if not learning_rate > 0:
        raise ValueError(f"argument 'learning_rate' must be > 0, got {learning_rate!r}")
    mom = 0.0 if momentum is None else momentum
    if isinstance(mom, bool) or not isinstance(mom, (int, float, np.floating)) or not 0.0 <= mom < 1.0:
        raise ValueError(f"argument 'momentum' must be None or a float in [0, 1), got {momentum!r}")
    if exact is None:
        exact = mom > 0.0
    if exact and mom == 0.0:
        raise ValueError(
            "argument 'exact': plain gradient descent (momentum None or 0) cannot be reversed exactly "
            "(x_t solves x_t - lr*grad(x_t) = x_{t+1}); use exact=False (first-order reversal) or momentum > 0"
        )
    if not _is_int(radix_bits) or not 8 <= radix_bits <= 52:
        raise ValueError(f"argument 'radix_bits' must be an int in [8, 52], got {radix_bits!r}")
    check_on_failure(on_failure)
    if exact and not jax.config.jax_enable_x64:
        raise ValueError(
            "argument 'exact': exact reversal uses int64 fixed-point arithmetic; enable it with "
            "jax.config.update('jax_enable_x64', True), or use exact=False"
        )
    if exact:
        frac = _momentum_fraction(mom)
        num, den, limbs = frac.numerator, frac.denominator, information_buffer_limbs(steps, mom)
    else:
        num, den, limbs = 0, 1, 0
    cfg = _BGConfig(steps, float(learning_rate), float(mom), bool(exact), int(radix_bits), num, den, limbs, on_failure)

    args = _as_jax_args(args)
    flat0, unravel = ravel_pytree(init)
    if not jnp.issubdtype(flat0.dtype, jnp.floating):
        raise ValueError(f"argument 'init' must hold floating-point arrays, got dtype {flat0.dtype}")
    conv, consts = jax.closure_convert(grad_fn, init, jnp.asarray(0, jnp.int32), *args)
    nargs = len(args)

    def gflat(xf, t, operands):
        a, c = operands[:nargs], operands[nargs:]
        g = conv(unravel(xf), t, *a, *c)
        gf, _ = ravel_pytree(g)
        if gf.shape != xf.shape:
            raise ValueError(f"grad_fn must return a pytree like params: got {gf.shape[0]} values for {xf.shape[0]}")
        return gf.astype(xf.dtype)

    out = _back_gradient(gflat, cfg, flat0, tuple(args) + tuple(consts))
    return unravel(out)


@dataclasses.dataclass(frozen=True)
class BackGradient:
    """Back-gradient (reversible learning) hypergradient of gradient descent / momentum SGD.

    See the module docstring for the iteration, the reversal and its exactness.

    Attributes:
      steps: number of inner steps ``T`` (default ``solver.maxiter``).
      exact: ``True``/``False``/``None`` (exact iff momentum > 0), see :func:`back_gradient_solve`.
      learning_rate, momentum: the iteration's constants. ``None`` (default): taken from the solver,
        which must then be a :class:`bilevel.solvers.GradientDescent`; if ``learning_rate`` is given
        the solver is only used for its ``maxiter`` and ``momentum`` defaults to plain GD.
      radix_bits: fixed-point resolution of exact reversal.
      batches: optional :class:`MiniBatches`.
      on_failure: policy for overflow / inexact reversal.
    """

    steps: int | None = None
    exact: bool | None = None
    learning_rate: float | None = None
    momentum: float | None = None
    radix_bits: int = 40
    batches: MiniBatches | None = None
    on_failure: OnFailure = "raise"

    def __post_init__(self):
        if self.steps is not None:
            _check_steps("steps", self.steps)
        if self.exact not in (None, True, False):
            raise ValueError(f"argument 'exact' must be True, False or None, got {self.exact!r}")
        if self.learning_rate is None and self.momentum is not None:
            raise ValueError("argument 'momentum' needs an explicit 'learning_rate' too (or take both from the solver)")
        check_on_failure(self.on_failure)

    def hyperparameters(self, solver) -> tuple[float, float | None]:
        """``(learning_rate, momentum)`` of the iteration, from the fields or a GradientDescent solver."""
        if self.learning_rate is not None:
            return self.learning_rate, self.momentum
        if not isinstance(solver, GradientDescent):
            raise ValueError(
                "argument 'solver': BackGradient reverses gradient descent and momentum SGD only, so the "
                "solver must be bilevel.solvers.GradientDescent (got "
                f"{type(solver).__name__}); or give BackGradient(learning_rate=..., momentum=...)"
            )
        lr = solver.learning_rate
        if callable(lr):
            raise ValueError("argument 'solver': BackGradient needs a constant learning_rate, not a schedule")
        return lr, solver.momentum

    def solve(self, loss, solver, init, args):
        lr, mom = self.hyperparameters(solver)
        steps = _resolve_steps(self.steps, solver)
        args = _as_jax_args(args)
        select = _selector(self.batches, args)

        def grad_fn(x, t, *a):
            return jax.grad(loss)(x, *select(a, t))

        return back_gradient_solve(
            grad_fn,
            init,
            args,
            steps=steps,
            learning_rate=lr,
            momentum=mom,
            exact=self.exact,
            radix_bits=self.radix_bits,
            on_failure=self.on_failure,
        )
