r"""Step rules of the leader: how a hypergradient becomes a move.

The leader solves :math:`\min_{x\in\mathcal X} F(x)` (a maximization is handed over as
:math:`\min -f`), and at iterate :math:`x_k` the solver knows :math:`F(x_k)` and
:math:`g_k = \nabla F(x_k)`. A *step rule* turns them into an update :math:`u_k`; the solver then
projects, :math:`x_{k+1} = P_{\mathcal X}(x_k + u_k)`. Three kinds are accepted wherever a
``leader_optimizer`` is asked for:

- any :class:`optax.GradientTransformation` (its ``update(g, state, x)`` gives :math:`u_k`; an
  ``optax.GradientTransformationExtraArgs`` also receives ``value=F(x_k)``). The classic fixed-length
  step of Biggio et al. (2012), :math:`u = -t\,g/\|g\|`, is ``fixed_step(t)`` =
  ``optax.chain(normalize(), optax.scale(-t))``;
- :class:`Backtrack`: accept an iterate that improves on the last accepted one, otherwise halve the
  step and retry from the accepted point (one follower solve per step; the rule of Muñoz-González et
  al. 2017's code);
- :class:`LineSearch`: explore step lengths with fresh follower solves at trial points (secml's
  ``pgd-ls``), run by the solver itself because it needs the follower;
- :class:`Greedy`: a discrete rule for relaxed 0/1 (or integer) leaders — add the ``k`` coordinates of
  largest decrease (greedy label flipping, influence-guided copy counts).

A rule object is a frozen dataclass (hashable: compiled loops are cached per rule) with
``init(leader) -> state`` and ``update(grad, state, leader, value) -> (updates, state)``, and
optionally ``stop(state) -> bool`` (the rule's own termination test). :func:`as_step_rule` turns an
optax transformation into one.

Normalizations (:func:`normalize`): ``"global"`` divides by the Euclidean norm of the whole pytree,
``"rows"`` by the norm of each block (the slice along the leading axis, taken across all leaves: one
poison point with its label, say), ``"inf"`` by the largest absolute entry.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

__all__ = [
    "normalize",
    "fixed_step",
    "Backtrack",
    "LineSearch",
    "Greedy",
    "OptaxStep",
    "as_step_rule",
]

Normalization = Literal["global", "rows", "inf"]
_NORMALIZATIONS = ("global", "rows", "inf")


def _tiny(tree):
    return jnp.finfo(jnp.result_type(*jax.tree_util.tree_leaves(tree))).tiny


def row_norms(tree) -> jax.Array:
    """Euclidean norm of each block (leading-axis slice) across all leaves: shape ``(m,)``."""
    sq = [jnp.sum(jnp.reshape(l, (l.shape[0], -1)) ** 2, axis=1) for l in jax.tree_util.tree_leaves(tree)]
    return jnp.sqrt(sum(sq[1:], sq[0]))


def normalized(tree, kind: Normalization):
    """``tree`` divided by its norm of the given ``kind`` (zero stays zero)."""
    if kind == "global":
        n = otu.tree_norm(tree)
        return jax.tree_util.tree_map(lambda g: g / jnp.maximum(n, _tiny(tree)).astype(g.dtype), tree)
    if kind == "inf":
        n = otu.tree_norm(tree, ord="inf")
        return jax.tree_util.tree_map(lambda g: g / jnp.maximum(n, _tiny(tree)).astype(g.dtype), tree)
    if kind == "rows":
        n = jnp.maximum(row_norms(tree), _tiny(tree))
        return jax.tree_util.tree_map(lambda g: g / n.reshape((-1,) + (1,) * (g.ndim - 1)).astype(g.dtype), tree)
    raise ValueError(f"argument 'kind' must be one of {_NORMALIZATIONS}, got {kind!r}")


def normalize(kind: Normalization = "global") -> optax.GradientTransformation:
    r"""An optax transformation scaling the update to unit norm: :math:`u / \|u\|` (``"global"``), each
    block to unit norm (``"rows"``) or by :math:`\|u\|_\infty` (``"inf"``). A zero update stays zero."""
    if kind not in _NORMALIZATIONS:
        raise ValueError(f"argument 'kind' must be one of {_NORMALIZATIONS}, got {kind!r}")

    def update(updates, state, params=None):
        del params
        return normalized(updates, kind), state

    return optax.GradientTransformation(optax.init_empty_state, update)


def fixed_step(step_size, normalization: Normalization | None = "global", schedule=None) -> optax.GradientTransformation:
    r"""Descent by steps of fixed length: :math:`u = -t_k\,g/\|g\|` (Biggio et al. 2012, §3).

    ``step_size`` :math:`t` (a float), or ``schedule`` an optax schedule ``k -> t_k`` (e.g.
    ``optax.cosine_decay_schedule``); ``normalization=None`` steps along the raw gradient."""
    parts = [] if normalization is None else [normalize(normalization)]
    if schedule is not None:
        parts.append(optax.scale_by_schedule(lambda k: -schedule(k)))
    else:
        if not float(step_size) > 0:
            raise ValueError(f"argument 'step_size' must be > 0, got {step_size!r}")
        parts.append(optax.scale(-float(step_size)))
    return optax.chain(*parts)


# ----------------------------------------------------------------------------------------------------
# rules the solver knows
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class OptaxStep:
    """An optax transformation as a step rule (``value`` is passed when it takes extra arguments)."""

    transform: Any

    def init(self, leader):
        return self.transform.init(leader)

    def update(self, grad, state, leader, value):
        if isinstance(self.transform, optax.GradientTransformationExtraArgs):
            return self.transform.update(grad, state, leader, value=value)
        return self.transform.update(grad, state, leader)

    def stop(self, state):
        return jnp.asarray(False)


class BacktrackState(NamedTuple):
    leader: Any  # last accepted iterate
    direction: Any  # its (normalized) descent direction
    value: jax.Array  # its value
    step: jax.Array  # current step length
    gain: jax.Array  # improvement of the last accepted iterate over the one before (inf at the start)
    accepted: jax.Array  # whether the latest iterate was accepted


@dataclasses.dataclass(frozen=True)
class Backtrack:
    r"""Accept-or-halve: the iterate :math:`x_k` is *accepted* when :math:`F(x_k) < F(x_a)` (strictly; or
    ``<=`` with ``strict=False``), :math:`x_a` the last accepted one (the start is accepted). Then
    :math:`d = -g_k` normalized by ``normalization`` and :math:`x_{k+1} = P(x_k + t d)`. Otherwise the step
    shrinks, :math:`t \leftarrow \text{shrink}\cdot t`, and :math:`x_{k+1} = P(x_a + t d_a)` retries from
    :math:`x_a`. Stops once :math:`t <` ``min_step``, or when an accepted iterate gains less than ``tol``.
    One follower solve per step (the retry is the next iterate), unlike :class:`LineSearch`."""

    init_step: float = 0.5
    shrink: float = 0.5
    min_step: float = 1e-3
    tol: float = 1e-6
    normalization: Normalization | None = "global"
    strict: bool = True

    def __post_init__(self):
        if not self.init_step > 0:
            raise ValueError(f"Backtrack: 'init_step' must be > 0, got {self.init_step}")
        if not 0 < self.shrink < 1:
            raise ValueError(f"Backtrack: 'shrink' must be in (0, 1), got {self.shrink}")
        if not self.min_step >= 0:
            raise ValueError(f"Backtrack: 'min_step' must be >= 0, got {self.min_step}")
        if self.normalization is not None and self.normalization not in _NORMALIZATIONS:
            raise ValueError(f"Backtrack: 'normalization' must be one of {_NORMALIZATIONS} or None")

    def init(self, leader):
        dtype = jnp.result_type(*jax.tree_util.tree_leaves(leader))
        return BacktrackState(leader, jax.tree_util.tree_map(jnp.zeros_like, leader), jnp.asarray(jnp.inf, dtype),
                              jnp.asarray(self.init_step, dtype), jnp.asarray(jnp.inf, dtype), jnp.asarray(False))

    def update(self, grad, state: BacktrackState, leader, value):
        dtype = state.value.dtype
        value = jnp.asarray(value, dtype)
        gain = state.value - value  # inf at the start
        ok = (gain > 0) if self.strict else (gain >= 0)
        d = jax.tree_util.tree_map(jnp.negative, grad if self.normalization is None else normalized(grad, self.normalization))
        sel = lambda a, b: jax.tree_util.tree_map(lambda u, v: jnp.where(ok, u, v), a, b)
        acc, acc_d = sel(leader, state.leader), sel(d, state.direction)
        step = jnp.where(ok, state.step, self.shrink * state.step)
        new = BacktrackState(acc, acc_d, jnp.where(ok, value, state.value), step,
                             jnp.where(ok, gain, state.gain), ok)
        target = jax.tree_util.tree_map(lambda a, u: a + step.astype(a.dtype) * u, acc, acc_d)
        return jax.tree_util.tree_map(jnp.subtract, target, leader), new

    def stop(self, state: BacktrackState):
        return (state.step < self.min_step) | (state.accepted & (state.gain < self.tol))


@dataclasses.dataclass(frozen=True)
class LineSearch:
    """Projected-gradient step with exploration of step sizes (secml ``pgd-ls`` style).

    At each leader step the trial ``x(eta) = P(x - eta * d)`` (``d`` the hypergradient, normalized by
    ``normalization`` unless ``None``) is evaluated with a fresh follower solve. If it improves the
    objective, ``eta`` is multiplied by ``grow`` while the objective keeps improving (at most
    ``max_grow`` times); otherwise it is multiplied by ``shrink`` until it improves (at most
    ``max_shrink`` trials) and the step is rejected if it never does. The accepted ``eta`` times
    ``grow_next`` starts the next step (``init_step`` again when ``reset``). A trial whose follower solve
    is not finite (or, for an argmin follower, does not reach its solver's ``tol``) counts as no
    improvement. ``normalize=True`` is the old spelling of ``normalization="global"``.
    """

    init_step: float = 1.0
    grow: float = 2.0
    shrink: float = 0.5
    max_grow: int = 8
    max_shrink: int = 30
    normalization: Normalization | None = None
    reset: bool = False
    grow_next: float = 1.0
    normalize: bool = False

    def __post_init__(self):
        if not self.init_step > 0:
            raise ValueError(f"LineSearch: 'init_step' must be > 0, got {self.init_step}")
        if not self.grow > 1:
            raise ValueError(f"LineSearch: 'grow' must be > 1, got {self.grow}")
        if not 0 < self.shrink < 1:
            raise ValueError(f"LineSearch: 'shrink' must be in (0, 1), got {self.shrink}")
        if int(self.max_grow) < 0 or int(self.max_shrink) < 1:
            raise ValueError("LineSearch: 'max_grow' must be >= 0 and 'max_shrink' >= 1")
        if not self.grow_next > 0:
            raise ValueError(f"LineSearch: 'grow_next' must be > 0, got {self.grow_next}")
        if self.normalize and self.normalization is None:
            object.__setattr__(self, "normalization", "global")
        if self.normalization is not None and self.normalization not in _NORMALIZATIONS:
            raise ValueError(f"LineSearch: 'normalization' must be one of {_NORMALIZATIONS} or None")


class GreedyState(NamedTuple):
    round: jax.Array
    shares: jax.Array  # (rounds + 1,) int32, a trailing 0
    cycle: jax.Array  # int32


@dataclasses.dataclass(frozen=True)
class Greedy:
    r"""Greedy coordinate rule for 0/1 or count-valued leaders (one leaf, a vector of length ``n``):
    round :math:`r` adds ``increment`` to the ``shares[r]`` coordinates of most negative gradient
    (largest first-order decrease of :math:`F`), each coordinate at most once per round.

    The schedule: ``shares`` a tuple of per-round counts (e.g. ``(k, k, ..., rest)`` for greedy label
    flipping with re-scoring every ``k`` flips), or ``share`` an int used every round; or ``rounds`` (the
    number of rounds) with the counts given at run time by :meth:`schedule` (passed as the rule's state:
    one compiled loop serves every budget). With ``exclude_active`` a coordinate already above 0 is never
    chosen again (a label flips once). ``cycle`` (the number of coordinates a share may cover before
    wrapping, default ``n``; also settable at run time): a share larger than ``cycle`` gives every
    coordinate ``share // cycle`` increments and the ``share % cycle`` best one more (copy counts of
    Jagielski et al. 2021's influence-guided subpopulation flip). Only the first ``cycle`` coordinates are
    eligible (padding beyond stays 0). The loop stops once every round has been applied and evaluated."""

    shares: tuple = ()
    share: int | None = None
    rounds: int | None = None
    increment: float = 1.0
    exclude_active: bool = False
    cycle: int | None = None

    def __post_init__(self):
        given = sum(x is not None and x != () for x in (self.shares, self.share, self.rounds))
        if given != 1:
            raise ValueError("Greedy: give exactly one of 'shares' (a tuple of per-round counts), 'share' (one "
                             "count for every round) or 'rounds' (counts given at run time by Greedy.schedule)")
        if any(int(s) < 0 for s in self.shares) or (self.share is not None and int(self.share) < 1):
            raise ValueError("Greedy: shares must be >= 0 and share >= 1")
        if self.rounds is not None and int(self.rounds) < 1:
            raise ValueError(f"Greedy: 'rounds' must be >= 1, got {self.rounds}")
        object.__setattr__(self, "shares", tuple(int(s) for s in self.shares))

    @property
    def num_rounds(self) -> int | None:
        if self.shares:
            return len(self.shares)
        return None if self.rounds is None else int(self.rounds)

    def schedule(self, shares, cycle=None) -> GreedyState:
        """The run-time state for ``Greedy(rounds=R)``: ``shares`` (R counts) and ``cycle``."""
        shares = np.asarray(shares, np.int64)
        if self.num_rounds is None or shares.shape != (self.num_rounds,) or np.any(shares < 0):
            raise ValueError(f"Greedy.schedule: 'shares' must be {self.num_rounds} non-negative counts, got {shares}")
        cyc = -1 if cycle is None else int(cycle)
        if cycle is not None and cyc < 1:
            raise ValueError(f"Greedy.schedule: 'cycle' must be >= 1, got {cycle}")
        return GreedyState(jnp.asarray(0, jnp.int32), jnp.asarray(np.append(shares, 0), jnp.int32),
                           jnp.asarray(cyc, jnp.int32))

    def init(self, leader):
        n = jnp.shape(jax.tree_util.tree_leaves(leader)[0])[0]
        R = self.num_rounds or 1
        table = self.shares if self.shares else (int(self.share),) if self.share is not None else (0,) * R
        cyc = -1 if self.cycle is None else int(self.cycle)
        del n
        return GreedyState(jnp.asarray(0, jnp.int32), jnp.asarray(table + (0,), jnp.int32), jnp.asarray(cyc, jnp.int32))

    def update(self, grad, state, leader, value):
        leaves, treedef = jax.tree_util.tree_flatten(grad)
        if len(leaves) != 1 or leaves[0].ndim != 1:
            raise ValueError("Greedy: the leader must be a single vector")
        g, x = leaves[0], jax.tree_util.tree_leaves(leader)[0]
        n = g.shape[0]
        cyc = jnp.where(state.cycle < 1, n, state.cycle)
        if self.share is not None:
            b = state.shares[0]
        else:
            b = state.shares[jnp.minimum(state.round, state.shares.shape[0] - 1)]
        q, rem = b // cyc, b % cyc
        idx = jnp.arange(n)
        score = jnp.where(idx < cyc, -g, -jnp.inf)
        if self.exclude_active:
            score = jnp.where(x > 0, -jnp.inf, score)
        order = jnp.argsort(-score, stable=True)
        rank = jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
        eligible = jnp.isfinite(score)
        inc = jnp.where(eligible & (idx < cyc), q, 0) + jnp.where(eligible & (rank < rem), 1, 0)
        u = (inc * self.increment).astype(g.dtype)
        return jax.tree_util.tree_unflatten(treedef, [u]), state._replace(round=state.round + 1)

    def stop(self, state):
        # called after an update: the update that counted round R + 1 moved nothing, so the loop stops at
        # the iterate where every share has been applied and evaluated
        R = self.num_rounds
        if R is None:
            return jnp.asarray(False)
        return state.round > R


def as_step_rule(rule):
    """A step rule from an optax transformation, a rule object, or the strings ``"line_search"`` /
    ``"pgd-ls"`` (a default :class:`LineSearch`). :class:`LineSearch` is returned as it is (the solver
    runs it)."""
    if isinstance(rule, str):
        if rule not in ("line_search", "pgd-ls"):
            raise ValueError(
                "argument 'leader_optimizer' must be an optax GradientTransformation, a step rule (Backtrack, "
                f"LineSearch, Greedy) or 'line_search', got {rule!r}"
            )
        return LineSearch()
    if isinstance(rule, (optax.GradientTransformation, optax.GradientTransformationExtraArgs)):
        return OptaxStep(rule)
    if isinstance(rule, LineSearch) or (callable(getattr(rule, "init", None)) and callable(getattr(rule, "update", None))):
        return rule
    raise ValueError(
        "argument 'leader_optimizer' must be an optax GradientTransformation, a step rule (Backtrack, LineSearch, "
        f"Greedy) or 'line_search', got {type(rule).__name__}"
    )


def rule_stop(rule, state) -> jax.Array:
    stop = getattr(rule, "stop", None)
    return jnp.asarray(False) if stop is None else jnp.asarray(stop(state))


def _check_float(name, value):
    if not (isinstance(value, (int, float, np.floating)) and np.isfinite(value)):
        raise ValueError(f"argument {name!r} must be a finite number, got {value!r}")
