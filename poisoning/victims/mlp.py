r"""A one-hidden-layer MLP victim (Muñoz-González et al. 2017's 10 tanh units, softmax output).

:math:`\frac1{\sum s}\sum_i s_i\,\mathrm{CE}(y_i, \mathrm{MLP}_\theta(x_i)) + \frac{\text{reg}}2\|W\|^2`
(kernels only; :func:`bilevel.problems.mlp_loss`), started from a fixed flax initialization. The loss
is non-convex: the implicit derivative uses GMRES with a small damping; ``method`` may instead unroll
or reverse a fixed number of gradient steps (:mod:`bilevel.unroll`).
"""

from __future__ import annotations

import functools

import jax
import optax

from bilevel import GMRES, Implicit
from bilevel.problems import mlp_apply, mlp_init, mlp_loss
from bilevel.solvers import LBFGS, InnerSolver
from poisoning.victims.base import Victim
from poisoning.victims.linear import _default_tol, smooth_victim

__all__ = ["mlp"]


@functools.lru_cache(maxsize=None)
def mlp(n_classes: int = 10, hidden: int = 10, reg: float = 1e-3, *, seed: int = 0,
        solver: InnerSolver | None = None, method=None) -> Victim:
    """The MLP victim (labels ``0..K-1``; binary problems use ``n_classes=2``)."""
    K, h, reg = int(n_classes), int(hidden), float(reg)

    def loss(params, y, X, sw):
        return mlp_loss(params, reg, X, y, sw)

    def init(n, d, dtype):
        return mlp_init(jax.random.PRNGKey(seed), int(d), h, K, dtype=dtype)

    def per_example(params, X, y):
        return optax.losses.softmax_cross_entropy_with_integer_labels(mlp_apply(params, X), y)

    solver = LBFGS(maxiter=1000, tol=_default_tol(1e-7), on_failure="ignore") if solver is None else solver
    method = Implicit(linear_solver=GMRES(ridge=1e-6), on_failure="ignore") if method is None else method
    return smooth_victim(f"mlp(h={h}, K={K}, reg={reg:g})", "multiclass", K, loss, per_example,
                         lambda p, X: mlp_apply(p, X), init, solver=solver, method=method)
