r"""The attack driver: an attack is an objective + a feasible set + a victim + how the poison enters.

Problem
-------
The attacker controls a *leader* :math:`z` — features of new training points, relaxed label flips,
example weights, a trigger — that changes the victim's training set :math:`D(z)`; the victim trains,
:math:`\theta^\star(z) = \mathrm{fit}(D(z))`; the attacker maximizes an objective of the trained model on
data of its choice (a validation set, test targets):

.. math::  \max_{z \in \Phi}\; A(z) = \mathrm{objective}\big(\text{victim}, \theta^\star(z), \text{target}\big)

(Biggio, Nelson, Laskov 2012; Mei & Zhu 2015; Muñoz-González et al. 2017). The hypergradient
:math:`\nabla_z A` comes through the victim's training (:mod:`poisoning.victims`: an SVM's KKT map, the
implicit function theorem, unrolled or reversed training steps), and the ascent is
:mod:`bilevel.stackelberg`'s leader loop — one loop for every attack.

The pieces, each replaceable on its own:

- a victim (:mod:`poisoning.victims`);
- an objective ``objective(victim, params, *target) -> scalar`` to **maximize**
  (:mod:`poisoning.objectives`); it sees the victim, so one objective runs against any victim;
- a feasible set (:mod:`poisoning.feasible`);
- a *poison* — how the leader enters the training set, carrying its own data (a pytree):
  :class:`~poisoning.poisons.PoisonPoints` (new points; features, optionally real labels, optimized;
  fixed labels and multiplicities), :class:`~poisoning.poisons.LabelFlips` (relaxed flips of the
  training labels), :class:`~poisoning.poisons.PoisonWeights` (copies of candidate points);
  :mod:`poisoning.poisons`;
- a step rule (:mod:`bilevel.stackelberg.steps`): an optax transformation (``fixed_step(t)`` is the
  unit-gradient step of Biggio et al.), :class:`~bilevel.stackelberg.Backtrack`,
  :class:`~bilevel.stackelberg.LineSearch` (secml's ``pgd-ls``) or :class:`~bilevel.stackelberg.Greedy`,
  with the stopping rules (gain below ``gain_tol`` for ``patience`` iterates, a stalled step, the rule's
  own) and best-iterate selection.

Modes: ``"joint"`` moves the whole leader at once; ``"sequential"`` adds the points (blocks along the
leading axis) one at a time and optimizes only the newest with the earlier ones fixed in the training
set and the later ones absent (the greedy scheme of Biggio et al. 2012 and Muñoz-González et al. 2017);
``"coordinate"`` keeps all present and sweeps the blocks cyclically. Each block is one compiled
``while_loop`` (the victim is warm-started from the previous iterate, playing the role of the
incremental SVM update of Cauwenberghs & Poggio); the blocks reuse one compilation.

Example — a new attack is one objective (the README runs the same against three victims)::

    import jax.numpy as jnp
    from poisoning import attack, victims
    from poisoning.datasets import biggio_protocol, load_digits
    from poisoning.feasible import Box

    def flip_first(victim, params, X_target, y_target):    # the whole new attack:
        return victim.loss(params, X_target[:1], y_target[:1])[0]   # raise the first target's loss

    split = biggio_protocol(load_digits(), 1, 7, n_train=60, n_val=50, seed=0)
    poison = attack.PoisonPoints(split.X_train[:2], 1 - split.y_train[:2])   # clone two, flip labels
    res = attack.run(attack.PoisoningAttack(victims.logistic(), flip_first, Box(0.0, 1.0)),
                     split.X_train, split.y_train, poison, (split.X_val, split.y_val), steps=20)
    print(res.objective_clean, "->", res.objective)

References
----------
- B. Biggio, B. Nelson, P. Laskov, "Poisoning attacks against support vector machines", ICML 2012.
- S. Mei, X. Zhu, "Using machine teaching to identify optimal training-set attacks on machine
  learners", AAAI 2015.
- L. Muñoz-González et al., "Towards poisoning of deep learning algorithms with back-gradient
  optimization", AISec 2017.
- G. Cauwenberghs, T. Poggio, "Incremental and decremental support vector machine learning", NIPS 2000.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bilevel.stackelberg import ResponseFollower, StackelbergConfig, StackelbergSolver, as_step_rule, fixed_step
from bilevel.stackelberg.solver import _masked_where, _run_compiled
from poisoning.feasible import Box, FeasibleSet, Unconstrained
from poisoning.poisons import CleanData, LabelFlips, PoisonPoints, PoisonWeights
from poisoning.victims.base import Victim, check_features, check_labels

__all__ = [
    "PoisonPoints",
    "LabelFlips",
    "PoisonWeights",
    "PoisoningAttack",
    "AttackResult",
    "attack_value",
    "hypergradient",
    "run",
]


# ----------------------------------------------------------------------------------------------------
# the attack
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class PoisoningAttack:
    """A poisoning attack: ``victim`` + ``objective`` (maximized) + ``feasible`` set + step rule.

    Attributes:
      victim: a :class:`~poisoning.victims.Victim`.
      objective: ``objective(victim, params, *target) -> scalar`` to maximize.
      feasible: a :class:`~poisoning.feasible.FeasibleSet` of the leader (default ``Box(0, 1)``); a set
        with ``uses_params = True`` is projected as ``feasible.project(leader, params=...)`` with the
        victim trained at the current iterate (a sanitizer whose region depends on the model).
      step: a step rule (default ``fixed_step(0.05)``: unit-hypergradient steps of length 0.05, the
        MNIST setting of Biggio et al.).
      gain_tol, gain_rtol, patience: stop once the objective improves by less than ``gain_tol`` (or
        ``gain_rtol`` times its value) ``patience`` iterates in a row (``None``: off).
      tol: a step moving the leader by at most ``tol`` stops the ascent (a rejected line-search step
        moves it by 0; ``None``: never).
      select: ``select(victim, params, leader, *target) -> scalar`` scoring iterates for the returned
        best one (default: the objective), e.g. the objective after rounding relaxed flips.
      return_best: return the best iterate (default) instead of the last.
    """

    victim: Victim
    objective: Callable
    feasible: FeasibleSet = dataclasses.field(default_factory=lambda: Box(0.0, 1.0))
    step: Any = None
    gain_tol: float | None = 1e-6
    gain_rtol: float | None = None
    patience: int = 1
    tol: float | None = 0.0
    select: Callable | None = None
    return_best: bool = True

    def __post_init__(self):
        if not isinstance(self.victim, Victim):
            raise ValueError(f"argument 'victim' must be a poisoning.victims.Victim, got {type(self.victim).__name__}")
        if not callable(self.objective):
            raise ValueError("argument 'objective' must be callable: objective(victim, params, *target) -> scalar")
        if self.feasible is None:
            object.__setattr__(self, "feasible", Unconstrained())
        if not isinstance(self.feasible, FeasibleSet):
            raise ValueError(f"argument 'feasible' must be a FeasibleSet, got {type(self.feasible).__name__}")
        if self.step is None:
            object.__setattr__(self, "step", fixed_step(0.05))
        object.__setattr__(self, "step", as_step_rule(self.step))
        if self.select is not None and not callable(self.select):
            raise ValueError("argument 'select' must be callable or None")
        # validates gain_tol, patience, tol
        StackelbergConfig(leader_optimizer=self.step, gain_tol=self.gain_tol, gain_rtol=self.gain_rtol,
                          patience=self.patience, tol=self.tol)

    @functools.cached_property
    def _follower(self):
        victim = self.victim

        def respond(leader, warm, poison, clean, active, *target):
            return poison.fit(victim, leader, clean, active, warm)

        return ResponseFollower(respond, residual_fn=lambda w, *a: victim.residual(w))

    @functools.cached_property
    def _leader_objective(self):
        victim, objective = self.victim.trusted, self.objective  # inputs validated once, in run()

        def f(leader, params, poison, clean, active, *target):
            return objective(victim, params, *target)

        return f

    @functools.cached_property
    def _select(self):
        if self.select is None:
            return None
        victim, select = self.victim.trusted, self.select

        def s(leader, params, poison, clean, active, *target):
            return select(victim, params, leader, *target)

        return s

    @functools.cached_property
    def _projection(self):
        feasible = self.feasible
        if getattr(feasible, "uses_params", False):
            return lambda x, w: feasible.project(x, params=w)
        return feasible.project

    @functools.lru_cache(maxsize=8)
    def solver(self, steps: int, mode: str = "joint") -> StackelbergSolver:
        """The :class:`bilevel.StackelbergSolver` running this attack (cached per ``steps`` and ``mode``)."""
        config = StackelbergConfig(
            leader_optimizer=self.step, projection=self._projection,
            projection_uses_follower=bool(getattr(self.feasible, "uses_params", False)), maximize=True,
            steps=int(steps), tol=self.tol, gain_tol=self.gain_tol, gain_rtol=self.gain_rtol,
            patience=self.patience, mode="coordinate" if mode == "coordinate" else "joint",
            return_best=self.return_best)
        return StackelbergSolver(self._leader_objective, self._follower, config, self._select)


class AttackResult(NamedTuple):
    """Output of :func:`run` (one result type for every attack).

    Attributes:
      poison: the optimized poison (the input's type, its leader replaced: ``res.poison.X``, ``.q``, ...).
      params: the victim trained with the optimized poison; params_clean: trained without any.
      objective, objective_clean: the attack objective with the optimized poison and without poison.
      history: one array per block: the objective at each evaluated iterate (the first is the start).
      block_params, block_objective: the victim and the objective after each block; in sequential mode
        entry ``i`` is the victim trained with the first ``i + 1`` points, so every smaller budget is
        read off one run without retraining.
      n_steps: steps taken per block; seconds: cumulative wall time after each block (compiled code
        only); compile_seconds: the one-time tracing and compilation.
      stalled: per block, whether the ascent never improved on its start (also warned about).
      mode: ``"joint"``, ``"sequential"`` or ``"coordinate"``.
    """

    poison: Any
    params: Any
    params_clean: Any
    objective: float
    objective_clean: float
    history: tuple
    block_params: tuple
    block_objective: np.ndarray
    n_steps: np.ndarray
    seconds: np.ndarray
    compile_seconds: float
    stalled: np.ndarray
    mode: str

    @property
    def objective_history(self) -> np.ndarray:
        """All blocks' histories concatenated."""
        return np.concatenate(self.history) if self.history else np.zeros(0)


# ----------------------------------------------------------------------------------------------------
# entry points
# ----------------------------------------------------------------------------------------------------
def _prepare(attack: PoisoningAttack, X_train, y_train, poison, target):
    victim = attack.victim
    if not hasattr(poison, "fit") or not hasattr(poison, "leader"):
        raise ValueError(f"argument 'poison' must be a PoisonPoints, LabelFlips or PoisonWeights, got "
                         f"{type(poison).__name__}")
    dtype = jnp.result_type(float)
    X = check_features(X_train, "X_train")
    y = check_labels(y_train, victim.task, victim.n_classes, "y_train", X.shape[0])
    X = jnp.asarray(np.asarray(X), dtype)
    y = jnp.asarray(y)
    poison = poison.validate(victim, X)
    poison = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(jnp.asarray(a).dtype,
                                                                                     jnp.floating) else jnp.asarray(a),
                                    poison)
    if not isinstance(target, tuple):
        raise ValueError("argument 'target' must be a tuple of arrays passed to the objective, e.g. (X_val, y_val)")
    target = tuple(jnp.asarray(t, dtype) if jnp.issubdtype(jnp.asarray(t).dtype, jnp.floating) else jnp.asarray(t)
                   for t in target)
    for i, t in enumerate(target):
        a = np.asarray(t)
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            raise ValueError(f"argument 'target[{i}]' contains NaN or inf")
    clean = CleanData(X, y, jax.lax.stop_gradient(victim.prepare(X, y)))
    return poison, clean, target, dtype


