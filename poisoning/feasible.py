r"""Feasible sets of the attacker, each with its Euclidean projection. Every projection lives here.

A poisoning attack moves its leader (poison features, relaxed labels, example weights, a trigger) by
*projected* (hyper)gradient steps :math:`x \leftarrow P_{\Phi}(x + u)` (Biggio et al. 2012;
Muñoz-González et al. 2017), so the attacker's constraints :math:`\Phi` enter only through
:math:`P_\Phi`. Sets (frozen dataclasses; ``project`` is pure and jit-able):

- :class:`Box` :math:`\{x : lo \le x \le hi\}` (pixels in :math:`[0, 1]`): clipping
  (:func:`optax.projections.projection_box`);
- :class:`L2Ball`, :class:`LinfBall`, :class:`L1Ball` :math:`\{x : \|x - c\|_p \le r\}` per point
  (radial scaling, safe at the center and at radius 0; :func:`optax.projections.projection_linf_ball`,
  ``projection_l1_ball``, Duchi et al. 2008 for :math:`\ell_1`);
- :class:`BoxL1Ball`: box :math:`\cap` :math:`\ell_1` ball in one exact pass (Solans et al. 2020);
- :class:`CappedSimplex` :math:`\{q \in [0,1]^n : \sum_i q_i \le B\}` (relaxed label flips under a budget);
- :class:`SphereSlab`: the sphere :math:`\cap` slab around each point's class centroid, the region that
  the sphere and slab sanitizers leave (Steinhardt et al. 2017; Koh et al. 2022), exact;
- :class:`Intersection` of any of them (Dykstra's alternating projections; Boyle & Dykstra 1986);
  an empty intersection of boxes is rejected when built;
- :class:`Product`: one set per leaf of a pytree leader (e.g. features in a box and regression
  responses in another).

Points are rows: ``project`` maps an ``(m, ...)`` array to the same shape and treats each row
separately (a ball constrains every poison point on its own; ``center`` is one point or one center per
row). ``contains(x, atol)`` checks membership; for an :class:`Intersection` every member must contain
``x``. Bounds and radii are validated when a set is built (finite, ordered, non-negative).

References: J. P. Boyle, R. L. Dykstra, "A method for finding projections onto the intersection of
convex sets in Hilbert spaces", Lecture Notes in Statistics 37, 1986. J. Duchi et al., "Efficient
projections onto the l1-ball for learning in high dimensions", ICML 2008.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "FeasibleSet",
    "Unconstrained",
    "Box",
    "L2Ball",
    "LinfBall",
    "L1Ball",
    "BoxL1Ball",
    "CappedSimplex",
    "SphereSlab",
    "Intersection",
    "Product",
    "project_capped_simplex",
    "project_sphere",
    "project_slab",
    "project_sphere_slab",
]


def _finite_array(name, value, owner):
    a = np.asarray(value, dtype=float)
    if a.size and np.any(np.isnan(a)):
        raise ValueError(f"{owner}: argument {name!r} contains NaN")
    return a


class FeasibleSet:
    """Base class: ``project(x)`` (rows of ``x`` are points) and ``contains(x, atol)``."""

    def project(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def contains(self, x, atol: float = 1e-9) -> bool:
        """Whether every row of ``x`` lies in the set (up to ``atol``): ``||P(x) - x||_inf <= atol``."""
        diffs = jax.tree_util.tree_map(lambda p, v: jnp.max(jnp.abs(p - v), initial=0.0), self.project(x), x)
        return bool(max((float(d) for d in jax.tree_util.tree_leaves(diffs)), default=0.0) <= atol)

    def __and__(self, other: "FeasibleSet") -> "Intersection":
        return Intersection((self, other))


@dataclasses.dataclass(frozen=True)
class Unconstrained(FeasibleSet):
    """The whole space (projection = identity)."""

    def project(self, x):
        return jax.tree_util.tree_map(jnp.asarray, x)


@dataclasses.dataclass(frozen=True, eq=False)
class Box(FeasibleSet):
    """``{x : lo <= x <= hi}`` elementwise (``lo``/``hi`` scalars or broadcastable arrays)."""

    lo: Any = 0.0
    hi: Any = 1.0

    def __post_init__(self):
        lo, hi = _finite_array("lo", self.lo, "Box"), _finite_array("hi", self.hi, "Box")
        if np.any(lo > hi):
            raise ValueError(f"Box: 'lo' must be <= 'hi', got lo={self.lo!r}, hi={self.hi!r}")
        if np.any(lo == np.inf) or np.any(hi == -np.inf):
            raise ValueError(f"Box: 'lo' = +inf or 'hi' = -inf leaves no point, got lo={self.lo!r}, hi={self.hi!r}")

    def project(self, x):
        x = jnp.asarray(x)
        return optax.projections.projection_box(x, jnp.asarray(self.lo, x.dtype), jnp.asarray(self.hi, x.dtype))

    def __eq__(self, other):
        return (type(other) is Box and np.array_equal(np.asarray(self.lo), np.asarray(other.lo))
                and np.array_equal(np.asarray(self.hi), np.asarray(other.hi)))

    def __hash__(self):
        return hash(("Box", np.asarray(self.lo, float).tobytes(), np.asarray(self.hi, float).tobytes()))


def _rowwise(fn, x, center):
    x = jnp.asarray(x)
    c = jnp.broadcast_to(jnp.asarray(center, x.dtype), x.shape)
    if x.ndim == 1:
        return fn(x - c) + c
    flat, cflat = x.reshape(x.shape[0], -1), c.reshape(x.shape[0], -1)
    return (jax.vmap(fn)(flat - cflat) + cflat).reshape(x.shape)


def _check_radius(owner, radius, strict=False):
    r = float(radius)
    if not np.isfinite(r) or r < 0 or (strict and r == 0):
        raise ValueError(f"{owner}: 'radius' must be a finite number {'>' if strict else '>='} 0, got {radius!r}")


@dataclasses.dataclass(frozen=True, eq=False)
class L2Ball(FeasibleSet):
    """``{x : ||x - center||_2 <= radius}`` for each row (point) separately."""

    center: Any = 0.0
    radius: float = 1.0

    def __post_init__(self):
        _check_radius("L2Ball", self.radius)
        _finite_array("center", self.center, "L2Ball")

    def project(self, x):
        def one(v):  # optax's projection_l2_ball gives NaN for v = 0 at radius 0: guard the norm
            n = jnp.sqrt(jnp.sum(v * v))
            r = jnp.asarray(self.radius, v.dtype)
            return v * jnp.where(n > r, r / jnp.where(n > 0, n, 1.0), 1.0)

        return _rowwise(one, x, self.center)


@dataclasses.dataclass(frozen=True, eq=False)
class LinfBall(FeasibleSet):
    """``{x : ||x - center||_inf <= radius}`` for each row (point) separately (e.g. ``8/255`` around base images)."""

    center: Any = 0.0
    radius: float = 1.0

    def __post_init__(self):
        _check_radius("LinfBall", self.radius)
        _finite_array("center", self.center, "LinfBall")

    def project(self, x):
        return _rowwise(lambda v: optax.projections.projection_linf_ball(v, self.radius), x, self.center)


@dataclasses.dataclass(frozen=True, eq=False)
class L1Ball(FeasibleSet):
    """``{x : ||x - center||_1 <= radius}`` for each row separately (sort-based exact projection)."""

    center: Any = 0.0
    radius: float = 1.0

    def __post_init__(self):
        _check_radius("L1Ball", self.radius, strict=True)
        _finite_array("center", self.center, "L1Ball")

    def project(self, x):
        return _rowwise(lambda v: optax.projections.projection_l1_ball(v, self.radius), x, self.center)


@dataclasses.dataclass(frozen=True, eq=False)
class BoxL1Ball(FeasibleSet):
    r"""``{x : lo <= x <= hi, ||x - center||_1 <= radius}`` per row, projected exactly in one pass.

    With the center inside the box the projection of :math:`v` separates over coordinates given the
    multiplier :math:`\theta \ge 0` of the :math:`\ell_1` constraint:
    :math:`x_i(\theta) = \mathrm{clip}\big(c_i + \mathrm{sign}(v_i - c_i)\max(|v_i - c_i| - \theta, 0),
    lo_i, hi_i\big)` (the minimizer of :math:`(x_i - v_i)^2 + 2\theta|x_i - c_i|` on
    :math:`[lo_i, hi_i]`); :math:`\theta = 0` if :math:`x(0)` is feasible, else the root of the
    non-increasing :math:`\sum_i |x_i(\theta) - c_i| = r`, found by ``iters`` bisection steps on
    :math:`[0, \max_i |v_i - c_i|]`. Same set as ``Intersection((L1Ball(center, radius), Box(lo, hi)))``
    without Dykstra's inner loop. ``center`` must lie in the box (``(d,)`` or ``(m, d)``)."""

    lo: Any = 0.0
    hi: Any = 1.0
    center: Any = 0.0
    radius: float = 1.0
    iters: int = 60

    def __post_init__(self):
        _check_radius("BoxL1Ball", self.radius, strict=True)
        lo, hi = _finite_array("lo", self.lo, "BoxL1Ball"), _finite_array("hi", self.hi, "BoxL1Ball")
        if np.any(lo > hi):
            raise ValueError("BoxL1Ball: 'lo' must be <= 'hi'")
        c = _finite_array("center", self.center, "BoxL1Ball")
        if c.size and (np.any(c < lo - 1e-12) or np.any(c > hi + 1e-12)):
            raise ValueError("BoxL1Ball: 'center' must lie in the box")

    def project(self, x):
        x = jnp.asarray(x)
        lo, hi = jnp.asarray(self.lo, x.dtype), jnp.asarray(self.hi, x.dtype)
        r = jnp.asarray(self.radius, x.dtype)

        def one(v, c):  # v, c: (d,)
            u = v - c

            def at(theta):
                return jnp.clip(c + jnp.sign(u) * jnp.maximum(jnp.abs(u) - theta, 0.0), lo, hi)

            def bisect(_, bounds):
                a, b = bounds
                mid = 0.5 * (a + b)
                over = jnp.sum(jnp.abs(at(mid) - c)) > r
                return jnp.where(over, mid, a), jnp.where(over, b, mid)

            x0 = at(jnp.asarray(0.0, x.dtype))
            _, theta = jax.lax.fori_loop(0, int(self.iters), bisect,
                                         (jnp.asarray(0.0, x.dtype), jnp.max(jnp.abs(u))))
            return jnp.where(jnp.sum(jnp.abs(x0 - c)) <= r, x0, at(theta))

        c = jnp.broadcast_to(jnp.asarray(self.center, x.dtype), x.shape)
        if x.ndim == 1:
            return one(x, c)
        flat, cflat = x.reshape(-1, x.shape[-1]), c.reshape(-1, x.shape[-1])
        return jax.vmap(one)(flat, cflat).reshape(x.shape)


