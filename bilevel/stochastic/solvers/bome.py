r"""BOME (Liu, Ye, Wright, Stone & Liu, "BOME! Bilevel Optimization Made Easy: A Simple First-Order
Approach", NeurIPS 2022).

First order, on the value-function constrained problem
:math:`\min_{x,z} f(z, x)` s.t. :math:`q(z, x) = g(z, x) - g^\star(x) \le 0`, with
:math:`g^\star(x) \approx g(\hat z_K, x)`, :math:`\hat z_K` = ``n_inner_steps`` gradient steps on
:math:`g(\cdot, x)` from :math:`z`. Each iteration takes the dynamic-barrier step

.. math::

    \nabla q &= \big(\nabla_z g(z, x),\ \nabla_x g(z, x) - \nabla_x g(\hat z_K, x)\big), \qquad
    \phi = \eta\,\|\nabla q\|^2 \ \ (\text{or } \eta\, q) \\
    \lambda &= \max\big(\phi - \langle \nabla f, \nabla q\rangle, 0\big) / \|\nabla q\|^2, \qquad
    (z, x) \leftarrow (z, x) - (\alpha, \beta)\odot(\nabla f + \lambda \nabla q).

Constant steps (benchopt: 0.1, :math:`\eta = 0.5`, :math:`K = 10`). Deterministic in the paper and in
benchopt (``batch_size=None``, the default); a batch size makes every gradient a mini-batch one (no
theory then). Converges to a KKT point of the constrained problem: on a strongly convex inner
problem to :math:`z^\star(x)` and a stationary :math:`x`, up to the error of :math:`\hat z_K`
(Thm. 3.3; the gap is :math:`O(\kappa^{-K})`-small for gradient descent). ``aux["lmbda"]`` is the last :math:`\lambda`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from bilevel.stochastic import oracles as O
from bilevel.stochastic.sampling import GRAD_INNER, GRAD_OUTER, draw_inner, draw_outer, tally
from bilevel.stochastic.solvers.base import StochasticSolver

__all__ = ["BOME"]

PHI_CHOICES = ("grad_norm", "value")


@dataclasses.dataclass(frozen=True)
class BOME(StochasticSolver):
    """BOME: dynamic-barrier first-order steps on the value-function constraint."""

    step_size: float = 0.1
    outer_ratio: float = 1.0
    eta: float = 0.5
    n_inner_steps: int = 10
    choice_phi: str = "grad_norm"
    batch_size: int | None = None
    sampling: str = "shuffle"

    _positive = ("step_size", "outer_ratio", "eta")
    _counts = ("n_inner_steps",)

    def __post_init__(self):
        super().__post_init__()
        if self.choice_phi not in PHI_CHOICES:
            raise ValueError(f"argument 'choice_phi' of BOME must be one of {PHI_CHOICES}, got {self.choice_phi!r}")

    def _init_aux(self, problem, inner0, outer0, tape):
        return {"lmbda": jnp.zeros((), jnp.float32)}, tape

    def step(self, problem, state):
        bt, z, x = self.batching, state.inner, state.outer
        lr = self.step_size

        def inner_gd(_, carry):
            zk, tape = carry
            batch, _, tape = draw_inner(problem, bt, tape)
            return O.taxpy(-lr, O.grad_inner(problem, zk, x, batch), zk), tally(tape, bt, GRAD_INNER)

        z_hat, tape = jax.lax.fori_loop(0, self.n_inner_steps, inner_gd, (z, state.tape))
        batch, _, tape = draw_inner(problem, bt, tape)
        outer_batch, _, tape = draw_outer(problem, bt, tape)
        fz, fx = O.grads_outer(problem, z, x, outer_batch)
        qz, qx = jax.grad(problem.inner_loss, argnums=(0, 1))(z, x, batch)
        qx = O.tsub(qx, O.grad_inner_outer_var(problem, z_hat, x, batch))
        tape = tally(tally(tape, bt, GRAD_INNER, 2), bt, GRAD_OUTER)
        sq = O.tdot(qz, qz) + O.tdot(qx, qx)
        if self.choice_phi == "grad_norm":
            phi = sq
        else:
            phi = problem.inner_loss(z, x, batch) - problem.inner_loss(z_hat, x, batch)
        phi = self.eta * phi
        tiny = jnp.finfo(sq.dtype).tiny
        lam = jnp.maximum(phi - O.tdot(fz, qz) - O.tdot(fx, qx), 0.0) / jnp.maximum(sq, tiny)
        z = O.taxpy(-lr, O.taxpy(lam, qz, fz), z)
        x = O.taxpy(-lr / self.outer_ratio, O.taxpy(lam, qx, fx), x)
        return self._next(state, z, x, {"lmbda": lam.astype(jnp.float32)}, tape)
