r"""The leader's loop: projected hypergradient steps over a best-responding follower.

Problem
-------
A *leader* chooses :math:`x \in \mathcal X` (a closed convex set, given by its Euclidean projection
:math:`P_{\mathcal X}`); a *follower* answers with a best response :math:`w^\star(x)`:

.. math::

    \min_{x \in \mathcal X} \; F(x) = f\big(x, w^\star(x)\big)
    \qquad\text{s.t.}\qquad w^\star(x) \in \arg\min_w \, g(w, x)

(or :math:`\max_x`, with ``maximize=True``). ``leader_objective(leader, w, *args)`` is :math:`f`. The
follower is a :mod:`~bilevel.stackelberg.follower` object — an argmin of a loss :math:`g` with an inner
solver and a hypergradient method, or any differentiable best response (an SVM's exact dual through
its KKT conditions, a network trained for :math:`T` unrolled steps). By the chain rule the leader's
total derivative, the *hypergradient*, is

.. math::

    \nabla F(x) = \nabla_x f + \Big(\frac{\partial w^\star}{\partial x}\Big)^{\!\top} \nabla_w f,
    \qquad
    \frac{\partial w^\star}{\partial x} = -\big[\nabla^2_{ww} g\big]^{-1} \nabla^2_{wx} g
    \quad\text{(implicit function theorem)}.

Loop
----
Iterate :math:`k = 0, 1, \dots, \text{steps}`: solve the follower at :math:`x_k` (warm-started from the
previous response), record :math:`f(x_k)`, the hypergradient norm and the follower's residual, keep
the best iterate, test the stopping rules, and (unless stopped) move:
:math:`x_{k+1} = P_{\mathcal X}(x_k + u_k)` with :math:`u_k` from the step rule
(:mod:`bilevel.stackelberg.steps`: any optax transformation, :class:`~bilevel.stackelberg.steps.Backtrack`,
:class:`~bilevel.stackelberg.steps.Greedy`, or a :class:`~bilevel.stackelberg.steps.LineSearch` that
tries step lengths with fresh follower solves). So at most ``steps + 1`` follower solves (plus the
line-search trials), in one :func:`jax.lax.while_loop` inside one :func:`jax.jit`; per-iterate
diagnostics come back as arrays of length ``steps + 1`` (:class:`StackelbergHistory`, ``active``
marks the evaluated iterates). The loop stops early when

- a step moves the leader by at most ``tol`` (L2) for a whole sweep (one step in joint mode,
  ``m * block_steps`` in coordinate mode; a rejected line-search step moves it by 0);
- the improvement :math:`F(x_{k-1}) - F(x_k)` stays below ``gain_tol`` (absolute) or
  ``gain_rtol`` :math:`\cdot |F(x_{k-1})|` (relative) for ``patience`` iterates in a row (Biggio et al.
  2012's "gain below :math:`\varepsilon`" rule);
- the step rule says so (e.g. :class:`~bilevel.stackelberg.steps.Backtrack`'s step fell below its
  ``min_step``); or nothing is free to move (``mask`` all false).

Masks and blocks
----------------
``mask`` (a run-time argument: a pytree of booleans shaped like, or broadcastable to, the leader)
freezes the false entries: their hypergradient and update are zeroed and they are not projected.
With ``mode="coordinate"`` the leader is a batch of ``m`` blocks (every leaf has leading axis ``m``);
step :math:`k` updates only block :math:`\lfloor k/\text{block\_steps}\rfloor \bmod m` and the step
rule's state restarts when the block changes (the greedy multi-point scheme of Biggio et al. 2012
and Muñoz-González et al. 2017, all points present). A driver that adds points one at a time
(sequential poisoning) runs one joint solve per point with a mask and its own follower arguments.

Selection
---------
``return_best=True`` returns the iterate with the best objective seen (or the best ``select(leader,
w, *args)`` score when given, e.g. the objective after rounding a relaxed leader), instead of the
last one. Everything is a pure JAX function: ``jax.vmap`` of :func:`solve_stackelberg` solves many
independent games in one compiled call (:func:`solve_stackelberg_batched`).

References
----------
- H. von Stackelberg, *Marktform und Gleichgewicht*, Springer, 1934.
- B. Colson, P. Marcotte, G. Savard, "An overview of bilevel optimization", Annals of Operations
  Research 153, 2007.
- B. Biggio, B. Nelson, P. Laskov, "Poisoning attacks against support vector machines", ICML 2012.
- L. Muñoz-González et al., "Towards poisoning of deep learning algorithms with back-gradient
  optimization", AISec 2017.
- A. Demontis et al., "Why do adversarial attacks transfer?", USENIX Security 2019 (secml ``pgd-ls``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax.tree_utils as otu

from bilevel._checks import validate_finite
from bilevel.stackelberg.follower import as_follower
from bilevel.stackelberg.steps import LineSearch, as_step_rule, normalized, rule_stop

__all__ = [
    "StackelbergConfig",
    "StackelbergState",
    "StackelbergHistory",
    "StackelbergResult",
    "StackelbergSolver",
    "solve_stackelberg",
    "solve_stackelberg_batched",
]


# ----------------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------------
def _check_count(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise ValueError(f"argument {name!r} must be an integer >= {minimum}, got {value!r}")


def _check_tol(name, value, allow_none=False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not (isinstance(value, (int, float, np.floating)) and np.isfinite(value) and value >= 0):
        raise ValueError(f"argument {name!r} must be a finite number >= 0{' or None' if allow_none else ''}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class StackelbergConfig:
    """Settings of the leader's loop (the follower carries its own solver settings).

    Attributes:
      leader_optimizer: an optax transformation, a step rule of :mod:`bilevel.stackelberg.steps`
        (:class:`~bilevel.stackelberg.steps.LineSearch`, :class:`~bilevel.stackelberg.steps.Backtrack`,
        :class:`~bilevel.stackelberg.steps.Greedy`) or ``"line_search"``.
      projection: ``projection(leader) -> leader`` onto the feasible set, or ``None``; with
        ``projection_uses_follower`` it is called as ``projection(leader, w)``, ``w`` the follower's
        response at the current iterate (a feasible set that depends on the trained model, e.g. a
        loss-based sanitizer's region; at :meth:`~StackelbergSolver.init` ``w`` is ``follower_init``);
        with ``projection_uses_args`` the problem's extra arrays follow, ``projection(leader, *args)`` or
        ``projection(leader, w, *args)``: a set that depends on each problem's data (an
        :math:`\\ell_\\infty` ball around per-problem base images), so problems batched by ``jax.vmap``
        each keep their own set.
      maximize: maximize the leader objective instead of minimizing it.
      steps: maximum number of leader steps (>= 0; ``steps + 1`` iterates are evaluated at most).
      tol: a step moving the leader by at most ``tol`` (L2) counts as stalled; a whole stalled sweep stops
        (``None``: never).
      gain_tol, gain_rtol: stop once the improvement is below ``gain_tol`` (absolute) or
        ``gain_rtol * |previous value|`` for ``patience`` iterates in a row (``None``: off).
      patience: see ``gain_tol``.
      mode: ``"joint"`` (all of the leader at once) or ``"coordinate"`` (one block at a time).
      block_steps: consecutive steps on each block in coordinate mode (>= 1).
      return_best: return the best iterate seen (by objective, or by ``select``) instead of the last.
    """

    leader_optimizer: Any = "line_search"
    projection: Callable | None = None
    projection_uses_follower: bool = False
    projection_uses_args: bool = False
    maximize: bool = False
    steps: int = 100
    tol: float | None = 0.0
    gain_tol: float | None = None
    gain_rtol: float | None = None
    patience: int = 1
    mode: Literal["joint", "coordinate"] = "joint"
    block_steps: int = 1
    return_best: bool = False

    def __post_init__(self):
        object.__setattr__(self, "leader_optimizer", as_step_rule(self.leader_optimizer))
        if self.projection is not None and not callable(self.projection):
            raise ValueError(f"argument 'projection' must be callable or None, got {type(self.projection).__name__}")
        for name in ("maximize", "return_best", "projection_uses_follower", "projection_uses_args"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"argument {name!r} must be a bool, got {getattr(self, name)!r}")
        _check_count("steps", self.steps, minimum=0)
        _check_count("block_steps", self.block_steps)
        _check_count("patience", self.patience)
        _check_tol("tol", self.tol, allow_none=True)
        _check_tol("gain_tol", self.gain_tol, allow_none=True)
        _check_tol("gain_rtol", self.gain_rtol, allow_none=True)
        if self.mode not in ("joint", "coordinate"):
            raise ValueError(f"argument 'mode' must be 'joint' or 'coordinate', got {self.mode!r}")

    @property
    def line_search(self) -> bool:
        return isinstance(self.leader_optimizer, LineSearch)


# ----------------------------------------------------------------------------------------------------
# state, history, result
# ----------------------------------------------------------------------------------------------------
class StackelbergState(NamedTuple):
    """Loop state (a pytree): iterates, step-rule state, stopping bookkeeping, best iterate so far."""

    leader: Any
    follower: Any
    rule_state: Any
    step_size: jax.Array  # line search: the step to try next
    k: jax.Array  # iterates evaluated so far
    stall: jax.Array  # consecutive stalled steps
    bad: jax.Array  # consecutive iterates improving by less than gain_tol
    done: jax.Array
    value: jax.Array  # minimized value sign * f at the last evaluated iterate (inf before the first)
    objective: jax.Array  # last recorded values (reported again by frozen steps)
    follower_residual: jax.Array
    hypergrad_norm: jax.Array
    best_leader: Any
    best_follower: Any
    best_score: jax.Array  # minimized direction
    best_objective: jax.Array
    best_step: jax.Array


class StackelbergHistory(NamedTuple):
    """Per-iterate diagnostics, each an array with leading axis ``steps + 1`` (``(batch, steps + 1)`` when
    vmapped; scalars from one call of :meth:`StackelbergSolver.update`).

    Attributes:
      objective: leader objective :math:`f(x_k, w^\\star(x_k))`.
      score: the selection score of the iterate (the objective unless ``select`` is given).
      follower_residual: the follower's optimality residual there (NaN when it reports none).
      hypergrad_norm: norm of the (masked) hypergradient.
      step_size: accepted line-search step (0 = rejected), else ``||dx|| / ||grad||``.
      step_norm: ``||x_{k+1} - x_k||`` (0 after the last step).
      block: the block updated at step ``k`` (coordinate mode), else ``-1``.
      active: whether iterate ``k`` was evaluated (``False`` after the loop stopped).
    """

    objective: jax.Array
    score: jax.Array
    follower_residual: jax.Array
    hypergrad_norm: jax.Array
    step_size: jax.Array
    step_norm: jax.Array
    block: jax.Array
    active: jax.Array


class StackelbergResult(NamedTuple):
    """``leader``: the final (or best, with ``return_best``) leader; ``follower``: its best response;
    ``objective``: the leader objective there; ``history``: a :class:`StackelbergHistory`;
    ``n_iterates``: how many iterates were evaluated; ``best_step``: the index of the returned iterate."""

    leader: Any
    follower: Any
    objective: jax.Array
    history: StackelbergHistory
    n_iterates: jax.Array = None
    best_step: jax.Array = None


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------
def _tree_where(cond, a, b):
    return jax.tree_util.tree_map(lambda x, y: jnp.where(cond, x, y), a, b)


def _masked_where(mask, a, b):
    """Per leaf ``where(mask_leaf, a, b)`` with the mask broadcast from the left (block masks ``(m,)``)."""
    if mask is None:
        return a

    def sel(m, x, y):
        m = jnp.asarray(m)
        m = m.reshape(m.shape + (1,) * (x.ndim - m.ndim)) if m.ndim <= x.ndim else m
        return jnp.where(m, x, y)

    return jax.tree_util.tree_map(sel, mask, a, b)


def _apply_mask(mask, tree):
    if mask is None:
        return tree
    return _masked_where(mask, tree, jax.tree_util.tree_map(jnp.zeros_like, tree))


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


def _any_free(mask):
    if mask is None:
        return jnp.asarray(True)
    leaves = [jnp.any(jnp.asarray(m)) for m in jax.tree_util.tree_leaves(mask)]
    return jnp.any(jnp.stack(leaves)) if leaves else jnp.asarray(False)


# ----------------------------------------------------------------------------------------------------
# the solver
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StackelbergSolver:
    """Projected hypergradient descent (or ascent) of a leader over a best-responding follower.

    ``leader_objective(leader, w, *args) -> scalar``; ``follower`` a follower object
    (:mod:`bilevel.stackelberg.follower`) or a loss ``g(w, leader, *args)`` (then an
    :class:`~bilevel.stackelberg.follower.ArgminFollower` with ``follower_solver`` / ``method``);
    ``select(leader, w, *args) -> scalar`` (optional) scores iterates for ``return_best`` in the
    direction of the objective.

    Protocol (all pure JAX, jit/vmap-able):

    - :meth:`init` ``(leader_init, follower_init, *args) -> StackelbergState``;
    - :meth:`update` ``(state, *args, mask=None) -> (state, StackelbergHistory of scalars)``: evaluate
      the current iterate and take one step (use it in a Python loop with a progress bar, after
      ``jax.jit``);
    - :meth:`run` ``(leader_init, follower_init, *args, mask=None) -> StackelbergResult``: the whole
      loop in one ``jax.jit`` (compiled once per solver and shapes; the solver is a hashable frozen
      dataclass whose functions compare by identity).
    """

    leader_objective: Callable
    follower: Any
    config: StackelbergConfig = dataclasses.field(default_factory=StackelbergConfig)
    select: Callable | None = None
    follower_solver: dataclasses.InitVar[Any] = None
    method: dataclasses.InitVar[Any] = None

    def __post_init__(self, follower_solver, method):
        if not callable(self.leader_objective):
            raise ValueError(f"argument 'leader_objective' must be callable, got {type(self.leader_objective).__name__}")
        object.__setattr__(self, "follower", as_follower(self.follower, follower_solver, method))
        if not isinstance(self.config, StackelbergConfig):
            raise ValueError(f"argument 'config' must be a StackelbergConfig, got {type(self.config).__name__}")
        if self.select is not None and not callable(self.select):
            raise ValueError(f"argument 'select' must be callable or None, got {type(self.select).__name__}")

    # -- pieces ------------------------------------------------------------------------------------
    @property
    def _sign(self):
        return -1.0 if self.config.maximize else 1.0

    def _project(self, x, w, args=()):
        p = self.config.projection
        if p is None:
            return x
        extra = tuple(args) if self.config.projection_uses_args else ()
        return p(x, w, *extra) if self.config.projection_uses_follower else p(x, *extra)

    def _value_and_hypergrad(self, x, warm, args):
        """``(sign * f, follower w*(x), hypergradient of sign * f)`` with the follower warm-started at ``warm``."""
        warm = jax.lax.stop_gradient(warm)

        def F(x_):
            w = self.follower.respond(x_, warm, *args)
            return self._sign * self.leader_objective(x_, w, *args), w

        (val, w), g = jax.value_and_grad(F, has_aux=True)(x)
        return val, jax.lax.stop_gradient(w), g

    def _trial(self, x, warm, args):
        """``sign * f`` at ``x`` after a fresh (warm-started) follower solve; ``inf`` if the solve failed."""
        w, ok = self.follower.trial(x, jax.lax.stop_gradient(warm), *args)
        val = self._sign * self.leader_objective(x, w, *args)
        ok = ok & jnp.isfinite(val)
        return jnp.where(ok, val, jnp.inf), w

    def _check_inputs(self, leader, follower, args):
        _check_scalar_fn("leader_objective", self.leader_objective, leader, follower, *args)
        loss = getattr(self.follower, "loss", None)
        if loss is not None:
            _check_scalar_fn("follower_loss", loss, follower, leader, *args)
        if self.config.projection is None:
            _check_projection(None, leader)
        else:
            _check_projection(lambda x: self._project(x, follower, args), leader)
        if self.config.mode == "coordinate":
            _num_blocks(leader)

    # -- protocol ----------------------------------------------------------------------------------
    def init(self, leader_init, follower_init, *args, mask=None, rule_state=None) -> StackelbergState:
        """Validate, project the initial leader onto the feasible set (its free entries, with ``mask``)
        and build the loop state. ``rule_state`` replaces the step rule's initial state (a run-time
        setting of the rule, e.g. :meth:`~bilevel.stackelberg.steps.Greedy.schedule`)."""
        leader = _float_tree("leader_init", leader_init)
        follower = jax.tree_util.tree_map(jnp.asarray, follower_init)  # a warm start (may hold inf markers)
        self._check_inputs(leader, follower, args)
        leader = _masked_where(mask, self._project(leader, follower, args), leader)
        dtype = jnp.result_type(*jax.tree_util.tree_leaves(leader))
        cfg = self.config
        rule = cfg.leader_optimizer
        if cfg.line_search:
            rule_state = ()
            step = jnp.asarray(rule.init_step, dtype)
        else:
            rule_state = rule.init(leader) if rule_state is None else rule_state
            step = jnp.asarray(0.0, dtype)
        nan = jnp.asarray(jnp.nan, dtype)
        inf = jnp.asarray(jnp.inf, dtype)
        zero = jnp.asarray(0, jnp.int32)
        return StackelbergState(
            leader=leader, follower=follower, rule_state=rule_state, step_size=step, k=zero, stall=zero,
            bad=zero, done=jnp.asarray(False), value=inf, objective=nan, follower_residual=nan,
            hypergrad_norm=nan, best_leader=leader, best_follower=follower, best_score=inf,
            best_objective=nan, best_step=zero,
        )

    def update(self, state: StackelbergState, *args, mask=None):
        """Evaluate the current iterate and take one step (skipped when ``state.done``).

        Returns ``(new_state, info)``: a :class:`StackelbergHistory` of scalars (this iterate's entry)."""
        return self._iterate(state, args, mask)

    def _iterate(self, state: StackelbergState, args, mask, skip_done: bool = True):
        """One iterate: evaluate, record, step. ``skip_done``: a ``lax.cond`` leaves a stopped state as it
        is (the ``update`` protocol); the compiled ``run`` loop never visits a stopped state."""
        cfg = self.config
        coordinate = cfg.mode == "coordinate"
        m = _num_blocks(state.leader) if coordinate else 1
        block = ((state.k // cfg.block_steps) % m).astype(jnp.int32) if coordinate else jnp.asarray(-1, jnp.int32)
        dtype = state.step_size.dtype

        def frozen(state):
            zero = jnp.zeros((), dtype)
            info = StackelbergHistory(
                objective=jnp.asarray(jnp.nan, dtype), score=jnp.asarray(jnp.nan, dtype),
                follower_residual=jnp.asarray(jnp.nan, dtype), hypergrad_norm=jnp.asarray(jnp.nan, dtype),
                step_size=zero, step_norm=zero, block=block, active=jnp.asarray(False),
            )
            return state, info

        def active(state):
            x = state.leader
            val, w, g = self._value_and_hypergrad(x, state.follower, args)
            val = val.astype(dtype)
            residual = jnp.asarray(self.follower.residual(w, x, *args)).astype(dtype)
            if coordinate:
                g = _block_mask(g, block)
            g = _apply_mask(mask, g)
            gnorm = otu.tree_norm(g).astype(dtype)
            f_true = (self._sign * val).astype(dtype)
            if self.select is None:
                score = val
            else:
                score = (self._sign * jnp.asarray(self.select(x, w, *args))).astype(dtype)
            score = jnp.where(jnp.isnan(score), jnp.inf, score)
            first = state.k == 0
            better = (score < state.best_score) | first
            best_leader, best_follower = _tree_where(better, (x, w), (state.best_leader, state.best_follower))
            best_score = jnp.where(better, score, state.best_score)
            best_objective = jnp.where(better, f_true, state.best_objective)
            best_step = jnp.where(better, state.k, state.best_step)

            # stopping rules evaluated at this iterate
            gain = jnp.where(first, jnp.inf, state.value - val)
            small = jnp.asarray(False)
            if cfg.gain_tol is not None:
                small = small | (gain < cfg.gain_tol)
            if cfg.gain_rtol is not None:
                small = small | (gain < cfg.gain_rtol * jnp.abs(state.value))
            bad = jnp.where(small, state.bad + 1, 0).astype(jnp.int32)
            stop = (bad >= cfg.patience) | (state.k >= cfg.steps) | ~_any_free(mask)

            # the step
            rule = cfg.leader_optimizer
            if cfg.line_search:
                new_block = coordinate & ((state.k % cfg.block_steps) == 0)
                x_new, w_new, eta_next, eta_taken = self._line_search_step(
                    x, w, val, g, state.step_size, new_block, args, mask)
                rule_state = state.rule_state
            else:
                rule_state = state.rule_state
                if coordinate:
                    reset = (state.k % cfg.block_steps) == 0
                    rule_state = _tree_where(reset, rule.init(x), rule_state)
                updates, rule_state = rule.update(g, rule_state, x, val)
                if coordinate:
                    updates = _block_mask(updates, block)
                moved = self._project(jax.tree_util.tree_map(lambda a, u: a + u.astype(a.dtype), x, updates), w, args)
                x_new = _masked_where(mask, moved, x)
                w_new = w
                eta_next = state.step_size
                eta_taken = None
                stop = stop | rule_stop(rule, rule_state)
            dx = otu.tree_norm(jax.tree_util.tree_map(jnp.subtract, x_new, x)).astype(dtype)
            if eta_taken is None:
                eta_taken = jnp.where(gnorm > 0, dx / jnp.where(gnorm > 0, gnorm, 1.0), 0.0).astype(dtype)
            stalled = (dx <= cfg.tol) if cfg.tol is not None else jnp.asarray(False)
            stall = jnp.where(stalled, state.stall + 1, 0).astype(jnp.int32)
            stop = stop | (stall >= m * cfg.block_steps)
            # a stopped loop stays at the evaluated iterate (its follower and value are known)
            x_next = _tree_where(stop, x, x_new)
            w_next = _tree_where(stop, w, w_new)
            new_state = StackelbergState(
                leader=x_next, follower=w_next, rule_state=rule_state, step_size=eta_next.astype(dtype),
                k=state.k + 1, stall=stall, bad=bad, done=stop, value=val, objective=f_true,
                follower_residual=residual, hypergrad_norm=gnorm, best_leader=best_leader,
                best_follower=best_follower, best_score=best_score, best_objective=best_objective,
                best_step=best_step.astype(jnp.int32),
            )
            info = StackelbergHistory(
                objective=f_true, score=(self._sign * score).astype(dtype), follower_residual=residual,
                hypergrad_norm=gnorm, step_size=jnp.where(stop, 0.0, eta_taken).astype(dtype),
                step_norm=jnp.where(stop, 0.0, dx).astype(dtype), block=block, active=jnp.asarray(True),
            )
            return new_state, info

        if not skip_done:
            return active(state)
        return jax.lax.cond(state.done, frozen, active, state)

    def _line_search_step(self, x, w, f0, g, eta, new_block, args, mask):
        """Try ``eta``; grow it while the objective improves, else shrink it until it does (one loop)."""
        ls: LineSearch = self.config.leader_optimizer
        dtype = eta.dtype
        init_step = jnp.asarray(ls.init_step, dtype)
        if ls.reset:
            eta = init_step
        # a fresh block (coordinate mode) starts from the initial step: scales differ between blocks
        eta = jnp.where(new_block, init_step, eta)
        d = g if ls.normalization is None else normalized(g, ls.normalization)
        d = jax.tree_util.tree_map(jnp.negative, d)
        f0 = jnp.asarray(f0, dtype)

        # One while_loop (the follower solve is traced and compiled once). phase 0: first trial;
        # 1: growing (a better point was found); 2: shrinking (no improvement yet).
        def cond(c):
            return jnp.logical_not(c["finished"])

        def body(c):
            e = c["e_try"]
            moved = self._project(jax.tree_util.tree_map(lambda a, b: a + e.astype(a.dtype) * b, x, d), w, args)
            xt = _masked_where(mask, moved, x)
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
        # the next step starts from the accepted step (times grow_next), or the smallest one tried
        eta_next = jnp.where(ok, c["e"] * ls.grow_next, c["e_last"]).astype(dtype)
        return x_new, w_new, eta_next, eta_taken

    def run(self, leader_init, follower_init, *args, mask=None, rule_state=None) -> StackelbergResult:
        """The whole loop in one ``jax.jit`` (a ``while_loop`` over at most ``steps + 1`` iterates)."""
        if mask is not None:
            mask = jax.tree_util.tree_map(lambda a: jnp.asarray(a, bool), mask)
        state0 = self.init(leader_init, follower_init, *args, mask=mask, rule_state=rule_state)
        return _run_compiled(self, state0, tuple(args), mask)

    def result(self, state: StackelbergState, history: StackelbergHistory) -> StackelbergResult:
        """The :class:`StackelbergResult` of a final state (best or last iterate per ``return_best``)."""
        if self.config.return_best:
            return StackelbergResult(state.best_leader, state.best_follower, state.best_objective, history,
                                     state.k, state.best_step)
        return StackelbergResult(state.leader, state.follower, state.objective, history, state.k,
                                 jnp.maximum(state.k - 1, 0))


def _empty_history(steps, dtype):
    n = steps + 1
    nan = jnp.full((n,), jnp.nan, dtype)
    return StackelbergHistory(objective=nan, score=nan, follower_residual=nan, hypergrad_norm=nan,
                              step_size=jnp.zeros((n,), dtype), step_norm=jnp.zeros((n,), dtype),
                              block=jnp.full((n,), -1, jnp.int32), active=jnp.zeros((n,), bool))


@functools.partial(jax.jit, static_argnums=0)
def _run_compiled(solver: StackelbergSolver, state: StackelbergState, args: tuple, mask) -> StackelbergResult:
    steps = solver.config.steps
    hist0 = _empty_history(steps, state.step_size.dtype)

    def cond(c):
        s, _ = c
        return ~s.done

    def body(c):
        s, hist = c
        k = s.k
        s, info = solver._iterate(s, args, mask, skip_done=False)
        hist = jax.tree_util.tree_map(lambda h, v: h.at[k].set(v), hist, info)
        return s, hist

    state, hist = jax.lax.while_loop(cond, body, (state, hist0))
    return solver.result(state, hist)


# ----------------------------------------------------------------------------------------------------
# functional entry points
# ----------------------------------------------------------------------------------------------------
def _solver(leader_objective, follower, config, options, follower_solver, method, select):
    if config is None:
        config = StackelbergConfig(**options)
    elif not isinstance(config, StackelbergConfig):
        raise ValueError(f"argument 'config' must be a StackelbergConfig, got {type(config).__name__}")
    elif options:
        config = dataclasses.replace(config, **options)
    return StackelbergSolver(leader_objective, follower, config, select, follower_solver, method)


def solve_stackelberg(
    leader_objective: Callable,
    follower: Any,
    leader_init: Any,
    follower_init: Any,
    *args: Any,
    config: StackelbergConfig | None = None,
    follower_solver=None,
    method=None,
    select: Callable | None = None,
    mask=None,
    **options: Any,
) -> StackelbergResult:
    r"""Solve :math:`\min_x f(x, w^\star(x))` (or max) over a best-responding follower.

    Args:
      leader_objective: ``f(leader, w, *args) -> scalar``.
      follower: a loss ``g(w, leader, *args) -> scalar`` (best response :math:`\arg\min_w g`, solved by
        ``follower_solver`` — default ``LBFGS()`` — and differentiated by ``method`` — default
        :class:`~bilevel.minimize.Implicit`), or a follower object of :mod:`bilevel.stackelberg.follower`.
      leader_init, follower_init: pytrees of float arrays (the leader is projected first; the follower
        init is the first warm start).
      *args: extra arrays passed to both functions (vmap over them to batch problems).
      config: a :class:`StackelbergConfig`; or pass its fields as keyword ``options``, which override
        the fields of ``config``.
      select: optional ``select(leader, w, *args)`` score for ``return_best``.
      mask: optional pytree of booleans (see the module docstring).

    Returns:
      :class:`StackelbergResult`.

    Example (ridge regularization strength by validation error)::

        res = solve_stackelberg(
            lambda loglam, w: ridge_mse(w, X_val, y_val),
            lambda w, loglam: ridge_loss(w, jnp.exp(loglam), X_tr, y_tr),
            jnp.asarray(0.0), ridge_init_params(d),
            follower_solver=Newton(), leader_optimizer="line_search", steps=50)
    """
    solver = _solver(leader_objective, follower, config, options, follower_solver, method, select)
    return solver.run(leader_init, follower_init, *args, mask=mask)


def solve_stackelberg_batched(
    leader_objective: Callable,
    follower: Any,
    leader_init: Any,
    follower_init: Any,
    *args: Any,
    in_axes: Any = (0, None, None),
    config: StackelbergConfig | None = None,
    follower_solver=None,
    method=None,
    select: Callable | None = None,
    **options: Any,
) -> StackelbergResult:
    """:func:`solve_stackelberg` vmapped over a batch of independent games, in one compiled call.

    ``in_axes`` is the ``jax.vmap`` spec for ``(leader_init, follower_init, args)`` (``args`` the tuple
    of extra arrays; give a tuple with one entry per arg to batch some of them). The default batches the
    leader initializations (leading axis) and shares the follower init and data. Every field of the
    result gets a leading batch axis (the history is ``(batch, steps + 1)``).
    """
    if not (isinstance(in_axes, tuple) and len(in_axes) == 3):
        raise ValueError("argument 'in_axes' must be a 3-tuple for (leader_init, follower_init, args)")
    solver = _solver(leader_objective, follower, config, options, follower_solver, method, select)

    def one(x0, w0, a):
        return solver.run(x0, w0, *a)

    return jax.vmap(one, in_axes=in_axes)(leader_init, follower_init, tuple(args))