# ----------------------------------------------------------------------------------------------------
# capped simplex
# ----------------------------------------------------------------------------------------------------
def project_capped_simplex(v, budget, *, iters: int = 100):
    r"""Euclidean projection of ``v`` onto :math:`\{q \in [0, 1]^n : \sum_i q_i \le B\}`.

    If :math:`\mathrm{clip}(v, 0, 1)` already satisfies the budget it is the answer; otherwise the
    budget is active and the projection is :math:`\mathrm{clip}(v - \tau, 0, 1)` with the threshold
    :math:`\tau > 0` solving :math:`\sum_i \mathrm{clip}(v_i - \tau, 0, 1) = B` (a monotone scalar
    equation, solved by ``iters`` bisection steps and a final exact step on the identified free set).
    """
    v = jnp.asarray(v)
    dtype = jnp.result_type(v, float)
    v = v.astype(dtype)
    B = jnp.asarray(budget, dtype)
    clipped = jnp.clip(v, 0.0, 1.0)
    s = lambda tau: jnp.sum(jnp.clip(v - tau, 0.0, 1.0))

    lo = jnp.asarray(0.0, dtype)  # s(lo) > B when the budget is active
    hi = jnp.maximum(jnp.max(v), 0.0)  # s(hi) = 0 <= B

    def body(_, c):
        lo, hi = c
        mid = 0.5 * (lo + hi)
        big = s(mid) > B
        return jnp.where(big, mid, lo), jnp.where(big, hi, mid)

    lo, hi = jax.lax.fori_loop(0, iters, body, (lo, hi))
    tau = 0.5 * (lo + hi)
    # exact refinement: with the saturated/zero sets fixed, sum = n_one + sum_free (v - tau) = B
    one = v - tau >= 1.0
    free = (v - tau > 0.0) & ~one
    n_free = jnp.sum(free)
    tau_exact = (jnp.sum(jnp.where(free, v, 0.0)) + jnp.sum(one) - B) / jnp.maximum(n_free, 1)
    q_exact = jnp.clip(v - tau_exact, 0.0, 1.0)
    ok = (n_free > 0) & (jnp.abs(jnp.sum(q_exact) - B) <= jnp.abs(s(tau) - B))
    q_active = jnp.where(ok, q_exact, jnp.clip(v - tau, 0.0, 1.0))
    return jnp.where(jnp.sum(clipped) <= B, clipped, q_active)


