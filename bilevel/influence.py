r"""Influence functions (Koh & Liang, 2017, "Understanding black-box predictions via influence functions", ICML).

Setting
-------
A model with parameters :math:`\theta` (any pytree) is trained on :math:`z_1, \dots, z_n` by minimizing

.. math::  R(\theta) = \frac1n \sum_{i=1}^n L(z_i, \theta) + \Omega(\theta),
           \qquad \hat\theta = \arg\min_\theta R(\theta),

with a per-example loss ``loss(params, example) -> scalar`` (``example`` a pytree such as ``(x, y)``;
data sets are the same pytrees with a leading axis of length ``n``) and an optional regularizer
``reg_fn(params) -> scalar`` (:math:`\Omega`). :math:`H = \nabla^2_\theta R(\hat\theta)` is the Hessian
of the *whole* training objective (built by :func:`training_objective`), or of any ``objective(params)``
the caller passes instead (e.g. a different regularizer, or a Gauss-Newton surrogate), optionally damped:
:math:`H + \lambda I` with :math:`\lambda` the ``ridge`` of the linear solver (Koh & Liang, Sec. 4.2,
for non-convex models).
Every function here is pure and jit-able (the callables are static; wrap them with a closure before
:func:`jax.jit`) and vectorised with :func:`jax.vmap` — there are no Python loops over examples.

Sign and scale conventions (exactly those of Koh & Liang, Sec. 2.1–2.2)
----------------------------------------------------------------------
Upweighting a point :math:`z` by :math:`\epsilon`, i.e. minimizing :math:`R(\theta) + \epsilon L(z, \theta)`:

.. math::
    \mathcal I_{\text{up,params}}(z) &= \frac{d\hat\theta_{\epsilon,z}}{d\epsilon}\Big|_{\epsilon=0}
        = -H^{-1}\nabla_\theta L(z, \hat\theta), \\
    \mathcal I_{\text{up,loss}}(z, z_{\text{test}}) &= \frac{dL(z_{\text{test}}, \hat\theta_{\epsilon,z})}{d\epsilon}\Big|_{\epsilon=0}
        = -\nabla_\theta L(z_{\text{test}}, \hat\theta)^\top H^{-1}\nabla_\theta L(z, \hat\theta)
        = -s_{\text{test}}^\top \nabla_\theta L(z, \hat\theta),

with :math:`s_{\text{test}} = H^{-1}\nabla_\theta L(z_{\text{test}}, \hat\theta)` (:func:`compute_s_test`).
A *positive* :math:`\mathcal I_{\text{up,loss}}` means that upweighting :math:`z` *increases* the test loss
(the point is harmful to that test point); a negative one means it is helpful.

Removing :math:`z_i` from the training set is :math:`\epsilon = -1/n` (the other examples keep their
weight :math:`1/n` and :math:`\Omega` is unchanged), so to first order

.. math::  L(z_{\text{test}}, \hat\theta_{-i}) - L(z_{\text{test}}, \hat\theta)
           \approx -\frac1n \mathcal I_{\text{up,loss}}(z_i, z_{\text{test}})
           = \frac1n s_{\text{test}}^\top \nabla_\theta L(z_i, \hat\theta),

which :func:`predicted_loo_change` returns (positive: the test loss goes *up* when :math:`z_i` is
removed, i.e. :math:`z_i` was helpful). The exact counterpart is retraining with sample weight 0 for
:math:`z_i` and the mean still over :math:`n` (``training_objective(..., weights=w)`` with ``w_i = 0``).

Perturbing the input of a training point, :math:`z = (x, y) \to z_\delta = (x + \delta, y)`:

.. math::  \mathcal I_{\text{pert,loss}}(z, z_{\text{test}})^\top
           = \nabla_\delta L(z_{\text{test}}, \hat\theta_{z_\delta,-z})\big|_{\delta=0}
           = -s_{\text{test}}^\top \nabla_x\nabla_\theta L(z, \hat\theta)
           = \nabla_x \mathcal I_{\text{up,loss}}(z, z_{\text{test}}),

per unit :math:`\epsilon` like the paper: moving the mass :math:`1/n` of :math:`z` in :math:`R` to
:math:`z_\delta` changes the test loss by :math:`\approx \frac1n\mathcal I_{\text{pert,loss}}^\top\delta`.
:func:`influence_perturbation` returns this gradient (the direction an influence-based poisoning attack
ascends to increase the test loss) as the gradient over :math:`x` of
:math:`-\langle s_{\text{test}}, \nabla_\theta L((x, y), \hat\theta)\rangle` with :math:`s_{\text{test}}`
(hence :math:`H`) held fixed.

Inverse Hessian-vector products
-------------------------------
:math:`H^{-1}v` is never formed as a matrix unless a direct solver is chosen: :func:`inverse_hvp`
hands the matrix-free product (:func:`bilevel.hvp.hessian_matvec`) to the ``linear_solver``, a solver
object of :mod:`bilevel.linear_solve` (``CG()`` (default, ``"cg"``), ``Cholesky()``, ``LU()``,
``GMRES()``, ``Neumann(alpha=...)``, ``LiSSA(scale=..., depth=...)`` ...) that carries its own settings,
the damping :math:`\lambda` included as its ``ridge``. The relative residual
:math:`\lVert (H + \lambda I)x - v\rVert / \lVert v\rVert` is checked by the one convergence check of
:func:`bilevel.linear_solve.check_solution`: a non-finite residual or one above the solver's
``failure_tol`` raises :class:`~bilevel.ConvergenceError` (``on_failure="raise"``) or warns — a failed
solve never passes silently as NaN. LiSSA with a stochastic Hessian (Agarwal, Bullins & Hazan 2017; the
estimator of Koh & Liang, Sec. 3) is ``LiSSA(batch_size=b, key=key, ...)``: each recursion step uses
the Hessian of the regularized mean loss over ``b`` training points drawn without replacement
(:func:`sampled_hessian_matvec`).

References: P. W. Koh & P. Liang, ICML 2017; R. D. Cook & S. Weisberg, *Residuals and Influence in
Regression*, 1982; N. Agarwal, B. Bullins & E. Hazan, JMLR 18 (2017).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from bilevel._checks import OnFailure, check_on_failure, validate_finite
from bilevel.hvp import hessian_matvec
from bilevel.linear_solve import LinearSolverLike, LiSSA, as_linear_solver, check_solution

__all__ = [
    "training_objective",
    "per_example_grads",
    "sampled_hessian_matvec",
    "inverse_hvp",
    "compute_s_test",
    "influence_params",
    "influence_loss",
    "influence_perturbation",
    "predicted_loo_change",
]

Loss = Callable[[Any, Any], jax.Array]

_REDUCTIONS = (None, "sum", "mean")


# --------------------------------------------------------------------------------------------------
# small pytree helpers


def _num_examples(data, name: str) -> int:
    leaves = jax.tree_util.tree_leaves(data)
    if not leaves:
        raise ValueError(f"argument {name!r} must be a pytree of arrays with a leading example axis")
    sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) > 0 else None for leaf in leaves}
    if None in sizes:
        raise ValueError(f"argument {name!r}: every leaf needs a leading example axis, found a scalar leaf")
    if len(sizes) != 1:
        raise ValueError(f"argument {name!r}: leaves disagree on the number of examples: {sorted(sizes)}")
    n = sizes.pop()
    if n == 0:
        raise ValueError(f"argument {name!r} holds no examples")
    return int(n)


def _take(data, idx):
    return jax.tree_util.tree_map(lambda a: jnp.take(a, idx, axis=0), data)


def _batched_dot(a, b):
    """``(m, n)`` matrix of inner products between the batched pytrees ``a`` (leading m) and ``b`` (leading n)."""
    terms = [
        jnp.reshape(la, (la.shape[0], -1)) @ jnp.reshape(lb, (lb.shape[0], -1)).T
        for la, lb in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    ]
    return sum(terms[1:], terms[0])


def _neg(tree):
    return jax.tree_util.tree_map(jnp.negative, tree)


def _check_reduction(reduction) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


# --------------------------------------------------------------------------------------------------
# objective, gradients, Hessian products


def training_objective(loss: Loss, train_data, reg_fn: Callable | None = None, weights=None) -> Callable:
    r"""The training objective :math:`R(\theta) = \frac1n\sum_i w_i L(z_i, \theta) + \Omega(\theta)`.

    Args:
      loss: per-example loss ``loss(params, example) -> scalar``.
      train_data: pytree of arrays with a leading axis of length ``n`` (e.g. ``(X, y)``).
      reg_fn: optional regularizer ``reg_fn(params) -> scalar`` (:math:`\Omega`).
      weights: optional ``(n,)`` sample weights :math:`w_i` (default 1). The mean is over ``n``,
        without renormalization, so ``w_i = 0`` is exactly the removal :math:`\epsilon = -1/n` of
        Koh & Liang (the leave-one-out objective whose change :func:`predicted_loo_change` predicts).

    Returns:
      ``objective(params) -> scalar`` (pure; per-example losses are vmapped).
    """
    n = _num_examples(train_data, "train_data")
    if weights is not None and jnp.shape(weights) != (n,):
        raise ValueError(f"argument 'weights' must have shape ({n},), got {jnp.shape(weights)}")

    def objective(params):
        per_example = jax.vmap(loss, in_axes=(None, 0))(params, train_data)
        if weights is not None:
            per_example = jnp.asarray(weights, per_example.dtype) * per_example
        value = jnp.mean(per_example)
        if reg_fn is not None:
            value = value + reg_fn(params)
        return value

    return objective


def per_example_grads(loss: Loss, params, data, *, batch_size: int | None = None):
    r""":math:`\nabla_\theta L(z_i, \theta)` for every example: a pytree like ``params`` with a leading axis ``n``.

    Vmapped over the examples; with ``batch_size`` the examples are processed in chunks of that size
    (:func:`jax.lax.map`) to bound memory.
    """
    _num_examples(data, "data")
    grad = jax.grad(loss)
    if batch_size is None:
        return jax.vmap(grad, in_axes=(None, 0))(params, data)
    return jax.lax.map(lambda z: grad(params, z), data, batch_size=int(batch_size))


def sampled_hessian_matvec(
    loss: Loss, params, train_data, *, batch_size: int, reg_fn: Callable | None = None
) -> Callable[[Any, jax.Array], Any]:
    r"""Stochastic Hessian-vector product for LiSSA: ``sample_matvec(v, key)``.

    Draws ``batch_size`` training indices uniformly *without* replacement with ``key`` and returns
    :math:`\big(\nabla^2_\theta[\frac1b\sum_{i\in B}L(z_i,\theta) + \Omega(\theta)]\big)\,v`, an unbiased
    estimate of :math:`\nabla^2 R(\theta)\,v` (Koh & Liang, Sec. 3: "uniformly sample t points ...").
    Pass it to ``LiSSA(key=...)(matvec, b, sample_matvec=...)`` or :func:`inverse_hvp`; the other
    influence functions build it themselves for ``LiSSA(batch_size=...)``.
    """
    n = _num_examples(train_data, "train_data")
    batch_size = int(batch_size)
    if not 1 <= batch_size <= n:
        raise ValueError(f"hessian batch_size must be in [1, {n}], got {batch_size}")

    def sample_matvec(v, key):
        idx = jax.random.choice(key, n, (batch_size,), replace=False)
        batch_objective = training_objective(loss, _take(train_data, idx), reg_fn)
        return jax.jvp(jax.grad(batch_objective), (params,), (v,))[1]

    return sample_matvec


# --------------------------------------------------------------------------------------------------
# inverse Hessian-vector products


def _stochastic_lissa(solver) -> bool:
    return isinstance(solver, LiSSA) and solver.batch_size is not None


def inverse_hvp(
    objective: Callable,
    params,
    v,
    *,
    linear_solver: LinearSolverLike = "cg",
    on_failure: OnFailure = "raise",
    sample_matvec: Callable | None = None,
    return_residual: bool = False,
):
    r"""Solve :math:`(\nabla^2\,\mathrm{objective}(\theta) + \lambda I)\,x = v` for :math:`x`, matrix-free.

    The Hessian is linearized once at ``params`` (:func:`bilevel.hvp.hessian_matvec`, forward-over-
    reverse products) and the system handed to ``linear_solver``, whose ``ridge`` is :math:`\lambda`.

    Args:
      objective: scalar ``objective(params)``, e.g. :func:`training_objective`.
      params: where the Hessian is taken (normally the trained :math:`\hat\theta`).
      v: pytree like ``params`` (the right-hand side).
      linear_solver: a solver object of :mod:`bilevel.linear_solve` (``CG(ridge=0.01)``,
        ``Cholesky()``, ``LiSSA(scale=..., depth=...)`` ...), a name (``"cg"``) or a callable
        ``solve(matvec, b)``. Its ``ridge`` is the damping :math:`\lambda \ge 0` (needed when the
        Hessian is singular or indefinite; Koh & Liang, Sec. 4.2).
      on_failure: ``"raise"`` (default: :class:`~bilevel.ConvergenceError`), ``"warn"`` or ``"ignore"``
        when the relative residual is not finite or above the solver's
        :meth:`~bilevel.linear_solve.LinearSolver.failure_tol` (1 for a stochastic estimate, whose
        residual is noisy by design: 1 is the residual of ``x = 0``).
      sample_matvec: for :class:`~bilevel.linear_solve.LiSSA` only: a stochastic Hessian-vector
        product ``sample_matvec(v, key)`` (see :func:`sampled_hessian_matvec`); the LiSSA object must
        carry the ``key``.
      return_residual: also return the relative residual.

    Returns:
      :math:`x` (pytree like ``v``), or ``(x, residual)`` with ``return_residual=True``.
    """
    check_on_failure(on_failure)
    solver = as_linear_solver(linear_solver)
    validate_finite("params", params)
    validate_finite("v", v)
    if sample_matvec is not None and not isinstance(solver, LiSSA):
        raise ValueError(f"argument 'sample_matvec' needs linear_solver=LiSSA(...), got {solver!r}")
    matvec = hessian_matvec(objective, params)
    if sample_matvec is None:
        if _stochastic_lissa(solver):
            raise ValueError(
                "argument 'linear_solver': LiSSA(batch_size=...) needs a sampled Hessian; inverse_hvp has no "
                "training data to sample from, so pass sample_matvec= (or use compute_s_test and friends)"
            )
        sol = solver(matvec, v)
    else:
        sol = solver(matvec, v, sample_matvec=sample_matvec)
    x = check_solution(
        sol, solver, v, on_failure=on_failure, context="influence: the inverse Hessian-vector product",
        failure_tol=1.0 if sample_matvec is not None else None,
    )
    return (x, sol.residual) if return_residual else x


def _batched_inverse_hvp(loss, params, train_data, vs, *, reg_fn, objective, linear_solver, on_failure, batched=True):
    """H^{-1} v for a batch of right-hand sides (leading axis), one Hessian linearization, one check."""
    check_on_failure(on_failure)
    solver = as_linear_solver(linear_solver)
    validate_finite("params", params)
    if objective is None:
        objective = training_objective(loss, train_data, reg_fn)
    matvec = hessian_matvec(objective, params)
    if _stochastic_lissa(solver):
        if solver.key is None:
            raise ValueError("argument 'linear_solver': LiSSA(batch_size=...) needs a PRNG key (LiSSA(key=...))")
        sample = sampled_hessian_matvec(loss, params, train_data, batch_size=solver.batch_size, reg_fn=reg_fn)

        def one(v):
            return solver(matvec, v, sample_matvec=sample)
    else:

        def one(v):
            return solver(matvec, v)

    sol = jax.vmap(one)(vs) if batched else one(vs)
    return check_solution(sol, solver, vs, on_failure=on_failure, context="influence: the inverse Hessian-vector product")


_SOLVE_DOC = r"""
      reg_fn: regularizer :math:`\Omega(\theta)` of the training objective (default none).
      objective: the full training objective ``objective(params)`` whose Hessian is :math:`H`; default
        ``training_objective(loss, train_data, reg_fn)``. Its scale must match the convention
        :math:`\frac1n\sum_i L + \Omega` (one example has weight :math:`1/n`).
      linear_solver: the solver of :math:`(H + \lambda I)x = v`, as in :func:`inverse_hvp` (its
        ``ridge`` is the damping :math:`\lambda`). ``LiSSA(batch_size=b, key=key)`` estimates every
        Hessian-vector product on ``b`` training points drawn without replacement (Koh & Liang, Sec. 3),
        built from ``loss``, ``train_data`` and ``reg_fn`` (a custom ``objective`` must agree with them).
      on_failure: as in :func:`inverse_hvp`."""


def compute_s_test(
    loss: Loss,
    params,
    train_data,
    test_data,
    *,
    reduction: str | None = None,
    reg_fn: Callable | None = None,
    objective: Callable | None = None,
    linear_solver: LinearSolverLike = "cg",
    on_failure: OnFailure = "raise",
):
    r""":math:`s_{\text{test}} = H^{-1}\nabla_\theta L(z_{\text{test}}, \hat\theta)` (Koh & Liang, Sec. 3).

    Args:
      loss: per-example loss ``loss(params, example)``.
      params: the trained parameters :math:`\hat\theta`.
      train_data: training set (leading axis ``n``), defines :math:`H`.
      test_data: test examples (leading axis ``n_test``).
      reduction: ``None``: one :math:`s_{\text{test}}` per test point (the solves are vmapped), a pytree
        with leading axis ``n_test``; ``"sum"`` / ``"mean"``: a single :math:`s_{\text{test}}` for the
        summed / mean test loss (one solve), a pytree like ``params``.
      @SOLVE_ARGS@
    """
    _check_reduction(reduction)
    _num_examples(train_data, "train_data")
    _num_examples(test_data, "test_data")
    if reduction is None:
        rhs = per_example_grads(loss, params, test_data)
    else:
        reduce = jnp.sum if reduction == "sum" else jnp.mean

        def test_objective(p):
            return reduce(jax.vmap(loss, in_axes=(None, 0))(p, test_data))

        rhs = jax.grad(test_objective)(params)
    return _batched_inverse_hvp(
        loss, params, train_data, rhs, reg_fn=reg_fn, objective=objective, linear_solver=linear_solver,
        on_failure=on_failure, batched=reduction is None,
    )


# --------------------------------------------------------------------------------------------------
# influence functions


def influence_params(
    loss: Loss,
    params,
    train_data,
    train_points=None,
    *,
    reg_fn: Callable | None = None,
    objective: Callable | None = None,
    linear_solver: LinearSolverLike = "cg",
    on_failure: OnFailure = "raise",
):
    r""":math:`\mathcal I_{\text{up,params}}(z) = -H^{-1}\nabla_\theta L(z, \hat\theta)` for a batch of points.

    The derivative of the trained parameters w.r.t. the weight :math:`\epsilon` of ``z`` in
    :math:`R + \epsilon L(z, \cdot)`. Removing training point :math:`z_i` changes the parameters by
    :math:`\approx -\frac1n\mathcal I_{\text{up,params}}(z_i)`.

    Args:
      loss, params, train_data: as in :func:`compute_s_test`.
      train_points: the points ``z`` (leading axis ``m``; need not belong to the training set, e.g.
        candidate poison points); default ``train_data``.
      @SOLVE_ARGS@

    Returns:
      A pytree like ``params`` with a leading axis ``m`` (one solve per point, vmapped).
    """
    _num_examples(train_data, "train_data")
    points = train_data if train_points is None else train_points
    _num_examples(points, "train_points")
    grads = per_example_grads(loss, params, points)
    x = _batched_inverse_hvp(
        loss, params, train_data, grads, reg_fn=reg_fn, objective=objective, linear_solver=linear_solver,
        on_failure=on_failure,
    )
    return _neg(x)


def _resolve_s_test(loss, params, train_data, test_data, s_test, reduction, kw):
    if s_test is not None:
        return s_test
    if test_data is None:
        raise ValueError("pass test_data or a precomputed s_test")
    return compute_s_test(loss, params, train_data, test_data, reduction=reduction, **kw)


def influence_loss(
    loss: Loss,
    params,
    train_data,
    test_data=None,
    *,
    train_points=None,
    reduction: str | None = None,
    s_test=None,
    train_batch_size: int | None = None,
    reg_fn: Callable | None = None,
    objective: Callable | None = None,
    linear_solver: LinearSolverLike = "cg",
    on_failure: OnFailure = "raise",
):
    r""":math:`\mathcal I_{\text{up,loss}}(z, z_{\text{test}}) = -\nabla_\theta L(z_{\text{test}})^\top H^{-1}\nabla_\theta L(z)`
    for all train × test pairs.

    :math:`s_{\text{test}}` is computed once per test point (:func:`compute_s_test`, vmapped solves), then
    the matrix :math:`-s_{\text{test},j}^\top\nabla_\theta L(z_i)` from vmapped per-example gradients —
    ``n_test`` linear solves and ``m`` gradients in total, never ``n_test * m`` solves.

    Args:
      loss, params, train_data: as in :func:`compute_s_test`.
      test_data: test examples (leading axis ``n_test``); may be omitted when ``s_test`` is given.
      train_points: the points ``z`` whose influence is wanted (leading axis ``m``); default
        ``train_data``.
      reduction: ``None`` for one row per test point; ``"sum"``/``"mean"`` for the influence on the
        summed / mean test loss.
      s_test: a precomputed :func:`compute_s_test` result (matching ``reduction``), skips the solves.
      train_batch_size: process the points in chunks of this size (memory bound, :func:`jax.lax.map`).
      @SOLVE_ARGS@

    Returns:
      ``(n_test, m)`` array (``reduction=None``) or ``(m,)``. Positive: upweighting ``z`` raises the
      test loss.
    """
    _check_reduction(reduction)
    kw = dict(reg_fn=reg_fn, objective=objective, linear_solver=linear_solver, on_failure=on_failure)
    _num_examples(train_data, "train_data")
    s = _resolve_s_test(loss, params, train_data, test_data, s_test, reduction, kw)
    points = train_data if train_points is None else train_points
    _num_examples(points, "train_points")
    s_batched = s if reduction is None else jax.tree_util.tree_map(lambda a: a[None], s)
    grad = jax.grad(loss)
    if train_batch_size is None:
        grads = jax.vmap(grad, in_axes=(None, 0))(params, points)
        out = -_batched_dot(s_batched, grads)  # (n_test, m)
    else:
        def chunk(z):
            g = jax.tree_util.tree_map(lambda a: a[None], grad(params, z))
            return -_batched_dot(s_batched, g)[:, 0]

        out = jax.lax.map(chunk, points, batch_size=int(train_batch_size)).T
    return out if reduction is None else out[0]


def _input_accessors(example, input_index):
    """(x, rebuild) where ``rebuild(x')`` is ``example`` with its input replaced by ``x'``."""
    if input_index is None:
        return example, lambda x: x
    if not isinstance(example, (tuple, list)):
        raise ValueError(
            "influence_perturbation: with input_index set, examples must be tuples/lists like (x, y); "
            f"got {type(example).__name__}. Use input_index=None to differentiate the whole example."
        )
    idx = int(input_index)

    def rebuild(x):
        items = list(example)
        items[idx] = x
        return type(example)(items)

    return example[idx], rebuild


def influence_perturbation(
    loss: Loss,
    params,
    train_data,
    test_data=None,
    *,
    train_points=None,
    input_index: int | None = 0,
    reduction: str | None = None,
    s_test=None,
    reg_fn: Callable | None = None,
    objective: Callable | None = None,
    linear_solver: LinearSolverLike = "cg",
    on_failure: OnFailure = "raise",
):
    r""":math:`\mathcal I_{\text{pert,loss}}(z, z_{\text{test}}) = -\big(s_{\text{test}}^\top\nabla_x\nabla_\theta L(z, \hat\theta)\big)^\top`
    per training point: the gradient w.r.t. the training *input* ``x`` of
    :math:`\mathcal I_{\text{up,loss}}(z, z_{\text{test}})` (Koh & Liang, Sec. 2.2).

    Computed as :math:`\nabla_x\big[-\langle s_{\text{test}}, \nabla_\theta L((x, y), \hat\theta)\rangle\big]`
    with :math:`s_{\text{test}}` fixed: one VJP of :math:`x\mapsto\nabla_\theta L` per point, pulled back
    for all test points at once (vmapped). Moving :math:`x_i` by :math:`\delta` (the other points
    fixed, retraining) changes the test loss by :math:`\approx\frac1n\mathcal I_{\text{pert,loss}}^\top\delta`;
    an influence-based poisoning attack ascends this direction.

    Args:
      loss, params, train_data, test_data, train_points, reduction, s_test: as in :func:`influence_loss`.
      input_index: which element of an example tuple is the input ``x`` (default 0, for ``(x, y)``);
        ``None`` differentiates w.r.t. the whole example pytree (all leaves must be float).
      @SOLVE_ARGS@

    Returns:
      Arrays shaped like the input ``x`` with leading axes ``(n_test, m)`` (``reduction=None``) or
      ``(m,)`` (a pytree if the input is one).
    """
    _check_reduction(reduction)
    kw = dict(reg_fn=reg_fn, objective=objective, linear_solver=linear_solver, on_failure=on_failure)
    _num_examples(train_data, "train_data")
    s = _resolve_s_test(loss, params, train_data, test_data, s_test, reduction, kw)
    points = train_data if train_points is None else train_points
    _num_examples(points, "train_points")

    def per_point(z):
        x, rebuild = _input_accessors(z, input_index)
        _, pullback = jax.vjp(lambda x_: jax.grad(loss)(params, rebuild(x_)), x)
        if reduction is None:
            return jax.vmap(lambda sj: _neg(pullback(sj)[0]))(s)  # leading n_test
        return _neg(pullback(s)[0])

    out = jax.vmap(per_point)(points)  # leading (m, n_test) or (m,)
    if reduction is None:
        out = jax.tree_util.tree_map(lambda a: jnp.swapaxes(a, 0, 1), out)
    return out


def predicted_loo_change(
    loss: Loss,
    params,
    train_data,
    test_data=None,
    *,
    reduction: str | None = None,
    s_test=None,
    train_batch_size: int | None = None,
    reg_fn: Callable | None = None,
    objective: Callable | None = None,
    linear_solver: LinearSolverLike = "cg",
    on_failure: OnFailure = "raise",
):
    r"""Predicted change of the test loss when each training point is removed (leave-one-out).

    .. math:: L(z_{\text{test}}, \hat\theta_{-i}) - L(z_{\text{test}}, \hat\theta)
              \approx -\frac1n\,\mathcal I_{\text{up,loss}}(z_i, z_{\text{test}})
              = \frac1n\, s_{\text{test}}^\top\nabla_\theta L(z_i, \hat\theta),

    removal being :math:`\epsilon = -1/n` in :math:`R + \epsilon L(z_i,\cdot)`, i.e. retraining on
    :math:`\frac1n\sum_{j\ne i}L(z_j, \theta) + \Omega(\theta)` (sample weight 0 for :math:`z_i`, the mean
    still over ``n``). Positive entries: removing :math:`z_i` increases the test loss (a helpful point).

    Args:
      loss, params, train_data, test_data, reduction, s_test, train_batch_size: as in
        :func:`influence_loss` (the points are all of ``train_data``, ``n`` its length).
      @SOLVE_ARGS@

    Returns:
      ``(n_test, n)`` array (``reduction=None``) or ``(n,)``.
    """
    n = _num_examples(train_data, "train_data")
    infl = influence_loss(
        loss, params, train_data, test_data, reduction=reduction, s_test=s_test,
        train_batch_size=train_batch_size, reg_fn=reg_fn, objective=objective, linear_solver=linear_solver,
        on_failure=on_failure,
    )
    return -infl / n


for _fn in (compute_s_test, influence_params, influence_loss, influence_perturbation, predicted_loo_change):
    if _fn.__doc__:  # None under python -OO
        _fn.__doc__ = _fn.__doc__.replace("      @SOLVE_ARGS@\n", _SOLVE_DOC.strip("\n") + "\n")
del _fn
