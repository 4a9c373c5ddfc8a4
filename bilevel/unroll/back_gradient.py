r"""Back-gradient (reversible learning): reverse the training trajectory instead of storing it.

:class:`BackGradient` (Domke 2012; Maclaurin, Duvenaud & Adams 2015; Muñoz-González et al. 2017) is a
:func:`jax.custom_vjp` over the whole :math:`T`-step map :math:`x_T = \Phi(x_0, \theta)` of
gradient descent or heavy-ball momentum. The forward pass keeps only the final state; the backward
pass *reverses the trajectory step by step* while accumulating the adjoint, so no trajectory is
stored. The momentum parametrization is the one of ``optax.sgd`` (hence of
:class:`bilevel.solvers.GradientDescent`, so ``BackGradient`` and ``Unrolled`` run the same
iterates):

.. math::  v_{t+1} = \gamma v_t + \nabla_x\mathcal L(x_t,\theta), \qquad x_{t+1} = x_t - \eta v_{t+1},
           \qquad v_0 = 0

(Maclaurin's :math:`v' \leftarrow \gamma v' - (1-\gamma)\nabla`, :math:`x \leftarrow x + \alpha v'`
is the same iteration with :math:`v' = -(1-\gamma)v` and :math:`\alpha = \eta/(1-\gamma)`). Its
inverse is :math:`x_t = x_{t+1} + \eta v_{t+1}`,
:math:`v_t = (v_{t+1} - \nabla_x\mathcal L(x_t))/\gamma`; the adjoint recursion run alongside it is

.. math::  \bar v \leftarrow \bar v - \eta\bar x, \quad
           \bar x \leftarrow \bar x + \nabla^2_{xx}\mathcal L(x_t)\,\bar v, \quad
           \bar\theta \leftarrow \bar\theta + \nabla^2_{\theta x}\mathcal L(x_t)\,\bar v, \quad
           \bar v \leftarrow \gamma\bar v .

*Approximate reversal* (``exact=False``): plain gradient descent (no momentum) cannot be inverted
in closed form (:math:`x_t` solves :math:`x_t - \eta\nabla\mathcal L(x_t) = x_{t+1}`), so it is
reversed to first order as in Domke (2012) and Muñoz-González et al. (2017):
:math:`x_t \approx x_{t+1} + \eta\nabla\mathcal L(x_{t+1})` (error :math:`O(\eta^2\|\nabla^2
\mathcal L\,\nabla\mathcal L\|)` per step, compounding backwards). Near convergence the reversed
path stays at the minimizer and the result approaches the implicit hypergradient; far from it the
error is visible (see the tests). With momentum, ``exact=False`` runs the float reversal above
(unstable, for comparison only). ``exact=None`` (default) picks exact reversal when
``momentum > 0`` and approximate otherwise. Reverse mode only (``jax.jvp`` is not defined for a
``custom_vjp``; use :class:`Unrolled` for forward mode).

The exact reversal's integer arithmetic is in :mod:`bilevel.unroll.reversible`.

References: J. Domke, AISTATS 2012; D. Maclaurin, D. Duvenaud, R. P. Adams, ICML 2015; L. Muñoz-González
et al., *Towards Poisoning of Deep Learning Algorithms with Back-gradient Optimization*, AISec 2017.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from bilevel._checks import BilevelError, OnFailure, check_on_failure, error_if
from bilevel.solvers import GradientDescent
from bilevel.unroll._common import as_jax_args, check_steps, is_inexact, is_int, resolve_steps
from bilevel.unroll.minibatches import MiniBatches, selector
from bilevel.unroll.reversible import div_gamma, information_buffer_limbs, momentum_fraction, mul_gamma

__all__ = ["BackGradient", "back_gradient_solve"]


@dataclasses.dataclass(frozen=True)
class _BGConfig:
    steps: int
    learning_rate: float
    momentum: float  # 0.0 for plain gradient descent
    exact: bool
    radix_bits: int
    num: int
    den: int
    limbs: int
    on_failure: str


def _split_diff(tree):
    """Leaves of ``tree`` split into differentiable (inexact) ones and the rest, with a merge function."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    mask = [is_inexact(leaf) for leaf in leaves]
    diff = [leaf for leaf, m in zip(leaves, mask) if m]
    rest = [leaf for leaf, m in zip(leaves, mask) if not m]

    def merge(diff_leaves):
        it_d, it_r = iter(diff_leaves), iter(rest)
        return jax.tree_util.tree_unflatten(treedef, [next(it_d) if m else next(it_r) for m in mask])

    def cotangent(diff_bars):
        it = iter(diff_bars)
        out = [
            next(it) if m else np.zeros(np.shape(leaf), dtype=jax.dtypes.float0)
            for leaf, m in zip(leaves, mask)
        ]
        return jax.tree_util.tree_unflatten(treedef, out)

    return diff, merge, cotangent