@dataclasses.dataclass(frozen=True)
class CappedSimplex(FeasibleSet):
    """``{q in [0, 1]^n : sum(q) <= budget}`` (a relaxed choice of at most ``budget`` items)."""

    budget: float = 1.0
    iters: int = 100

    def __post_init__(self):
        b = float(self.budget)
        if not np.isfinite(b) or b < 0:
            raise ValueError(f"CappedSimplex: 'budget' must be a finite number >= 0, got {self.budget!r}")

    def project(self, x):
        return project_capped_simplex(x, self.budget, iters=int(self.iters))


# ----------------------------------------------------------------------------------------------------
# sphere and slab around class centroids (the sanitizers' regions)
# ----------------------------------------------------------------------------------------------------
def _safe_norm(z):
    """Euclidean norm over the last axis with a zero (not NaN) gradient at the origin."""
    sq = jnp.sum(z * z, axis=-1)
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def _per_class(value, K, name):
    v = jnp.asarray(value)
    if v.ndim == 0:
        return jnp.broadcast_to(v, (K,))
    if v.shape != (K,):
        raise ValueError(f"argument {name!r} must be a scalar or have shape ({K},), got {tuple(v.shape)}")
    return v


def _centroids(c, d, name="centroids"):
    c = jnp.asarray(c)
    if c.ndim != 2 or c.shape[1] != d:
        raise ValueError(f"argument {name!r} must have shape (K, {d}), got {tuple(c.shape)}")
    return c


