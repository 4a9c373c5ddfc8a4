"""bilevel: differentiable bilevel optimization in JAX (knows nothing of poisoning).

Public API:

- :func:`minimize` with hypergradient strategies :class:`Implicit`, :class:`Direct` (and the unrolled
  family in :mod:`bilevel.unroll`), inner solvers in :mod:`bilevel.solvers`;
- :func:`root_solve`, :func:`fixed_point_solve`, :func:`custom_root`, :func:`custom_fixed_point`:
  implicit differentiation as a ``jax.custom_jvp`` (forward and reverse mode, any order);
- adjoint linear solvers :mod:`bilevel.linear_solve` (one signature, the solver is an argument);
- second-order products :mod:`bilevel.hvp`; the differentiable QP/KKT map :mod:`bilevel.kkt`;
- influence functions :mod:`bilevel.influence`; inner problems :mod:`bilevel.problems`.
"""

from bilevel import _xla_workarounds

_xla_workarounds.apply()  # before any computation: see bilevel/_xla_workarounds.py

from bilevel._checks import BilevelError, ConvergenceError, NonFiniteError  # noqa: E402
from bilevel.hvp import gauss_newton_vp, hessian_matvec, hvp, mixed_jvp, mixed_vjp
from bilevel.implicit import (
    ImplicitConfig,
    custom_fixed_point,
    custom_root,
    fixed_point_solve,
    root_solve,
)
from bilevel.linear_solve import (
    SOLVERS,
    LinearSolution,
    get_solver,
    solve_bicgstab,
    solve_cg,
    solve_cholesky,
    solve_gmres,
    solve_lissa,
    solve_lu,
    solve_neumann,
    solve_normal_cg,
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
