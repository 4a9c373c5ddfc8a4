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

__all__ = ["hvp", "mixed_jvp", "mixed_vjp", "gauss_newton_vp", "hessian_matvec"]


def hvp(f: Callable, x: Any, v: Any, *args: Any) -> Any:
    r"""Hessian-vector product :math:`\nabla^2_{xx} f(x, *args)\, v` (forward-over-reverse)."""
    return jax.jvp(lambda x_: jax.grad(f)(x_, *args), (x,), (v,))[1]


def hessian_matvec(f: Callable, x: Any, *args: Any) -> Callable[[Any], Any]:
    """The linear map ``v -> hvp(f, x, v, *args)``, linearized once and reusable (``jax.linearize``).

    Linearizing stores the forward pass, so repeated products (CG iterations) cost one tangent pass each.
    """
    _, fn = jax.linearize(lambda x_: jax.grad(f)(x_, *args), x)
    return fn


def mixed_jvp(f: Callable, x: Any, args: tuple, dargs: tuple) -> Any:
    r""":math:`\partial_\theta(\nabla_x f(x, \theta))\,\dot\theta` for ``θ = args`` (a tuple), shaped like ``x``."""
    return jax.jvp(lambda *a: jax.grad(f)(x, *a), tuple(args), tuple(dargs))[1]


def mixed_vjp(f: Callable, x: Any, args: tuple, u: Any) -> tuple:
    r""":math:`u^\top\partial_\theta(\nabla_x f(x, \theta))` for ``θ = args``: a tuple of cotangents like ``args``."""
    _, pullback = jax.vjp(lambda *a: jax.grad(f)(x, *a), *args)
    return pullback(u)


def gauss_newton_vp(predict: Callable, output_loss: Callable, x: Any, v: Any) -> Any:
    r"""Gauss-Newton product :math:`J^\top \nabla^2\ell(z) J v` with :math:`z = \texttt{predict}(x)`.

    Args:
      predict: ``x -> z`` (e.g. parameters to logits, data closed over).
      output_loss: ``z -> scalar`` (e.g. summed cross-entropy against fixed labels).
      x: where to linearize; v: the vector (pytree like ``x``).
    """
    z, jv = jax.jvp(predict, (x,), (v,))
    hjv = jax.jvp(jax.grad(output_loss), (z,), (jv,))[1]
    _, pullback = jax.vjp(predict, x)
    return pullback(hjv)[0]
