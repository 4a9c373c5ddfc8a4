r"""The three problems of benchopt's bilevel benchmark, built from arrays (no data loading here).

Each builder returns a :class:`Benchmark`: the :class:`~bilevel.stochastic.problem.BilevelProblem`,
the starting point, a ``metrics(z, x) -> dict`` function (pure, ``jit``-able; untimed by the driver)
whose ``"outer"`` entry is the objective the curves and the time-to-target use, and, where known,
the closed-form solution.

- :func:`quadratic_benchmark`: benchopt's simulated quadratic bilevel problem,

  .. math::

      g(z, x) = \frac1n\sum_i \tfrac12 z^\top A_i z + \tfrac12 x^\top B_i x + x^\top C_i z + a_i^\top z + b_i^\top x,

  and :math:`f` the same form with its own samples. As in benchopt every sample matrix has rank one
  (:math:`A_i = u_i u_i^\top` with :math:`u_i \sim \mathcal N(0, S^2)`, :math:`S` with a log-spaced
  spectrum so that :math:`\mathbb E A_i` has eigenvalues in :math:`[\mu, L]`;
  :math:`C_i = p_i q_i^\top` with :math:`\mathbb E C_i = U D V^\top`, singular values log-spaced in
  :math:`[\mu, L_{\rm cross}]`). The factors are stored instead of the matrices, which is the same
  function at :math:`O(d)` instead of :math:`O(d^2)` per sample (the benchopt baseline of
  ``experiments/bench_bilevel.py`` is given the same factored oracles). The value function
  :math:`F(x) = f(z^\star(x), x)` is quadratic: with :math:`z^\star(x) = Px + q`,
  :math:`P = -\bar A^{-1}\bar C^\top`, :math:`q = -\bar A^{-1}\bar a`,
  :math:`\nabla^2 F = P^\top \bar F P + \bar H + \bar K P + P^\top \bar K^\top` and
  :math:`x^\star = -(\nabla^2 F)^{-1}\nabla F(0)`; instances whose :math:`\nabla^2 F` is not positive
  definite are redrawn (benchopt does the same).
- :func:`logreg_benchmark`: :math:`\ell_2`-regularized logistic regression,
  :math:`g(z, x) = \frac1n\sum_i \log(1 + e^{-y_i a_i^\top z}) + \frac12\sum_j e^{x_j} z_j^2` (one
  weight per feature, or ``reg="scalar"``: :math:`\frac12 e^{x}\|z\|^2`), :math:`f` the validation
  logistic loss. ``"outer"`` is :math:`F(x)` with :math:`z^\star(x)` from a warm-started L-BFGS solve.
- :func:`datacleaning_benchmark`: data hyper-cleaning (Franceschi et al. 2017) with benchopt's
  model: multinomial logistic regression :math:`z \in \mathbb R^{d\times k}`,
  :math:`g(z, x) = \frac1n\sum_i \sigma(x_i)\,\mathrm{CE}(z; a_i, y_i) + C\|z\|^2` on corrupted
  training labels, :math:`f` the clean validation cross-entropy. ``"outer"`` is :math:`f` at the
  solver's current :math:`z` (the inner solve is too costly to evaluate at every checkpoint;
  benchopt reports validation error at the current :math:`z` too); the metrics add test accuracy and
  the AUC of :math:`\sigma(x)` separating clean from corrupted examples.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from bilevel.solvers import LBFGS
from bilevel.stochastic.problem import BilevelProblem, make_problem

__all__ = [
    "Benchmark",
    "quadratic_benchmark",
    "quadratic_inner_loss",
    "quadratic_outer_loss",
    "logreg_benchmark",
    "datacleaning_benchmark",
    "corrupt_labels",
    "auc",
]


@dataclasses.dataclass(frozen=True, eq=False)
class Benchmark:
    r"""A problem with its start point, metrics and (optional) closed-form solution.

    Attributes:
      problem: the :class:`BilevelProblem`.
      inner0, outer0: the starting point (benchopt's: :math:`z_0 = 0`, :math:`x_0 = -2`).
      metrics: ``metrics(z, x) -> dict`` of scalars, pure; ``"outer"`` is the tracked objective,
        ``"hypergrad_norm"`` (the norm of the exact hypergradient) where computable.
      solution: dict with ``"outer"`` (:math:`x^\star`), ``"inner"`` (:math:`z^\star(x^\star)`) and
        ``"value"`` (:math:`F(x^\star)`) when known in closed form, else ``None``.
      info: a JSON-able description (sizes, parameters).
    """

    problem: BilevelProblem
    inner0: Any
    outer0: Any
    metrics: Callable
    solution: dict | None = None
    info: dict = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.problem.name


# ------------------------------------------------------------------------------------------------
# quadratic


def quadratic_inner_loss(z, x, batch):
    """Mean over the batch rows of :math:`\\tfrac12 (u_i^\\top z)^2 + \\tfrac12 (w_i^\\top x)^2 +
    (p_i^\\top x)(q_i^\\top z) + a_i^\\top z + b_i^\\top x` (the factored quadratic; also the outer loss)."""
    uz = batch["u"] @ z
    wx = batch["w"] @ x
    cross = (batch["p"] @ x) * (batch["q"] @ z)
    return jnp.mean(0.5 * uz**2 + 0.5 * wx**2 + cross + batch["a"] @ z + batch["b"] @ x)


quadratic_outer_loss = quadratic_inner_loss


def _sqrt_spectrum(rng, d, lo, hi, zero_first=False):
    """A symmetric square root ``S`` whose square has eigenvalues log-spaced in [lo, hi]."""
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    if zero_first:
        diag = np.r_[0.0, np.logspace(np.log10(lo) / 2, np.log10(hi) / 2, d - 1)] if d > 1 else np.zeros(1)
    else:
        diag = np.logspace(np.log10(lo) / 2, np.log10(hi) / 2, d)
    return (q * diag) @ q.T


def _quadratic_samples(rng, n, d_in, d_out, L_in, L_out, L_cross, mu):
    """Factors of ``n`` rank-one samples (benchopt's ``gen_matrices``, written here)."""
    s_in = _sqrt_spectrum(rng, d_in, mu, L_in)
    s_out = _sqrt_spectrum(rng, d_out, mu, L_out, zero_first=True)
    U, _, Vt = np.linalg.svd(rng.standard_normal((d_out, d_in)))
    k = min(d_in, d_out)
    D = np.zeros((d_out, d_in))
    D[:k, :k] = np.diag(np.logspace(np.log10(mu), np.log10(L_cross), k))
    g = rng.standard_normal((n, d_in))
    return {
        "u": rng.standard_normal((n, d_in)) @ s_in,
        "w": rng.standard_normal((n, d_out)) @ s_out,
        "p": g @ (U @ D).T,  # p_i = U D g_i   (d_out)
        "q": g @ Vt.T,  # q_i = V g_i     (d_in): E[p q^T] = U D V^T
        "a": rng.standard_normal((n, d_in)),
        "b": rng.standard_normal((n, d_out)),
    }


def _quadratic_means(s):
    n = s["u"].shape[0]
    return {"A": s["u"].T @ s["u"] / n, "B": s["w"].T @ s["w"] / n, "C": s["p"].T @ s["q"] / n,
            "a": s["a"].mean(0), "b": s["b"].mean(0)}


def quadratic_benchmark(*, n_inner: int = 1024, n_outer: int = 1024, dim_inner: int = 100, dim_outer: int = 10,
                        mu: float = 0.1, L_inner_inner: float = 1.0, L_inner_outer: float = 1.0,
                        L_outer_inner: float = 1.0, L_outer_outer: float = 1.0, L_cross_inner: float = 0.1,
                        L_cross_outer: float = 0.1, seed: int = 2442, dtype=jnp.float32, max_tries: int = 20) -> Benchmark:
    """benchopt's quadratic bilevel problem with its closed-form solution (see the module docstring).

    ``L_inner_inner`` bounds the spectrum of :math:`\\bar A` (inner Hessian in ``z``),
    ``L_inner_outer`` that of the inner ``x`` block, ``L_outer_*`` the outer ones, ``L_cross_*`` the
    singular values of the cross terms; ``mu`` is the smallest eigenvalue. Raises ``ValueError`` if
    no instance with a positive definite :math:`\\nabla^2 F` is found in ``max_tries`` draws.
    """
    for name, v in (("n_inner", n_inner), ("n_outer", n_outer), ("dim_inner", dim_inner), ("dim_outer", dim_outer)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"argument {name!r} must be an int >= 1, got {v!r}")
    for name, v in (("mu", mu), ("L_inner_inner", L_inner_inner), ("L_inner_outer", L_inner_outer),
                    ("L_outer_inner", L_outer_inner), ("L_outer_outer", L_outer_outer),
                    ("L_cross_inner", L_cross_inner), ("L_cross_outer", L_cross_outer)):
        if not np.isfinite(v) or v <= 0:
            raise ValueError(f"argument {name!r} must be a finite number > 0, got {v!r}")
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        si = _quadratic_samples(rng, n_inner, dim_inner, dim_outer, L_inner_inner, L_inner_outer, L_cross_inner, mu)
        so = _quadratic_samples(rng, n_outer, dim_inner, dim_outer, L_outer_inner, L_outer_outer, L_cross_outer, mu)
        mi, mo = _quadratic_means(si), _quadratic_means(so)
        P = -np.linalg.solve(mi["A"], mi["C"].T)  # (d_in, d_out): z*(x) = P x + q
        q = -np.linalg.solve(mi["A"], mi["a"])
        hess = P.T @ mo["A"] @ P + mo["B"] + mo["C"] @ P + P.T @ mo["C"].T
        hess = 0.5 * (hess + hess.T)
        if np.linalg.eigvalsh(hess).min() > 1e-12:
            break
    else:
        raise ValueError(f"no quadratic instance with a positive definite value-function Hessian in {max_tries} draws")
    grad0 = P.T @ (mo["A"] @ q + mo["a"]) + mo["C"] @ q + mo["b"]
    x_star = -np.linalg.solve(hess, grad0)
    z_star = P @ x_star + q
    value = lambda x: float(0.5 * (P @ x + q) @ mo["A"] @ (P @ x + q) + 0.5 * x @ mo["B"] @ x
                            + x @ mo["C"] @ (P @ x + q) + mo["a"] @ (P @ x + q) + mo["b"] @ x)
    cast = lambda tree: jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), tree)
    problem = make_problem(quadratic_inner_loss, quadratic_outer_loss, cast(si), cast(so), name="quadratic")
    Pj, qj, Hj, g0j = cast(P), cast(q), cast(hess), cast(grad0)
    Ai, Ci, ai = cast(mi["A"]), cast(mi["C"]), cast(mi["a"])
    x_star_j, value_star = cast(x_star), value(x_star)

    def metrics(z, x):
        zs = Pj @ x + qj
        outer = problem.outer_full(zs, x)
        return {
            "outer": outer,
            "suboptimality": outer - value_star,
            "hypergrad_norm": jnp.linalg.norm(Hj @ x + g0j),
            "outer_distance": jnp.linalg.norm(x - x_star_j),
            "inner_distance": jnp.linalg.norm(z - zs),
            "inner_residual": jnp.linalg.norm(Ai @ z + Ci.T @ x + ai),
        }

    inner0 = jnp.zeros((dim_inner,), dtype)
    outer0 = jnp.full((dim_outer,), -2.0, dtype)
    info = {"n_inner": n_inner, "n_outer": n_outer, "dim_inner": dim_inner, "dim_outer": dim_outer, "mu": mu,
            "L_cross_inner": L_cross_inner, "L_cross_outer": L_cross_outer, "seed": seed,
            "value_star": value_star, "value_start": value(np.full(dim_outer, -2.0)),
            "hessian_eigs": [float(np.linalg.eigvalsh(hess).min()), float(np.linalg.eigvalsh(hess).max())]}
    solution = {"outer": x_star_j, "inner": cast(z_star), "value": value_star,
                "closed_form": {"P": Pj, "q": qj, "hessian": Hj, "grad0": g0j}}
    return Benchmark(problem, inner0, outer0, jax.jit(metrics), solution, info)


