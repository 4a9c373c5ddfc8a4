r"""First- and second-order oracles of a :class:`~bilevel.stochastic.problem.BilevelProblem` on one batch.

With :math:`g` the inner and :math:`f` the outer loss on a batch :math:`\xi`:

- :func:`grad_inner`: :math:`\nabla_z g(z, x; \xi)`;
- :func:`grad_inner_outer_var`: :math:`\nabla_x g(z, x; \xi)` (first-order methods F2SA, BOME);
- :func:`grads_outer`: :math:`(\nabla_z f, \nabla_x f)(z, x; \xi)`;
- :func:`hvp`: :math:`\nabla^2_{zz} g\, v` (forward-over-reverse, :func:`bilevel.hvp.hvp`);
- :func:`cross`: :math:`\nabla^2_{xz} g\, v`, a cotangent shaped like ``x`` (vjp of :math:`\nabla_z g` in ``x``);
- :func:`grad_hvp_cross`: all three inner quantities at once from one linearization (one forward and
  one backward pass through :math:`\nabla_z g`), as the single-loop methods need them.

The tree helpers (:func:`tadd`, :func:`tsub`, :func:`tscale`, :func:`taxpy`, :func:`tdot`,
:func:`tnorm`) act leafwise on pytrees.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bilevel.hvp import hvp as _hvp

__all__ = [
    "grad_inner",
    "grad_inner_outer_var",
    "grads_outer",
    "hvp",
    "cross",
    "grad_hvp_cross",
    "tadd",
    "tsub",
    "tscale",
    "taxpy",
    "tdot",
    "tnorm",
    "tzeros",
]


def tadd(a, b):
    return jax.tree_util.tree_map(jnp.add, a, b)


def tsub(a, b):
    return jax.tree_util.tree_map(jnp.subtract, a, b)


def tscale(s, a):
    return jax.tree_util.tree_map(lambda l: (s * l).astype(l.dtype), a)


def taxpy(s, a, b):
    """``b + s * a`` leafwise."""
    return jax.tree_util.tree_map(lambda u, w: (w + s * u).astype(w.dtype), a, b)


def tdot(a, b):
    leaves = [jnp.vdot(u, w) for u, w in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))]
    return sum(leaves[1:], leaves[0])


def tnorm(a):
    return jnp.sqrt(tdot(a, a))


def tzeros(a):
    return jax.tree_util.tree_map(jnp.zeros_like, a)


def grad_inner(problem, z, x, batch):
    r""":math:`\nabla_z g(z, x; \xi)`."""
    return jax.grad(problem.inner_loss)(z, x, batch)


def grad_inner_outer_var(problem, z, x, batch):
    r""":math:`\nabla_x g(z, x; \xi)`."""
    return jax.grad(problem.inner_loss, argnums=1)(z, x, batch)


def grads_outer(problem, z, x, batch):
    r""":math:`(\nabla_z f(z, x; \zeta), \nabla_x f(z, x; \zeta))`."""
    return jax.grad(problem.outer_loss, argnums=(0, 1))(z, x, batch)


def hvp(problem, z, x, v, batch):
    r""":math:`\nabla^2_{zz} g(z, x; \xi)\, v`."""
    return _hvp(problem.inner_loss, z, v, x, batch)


def cross(problem, z, x, v, batch):
    r""":math:`\nabla^2_{xz} g(z, x; \xi)\, v` (shaped like ``x``)."""
    _, pullback = jax.vjp(lambda x_: jax.grad(problem.inner_loss)(z, x_, batch), x)
    return pullback(v)[0]


def grad_hvp_cross(problem, z, x, v, batch):
    r""":math:`(\nabla_z g,\ \nabla^2_{zz} g\, v,\ \nabla^2_{xz} g\, v)` at :math:`(z, x; \xi)` in one vjp."""
    g, pullback = jax.vjp(lambda z_, x_: jax.grad(problem.inner_loss)(z_, x_, batch), z, x)
    hv, cv = pullback(v)
    return g, hv, cv