def _fixed_scale(cfg):
    return float(2.0 ** cfg.radix_bits)


def _bg_forward(gflat, cfg: _BGConfig, x0, operands):
    """Forward T steps; returns (x_T, final carry, ok flag)."""
    ts = jnp.arange(cfg.steps, dtype=jnp.int32)
    lr = cfg.learning_rate
    if not cfg.exact:
        if cfg.momentum == 0.0:

            def body(x, t):
                return x - lr * gflat(x, t, operands), None

            x = jax.lax.scan(body, x0, ts)[0]
            return x, (x, None), jnp.asarray(True)

        gamma = cfg.momentum

        def body(c, t):
            x, v = c
            v = gamma * v + gflat(x, t, operands)
            return (x - lr * v, v), None

        x, v = jax.lax.scan(body, (x0, jnp.zeros_like(x0)), ts)[0]
        return x, (x, v), jnp.asarray(True)

    scale = _fixed_scale(cfg)
    bound = 2.0 ** (61 - cfg.radix_bits)  # |x|, |v|, |g| must stay below (room for one addition)
    n, d = cfg.num, cfg.den
    dtype = x0.dtype

    def body(c, t):
        X, V, buf, ok = c
        x = (X.astype(jnp.float64) / scale).astype(dtype)
        g = gflat(x, t, operands)
        ok = ok & jnp.all(jnp.abs(g) < bound)
        G = jnp.round(g.astype(jnp.float64) * scale).astype(jnp.int64)
        V, buf, over = mul_gamma(V, buf, n, d)
        V = V + G
        X = X - jnp.round(lr * V.astype(jnp.float64)).astype(jnp.int64)
        ok = ok & ~over & jnp.all(jnp.abs(V) < bound * scale) & jnp.all(jnp.abs(X) < bound * scale)
        return (X, V, buf, ok), None

    X0 = jnp.round(x0.astype(jnp.float64) * scale).astype(jnp.int64)
    ok0 = jnp.all(jnp.abs(x0) < bound)
    buf0 = jnp.zeros((cfg.limbs,) + x0.shape, jnp.uint32)
    X, V, buf, ok = jax.lax.scan(body, (X0, jnp.zeros_like(X0), buf0, ok0), ts)[0]
    x = (X.astype(jnp.float64) / scale).astype(dtype)
    return x, (X, V, buf, X0), ok


