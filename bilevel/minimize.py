r"""``minimize(loss, init, *args, solver=, method=)``: the everyday entry point of the bilevel core.

The inner problem is a plain loss over pytrees,

.. math::  x^\star(\theta) = \arg\min_x \mathcal L(x, \theta), \qquad \theta = \texttt{args},

and the returned :math:`x^\star` is differentiable in ``args`` (and in arrays ``loss`` closes over).
*How* derivatives flow is a strategy object, the ``method``:

- :class:`Implicit` (default): the implicit function theorem on the stationarity condition
  :math:`\nabla_x \mathcal L(x^\star, \theta) = 0`, i.e.
  :math:`\mathrm d x^\star = -H^{-1}\,\partial_\theta \nabla_x \mathcal L\,\mathrm d\theta` with
  :math:`H = \nabla^2_{xx}\mathcal L`; the adjoint system is solved by any solver of
  :mod:`bilevel.linear_solve`. Exact at an exact minimizer; cost independent of the number of steps.
- :class:`Direct`: plain autodiff through whatever the solver computes (for closed forms such as
  ridge regression's normal equations).
- Unrolled, truncated and back-gradient strategies (:mod:`bilevel.unroll`) differentiate through the
  solver's steps and take the same place in the signature.

A strategy is any object with ``solve(loss, solver, init, args) -> params``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp

from bilevel._checks import validate_finite
from bilevel.implicit import ImplicitConfig, _solve
from bilevel.solvers import LBFGS, InnerSolver

__all__ = ["HypergradientMethod", "Implicit", "Direct", "minimize"]


class HypergradientMethod(Protocol):
    def solve(self, loss: Callable, solver: InnerSolver, init: Any, args: tuple) -> Any: ...


@dataclasses.dataclass(frozen=True)
class Implicit(ImplicitConfig):
    r"""Implicit differentiation of the stationarity condition :math:`\nabla_x\mathcal L(x, \theta) = 0`.

    The fields are those of :class:`bilevel.implicit.ImplicitConfig` (``linear_solver``,
    ``on_failure``, ...): ``Implicit(linear_solver=CG(ridge=1e-3))``. The Hessian is symmetric, so
    ``symmetric`` is always set to True and the same adjoint solve serves forward and reverse mode;
    the default adjoint solver is therefore ``CG()`` (the Hessian of a convex loss is positive
    semi-definite). Use ``GMRES()`` or ``LU()`` for indefinite Hessians (non-convex inner problems) and
    a solver with ``ridge > 0`` for nearly singular ones (damping, as in Koh & Liang 2017).

    The inner solver checks its own convergence (its ``tol`` and ``on_failure``), so ``root_tol`` is not
    used here: it belongs to :func:`bilevel.root_solve` and the decorators.
    """

    def __post_init__(self):
        object.__setattr__(self, "symmetric", True)  # a Hessian
        super().__post_init__()

    def solve(self, loss, solver, init, args):
        def stationarity(x, *a):
            return jax.grad(loss)(x, *a)

        def run(x0, *a):
            return solver.checked_run(loss, x0, *a)[0]

        return _solve(stationarity, run, init, args, {}, self, has_aux=False, check_root=False, root_like_init=True)


@dataclasses.dataclass(frozen=True)
class Direct:
    """Differentiate straight through the solver's computation (closed forms, or short loops).

    With an iterative solver this is reverse mode through ``lax.while_loop``, which JAX does not
    support: use :class:`bilevel.unroll.Unrolled` for iterative solvers instead.
    """

    def solve(self, loss, solver, init, args):
        return solver.checked_run(loss, init, *args)[0]


def minimize(
    loss: Callable,
    init: Any,
    *args: Any,
    solver: InnerSolver | None = None,
    method: HypergradientMethod | None = None,
):
    r"""Minimize ``loss(params, *args)`` over ``params`` from ``init``; differentiable in ``args``.

    Args:
      loss: scalar loss ``loss(params, *args)``, params any pytree of float arrays.
      init: initial params. Under :class:`Implicit` it receives no derivative (the minimizer does
        not depend on it); the unrolled strategies differentiate the trajectory from ``init`` too.
      *args: hyperparameters and data (pytrees of arrays); derivatives flow to all of them.
      solver: an inner solver of :mod:`bilevel.solvers`; default ``LBFGS()`` (500 steps, gradient-norm
        tolerance following the dtype: 1e-6 in float64, 3.5e-4 in float32).
        A solve that does not reach the solver's ``tol`` raises :class:`~bilevel.ConvergenceError`
        (or warns; see the solver's ``on_failure``).
      method: how derivatives flow; default :class:`Implicit`.

    Returns:
      The minimizer, as a pytree like ``init``.

    Example::

        def ridge(w, lam, X, y):
            return 0.5 * jnp.mean((X @ w - y) ** 2) + 0.5 * jnp.sum(lam * w**2)

        def val_loss(lam):
            w = minimize(ridge, jnp.zeros(d), lam, X_tr, y_tr)
            return jnp.mean((X_val @ w - y_val) ** 2)

        hypergrad = jax.grad(val_loss)(jnp.full(d, 0.1))
    """
    if not callable(loss):
        raise TypeError(f"argument 'loss' must be callable, got {type(loss).__name__}")
    leaves = jax.tree_util.tree_leaves(init)
    if not leaves:
        raise ValueError("argument 'init' must be a pytree with at least one array leaf")
    for leaf in leaves:
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise ValueError(
                f"argument 'init' must hold real floating-point arrays, got a leaf of dtype {jnp.result_type(leaf)}"
            )
    validate_finite("init", init)
    for i, a in enumerate(args):
        validate_finite(f"args[{i}]", a)
    try:
        value = jax.eval_shape(loss, init, *args)
    except (TypeError, ValueError) as err:
        raise type(err)(f"argument 'loss' could not be evaluated as loss(init, *args): {err}") from err
    if not (isinstance(value, jax.ShapeDtypeStruct) and value.shape == () and jnp.issubdtype(value.dtype, jnp.floating)):
        raise ValueError(f"argument 'loss' must return a real scalar, got {value}")
    solver = solver if solver is not None else LBFGS()
    if not isinstance(solver, InnerSolver):
        raise TypeError(f"argument 'solver' must be a bilevel.solvers.InnerSolver, got {type(solver).__name__}")
    method = method if method is not None else Implicit()
    if not hasattr(method, "solve"):
        raise TypeError(f"argument 'method' must have solve(loss, solver, init, args), got {method!r}")
    return method.solve(loss, solver, init, tuple(args))