@jax.jit
def _project_sphere_kernel(x, y, centroids, radii):
    mu, r = centroids[y], radii[y]
    z = x - mu
    nz = _safe_norm(z)
    scale = jnp.where(nz > r, r / jnp.where(nz > 0, nz, 1.0), 1.0)
    return mu + z * scale[..., None]


@jax.jit
def _project_slab_kernel(x, y, centroids, directions, radii):
    mu, u, s = centroids[y], directions[y], radii[y]
    t = jnp.sum((x - mu) * u, axis=-1)
    return x - (t - jnp.clip(t, -s, s))[..., None] * u


@jax.jit
def _project_sphere_slab_kernel(x, y, centroids, directions, R_all, s_all):
    mu, u, R, s = centroids[y], directions[y], R_all[y], s_all[y]
    z = x - mu
    t = jnp.sum(z * u, axis=-1)
    w = z - t[..., None] * u
    p = _safe_norm(w)
    e = w / jnp.where(p > 0, p, 1.0)[..., None]
    rho = _safe_norm(jnp.stack([t, p], -1))
    sc = jnp.where(rho > R, R / jnp.where(rho > 0, rho, 1.0), 1.0)
    t1, p1 = t * sc, p * sc
    ok1 = jnp.abs(t1) <= s
    t2 = jnp.clip(t, -s, s)
    ok2 = t2 * t2 + p * p <= R * R
    t3 = jnp.sign(t) * jnp.minimum(s, R)
    p3 = jnp.sqrt(jnp.maximum(R * R - t3 * t3, 0.0))
    tn = jnp.where(ok1, t1, jnp.where(ok2, t2, t3))
    pn = jnp.where(ok1, p1, jnp.where(ok2, p, p3))
    return mu + tn[..., None] * u + pn[..., None] * e


def project_sphere(x, y, centroids, radii):
    r"""Projection onto the ball :math:`\{z : \|z - \mu_y\|_2 \le r_y\}` of each row's class ``y``:
    :math:`\mu_y + (x - \mu_y)\min(1, r_y / \|x - \mu_y\|)`. ``x`` ``(..., d)``, ``y`` ``(...)``,
    ``radii`` a scalar or ``(K,)``."""
    x = jnp.asarray(x)
    centroids = _centroids(centroids, x.shape[-1])
    return _project_sphere_kernel(x, jnp.asarray(y), centroids, _per_class(radii, centroids.shape[0], "radii"))


def project_slab(x, y, centroids, directions, radii):
    r"""Projection onto the slab :math:`\{z : |\langle z - \mu_y, u_y\rangle| \le s_y\}` (``u_y`` unit):
    :math:`x - (t - \mathrm{clip}(t, -s_y, s_y))\,u_y`, :math:`t = \langle x - \mu_y, u_y\rangle`."""
    x = jnp.asarray(x)
    centroids = _centroids(centroids, x.shape[-1])
    directions = _centroids(directions, x.shape[-1], "directions")
    return _project_slab_kernel(x, jnp.asarray(y), centroids, directions,
                                _per_class(radii, centroids.shape[0], "radii"))