def _check_forward(x, ok, cfg):
    return error_if(
        x,
        jnp.logical_not(ok),
        "BackGradient exact reversal: fixed-point overflow (|x|, |v| or |gradient| reached "
        f"2**{61 - cfg.radix_bits} with radix_bits={cfg.radix_bits}, or the information buffer "
        f"of {cfg.limbs} limbs overflowed). Lower radix_bits, rescale the problem, or use exact=False.",
        on_failure=cfg.on_failure,
        error=BilevelError,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _back_gradient(gflat, cfg, x0, operands):
    x, _, ok = _bg_forward(gflat, cfg, x0, operands)
    return _check_forward(x, ok, cfg)


def _back_gradient_fwd(gflat, cfg, x0, operands):
    x, carry, ok = _bg_forward(gflat, cfg, x0, operands)
    x = _check_forward(x, ok, cfg)
    return x, (carry, operands)


def _back_gradient_bwd(gflat, cfg, res, xbar):
    carry, operands = res
    diff, merge, cotangent = _split_diff(operands)
    lr = cfg.learning_rate
    ts = jnp.arange(cfg.steps, dtype=jnp.int32)
    zeros_diff = [jnp.zeros_like(leaf) for leaf in diff]

    def vjp_at(x, t, cot):
        g, pullback = jax.vjp(lambda x_, d_: gflat(x_, t, merge(d_)), x, diff)
        hx, hd = pullback(cot)
        return g, hx, hd

    def add(a, b):
        return [u + w for u, w in zip(a, b)]

    if not cfg.exact and cfg.momentum == 0.0:
        # Approximate reversal of x_{t+1} = x_t - lr g_t(x_t):  x_t ~ x_{t+1} + lr g_t(x_{t+1}).
        def body(c, t):
            x, xb, db = c
            x_prev = x + lr * gflat(x, t, operands)
            _, hx, hd = vjp_at(x_prev, t, -lr * xb)
            return (x_prev, xb + hx, add(db, hd)), None

        (x, xb, db), _ = jax.lax.scan(body, (carry[0], xbar, zeros_diff), ts, reverse=True)
        return xb, cotangent(db)

    gamma_f = cfg.num / cfg.den if cfg.exact else cfg.momentum

    if not cfg.exact:
        # Float reversal of heavy-ball momentum (unstable: divides rounding errors by gamma).
        def body(c, t):
            x, v, xb, vb, db = c
            x_prev = x + lr * v
            vb = vb - lr * xb
            g, hx, hd = vjp_at(x_prev, t, vb)
            v_prev = (v - g) / gamma_f
            return (x_prev, v_prev, xb + hx, gamma_f * vb, add(db, hd)), None

        x, v = carry
        init = (x, v, xbar, jnp.zeros_like(xbar), zeros_diff)
        (_, _, xb, _, db), _ = jax.lax.scan(body, init, ts, reverse=True)
        return xb, cotangent(db)

    scale = _fixed_scale(cfg)
    n, d = cfg.num, cfg.den
    X, V, buf, X0 = carry
    dtype = xbar.dtype

    def body(c, t):
        X, V, buf, xb, vb, db = c
        X = X + jnp.round(lr * V.astype(jnp.float64)).astype(jnp.int64)
        x = (X.astype(jnp.float64) / scale).astype(dtype)
        vb = vb - lr * xb
        g, hx, hd = vjp_at(x, t, vb)
        G = jnp.round(g.astype(jnp.float64) * scale).astype(jnp.int64)
        V, buf, _ = div_gamma(V - G, buf, n, d)
        return (X, V, buf, xb + hx, gamma_f * vb, add(db, hd)), None

    init = (X, V, buf, xbar, jnp.zeros_like(xbar), zeros_diff)
    (Xr, Vr, bufr, xb, _, db), _ = jax.lax.scan(body, init, ts, reverse=True)
    drift = jnp.maximum(jnp.max(jnp.abs(Xr - X0)), jnp.max(jnp.abs(Vr))).astype(jnp.float64)
    failed = (drift > 0) | jnp.any(bufr != 0)
    xb = error_if(
        xb,
        failed,
        "BackGradient exact reversal did not return to the initial state (drift {drift:.0f} units of "
        f"2**-{cfg.radix_bits}, or a non-empty information buffer): the gradient function is not "
        "deterministic between the forward and the backward pass.",
        on_failure=cfg.on_failure,
        error=BilevelError,
        fmt_args={"drift": drift},
    )
    return xb, cotangent(db)


_back_gradient.defvjp(_back_gradient_fwd, _back_gradient_bwd)


def back_gradient_solve(
    grad_fn: Callable,
    init: Any,
    args: tuple = (),
    *,
    steps: int,
    learning_rate: float,
    momentum: float | None = None,
    exact: bool | None = None,
    radix_bits: int = 40,
    on_failure: OnFailure = "raise",
):
    """``steps`` steps of gradient descent / heavy-ball momentum driven by ``grad_fn``, with the
    reverse-mode derivative computed by reversing the trajectory (no trajectory stored).

    Iteration (``optax.sgd``'s): ``v <- momentum * v + grad_fn(x, t, *args)``, ``x <- x - learning_rate * v``
    (``v = 0`` initially; plain gradient descent when ``momentum`` is ``None`` or 0).

    Args:
      grad_fn: pure ``grad_fn(params, t, *args) -> gradient`` (pytree like ``params``; ``t`` the step
        index, e.g. to pick a mini-batch); may close over arrays (they get derivatives too).
      init: initial params ``x_0`` (gets a derivative).
      args: tuple of hyperparameters and data (get derivatives; integer leaves get none).
      steps: number of steps ``T``.
      learning_rate, momentum: the step size and momentum ``0 <= momentum < 1`` (Python floats).
      exact: ``True``: bit-exact fixed-point reversal (needs ``momentum > 0`` and ``jax_enable_x64``);
        ``False``: float reversal (approximate for gradient descent, unstable for momentum); ``None``:
        exact iff ``momentum > 0``.
      radix_bits: fractional bits of the int64 fixed-point representation (exact mode): resolution
        ``2**-radix_bits``, range ``|x|, |v|, |g| < 2**(61 - radix_bits)``.
      on_failure: policy for fixed-point overflow and for a reversal that does not return to
        ``x_0`` exactly (``"raise"``, ``"warn"``, ``"ignore"``).

    Returns:
      ``x_T`` (pytree like ``init``); reverse-mode differentiable in ``init``, ``args`` and closed-over
      arrays (``jax.grad``/``vjp``, also under ``jit``/``vmap``; not ``jvp``).
    """
    if not callable(grad_fn):
        raise TypeError(f"argument 'grad_fn' must be callable, got {type(grad_fn).__name__}")
    steps = check_steps("steps", steps)
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float, np.floating)):
        raise ValueError(f"argument 'learning_rate' must be a Python float, got {learning_rate!r}")
    if not learning_rate > 0:
        raise ValueError(f"argument 'learning_rate' must be > 0, got {learning_rate!r}")
    mom = 0.0 if momentum is None else momentum
    if isinstance(mom, bool) or not isinstance(mom, (int, float, np.floating)) or not 0.0 <= mom < 1.0:
        raise ValueError(f"argument 'momentum' must be None or a float in [0, 1), got {momentum!r}")
    if exact is None:
        exact = mom > 0.0
    if exact and mom == 0.0:
        raise ValueError(
            "argument 'exact': plain gradient descent (momentum None or 0) cannot be reversed exactly "
            "(x_t solves x_t - lr*grad(x_t) = x_{t+1}); use exact=False (first-order reversal) or momentum > 0"
        )
    if not is_int(radix_bits) or not 8 <= radix_bits <= 52:
        raise ValueError(f"argument 'radix_bits' must be an int in [8, 52], got {radix_bits!r}")
    check_on_failure(on_failure)
    if exact and not jax.config.jax_enable_x64:
        raise ValueError(
            "argument 'exact': exact reversal uses int64 fixed-point arithmetic; enable it with "
            "jax.config.update('jax_enable_x64', True), or use exact=False"
        )
    if exact:
        frac = momentum_fraction(mom)
        num, den, limbs = frac.numerator, frac.denominator, information_buffer_limbs(steps, mom)
    else:
        num, den, limbs = 0, 1, 0
    cfg = _BGConfig(steps, float(learning_rate), float(mom), bool(exact), int(radix_bits), num, den, limbs, on_failure)

    args = as_jax_args(args)
    flat0, unravel = ravel_pytree(init)
    if not jnp.issubdtype(flat0.dtype, jnp.floating):
        raise ValueError(f"argument 'init' must hold floating-point arrays, got dtype {flat0.dtype}")
    conv, consts = jax.closure_convert(grad_fn, init, jnp.asarray(0, jnp.int32), *args)
    nargs = len(args)

    def gflat(xf, t, operands):
        a, c = operands[:nargs], operands[nargs:]
        g = conv(unravel(xf), t, *a, *c)
        gf, _ = ravel_pytree(g)
        if gf.shape != xf.shape:
            raise ValueError(f"grad_fn must return a pytree like params: got {gf.shape[0]} values for {xf.shape[0]}")
        return gf.astype(xf.dtype)

    out = _back_gradient(gflat, cfg, flat0, tuple(args) + tuple(consts))
    return unravel(out)