# ------------------------------------------------------------------------------------------------
# logistic regression with per-feature / scalar regularization


def _logistic(z, X, y):
    return jnp.mean(jax.nn.softplus(-y * (X @ z)))


def _check_xy(X, y, name):
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"argument {name!r}: X must be (n, d) and y (n,), got {X.shape} and {y.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"argument {name!r} contains NaN or inf")
    return X, y


def _pm1(y):
    y = np.asarray(y)
    labels = np.unique(y)
    if len(labels) > 2:
        raise ValueError(f"logistic regression needs binary labels, got {labels[:5]}...")
    if set(labels.tolist()) <= {-1, 1}:
        return y.astype(np.float32)
    return np.where(y == labels.max(), 1.0, -1.0).astype(np.float32)


def _inner_solve(loss, z0, x, maxiter):
    return LBFGS(maxiter=maxiter, tol=1e-7, on_failure="ignore").run(loss, z0, x)[0]


def logreg_benchmark(X_train, y_train, X_val, y_val, X_test=None, y_test=None, *, reg: str = "feature",
                     name: str = "logreg", dtype=jnp.float32, inner_maxiter: int = 300) -> Benchmark:
    r"""Logistic regression whose :math:`\ell_2` weights :math:`e^{x}` are selected on validation.

    Labels may be {0, 1} or {-1, +1}. ``reg="feature"`` (one weight per feature) or ``"scalar"``.
    Metrics: ``outer`` = :math:`F(x)`, ``inner_distance`` :math:`\|z - z^\star(x)\|`,
    ``inner_residual`` :math:`\|\nabla_z g(z, x)\|`, ``val_accuracy``/``test_accuracy`` of the solver's
    current :math:`z`.
    """
    if reg not in ("feature", "scalar"):
        raise ValueError(f"argument 'reg' must be 'feature' or 'scalar', got {reg!r}")
    X_train, y_train = _check_xy(X_train, y_train, "X_train/y_train")
    X_val, y_val = _check_xy(X_val, y_val, "X_val/y_val")
    if X_val.shape[1] != X_train.shape[1]:
        raise ValueError(f"argument 'X_val' has {X_val.shape[1]} features, X_train {X_train.shape[1]}")
    d = X_train.shape[1]

    def inner_loss(z, x, batch):
        weights = jnp.exp(x) if reg == "feature" else jnp.exp(x[0])
        return _logistic(z, batch["X"], batch["y"]) + 0.5 * jnp.sum(weights * z**2)

    def outer_loss(z, x, batch):
        return _logistic(z, batch["X"], batch["y"])

    inner_data = {"X": jnp.asarray(X_train, dtype), "y": jnp.asarray(_pm1(y_train), dtype)}
    outer_data = {"X": jnp.asarray(X_val, dtype), "y": jnp.asarray(_pm1(y_val), dtype)}
    problem = make_problem(inner_loss, outer_loss, inner_data, outer_data, name=name)
    test = None
    if X_test is not None:
        X_test, y_test = _check_xy(X_test, y_test, "X_test/y_test")
        test = (jnp.asarray(X_test, dtype), jnp.asarray(_pm1(y_test), dtype))

    def value_and_solution(x, z0):
        zs = _inner_solve(lambda z, x_: problem.inner_full(z, x_), z0, x, inner_maxiter)
        return problem.outer_full(zs, x), zs

    def metrics(z, x):
        outer, zs = value_and_solution(x, z)
        acc = lambda X, y, w: jnp.mean(jnp.sign(X @ w) == y)
        out = {
            "outer": outer,
            "inner_distance": jnp.linalg.norm(z - zs),
            "inner_residual": jnp.linalg.norm(jax.grad(problem.inner_full)(z, x)),
            "val_accuracy": acc(outer_data["X"], outer_data["y"], z),
            "val_loss_current": problem.outer_full(z, x),
        }
        if test is not None:
            out["test_accuracy"] = acc(*test, z)
        return out

    inner0 = jnp.zeros((d,), dtype)
    outer0 = jnp.full((d if reg == "feature" else 1,), -2.0, dtype)
    info = {"n_inner": int(X_train.shape[0]), "n_outer": int(X_val.shape[0]), "dim_inner": d,
            "dim_outer": int(outer0.shape[0]), "reg": reg,
            "n_test": None if test is None else int(test[0].shape[0])}
    return Benchmark(problem, inner0, outer0, jax.jit(metrics), None, info)


