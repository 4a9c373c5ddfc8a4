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

With ``loss_percentile`` set, the aware projection also intersects the *loss-defense* halfspace
:math:`1 - y_j(w^\top x_j + b) \le \tau_{y_j}` for the current retrained (poisoned) model, :math:`\tau_y`
the ``loss_percentile`` of the clean class-``y`` hinge losses (:func:`loss_halfspaces`,
:func:`hinge_thresholds`); the *k-NN defense* is met by the copies themselves: a location with at least
``k + 1`` copies has k-NN score 0. The best iterate (highest target loss; with the loss constraint, among
iterates meeting it under their own model) is returned; ``schedule="cosine"`` anneals the step size.

KKT warm start (Koh et al. 2022, Sec. 4.2; :func:`kkt_attack`)
---------------------------------------------------------------
For decoy parameters :math:`\theta_d` with a high target loss (:func:`decoy_parameters`: SVMs trained with
label-flipped target points, a stand-in for the release's ``generateThetaFnc``; the experiment adds the
naive attack's model), :math:`\theta_d` is the retrained optimum iff the poison cancels the clean gradient,
:math:`\sum_j c_j y_j (x_j, 1) = G(\theta_d)` (:func:`kkt_target_gradient`, poison on the linear part of the
hinge). The attack takes :math:`c_+ - c_- = G_b` and minimizes :math:`\|\sum_j c_j y_j x_j - G_w\|^2` over
the feasible set (sphere, slab, box and the loss halfspace under :math:`\theta_d`) by FISTA
(:func:`kkt_poison`); the candidate whose retrained model has the highest target loss warm-starts the
influence attack.

Evaluation (:func:`evaluate_defenses`): the poisoned training set (copies expanded into rows) is
sanitized by each defense (fit on the poisoned data, remove the top ``fraction`` of each class,
:meth:`~poisoning.defenses.sanitizers.SphereDefense.sanitize`) and the SVM retrained; the 0-1 test
error is reported.

Deviations from the paper: decoys from a simple label-flip heuristic instead of ``generateThetaFnc``
(MATLAB), FISTA instead of the Gurobi/cvxpy QP, no SVD defense, smoothed hinge (``t``) instead of the
hinge when training, the attacker's thresholds at fixed clean-score percentiles.
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
    "loss_halfspaces",
    "hinge_thresholds",
    "kkt_target_gradient",
    "kkt_residual",
    "kkt_residual_grad",
    "kkt_poison",
    "decoy_parameters",
    "kkt_attack",
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


_MAX_STEP = 10.0  # longest Newton step (Euclidean, in (w, b))


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
        # trust-region cap: where the smoothed hinge is flat (e.g. w = 0: every margin saturated) the
        # Hessian is nearly singular in b and the raw Newton step is astronomically long
        sn = jnp.linalg.norm(step)
        step = jnp.where(sn > _MAX_STEP, step * (_MAX_STEP / jnp.maximum(sn, 1e-300)), step)
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


@partial(jax.jit, static_argnames=("pocs_iters",))
def _project_fixed(x, kl, mu, u, r, s, lo, hi, A, beta, pocs_iters=10):
    """Feasible point of sphere_y ∩ slab_y ∩ box ∩ {a_j'x >= beta_j} for fixed centroids/thresholds:
    alternating projections, then a radial pull toward ``mu_y`` (in all the sets when ``mu_y`` is)."""

    def body(_, x):
        x = jnp.clip(project_sphere_slab(x, kl, mu, u, r, s), lo, hi)
        viol = jnp.maximum(beta - jnp.sum(A * x, axis=1), 0.0)
        return x + (viol / jnp.maximum(jnp.sum(A * A, axis=1), 1e-30))[:, None] * A

    x = jax.lax.fori_loop(0, pocs_iters, body, x)
    x = jnp.clip(project_sphere_slab(x, kl, mu, u, r, s), lo, hi)
    m = mu[kl]
    z = x - m
    nz = jnp.linalg.norm(z, axis=1)
    tz = jnp.abs(jnp.sum(z * u[kl], axis=1))
    lam = jnp.minimum(1.0, jnp.minimum(r[kl] / jnp.maximum(nz, 1e-30), s[kl] / jnp.maximum(tz, 1e-30)))
    # halfspace along the segment mu + lam z (only binding when x violates it and mu satisfies it)
    am, ax = jnp.sum(A * m, axis=1), jnp.sum(A * x, axis=1)
    lam_h = jnp.where((ax < beta) & (am >= beta), (am - beta) / jnp.maximum(am - ax, 1e-30), 1.0)
    lam = jnp.minimum(lam, lam_h)
    return m + lam[:, None] * z


def loss_halfspaces(params, y_loc, thresholds, margin: float = 0.0):
    r"""The loss-defense constraint :math:`\max(0, 1 - y_j(w^\top x_j + b)) \le \tau_{y_j} - m` as
    halfspaces :math:`a_j^\top x_j \ge \beta_j`, :math:`a_j = y_j w`, :math:`\beta_j = 1 - \tau_{y_j} + m - y_j b`
    (``thresholds`` = :math:`(\tau_{-1}, \tau_{+1})` indexed by class 0/1). Returns ``(A (k, d), beta (k,))``."""
    y_loc = jnp.asarray(y_loc)
    w, b = jnp.asarray(params["w"]), jnp.asarray(params["b"])
    tau = jnp.asarray(thresholds)[pm1_to_index(y_loc)]
    A = y_loc[:, None].astype(w.dtype) * w[None, :]
    beta = 1.0 - tau + margin - y_loc.astype(w.dtype) * b
    return A, beta


def hinge_thresholds(params, X_clean, y_clean, percentile=90.0):
    """Per-class ``percentile`` of the clean hinge losses under ``params`` (the attacker's estimate of the
    loss defense's cut-off), shape ``(2,)`` indexed by class 0 (``-1``) / 1 (``+1``)."""
    X_clean = jnp.asarray(X_clean)
    yk = pm1_to_index(y_clean)
    losses = jnp.maximum(0.0, 1.0 - jnp.asarray(y_clean, X_clean.dtype) * (X_clean @ params["w"] + params["b"]))
    return percentile_thresholds(losses, yk, percentile, 2)


def project_feasible(X_loc, y_loc, counts, X_clean, y_clean, *, percentile: float = 90.0, shrink: float = 0.98,
                     centroids: Literal["poisoned", "clean"] = "poisoned", box=(0.0, 1.0),
                     rounds: int = 5, pocs_iters: int = 10, halfspaces=None):
    r"""Project poison locations onto the sphere+slab feasible set (thresholds at ``percentile`` of the
    clean scores times ``shrink``) intersected with ``box`` and, optionally, the loss-defense halfspaces
    ``(A, beta)`` of :func:`loss_halfspaces` (:math:`a_j^\top x_j \ge \beta_j`); see the module docstring.
    The returned points satisfy the sphere/slab/box constraints exactly for the centroids of the returned
    poisoned data (when ``centroids="poisoned"``, up to the drift of the last fixed-point round, covered by
    ``shrink``); the halfspaces hold whenever the class centroid satisfies them."""
    if centroids not in ("poisoned", "clean"):
        raise ValueError(f"centroids must be 'poisoned' or 'clean', got {centroids!r}")
    dtype = jnp.result_type(jnp.asarray(X_clean), float)
    X_clean = jnp.asarray(X_clean, dtype)
    x = jnp.asarray(X_loc, dtype)
    kc, kl = pm1_to_index(y_clean), pm1_to_index(y_loc)
    counts = jnp.asarray(counts, dtype)
    lo, hi = box if box is not None else (-jnp.inf, jnp.inf)
    lo, hi = jnp.asarray(lo, dtype), jnp.asarray(hi, dtype)
    if halfspaces is None:
        A, beta = jnp.zeros_like(x), jnp.full(x.shape[0], -jnp.inf, dtype)
    else:
        A, beta = jnp.asarray(halfspaces[0], dtype), jnp.asarray(halfspaces[1], dtype)
    for _ in range(int(rounds) if centroids == "poisoned" else 1):
        mu = (_weighted_centroids(X_clean, kc, x, kl, counts) if centroids == "poisoned"
              else _weighted_centroids(X_clean, kc, x, kl, jnp.zeros_like(counts)))
        r, s, u = feasible_thresholds(X_clean, y_clean, mu, percentile)
        x = _project_fixed(x, kl, mu, u, shrink * r, shrink * s, lo, hi, A, beta, pocs_iters=int(pocs_iters))
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
    history: np.ndarray  # target loss at each iterate (KKT: at each candidate)
    best_value: float
    params: Any  # victim retrained on clean + best poison (no defense)
    seconds: float


# ------------------------------------------------------------------------------------------------
# KKT attack (Koh et al. 2022, Sec. 4.2) from decoy parameters
# ------------------------------------------------------------------------------------------------
def kkt_target_gradient(params, X_clean, y_clean, n_poison, cfg: SVMConfig = SVMConfig()):
    r"""The vector the poison gradients must cancel for ``params`` to be the retrained optimum.

    With :math:`N = n + n_p` and :math:`\tilde x = (x, 1)`, stationarity of :math:`R` at :math:`\theta` reads
    :math:`\sum_{\rm clean}\nabla\ell_i + N\,wd\,(w, 0) + \sum_j c_j \nabla\ell(x_j, y_j) = 0`. Poison on the
    linear part of the hinge has :math:`\nabla\ell(x_j, y_j) = -y_j\tilde x_j`, so the KKT attack needs
    :math:`\sum_j c_j y_j \tilde x_j = G`, returned as ``(G_w (d,), G_b)``:

    .. math:: G = \sum_{i\in\rm clean}\nabla_\theta\,{\rm sh}(y_i(w^\top x_i + b)) + N\,wd\,(w, 0).
    """
    X = jnp.asarray(X_clean)
    y = jnp.asarray(y_clean, X.dtype)
    z = y * (X @ params["w"] + params["b"])
    sig = jax.nn.sigmoid((1.0 - z) / cfg.t)  # -d sh / dz
    N = X.shape[0] + n_poison
    return -(sig * y) @ X + N * cfg.wd * params["w"], -jnp.sum(sig * y)


def kkt_residual(X_loc, y_loc, counts, G_w):
    r"""KKT objective :math:`\|\sum_j c_j y_j x_j - G_w\|^2` (its gradient w.r.t. ``x_j`` is
    :math:`2 c_j y_j r`, :math:`r = \sum_j c_j y_j x_j - G_w`)."""
    a = jnp.asarray(counts) * jnp.asarray(y_loc)
    r = a @ X_loc - G_w
    return jnp.sum(r * r)


def kkt_residual_grad(X_loc, y_loc, counts, G_w):
    r"""Closed-form gradient of :func:`kkt_residual` w.r.t. ``X_loc``."""
    a = jnp.asarray(counts) * jnp.asarray(y_loc)
    return 2.0 * a[:, None] * (a @ X_loc - G_w)[None, :]


@partial(jax.jit, static_argnames=("iters", "pocs_iters"))
def _kkt_fista(x0, a, G_w, kl, mu, u, r, s, lo, hi, A, beta, iters=200, pocs_iters=5):
    L = 2.0 * jnp.maximum(jnp.sum(a * a), 1e-30)

    def proj(x):
        return _project_fixed(x, kl, mu, u, r, s, lo, hi, A, beta, pocs_iters=pocs_iters)

    def body(_, st):
        x, z, tk = st
        g = 2.0 * a[:, None] * (a @ z - G_w)[None, :]
        xn = proj(z - g / L)
        tn = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * tk * tk))
        return xn, xn + ((tk - 1.0) / tn) * (xn - x), tn

    x, _, _ = jax.lax.fori_loop(0, iters, body, (x0, x0, jnp.asarray(1.0, x0.dtype)))
    return x


