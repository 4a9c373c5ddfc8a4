r"""Two-timescale gradient play: simultaneous gradient steps instead of an exact best response.

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
- V. S. Borkar, "Stochastic approximation with two time scales", Systems & Control Letters 29, 1997.
- M. Heusel et al., "GANs trained by a two time-scale update rule converge to a local Nash
  equilibrium", NeurIPS 2017.
- M. Hong, H.-T. Wai, Z. Wang, Z. Yang, "A two-timescale framework for bilevel optimization:
  complexity analysis and application to actor-critic", arXiv:2007.05170, 2020.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax.tree_utils as otu

from bilevel.hvp import hessian_matvec, mixed_vjp
from bilevel.linear_solve import as_linear_solver
from bilevel.stackelberg.solver import (
    StackelbergHistory,
    StackelbergResult,
    _check_count,
    _check_projection,
    _check_scalar_fn,
    _float_tree,
)

__all__ = ["solve_gradient_play"]


def _validate_callables(leader_objective, follower_loss):
    if not callable(leader_objective):
        raise ValueError(f"argument 'leader_objective' must be callable, got {type(leader_objective).__name__}")
    if not callable(follower_loss):
        raise ValueError(f"argument 'follower_loss' must be callable, got {type(follower_loss).__name__}")


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
    linear_solver: Any = "cg",
) -> StackelbergResult:
    r"""Simultaneous two-timescale gradient play instead of an exact best response.

    Each step, from the same :math:`(x_k, w_k)`: the follower takes ``follower_steps`` gradient steps
    with ``lr_follower`` on :math:`g(\cdot, x_k)`, and the leader takes one projected step with
    ``lr_leader`` along ``leader_gradient``:

    - ``"partial"``: :math:`\nabla_x f(x_k, w_k)` (ignores the follower's reaction; the Stackelberg
      solution of zero-sum games, where :math:`f = g` is maximized by the leader);
    - ``"unrolled"``: the derivative of :math:`f(x, w_{k+1}(x))` through the follower's steps;
    - ``"implicit"``: :math:`\nabla_x f - (\nabla^2_{wx} g)^\top [\nabla^2_{ww} g]^{-1}\nabla_w f` at
      :math:`(x_k, w_k)` (``linear_solver``: a solver of
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
    linear_solver = as_linear_solver(linear_solver)  # validates it (a name, an object or a function)

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
        v = self.linear_solver(matvec, gw).x
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
            score=jnp.asarray(obj, dtype),
            follower_residual=jnp.asarray(resid, dtype),
            hypergrad_norm=jnp.asarray(otu.tree_norm(d), dtype),
            step_size=jnp.asarray(game.lr_leader, dtype),
            step_norm=jnp.asarray(dx, dtype),
            block=jnp.asarray(-1, jnp.int32),
            active=jnp.asarray(True),
        )
        return (x_new, w_new), info

    (x, w), history = jax.lax.scan(body, (x0, w0), None, length=game.steps)
    return StackelbergResult(x, w, game.leader_objective(x, w, *a), history, jnp.asarray(game.steps),
                             jnp.asarray(game.steps))
