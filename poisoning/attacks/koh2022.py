r"""Koh, Steinhardt & Liang (2022), "Stronger data poisoning attacks break data sanitization defenses"
(Machine Learning; arXiv:1811.00741): the *influence attack* constrained to the defender's feasible set.

Victim
------
A linear SVM with the smoothed hinge of Koh & Liang (2017) (``t * softplus((1 - z) / t)``,
:func:`bilevel.problems.svm.smooth_hinge`) and weight decay ``wd`` on ``w`` (intercept free)::

    R(theta) = (1/N) sum_i c_i sh(y_i (w'x_i + b)) + wd/2 ||w||^2,      (C = 1 / (N wd))

trained to high accuracy by damped Newton (:func:`train_svm`, dense ``(d+1)^2`` Hessian). Labels are
``+-1``. ``c_i`` are integer multiplicities: the attack places the ``eps n`` poison points at a few
distinct locations, each repeated (the paper's "copies"), so one location of multiplicity ``c`` is one
row of weight ``c`` and moving it moves all its copies.

Attack (projected gradient ascent on the target loss)
-----------------------------------------------------
The attacker maximizes the mean smoothed hinge ``L_tgt`` of the retrained SVM on a target set (the
test set in the paper's release, or a validation set). The gradient w.r.t. a poison location ``x_j``
of multiplicity ``c_j`` is

.. math:: \nabla_{x_j} L_{tgt}(\hat\theta) = \frac{c_j}{N}\,\mathcal I_{\text{pert,loss}}(z_j, D_{tgt})
          = -\frac{c_j}{N}\big(s_{tgt}^\top\nabla_x\nabla_\theta L(z_j,\hat\theta)\big)^\top,
          \quad s_{tgt} = H^{-1}\nabla_\theta L_{tgt}(\hat\theta)

(Koh & Liang 2017, :func:`bilevel.influence.influence_perturbation`; ``method="influence"``), which
for a strictly convex training objective is *exactly* the implicit-function-theorem hypergradient
(``method="ift"``: :func:`bilevel.minimize` with :class:`~bilevel.Implicit` through
:class:`~bilevel.solvers.Newton`). Each step moves every location by ``step_size`` along its unit
gradient, then projects:

- ``aware`` (the sanitizer-aware attack): onto the feasible set of the sphere and slab defenses,
  :math:`\{x: \|x-\mu_y\|\le r_y,\ |\langle x-\mu_y, u_y\rangle|\le s_y\}\cap[0,1]^d`, with
  :math:`r_y, s_y` the ``percentile``-th percentile of the *clean* class-``y`` scores (times
  ``shrink``) and :math:`\mu_y` the class centroids of the *poisoned* data (data-dependent defense,
  ``centroids="poisoned"``, reached by a few fixed-point rounds since the centroid moves with the
  poison) or of the clean data (oracle defense). The exact sphere-slab projection
  (:func:`~poisoning.defenses.sanitizers.project_sphere_slab`) and the box clip are alternated and
  finished by a radial pull toward :math:`\mu_y` (both sets are convex and contain :math:`\mu_y`), so
  the result is feasible exactly;
- ``naive``: onto the box only (the attack that ignores the defense).

The best iterate (highest target loss) is returned.

Evaluation (:func:`evaluate_defenses`): the poisoned training set (copies expanded into rows) is
sanitized by each defense (fit on the poisoned data, remove the top ``fraction`` of each class,
:meth:`~poisoning.defenses.sanitizers.SphereDefense.sanitize`) and the SVM retrained; the 0-1 test
error is reported.

Deviations from the paper: no EM/KKT warm start (poison starts at label-flipped clean points), no
loss/k-NN/SVD constraints in the projection (copies make the k-NN score zero anyway, as in the
paper), smoothed hinge (``t``) instead of the hinge when training.
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bilevel import Implicit, minimize
from bilevel.influence import influence_perturbation
from bilevel.solvers import Newton
from poisoning.defenses.sanitizers import (
    KNNDefense,
    LossDefense,
    SlabDefense,
    SphereDefense,
    percentile_thresholds,
    pm1_to_index,
    project_sphere_slab,
    slab_directions,
    slab_scores,
    sphere_scores,
)

__all__ = [
    "SVMConfig",
    "smooth_hinge_example",
    "train_svm",
    "target_loss",
    "test_error",
    "poison_gradient",
    "retrain_target_loss",
    "feasible_thresholds",
    "project_feasible",
    "initial_poison",
    "KohAttackResult",
    "koh_attack",
    "expand_copies",
    "evaluate_defenses",
    "DEFENSES",
]

DEFENSES = ("sphere", "slab", "loss", "knn")


@dataclasses.dataclass(frozen=True)
class SVMConfig:
    """The victim: smoothed-hinge linear SVM with weight decay ``wd`` (``C = 1/(N wd)``)."""

    wd: float = 0.01
    t: float = 0.01
    maxiter: int = 100
    tol: float = 1e-9


# ------------------------------------------------------------------------------------------------
# victim
# ------------------------------------------------------------------------------------------------
def _sh(z, t):
    return t * jax.nn.softplus((1.0 - z) / t)


def smooth_hinge_example(params, example, t=0.01):
    """Smoothed hinge of one example ``(x, y)``, ``y`` in ``{-1, +1}``."""
    x, y = example
    return _sh(y * (x @ params["w"] + params["b"]), t)


def _reg(params, wd):
    return 0.5 * wd * jnp.sum(params["w"] ** 2)


def _objective(params, X, y, c, wd, t):
    z = y * (X @ params["w"] + params["b"])
    return jnp.sum(c * _sh(z, t)) / jnp.sum(c) + _reg(params, wd)


def _grad_hess(theta, X, y, c, wd, t):
    d = X.shape[1]
    N = jnp.sum(c)
    z = y * (X @ theta[:d] + theta[d])
    u = (1.0 - z) / t
    sig = jax.nn.sigmoid(u)
    g1 = -sig * y * c / N  # d/d(score)
    h1 = sig * (1.0 - sig) / t * c / N
    Xa = jnp.concatenate([X, jnp.ones((X.shape[0], 1), X.dtype)], axis=1)
    regv = jnp.concatenate([jnp.full((d,), wd, X.dtype), jnp.zeros((1,), X.dtype)])
    g = Xa.T @ g1 + regv * theta
    H = (Xa * h1[:, None]).T @ Xa + jnp.diag(regv) + 1e-12 * jnp.eye(d + 1, dtype=X.dtype)
    return g, H


@partial(jax.jit, static_argnames=("maxiter",))
def _newton(theta0, X, y, c, wd, t, tol, maxiter):
    d = X.shape[1]

    def f(th):
        return _objective({"w": th[:d], "b": th[d]}, X, y, c, wd, t)

    def cond(s):
        k, th, gn = s
        return (k < maxiter) & (gn > tol)

    def body(s):
        k, th, _ = s
        g, H = _grad_hess(th, X, y, c, wd, t)
        step = -jax.scipy.linalg.solve(H, g, assume_a="pos")
        f0, slope = f(th), jnp.vdot(g, step)

        def bt_cond(a):
            return (f(th + a * step) > f0 + 1e-4 * a * slope) & (a > 1e-10)

        a = jax.lax.while_loop(bt_cond, lambda a: 0.5 * a, jnp.asarray(1.0, X.dtype))
        th = th + a * step
        g2, _ = _grad_hess(th, X, y, c, wd, t)
        return k + 1, th, jnp.linalg.norm(g2)

    k, th, gn = jax.lax.while_loop(cond, body, (0, theta0, jnp.asarray(jnp.inf, X.dtype)))
    return th, gn


def train_svm(X, y, counts=None, cfg: SVMConfig = SVMConfig(), init=None) -> dict:
    """Train the smoothed-hinge SVM on rows ``X`` (labels ``+-1``), each row weighted by ``counts``
    (multiplicity, default 1). Returns ``{"w", "b"}`` (numerically exact to ``cfg.tol``; not
    differentiable — use :func:`retrain_target_loss` or :func:`poison_gradient` for gradients)."""
    X = jnp.asarray(X, jnp.result_type(float))
    y = jnp.asarray(y, X.dtype)
    c = jnp.ones(X.shape[0], X.dtype) if counts is None else jnp.asarray(counts, X.dtype)
    d = X.shape[1]
    th0 = jnp.zeros(d + 1, X.dtype) if init is None else jnp.concatenate(
        [jnp.asarray(init["w"], X.dtype), jnp.atleast_1d(jnp.asarray(init["b"], X.dtype))])
    th, _ = _newton(th0, X, y, c, cfg.wd, cfg.t, cfg.tol, int(cfg.maxiter))
    return {"w": th[:d], "b": th[d]}


def target_loss(params, X, y, t=0.01):
    """Mean smoothed hinge on ``(X, y)`` (the attacker's objective)."""
    return jnp.mean(_sh(jnp.asarray(y) * (jnp.asarray(X) @ params["w"] + params["b"]), t))


def test_error(params, X, y) -> float:
    """0-1 error of ``sign(Xw + b)`` (``+1`` on ties) against labels ``+-1``."""
    pred = np.where(np.asarray(X) @ np.asarray(params["w"]) + float(params["b"]) >= 0, 1, -1)
    return float(np.mean(pred != np.asarray(y)))


# ------------------------------------------------------------------------------------------------
# hypergradient: influence (I_pert) or IFT
# ------------------------------------------------------------------------------------------------
def _stack(X_clean, y_clean, X_loc, y_loc, counts):
    X = jnp.concatenate([X_clean, X_loc], 0)
    y = jnp.concatenate([y_clean, y_loc]).astype(X.dtype)
    c = jnp.concatenate([jnp.ones(X_clean.shape[0], X.dtype), counts.astype(X.dtype)])
    return X, y, c


@jax.jit
def _influence_grad(params, X, y, c, X_loc, y_loc, c_loc, X_tgt, y_tgt, wd, t):
    d = X.shape[1]
    N = jnp.sum(c)
    th = jnp.concatenate([params["w"], params["b"][None]])
    _, H = _grad_hess(th, X, y, c, wd, t)
    gt = jax.grad(lambda p: target_loss(p, X_tgt, y_tgt, t))(params)
    s = jax.scipy.linalg.solve(H, jnp.concatenate([gt["w"], gt["b"][None]]), assume_a="pos")
    s_test = {"w": s[:d], "b": s[d]}
    ipert = influence_perturbation(
        lambda p, ex: smooth_hinge_example(p, ex, t), params, (X, y), (X_tgt, y_tgt),
        train_points=(X_loc, y_loc), reduction="mean", s_test=s_test)
    value = target_loss(params, X_tgt, y_tgt, t)
    return value, ipert * (c_loc / N)[:, None]


def retrain_target_loss(X_loc, X_clean, y_clean, y_loc, counts, X_tgt, y_tgt, cfg: SVMConfig = SVMConfig(),
                        init=None):
    """Target loss of the SVM retrained on clean + poison, as a differentiable function of ``X_loc``
    (:func:`bilevel.minimize`, :class:`~bilevel.solvers.Newton`, IFT via :class:`~bilevel.Implicit`)."""
    X_clean = jnp.asarray(X_clean)
    dtype = jnp.result_type(X_clean, float)
    X, y, c = _stack(X_clean.astype(dtype), jnp.asarray(y_clean, dtype), X_loc.astype(dtype),
                     jnp.asarray(y_loc, dtype), jnp.asarray(counts, dtype))
    if init is None:
        init = train_svm(jax.lax.stop_gradient(X), y, c, cfg)
    init = jax.tree_util.tree_map(jax.lax.stop_gradient, init)

    def loss(p, X, y, c):
        return _objective(p, X, y, c, cfg.wd, cfg.t)

    params = minimize(loss, init, X, y, c, solver=Newton(tol=max(cfg.tol, 1e-12) * 10, maxiter=50),
                      method=Implicit(linear_solver="cholesky"))
    return target_loss(params, jnp.asarray(X_tgt, dtype), jnp.asarray(y_tgt, dtype), cfg.t)


def poison_gradient(X_loc, X_clean, y_clean, y_loc, counts, X_tgt, y_tgt, cfg: SVMConfig = SVMConfig(), *,
                    method: Literal["influence", "ift"] = "influence", params=None):
    """``(target loss, d target loss / d X_loc)`` for poison locations ``X_loc`` ``(k, d)`` with labels
    ``y_loc`` (``+-1``) and multiplicities ``counts``; the victim is retrained on clean + poison.

    ``method="influence"``: :func:`bilevel.influence.influence_perturbation` times ``c_j / N``;
    ``method="ift"``: :func:`jax.value_and_grad` of :func:`retrain_target_loss`. Both are exact
    derivatives of the retrained loss (to the solver tolerance)."""
    dtype = jnp.result_type(jnp.asarray(X_clean), float)
    X_clean = jnp.asarray(X_clean, dtype)
    X_loc = jnp.asarray(X_loc, dtype)
    y_clean, y_loc = jnp.asarray(y_clean, dtype), jnp.asarray(y_loc, dtype)
    counts = jnp.asarray(counts, dtype)
    X_tgt, y_tgt = jnp.asarray(X_tgt, dtype), jnp.asarray(y_tgt, dtype)
    if method == "ift":
        return jax.value_and_grad(retrain_target_loss)(X_loc, X_clean, y_clean, y_loc, counts, X_tgt, y_tgt,
                                                        cfg, params)
    if method != "influence":
        raise ValueError(f"method must be 'influence' or 'ift', got {method!r}")
    X, y, c = _stack(X_clean, y_clean, X_loc, y_loc, counts)
    if params is None:
        params = train_svm(X, y, c, cfg)
    return _influence_grad(params, X, y, c, X_loc, y_loc, counts, X_tgt, y_tgt, cfg.wd, cfg.t)


# ------------------------------------------------------------------------------------------------
# the defender's feasible set
# ------------------------------------------------------------------------------------------------
def _weighted_centroids(X_clean, k_clean, X_loc, k_loc, counts):
    S = jax.ops.segment_sum(X_clean, k_clean, num_segments=2) + jax.ops.segment_sum(
        X_loc * counts[:, None], k_loc, num_segments=2)
    n = jax.ops.segment_sum(jnp.ones(X_clean.shape[0], X_clean.dtype), k_clean, num_segments=2) + \
        jax.ops.segment_sum(counts, k_loc, num_segments=2)
    return S / n[:, None]


def feasible_thresholds(X_clean, y_clean, centroids, percentile=90.0):
    """Per-class sphere radii and slab half-widths: the ``percentile``-th percentile of the clean
    scores around ``centroids`` (labels ``+-1``). Returns ``(radii (2,), slab (2,), directions (2, d))``."""
    k = pm1_to_index(y_clean)
    u = slab_directions(centroids)
    r = percentile_thresholds(sphere_scores(X_clean, k, centroids), k, percentile, 2)
    s = percentile_thresholds(slab_scores(X_clean, k, centroids, u), k, percentile, 2)
    return r, s, u


def project_feasible(X_loc, y_loc, counts, X_clean, y_clean, *, percentile: float = 90.0, shrink: float = 0.98,
                     centroids: Literal["poisoned", "clean"] = "poisoned", box=(0.0, 1.0),
                     rounds: int = 5, pocs_iters: int = 10):
    """Project poison locations onto the sphere+slab feasible set (thresholds at ``percentile`` of the
    clean scores times ``shrink``) intersected with ``box``; see the module docstring. The returned
    points satisfy the constraints exactly for the centroids of the returned poisoned data (when
    ``centroids="poisoned"``, up to the drift of the last fixed-point round, covered by ``shrink``)."""
    dtype = jnp.result_type(jnp.asarray(X_clean), float)
    X_clean = jnp.asarray(X_clean, dtype)
    x = jnp.asarray(X_loc, dtype)
    kc, kl = pm1_to_index(y_clean), pm1_to_index(y_loc)
    counts = jnp.asarray(counts, dtype)
    lo, hi = box if box is not None else (-jnp.inf, jnp.inf)
    for _ in range(int(rounds) if centroids == "poisoned" else 1):
        mu = (_weighted_centroids(X_clean, kc, x, kl, counts) if centroids == "poisoned"
              else _weighted_centroids(X_clean, kc, x, kl, jnp.zeros_like(counts)))
        r, s, u = feasible_thresholds(X_clean, y_clean, mu, percentile)
        r, s = shrink * r, shrink * s
        for _ in range(int(pocs_iters)):
            x = jnp.clip(project_sphere_slab(x, kl, mu, u, r, s), lo, hi)
        z = x - mu[kl]
        nz = jnp.linalg.norm(z, axis=1)
        tz = jnp.abs(jnp.sum(z * u[kl], axis=1))
        lam = jnp.minimum(1.0, jnp.minimum(r[kl] / jnp.maximum(nz, 1e-30), s[kl] / jnp.maximum(tz, 1e-30)))
        x = mu[kl] + lam[:, None] * z
    return x


# ------------------------------------------------------------------------------------------------
# the attack
# ------------------------------------------------------------------------------------------------
def initial_poison(X_clean, y_clean, n_poison: int, n_locations: int = 2, seed: int = 0):
    """Label-flip start: ``n_locations`` distinct locations (half per class), each a random clean
    point of the *other* class; the ``n_poison`` copies are spread over them as evenly as possible.
    Returns ``(X_loc (k, d), y_loc (k,) in +-1, counts (k,) int)``."""
    if n_poison < 1 or n_locations < 1:
        raise ValueError("n_poison and n_locations must be >= 1")
    n_locations = min(n_locations, n_poison)
    rng = np.random.default_rng(seed)
    X_clean, y_clean = np.asarray(X_clean), np.asarray(y_clean)
    y_loc = np.array([1 if j % 2 == 0 else -1 for j in range(n_locations)])
    X_loc = np.stack([X_clean[rng.choice(np.flatnonzero(y_clean == -lab))] for lab in y_loc])
    counts = np.full(n_locations, n_poison // n_locations)
    counts[: n_poison % n_locations] += 1
    return X_loc, y_loc, counts


class KohAttackResult(NamedTuple):
    X_loc: np.ndarray  # best poison locations (k, d)
    y_loc: np.ndarray  # labels +-1
    counts: np.ndarray  # multiplicities
    history: np.ndarray  # target loss at each iterate
    best_value: float
    params: Any  # victim retrained on clean + best poison (no defense)
    seconds: float


def koh_attack(X_clean, y_clean, X_tgt, y_tgt, n_poison: int, *, aware: bool = True, cfg: SVMConfig = SVMConfig(),
               steps: int = 100, step_size: float = 0.5, n_locations: int = 2, percentile: float = 90.0,
               shrink: float = 0.98, centroids: Literal["poisoned", "clean"] = "poisoned", box=(0.0, 1.0),
               method: Literal["influence", "ift"] = "influence", seed: int = 0, init=None) -> KohAttackResult:
    """Influence attack of Koh et al. (2022): projected ascent of the target loss over poison locations.

    ``aware=True`` projects onto the sphere+slab+box feasible set of the defenses (:func:`project_feasible`),
    ``aware=False`` onto the box only. ``init`` = ``(X_loc, y_loc, counts)`` or ``None`` for
    :func:`initial_poison`. Labels in ``+-1``."""
    t0 = time.perf_counter()
    dtype = jnp.result_type(float)
    Xc, yc = jnp.asarray(X_clean, dtype), jnp.asarray(y_clean, dtype)
    Xt, yt = jnp.asarray(X_tgt, dtype), jnp.asarray(y_tgt, dtype)
    X_loc, y_loc, counts = initial_poison(X_clean, y_clean, n_poison, n_locations, seed) if init is None else init
    y_loc, counts = jnp.asarray(y_loc, dtype), jnp.asarray(counts, dtype)
    lo, hi = box if box is not None else (-jnp.inf, jnp.inf)

    def project(x):
        if aware:
            return project_feasible(x, y_loc, counts, Xc, yc, percentile=percentile, shrink=shrink,
                                    centroids=centroids, box=box)
        return jnp.clip(x, lo, hi)

    x = project(jnp.asarray(X_loc, dtype))
    params = None
    hist, best = [], (-np.inf, x, None)
    for _ in range(int(steps) + 1):
        X, y, c = _stack(Xc, yc, x, y_loc, counts)
        params = train_svm(X, y, c, cfg, init=params)
        v, g = poison_gradient(x, Xc, yc, y_loc, counts, Xt, yt, cfg, method=method, params=params)
        v = float(v)
        hist.append(v)
        if v > best[0]:
            best = (v, x, params)
        gn = jnp.linalg.norm(g, axis=1, keepdims=True)
        x = project(x + step_size * g / jnp.maximum(gn, 1e-30))
    v, x, params = best
    return KohAttackResult(np.asarray(x), np.asarray(y_loc).astype(int), np.asarray(counts).astype(int),
                           np.asarray(hist), v, params, time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------------
# evaluation against sanitizers
# ------------------------------------------------------------------------------------------------
def expand_copies(X_clean, y_clean, X_loc, y_loc, counts):
    """The poisoned training set with every copy a row: ``(X, y, is_poison)``."""
    counts = np.asarray(counts).astype(int)
    Xp = np.repeat(np.asarray(X_loc), counts, axis=0)
    yp = np.repeat(np.asarray(y_loc), counts)
    X = np.concatenate([np.asarray(X_clean), Xp])
    y = np.concatenate([np.asarray(y_clean), yp]).astype(int)
    return X, y, np.r_[np.zeros(len(y_clean), bool), np.ones(len(yp), bool)]


def make_defense(name: str, cfg: SVMConfig = SVMConfig(), k: int = 5):
    """A sanitizer of :mod:`poisoning.defenses.sanitizers` (labels are class indices 0/1)."""
    if name == "sphere":
        return SphereDefense(num_classes=2)
    if name == "slab":
        return SlabDefense(num_classes=2)
    if name == "knn":
        return KNNDefense(k=k, num_classes=2)
    if name == "loss":
        def loss_fn(p, x, yk):
            return jnp.maximum(0.0, 1.0 - (2.0 * yk - 1.0) * (x @ p["w"] + p["b"]))

        return LossDefense(loss_fn=loss_fn, train_fn=lambda X, yk: train_svm(X, 2 * np.asarray(yk) - 1, None, cfg),
                           num_classes=2)
    raise ValueError(f"unknown defense {name!r}; choose from {DEFENSES}")


def sanitize_and_train(X, y, defense: str, fraction: float, cfg: SVMConfig = SVMConfig()):
    """Fit ``defense`` on ``(X, y)`` (labels ``+-1``), drop the top ``fraction`` of each class, retrain.
    Returns ``(params, keep_mask)``."""
    keep, _ = make_defense(defense, cfg).sanitize(jnp.asarray(X), pm1_to_index(y), fraction)
    keep = np.asarray(keep)
    # weight 0 = removed (same shapes for every defense: one compiled trainer)
    return train_svm(X, y, keep.astype(float), cfg), keep


def evaluate_defenses(X_clean, y_clean, X_test, y_test, naive: KohAttackResult, aware: KohAttackResult,
                      *, defenses=DEFENSES, fraction: float = 0.05, cfg: SVMConfig = SVMConfig()) -> list[dict]:
    """One row per defense: clean error, naive attack without / with defense, aware attack with defense
    (also aware without defense and the fraction of poison copies that survive each sanitizer)."""
    X_clean, y_clean = np.asarray(X_clean), np.asarray(y_clean).astype(int)
    Xn, yn, pn = expand_copies(X_clean, y_clean, naive.X_loc, naive.y_loc, naive.counts)
    Xa, ya, pa = expand_copies(X_clean, y_clean, aware.X_loc, aware.y_loc, aware.counts)
    clean_err = test_error(train_svm(Xn, yn, (~pn).astype(float), cfg), X_test, y_test)
    naive_nd = test_error(train_svm(Xn, yn, None, cfg), X_test, y_test)
    aware_nd = test_error(train_svm(Xa, ya, None, cfg), X_test, y_test)
    rows = []
    for name in defenses:
        pn_params, kn = sanitize_and_train(Xn, yn, name, fraction, cfg)
        pa_params, ka = sanitize_and_train(Xa, ya, name, fraction, cfg)
        rows.append({
            "defense": name,
            "clean_error": clean_err,
            "naive_no_defense": naive_nd,
            "naive_with_defense": test_error(pn_params, X_test, y_test),
            "aware_with_defense": test_error(pa_params, X_test, y_test),
            "aware_no_defense": aware_nd,
            "naive_poison_kept": float(kn[pn].mean()),
            "aware_poison_kept": float(ka[pa].mean()),
        })
    return rows
