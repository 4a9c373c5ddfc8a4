r"""Stochastic hypergradient estimators: warm-started inner iterates, adjoint solvers, variance reduction.

The hypergradient of :math:`F(x) = f(z^\star(x), x)` is

.. math::

    \nabla F(x) = \nabla_x f(z^\star, x) - \nabla^2_{xz} g(z^\star, x)\, v^\star, \qquad
    v^\star = \big[\nabla^2_{zz} g(z^\star, x)\big]^{-1} \nabla_z f(z^\star, x),

where :math:`v^\star` minimizes the *adjoint quadratic* :math:`\tfrac12 v^\top H v - b^\top v`
(:math:`H = \nabla^2_{zz} g`, :math:`b = \nabla_z f`). Every estimator below replaces the exact
quantities by mini-batch oracles; with i.i.d. batches (sampling ``"block"`` or ``"uniform"``) their
expectations are known in closed form, which :mod:`tests.bilevel.stochastic` checks by averaging
many draws. Write :math:`\eta` for the step and :math:`K` for the number of steps.

- :func:`sgd_inner` (warm start): :math:`z \leftarrow z - \eta \nabla_z g(z, x; \xi_k)`, :math:`K` times.
- :func:`neumann_adjoint` (StocBiO, Ji et al. 2021, Alg. 3): :math:`v_0 = b`,
  :math:`v_{k+1} = (I - \eta H_{\xi_k}) v_k`, returns :math:`\eta \sum_{k=0}^{K} v_k`. Expectation
  :math:`\eta\sum_{k=0}^{K}(I-\eta H)^k b = H^{-1}(I - (I-\eta H)^{K+1})\, b`: bias
  :math:`-(I-\eta H)^{K+1} H^{-1} b`, geometrically small for :math:`\eta < 1/L`.
- :func:`random_neumann_adjoint` (Ghadimi & Wang 2018, used by TTSA): draw
  :math:`p \sim \mathcal U\{0, \dots, K-1\}`, return :math:`K\eta\prod_{k<p}(I - \eta H_{\xi_k})\, b`.
  Expectation :math:`\eta\sum_{k=0}^{K-1}(I-\eta H)^k b`, bias :math:`-(I-\eta H)^K H^{-1} b`; one
  HVP per step on average instead of :math:`K`, at the price of a larger variance.
- :func:`sgd_adjoint` (AmIGO, Arbel & Mairal 2022; warm-started): :math:`v \leftarrow v - \eta(H_{\xi_k} v - b)`.
  Expectation :math:`v^\star + (I-\eta H)^K (v_0 - v^\star)`: unbiased in the limit, and exactly
  unbiased from a warm start :math:`v_0 = v^\star`.
- :func:`cg_adjoint`: :math:`K` conjugate-gradient steps on *one* mini-batch Hessian. Its expectation
  is :math:`\mathbb E_\xi[H_\xi^{-1}]\, b \ne H^{-1} b` (Jensen: a documented, non-vanishing bias,
  positive semi-definite in the Loewner order since :math:`H \mapsto H^{-1}` is operator convex).
- :func:`implicit_direction`: :math:`\nabla_x f(z, x; \zeta) - \nabla^2_{xz} g(z, x; \xi)\, v` with
  independent batches: unbiased for the full-batch direction at fixed :math:`(z, x, v)` when
  :math:`v` is independent of :math:`\xi` and :math:`\zeta`.
- Variance reduction: :func:`saga_update` (SAGA memory per block, SABA), :func:`storm_update`
  (recursive momentum, MRBO and FSLA; Cutkosky & Orabona 2019), :func:`spider_update`
  (SARAH/SPIDER recursive differences, VRBO; Nguyen et al. 2017, Fang et al. 2018).

All functions are pure, take and return the sampling :class:`~bilevel.stochastic.sampling.Tape`
(which also counts the oracle calls) and work on pytrees.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bilevel.stochastic import oracles as O
from bilevel.stochastic.sampling import CROSS, GRAD_INNER, GRAD_OUTER, HVP, Batching, Tape, tally, draw_inner, draw_outer

__all__ = [
    "sgd_inner",
    "neumann_adjoint",
    "neumann_adjoint_pair",
    "random_neumann_adjoint",
    "sgd_adjoint",
    "cg_adjoint",
    "conjugate_gradient",
    "implicit_direction",
    "hypergradient_estimate",
    "saga_update",
    "storm_update",
    "spider_update",
    "ADJOINT_METHODS",
]

ADJOINT_METHODS = ("neumann", "random_neumann", "sgd", "cg")


def sgd_inner(problem, batching: Batching, z, x, tape: Tape, step, n_steps: int):
    r""":math:`K` = ``n_steps`` SGD steps on :math:`g(\cdot, x)` from ``z``: returns ``(z, tape)``."""

    def body(_, carry):
        z, tape = carry
        batch, _, tape = draw_inner(problem, batching, tape)
        return O.taxpy(-step, O.grad_inner(problem, z, x, batch), z), tape

    z, tape = jax.lax.fori_loop(0, n_steps, body, (z, tape))
    return z, tally(tape, batching, GRAD_INNER, n_steps)


def neumann_adjoint(problem, batching: Batching, z, x, b, tape: Tape, step, n_steps: int):
    r"""StocBiO's Neumann series :math:`\eta\sum_{k=0}^{K}\prod_{j<k}(I-\eta H_{\xi_j})\, b`: ``(v, tape)``."""

    def body(_, carry):
        v, s, tape = carry
        batch, _, tape = draw_inner(problem, batching, tape)
        v = O.taxpy(-step, O.hvp(problem, z, x, v, batch), v)
        return v, O.tadd(s, v), tape

    _, s, tape = jax.lax.fori_loop(0, n_steps, body, (b, b, tape))
    return O.tscale(step, s), tally(tape, batching, HVP, n_steps)


