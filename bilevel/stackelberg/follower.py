r"""Followers: the best response :math:`w^\star(x)` of a Stackelberg game, as an object.

The leader's loop (:mod:`bilevel.stackelberg.solver`) needs three things of the follower:

- ``respond(leader, warm, *args) -> w``: the best response to ``leader``, started from ``warm`` (the
  previous response) and *differentiable* in ``leader`` and ``args``;
- ``trial(leader, warm, *args) -> (w, ok)``: the same solve, not differentiated, with a flag saying
  whether it succeeded (line-search trial points);
- ``residual(w, leader, *args) -> scalar``: how far ``w`` is from optimal (a diagnostic; NaN when
  unknown).

:class:`ArgminFollower` builds them from a training loss :math:`g(w, x, \dots)`, an inner solver and a
hypergradient method (:class:`~bilevel.minimize.Implicit`, or the unrolled strategies of
:mod:`bilevel.unroll`): :math:`w^\star(x) = \arg\min_w g(w, x)`. :class:`ResponseFollower` wraps any
differentiable map ``respond(leader, warm, *args)`` — the exact dual of an SVM differentiated through
its KKT conditions, a network trained for :math:`T` unrolled steps, or a data-poisoning victim
(``poisoning.attack`` builds one from a victim's ``fit``).

Followers are frozen dataclasses: the compiled leader loop is cached per (hashable) follower.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import optax.tree_utils as otu
from jax.flatten_util import ravel_pytree

from bilevel.minimize import Implicit
from bilevel.solvers import LBFGS, InnerSolver

__all__ = ["Follower", "ArgminFollower", "ResponseFollower", "as_follower"]


@runtime_checkable
class Follower(Protocol):
    def respond(self, leader, warm, *args) -> Any: ...

    def trial(self, leader, warm, *args) -> tuple[Any, jax.Array]: ...

    def residual(self, w, leader, *args) -> jax.Array: ...


@dataclasses.dataclass(frozen=True)
class ArgminFollower:
    r""":math:`w^\star(x) = \arg\min_w` ``loss(w, leader, *args)`` by ``solver`` (warm-started), with
    derivatives by ``method`` (default :class:`~bilevel.minimize.Implicit`).

    The follower is solved as one flat vector: the hypergradient method then sees a single array (so
    the implicit adjoint's right-hand side is one leaf, even when parts of the follower, e.g. an
    unregularized intercept, do not depend on the leader directly)."""

    loss: Callable
    solver: InnerSolver | None = None
    method: Any = None

    def __post_init__(self):
        if not callable(self.loss):
            raise ValueError(f"argument 'follower_loss' must be callable, got {type(self.loss).__name__}")
        if self.solver is None:
            object.__setattr__(self, "solver", LBFGS())
        if not isinstance(self.solver, InnerSolver):
            raise ValueError(
                f"argument 'follower_solver' must be a bilevel.solvers.InnerSolver, got {type(self.solver).__name__}"
            )
        if self.method is None:
            object.__setattr__(self, "method", Implicit())
        if not callable(getattr(self.method, "solve", None)):
            raise ValueError(f"argument 'method' must have solve(loss, solver, init, args), got {self.method!r}")

    def respond(self, leader, warm, *args):
        z0, unravel = ravel_pytree(jax.lax.stop_gradient(warm))

        def flat_loss(z, *a):
            return self.loss(unravel(z), *a)

        return unravel(self.method.solve(flat_loss, self.solver, z0, (leader, *args)))

    def trial(self, leader, warm, *args):
        w, info = self.solver.run(self.loss, warm, leader, *args)
        ok = jnp.isfinite(info.grad_norm)
        if self.solver.on_failure != "ignore":
            ok = ok & info.converged
        return w, ok

    def residual(self, w, leader, *args):
        return otu.tree_norm(jax.grad(self.loss)(w, leader, *args))


@dataclasses.dataclass(frozen=True)
class ResponseFollower:
    """Any differentiable best response ``respond(leader, warm, *args) -> w``.

    ``residual(w, leader, *args) -> scalar`` (optional) reports the follower's optimality residual;
    ``ok(w) -> bool`` (optional) says whether a (trial) solve succeeded (default: ``w`` is finite).
    Functions compare by identity, so build the follower once and reuse it to reuse compilations."""

    respond_fn: Callable
    residual_fn: Callable | None = None
    ok_fn: Callable | None = None

    def __post_init__(self):
        if not callable(self.respond_fn):
            raise ValueError(f"argument 'respond_fn' must be callable, got {type(self.respond_fn).__name__}")

    def respond(self, leader, warm, *args):
        return self.respond_fn(leader, warm, *args)

    def trial(self, leader, warm, *args):
        w = self.respond_fn(leader, warm, *args)
        if self.ok_fn is not None:
            return w, jnp.asarray(self.ok_fn(w))
        leaves = [jnp.all(jnp.isfinite(l)) for l in jax.tree_util.tree_leaves(w)
                  if jnp.issubdtype(jnp.result_type(l), jnp.inexact)]
        return w, (jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True))

    def residual(self, w, leader, *args):
        if self.residual_fn is None:
            return jnp.asarray(jnp.nan)
        return jnp.asarray(self.residual_fn(w, leader, *args))


def as_follower(follower, solver=None, method=None):
    """A :class:`Follower` from a follower object or a loss function ``g(w, leader, *args)`` (then
    ``solver``/``method`` configure the :class:`ArgminFollower`)."""
    if isinstance(follower, (ArgminFollower, ResponseFollower)) or (
        not callable(follower) and isinstance(follower, Follower)
    ):
        if solver is not None or method is not None:
            raise ValueError("'follower_solver' / 'method' configure a loss-function follower; this follower "
                             "already carries its own solve")
        return follower
    if callable(getattr(follower, "respond", None)):
        return follower
    if callable(follower):
        return ArgminFollower(follower, solver, method)
    raise ValueError(f"argument 'follower' must be a loss function or a Follower, got {type(follower).__name__}")
