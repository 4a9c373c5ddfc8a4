"""bilevel: differentiable bilevel optimization in JAX (knows nothing of poisoning).

Public API:

- :func:`minimize` with hypergradient strategies :class:`Implicit`, :class:`Direct` (and the unrolled
  family in :mod:`bilevel.unroll`), inner solvers in :mod:`bilevel.solvers`;
- :func:`root_solve`, :func:`fixed_point_solve`, :func:`custom_root`, :func:`custom_fixed_point`:
  implicit differentiation as a ``jax.custom_jvp`` (forward and reverse mode, any order);
- adjoint linear solvers :mod:`bilevel.linear_solve`: frozen objects (``CG``, ``GMRES``, ``Cholesky``,
  ``LiSSA`` ...) carrying their settings, one call signature, passed as ``linear_solver=``;
- second-order products :mod:`bilevel.hvp`; the differentiable QP/KKT map :mod:`bilevel.kkt`;
- influence functions :mod:`bilevel.influence`; inner problems :mod:`bilevel.problems`.
"""

from bilevel import _xla_workarounds

_xla_workarounds.apply()  # before any computation: see bilevel/_xla_workarounds.py

from bilevel._checks import BilevelError, ConvergenceError, NonFiniteError, typed_errors  # noqa: E402
from bilevel.hvp import gauss_newton_vp, hessian_matvec, hvp, mixed_jvp, mixed_vjp
from bilevel.implicit import (
    ImplicitConfig,
    custom_fixed_point,
    custom_root,
    fixed_point_solve,
    root_solve,
)
from bilevel.linear_solve import (
    CG,
    GMRES,
    LU,
    SOLVERS,
    BiCGStab,
    Cholesky,
    FunctionSolver,
    LinearSolution,
    LinearSolver,
    LiSSA,
    Neumann,
    NormalCG,
    as_linear_solver,
)
from bilevel.minimize import Direct, HypergradientMethod, Implicit, minimize
from bilevel.solvers import (
    LBFGS,
    ClosedForm,
    GradientDescent,
    InnerSolver,
    Newton,
    OptaxSolver,
    SolverInfo,
)

from bilevel.kkt import QPSolution, kkt_residual, solve_qp
from bilevel.influence import (
    compute_s_test,
    influence_loss,
    influence_params,
    influence_perturbation,
    inverse_hvp,
    predicted_loo_change,
    training_objective,
)
from bilevel.unroll import BackGradient, MiniBatches, Truncated, Unrolled, back_gradient_solve, unrolled_solve
from bilevel.stackelberg import (
    StackelbergConfig,
    StackelbergResult,
    StackelbergSolver,
    solve_gradient_play,
    solve_stackelberg,
    solve_stackelberg_batched,
)
from bilevel import problems  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    # errors
    "BilevelError",
    "ConvergenceError",
    "NonFiniteError",
    "typed_errors",
    # the everyday entry point and its strategies
    "minimize",
    "HypergradientMethod",
    "Implicit",
    "Direct",
    "Unrolled",
    "Truncated",
    "BackGradient",
    "MiniBatches",
    "unrolled_solve",
    "back_gradient_solve",
    # inner solvers
    "InnerSolver",
    "SolverInfo",
    "LBFGS",
    "Newton",
    "GradientDescent",
    "OptaxSolver",
    "ClosedForm",
    # implicit differentiation of roots and fixed points
    "ImplicitConfig",
    "root_solve",
    "fixed_point_solve",
    "custom_root",
    "custom_fixed_point",
    # linear solvers
    "LinearSolver",
    "LinearSolution",
    "CG",
    "NormalCG",
    "GMRES",
    "BiCGStab",
    "Cholesky",
    "LU",
    "Neumann",
    "LiSSA",
    "FunctionSolver",
    "SOLVERS",
    "as_linear_solver",
    # second-order products
    "hvp",
    "hessian_matvec",
    "mixed_jvp",
    "mixed_vjp",
    "gauss_newton_vp",
    # QP / KKT
    "QPSolution",
    "solve_qp",
    "kkt_residual",
    # influence functions
    "training_objective",
    "inverse_hvp",
    "compute_s_test",
    "influence_params",
    "influence_loss",
    "influence_perturbation",
    "predicted_loo_change",
    # Stackelberg games
    "StackelbergConfig",
    "StackelbergResult",
    "StackelbergSolver",
    "solve_stackelberg",
    "solve_stackelberg_batched",
    "solve_gradient_play",
    # inner problems
    "problems",
]