# ------------------------------------------------------------------------------------------------
# data hyper-cleaning


def corrupt_labels(y, ratio: float, n_classes: int, seed: int = 0):
    """benchopt's corruption: each label is, with probability ``ratio``, replaced by a uniformly random
    class (possibly the same one). Returns ``(y_corrupted, changed)``, ``changed`` marking labels that
    actually differ from the original."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"argument 'ratio' must be in [0, 1], got {ratio!r}")
    rng = np.random.default_rng(seed)
    y = np.asarray(y).astype(np.int64)
    hit = rng.random(len(y)) < ratio
    y_new = y.copy()
    y_new[hit] = rng.integers(0, n_classes, int(hit.sum()))
    return y_new, y_new != y


def auc(scores, positive):
    """Area under the ROC curve of ``scores`` for the boolean labels ``positive`` (rank statistic, ties
    counted one half); jit-able."""
    scores = jnp.asarray(scores)
    positive = jnp.asarray(positive, bool)
    order = jnp.argsort(scores)
    s = scores[order]
    # average ranks over ties
    ranks = jnp.arange(1, s.shape[0] + 1, dtype=jnp.float32)
    first = jnp.searchsorted(s, s, side="left")
    last = jnp.searchsorted(s, s, side="right")
    avg = 0.5 * (first + 1 + last).astype(jnp.float32)
    ranks = jnp.zeros_like(ranks).at[order].set(avg)
    n_pos = jnp.sum(positive)
    n_neg = positive.shape[0] - n_pos
    return (jnp.sum(jnp.where(positive, ranks, 0.0)) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def datacleaning_benchmark(X_train, y_train_corrupted, X_val, y_val, X_test, y_test, *, clean_mask=None,
                           n_classes: int | None = None, reg: float = 0.2, name: str = "datacleaning",
                           dtype=jnp.float32) -> Benchmark:
    r"""Data hyper-cleaning (benchopt's ``mnist`` problem): per-example weights :math:`\sigma(x_i)`.

    ``clean_mask`` (bool, ``True`` = label not corrupted) enables the ``weight_auc`` metric: the AUC of
    :math:`\sigma(x)` separating clean (positive) from corrupted examples. Starting point: benchopt's
    :math:`z_0 = 0`, :math:`x_0 = -2` (all weights :math:`\sigma(-2) = 0.12`).
    """
    X_train, y_train_corrupted = _check_xy(X_train, y_train_corrupted, "X_train/y_train_corrupted")
    X_val, y_val = _check_xy(X_val, y_val, "X_val/y_val")
    X_test, y_test = _check_xy(X_test, y_test, "X_test/y_test")
    if not np.isfinite(reg) or reg < 0:
        raise ValueError(f"argument 'reg' must be a finite number >= 0, got {reg!r}")
    k = int(n_classes or int(max(y_train_corrupted.max(), y_val.max(), y_test.max())) + 1)
    n, d = X_train.shape

    def ce(z, X, y):
        logits = X @ z
        return jax.nn.logsumexp(logits, axis=1) - jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]

    def inner_loss(z, x, batch):
        w = jax.nn.sigmoid(jnp.take(x, batch["i"]))
        return jnp.mean(w * ce(z, batch["X"], batch["y"])) + reg * jnp.sum(z**2)

    def outer_loss(z, x, batch):
        return jnp.mean(ce(z, batch["X"], batch["y"]))

    inner_data = {"X": jnp.asarray(X_train, dtype), "y": jnp.asarray(y_train_corrupted, jnp.int32),
                  "i": jnp.arange(n, dtype=jnp.int32)}
    outer_data = {"X": jnp.asarray(X_val, dtype), "y": jnp.asarray(y_val, jnp.int32)}
    problem = make_problem(inner_loss, outer_loss, inner_data, outer_data, name=name)
    Xt, yt = jnp.asarray(X_test, dtype), jnp.asarray(y_test, jnp.int32)
    clean = None if clean_mask is None else jnp.asarray(np.asarray(clean_mask, bool))
    if clean is not None and clean.shape != (n,):
        raise ValueError(f"argument 'clean_mask' must have shape ({n},), got {clean.shape}")

    def metrics(z, x):
        acc = lambda X, y: jnp.mean(jnp.argmax(X @ z, axis=1) == y)
        out = {
            "outer": problem.outer_full(z, x),
            "inner_residual": jnp.linalg.norm(jax.grad(problem.inner_full)(z, x)),
            "val_accuracy": acc(outer_data["X"], outer_data["y"]),
            "test_accuracy": acc(Xt, yt),
        }
        if clean is not None:
            out["weight_auc"] = auc(x, clean)
        return out

    inner0 = jnp.zeros((d, k), dtype)
    outer0 = jnp.full((n,), -2.0, dtype)
    info = {"n_inner": n, "n_outer": int(X_val.shape[0]), "n_test": int(X_test.shape[0]), "dim_inner": [d, k],
            "dim_outer": n, "reg": reg,
            "corrupted_fraction": None if clean is None else float(1 - np.mean(np.asarray(clean_mask)))}
    return Benchmark(problem, inner0, outer0, jax.jit(metrics), None, info)