def project_sphere_slab(x, y, centroids, directions, sphere_radii, slab_radii):
    r"""Exact projection onto the intersection of the sphere and the slab around :math:`\mu_y`.

    Both sets are centred at :math:`\mu_y`, so the problem lives in the plane spanned by
    :math:`u = u_y` and :math:`e = w_\perp/\|w_\perp\|`, with :math:`z = x - \mu_y = t u + w_\perp`,
    :math:`t = \langle z, u\rangle`, :math:`p = \|w_\perp\|`. With :math:`R = r_y` and :math:`s = s_y`, the
    answer :math:`(t', p')` is the first of (1) the ball projection :math:`(t, p)\min(1, R/\|(t,p)\|)` if
    :math:`|t'| \le s`; (2) the slab projection :math:`(\mathrm{clip}(t,-s,s), p)` if
    :math:`t'^2 + p^2 \le R^2`; (3) the corner :math:`(\mathrm{sign}(t)\, s, \sqrt{R^2 - s^2})` (a
    projection onto a superset that lands in the intersection is the projection onto it; otherwise the
    projection lies on both boundaries). Returns :math:`\mu_y + t' u + p' e`."""
    x = jnp.asarray(x)
    centroids = _centroids(centroids, x.shape[-1])
    directions = _centroids(directions, x.shape[-1], "directions")
    K = centroids.shape[0]
    return _project_sphere_slab_kernel(x, jnp.asarray(y), centroids, directions,
                                       _per_class(sphere_radii, K, "sphere_radii"),
                                       _per_class(slab_radii, K, "slab_radii"))


@dataclasses.dataclass(frozen=True, eq=False)
class SphereSlab(FeasibleSet):
    r"""Rows with class labels ``labels`` (one per row, ``0..K-1``) constrained to the sphere :math:`\cap`
    slab around their class centroid: :math:`\|x - \mu_y\| \le r_y`, :math:`|\langle x - \mu_y, u_y\rangle|
    \le s_y` (exact projection, :func:`project_sphere_slab`; ``slab_radii=None``: the sphere only)."""

    labels: Any
    centroids: Any
    directions: Any
    sphere_radii: Any
    slab_radii: Any = None

    def project(self, x):
        if self.slab_radii is None:
            return project_sphere(x, self.labels, self.centroids, self.sphere_radii)
        return project_sphere_slab(x, self.labels, self.centroids, self.directions, self.sphere_radii,
                                   self.slab_radii)


# ----------------------------------------------------------------------------------------------------
# combinations
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class Intersection(FeasibleSet):
    """Intersection of convex sets, projected by Dykstra's algorithm (``iters`` sweeps).

    Dykstra's iterates converge to the exact projection onto the intersection (for separable sets,
    e.g. a :class:`Box` and a :class:`LinfBall`, after one sweep); the result always lies exactly in
    the *last* set (put the :class:`Box` last to keep pixels in range exactly). An intersection of
    boxes that is empty raises ``ValueError`` when built; for other sets an empty intersection shows
    in :meth:`contains` (every member is checked)."""

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
        boxes = [s for s in flat if isinstance(s, Box)]
        if len(boxes) > 1:
            lo = np.max(np.broadcast_arrays(*[np.asarray(b.lo, float) for b in boxes]), axis=0)
            hi = np.min(np.broadcast_arrays(*[np.asarray(b.hi, float) for b in boxes]), axis=0)
            if np.any(lo > hi):
                raise ValueError("Intersection: the boxes do not intersect (the feasible set is empty)")

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

    def contains(self, x, atol: float = 1e-9) -> bool:
        return all(s.contains(x, atol) for s in self.sets)


@dataclasses.dataclass(frozen=True, eq=False)
class Product(FeasibleSet):
    """One set per leaf of a pytree leader: ``Product({"X": Box(0, 1), "y": Box(0, 1)})`` projects
    ``leader["X"]`` and ``leader["y"]`` separately (the Cartesian product of the sets)."""

    sets: Any = None

    def __post_init__(self):
        leaves = jax.tree_util.tree_leaves(self.sets, is_leaf=lambda s: isinstance(s, FeasibleSet))
        if not leaves or not all(isinstance(s, FeasibleSet) for s in leaves):
            raise ValueError("Product: 'sets' must be a non-empty pytree of FeasibleSet objects")

    def project(self, x):
        return jax.tree_util.tree_map(lambda s, v: s.project(v), self.sets, x,
                                      is_leaf=lambda s: isinstance(s, FeasibleSet))

    def contains(self, x, atol: float = 1e-9) -> bool:
        flags = jax.tree_util.tree_map(lambda s, v: s.contains(v, atol), self.sets, x,
                                       is_leaf=lambda s: isinstance(s, FeasibleSet))
        return all(jax.tree_util.tree_leaves(flags))