@dataclasses.dataclass(frozen=True)
class BackGradient:
    """Back-gradient (reversible learning) hypergradient of gradient descent / momentum SGD.

    See the module docstring for the iteration, the reversal and its exactness.

    Attributes:
      steps: number of inner steps ``T`` (default ``solver.maxiter``).
      exact: ``True``/``False``/``None`` (exact iff momentum > 0), see :func:`back_gradient_solve`.
      learning_rate, momentum: the iteration's constants. ``None`` (default): taken from the solver,
        which must then be a :class:`bilevel.solvers.GradientDescent`; if ``learning_rate`` is given
        the solver is only used for its ``maxiter`` and ``momentum`` defaults to plain GD.
      radix_bits: fixed-point resolution of exact reversal.
      batches: optional :class:`MiniBatches`.
      on_failure: policy for overflow / inexact reversal.
    """

    steps: int | None = None
    exact: bool | None = None
    learning_rate: float | None = None
    momentum: float | None = None
    radix_bits: int = 40
    batches: MiniBatches | None = None
    on_failure: OnFailure = "raise"

    def __post_init__(self):
        if self.steps is not None:
            check_steps("steps", self.steps)
        if self.exact not in (None, True, False):
            raise ValueError(f"argument 'exact' must be True, False or None, got {self.exact!r}")
        if self.learning_rate is None and self.momentum is not None:
            raise ValueError("argument 'momentum' needs an explicit 'learning_rate' too (or take both from the solver)")
        check_on_failure(self.on_failure)

    def hyperparameters(self, solver) -> tuple[float, float | None]:
        """``(learning_rate, momentum)`` of the iteration, from the fields or a GradientDescent solver."""
        if self.learning_rate is not None:
            return self.learning_rate, self.momentum
        if not isinstance(solver, GradientDescent):
            raise ValueError(
                "argument 'solver': BackGradient reverses gradient descent and momentum SGD only, so the "
                "solver must be bilevel.solvers.GradientDescent (got "
                f"{type(solver).__name__}); or give BackGradient(learning_rate=..., momentum=...)"
            )
        lr = solver.learning_rate
        if callable(lr):
            raise ValueError("argument 'solver': BackGradient needs a constant learning_rate, not a schedule")
        return lr, solver.momentum

    def solve(self, loss, solver, init, args):
        lr, mom = self.hyperparameters(solver)
        steps = resolve_steps(self.steps, solver)
        args = as_jax_args(args)
        select = selector(self.batches, args)

        def grad_fn(x, t, *a):
            return jax.grad(loss)(x, *select(a, t))

        return back_gradient_solve(
            grad_fn,
            init,
            args,
            steps=steps,
            learning_rate=lr,
            momentum=mom,
            exact=self.exact,
            radix_bits=self.radix_bits,
            on_failure=self.on_failure,
        )
