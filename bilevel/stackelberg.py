r"""Leader/follower (Stackelberg) games: projected hypergradient descent on the leader, best response below.

Problem
-------
A *leader* chooses :math:`x \in \mathcal X` (a closed convex set, given by its Euclidean projection
:math:`P_{\mathcal X}`); a *follower* answers with a best response :math:`w^\star(x)`:

.. math::

    \min_{x \in \mathcal X} \; F(x) = f\big(x, w^\star(x)\big)
    \qquad\text{s.t.}\qquad w^\star(x) \in \arg\min_w \, g(w, x)

(or :math:`\max_x`, with ``maximize=True``). ``leader_objective(leader, w, *args)`` is :math:`f` and
``follower_loss(w, leader, *args)`` is :math:`g`. By the chain rule the leader's total derivative, the
*hypergradient*, is

.. math::

    \nabla F(x) = \nabla_x f + \Big(\frac{\partial w^\star}{\partial x}\Big)^{\!\top} \nabla_w f,
    \qquad
    \frac{\partial w^\star}{\partial x} = -\big[\nabla^2_{ww} g\big]^{-1} \nabla^2_{wx} g
    \quad\text{(implicit function theorem)},

computed by a hypergradient *method* (:class:`~bilevel.minimize.Implicit` by default, or the
unrolled/truncated/back-gradient strategies of :mod:`bilevel.unroll`; any object with
``solve(loss, solver, init, args)`` works). At leader step :math:`k`:

1. the follower is solved by ``follower_solver``, warm-started from its previous solution
   :math:`w_{k-1}` (a few inner iterations once the leader moves slowly);
2. the leader moves by projected (hyper)gradient descent :math:`x_{k+1} = P_{\mathcal X}(x_k - \eta_k
   \nabla F(x_k))`, with either an :mod:`optax` optimizer (its update replaces :math:`-\eta_k\nabla F`)
   or a :class:`LineSearch`: the step :math:`\eta` is tried, *grown* while the true objective (a fresh
   follower solve at every trial point) keeps improving, and *shrunk* until it improves; a step that
   cannot improve is rejected (the ``pgd-ls`` solver of secml, used by Biggio et al. 2012 and
   Demontis et al. 2019 for poisoning and evasion).

The loop runs ``steps`` leader steps under :func:`jax.lax.scan` inside one :func:`jax.jit`; per-step
diagnostics come back as arrays (:class:`StackelbergHistory`). Once a step moves the leader by at most
``tol`` (a rejected line-search step moves it by 0) the remaining steps are frozen (skipped with
:func:`jax.lax.cond`) and recorded with ``active=False``. Everything is a pure JAX function, so
``jax.vmap`` of :func:`solve_stackelberg` solves many independent games in one compiled call
(:func:`solve_stackelberg_batched` is that vmap with ``in_axes``).

Coordinate (block) mode
-----------------------
``mode="coordinate"``: the leader is a batch of ``m`` blocks (every leaf has leading axis ``m``, e.g.
``m`` poison points of shape ``(m, d)``). Step :math:`k` updates only block
:math:`i = \lfloor k / \text{block\_steps}\rfloor \bmod m` (the hypergradient and the update are masked
to it; the optax state and the line-search step are re-initialized when the block changes), so the
blocks are swept cyclically, ``steps / (m * block_steps)`` passes in all. This is the greedy multi-point scheme of Biggio et al.
(2012) and Muñoz-González et al. (2017). The projection is applied to the whole leader: use an
elementwise one (a box) or :func:`blockwise` so that fixed blocks do not move.

Two-timescale gradient play
---------------------------
:func:`solve_gradient_play` replaces the exact best response by simultaneous gradient steps,

.. math::

    w_{k+1} = w_k - \alpha\,\nabla_w g(w_k, x_k) \ (\text{repeated } s \text{ times}), \qquad
    x_{k+1} = P_{\mathcal X}\big(x_k - \beta\, d_k\big),

with :math:`\beta \ll \alpha` (the follower on the fast timescale) and leader direction :math:`d_k`
either the partial gradient :math:`\nabla_x f(x_k, w_k)` (``"partial"``; exact for zero-sum games by
Danskin's theorem, since :math:`\nabla_w g = 0` at the best response), the derivative through the
follower's gradient step(s) (``"unrolled"``), or the implicit-function formula evaluated at the current
:math:`w_k` (``"implicit"``; the two-timescale stochastic approximation of Hong et al. 2020). Two-
timescale stochastic approximation converges to the equilibrium of the slow system with the fast one
at its own equilibrium (Borkar 1997); Heusel et al. (2017) use it for GANs (TTUR).

References
----------
- H. von Stackelberg, *Marktform und Gleichgewicht*, Springer, 1934.
- B. Colson, P. Marcotte, G. Savard, "An overview of bilevel optimization", Annals of Operations
  Research 153, 2007.
- B. Biggio, B. Nelson, P. Laskov, "Poisoning attacks against support vector machines", ICML 2012.
- L. Muñoz-González et al., "Towards poisoning of deep learning algorithms with back-gradient
  optimization", AISec 2017.
- V. S. Borkar, "Stochastic approximation with two time scales", Systems & Control Letters 29, 1997.
- M. Heusel et al., "GANs trained by a two time-scale update rule converge to a local Nash
  equilibrium", NeurIPS 2017.
- M. Hong, H.-T. Wai, Z. Wang, Z. Yang, "A two-timescale framework for bilevel optimization:
  complexity analysis and application to actor-critic", arXiv:2007.05170, 2020.
- A. Demontis et al., "Why do adversarial attacks transfer?", USENIX Security 2019 (secml ``pgd-ls``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu
from jax.flatten_util import ravel_pytree

from bilevel._checks import validate_finite
from bilevel.hvp import hessian_matvec, mixed_vjp
from bilevel.linear_solve import get_solver
from bilevel.minimize import Implicit
from bilevel.solvers import LBFGS, InnerSolver

__all__ = [
    "LineSearch",
    "StackelbergConfig",
    "StackelbergState",
    "StackelbergHistory",
    "StackelbergResult",
    "StackelbergSolver",
    "solve_stackelberg",
    "solve_stackelberg_batched",
    "solve_gradient_play",
    "box",
    "l2_ball",
    "linf_ball",
    "simplex",
    "blockwise",
]


# ----------------------------------------------------------------------------------------------------
# projections
# ----------------------------------------------------------------------------------------------------
def box(lower, upper) -> Callable:
    """Projection onto ``{x : lower <= x <= upper}`` (elementwise; :func:`optax.projections.projection_box`)."""
    return lambda x: optax.projections.projection_box(x, lower, upper)


def _centered(project, center):
    if center is None:
        return project

    def proj(x):
        shifted = jax.tree_util.tree_map(jnp.subtract, x, center)
        return jax.tree_util.tree_map(jnp.add, project(shifted), center)

    return proj


def l2_ball(radius, center=None) -> Callable:
    """Projection onto ``{x : ||x - center||_2 <= radius}`` (whole pytree; ``center`` default 0)."""
    return _centered(lambda x: optax.projections.projection_l2_ball(x, radius), center)


def linf_ball(radius, center=None) -> Callable:
    """Projection onto ``{x : ||x - center||_inf <= radius}`` (``center`` default 0)."""
    return _centered(lambda x: optax.projections.projection_linf_ball(x, radius), center)


def simplex(scale=1.0) -> Callable:
    """Projection of an array onto ``{x >= 0, sum(x) = scale}`` (:func:`optax.projections.projection_simplex`)."""
    return lambda x: optax.projections.projection_simplex(x, scale)


def blockwise(projection: Callable) -> Callable:
    """Apply ``projection`` to each block (slice along the leading axis) separately: ``jax.vmap(projection)``.

    E.g. ``blockwise(l2_ball(eps))`` keeps every poison point in its own ball in coordinate mode.
    """
    if not callable(projection):
        raise ValueError(f"argument 'projection' must be callable, got {type(projection).__name__}")
    return jax.vmap(projection)


# ----------------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LineSearch:
    """Projected-gradient step with exploration of step sizes (secml ``pgd-ls`` style).

    At each leader step the trial ``x(eta) = P(x - eta * d)`` (``d`` the hypergradient, unit-normalized
    when ``normalize``) is evaluated with a fresh follower solve. If it improves the objective, ``eta``
    is multiplied by ``grow`` while the objective keeps improving (at most ``max_grow`` times);
    otherwise it is multiplied by ``shrink`` until it improves (at most ``max_shrink`` times) and the step
    is rejected if it never does. The accepted ``eta`` starts the next step (``init_step`` again when
    ``reset``). A trial whose follower solve is not finite (or, unless the follower solver has
    ``on_failure="ignore"``, does not reach its ``tol``) counts as no improvement.
    """

    init_step: float = 1.0
    grow: float = 2.0
    shrink: float = 0.5
    max_grow: int = 8
    max_shrink: int = 30
    normalize: bool = False
    reset: bool = False

    def __post_init__(self):
        if not self.init_step > 0:
            raise ValueError(f"LineSearch: 'init_step' must be > 0, got {self.init_step}")
        if not self.grow > 1:
            raise ValueError(f"LineSearch: 'grow' must be > 1, got {self.grow}")
        if not 0 < self.shrink < 1:
            raise ValueError(f"LineSearch: 'shrink' must be in (0, 1), got {self.shrink}")
        if int(self.max_grow) < 0 or int(self.max_shrink) < 1:
            raise ValueError("LineSearch: 'max_grow' must be >= 0 and 'max_shrink' >= 1")


@dataclasses.dataclass(frozen=True)
class StackelbergConfig:
    """Settings of :class:`StackelbergSolver` / :func:`solve_stackelberg`.

    Attributes:
      follower_solver: inner solver of :mod:`bilevel.solvers` (default ``LBFGS()``); warm-started.
      method: hypergradient strategy, any object with ``solve(loss, solver, init, args)``
        (default :class:`~bilevel.minimize.Implicit`).
      leader_optimizer: an :class:`optax.GradientTransformation` (its updates are added to the leader,
        then projected), a :class:`LineSearch`, or the string ``"line_search"`` (``LineSearch()``).
      projection: ``projection(leader) -> leader`` onto the feasible set, or ``None`` (unconstrained).
        See :func:`box`, :func:`l2_ball`, :func:`linf_ball`, :func:`simplex`, :func:`blockwise`.
      maximize: maximize the leader objective instead of minimizing it.
      steps: number of leader steps (>= 1); in coordinate mode the total over all blocks.
      tol: a step moving the leader by at most ``tol`` (L2) counts as stalled; once a whole sweep
        (one step in joint mode, ``m * block_steps`` in coordinate mode) stalls, the rest is frozen.
      mode: ``"joint"`` (all of the leader at once) or ``"coordinate"`` (one block at a time).
      block_steps: consecutive steps on each block in coordinate mode (>= 1).
    """

    follower_solver: InnerSolver | None = None
    method: Any = None
    leader_optimizer: Any = "line_search"
    projection: Callable | None = None
    maximize: bool = False
    steps: int = 100
    tol: float = 0.0
    mode: Literal["joint", "coordinate"] = "joint"
    block_steps: int = 1

    def __post_init__(self):
        if self.follower_solver is None:
            object.__setattr__(self, "follower_solver", LBFGS())
        if not isinstance(self.follower_solver, InnerSolver):
            raise ValueError(
                "argument 'follower_solver' must be a bilevel.solvers.InnerSolver, got "
                f"{type(self.follower_solver).__name__}"
            )
        if self.method is None:
            object.__setattr__(self, "method", Implicit())
        if not callable(getattr(self.method, "solve", None)):
            raise ValueError(f"argument 'method' must have solve(loss, solver, init, args), got {self.method!r}")
        opt = self.leader_optimizer
        if isinstance(opt, str):
            if opt not in ("line_search", "pgd-ls"):
                raise ValueError(
                    f"argument 'leader_optimizer' must be an optax GradientTransformation, a LineSearch or "
                    f"'line_search', got {opt!r}"
                )
            object.__setattr__(self, "leader_optimizer", LineSearch())
        elif not isinstance(opt, (LineSearch, optax.GradientTransformation)):
            raise ValueError(
                "argument 'leader_optimizer' must be an optax GradientTransformation, a LineSearch or "
                f"'line_search', got {type(opt).__name__}"
            )
        if self.projection is not None and not callable(self.projection):
            raise ValueError(f"argument 'projection' must be callable or None, got {type(self.projection).__name__}")
        if not isinstance(self.maximize, (bool, np.bool_)):
            raise ValueError(f"argument 'maximize' must be a bool, got {self.maximize!r}")
        _check_count("steps", self.steps)
        _check_count("block_steps", self.block_steps)
        if not (isinstance(self.tol, (int, float)) and np.isfinite(self.tol) and self.tol >= 0):
            raise ValueError(f"argument 'tol' must be a finite number >= 0, got {self.tol!r}")
        if self.mode not in ("joint", "coordinate"):
            raise ValueError(f"argument 'mode' must be 'joint' or 'coordinate', got {self.mode!r}")

    @property
    def line_search(self) -> bool:
        return isinstance(self.leader_optimizer, LineSearch)


def _check_count(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise ValueError(f"argument {name!r} must be an integer >= 1, got {value!r}")


# ----------------------------------------------------------------------------------------------------
# state, history, result
# ----------------------------------------------------------------------------------------------------
class StackelbergState(NamedTuple):
    """Loop state (a pytree): iterates, optimizer state, line-search step and stall bookkeeping."""

    leader: Any
    follower: Any
    opt_state: Any
    step_size: jax.Array  # line search: the step to try next
    k: jax.Array  # steps taken (including frozen ones)
    stall: jax.Array  # consecutive stalled steps
    done: jax.Array
    objective: jax.Array  # last recorded values (reported again by frozen steps)
    follower_residual: jax.Array
    hypergrad_norm: jax.Array


class StackelbergHistory(NamedTuple):
    """Per-step diagnostics, each an array with leading axis ``steps`` (``(batch, steps)`` when vmapped).

    Attributes:
      objective: leader objective :math:`f(x_k, w^\\star(x_k))` at the iterate *before* step ``k``.
      follower_residual: follower gradient norm :math:`\\|\\nabla_w g(w_k, x_k)\\|` there.
      hypergrad_norm: norm of the (block-masked) hypergradient.
      step_size: accepted line-search step (0 = rejected), or ``||dx|| / ||grad||`` for optax.
      step_norm: ``||x_{k+1} - x_k||``.
      block: the block updated at step ``k`` (coordinate mode), else ``-1``.
      active: ``False`` for the frozen steps after convergence.
    """

    objective: jax.Array
    follower_residual: jax.Array
    hypergrad_norm: jax.Array
    step_size: jax.Array
    step_norm: jax.Array
    block: jax.Array
    active: jax.Array


class StackelbergResult(NamedTuple):
    """``leader``: the final leader; ``follower``: its best response (the last follower iterate for
    gradient play); ``objective``: the leader objective there; ``history``: a :class:`StackelbergHistory`."""

    leader: Any
    follower: Any
    objective: jax.Array
    history: StackelbergHistory


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------
def _tree_where(cond, a, b):
    return jax.tree_util.tree_map(lambda x, y: jnp.where(cond, x, y), a, b)


def _float_tree(name, tree):
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        raise ValueError(f"argument {name!r} must be a non-empty pytree of float arrays")
    for leaf in leaves:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(f"argument {name!r} must hold floating-point arrays, got dtype {dtype}")
    out = jax.tree_util.tree_map(jnp.asarray, tree)
    validate_finite(name, out)
    return out


def _check_scalar_fn(name, fn, *example):
    try:
        out = jax.eval_shape(fn, *example)
    except (TypeError, ValueError) as e:
        raise ValueError(f"argument {name!r} could not be evaluated on the initial leader/follower: {e}") from e
    if not hasattr(out, "shape") or tuple(out.shape) != ():
        shape = getattr(out, "shape", type(out).__name__)
        raise ValueError(f"argument {name!r} must return a scalar, got shape {shape}")


def _check_projection(projection, leader):
    if projection is None:
        return
    out = jax.eval_shape(projection, leader)
    if jax.tree_util.tree_structure(out) != jax.tree_util.tree_structure(leader) or any(
        tuple(o.shape) != tuple(jnp.shape(l))
        for o, l in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(leader))
    ):
        raise ValueError(
            "argument 'projection' must return a pytree shaped like the leader: got "
            f"{jax.tree_util.tree_map(lambda a: a.shape, out)} for {jax.tree_util.tree_map(jnp.shape, leader)}"
        )


def _num_blocks(leader) -> int:
    dims = {jnp.shape(l)[0] if jnp.ndim(l) >= 1 else None for l in jax.tree_util.tree_leaves(leader)}
    if None in dims or len(dims) != 1:
        raise ValueError(
            "argument 'leader_init': coordinate mode needs every leaf to have the same leading (block) axis, "
            f"got shapes {jax.tree_util.tree_map(jnp.shape, leader)}"
        )
    m = dims.pop()
    if m < 1:
        raise ValueError("argument 'leader_init': coordinate mode needs at least one block")
    return int(m)


def _block_mask(tree, block):
    def mask(a):
        sel = jnp.arange(a.shape[0]) == block
        return a * sel.reshape((-1,) + (1,) * (a.ndim - 1)).astype(a.dtype)

    return jax.tree_util.tree_map(mask, tree)


def _validate_callables(leader_objective, follower_loss):
    if not callable(leader_objective):
        raise ValueError(f"argument 'leader_objective' must be callable, got {type(leader_objective).__name__}")
    if not callable(follower_loss):
        raise ValueError(f"argument 'follower_loss' must be callable, got {type(follower_loss).__name__}")


# ----------------------------------------------------------------------------------------------------
# the solver
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StackelbergSolver:
    """Projected hypergradient descent for a leader over a best-responding follower.

    ``leader_objective(leader, w, *args) -> scalar`` and ``follower_loss(w, leader, *args) -> scalar``;
    ``args`` are extra arrays (data) passed to both at every call (or close over them).

    Protocol (all pure JAX, jit/vmap-able):

    - :meth:`init` ``(leader_init, follower_init, *args) -> StackelbergState``
    - :meth:`update` ``(state, *args) -> (state, StackelbergHistory of one step)``: one leader step
      (use it in a Python loop, e.g. with a progress bar, after ``jax.jit``);
    - :meth:`run` ``(leader_init, follower_init, *args) -> StackelbergResult``: ``steps`` updates
      under ``lax.scan`` in one ``jax.jit``, then a final follower solve.
    """

    leader_objective: Callable
    follower_loss: Callable
    config: StackelbergConfig = dataclasses.field(default_factory=StackelbergConfig)

    def __post_init__(self):
        _validate_callables(self.leader_objective, self.follower_loss)
        if not isinstance(self.config, StackelbergConfig):
            raise ValueError(f"argument 'config' must be a StackelbergConfig, got {type(self.config).__name__}")

    # -- pieces ------------------------------------------------------------------------------------
    @property
    def _sign(self):
        return -1.0 if self.config.maximize else 1.0

    def _project(self, x):
        p = self.config.projection
        return x if p is None else p(x)

    def _residual(self, w, x, args):
        return otu.tree_norm(jax.grad(self.follower_loss)(w, x, *args))

    def _value_and_hypergrad(self, x, w0, args):
        """``(sign * f, follower w*(x), hypergradient of sign * f)`` with the follower warm-started at ``w0``."""
        cfg = self.config
        # The follower is solved as one flat vector: the hypergradient method then sees a single array
        # (and the implicit adjoint's right-hand side is one leaf, even when parts of the follower, e.g.
        # an unregularized intercept, do not depend on the leader directly).
        z0, unravel = ravel_pytree(jax.lax.stop_gradient(w0))

        def flat_loss(z, *a):
            return self.follower_loss(unravel(z), *a)

        def F(x_):
            w = unravel(cfg.method.solve(flat_loss, cfg.follower_solver, z0, (x_, *args)))
            return self._sign * self.leader_objective(x_, w, *args), w

        (val, w), g = jax.value_and_grad(F, has_aux=True)(x)
        return val, jax.lax.stop_gradient(w), g

    def _trial(self, x, w_warm, args):
        """Objective ``sign * f`` at ``x`` after a fresh (warm-started) follower solve; ``inf`` if it failed."""
        solver = self.config.follower_solver
        w, info = solver.run(self.follower_loss, w_warm, x, *args)
        val = self._sign * self.leader_objective(x, w, *args)
        ok = jnp.isfinite(val) & jnp.isfinite(info.grad_norm)
        if solver.on_failure != "ignore":
            ok = ok & (info.grad_norm <= solver.tol)
        return jnp.where(ok, val, jnp.inf), w

    def _check_inputs(self, leader, follower, args):
        _check_scalar_fn("leader_objective", self.leader_objective, leader, follower, *args)
        _check_scalar_fn("follower_loss", self.follower_loss, follower, leader, *args)
        _check_projection(self.config.projection, leader)
        if self.config.mode == "coordinate":
            _num_blocks(leader)

    # -- protocol ----------------------------------------------------------------------------------
    def init(self, leader_init, follower_init, *args) -> StackelbergState:
        """Validate, project the initial leader onto the feasible set and build the loop state."""
        leader = _float_tree("leader_init", leader_init)
        follower = _float_tree("follower_init", follower_init)
        self._check_inputs(leader, follower, args)
        leader = self._project(leader)
        dtype = jnp.result_type(*jax.tree_util.tree_leaves(leader))
        cfg = self.config
        if cfg.line_search:
            opt_state = ()
            step = jnp.asarray(cfg.leader_optimizer.init_step, dtype)
        else:
            opt_state = cfg.leader_optimizer.init(leader)
            step = jnp.asarray(0.0, dtype)
        nan = jnp.asarray(jnp.nan, dtype)
        return StackelbergState(
            leader=leader,
            follower=follower,
            opt_state=opt_state,
            step_size=step,
            k=jnp.asarray(0, jnp.int32),
            stall=jnp.asarray(0, jnp.int32),
            done=jnp.asarray(False),
            objective=nan,
            follower_residual=nan,
            hypergrad_norm=nan,
        )

    def update(self, state: StackelbergState, *args):
        """One leader step (skipped when ``state.done``). Returns ``(new_state, one-step history)``."""
        cfg = self.config
        coordinate = cfg.mode == "coordinate"
        m = _num_blocks(state.leader) if coordinate else 1
        block = (state.k // cfg.block_steps) % m if coordinate else jnp.asarray(-1, jnp.int32)

        def frozen(state):
            info = StackelbergHistory(
                objective=state.objective,
                follower_residual=state.follower_residual,
                hypergrad_norm=state.hypergrad_norm,
                step_size=jnp.zeros_like(state.step_size),
                step_norm=jnp.zeros_like(state.step_size),
                block=jnp.asarray(block, jnp.int32),
                active=jnp.asarray(False),
            )
            return state._replace(k=state.k + 1), info

        def active(state):
            x, w = state.leader, state.follower
            val, w, g = self._value_and_hypergrad(x, w, args)
            residual = self._residual(w, x, args)
            if coordinate:
                g = _block_mask(g, block)
            gnorm = otu.tree_norm(g)
            dtype = state.step_size.dtype
            if cfg.line_search:
                new_block = coordinate & ((state.k % cfg.block_steps) == 0)
                x_new, w_new, eta_next, eta_taken = self._line_search_step(
                    x, w, val, g, gnorm, state.step_size, new_block, args
                )
                opt_state = state.opt_state
            else:
                opt = cfg.leader_optimizer
                opt_state = state.opt_state
                if coordinate:
                    reset = (state.k % cfg.block_steps) == 0
                    opt_state = _tree_where(reset, opt.init(x), opt_state)
                updates, opt_state = opt.update(g, opt_state, x)
                if coordinate:
                    updates = _block_mask(updates, block)
                x_new = self._project(optax.apply_updates(x, updates))
                w_new = w
                eta_next = state.step_size
                eta_taken = None
            dx = otu.tree_norm(jax.tree_util.tree_map(jnp.subtract, x_new, x)).astype(dtype)
            if eta_taken is None:
                eta_taken = jnp.where(gnorm > 0, dx / jnp.where(gnorm > 0, gnorm, 1.0), 0.0).astype(dtype)
            stalled = dx <= cfg.tol
            stall = jnp.where(stalled, state.stall + 1, 0)
            done = stall >= m * cfg.block_steps
            f_true = (self._sign * val).astype(dtype)
            residual = residual.astype(dtype)
            gnorm = gnorm.astype(dtype)
            new_state = StackelbergState(
                leader=x_new,
                follower=w_new,
                opt_state=opt_state,
                step_size=eta_next.astype(dtype),
                k=state.k + 1,
                stall=stall.astype(jnp.int32),
                done=done,
                objective=f_true,
                follower_residual=residual,
                hypergrad_norm=gnorm,
            )
            info = StackelbergHistory(
                objective=f_true,
                follower_residual=residual,
                hypergrad_norm=gnorm,
                step_size=eta_taken,
                step_norm=dx,
                block=jnp.asarray(block, jnp.int32),
                active=jnp.asarray(True),
            )
            return new_state, info

        return jax.lax.cond(state.done, frozen, active, state)

    def _line_search_step(self, x, w, f0, g, gnorm, eta, new_block, args):
        """Try ``eta``; grow it while the objective improves, else shrink it until it does (one loop)."""
        ls: LineSearch = self.config.leader_optimizer
        dtype = eta.dtype
        init_step = jnp.asarray(ls.init_step, dtype)
        if ls.reset:
            eta = init_step
        # a fresh block (coordinate mode) starts from the initial step: scales differ between blocks
        eta = jnp.where(new_block, init_step, eta)
        if ls.normalize:
            scale = jnp.where(gnorm > 0, 1.0 / jnp.where(gnorm > 0, gnorm, 1.0), 0.0)
        else:
            scale = jnp.asarray(1.0)
        d = jax.tree_util.tree_map(lambda a: -a * scale.astype(a.dtype), g)
        f0 = jnp.asarray(f0, dtype)

        # One while_loop (the follower solve is traced and compiled once). phase 0: first trial;
        # 1: growing (a better point was found); 2: shrinking (no improvement yet).
        def cond(c):
            return jnp.logical_not(c["finished"])

        def body(c):
            e = c["e_try"]
            xt = self._project(jax.tree_util.tree_map(lambda a, b: a + e.astype(a.dtype) * b, x, d))
            ft, wt = self._trial(xt, w, args)
            ft = ft.astype(dtype)
            phase, i = c["phase"], c["i"] + 1
            first_ok = (phase == 0) & (ft < f0)
            grow_ok = (phase == 1) & (ft < c["f"])
            shrink_ok = (phase == 2) & (ft < f0)
            better = first_ok | grow_ok | shrink_ok
            new_phase = jnp.where(phase == 0, jnp.where(first_ok, 1, 2), phase)
            finished = (
                ((phase == 1) & ~grow_ok)
                | shrink_ok
                | ((new_phase == 1) & (i >= 1 + ls.max_grow))
                | ((new_phase == 2) & ~shrink_ok & (i >= ls.max_shrink))
            )
            e_next = jnp.where(new_phase == 1, e * ls.grow, e * ls.shrink)
            return {
                "i": i,
                "phase": new_phase,
                "e_try": e_next.astype(dtype),
                "e_last": e,
                "e": jnp.where(better, e, c["e"]),
                "x": _tree_where(better, xt, c["x"]),
                "w": _tree_where(better, wt, c["w"]),
                "f": jnp.where(better, ft, c["f"]),
                "found": c["found"] | better,
                "finished": finished,
            }

        c = {
            "i": jnp.asarray(0),
            "phase": jnp.asarray(0),
            "e_try": eta,
            "e_last": eta,
            "e": jnp.zeros((), dtype),
            "x": x,
            "w": w,
            "f": f0,
            "found": jnp.asarray(False),
            "finished": jnp.asarray(False),
        }
        c = jax.lax.while_loop(cond, body, c)
        ok = c["found"]
        x_new = _tree_where(ok, c["x"], x)
        w_new = _tree_where(ok, c["w"], w)
        eta_taken = jnp.where(ok, c["e"], 0.0).astype(dtype)
        # the next step starts from the accepted step (or the smallest one tried)
        eta_next = jnp.where(ok, c["e"], c["e_last"]).astype(dtype)
        return x_new, w_new, eta_next, eta_taken

    def run(self, leader_init, follower_init, *args) -> StackelbergResult:
        """``steps`` leader updates under ``lax.scan`` (one ``jax.jit``), then the final best response.

        The compiled loop is cached on the solver (a hashable frozen dataclass: its functions compare by
        identity), so repeated runs with the same functions and shapes compile once.
        """
        state0 = self.init(leader_init, follower_init, *args)
        return _run_compiled(self, state0, tuple(args))


@functools.partial(jax.jit, static_argnums=0)
def _run_compiled(solver: StackelbergSolver, state: StackelbergState, args: tuple) -> StackelbergResult:
    cfg = solver.config

    def body(s, _):
        return solver.update(s, *args)

    state, history = jax.lax.scan(body, state, None, length=cfg.steps)
    if cfg.line_search:
        # accepted trial points come with their follower solve: already the best response
        w = state.follower
    else:
        w, _ = cfg.follower_solver.checked_run(solver.follower_loss, state.follower, state.leader, *args)
    obj = solver.leader_objective(state.leader, w, *args)
    return StackelbergResult(state.leader, w, obj, history)


# ----------------------------------------------------------------------------------------------------
# functional entry points
# ----------------------------------------------------------------------------------------------------
def solve_stackelberg(
    leader_objective: Callable,
    follower_loss: Callable,
    leader_init: Any,
    follower_init: Any,
    *args: Any,
    config: StackelbergConfig | None = None,
    **options: Any,
) -> StackelbergResult:
    r"""Solve :math:`\min_x f(x, w^\star(x))` (or max), :math:`w^\star(x) = \arg\min_w g(w, x)`.

    Args:
      leader_objective: ``f(leader, w, *args) -> scalar``.
      follower_loss: ``g(w, leader, *args) -> scalar``.
      leader_init, follower_init: pytrees of float arrays (the leader is projected first).
      *args: extra arrays passed to both functions (vmap over them to batch problems).
      config: a :class:`StackelbergConfig`; or pass its fields as keyword ``options``
        (``follower_solver``, ``method``, ``leader_optimizer``, ``projection``, ``maximize``, ``steps``,
        ``tol``, ``mode``, ``block_steps``), which override the fields of ``config``.

    Returns:
      :class:`StackelbergResult` ``(leader, follower, objective, history)``.

    Example (ridge regularization strength by validation error)::

        res = solve_stackelberg(
            lambda loglam, w: ridge_mse(w, X_val, y_val),
            lambda w, loglam: ridge_loss(w, jnp.exp(loglam), X_tr, y_tr),
            jnp.asarray(0.0), ridge_init_params(d),
            follower_solver=LBFGS(tol=1e-10), leader_optimizer="line_search", steps=50)

    ``jax.vmap`` of this function (over ``leader_init``, ``follower_init`` or ``args``) runs independent
    games in one compiled call; see :func:`solve_stackelberg_batched`.
    """
    _validate_callables(leader_objective, follower_loss)
    if config is None:
        config = StackelbergConfig(**options)
    elif not isinstance(config, StackelbergConfig):
        raise ValueError(f"argument 'config' must be a StackelbergConfig, got {type(config).__name__}")
    elif options:
        config = dataclasses.replace(config, **options)
    return StackelbergSolver(leader_objective, follower_loss, config).run(leader_init, follower_init, *args)


def solve_stackelberg_batched(
    leader_objective: Callable,
    follower_loss: Callable,
    leader_init: Any,
    follower_init: Any,
    *args: Any,
    in_axes: Any = (0, None, None),
    config: StackelbergConfig | None = None,
    **options: Any,
) -> StackelbergResult:
    """:func:`solve_stackelberg` vmapped over a batch of independent games, in one compiled call.

    ``in_axes`` is the ``jax.vmap`` spec for ``(leader_init, follower_init, args)`` (``args`` the tuple
    of extra arrays; give a tuple with one entry per arg to batch some of them). The default batches the
    leader initializations (leading axis) and shares the follower init and data. Every field of the
    result gets a leading batch axis (the history is ``(batch, steps)``).
    """
    _validate_callables(leader_objective, follower_loss)
    if not (isinstance(in_axes, tuple) and len(in_axes) == 3):
        raise ValueError("argument 'in_axes' must be a 3-tuple for (leader_init, follower_init, args)")
    if config is None:
        config = StackelbergConfig(**options)
    elif options:
        config = dataclasses.replace(config, **options)

    def one(x0, w0, a):
        return solve_stackelberg(leader_objective, follower_loss, x0, w0, *a, config=config)

    return jax.vmap(one, in_axes=in_axes)(leader_init, follower_init, tuple(args))


# ----------------------------------------------------------------------------------------------------
# two-timescale gradient play
# ----------------------------------------------------------------------------------------------------
_LEADER_GRADIENTS = ("implicit", "partial", "unrolled")


def solve_gradient_play(
    leader_objective: Callable,
    follower_loss: Callable,
    leader_init: Any,
    follower_init: Any,
    *args: Any,
    lr_leader: float,
    lr_follower: float,
    steps: int = 1000,
    follower_steps: int = 1,
    leader_gradient: Literal["implicit", "partial", "unrolled"] = "implicit",
    projection: Callable | None = None,
    maximize: bool = False,
    linear_solver: str | Callable = "cg",
    ridge: float = 0.0,
    maxiter: int | None = None,
) -> StackelbergResult:
    r"""Simultaneous two-timescale gradient play instead of an exact best response.

    Each step, from the same :math:`(x_k, w_k)`: the follower takes ``follower_steps`` gradient steps
    with ``lr_follower`` on :math:`g(\cdot, x_k)`, and the leader takes one projected step with
    ``lr_leader`` along ``leader_gradient``:

    - ``"partial"``: :math:`\nabla_x f(x_k, w_k)` (ignores the follower's reaction; the Stackelberg
      solution of zero-sum games, where :math:`f = g` is maximized by the leader);
    - ``"unrolled"``: the derivative of :math:`f(x, w_{k+1}(x))` through the follower's steps;
    - ``"implicit"``: :math:`\nabla_x f - (\nabla^2_{wx} g)^\top [\nabla^2_{ww} g]^{-1}\nabla_w f` at
      :math:`(x_k, w_k)` (``linear_solver`` with ``ridge`` and ``maxiter`` from
      :mod:`bilevel.linear_solve`); its fixed points are the Stackelberg points of any game with a
      strongly convex follower.

    Choose ``lr_leader`` much smaller than ``lr_follower`` (two timescales). Runs under ``lax.scan``
    in one ``jax.jit`` and is vmap-able. Returns a :class:`StackelbergResult` whose ``follower`` is the
    last follower *iterate* and whose history has ``step_size = lr_leader`` and ``block = -1``.
    """
    _validate_callables(leader_objective, follower_loss)
    _check_count("steps", steps)
    _check_count("follower_steps", follower_steps)
    for name, lr in (("lr_leader", lr_leader), ("lr_follower", lr_follower)):
        if not (isinstance(lr, (int, float, np.floating)) and lr > 0 and np.isfinite(lr)):
            raise ValueError(f"argument {name!r} must be a positive number, got {lr!r}")
    if leader_gradient not in _LEADER_GRADIENTS:
        raise ValueError(f"argument 'leader_gradient' must be one of {_LEADER_GRADIENTS}, got {leader_gradient!r}")
    if projection is not None and not callable(projection):
        raise ValueError(f"argument 'projection' must be callable or None, got {type(projection).__name__}")
    if not isinstance(maximize, (bool, np.bool_)):
        raise ValueError(f"argument 'maximize' must be a bool, got {maximize!r}")
    get_solver(linear_solver)  # validates the name

    leader = _float_tree("leader_init", leader_init)
    follower = _float_tree("follower_init", follower_init)
    _check_scalar_fn("leader_objective", leader_objective, leader, follower, *args)
    _check_scalar_fn("follower_loss", follower_loss, follower, leader, *args)
    _check_projection(projection, leader)
    game = _GradientPlay(
        leader_objective=leader_objective,
        follower_loss=follower_loss,
        lr_leader=float(lr_leader),
        lr_follower=float(lr_follower),
        steps=int(steps),
        follower_steps=int(follower_steps),
        leader_gradient=leader_gradient,
        projection=projection,
        sign=-1.0 if maximize else 1.0,
        linear_solver=linear_solver,
        ridge=float(ridge),
        maxiter=maxiter,
    )
    return _gradient_play_compiled(game, leader, follower, tuple(args))


@dataclasses.dataclass(frozen=True)
class _GradientPlay:
    leader_objective: Callable
    follower_loss: Callable
    lr_leader: float
    lr_follower: float
    steps: int
    follower_steps: int
    leader_gradient: str
    projection: Callable | None
    sign: float
    linear_solver: Any
    ridge: float
    maxiter: int | None

    def project(self, x):
        return x if self.projection is None else self.projection(x)

    def follower_step(self, w, x, a):
        def body(_, w_):
            gw = jax.grad(self.follower_loss)(w_, x, *a)
            return jax.tree_util.tree_map(lambda p, q: p - self.lr_follower * q, w_, gw)

        return jax.lax.fori_loop(0, self.follower_steps, body, w)

    def leader_direction(self, x, w, a):
        def f(x_, w_):
            return self.sign * self.leader_objective(x_, w_, *a)

        if self.leader_gradient == "partial":
            return jax.grad(f)(x, w)
        if self.leader_gradient == "unrolled":
            return jax.grad(lambda x_: f(x_, self.follower_step(w, x_, a)))(x)
        gx, gw = jax.grad(f, argnums=(0, 1))(x, w)
        matvec = hessian_matvec(self.follower_loss, w, x, *a)
        kwargs = {"ridge": self.ridge, "tol": 1e-10}
        if self.maxiter is not None:
            kwargs["maxiter"] = self.maxiter
        v = get_solver(self.linear_solver)(matvec, gw, **kwargs).x
        cross = mixed_vjp(self.follower_loss, w, (x, *a), v)[0]
        return jax.tree_util.tree_map(jnp.subtract, gx, cross)


@functools.partial(jax.jit, static_argnums=0)
def _gradient_play_compiled(game: _GradientPlay, x0, w0, a):
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(x0))
    x0 = game.project(x0)

    def body(carry, _):
        x, w = carry
        obj = game.leader_objective(x, w, *a)
        resid = otu.tree_norm(jax.grad(game.follower_loss)(w, x, *a))
        d = game.leader_direction(x, w, a)
        x_new = game.project(jax.tree_util.tree_map(lambda p, q: p - game.lr_leader * q, x, d))
        w_new = game.follower_step(w, x, a)
        dx = otu.tree_norm(jax.tree_util.tree_map(jnp.subtract, x_new, x))
        info = StackelbergHistory(
            objective=jnp.asarray(obj, dtype),
            follower_residual=jnp.asarray(resid, dtype),
            hypergrad_norm=jnp.asarray(otu.tree_norm(d), dtype),
            step_size=jnp.asarray(game.lr_leader, dtype),
            step_norm=jnp.asarray(dx, dtype),
            block=jnp.asarray(-1, jnp.int32),
            active=jnp.asarray(True),
        )
        return (x_new, w_new), info

    (x, w), history = jax.lax.scan(body, (x0, w0), None, length=game.steps)
    return StackelbergResult(x, w, game.leader_objective(x, w, *a), history)
