r"""Inner solvers for :func:`bilevel.minimize`: minimize a plain loss ``loss(params, *args)`` over a pytree.

Every solver is a frozen dataclass with one protocol, so hypergradient strategies can either treat it as
a black box (:class:`~bilevel.minimize.Implicit` calls :meth:`run`) or differentiate through its steps
(the unrolled strategies scan over :meth:`update`):

- ``init_state(loss, params, *args) -> state``
- ``update(loss, params, state, *args) -> (params, state, grad_norm)`` one step; ``grad_norm`` is
  :math:`\|\nabla_x \mathcal L\|_2` at the *incoming* params (it is computed anyway).
- ``run(loss, init, *args) -> (params, SolverInfo)``: steps under :func:`jax.lax.while_loop` until
  :math:`\|\nabla\mathcal L\| \le` ``tol`` or ``maxiter`` steps. ``run`` never raises;
  :meth:`checked_run` applies the ``on_failure`` policy to a solve that did not converge.

Solvers: :class:`OptaxSolver` (any ``optax`` gradient transformation), :class:`GradientDescent`,
:class:`LBFGS` (``optax.lbfgs`` with its zoom line search), :class:`Newton` (dense, damped, with Armijo
backtracking; for small problems) and :class:`ClosedForm` (a user formula).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from bilevel._checks import ConvergenceError, OnFailure, check_on_failure, error_if

__all__ = [
    "SolverInfo",
    "InnerSolver",
    "OptaxSolver",
    "GradientDescent",
    "LBFGS",
    "Newton",
    "ClosedForm",
]


class SolverInfo(NamedTuple):
    """Diagnostics of an inner solve: steps taken and the final gradient norm."""

    num_steps: jax.Array
    grad_norm: jax.Array


def _grad_norm(loss, params, args):
    return optax.tree_utils.tree_norm(jax.grad(loss)(params, *args))


@dataclasses.dataclass(frozen=True)
class InnerSolver:
    """Base class: the stopping rule, the while-loop and the convergence check.

    Attributes:
      maxiter: maximal number of steps.
      tol: stop when the gradient norm is at most ``tol``; a solve ending above it has failed.
      on_failure: what :meth:`checked_run` does with a failed solve (``"raise"``, ``"warn"``,
        ``"ignore"``).
    """

    maxiter: int = 500
    tol: float = 1e-6
    on_failure: OnFailure = "raise"

    def __post_init__(self):
        if int(self.maxiter) < 1:
            raise ValueError(f"maxiter must be >= 1, got {self.maxiter}")
        if not self.tol > 0:
            raise ValueError(f"tol must be > 0, got {self.tol}")
        check_on_failure(self.on_failure)

    def init_state(self, loss: Callable, params: Any, *args: Any) -> Any:
        raise NotImplementedError

    def update(self, loss: Callable, params: Any, state: Any, *args: Any):
        raise NotImplementedError

    def run(self, loss: Callable, init: Any, *args: Any):
        state = self.init_state(loss, init, *args)
        inf = jnp.asarray(jnp.inf, dtype=jnp.result_type(*jax.tree_util.tree_leaves(init)))

        def cond(carry):
            _, _, k, gnorm = carry
            return (k < self.maxiter) & (gnorm > self.tol)

        def body(carry):
            params, state, k, _ = carry
            params, state, gnorm = self.update(loss, params, state, *args)
            return params, state, k + 1, gnorm.astype(inf.dtype)

        params, _, k, loop_gnorm = jax.lax.while_loop(cond, body, (init, state, jnp.asarray(0), inf))
        final = _grad_norm(loss, params, args)
        # The loop's norm is measured one step before the end; report the better of the two.
        return params, SolverInfo(k, jnp.minimum(final, loop_gnorm))

    def checked_run(self, loss: Callable, init: Any, *args: Any):
        """:meth:`run`, then apply ``on_failure`` when the gradient norm is above ``tol`` or not finite."""
        params, info = self.run(loss, init, *args)
        failed = jnp.logical_not(info.grad_norm <= self.tol)
        params = error_if(
            params,
            failed,
            f"inner solve ({type(self).__name__}) did not converge: gradient norm {{gnorm:.3e}} > tol "
            f"{self.tol:.1e} after {{steps:.0f}} of {self.maxiter} steps (NaN means the iterates "
            "diverged). Increase maxiter, loosen tol (float32 rarely reaches 1e-6), or change the solver.",
            on_failure=self.on_failure,
            error=ConvergenceError,
            fmt_args={"gnorm": info.grad_norm, "steps": info.num_steps},
        )
        return params, info


@dataclasses.dataclass(frozen=True)
class OptaxSolver(InnerSolver):
    """Any :mod:`optax` gradient transformation, run full-batch: ``x <- x + opt.update(grad)``.

    ``optimizer`` must not need extra ``update`` arguments (use :class:`LBFGS` for ``optax.lbfgs``).
    """

    optimizer: optax.GradientTransformation | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.optimizer is None:
            raise ValueError("OptaxSolver needs an optimizer, e.g. OptaxSolver(optimizer=optax.adam(1e-2))")

    def init_state(self, loss, params, *args):
        return self.optimizer.init(params)

    def update(self, loss, params, state, *args):
        grad = jax.grad(loss)(params, *args)
        updates, state = self.optimizer.update(grad, state, params)
        return optax.apply_updates(params, updates), state, optax.tree_utils.tree_norm(grad)


@dataclasses.dataclass(frozen=True)
class GradientDescent(OptaxSolver):
    """Fixed-step gradient descent :math:`x \\leftarrow x - \\eta \\nabla \\mathcal L(x)` (``optax.sgd``)."""

    learning_rate: float = 0.1
    momentum: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "optimizer", optax.sgd(self.learning_rate, momentum=self.momentum))
        super().__post_init__()


@dataclasses.dataclass(frozen=True)
class LBFGS(InnerSolver):
    """Limited-memory BFGS with a zoom line search (``optax.lbfgs``; Nocedal & Wright 2006, Alg. 7.4)."""

    memory_size: int = 10

    def _opt(self):
        return optax.lbfgs(memory_size=self.memory_size)

    def init_state(self, loss, params, *args):
        return self._opt().init(params)

    def update(self, loss, params, state, *args):
        def fn(p):
            return loss(p, *args)

        value, grad = optax.value_and_grad_from_state(fn)(params, state=state)
        updates, state = self._opt().update(
            grad, state, params, value=value, grad=grad, value_fn=fn
        )
        return optax.apply_updates(params, updates), state, optax.tree_utils.tree_norm(grad)


@dataclasses.dataclass(frozen=True)
class Newton(InnerSolver):
    r"""Damped Newton with Armijo backtracking, on the dense Hessian (small problems only).

    Step :math:`d = -(\nabla^2\mathcal L + \mu I)^{-1}\nabla\mathcal L`, then the largest
    :math:`t \in \{1, \beta, \beta^2, \dots\}` with
    :math:`\mathcal L(x + t d) \le \mathcal L(x) + c\, t\, \nabla\mathcal L^\top d`. Quadratic convergence
    near the optimum of a strongly convex loss; cost :math:`O(p^3)` per step for :math:`p` parameters.
    """

    maxiter: int = 50
    damping: float = 0.0
    backtrack: float = 0.5
    armijo: float = 1e-4
    max_backtracks: int = 30

    def init_state(self, loss, params, *args):
        return None

    def update(self, loss, params, state, *args):
        flat, unravel = ravel_pytree(params)

        def f(z):
            return loss(unravel(z), *args)

        value, g = jax.value_and_grad(f)(flat)
        hess = jax.hessian(f)(flat)
        hess = hess + self.damping * jnp.eye(flat.size, dtype=flat.dtype)
        direction = -jnp.linalg.solve(hess, g)
        # Fall back to steepest descent if the Newton direction is not a finite descent direction
        # (singular or indefinite Hessian).
        slope = jnp.vdot(g, direction)
        ok = jnp.isfinite(slope) & (slope < 0) & jnp.all(jnp.isfinite(direction))
        direction = jnp.where(ok, direction, -g)
        slope = jnp.vdot(g, direction)

        # Near the optimum the predicted decrease falls below the rounding error of the loss; a
        # change within a few ulps of |loss| then counts as sufficient (else Newton stalls there).
        slack = 16.0 * jnp.finfo(flat.dtype).eps * (jnp.abs(value) + 1.0)

        def cond(c):
            t, i = c
            # False on NaN/inf, so a non-finite trial is always rejected.
            sufficient = f(flat + t * direction) <= value + self.armijo * t * slope + slack
            return jnp.logical_not(sufficient) & (i < self.max_backtracks)

        def body(c):
            t, i = c
            return t * self.backtrack, i + 1

        t, _ = jax.lax.while_loop(cond, body, (jnp.asarray(1.0, flat.dtype), 0))
        return unravel(flat + t * direction), None, jnp.linalg.norm(g)


@dataclasses.dataclass(frozen=True)
class ClosedForm(InnerSolver):
    """A closed-form solution ``fn(*args) -> params`` (e.g. ridge regression's normal equations).

    ``run`` evaluates the formula and reports the gradient norm of ``loss`` there; with the
    :class:`~bilevel.minimize.Implicit` method the formula itself is not differentiated (the IFT is),
    so use ``method=Direct()`` to differentiate the formula instead.
    """

    fn: Callable | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.fn is None:
            raise ValueError("ClosedForm needs fn(*args) -> params")

    def init_state(self, loss, params, *args):
        return None

    def update(self, loss, params, state, *args):
        return self.fn(*args), None, _grad_norm(loss, params, args)

    def run(self, loss, init, *args):
        params = self.fn(*args)
        return params, SolverInfo(jnp.asarray(1), _grad_norm(loss, params, args))