def neumann_adjoint_pair(problem, batching: Batching, z, x, b, z_old, x_old, b_old, tape: Tape, step, n_steps: int):
    r""":func:`neumann_adjoint` at two points with the *same* batches (MRBO, VRBO: the two terms of a
    recursive-difference estimator must see the same noise): ``(v, v_old, tape)``."""

    def body(_, carry):
        v, s, vo, so, tape = carry
        batch, _, tape = draw_inner(problem, batching, tape)
        v = O.taxpy(-step, O.hvp(problem, z, x, v, batch), v)
        vo = O.taxpy(-step, O.hvp(problem, z_old, x_old, vo, batch), vo)
        return v, O.tadd(s, v), vo, O.tadd(so, vo), tape

    _, s, _, so, tape = jax.lax.fori_loop(0, n_steps, body, (b, b, b_old, b_old, tape))
    return O.tscale(step, s), O.tscale(step, so), tally(tape, batching, HVP, 2 * n_steps)


def random_neumann_adjoint(problem, batching: Batching, z, x, b, tape: Tape, step, n_steps: int, key):
    r"""Ghadimi & Wang's randomly truncated Neumann series :math:`K\eta\prod_{k<p}(I-\eta H_{\xi_k})\, b`,
    :math:`p\sim\mathcal U\{0..K-1\}`: ``(v, tape)``."""
    p = jax.random.randint(key, (), 0, n_steps)

    def body(_, carry):
        v, tape = carry
        batch, _, tape = draw_inner(problem, batching, tape)
        return O.taxpy(-step, O.hvp(problem, z, x, v, batch), v), tape

    v, tape = jax.lax.fori_loop(0, p, body, (b, tape))
    return O.tscale(n_steps * step, v), tally(tape, batching, HVP, p)


def sgd_adjoint(problem, batching: Batching, z, x, v, b, tape: Tape, step, n_steps: int):
    r"""AmIGO's warm-started SGD on :math:`\tfrac12 v^\top H v - b^\top v`: ``(v, tape)``."""

    def body(_, carry):
        v, tape = carry
        batch, _, tape = draw_inner(problem, batching, tape)
        grad = O.tsub(O.hvp(problem, z, x, v, batch), b)
        return O.taxpy(-step, grad, v), tape

    v, tape = jax.lax.fori_loop(0, n_steps, body, (v, tape))
    return v, tally(tape, batching, HVP, n_steps)


def conjugate_gradient(matvec, b, x0, n_steps: int, tol: float = 0.0):
    r"""At most ``n_steps`` CG iterations on :math:`Av = b` (:math:`A` symmetric positive definite) from
    ``x0``, stopping once :math:`\|r\| \le \texttt{tol}\,\|b\|`; a zero curvature :math:`p^\top A p`
    stops the iteration instead of dividing by zero. Pytrees. Returns ``(v, iterations)``."""
    r0 = O.tsub(b, matvec(x0))
    rs0 = O.tdot(r0, r0)
    stop = (tol * O.tnorm(b)) ** 2

    def cond(c):
        _, _, _, rs, k, ok = c
        return (k < n_steps) & (rs > stop) & ok

    def body(c):
        v, r, p, rs, k, _ = c
        ap = matvec(p)
        pap = O.tdot(p, ap)
        ok = pap > 0
        alpha = jnp.where(ok, rs / jnp.where(ok, pap, 1.0), 0.0)
        v = O.taxpy(alpha, p, v)
        r = O.taxpy(-alpha, ap, r)
        rs_new = O.tdot(r, r)
        beta = jnp.where(rs > 0, rs_new / jnp.where(rs > 0, rs, 1.0), 0.0)
        return v, r, O.taxpy(beta, p, r), rs_new, k + 1, ok

    v, _, _, _, k, _ = jax.lax.while_loop(cond, body, (x0, r0, r0, rs0, jnp.zeros((), jnp.int32), jnp.asarray(True)))
    return v, k