def kkt_poison(params, X_clean, y_clean, x0, y_loc, counts, cfg: SVMConfig = SVMConfig(), *,
               percentile: float = 90.0, shrink: float = 0.98, loss_percentile: float | None = 90.0,
               centroids: Literal["poisoned", "clean"] = "poisoned", box=(0.0, 1.0), rounds: int = 3,
               iters: int = 200):
    r"""KKT attack for the decoy ``params`` with fixed labels and multiplicities (Koh et al. 2022, Sec. 4.2):

    .. math:: \min_{x_j\in F_{y_j}} \Big\|\sum_j c_j y_j x_j - G_w\Big\|_2^2

    (:func:`kkt_target_gradient`), :math:`F_y` = sphere ∩ slab ∩ box (thresholds as in :func:`project_feasible`)
    ∩ the loss-defense halfspace :math:`{\rm hinge}(x; \theta_{decoy}) \le \tau_y` (``loss_percentile`` of
    the clean hinge losses under the decoy, as in the paper's release; ``None`` drops it). Solved by FISTA
    with the feasible-set projection; the data-dependent centroids are updated between ``rounds``.
    Returns the locations ``(k, d)``."""
    dtype = jnp.result_type(jnp.asarray(X_clean), float)
    Xc = jnp.asarray(X_clean, dtype)
    y_loc = jnp.asarray(y_loc, dtype)
    counts = jnp.asarray(counts, dtype)
    n_p = float(jnp.sum(counts))
    G_w, _ = kkt_target_gradient(params, Xc, y_clean, n_p, cfg)
    kc, kl = pm1_to_index(y_clean), pm1_to_index(y_loc)
    lo, hi = box if box is not None else (-jnp.inf, jnp.inf)
    lo, hi = jnp.asarray(lo, dtype), jnp.asarray(hi, dtype)
    if loss_percentile is None:
        A, beta = jnp.zeros((y_loc.shape[0], Xc.shape[1]), dtype), jnp.full(y_loc.shape[0], -jnp.inf, dtype)
    else:
        A, beta = loss_halfspaces(params, y_loc, hinge_thresholds(params, Xc, y_clean, loss_percentile))
    x = jnp.asarray(x0, dtype)
    for _ in range(int(rounds) if centroids == "poisoned" else 1):
        mu = _weighted_centroids(Xc, kc, x, kl, counts if centroids == "poisoned" else jnp.zeros_like(counts))
        r, s, u = feasible_thresholds(Xc, y_clean, mu, percentile)
        x = _kkt_fista(x, counts * y_loc, G_w, kl, mu, u, shrink * r, shrink * s, lo, hi, A, beta,
                       iters=int(iters))
    return project_feasible(x, y_loc, counts, Xc, y_clean, percentile=percentile, shrink=shrink,
                            centroids=centroids, box=box, halfspaces=(A, beta))


