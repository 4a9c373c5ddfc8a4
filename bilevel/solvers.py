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

Tolerances follow the dtype: ``tol=None`` (the default) is :math:`\max(10^{-6}, \sqrt{\varepsilon})` for
the machine epsilon of the parameters' dtype, i.e. ``1e-6`` in float64 and ``3.5e-4`` in float32 (a
gradient norm of 1e-6 is rarely reachable in float32). An explicit ``tol`` is used as given.

Solvers: :class:`OptaxSolver` (any ``optax`` gradient transformation), :class:`GradientDescent`,
:class:`LBFGS` (``optax.lbfgs`` with its zoom line search), :class:`Newton` (dense, damped, with Armijo
backtracking; for small problems) and :class:`ClosedForm` (a user formula).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from bilevel._checks import ConvergenceError, OnFailure, check_on_failure, error_if

__all__ = [
    "default_tol",
    "SolverInfo",
    "InnerSolver",
    "OptaxSolver",
    "GradientDescent",
    "LBFGS",
    "Newton",
    "ClosedForm",
]


class SolverInfo(NamedTuple):
    """Diagnostics of an inner solve: steps taken, the final gradient norm, and whether it is at most
    the solver's tolerance (and finite): the convergence check :meth:`InnerSolver.checked_run` applies."""

    num_steps: jax.Array
    grad_norm: jax.Array
    converged: jax.Array


def default_tol(dtype) -> float:
    r"""The inner solvers' default gradient-norm tolerance :math:`\max(10^{-6}, \sqrt{\varepsilon})` for ``dtype``."""
    return max(1e-6, float(jnp.finfo(dtype).eps) ** 0.5)


def _check_positive(owner: str, name: str, value, *, allow_none: bool = False, upper: float | None = None) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = v > 0 and not np.isnan(v) and (upper is None or v < upper)
    if not ok:
        rng = f"in (0, {upper})" if upper is not None else "> 0"
        raise ValueError(f"{owner}: argument {name!r} must be a number {rng}{' or None' if allow_none else ''}, got {value!r}")


