r"""Jagielski et al. (2018), "Manipulating Machine Learning: Poisoning Attacks and Countermeasures for
Regression Learning", IEEE S&P.

Threat model: the victim fits a linear regression :math:`f(x) = w^\top x + b` (OLS, ridge, LASSO or
elastic net) on :math:`D_{tr} \cup D_p`; features and response lie in :math:`[0, 1]`. The attacker
adds :math:`m` points :math:`(x_c, y_c) \in [0,1]^d \times [0,1]` and maximizes

.. math::

    W(D_p) = \frac{1}{|D'|} \sum_{(x, y) \in D'} \big(f_{D_{tr} \cup D_p}(x) - y\big)^2,

with :math:`D'` the attacker's validation set (``objective="val"``, :math:`W_{val}`) or the clean
training set (``objective="train"``, :math:`W_{tr}`), both offered as in the paper.

Attacks
-------
Each is objective + feasible set + victim + one call of the driver (:func:`poisoning.attack.run`):

- :func:`optp` (the paper's OptP): projected ascent on **both** features and responses,
  ``PoisonPoints(X0, y0, optimize_labels=True)`` in ``Product({"X": Box(0, 1), "y": Box(0, 1)})``. The
  hypergradient :math:`\nabla_{(x_c, y_c)} W` goes through the victim's training
  (:mod:`poisoning.victims`): :func:`~poisoning.victims.ridge` / :func:`~poisoning.victims.ols` by the
  IFT on the closed form (Cholesky adjoint), :func:`~poisoning.victims.lasso` /
  :func:`~poisoning.victims.elastic_net` as the fixed point of the proximal-gradient (ISTA) map (the exact
  derivative of the non-smooth problem on its support, no smoothing). Initialization from random
  training points by *inverse flipping* (:math:`y_c = 1 - y`) or *boundary flipping*
  (:math:`y_c = \mathrm{round}(1 - y)`); ``init="best"`` runs both and keeps the one with the larger
  :math:`W`.
- :func:`bgd` (baseline after Xiao et al. 2015): the same ascent on the features only, responses fixed
  at their (inverse-flipped) start, objective :math:`W_{tr}`.
- :func:`statp`: features drawn from :math:`\mathcal N(\hat\mu, \hat\Sigma)` fitted to the training
  features and rounded to the corners :math:`\{0, 1\}^d`; the response is put on the side opposite to
  the clean model's prediction, :math:`y_c = 1[f_{clean}(x_c) < 1/2]`.
- :func:`trim`: the TRIM defense (iteratively trimmed least squares; keep the :math:`n` points with the
  smallest residuals, refit, until the kept set stops changing).

Step rule (:class:`bilevel.stackelberg.LineSearch`, run by the driver): all points move jointly; each
point moves along its own unit hypergradient in :math:`(x_c, y_c)` (``normalization="rows"``),
:math:`Z \leftarrow P_{[0,1]}(Z + t\,u)`. Line search: try the current step :math:`t`; if :math:`W` does not
increase, shrink :math:`t \leftarrow \beta t` (at most ``max_ls`` trials in all, then stop); after an
accepted step, the next starts at :math:`t / \sigma`. Terminate when the relative gain is below ``eps``
(``gain_rtol``) or after ``steps`` iterations. The names :math:`\eta, \beta, \sigma, \varepsilon` follow
the official code (``jagielski/manip-ml``: 0.01, 0.05, 0.9, 1e-3), but there they scale a raw gradient
step; here :math:`\eta` is the initial length of a unit step in the unit cube, so the defaults differ
(0.1, 0.5, 0.9, 1e-4).

Poisoning rate: :math:`p = m / (n + m)` (fraction of the poisoned training set), so
:func:`n_poison_for_rate` gives :math:`m = \mathrm{round}(p n / (1 - p))` (75 points at 20 % of 300,
the official code's budget).

Regularization conventions: ridge / OLS minimize :math:`\frac1{2n}\|Xw + b - y\|^2 + \frac{reg}{2}\|w\|^2`
(OLS: ``ridge(1e-6)``, so that the normal equations stay well posed); LASSO / elastic net minimize
:math:`\frac1{2n}\|Xw + b - y\|^2 + reg\,(\rho\|w\|_1 + \frac{1-\rho}{2}\|w\|^2)` (scikit-learn's
``alpha = reg``, ``l1_ratio = rho``). The intercept is never penalized. Victims default to ridge(1e-2).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from bilevel.stackelberg import LineSearch
from poisoning import victims
from poisoning.attack import AttackResult, PoisoningAttack, PoisonPoints, run
from poisoning.defenses.evaluate import fit_poisoned, fit_victim
from poisoning.feasible import Box, Product

__all__ = [
    "mse",
    "jagielski_attack",
    "n_poison_for_rate",
    "init_poison",
    "optp",
    "bgd",
    "statp",
    "trim",
]


def mse(victim, params, X, y):
    """The attacker's objective :math:`W`: mean squared error of the victim's predictions on ``(X, y)``."""
    return jnp.mean(jnp.square(victim.decision(params, X) - jnp.asarray(y)))


@functools.lru_cache(maxsize=None)
def jagielski_attack(victim, *, optimize_labels: bool = True, eta: float = 0.1, beta: float = 0.5,
                     sigma: float = 0.9, eps: float = 1e-4, max_ls: int = 10) -> PoisoningAttack:
    """OptP (``optimize_labels=True``: leader ``{"X", "y"}`` in ``[0, 1]``) or BGD (features only) against a
    regression ``victim``: :func:`mse` maximized with the line search of the module docstring. Memoized:
    equal settings share one attack, hence one compiled loop per shape."""
    if victim.task != "regression":
        raise ValueError(f"argument 'victim' must be a regression victim, got {victim.name}")
    feasible = Product({"X": Box(0.0, 1.0), "y": Box(0.0, 1.0)}) if optimize_labels else Box(0.0, 1.0)
    step = LineSearch(init_step=float(eta), shrink=float(beta), max_grow=0, max_shrink=int(max_ls),
                      normalization="rows", grow_next=1.0 / float(sigma))
    return PoisoningAttack(victim, mse, feasible, step=step, gain_tol=None, gain_rtol=float(eps))


def n_poison_for_rate(rate: float, n_train: int) -> int:
    """Number of poison points ``m`` so that ``m / (n_train + m) ≈ rate`` (``rate`` in ``[0, 1)``)."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"argument 'rate' must be in [0, 1), got {rate}")
    return int(round(rate * n_train / (1.0 - rate)))


