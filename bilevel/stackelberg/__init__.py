"""Leader/follower (Stackelberg) games: one leader loop over any best-responding follower.

- :mod:`~bilevel.stackelberg.follower`: the follower as an object (an argmin of a loss with an inner
  solver and a hypergradient method, or any differentiable best response);
- :mod:`~bilevel.stackelberg.steps`: step rules (optax transformations, fixed normalized steps,
  accept-or-halve backtracking, secml's line search, greedy coordinate rounds);
- :mod:`~bilevel.stackelberg.solver`: the loop (joint or block-coordinate, masks, stopping rules,
  best iterate, histories), jit- and vmap-able;
- :mod:`~bilevel.stackelberg.gradient_play`: two-timescale simultaneous gradient play.
"""

from bilevel.stackelberg.follower import ArgminFollower, Follower, ResponseFollower, as_follower
from bilevel.stackelberg.gradient_play import solve_gradient_play
from bilevel.stackelberg.solver import (
    StackelbergConfig,
    StackelbergHistory,
    StackelbergResult,
    StackelbergSolver,
    StackelbergState,
    solve_stackelberg,
    solve_stackelberg_batched,
)
from bilevel.stackelberg.steps import Backtrack, Greedy, LineSearch, OptaxStep, as_step_rule, fixed_step, normalize

__all__ = [
    "Follower",
    "ArgminFollower",
    "ResponseFollower",
    "as_follower",
    "StackelbergConfig",
    "StackelbergState",
    "StackelbergHistory",
    "StackelbergResult",
    "StackelbergSolver",
    "solve_stackelberg",
    "solve_stackelberg_batched",
    "solve_gradient_play",
    "LineSearch",
    "Backtrack",
    "Greedy",
    "OptaxStep",
    "as_step_rule",
    "fixed_step",
    "normalize",
]