def _check_int(owner: str, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise ValueError(f"{owner}: argument {name!r} must be an int >= 1, got {value!r}")


def _grad_norm(loss, params, args):
    return optax.tree_utils.tree_norm(jax.grad(loss)(params, *args))


@dataclasses.dataclass(frozen=True)
class InnerSolver:
    """Base class: the stopping rule, the while-loop and the convergence check.

    Attributes:
      maxiter: maximal number of steps.
      tol: stop when the gradient norm is at most ``tol``; a solve ending above it has failed.
        ``None``: :func:`default_tol` of the parameters' dtype (1e-6 in float64, 3.5e-4 in float32).
      on_failure: what :meth:`checked_run` does with a failed solve (``"raise"``, ``"warn"``,
        ``"ignore"``).
    """

    maxiter: int = 500
    tol: float | None = None
    on_failure: OnFailure = "raise"

    def __post_init__(self):
        owner = type(self).__name__
        _check_int(owner, "maxiter", self.maxiter)
        _check_positive(owner, "tol", self.tol, allow_none=True)
        check_on_failure(self.on_failure)

    def resolved_tol(self, dtype) -> float:
        """The gradient-norm tolerance for parameters of ``dtype`` (``tol``, or :func:`default_tol`)."""
        return default_tol(dtype) if self.tol is None else float(self.tol)

    def init_state(self, loss: Callable, params: Any, *args: Any) -> Any:
        raise NotImplementedError

    def update(self, loss: Callable, params: Any, state: Any, *args: Any):
        raise NotImplementedError

    def run(self, loss: Callable, init: Any, *args: Any):
        state = self.init_state(loss, init, *args)
        dtype = jnp.result_type(*jax.tree_util.tree_leaves(init))
        tol = self.resolved_tol(dtype)
        inf = jnp.asarray(jnp.inf, dtype=dtype)

        def cond(carry):
            _, _, k, gnorm = carry
            return (k < self.maxiter) & (gnorm > tol)

        def body(carry):
            params, state, k, _ = carry
            params, state, gnorm = self.update(loss, params, state, *args)
            return params, state, k + 1, gnorm.astype(inf.dtype)

        params, _, k, loop_gnorm = jax.lax.while_loop(cond, body, (init, state, jnp.asarray(0), inf))
        final = _grad_norm(loss, params, args)
        # The loop's norm is measured one step before the end; report the better of the two (a NaN
        # final norm is kept: the minimum would hide it).
        gnorm = jnp.where(jnp.isnan(final), final, jnp.minimum(final, loop_gnorm))
        return params, SolverInfo(k, gnorm, gnorm <= tol)

    def checked_run(self, loss: Callable, init: Any, *args: Any):
        """:meth:`run`, then apply ``on_failure`` when the gradient norm is above ``tol`` or not finite."""
        params, info = self.run(loss, init, *args)
        tol = self.resolved_tol(jnp.result_type(*jax.tree_util.tree_leaves(init)))
        failed = jnp.logical_not(info.converged)
        params = error_if(
            params,
            failed,
            f"inner solve ({type(self).__name__}) did not converge: gradient norm {{gnorm:.3e}} > tol "
            f"{tol:.1e} after {{steps:.0f}} of {self.maxiter} steps (NaN means the iterates "
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
        if not isinstance(self.optimizer, optax.GradientTransformation):
            raise ValueError(
                f"OptaxSolver: argument 'optimizer' must be an optax GradientTransformation, got {self.optimizer!r}"
            )

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
        if not callable(self.learning_rate):
            _check_positive("GradientDescent", "learning_rate", self.learning_rate)
        if self.momentum is not None:
            ok = isinstance(self.momentum, (int, float, np.floating)) and not isinstance(self.momentum, bool)
            if not (ok and 0.0 <= float(self.momentum) < 1.0):
                raise ValueError(f"GradientDescent: argument 'momentum' must be None or in [0, 1), got {self.momentum!r}")
        object.__setattr__(self, "optimizer", optax.sgd(self.learning_rate, momentum=self.momentum))
        super().__post_init__()


@dataclasses.dataclass(frozen=True)
class LBFGS(InnerSolver):
    """Limited-memory BFGS with a zoom line search (``optax.lbfgs``; Nocedal & Wright 2006, Alg. 7.4)."""

    memory_size: int = 10

    def __post_init__(self):
        super().__post_init__()
        _check_int("LBFGS", "memory_size", self.memory_size)

    def _opt(self):
        return optax.lbfgs(memory_size=self.memory_size)

    def init_state(self, loss, params, *args):
        return self._opt().init(params)

    def update(self, loss, params, state, *args):
        dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))

        def fn(p):
            # In the parameters' dtype: float32 parameters with float64 data would otherwise give
            # optax's zoom line search float64 values and float32 steps (a crash in its lax.cond).
            return jnp.asarray(loss(p, *args), dtype)

        value, grad = optax.value_and_grad_from_state(fn)(params, state=state)
        updates, state = self._opt().update(
            grad, state, params, value=value, grad=grad, value_fn=fn
        )
        return optax.apply_updates(params, updates), state, optax.tree_utils.tree_norm(grad)


