r"""Feasible sets for poison points, each with a Euclidean projection.

A poisoning attack ascends its objective by *projected* (hyper)gradient steps
:math:`x \leftarrow P_{\Phi}(x + \eta\, d)` (Biggio et al. 2012; Muñoz-González et al. 2017), so the
attacker's constraints :math:`\Phi` enter only through :math:`P_\Phi`:

- :class:`Box` :math:`\{x : lo \le x \le hi\}` (e.g. pixels in :math:`[0, 1]`), projection = clipping
  (:func:`optax.projections.projection_box`);
- :class:`L2Ball` :math:`\{x : \|x - c\|_2 \le r\}`, radial scaling
  (:func:`optax.projections.projection_l2_ball`);
- :class:`LinfBall` :math:`\{x : \|x - c\|_\infty \le r\}` (:func:`optax.projections.projection_linf_ball`);
- :class:`Intersection` of any of them, projected by Dykstra's alternating algorithm (Boyle & Dykstra
  1986), which converges to the exact projection onto the intersection of closed convex sets; a
  box intersected with an ℓ∞-ball is exact after one sweep (both are separable).

Points are rows: ``project`` maps an ``(m, d)`` array (or one ``(d,)`` point) to the same shape and
treats each row separately (a ball constrains every poison point on its own; ``center`` is ``(d,)``
or one center per row, ``(m, d)``). All sets are frozen dataclasses and ``project`` is a pure,
jit-able function.

References: J. P. Boyle, R. L. Dykstra, "A method for finding projections onto the intersection of
convex sets in Hilbert spaces", Lecture Notes in Statistics 37, 1986.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

__all__ = ["FeasibleSet", "Box", "L2Ball", "LinfBall", "Intersection", "Unconstrained"]


class FeasibleSet:
    """Base class: ``project(x)`` (rows of ``x`` are points) and ``contains(x, atol)``."""

    def project(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def contains(self, x, atol: float = 1e-9) -> bool:
        """Whether every row of ``x`` lies in the set (up to ``atol``): ``||P(x) - x||_inf <= atol``."""
        x = jnp.asarray(x)
        return bool(jnp.max(jnp.abs(self.project(x) - x), initial=0.0) <= atol)

    def __and__(self, other: "FeasibleSet") -> "Intersection":
        return Intersection((self, other))


@dataclasses.dataclass(frozen=True)
class Unconstrained(FeasibleSet):
    """The whole space (projection = identity)."""

    def project(self, x):
        return jnp.asarray(x)


@dataclasses.dataclass(frozen=True)
class Box(FeasibleSet):
    """``{x : lo <= x <= hi}`` elementwise (``lo``/``hi`` scalars or broadcastable arrays)."""

    lo: Any = 0.0
    hi: Any = 1.0

    def __post_init__(self):
        if jnp.any(jnp.asarray(self.lo) > jnp.asarray(self.hi)):
            raise ValueError("Box: lo must be <= hi")

    def project(self, x):
        x = jnp.asarray(x)
        return optax.projections.projection_box(x, jnp.asarray(self.lo, x.dtype), jnp.asarray(self.hi, x.dtype))


def _rowwise(fn, x, center):
    x = jnp.asarray(x)
    c = jnp.broadcast_to(jnp.asarray(center, x.dtype), x.shape)
    if x.ndim == 1:
        return fn(x - c) + c
    flat, cflat = x.reshape(-1, x.shape[-1]), c.reshape(-1, x.shape[-1])
    return (jax.vmap(fn)(flat - cflat) + cflat).reshape(x.shape)


@dataclasses.dataclass(frozen=True)
class L2Ball(FeasibleSet):
    """``{x : ||x - center||_2 <= radius}`` for each row (point) separately."""

    center: Any = 0.0
    radius: float = 1.0

    def __post_init__(self):
        if not float(self.radius) >= 0:
            raise ValueError(f"L2Ball: radius must be >= 0, got {self.radius}")

    def project(self, x):
        return _rowwise(lambda v: optax.projections.projection_l2_ball(v, self.radius), x, self.center)


@dataclasses.dataclass(frozen=True)
class LinfBall(FeasibleSet):
    """``{x : ||x - center||_inf <= radius}`` for each row (point) separately."""

    center: Any = 0.0
    radius: float = 1.0

    def __post_init__(self):
        if not float(self.radius) >= 0:
            raise ValueError(f"LinfBall: radius must be >= 0, got {self.radius}")

    def project(self, x):
        return _rowwise(lambda v: optax.projections.projection_linf_ball(v, self.radius), x, self.center)


@dataclasses.dataclass(frozen=True)
class Intersection(FeasibleSet):
    """Intersection of convex sets, projected by Dykstra's algorithm (``iters`` sweeps).

    Dykstra's iterates converge to the exact projection onto the intersection (for separable sets,
    e.g. a :class:`Box` and a :class:`LinfBall`, after one sweep); the result always lies exactly in
    the *last* set (put the :class:`Box` last to keep pixels in range exactly).
    """

    sets: tuple = ()
    iters: int = 100

    def __post_init__(self):
        flat = []
        for s in self.sets:
            if not isinstance(s, FeasibleSet):
                raise ValueError(f"Intersection: expected FeasibleSet members, got {type(s).__name__}")
            flat.extend(s.sets if isinstance(s, Intersection) else (s,))
        object.__setattr__(self, "sets", tuple(flat))
        if not flat:
            raise ValueError("Intersection: needs at least one set")

    def project(self, x):
        x = jnp.asarray(x)
        sets = self.sets
        if len(sets) == 1:
            return sets[0].project(x)

        def sweep(_, carry):
            y, incs = carry
            new = []
            for s, p in zip(sets, incs):
                z = s.project(y + p)
                new.append(y + p - z)
                y = z
            return y, tuple(new)

        y, _ = jax.lax.fori_loop(0, self.iters, sweep, (x, tuple(jnp.zeros_like(x) for _ in sets)))
        return y