def _block_masks(leader, m, i, mode):
    """``(mask, active)`` for block ``i``: sequential frees row ``i`` with rows ``<= i`` present."""
    rows = jnp.arange(m)
    if mode == "sequential":
        free, active = rows == i, rows <= i
    else:
        free, active = jnp.ones((m,), bool), jnp.ones((m,), bool)
    mask = jax.tree_util.tree_map(lambda _: free, leader)
    return mask, active


@functools.partial(jax.jit, static_argnums=0)
def _one_point_problem(victim, poison, clean, leader, i):
    """Block ``i`` of the sequential mode as a one-point problem (points ``< i`` placed)."""
    active = jnp.arange(poison.num_blocks()) <= i
    return poison.with_leader(leader).one_point_problem(i, victim, clean, active)


@functools.partial(jax.jit, static_argnums=0)
def _plain_fit(victim, poison, clean, leader, active):
    """The victim trained cold on the clean rows followed by the poison rows present in ``active``."""
    X = clean.X
    warm = victim.init(poison.num_rows(X.shape[0]), tuple(X.shape[1:]) if X.ndim > 2 else X.shape[1], X.dtype)
    return poison.fit(victim, leader, clean, active, warm)


@functools.partial(jax.jit, static_argnums=0)
def _project(solver, x, w):
    return solver._project(x, w)