@dataclasses.dataclass(frozen=True)
class Newton(InnerSolver):
    r"""Damped Newton with Armijo backtracking, on the dense Hessian (small problems only).

    Step :math:`d = -(\nabla^2\mathcal L + \rho I)^{-1}\nabla\mathcal L` (:math:`\rho` = ``ridge``), then the
    largest :math:`t \in \{1, \beta, \beta^2, \dots\}` (:math:`\beta` = ``backtrack``, at most
    ``max_backtracks`` halvings) with
    :math:`\mathcal L(x + t d) \le \mathcal L(x) + c\, t\, \nabla\mathcal L^\top d` (:math:`c` = ``armijo``).
    Quadratic convergence near the optimum of a strongly convex loss; cost :math:`O(p^3)` per step for
    :math:`p` parameters.

    ``max_step`` (a trust region): directions longer than it (Euclidean) are scaled down to it. Where the
    loss is nearly flat in some direction (a smoothed hinge with every margin saturated, at ``w = 0``)
    the Hessian is nearly singular there and the raw Newton step is astronomically long; more halvings
    than ``max_backtracks`` would then be needed. When the backtracking is exhausted without sufficient
    decrease no step is taken (the solve then reports its gradient norm instead of a wild point).
    """

    maxiter: int = 50
    ridge: float = 0.0
    backtrack: float = 0.5
    armijo: float = 1e-4
    max_backtracks: int = 30
    max_step: float | None = None

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.ridge, bool) or not isinstance(self.ridge, (int, float, np.floating)) or not (
            0.0 <= float(self.ridge) < np.inf
        ):
            raise ValueError(f"Newton: argument 'ridge' must be a finite number >= 0, got {self.ridge!r}")
        _check_positive("Newton", "backtrack", self.backtrack, upper=1.0)
        _check_positive("Newton", "armijo", self.armijo, upper=1.0)
        _check_int("Newton", "max_backtracks", self.max_backtracks)
        if self.max_step is not None:
            _check_positive("Newton", "max_step", self.max_step)

    def init_state(self, loss, params, *args):
        return None

    def update(self, loss, params, state, *args):
        flat, unravel = ravel_pytree(params)

        def f(z):
            return loss(unravel(z), *args)

        value, g = jax.value_and_grad(f)(flat)
        hess = jax.hessian(f)(flat)
        hess = hess + self.ridge * jnp.eye(flat.size, dtype=flat.dtype)
        direction = -jnp.linalg.solve(hess, g)
        # Fall back to steepest descent if the Newton direction is not a finite descent direction
        # (singular or indefinite Hessian).
        slope = jnp.vdot(g, direction)
        ok = jnp.isfinite(slope) & (slope < 0) & jnp.all(jnp.isfinite(direction))
        direction = jnp.where(ok, direction, -g)
        if self.max_step is not None:
            dn = jnp.linalg.norm(direction)
            direction = direction * jnp.minimum(1.0, self.max_step / jnp.maximum(dn, jnp.finfo(flat.dtype).tiny))
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

        t, i = jax.lax.while_loop(cond, body, (jnp.asarray(1.0, flat.dtype), 0))
        if self.max_step is not None:  # exhausted without sufficient decrease: stay (see the docstring)
            t = jnp.where((i >= self.max_backtracks) & ~(f(flat + t * direction) <= value + slack), 0.0, t)
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

    def _formula(self, init, args):
        params = self.fn(*args)
        if init is not None:
            same = jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(init) and all(
                jnp.shape(p) == jnp.shape(i)
                for p, i in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(init))
            )
            if not same:
                raise ValueError(
                    "ClosedForm: argument 'fn' must return params laid out like init: got "
                    f"{jax.tree_util.tree_structure(params)} with shapes "
                    f"{[jnp.shape(p) for p in jax.tree_util.tree_leaves(params)]} for init "
                    f"{[jnp.shape(i) for i in jax.tree_util.tree_leaves(init)]}"
                )
            # in init's dtypes, like every other solver
            params = jax.tree_util.tree_map(lambda p, i: jnp.asarray(p, jnp.result_type(i)), params, init)
        return params

    def update(self, loss, params, state, *args):
        return self._formula(params, args), None, _grad_norm(loss, params, args)

    def run(self, loss, init, *args):
        params = self._formula(init, args)
        gnorm = _grad_norm(loss, params, args)
        tol = self.resolved_tol(jnp.result_type(*jax.tree_util.tree_leaves(init)))
        return params, SolverInfo(jnp.asarray(1), gnorm, gnorm <= tol)