def cg_adjoint(problem, batching: Batching, z, x, b, tape: Tape, n_steps: int, v0=None):
    r"""``n_steps`` conjugate-gradient steps on one mini-batch Hessian :math:`H_\xi v = b`: ``(v, tape)``.

    Biased: :math:`\mathbb E[v] = \mathbb E_\xi[H_\xi^{-1}]\,b` once CG has converged (see module doc).
    """
    batch, _, tape = draw_inner(problem, batching, tape)
    v0 = O.tzeros(b) if v0 is None else v0
    v, k = conjugate_gradient(lambda u: O.hvp(problem, z, x, u, batch), b, v0, n_steps)
    return v, tally(tape, batching, HVP, k + 1)


def implicit_direction(problem, batching: Batching, z, x, v, tape: Tape, outer_batch=None):
    r""":math:`\nabla_x f(z, x; \zeta) - \nabla^2_{xz} g(z, x; \xi)\, v`, fresh :math:`\xi` (and :math:`\zeta`
    unless ``outer_batch`` is given): ``(direction, tape)``."""
    if outer_batch is None:
        outer_batch, _, tape = draw_outer(problem, batching, tape)
        tape = tally(tape, batching, GRAD_OUTER)
    _, gx = O.grads_outer(problem, z, x, outer_batch)
    batch, _, tape = draw_inner(problem, batching, tape)
    return O.tsub(gx, O.cross(problem, z, x, v, batch)), tally(tape, batching, CROSS)


def hypergradient_estimate(problem, batching: Batching, z, x, tape: Tape, *, method: str = "neumann",
                           step=0.1, n_steps: int = 10, v0=None, key=None):
    r"""One stochastic hypergradient at ``(z, x)``: outer batch :math:`\zeta` gives
    :math:`b = \nabla_z f` and :math:`\nabla_x f`, the adjoint :math:`v \approx H^{-1} b` by ``method``
    (one of :data:`ADJOINT_METHODS`), then :math:`\nabla_x f - \nabla^2_{xz}g(\xi)\,v` with a fresh
    :math:`\xi`. Returns ``(estimate, v, tape)``. ``v0`` warm-starts ``"sgd"`` and ``"cg"``; ``key``
    drives ``"random_neumann"``.
    """
    if method not in ADJOINT_METHODS:
        raise ValueError(f"argument 'method' must be one of {ADJOINT_METHODS}, got {method!r}")
    outer_batch, _, tape = draw_outer(problem, batching, tape)
    tape = tally(tape, batching, GRAD_OUTER)
    gz, _ = O.grads_outer(problem, z, x, outer_batch)
    if method == "neumann":
        v, tape = neumann_adjoint(problem, batching, z, x, gz, tape, step, n_steps)
    elif method == "random_neumann":
        if key is None:
            raise ValueError("argument 'key' is required for method='random_neumann'")
        v, tape = random_neumann_adjoint(problem, batching, z, x, gz, tape, step, n_steps, key)
    elif method == "sgd":
        v, tape = sgd_adjoint(problem, batching, z, x, O.tzeros(gz) if v0 is None else v0, gz, tape, step, n_steps)
    else:
        v, tape = cg_adjoint(problem, batching, z, x, gz, tape, n_steps, v0)
    d, tape = implicit_direction(problem, batching, z, x, v, tape, outer_batch=outer_batch)
    return d, v, tape


# ------------------------------------------------------------------------------------------------
# variance reduction


def saga_update(memory, table_sum, new, block, weight):
    r"""SAGA (Defazio et al. 2014) over blocks: returns ``(direction, memory, table_sum)``.

    ``memory`` holds the last value :math:`m_j` seen for each block :math:`j` (leading axis = blocks),
    ``table_sum`` their weighted average :math:`\bar m = \sum_j w_j m_j`. For the drawn block :math:`j`:
    direction :math:`= g_j - m_j + \bar m` (unbiased for :math:`\sum_j w_j g_j` when :math:`j` is drawn
    with probability :math:`w_j`), then :math:`\bar m \leftarrow \bar m + w_j (g_j - m_j)`,
    :math:`m_j \leftarrow g_j`.
    """
    old = jax.tree_util.tree_map(lambda m: m[block], memory)
    diff = O.tsub(new, old)
    direction = O.tadd(diff, table_sum)
    table_sum = O.taxpy(weight, diff, table_sum)
    memory = jax.tree_util.tree_map(lambda m, g: m.at[block].set(g), memory, new)
    return direction, memory, table_sum


def storm_update(d, new, old, eta):
    r"""STORM recursive momentum: :math:`d \leftarrow g(\theta_t;\xi) + (1-\eta)\,(d - g(\theta_{t-1};\xi))`,
    both gradients on the *same* batch. Biased for :math:`\eta < 1` (the bias is what the correction
    term keeps small); :math:`\eta = 1` is plain SGD."""
    return jax.tree_util.tree_map(lambda dd, g, go: (g + (1 - eta) * (dd - go)).astype(dd.dtype), d, new, old)


def spider_update(d, new, old):
    r"""SARAH/SPIDER: :math:`d \leftarrow d + g(\theta_t;\xi) - g(\theta_{t-1};\xi)` on the same batch;
    restarted from a full-batch gradient every period (unbiased conditionally on the last restart
    only through the telescoping sum)."""
    return O.tadd(d, O.tsub(new, old))