def run(attack: PoisoningAttack, X_train, y_train, poison, target: tuple = (), *, steps: int = 100,
        mode: Literal["joint", "sequential", "coordinate"] = "joint", warm_start=None, step_state=None,
        callback: Callable | None = None) -> AttackResult:
    """Run ``attack``: optimize ``poison``'s leader against the victim trained on ``(X_train, y_train)``
    and the poison, maximizing ``attack.objective(victim, params, *target)``.

    Args:
      X_train, y_train: the victim's clean training set (public labels).
      poison: a :class:`PoisonPoints`, :class:`LabelFlips` or :class:`PoisonWeights` (the start).
      target: arrays passed to the objective, e.g. ``(X_val, y_val)``.
      steps: maximum ascent steps per block (per point in ``"sequential"`` mode; in all otherwise).
      mode: ``"joint"``, ``"sequential"`` or ``"coordinate"`` (module docstring).
      warm_start: victim parameters to start the first fit from (default: a cold start).
      step_state: the step rule's initial state, for rules with run-time settings (e.g.
        ``Greedy(rounds=R).schedule(shares, cycle)``): one compiled loop serves every setting.
      callback: ``callback(i, poison)`` after each block (a progress bar, a checkpoint).

    Returns:
      :class:`AttackResult`.
    """
    if mode not in ("joint", "sequential", "coordinate"):
        raise ValueError(f"argument 'mode' must be 'joint', 'sequential' or 'coordinate', got {mode!r}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or int(steps) < 1:
        raise ValueError(f"argument 'steps' must be an integer >= 1, got {steps!r}")
    if not isinstance(attack, PoisoningAttack):
        raise ValueError(f"argument 'attack' must be a PoisoningAttack, got {type(attack).__name__}")
    victim = attack.victim
    poison, clean, target, dtype = _prepare(attack, X_train, y_train, poison, target)
    m = poison.num_blocks()
    if m < 1:
        raise ValueError("argument 'poison' is empty (no points / entries to optimize)")
    leader0 = poison.leader()
    # sequential mode on a poison type that poses block i as a one-point problem (PoisonPoints): the
    # placed points join the victim's (cached) training set and one row is appended, so a Gram-cached
    # victim recomputes one row per step; the leader, masks and feasible set are those of all m rows
    one_point = mode == "sequential" and hasattr(poison, "one_point_problem")
    if one_point:
        problem_of = lambda leader, i: _one_point_problem(victim, poison, clean, leader, i)
    else:
        problem_of = lambda leader, i: (poison, clean)
    problem0 = problem_of(leader0, 0)
    n_rows = problem0[0].num_rows(problem0[1].X.shape[0])
    warm0 = victim.init(n_rows, tuple(clean.X.shape[1:]) if clean.X.ndim > 2 else clean.X.shape[1], dtype) \
        if warm_start is None else warm_start
    solver = attack.solver(int(steps), mode)

    t0 = time.perf_counter()
    mask0, active0 = _block_masks(leader0, m, 0, mode)
    state0 = solver.init(leader0, warm0, *problem0, active0, *target, mask=mask0, rule_state=step_state)
    compiled = _run_compiled.lower(solver, state0, (*problem0, active0, *target), mask0).compile()
    compile_seconds = time.perf_counter() - t0

    def block(leader, problem, active, mask, warm):
        # a block starts like state0 from the current leader, its free entries projected, and the victim
        # warm-started from the previous block's fit (the victims that train a fixed number of steps
        # from their initialization ignore warm starts)
        leader = _masked_where(mask, _project(solver, leader, warm0), leader)
        state = state0._replace(leader=leader, best_leader=leader, follower=warm, best_follower=warm)
        return jax.block_until_ready(compiled(state, (*problem, active, *target), mask))

    # the victim as reported: trained on the plain layout (clean rows, then the m poison rows)
    refit = lambda leader, active: _plain_fit(victim, poison, clean, leader, active)
    # the clean victim: the same compiled loop, no poison present, nothing free (one evaluation; it also
    # takes the executable's first-call costs out of the timed blocks)
    nothing = jnp.zeros((m,), bool)
    none = jax.tree_util.tree_map(lambda _: nothing, leader0)
    clean_res = block(leader0, problem0, nothing, none, warm0)
    params_clean = refit(leader0, nothing) if one_point else clean_res.follower
    objective_clean = float(clean_res.objective)

    blocks = range(m) if mode == "sequential" else range(1)
    leader = leader0
    histories, n_steps, seconds, block_params, block_obj, stalled = [], [], [], [], [], []
    elapsed = 0.0
    warm = warm0
    for i in blocks:
        mask, active = _block_masks(leader0, m, i, mode)
        t = time.perf_counter()
        res = block(leader, problem_of(leader, i), active, mask, warm)
        elapsed += time.perf_counter() - t
        leader, warm = res.leader, res.follower
        params = refit(leader, active) if one_point else res.follower
        k = int(res.n_iterates)
        hist = np.asarray(res.history.objective)[:k]
        histories.append(hist)
        n_steps.append(k - 1)
        seconds.append(elapsed)
        block_params.append(params)
        block_obj.append(float(res.objective))
        stalled.append(bool(k <= 2 and not float(res.objective) > float(hist[0])))
        if callback is not None:
            callback(i, poison.with_leader(jax.tree_util.tree_map(np.asarray, leader)))
    if any(stalled):
        warnings.warn(
            f"poisoning attack ({victim.name}): the ascent stalled at its first step in {sum(stalled)} of "
            f"{len(stalled)} block(s) (no improvement on the start); check the step size, the tolerances "
            "and the victim's solver (in float32, a tolerance float32 cannot reach stops every solve)",
            RuntimeWarning, stacklevel=2)
    return AttackResult(
        poison=poison.with_leader(jax.tree_util.tree_map(np.asarray, leader)),
        params=block_params[-1],
        params_clean=params_clean,
        objective=float(res.objective),
        objective_clean=objective_clean,
        history=tuple(histories),
        block_params=tuple(block_params),
        block_objective=np.asarray(block_obj),
        n_steps=np.asarray(n_steps),
        seconds=np.asarray(seconds),
        compile_seconds=compile_seconds,
        stalled=np.asarray(stalled),
        mode=mode,
    )


def attack_value(attack: PoisoningAttack, X_train, y_train, poison, target: tuple = (), *, warm_start=None):
    """``(A(poison), params)``: train the victim with ``poison`` (every entry present) and evaluate the
    objective. Differentiable in the poison's arrays (not validated: use concrete, checked inputs)."""
    victim = attack.victim
    dtype = jnp.result_type(float)
    X = jnp.asarray(X_train, dtype)
    y = jnp.asarray(y_train)
    clean = CleanData(X, y, victim.prepare(X, y))
    m = poison.num_blocks()
    if warm_start is None:
        warm_start = victim.init(poison.num_rows(X.shape[0]), X.shape[1] if X.ndim == 2 else tuple(X.shape[1:]), dtype)
    params = poison.fit(victim, poison.leader(), clean, jnp.ones((m,), bool), warm_start)
    return attack.objective(victim, params, *target), params


def hypergradient(attack: PoisoningAttack, X_train, y_train, poison, target: tuple = (), *, warm_start=None):
    """``(value, dA/dleader, params)``: the exact gradient the driver ascends (before masks and step rules).
    Compiled once per attack and shapes."""
    return _hypergradient(attack, X_train, y_train, poison, tuple(target), warm_start)


@functools.partial(jax.jit, static_argnums=0)
def _hypergradient(attack, X_train, y_train, poison, target, warm_start):
    def f(leader):
        return attack_value(attack, X_train, y_train, poison.with_leader(leader), target, warm_start=warm_start)

    (val, params), g = jax.value_and_grad(f, has_aux=True)(poison.leader())
    return val, g, params
