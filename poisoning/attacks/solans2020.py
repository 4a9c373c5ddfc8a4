r"""Solans, Biggio & Castillo (2020), "Poisoning attacks on algorithmic fairness", ECML-PKDD.

Threat model (white box): the attacker knows the victim (L2 logistic regression), its training set
:math:`D_{tr}` and a validation set :math:`D_{val}` whose points carry a binary sensitive attribute
:math:`g_k \in \{0, 1\}` (1 = privileged, e.g. ``sex = Male`` on Adult). It injects points
:math:`(x_c, y_c)` (label fixed, features optimized) so that the retrained model treats the two
groups differently. Demographic parity is not differentiable, so the attacker maximizes a smooth
*disparate-impact surrogate* through the usual bilevel problem (Biggio et al. 2012):

.. math::

    \max_{X_p \in \Phi} \; L_{DI}\big(w^\star(X_p)\big), \qquad
    w^\star(X_p) = \arg\min_w \mathcal L_{log}\big(w; D_{tr} \cup D_p\big).

The surrogate (:func:`disparate_impact_objective`), exactly as in the authors' secml loss
``CLossDisparateImpact`` (repository ``dsolanno/Poisoning-Attacks-on-Algorithmic-Fairness``): each
validation point gets the *group* as its label, :math:`z_k = +1` for unprivileged and :math:`z_k = -1`
for privileged points (the true label :math:`y_k` is **not** used), its logistic loss
:math:`\ell(z_k, s_k) = \log(1 + e^{-z_k s_k})` on the score :math:`s_k = w^\top x_k + b` of the
favorable class, and the unprivileged losses are re-weighted by :math:`-p_{priv}/p_{unpriv}`
(the group proportions in :math:`D_{val}`):

.. math::

    L_{DI}(w) = \frac{1}{|V|}\Big[\sum_{k \in P} \log(1 + e^{s_k})
      \;-\; \frac{p_{priv}}{p_{unpriv}} \sum_{k \in U} \log(1 + e^{-s_k})\Big],

i.e. "loss on privileged points minus the rescaled loss on unprivileged points" (secml's logistic
loss also divides by :math:`\log 2`; a constant factor that does not change the unit-gradient ascent
and is left out here). Since the gradient of both terms w.r.t. :math:`s_k` is positive, the surrogate
rewards raising the scores of privileged points that already score high (the privileged term grows
linearly) far more than those of unprivileged points (their term saturates), which is how it opens
a gap in positive rates. ``labels="true"`` uses the true labels :math:`y_k` instead of the group
labels (privileged loss minus rescaled unprivileged loss on :math:`(x_k, y_k)`, an error-rate
disparity); it is an alternative reading offered for comparison, the default is the authors' code.

Attack (secml ``CAttackPoisoningLogisticRegression`` as configured in the notebooks):

1. *Initialization* (:func:`init_poison`): ``n`` points drawn at random from the validation set, their
   labels flipped, plus uniform noise of size :math:`10^{-3}` (secml ``init_type="random"``). The
   draw can be restricted to one group and/or one label (``group=``, ``label=``); the default, like
   secml, draws from all validation points.
2. *Feasible set* :math:`\Phi`: the box :math:`[\min X_{val}, \max X_{val}]` (secml passes the scalar
   global min/max of the validation features) intersected, when ``dmax`` is given, with the
   :math:`\ell_1` ball :math:`\|x - x^{(0)}\|_1 \le d_{max}` around each point's start
   (:class:`BoxL1Ball`: exact projection by bisection on the multiplier of the :math:`\ell_1`
   constraint; :class:`L1Ball` alone composes with :class:`~poisoning.feasible.Intersection`).
   The notebooks set ``distance='l1', dmax=10``; note that secml's ``_constraint_creation`` builds that
   constraint with radius :math:`10^{12}`, so the reference runs effectively used the box alone
   (``dmax=None`` here reproduces that).
3. *Ascent*: projected steps of length :math:`\eta = 0.05` along the unit hypergradient (secml
   ``pgd-ls`` with ``eta = eta_min = 0.05``, ``eps = 1e-6``, up to 1000 iterations), the hypergradient
   by implicit differentiation of the logistic-regression optimality conditions
   (:func:`poisoning.attack.logistic_learner`).
4. *Multiple points*: :func:`poisoning.attack.run` with ``mode="sequential"`` adds the points one at a
   time, earlier ones frozen (secml keeps all initial points in the training set and re-optimizes
   them one by one in one sweep; the greedy order here has the advantage that the victim after
   ``k`` points is the ``k``-point attack, so one run serves every poison fraction).

Data: :func:`zafar_synthetic` is the generator of Zafar et al. (2017) as modified in the authors'
notebooks: one 2-D Gaussian per class (:math:`\mu_+ = (2, 2)`, :math:`\Sigma_+ = [[5, 1], [1, 5]]`;
:math:`\mu_- = \mu_+ - (\delta, \delta)/\sqrt 2`, :math:`\Sigma_- = [[10, 1], [1, 3]]`, so
:math:`\delta` is the Euclidean distance between the two means), and a sensitive attribute drawn
per point as :math:`g = 1` (privileged) with probability
:math:`\mathcal N_+(Rx) / (\mathcal N_+(Rx) + \mathcal N_-(Rx))`, :math:`R` a rotation by
``disc_factor`` (:math:`\pi/4`): the larger :math:`\delta`, the more the label and the group are
correlated (the paper sweeps :math:`\delta \in [0, 9]`). Splits (:func:`solans_split`): 20 % test,
the rest halved into train / validation.

Metrics live in :mod:`poisoning.fairness` (demographic-parity difference, average-odds difference,
per-group FPR/FNR, accuracy).

References
----------
- D. Solans, B. Biggio, C. Castillo, "Poisoning attacks on algorithmic fairness", ECML-PKDD 2020
  (arXiv:2004.07401).
- M. B. Zafar, I. Valera, M. Gomez-Rodriguez, K. P. Gummadi, "Fairness constraints: mechanisms for
  fair classification", AISTATS 2017.
- B. Biggio, B. Nelson, P. Laskov, "Poisoning attacks against support vector machines", ICML 2012.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from poisoning.attack import AttackResult, PoisoningAttack, logistic_learner, run
from poisoning.fairness import check_groups
from poisoning.feasible import Box, FeasibleSet, _rowwise

__all__ = [
    "PAPER",
    "L1Ball",
    "BoxL1Ball",
    "disparate_impact_objective",
    "solans_attack",
    "init_poison",
    "poison_fairness",
    "zafar_synthetic",
    "solans_split",
]

PAPER = {
    "claim": ("the attack raises the demographic-parity and average-odds differences as the poison "
              "fraction grows (0.05-0.29 of the training set), with a moderate accuracy drop; it works "
              "white-box and transfers black-box (synthetic Zafar data, COMPAS, Adult, German)"),
    "numbers": "headline numbers not retrieved (paper-protocols.md §13)",
    "step_size": 0.05,
    "max_iter": 1000,
    "eps": 1e-6,
    "dmax_l1": 10.0,
    "poison_fractions": tuple(round(0.05 + 0.02 * i, 2) for i in range(13)),
    "repetitions": 5,
}


# ----------------------------------------------------------------------------------------------------
# feasible set
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class L1Ball(FeasibleSet):
    """``{x : ||x - center||_1 <= radius}`` for each row (point) separately; ``center`` is ``(d,)`` or
    one center per row ``(m, d)``. Projection by :func:`optax.projections.projection_l1_ball`
    (Duchi et al. 2008, sort-based, exact). Compared by identity (it may hold an array center)."""

    center: Any = 0.0
    radius: float = 1.0

    def __post_init__(self):
        if not float(self.radius) > 0:
            raise ValueError(f"L1Ball: radius must be > 0, got {self.radius}")

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
    but without Dykstra's inner loop. ``center`` must lie in the box (``(d,)`` or ``(m, d)``)."""

    lo: Any = 0.0
    hi: Any = 1.0
    center: Any = 0.0
    radius: float = 1.0
    iters: int = 60

    def __post_init__(self):
        if not float(self.radius) > 0:
            raise ValueError(f"BoxL1Ball: radius must be > 0, got {self.radius}")
        if jnp.any(jnp.asarray(self.lo) > jnp.asarray(self.hi)):
            raise ValueError("BoxL1Ball: lo must be <= hi")

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
# objective
# ----------------------------------------------------------------------------------------------------
def disparate_impact_objective(groups_val, *, privileged: int = 1, labels: str = "group",
                               unpriv_weight: float | None = None, reduction: str = "mean"):
    r"""The disparate-impact surrogate :math:`L_{DI}` of Solans et al. (see the module docstring) for
    validation points with sensitive attribute ``groups_val`` (0/1, ``privileged`` marks the
    privileged value). Returns ``objective(params, X_val, y_val, learner) -> scalar`` to maximize.

    Args:
      groups_val: ``(n_val,)`` 0/1 group labels of the validation points (both groups present).
      labels: ``"group"`` (default, the authors' code: label :math:`+1` for unprivileged, :math:`-1`
        for privileged points, ``y_val`` unused) or ``"true"`` (the true labels ``y_val`` in
        :math:`\pm 1`).
      unpriv_weight: the multiplier of the unprivileged losses; default :math:`-p_{priv}/p_{unpriv}`.
      reduction: ``"mean"`` over all validation points (secml) or ``"sum"``.
    """
    if labels not in ("group", "true"):
        raise ValueError(f"labels must be 'group' or 'true', got {labels!r}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if privileged not in (0, 1):
        raise ValueError(f"privileged must be 0 or 1, got {privileged!r}")
    g = np.asarray(check_groups(groups_val, name="groups_val", require_both=True))
    unpriv = g != privileged
    p_unpriv = float(np.mean(unpriv))
    lam = -(1.0 - p_unpriv) / p_unpriv if unpriv_weight is None else float(unpriv_weight)
    n_val = g.shape[0]
    unpriv_j = jnp.asarray(unpriv)

    def objective(params, X_val, y_val, learner):
        X_val = jnp.asarray(X_val)
        if X_val.shape[0] != n_val:
            raise ValueError(f"X_val has {X_val.shape[0]} rows but groups_val has {n_val} entries")
        s = learner.decision(params, X_val)
        if labels == "group":
            z = jnp.where(unpriv_j, 1.0, -1.0).astype(s.dtype)
        else:
            z = jnp.asarray(y_val).astype(s.dtype)
        loss = jax.nn.softplus(-z * s)
        weighted = jnp.where(unpriv_j, lam, 1.0).astype(s.dtype) * loss
        return jnp.mean(weighted) if reduction == "mean" else jnp.sum(weighted)

    objective.unpriv_weight = lam
    objective.groups = g
    return objective


# ----------------------------------------------------------------------------------------------------
# attack
# ----------------------------------------------------------------------------------------------------
def solans_attack(groups_val, *, lb: float, ub: float, center=None, dmax: float | None = None,
                  reg: float = 1e-2, step_size: float = 0.05, tol: float = 1e-6, patience: int = 1,
                  step_rule: str = "fixed", labels: str = "group", privileged: int = 1) -> PoisoningAttack:
    """The fairness attack as a :class:`~poisoning.attack.PoisoningAttack`: victim
    :func:`~poisoning.attack.logistic_learner` (``reg``), objective :func:`disparate_impact_objective`,
    feasible set ``Box(lb, ub)``, intersected with the ``l1`` ball of radius ``dmax`` around ``center``
    (the starting points, ``(m, d)``, inside the box) when ``dmax`` is given (:class:`BoxL1Ball`, exact
    projection), unit-gradient steps of length ``step_size``."""
    if not float(ub) >= float(lb):
        raise ValueError(f"lb must be <= ub, got lb={lb}, ub={ub}")
    box = Box(float(lb), float(ub))
    if dmax is None:
        feasible = box
    else:
        if center is None:
            raise ValueError("dmax needs center (the starting poison points)")
        feasible = BoxL1Ball(float(lb), float(ub), jnp.asarray(center), float(dmax))
    return PoisoningAttack(
        learner=logistic_learner(float(reg)),
        objective=disparate_impact_objective(groups_val, privileged=privileged, labels=labels),
        feasible=feasible,
        step_size=float(step_size),
        normalize=True,
        step_rule=step_rule,
        tol=float(tol),
        patience=int(patience),
    )


def init_poison(X_val, y_val, n_points: int, *, seed: int = 0, groups_val=None, group: int | None = None,
                label=None, noise: float = 1e-3, flip: bool = True):
    """Starting poison (secml ``init_type="random"``): ``n_points`` validation points drawn at random
    (without replacement while possible), restricted to ``groups_val == group`` and/or
    ``y_val == label`` when given, their labels flipped (``flip``; labels :math:`\\pm 1`), plus
    uniform noise in :math:`[-\\text{noise}, \\text{noise}]`. Returns ``(X0, y0, indices)``."""
    X_val, y_val = np.asarray(X_val, float), np.asarray(y_val)
    n = len(y_val)
    if X_val.ndim != 2 or X_val.shape[0] != n:
        raise ValueError(f"X_val {X_val.shape} and y_val {y_val.shape} do not match")
    if int(n_points) < 1:
        raise ValueError(f"n_points must be >= 1, got {n_points}")
    mask = np.ones(n, bool)
    if group is not None:
        if groups_val is None:
            raise ValueError("group= needs groups_val")
        mask &= np.asarray(check_groups(groups_val, n, name="groups_val")) == group
    if label is not None:
        mask &= y_val == label
    pool = np.flatnonzero(mask)
    if pool.size == 0:
        raise ValueError(f"no validation point with group={group!r}, label={label!r}")
    rng = np.random.default_rng(seed)
    idx = rng.choice(pool, size=int(n_points), replace=int(n_points) > pool.size)
    X0 = X_val[idx] + noise * (2.0 * rng.random((int(n_points), X_val.shape[1])) - 1.0)
    y0 = -y_val[idx] if flip else y_val[idx].copy()
    return X0, y0, idx


def poison_fairness(X_train, y_train, X_val, y_val, groups_val, n_points: int, *, steps: int = 1000,
                    seed: int = 0, reg: float = 1e-2, dmax: float | None = 10.0, box=None,
                    step_size: float = 0.05, tol: float = 1e-6, patience: int = 1, labels: str = "group",
                    init_group: int | None = None, init_label=None, mode: str = "sequential",
                    callback=None) -> tuple[AttackResult, np.ndarray, PoisoningAttack]:
    """Run the attack with ``n_points`` poison points. ``box`` = ``(lb, ub)`` or ``None`` for the secml
    choice ``(X_val.min(), X_val.max())``. Labels are :math:`\\pm 1`; ``groups_val`` 0/1 (1 =
    privileged). Returns ``(result, X0, attack)``; in sequential mode ``result.block_params[k - 1]`` is
    the victim after the first ``k`` points."""
    X_val = np.asarray(X_val, float)
    groups_val = check_groups(groups_val, X_val.shape[0], name="groups_val", require_both=True)
    if box is None:
        box = (float(X_val.min()), float(X_val.max()))
    X0, y0, _ = init_poison(X_val, y_val, n_points, seed=seed, groups_val=groups_val, group=init_group,
                            label=init_label)
    X0 = np.clip(X0, box[0], box[1])
    attack = solans_attack(groups_val, lb=box[0], ub=box[1], center=X0 if dmax is not None else None,
                           dmax=dmax, reg=reg, step_size=step_size, tol=tol, patience=patience, labels=labels)
    res = run(attack, X_train, y_train, X0, y0, X_val, y_val, steps=steps, mode=mode, callback=callback)
    return res, X0, attack


# ----------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------
def _gauss_pdf(X, mu, cov):
    diff = X - mu
    sol = np.linalg.solve(cov, diff.T).T
    return np.exp(-0.5 * np.sum(diff * sol, axis=1)) / (2 * np.pi * np.sqrt(np.linalg.det(cov)))


def zafar_synthetic(n_per_class: int = 400, distance: float = 4.0, *, disc_factor: float = math.pi / 4,
                    seed: int = 0):
    """Zafar-style synthetic data as in Solans et al.'s notebooks (see the module docstring).

    Returns ``(X, y, groups)``: ``X`` ``(2 n, 2)`` float, ``y`` in ``{-1, +1}`` (+1 = favorable class),
    ``groups`` in ``{0, 1}`` (1 = privileged, correlated with ``y = +1``). Deterministic from ``seed``.
    """
    if int(n_per_class) < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    if not float(distance) >= 0:
        raise ValueError(f"distance must be >= 0, got {distance}")
    rng = np.random.default_rng(seed)
    n = int(n_per_class)
    mu1, cov1 = np.array([2.0, 2.0]), np.array([[5.0, 1.0], [1.0, 5.0]])
    shift = float(distance) / math.sqrt(2.0)
    mu2, cov2 = mu1 - shift, np.array([[10.0, 1.0], [1.0, 3.0]])
    X = np.vstack([rng.multivariate_normal(mu1, cov1, n), rng.multivariate_normal(mu2, cov2, n)])
    y = np.concatenate([np.ones(n), -np.ones(n)])
    perm = rng.permutation(2 * n)
    X, y = X[perm], y[perm]
    c, s = math.cos(disc_factor), math.sin(disc_factor)
    X_rot = X @ np.array([[c, -s], [s, c]])
    p1, p2 = _gauss_pdf(X_rot, mu1, cov1), _gauss_pdf(X_rot, mu2, cov2)
    tot = p1 + p2
    p_priv = np.where(tot > 0, p1 / np.where(tot > 0, tot, 1.0), 0.5)
    groups = (rng.random(2 * n) < p_priv).astype(np.int64)
    return X, y, groups


def solans_split(X, y, groups, *, test_fraction: float = 0.2, seed: int = 0):
    """The paper's split: ``test_fraction`` test, the rest halved into train / validation (random,
    deterministic from ``seed``). Returns a dict with ``X_train, y_train, g_train, X_val, y_val, g_val,
    X_test, y_test, g_test``."""
    X, y = np.asarray(X), np.asarray(y)
    g = np.asarray(check_groups(groups, len(y)))
    if X.shape[0] != len(y):
        raise ValueError(f"X has {X.shape[0]} rows but y has {len(y)}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n = len(y)
    perm = np.random.default_rng(seed).permutation(n)
    n_test = int(round(test_fraction * n))
    n_train = (n - n_test) // 2
    parts = {"test": perm[:n_test], "train": perm[n_test:n_test + n_train], "val": perm[n_test + n_train:]}
    out = {}
    for k, idx in parts.items():
        out[f"X_{k}"], out[f"y_{k}"], out[f"g_{k}"] = X[idx], y[idx], g[idx]
    return out