def decoy_parameters(X_clean, y_clean, X_tgt, y_tgt, cfg: SVMConfig = SVMConfig(),
                     weights=(0.05, 0.2)) -> list[dict]:
    r"""Decoy parameters with a high target loss (a simple stand-in for the paper's ``generateThetaFnc``):
    for every weight :math:`\lambda` and every flip set :math:`S` (all target points, only the ``+1`` ones,
    only the ``-1`` ones) train the SVM on the clean data plus :math:`S` with flipped labels, each flipped
    point of multiplicity :math:`\lambda n/|S|`. Returns a list of ``{"w", "b"}``."""
    if len(weights) == 0 or any(not np.isfinite(w) or w <= 0 for w in weights):
        raise ValueError(f"weights must be a non-empty sequence of positive numbers, got {weights!r}")
    X_clean, y_clean = np.asarray(X_clean, float), np.asarray(y_clean)
    X_tgt, y_tgt = np.asarray(X_tgt, float), np.asarray(y_tgt)
    n = len(y_clean)
    X = np.concatenate([X_clean, X_tgt])
    y = np.concatenate([y_clean, -y_tgt])
    base = train_svm(X_clean, y_clean, None, cfg)
    out = []
    for lab in (0, 1, -1):
        S = np.ones(len(y_tgt), bool) if lab == 0 else (y_tgt == lab)
        if not S.any():
            continue
        for lam in weights:
            c = np.concatenate([np.ones(n), np.where(S, lam * n / S.sum(), 0.0)])
            out.append(train_svm(X, y, c, cfg, init=base))
    return out


