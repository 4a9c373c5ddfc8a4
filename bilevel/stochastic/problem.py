r"""A stochastic bilevel problem: two empirical risks over mini-batches of their own data.

.. math::

    \min_x\; F(x) = f(z^\star(x), x), \qquad z^\star(x) = \arg\min_z g(z, x),

    g(z, x) = \frac1n\sum_{i=1}^n g_i(z, x), \qquad f(z, x) = \frac1m\sum_{j=1}^m f_j(z, x),

with ``z`` the inner variable (model parameters) and ``x`` the outer one (hyperparameters), both
pytrees of float arrays. The losses are written once, for a mini-batch: ``inner_loss(z, x, batch)``
and ``outer_loss(z, x, batch)`` return the *mean* over the rows of ``batch``, a pytree whose leaves
share a leading axis (the rows of ``inner_data`` / ``outer_data`` picked by the sampler). A loss that
needs the index of its rows (per-example weights ``x[i]`` in data hyper-cleaning) keeps an
``arange(n)`` leaf in its data and reads it from the batch.

:class:`BilevelProblem` is a pytree: the data arrays are its leaves (passed to ``jit``-ed steps as
arguments, never baked in as constants), the two losses and the name are static. Build one with
:func:`make_problem`, which checks the data and evaluates both losses once on a batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from bilevel._checks import validate_finite

__all__ = ["BilevelProblem", "make_problem", "num_rows", "take_rows", "check_variables"]


def num_rows(data: Any, name: str) -> int:
    """The common leading dimension of the leaves of ``data`` (ValueError naming ``name`` otherwise)."""
    sizes = {int(jnp.shape(leaf)[0]) if jnp.ndim(leaf) else None for leaf in jax.tree_util.tree_leaves(data)}
    if not sizes:
        raise ValueError(f"argument {name!r} has no arrays")
    if None in sizes:
        raise ValueError(f"argument {name!r}: every leaf needs a leading axis of rows, found a scalar")
    if len(sizes) != 1:
        raise ValueError(f"argument {name!r}: leaves must share their leading axis, got sizes {sorted(sizes)}")
    n = sizes.pop()
    if n < 1:
        raise ValueError(f"argument {name!r} has no rows")
    return n


def take_rows(data: Any, idx: jax.Array) -> Any:
    """The rows ``idx`` of every leaf of ``data`` (a mini-batch)."""
    return jax.tree_util.tree_map(lambda a: jnp.take(a, idx, axis=0), data)


@dataclasses.dataclass(frozen=True)
class BilevelProblem:
    """Inner and outer mini-batch losses with their data (a pytree; see the module docstring).

    Attributes:
      inner_loss: ``g(z, x, batch) -> scalar``, mean over the batch rows (strongly convex in ``z``
        for the theory of every solver here).
      outer_loss: ``f(z, x, batch) -> scalar``, mean over the batch rows.
      inner_data, outer_data: pytrees of arrays, leading axis ``n_inner`` / ``n_outer``.
      name: a label for logs and results.
    """

    inner_loss: Callable
    outer_loss: Callable
    inner_data: Any
    outer_data: Any
    name: str = "bilevel"

    @property
    def n_inner(self) -> int:
        return num_rows(self.inner_data, "inner_data")

    @property
    def n_outer(self) -> int:
        return num_rows(self.outer_data, "outer_data")

    def inner_full(self, z, x):
        """:math:`g(z, x)` on all inner data."""
        return self.inner_loss(z, x, self.inner_data)

    def outer_full(self, z, x):
        """:math:`f(z, x)` on all outer data."""
        return self.outer_loss(z, x, self.outer_data)


jax.tree_util.register_dataclass(
    BilevelProblem,
    data_fields=["inner_data", "outer_data"],
    meta_fields=["inner_loss", "outer_loss", "name"],
)


def make_problem(inner_loss: Callable, outer_loss: Callable, inner_data: Any, outer_data: Any,
                 *, name: str = "bilevel") -> BilevelProblem:
    """A checked :class:`BilevelProblem`: callables, rows, finite floating data.

    Raises ``TypeError`` / ``ValueError`` naming the offending argument.
    """
    for arg, fn in (("inner_loss", inner_loss), ("outer_loss", outer_loss)):
        if not callable(fn):
            raise TypeError(f"argument {arg!r} must be callable, got {type(fn).__name__}")
    inner_data = jax.tree_util.tree_map(jnp.asarray, inner_data)
    outer_data = jax.tree_util.tree_map(jnp.asarray, outer_data)
    num_rows(inner_data, "inner_data")
    num_rows(outer_data, "outer_data")
    validate_finite("inner_data", inner_data)
    validate_finite("outer_data", outer_data)
    return BilevelProblem(inner_loss, outer_loss, inner_data, outer_data, str(name))


def check_variables(problem: BilevelProblem, inner, outer, *, inner_name: str = "inner0",
                    outer_name: str = "outer0") -> tuple[Any, Any]:
    """Check the starting point: float arrays, finite, and both losses evaluate to scalars there.

    Shape errors of the losses are re-raised as ``ValueError`` naming ``inner0``/``outer0``. Returns
    ``(inner, outer)`` as JAX arrays.
    """
    if not isinstance(problem, BilevelProblem):
        raise TypeError(f"argument 'problem' must be a BilevelProblem (see make_problem), got {type(problem).__name__}")
    inner = jax.tree_util.tree_map(jnp.asarray, inner)
    outer = jax.tree_util.tree_map(jnp.asarray, outer)
    for name, tree in ((inner_name, inner), (outer_name, outer)):
        leaves = jax.tree_util.tree_leaves(tree)
        if not leaves:
            raise ValueError(f"argument {name!r} has no arrays")
        for leaf in leaves:
            if not jnp.issubdtype(leaf.dtype, jnp.floating):
                raise ValueError(f"argument {name!r} must hold floating arrays, got dtype {leaf.dtype}")
        validate_finite(name, tree)
    # a few rows (not one: a (1,)-shaped batch axis would broadcast against wrong shapes)
    one_in = take_rows(problem.inner_data, jnp.arange(min(problem.n_inner, 3)))
    one_out = take_rows(problem.outer_data, jnp.arange(min(problem.n_outer, 3)))
    for which, loss, batch in (("inner_loss", problem.inner_loss, one_in), ("outer_loss", problem.outer_loss, one_out)):
        try:
            out = jax.eval_shape(loss, inner, outer, batch)
        except Exception as e:  # noqa: BLE001 - re-raised with the argument names
            raise ValueError(
                f"{which}(inner0, outer0, batch) failed on the given shapes: check arguments "
                f"{inner_name!r} and {outer_name!r} ({type(e).__name__}: {e})"
            ) from e
        if np.shape(out) != ():
            raise ValueError(f"{which} must return a scalar, got shape {np.shape(out)} for arguments "
                             f"{inner_name!r}/{outer_name!r}")
        grads = jax.eval_shape(jax.grad(loss, argnums=(0, 1)), inner, outer, batch)
        for name, tree, g in ((inner_name, inner, grads[0]), (outer_name, outer, grads[1])):
            if jax.tree_util.tree_structure(tree) != jax.tree_util.tree_structure(g) or any(
                a.shape != b.shape for a, b in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(g))
            ):
                raise ValueError(f"argument {name!r} does not have the shape {which} expects")
    return inner, outer
