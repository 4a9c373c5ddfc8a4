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
- :func:`optp` (the paper's OptP): projected gradient ascent on **both** features and responses.
  The hypergradient :math:`\nabla_{(x_c, y_c)} W` goes through the victim's training by implicit
  differentiation (:class:`Victim`): ridge/OLS via :class:`bilevel.ClosedForm` + :class:`bilevel.Implicit`
  (Cholesky adjoint; ``method="direct"`` differentiates the normal equations instead); LASSO / elastic
  net as the fixed point of the proximal-gradient (ISTA) map
  :math:`T(\theta) = \mathrm{prox}_{t\alpha\rho\|\cdot\|_1}(\theta - t\nabla f(\theta))`, solved by FISTA
  and differentiated by :func:`bilevel.fixed_point_solve` (the soft-threshold's derivative is 0 on
  the zero coordinates, so this is the exact derivative of the non-smooth LASSO on its support, no
  smoothing). Initialization from random training points by *inverse flipping*
  (:math:`y_c = 1 - y`) or *boundary flipping* (:math:`y_c = \mathrm{round}(1 - y)`); ``init="best"``
  runs both and keeps the one with the larger :math:`W`.
- :func:`bgd` (baseline after Xiao et al. 2015): the same ascent on the features only, responses fixed
  at their (inverse-flipped) start, objective :math:`W_{tr}`.
- :func:`statp`: features drawn from :math:`\mathcal N(\hat\mu, \hat\Sigma)` fitted to the training
  features and rounded to the corners :math:`\{0, 1\}^d`; the response is put on the side opposite to
  the clean model's prediction, :math:`y_c = 1[f_{clean}(x_c) < 1/2]`.
- :func:`trim`: the TRIM defense (iteratively trimmed least squares; keep the :math:`n` points with the
  smallest residuals, refit, until the kept set stops changing).

Step rule (one compiled :func:`jax.lax.while_loop`): all points move jointly; each point moves along its
own unit hypergradient (in :math:`(x_c, y_c)`), :math:`Z \leftarrow P_{[0,1]}(Z + t\,u)`. Line search:
try the current step :math:`t`; if :math:`W` does not increase, shrink :math:`t \leftarrow \beta t` (at
most ``max_ls`` times, then stop); after an accepted step, grow :math:`t \leftarrow t / \sigma`.
Terminate when the relative gain is below ``eps`` or after ``steps`` iterations. The names
:math:`\eta, \beta, \sigma, \varepsilon` follow the official code (``jagielski/manip-ml``: 0.01, 0.05,
0.9, 1e-3), but there they scale a raw gradient step; here :math:`\eta` is the initial length of a
unit step in the unit cube, so the defaults differ (0.1, 0.5, 0.9, 1e-4).

Poisoning rate: :math:`p = m / (n + m)` (fraction of the poisoned training set), so
:func:`n_poison_for_rate` gives :math:`m = \mathrm{round}(p n / (1 - p))` (75 points at 20 % of 300,
the official code's budget).

Regularization conventions (``reg``): ridge / OLS minimize
:math:`\frac1{2n}\|Xw + b - y\|^2 + \frac{reg}{2}\|w\|^2` (:func:`bilevel.problems.ridge_loss`; OLS uses a
tiny ``reg`` so that the normal equations stay well posed); LASSO / elastic net minimize
:math:`\frac1{2n}\|Xw + b - y\|^2 + reg\,(\rho\|w\|_1 + \frac{1-\rho}{2}\|w\|^2)` (scikit-learn's
``alpha = reg``, ``l1_ratio = rho``). The intercept is never penalized.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bilevel import ClosedForm, Direct, Implicit, ImplicitConfig, fixed_point_solve, minimize
from bilevel.problems.ridge import ridge_closed_form, ridge_loss

__all__ = [
    "Victim",
    "PoisonResult",
    "n_poison_for_rate",
    "init_poison",
    "attacker_objective",
    "optp",
    "bgd",
    "statp",
    "mse",
    "poisoned_fit",
    "trim",
]

_DEFAULT_REG = {"ols": 1e-6, "ridge": 1e-2, "lasso": 1e-3, "enet": 1e-3}


# ----------------------------------------------------------------------------------------------------
# victims
# ----------------------------------------------------------------------------------------------------
def _soft(u, k):
    return jnp.sign(u) * jnp.maximum(jnp.abs(u) - k, 0.0)


@dataclasses.dataclass(frozen=True)
class Victim:
    """A linear regression victim, differentiable in its training data.

    Attributes:
      kind: ``"ols"``, ``"ridge"``, ``"lasso"`` or ``"enet"``.
      reg: regularization weight (see the module docstring; ``None`` = a default per kind).
      l1_ratio: elastic-net mixing :math:`\\rho` (1 for LASSO; ignored by OLS / ridge).
      method: ``"implicit"`` (IFT) or ``"direct"`` (ridge/OLS only: autodiff of the normal equations).
      maxiter, tol: FISTA budget and stopping tolerance (sup-norm of the step) for LASSO / elastic net.
    """

    kind: str = "ridge"
    reg: float | None = None
    l1_ratio: float | None = None
    method: str = "implicit"
    maxiter: int = 20000
    tol: float = 1e-12

    def __post_init__(self):
        if self.kind not in _DEFAULT_REG:
            raise ValueError(f"kind must be one of {sorted(_DEFAULT_REG)}, got {self.kind!r}")
        if self.method not in ("implicit", "direct"):
            raise ValueError(f"method must be 'implicit' or 'direct', got {self.method!r}")
        if self.reg is None:
            object.__setattr__(self, "reg", _DEFAULT_REG[self.kind])
        if self.l1_ratio is None:
            object.__setattr__(self, "l1_ratio", {"lasso": 1.0, "enet": 0.5}.get(self.kind, 0.0))
        if self.reg < 0 or not 0.0 <= self.l1_ratio <= 1.0:
            raise ValueError(f"need reg >= 0 and 0 <= l1_ratio <= 1, got {self.reg}, {self.l1_ratio}")

    @property
    def smooth(self) -> bool:
        return self.kind in ("ols", "ridge")

    def init_params(self, d: int, dtype=None):
        dtype = dtype or jnp.zeros(()).dtype
        return {"w": jnp.zeros((d,), dtype), "b": jnp.zeros((), dtype)}

    def fit(self, X, y, init=None):
        """Train on ``(X, y)``; returns ``{"w": (d,), "b": ()}``, differentiable in ``X`` and ``y``.

        ``init`` warm-starts LASSO / elastic net (it receives no derivative)."""
        X = jnp.asarray(X)
        y = jnp.asarray(y, X.dtype)
        if self.smooth:
            reg = jnp.asarray(self.reg, X.dtype)
            solver = ClosedForm(fn=lambda r, X_, y_: ridge_closed_form(r, X_, y_), tol=1e-6, on_failure="ignore")
            method = Implicit(linear_solver="cholesky") if self.method == "implicit" else Direct()
            return minimize(ridge_loss, self.init_params(X.shape[1], X.dtype), reg, X, y,
                            solver=solver, method=method)
        if self.method != "implicit":
            raise ValueError("LASSO / elastic net are differentiated implicitly only (method='implicit')")
        return self._fit_prox(X, y, init)

    # --- LASSO / elastic net: fixed point of the proximal-gradient map -------------------------------
    def _prox_parts(self, X):
        n, d = X.shape
        l2 = self.reg * (1.0 - self.l1_ratio)
        Xa = jnp.concatenate([X, jnp.ones((n, 1), X.dtype)], axis=1)
        lip = jnp.linalg.eigvalsh(Xa.T @ Xa / n)[-1] + l2
        return jax.lax.stop_gradient(1.0 / lip), l2, self.reg * self.l1_ratio

    def _prox_map(self, theta, X, y):
        step, l2, l1 = self._prox_parts(X)
        w, b = theta[:-1], theta[-1]
        r = X @ w + b - y
        gw = X.T @ r / X.shape[0] + l2 * w
        gb = jnp.mean(r)
        return jnp.concatenate([_soft(w - step * gw, step * l1), (b - step * gb)[None]])

    def _fit_prox(self, X, y, init):
        d = X.shape[1]
        theta0 = (jnp.zeros((d + 1,), X.dtype) if init is None
                  else jnp.concatenate([init["w"], jnp.reshape(init["b"], (1,))]).astype(X.dtype))
        theta0 = jax.lax.stop_gradient(theta0)
        maxiter, tol = int(self.maxiter), float(self.tol)
        T = self._prox_map

        def fista(init_theta, X_, y_):  # never differentiated (the IFT is)
            def cond(s):
                _, _, _, k, delta = s
                return (k < maxiter) & (delta > tol)

            def body(s):
                x, z, t, k, _ = s
                x_new = T(z, X_, y_)
                t_new = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
                z_new = x_new + ((t - 1.0) / t_new) * (x_new - x)
                delta = jnp.max(jnp.abs(x_new - x))
                return x_new, z_new, t_new, k + 1, delta

            s0 = (init_theta, init_theta, jnp.asarray(1.0, X_.dtype), 0, jnp.asarray(jnp.inf, X_.dtype))
            x, *_ = jax.lax.while_loop(cond, body, s0)
            # a few plain ISTA steps land exactly on the fixed point's support
            x = jax.lax.fori_loop(0, 50, lambda _, v: T(v, X_, y_), x)
            return x

        theta = fixed_point_solve(T, fista, theta0, X, y,
                                  config=ImplicitConfig(linear_solver="lu", on_failure="ignore"))
        return {"w": theta[:-1], "b": theta[-1]}

    def __str__(self):
        extra = f", l1_ratio={self.l1_ratio:g}" if self.kind == "enet" else ""
        return f"{self.kind}(reg={self.reg:g}{extra})"


def _predict(params, X):
    return X @ params["w"] + params["b"]


def mse(params, X, y) -> jax.Array:
    """Mean squared error ``mean((X w + b - y)**2)``."""
    return jnp.mean(jnp.square(_predict(params, jnp.asarray(X)) - jnp.asarray(y)))


def poisoned_fit(victim: Victim, X_tr, y_tr, X_p=None, y_p=None):
    """The victim trained on ``D_tr ∪ D_p`` (or on ``D_tr`` when no poison is given)."""
    X_tr, y_tr = jnp.asarray(X_tr), jnp.asarray(y_tr)
    if X_p is not None and len(X_p):
        X_tr = jnp.concatenate([X_tr, jnp.asarray(X_p, X_tr.dtype)])
        y_tr = jnp.concatenate([y_tr, jnp.asarray(y_p, y_tr.dtype)])
    return victim.fit(X_tr, y_tr)


def n_poison_for_rate(rate: float, n_train: int) -> int:
    """Number of poison points ``m`` so that ``m / (n_train + m) ≈ rate`` (``rate`` in ``[0, 1)``)."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate must be in [0, 1), got {rate}")
    return int(round(rate * n_train / (1.0 - rate)))


# ----------------------------------------------------------------------------------------------------
# initialization and objective
# ----------------------------------------------------------------------------------------------------
def init_poison(X_tr, y_tr, n_poison: int, kind: str = "inverse", seed: int = 0):
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
        raise ValueError(f"kind must be 'inverse' or 'boundary', got {kind!r}")
    return X0, np.asarray(yc, X_tr.dtype)


def attacker_objective(victim: Victim, X_tr, y_tr, X_eval, y_eval):
    """``W(X_p, y_p)``: MSE on ``(X_eval, y_eval)`` of the victim trained on ``D_tr ∪ D_p``."""
    X_tr, y_tr = jnp.asarray(X_tr), jnp.asarray(y_tr)
    X_eval, y_eval = jnp.asarray(X_eval), jnp.asarray(y_eval)

    def W(X_p, y_p):
        params = victim.fit(jnp.concatenate([X_tr, X_p]), jnp.concatenate([y_tr, y_p]))
        return mse(params, X_eval, y_eval)

    return W


# ----------------------------------------------------------------------------------------------------
# projected gradient ascent with line search
# ----------------------------------------------------------------------------------------------------
class PoisonResult(NamedTuple):
    X_poison: np.ndarray
    y_poison: np.ndarray
    objective: float  # final W
    objective_start: float  # W at the initialization
    n_steps: int
    seconds: float
    init: str


@functools.partial(jax.jit, static_argnames=("victim",))
def _ascent(X_tr, y_tr, X_eval, y_eval, X0, y0, eta, beta, sigma, eps, y_mask, steps, max_ls, *, victim):
    W = attacker_objective(victim, X_tr, y_tr, X_eval, y_eval)
    vg = jax.value_and_grad(W, argnums=(0, 1))

    def project(X, y):
        return jnp.clip(X, 0.0, 1.0), jnp.clip(y, 0.0, 1.0)

    def cond(s):
        return (s["k"] < steps) & ~s["done"]

    def body(s):
        X, y, val, t = s["X"], s["y"], s["val"], s["t"]
        _, (gx, gy) = vg(X, y)
        gy = gy * y_mask  # 0 freezes the responses (BGD)
        nrm = jnp.sqrt(jnp.sum(gx**2, axis=1) + gy**2)
        safe = jnp.where(nrm > 0, nrm, 1.0)
        ux, uy = gx / safe[:, None], gy / safe

        def ls_cond(ls):
            return (ls["j"] < max_ls) & ~ls["ok"]

        def ls_body(ls):
            tj = ls["t"]
            Xc, yc = project(X + tj * ux, y + tj * uy)
            wc = W(Xc, yc)
            ok = wc > val
            return {"j": ls["j"] + 1, "ok": ok, "t": jnp.where(ok, tj, beta * tj), "X": Xc, "y": yc, "w": wc}

        ls0 = {"j": 0, "ok": jnp.asarray(False), "t": t, "X": X, "y": y, "w": val}
        ls = jax.lax.while_loop(ls_cond, ls_body, ls0)
        ok = ls["ok"]
        gain = ls["w"] - val
        return {
            "X": jnp.where(ok, ls["X"], X),
            "y": jnp.where(ok, ls["y"], y),
            "val": jnp.where(ok, ls["w"], val),
            "t": jnp.where(ok, ls["t"] / sigma, ls["t"]),
            "k": s["k"] + 1,
            "done": ~ok | (gain < eps * jnp.abs(val)),
        }

    X0, y0 = project(X0, y0)
    w0 = W(X0, y0)
    s0 = {"X": X0, "y": y0, "val": w0, "t": jnp.asarray(eta, X0.dtype), "k": 0, "done": jnp.asarray(False)}
    s = jax.lax.while_loop(cond, body, s0)
    return s["X"], s["y"], s["val"], w0, s["k"]


def _run_ascent(victim, X_tr, y_tr, X_eval, y_eval, X0, y0, *, optimize_y, eta, beta, sigma, eps, steps,
                max_ls, init_name):
    dt = jnp.asarray(X_tr).dtype
    args = [jnp.asarray(a, dt) for a in (X_tr, y_tr, X_eval, y_eval, X0, y0)]
    t0 = time.perf_counter()
    Xp, yp, val, w0, k = jax.block_until_ready(
        _ascent(*args, eta, beta, sigma, eps, 1.0 if optimize_y else 0.0, int(steps), int(max_ls), victim=victim))
    return PoisonResult(np.asarray(Xp), np.asarray(yp), float(val), float(w0), int(k),
                        time.perf_counter() - t0, init_name)


def _eval_set(objective, X_tr, y_tr, X_val, y_val):
    if objective == "val":
        if X_val is None:
            raise ValueError("objective='val' needs X_val, y_val")
        return X_val, y_val
    if objective == "train":
        return X_tr, y_tr
    raise ValueError(f"objective must be 'val' or 'train', got {objective!r}")


def optp(X_tr, y_tr, X_val, y_val, n_poison: int, victim: Victim | None = None, *, objective: str = "val",
         init: str = "inverse", eta: float = 0.1, beta: float = 0.5, sigma: float = 0.9, eps: float = 1e-4,
         steps: int = 100, max_ls: int = 10, seed: int = 0, optimize_y: bool = True) -> PoisonResult:
    """OptP: optimize ``n_poison`` points ``(x_c, y_c)`` in ``[0,1]^{d+1}`` to maximize ``W``.

    Args:
      X_tr, y_tr: the victim's clean training set (known to the attacker).
      X_val, y_val: the attacker's validation set (used by ``objective="val"``).
      n_poison: ``m`` (0 returns empty arrays).
      victim: the :class:`Victim` (default ridge).
      objective: ``"val"`` (:math:`W_{val}`) or ``"train"`` (:math:`W_{tr}`, MSE on the clean training set).
      init: ``"inverse"``, ``"boundary"`` or ``"best"`` (both; keep the larger final ``W``).
      eta, beta, sigma, eps, steps, max_ls: the step rule (module docstring).
      seed: picks the training points the poison starts from.
      optimize_y: False freezes the responses (that is :func:`bgd`).
    """
    victim = victim or Victim("ridge")
    X_eval, y_eval = _eval_set(objective, X_tr, y_tr, X_val, y_val)
    d = np.asarray(X_tr).shape[1]
    if n_poison == 0:
        return PoisonResult(np.zeros((0, d)), np.zeros((0,)), float("nan"), float("nan"), 0, 0.0, init)
    kinds = ("inverse", "boundary") if init == "best" else (init,)
    results = []
    for kind in kinds:
        X0, y0 = init_poison(X_tr, y_tr, n_poison, kind, seed)
        results.append(_run_ascent(victim, X_tr, y_tr, X_eval, y_eval, X0, y0, optimize_y=optimize_y, eta=eta,
                                   beta=beta, sigma=sigma, eps=eps, steps=steps, max_ls=max_ls, init_name=kind))
    best = max(results, key=lambda r: r.objective)
    return best._replace(seconds=sum(r.seconds for r in results))


def bgd(X_tr, y_tr, X_val, y_val, n_poison: int, victim: Victim | None = None, *, objective: str = "train",
        init: str = "inverse", **kw) -> PoisonResult:
    """BGD baseline (Xiao et al. 2015 as adapted by Jagielski et al.): features only, responses fixed at
    their flipped start; default objective :math:`W_{tr}` (MSE on the clean training set)."""
    return optp(X_tr, y_tr, X_val, y_val, n_poison, victim, objective=objective, init=init, optimize_y=False, **kw)


def statp(X_tr, y_tr, n_poison: int, victim: Victim | None = None, *, seed: int = 0):
    """StatP: features ~ N(mean, cov of the training features), rounded to {0, 1}; response on the side
    opposite to the clean model's prediction (``1`` if it predicts below 1/2, else ``0``)."""
    victim = victim or Victim("ridge")
    X_tr, y_tr = np.asarray(X_tr, np.float64), np.asarray(y_tr, np.float64)
    d = X_tr.shape[1]
    if n_poison == 0:
        return np.zeros((0, d)), np.zeros((0,))
    rng = np.random.default_rng(seed)
    cov = np.cov(X_tr, rowvar=False).reshape(d, d)
    Z = rng.multivariate_normal(X_tr.mean(axis=0), cov, size=n_poison, method="eigh", check_valid="ignore")
    Xp = (np.clip(Z, 0.0, 1.0) >= 0.5).astype(np.float64)
    params = poisoned_fit(victim, X_tr, y_tr)
    pred = np.asarray(_predict(params, jnp.asarray(Xp)))
    yp = np.where(pred < 0.5, 1.0, 0.0)
    return Xp, yp


# ----------------------------------------------------------------------------------------------------
# TRIM defense
# ----------------------------------------------------------------------------------------------------
def trim(X, y, n_keep: int, victim: Victim | None = None, *, max_iter: int = 50, seed: int = 0):
    """TRIM (Jagielski et al. 2018, Alg. 2): fit on a random ``n_keep`` subset, then repeatedly keep the
    ``n_keep`` points with the smallest squared residuals and refit, until the kept set stops changing.

    Returns ``(params, kept_indices, n_iterations)``."""
    victim = victim or Victim("ridge")
    X, y = np.asarray(X, np.float64), np.asarray(y, np.float64)
    if not 0 < n_keep <= len(y):
        raise ValueError(f"need 0 < n_keep <= {len(y)}, got {n_keep}")
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(y), size=n_keep, replace=False))
    for it in range(1, max_iter + 1):
        params = victim.fit(X[keep], y[keep])
        resid = np.asarray(_predict(params, jnp.asarray(X))) - y
        new = np.sort(np.argsort(resid**2, kind="stable")[:n_keep])
        if np.array_equal(new, keep):
            return params, keep, it
        keep = new
    return victim.fit(X[keep], y[keep]), keep, max_iter