def _min_copies_split(c_pos: int, n: int, m_pos: int, m_neg: int) -> int:
    """Nearest split ``c_pos`` of ``n`` copies with each side either empty or holding >= ``m_pos`` /
    ``m_neg`` copies (the k-NN defense removes thin clusters)."""
    ok = [c for c in range(n + 1) if (c == 0 or c >= m_pos) and (n - c == 0 or n - c >= m_neg)]
    return min(ok, key=lambda c: (abs(c - c_pos), c)) if ok else c_pos  # too few copies: no constraint


def kkt_attack(X_clean, y_clean, X_tgt, y_tgt, n_poison: int, decoys, *, cfg: SVMConfig = SVMConfig(),
               n_locations: int = 2, splits: int = 0, percentile: float = 90.0, shrink: float = 0.98,
               loss_percentile: float | None = 90.0, centroids: Literal["poisoned", "clean"] = "poisoned",
               box=(0.0, 1.0), iters: int = 200, seed: int = 0, min_copies: int = 6) -> KohAttackResult:
    r"""Best KKT attack over ``decoys`` and positive/negative splits of the ``n_poison`` copies.

    For every decoy, the split :math:`c_+ - c_- = G_b` that makes the intercept stationary (clipped to
    ``[0, n_poison]``) and, when ``splits >= 2``, ``splits`` evenly spaced splits are tried
    (:func:`kkt_poison`, half of the ``n_locations`` per class, started at label-flipped clean points);
    the victim is retrained on each
    candidate and the one with the highest target loss wins (the release picks by test error after
    the defenses; our candidates are feasible by construction). Splits are moved to the nearest one in
    which every used location holds at least ``min_copies`` copies (``k + 1`` makes the k-NN score of
    every copy 0; use 1 to switch this off)."""
    if min_copies < 1:
        raise ValueError(f"min_copies must be >= 1, got {min_copies}")
    t0 = time.perf_counter()
    if n_poison < 1:
        raise ValueError(f"n_poison must be >= 1, got {n_poison}")
    if len(decoys) == 0:
        raise ValueError("decoys must hold at least one parameter set")
    dtype = jnp.result_type(float)
    Xc, yc = jnp.asarray(X_clean, dtype), jnp.asarray(y_clean, dtype)
    Xt, yt = jnp.asarray(X_tgt, dtype), jnp.asarray(y_tgt, dtype)
    x0, y_loc, _ = initial_poison(X_clean, y_clean, n_poison, max(2, n_locations), seed)
    pos, neg = np.flatnonzero(y_loc > 0), np.flatnonzero(y_loc < 0)
    clean = train_svm(Xc, yc, None, cfg)
    hist, best = [], (-np.inf, None, None, None)
    for params in decoys:
        _, G_b = kkt_target_gradient(params, Xc, yc, n_poison, cfg)
        cand = {int(round(v)) for v in np.linspace(0, n_poison, int(splits))} if splits >= 2 else set()
        cand.add(int(round(np.clip((n_poison + float(G_b)) / 2, 0, n_poison))))
        cand = {_min_copies_split(c, n_poison, min_copies * len(pos), min_copies * len(neg)) for c in cand}
        for c_pos in sorted(cand):
            counts = np.zeros(len(y_loc))
            counts[pos] = c_pos // len(pos) + (np.arange(len(pos)) < c_pos % len(pos))
            counts[neg] = (n_poison - c_pos) // len(neg) + (np.arange(len(neg)) < (n_poison - c_pos) % len(neg))
            x = kkt_poison(params, Xc, yc, x0, y_loc, counts, cfg, percentile=percentile, shrink=shrink,
                           loss_percentile=loss_percentile, centroids=centroids, box=box, iters=iters)
            X, y, c = _stack(Xc, yc, x, jnp.asarray(y_loc, dtype), jnp.asarray(counts, dtype))
            p = train_svm(X, y, c, cfg, init=clean)
            v = float(target_loss(p, Xt, yt, cfg.t))
            hist.append(v)
            if v > best[0]:
                best = (v, np.asarray(x), counts.astype(int), p)
    v, x, counts, p = best
    return KohAttackResult(x, np.asarray(y_loc).astype(int), counts, np.asarray(hist), v, p,
                           time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------------
# influence attack
# ------------------------------------------------------------------------------------------------
def _loss_feasible(params, X_loc, y_loc, X_clean, y_clean, loss_percentile):
    tau = hinge_thresholds(params, X_clean, y_clean, loss_percentile)
    h = jnp.maximum(0.0, 1.0 - y_loc * (X_loc @ params["w"] + params["b"]))
    return bool(jnp.all(h <= tau[pm1_to_index(y_loc)] + 1e-9))


def koh_attack(X_clean, y_clean, X_tgt, y_tgt, n_poison: int, *, aware: bool = True, cfg: SVMConfig = SVMConfig(),
               steps: int = 100, step_size: float = 0.5, n_locations: int = 2, percentile: float = 90.0,
               shrink: float = 0.98, centroids: Literal["poisoned", "clean"] = "poisoned", box=(0.0, 1.0),
               method: Literal["influence", "ift"] = "influence", seed: int = 0, init=None,
               loss_percentile: float | None = None, loss_margin: float = 0.0,
               schedule: Literal["constant", "cosine"] = "constant") -> KohAttackResult:
    """Influence attack of Koh et al. (2022): projected ascent of the target loss over poison locations.

    ``aware=True`` projects onto the sphere+slab+box feasible set of the defenses (:func:`project_feasible`),
    ``aware=False`` onto the box only. With ``aware`` and ``loss_percentile`` set, the projection also keeps
    every location's hinge loss under the current (poisoned) model below the ``loss_percentile`` of the clean
    hinge losses minus ``loss_margin`` (:func:`loss_halfspaces`), and only iterates meeting that constraint
    for their own retrained model can be returned. ``init`` = ``(X_loc, y_loc, counts)`` (e.g. a
    :func:`kkt_attack` result) or ``None`` for :func:`initial_poison`. ``schedule="cosine"`` anneals the step
    from ``step_size`` to ``step_size / 20``. Labels in ``+-1``."""
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    t0 = time.perf_counter()
    dtype = jnp.result_type(float)
    Xc, yc = jnp.asarray(X_clean, dtype), jnp.asarray(y_clean, dtype)
    Xt, yt = jnp.asarray(X_tgt, dtype), jnp.asarray(y_tgt, dtype)
    X_loc, y_loc, counts = initial_poison(X_clean, y_clean, n_poison, n_locations, seed) if init is None else init
    y_loc, counts = jnp.asarray(y_loc, dtype), jnp.asarray(counts, dtype)
    lo, hi = box if box is not None else (-jnp.inf, jnp.inf)
    use_loss = aware and loss_percentile is not None

    def project(x, params):
        if aware:
            hs = None
            if use_loss and params is not None:
                hs = loss_halfspaces(params, y_loc, hinge_thresholds(params, Xc, yc, loss_percentile), loss_margin)
            return project_feasible(x, y_loc, counts, Xc, yc, percentile=percentile, shrink=shrink,
                                    centroids=centroids, box=box, halfspaces=hs)
        return jnp.clip(x, lo, hi)

    x = project(jnp.asarray(X_loc, dtype), None)
    params = None
    hist, best, fallback = [], (-np.inf, x, None), (-np.inf, x, None)
    for k in range(int(steps) + 1):
        X, y, c = _stack(Xc, yc, x, y_loc, counts)
        params = train_svm(X, y, c, cfg, init=params)
        if use_loss and k == 0:  # the start must respect the loss constraint of its own model
            x = project(x, params)
            X, y, c = _stack(Xc, yc, x, y_loc, counts)
            params = train_svm(X, y, c, cfg, init=params)
        v, g = poison_gradient(x, Xc, yc, y_loc, counts, Xt, yt, cfg, method=method, params=params)
        v = float(v)
        hist.append(v)
        if v > fallback[0]:
            fallback = (v, x, params)
        if v > best[0] and (not use_loss or _loss_feasible(params, x, y_loc, Xc, yc, loss_percentile)):
            best = (v, x, params)
        cos = 0.5 * (1.0 + np.cos(np.pi * k / max(steps, 1)))
        eta = step_size if schedule == "constant" else step_size * (0.05 + 0.95 * cos)
        gn = jnp.linalg.norm(g, axis=1, keepdims=True)
        x = project(x + eta * g / jnp.maximum(gn, 1e-30), params)
    v, x, params = best if best[2] is not None else fallback
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


def make_defense(name: str, cfg: SVMConfig = SVMConfig(), k: int = 5, init=None):
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

        def train_fn(X, yk):
            return train_svm(X, 2 * np.asarray(yk) - 1, None, cfg, init=init)

        return LossDefense(loss_fn=loss_fn, train_fn=train_fn, num_classes=2)
    raise ValueError(f"unknown defense {name!r}; choose from {DEFENSES}")


def sanitize_and_train(X, y, defense: str, fraction: float, cfg: SVMConfig = SVMConfig(), init=None):
    """Fit ``defense`` on ``(X, y)`` (labels ``+-1``), drop the top ``fraction`` of each class, retrain
    (Newton started at ``init``; the objective is strictly convex, so only the time depends on it).
    Returns ``(params, keep_mask)``."""
    keep, _ = make_defense(defense, cfg, init=init).sanitize(jnp.asarray(X), pm1_to_index(y), fraction)
    keep = np.asarray(keep)
    # weight 0 = removed (same shapes for every defense: one compiled trainer)
    return train_svm(X, y, keep.astype(float), cfg, init=init), keep


def evaluate_defenses(X_clean, y_clean, X_test, y_test, naive: KohAttackResult, aware: KohAttackResult,
                      *, defenses=DEFENSES, fraction: float = 0.05, cfg: SVMConfig = SVMConfig(),
                      extra: dict | None = None) -> list[dict]:
    """One row per defense: clean error, naive attack without / with defense, aware attack with defense
    (also aware without defense and the fraction of poison copies that survive each sanitizer). ``extra``
    maps names to further :class:`KohAttackResult` s, reported as ``NAME_no_defense``,
    ``NAME_with_defense`` and ``NAME_poison_kept``."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction!r}")
    for name in defenses:
        if name not in DEFENSES:
            raise ValueError(f"defenses: unknown defense {name!r}; choose from {DEFENSES}")
    X_clean, y_clean = np.asarray(X_clean), np.asarray(y_clean).astype(int)
    attacks = {"naive": naive, "aware": aware, **(extra or {})}
    sets = {k: expand_copies(X_clean, y_clean, a.X_loc, a.y_loc, a.counts) for k, a in attacks.items()}
    Xn, yn, pn = sets["naive"]
    clean = train_svm(Xn, yn, (~pn).astype(float), cfg)
    clean_err = test_error(clean, X_test, y_test)
    nodef = {k: test_error(train_svm(Xs, ys, None, cfg, init=clean), X_test, y_test)
             for k, (Xs, ys, _) in sets.items()}
    rows = []
    for name in defenses:
        row = {"defense": name, "clean_error": clean_err}
        for k, (Xs, ys, ps) in sets.items():
            params, keep = sanitize_and_train(Xs, ys, name, fraction, cfg, init=clean)
            row[f"{k}_no_defense"] = nodef[k]
            row[f"{k}_with_defense"] = test_error(params, X_test, y_test)
            row[f"{k}_poison_kept"] = float(keep[ps].mean())
        rows.append(row)
    return rows