def init_poison(X_tr, y_tr, n_poison: int, kind: str = "inverse", seed: int = 0) -> PoisonPoints:
    """Start points: random training points (without replacement when possible) with flipped responses.

    ``kind="inverse"``: :math:`y_c = 1 - y`; ``kind="boundary"``: :math:`y_c = \\mathrm{round}(1 - y)`."""
    X_tr, y_tr = np.asarray(X_tr), np.asarray(y_tr)
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(y_tr), size=n_poison, replace=n_poison > len(y_tr))
    X0, y0 = X_tr[idx].copy(), y_tr[idx]
    if kind == "inverse":
        yc = 1.0 - y0
    elif kind == "boundary":
        yc = np.where(y0 < 0.5, 1.0, 0.0)
    else:
        raise ValueError(f"argument 'kind' must be 'inverse' or 'boundary', got {kind!r}")
    return PoisonPoints(X0, np.asarray(yc, X_tr.dtype))


def _eval_set(objective, X_tr, y_tr, X_val, y_val):
    if objective == "val":
        if X_val is None:
            raise ValueError("objective='val' needs X_val, y_val")
        return X_val, y_val
    if objective == "train":
        return X_tr, y_tr
    raise ValueError(f"argument 'objective' must be 'val' or 'train', got {objective!r}")


