r"""Second-order products on pytrees, without ever forming a matrix.

For a scalar :math:`f(x, \theta)`:

- :func:`hvp`: :math:`\nabla^2_{xx} f \, v`, forward-over-reverse (``jvp`` of ``grad``): one forward
  and one backward pass, the cheapest exact Hessian-vector product (Pearlmutter 1994).
- :func:`mixed_jvp`: :math:`\partial_\theta(\nabla_x f)\,\dot\theta` (a vector shaped like ``x``).
- :func:`mixed_vjp`: :math:`u^\top \partial_\theta(\nabla_x f)` (cotangents shaped like ``θ``), the
  last step of every reverse-mode hypergradient: :math:`\bar\theta = -u^\top\partial_\theta\nabla_x f`
  with :math:`u = H^{-1}\bar x`.
- :func:`gauss_newton_vp`: :math:`J^\top \nabla^2_{zz}\ell(z)\, J v` for :math:`z = g(x)`, the
  Gauss-Newton (generalized) product, positive semi-definite whenever :math:`\ell` is convex
  (Schraudolph 2002; Martens 2010), so CG is safe on it even for non-convex models.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

__all__ = ["hvp", "mixed_jvp", "mixed_vjp", "gauss_newton_vp", "hessian_matvec"]


def _like(name: str, v: Any, ref: Any, ref_name: str) -> Any:
    """``v`` checked to be laid out like ``ref`` (tree structure and shapes; ValueError naming ``name``)
    and cast to ``ref``'s floating dtypes (JAX's tangents must match their primals' dtypes exactly)."""
    if jax.tree_util.tree_structure(v) != jax.tree_util.tree_structure(ref):
        raise ValueError(
            f"argument {name!r} must have the tree structure of {ref_name}: "
            f"{jax.tree_util.tree_structure(v)} vs {jax.tree_util.tree_structure(ref)}"
        )
    out = []
    for a, r in zip(jax.tree_util.tree_leaves(v), jax.tree_util.tree_leaves(ref)):
        if jnp.shape(a) != jnp.shape(r):
            raise ValueError(f"argument {name!r} must have the leaf shapes of {ref_name}: {jnp.shape(a)} vs {jnp.shape(r)}")
        if not jnp.issubdtype(jnp.result_type(a), jnp.inexact):
            raise ValueError(f"argument {name!r} must hold floating-point arrays, got dtype {jnp.result_type(a)}")
        out.append(jnp.asarray(a, jnp.result_type(r)) if jnp.issubdtype(jnp.result_type(r), jnp.inexact) else a)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(v), out)


def _check_callable(name: str, f) -> None:
    if not callable(f):
        raise TypeError(f"argument {name!r} must be callable, got {type(f).__name__}")


def hvp(f: Callable, x: Any, v: Any, *args: Any) -> Any:
    r"""Hessian-vector product :math:`\nabla^2_{xx} f(x, *args)\, v` (forward-over-reverse).

    ``v`` must be laid out like ``x`` (a ``ValueError`` naming ``v`` otherwise); ``f`` must return a
    real scalar.
    """
    _check_callable("f", f)
    v = _like("v", v, x, "x")
    return jax.jvp(lambda x_: jax.grad(f)(x_, *args), (x,), (v,))[1]


def hessian_matvec(f: Callable, x: Any, *args: Any) -> Callable[[Any], Any]:
    """The linear map ``v -> hvp(f, x, v, *args)``, linearized once and reusable (``jax.linearize``).

    Linearizing stores the forward pass, so repeated products (CG iterations) cost one tangent pass each.
    """
    _check_callable("f", f)
    _, fn = jax.linearize(lambda x_: jax.grad(f)(x_, *args), x)
    return fn


def mixed_jvp(f: Callable, x: Any, args: tuple, dargs: tuple) -> Any:
    r""":math:`\partial_\theta(\nabla_x f(x, \theta))\,\dot\theta` for ``θ = args`` (a tuple), shaped like ``x``."""
    _check_callable("f", f)
    dargs = _like("dargs", tuple(dargs), tuple(args), "args")
    return jax.jvp(lambda *a: jax.grad(f)(x, *a), tuple(args), dargs)[1]


def mixed_vjp(f: Callable, x: Any, args: tuple, u: Any) -> tuple:
    r""":math:`u^\top\partial_\theta(\nabla_x f(x, \theta))` for ``θ = args``: a tuple of cotangents like ``args``."""
    _check_callable("f", f)
    u = _like("u", u, x, "x")
    _, pullback = jax.vjp(lambda *a: jax.grad(f)(x, *a), *args)
    return pullback(u)


def gauss_newton_vp(predict: Callable, output_loss: Callable, x: Any, v: Any) -> Any:
    r"""Gauss-Newton product :math:`J^\top \nabla^2\ell(z) J v` with :math:`z = \texttt{predict}(x)`.

    Args:
      predict: ``x -> z`` (e.g. parameters to logits, data closed over).
      output_loss: ``z -> scalar`` (e.g. summed cross-entropy against fixed labels).
      x: where to linearize; v: the vector (pytree like ``x``).
    """
    _check_callable("predict", predict)
    _check_callable("output_loss", output_loss)
    v = _like("v", v, x, "x")
    z, jv = jax.jvp(predict, (x,), (v,))
    hjv = jax.jvp(jax.grad(output_loss), (z,), (jv,))[1]
    _, pullback = jax.vjp(predict, x)
    return pullback(hjv)[0]