def optp(X_tr, y_tr, X_val, y_val, n_poison: int, victim=None, *, objective: str = "val", init: str = "inverse",
         eta: float = 0.1, beta: float = 0.5, sigma: float = 0.9, eps: float = 1e-4, steps: int = 100,
         max_ls: int = 10, seed: int = 0, optimize_labels: bool = True) -> AttackResult:
    """OptP: optimize ``n_poison >= 1`` points ``(x_c, y_c)`` in ``[0,1]^{d+1}`` to maximize ``W``.

    Args:
      X_tr, y_tr: the victim's clean training set (known to the attacker).
      X_val, y_val: the attacker's validation set (used by ``objective="val"``).
      victim: a regression victim of :mod:`poisoning.victims` (default ``ridge(1e-2)``).
      objective: ``"val"`` (:math:`W_{val}`) or ``"train"`` (:math:`W_{tr}`, MSE on the clean training set).
      init: ``"inverse"``, ``"boundary"`` or ``"best"`` (both; keep the larger final ``W``).
      eta, beta, sigma, eps, steps, max_ls: the step rule (module docstring).
      seed: picks the training points the poison starts from.
      optimize_labels: False freezes the responses (that is :func:`bgd`).

    Returns:
      :class:`~poisoning.attack.AttackResult` (``res.poison.X``, ``res.poison.y``; ``res.objective`` the final
      ``W``, ``res.objective_history[0]`` its start).
    """
    victim = victims.ridge() if victim is None else victim
    X_eval, y_eval = _eval_set(objective, X_tr, y_tr, X_val, y_val)
    if n_poison < 1:
        raise ValueError(f"argument 'n_poison' must be >= 1, got {n_poison}")
    if init not in ("inverse", "boundary", "best"):
        raise ValueError(f"argument 'init' must be 'inverse', 'boundary' or 'best', got {init!r}")
    attack = jagielski_attack(victim, optimize_labels=bool(optimize_labels), eta=float(eta), beta=float(beta),
                              sigma=float(sigma), eps=float(eps), max_ls=int(max_ls))
    results = []
    for kind in ("inverse", "boundary") if init == "best" else (init,):
        start = init_poison(X_tr, y_tr, n_poison, kind, seed)  # projected onto the box by the driver
        start = PoisonPoints(start.X, start.y, optimize_labels=bool(optimize_labels))
        results.append(run(attack, X_tr, y_tr, start, (X_eval, y_eval), steps=steps))
    return max(results, key=lambda r: r.objective)


def bgd(X_tr, y_tr, X_val, y_val, n_poison: int, victim=None, *, objective: str = "train", init: str = "inverse",
        **kw) -> AttackResult:
    """BGD baseline (Xiao et al. 2015 as adapted by Jagielski et al.): features only, responses fixed at
    their flipped start; default objective :math:`W_{tr}` (MSE on the clean training set)."""
    return optp(X_tr, y_tr, X_val, y_val, n_poison, victim, objective=objective, init=init, optimize_labels=False,
                **kw)


def statp(X_tr, y_tr, n_poison: int, victim=None, *, seed: int = 0) -> PoisonPoints:
    """StatP: features ~ N(mean, cov of the training features), rounded to {0, 1}; response on the side
    opposite to the clean model's prediction (``1`` if it predicts below 1/2, else ``0``)."""
    victim = victims.ridge() if victim is None else victim
    X_tr, y_tr = np.asarray(X_tr, np.float64), np.asarray(y_tr, np.float64)
    d = X_tr.shape[1]
    if n_poison == 0:
        return PoisonPoints(np.zeros((0, d)), np.zeros((0,)))
    rng = np.random.default_rng(seed)
    cov = np.cov(X_tr, rowvar=False).reshape(d, d)
    Z = rng.multivariate_normal(X_tr.mean(axis=0), cov, size=n_poison, method="eigh", check_valid="ignore")
    Xp = (np.clip(Z, 0.0, 1.0) >= 0.5).astype(np.float64)
    pred = np.asarray(victim.decision(fit_poisoned(victim, X_tr, y_tr), Xp))
    return PoisonPoints(Xp, np.where(pred < 0.5, 1.0, 0.0))


# ----------------------------------------------------------------------------------------------------
# TRIM defense
# ----------------------------------------------------------------------------------------------------
def trim(X, y, n_keep: int, victim=None, *, max_iter: int = 50, seed: int = 0):
    """TRIM (Jagielski et al. 2018, Alg. 2): fit on a random ``n_keep`` subset, then repeatedly keep the
    ``n_keep`` points with the smallest squared residuals and refit, until the kept set stops changing.

    Returns ``(params, kept_indices, n_iterations)``."""
    victim = victims.ridge() if victim is None else victim
    X, y = np.asarray(X, np.float64), np.asarray(y, np.float64)
    if not 0 < n_keep <= len(y):
        raise ValueError(f"need 0 < n_keep <= {len(y)}, got {n_keep}")
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(y), size=n_keep, replace=False))
    for it in range(1, max_iter + 1):
        params = fit_victim(victim, X[keep], y[keep])
        resid = np.asarray(victim.decision(params, X)) - y
        new = np.sort(np.argsort(resid**2, kind="stable")[:n_keep])
        if np.array_equal(new, keep):
            return params, keep, it
        keep = new
    return fit_victim(victim, X[keep], y[keep]), keep, max_iter
