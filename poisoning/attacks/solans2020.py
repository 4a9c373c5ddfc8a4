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
for privileged points (the true label :math:`y_k \in \{0, 1\}` is **not** used), its logistic loss
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
   (:class:`~poisoning.feasible.BoxL1Ball`: exact projection by bisection on the multiplier of the
   :math:`\ell_1` constraint).
   The notebooks set ``distance='l1', dmax=10``; note that secml's ``_constraint_creation`` builds that
   constraint with radius :math:`10^{12}`, so the reference runs effectively used the box alone
   (``dmax=None`` here reproduces that).
3. *Ascent*: projected steps of length :math:`\eta = 0.05` along the unit hypergradient (secml
   ``pgd-ls`` with ``eta = eta_min = 0.05``, ``eps = 1e-6``, up to 1000 iterations), the hypergradient
   by implicit differentiation of the logistic-regression optimality conditions (the victim
   :func:`poisoning.victims.logistic`; the attack is a :class:`~poisoning.attack.PoisoningAttack` on
   :class:`~poisoning.attack.PoisonPoints`, run by :func:`poisoning.attack.run`).
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

import math

import jax
import jax.numpy as jnp
import numpy as np

from bilevel.stackelberg import Backtrack, fixed_step
from poisoning import victims
from poisoning.attack import AttackResult, PoisoningAttack, PoisonPoints, run
from poisoning.fairness import check_groups
from poisoning.feasible import Box, BoxL1Ball

__all__ = [
    "PAPER",
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
# objective
# ----------------------------------------------------------------------------------------------------
def disparate_impact_objective(groups_val, *, privileged: int = 1, labels: str = "group",
                               unpriv_weight: float | None = None, reduction: str = "mean"):
    r"""The disparate-impact surrogate :math:`L_{DI}` of Solans et al. (see the module docstring) for
    validation points with sensitive attribute ``groups_val`` (0/1, ``privileged`` marks the
    privileged value). Returns ``objective(victim, params, X_val, y_val) -> scalar`` to maximize (it
    scores ``victim.decision``, so it runs against any binary victim).

    Args:
      groups_val: ``(n_val,)`` 0/1 group labels of the validation points (both groups present).
      labels: ``"group"`` (default, the authors' code: label :math:`+1` for unprivileged, :math:`-1`
        for privileged points, ``y_val`` unused) or ``"true"`` (the true labels ``y_val`` in
        ``{0, 1}``, as :math:`\pm 1`).
      unpriv_weight: the multiplier of the unprivileged losses; default :math:`-p_{priv}/p_{unpriv}`.
      reduction: ``"mean"`` over all validation points (secml) or ``"sum"``.
    """
    if labels not in ("group", "true"):
        raise ValueError(f"argument 'labels' must be 'group' or 'true', got {labels!r}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"argument 'reduction' must be 'mean' or 'sum', got {reduction!r}")
    if privileged not in (0, 1):
        raise ValueError(f"argument 'privileged' must be 0 or 1, got {privileged!r}")
    g = np.asarray(check_groups(groups_val, name="groups_val", require_both=True))
    unpriv = g != privileged
    p_unpriv = float(np.mean(unpriv))
    lam = -(1.0 - p_unpriv) / p_unpriv if unpriv_weight is None else float(unpriv_weight)
    n_val = g.shape[0]
    unpriv_j = jnp.asarray(unpriv)

    def objective(victim, params, X_val, y_val):
        X_val = jnp.asarray(X_val)
        if X_val.shape[0] != n_val:
            raise ValueError(f"argument 'X_val' has {X_val.shape[0]} rows but groups_val has {n_val} entries")
        s = victim.decision(params, X_val)
        if labels == "group":
            z = jnp.where(unpriv_j, 1.0, -1.0).astype(s.dtype)
        else:
            z = (2 * jnp.asarray(y_val) - 1).astype(s.dtype)
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
    :func:`poisoning.victims.logistic` (``reg``), objective :func:`disparate_impact_objective`,
    feasible set ``Box(lb, ub)``, intersected with the ``l1`` ball of radius ``dmax`` around ``center``
    (the starting points, ``(m, d)``, inside the box) when ``dmax`` is given
    (:class:`~poisoning.feasible.BoxL1Ball`, exact projection). ``step_rule="fixed"``: unit-gradient
    steps of length ``step_size``, stopped once the gain is below ``tol`` for ``patience`` steps;
    ``"backtrack"``: :class:`~bilevel.stackelberg.Backtrack` from ``step_size`` (an iterate that does not
    improve is retried from the last accepted one with half the step; stops below ``1e-4`` or when an
    accepted gain is below ``tol``)."""
    if not float(ub) >= float(lb):
        raise ValueError(f"argument 'lb' must be <= 'ub', got lb={lb}, ub={ub}")
    if dmax is None:
        feasible = Box(float(lb), float(ub))
    else:
        if center is None:
            raise ValueError("argument 'dmax' needs 'center' (the starting poison points)")
        feasible = BoxL1Ball(float(lb), float(ub), jnp.asarray(center), float(dmax))
    if step_rule == "fixed":
        step, gain_tol = fixed_step(float(step_size)), float(tol)
    elif step_rule == "backtrack":
        step, gain_tol = Backtrack(init_step=float(step_size), shrink=0.5, min_step=1e-4, tol=float(tol),
                                   normalization="global", strict=True), None
    else:
        raise ValueError(f"argument 'step_rule' must be 'fixed' or 'backtrack', got {step_rule!r}")
    return PoisoningAttack(victims.logistic(float(reg)),
                           disparate_impact_objective(groups_val, privileged=privileged, labels=labels),
                           feasible, step=step, gain_tol=gain_tol, patience=int(patience))


def init_poison(X_val, y_val, n_points: int, *, seed: int = 0, groups_val=None, group: int | None = None,
                label=None, noise: float = 1e-3, flip: bool = True):
    """Starting poison (secml ``init_type="random"``): ``n_points`` validation points drawn at random
    (without replacement while possible), restricted to ``groups_val == group`` and/or
    ``y_val == label`` when given, their labels flipped (``flip``; labels 0/1, a flip is ``1 - y``),
    plus uniform noise in :math:`[-\text{noise}, \text{noise}]`. Returns ``(X0, y0, indices)``."""
    X_val = np.asarray(X_val, float)
    n = X_val.shape[0] if X_val.ndim == 2 else -1
    y_val = np.asarray(victims.check_labels(np.asarray(y_val), "binary", 2, "y_val"))
    if X_val.ndim != 2 or n != len(y_val):
        raise ValueError(f"arguments 'X_val' {X_val.shape} and 'y_val' {y_val.shape} do not match")
    if int(n_points) < 1:
        raise ValueError(f"argument 'n_points' must be >= 1, got {n_points}")
    mask = np.ones(n, bool)
    if group is not None:
        if groups_val is None:
            raise ValueError("argument 'group' needs groups_val")
        mask &= np.asarray(check_groups(groups_val, n, name="groups_val")) == group
    if label is not None:
        if label not in (0, 1):
            raise ValueError(f"argument 'label' must be 0, 1 or None, got {label!r}")
        mask &= y_val == label
    pool = np.flatnonzero(mask)
    if pool.size == 0:
        raise ValueError(f"no validation point with group={group!r}, label={label!r}")
    rng = np.random.default_rng(seed)
    idx = rng.choice(pool, size=int(n_points), replace=int(n_points) > pool.size)
    X0 = X_val[idx] + noise * (2.0 * rng.random((int(n_points), X_val.shape[1])) - 1.0)
    y0 = 1 - y_val[idx] if flip else y_val[idx].copy()
    return X0, y0, idx


def poison_fairness(X_train, y_train, X_val, y_val, groups_val, n_points: int, *, steps: int = 1000,
                    seed: int = 0, reg: float = 1e-2, dmax: float | None = 10.0, box=None,
                    step_size: float = 0.05, tol: float = 1e-6, patience: int = 1, labels: str = "group",
                    init_group: int | None = None, init_label=None, mode: str = "sequential",
                    callback=None) -> tuple[AttackResult, np.ndarray, PoisoningAttack]:
    """Run the attack with ``n_points`` poison points (:func:`poisoning.attack.run`). ``box`` =
    ``(lb, ub)`` or ``None`` for the secml choice ``(X_val.min(), X_val.max())``. Labels are 0/1;
    ``groups_val`` 0/1 (1 = privileged). Returns ``(result, X0, attack)``: ``result.poison`` holds the
    optimized points (``.X``) and their labels (``.y``); in sequential mode ``result.block_params[k - 1]``
    is the victim after the first ``k`` points."""
    X_val = np.asarray(X_val, float)
    groups_val = check_groups(groups_val, X_val.shape[0], name="groups_val", require_both=True)
    if box is None:
        box = (float(X_val.min()), float(X_val.max()))
    X0, y0, _ = init_poison(X_val, y_val, n_points, seed=seed, groups_val=groups_val, group=init_group,
                            label=init_label)
    X0 = np.clip(X0, box[0], box[1])
    attack = solans_attack(groups_val, lb=box[0], ub=box[1], center=X0 if dmax is not None else None,
                           dmax=dmax, reg=reg, step_size=step_size, tol=tol, patience=patience, labels=labels)
    res = run(attack, X_train, y_train, PoisonPoints(X0, y0), (X_val, y_val), steps=steps, mode=mode,
              callback=callback)
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

    Returns ``(X, y, groups)``: ``X`` ``(2 n, 2)`` float, ``y`` in ``{0, 1}`` (1 = favorable class),
    ``groups`` in ``{0, 1}`` (1 = privileged, correlated with ``y = 1``). Deterministic from ``seed``.
    """
    if int(n_per_class) < 1:
        raise ValueError(f"argument 'n_per_class' must be >= 1, got {n_per_class}")
    if not float(distance) >= 0:
        raise ValueError(f"argument 'distance' must be >= 0, got {distance}")
    rng = np.random.default_rng(seed)
    n = int(n_per_class)
    mu1, cov1 = np.array([2.0, 2.0]), np.array([[5.0, 1.0], [1.0, 5.0]])
    shift = float(distance) / math.sqrt(2.0)
    mu2, cov2 = mu1 - shift, np.array([[10.0, 1.0], [1.0, 3.0]])
    X = np.vstack([rng.multivariate_normal(mu1, cov1, n), rng.multivariate_normal(mu2, cov2, n)])
    y = np.concatenate([np.ones(n, np.int64), np.zeros(n, np.int64)])
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
        raise ValueError(f"argument 'X' has {X.shape[0]} rows but 'y' has {len(y)}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"argument 'test_fraction' must be in (0, 1), got {test_fraction}")
    n = len(y)
    perm = np.random.default_rng(seed).permutation(n)
    n_test = int(round(test_fraction * n))
    n_train = (n - n_test) // 2
    parts = {"test": perm[:n_test], "train": perm[n_test:n_test + n_train], "val": perm[n_test + n_train:]}
    out = {}
    for k, idx in parts.items():
        out[f"X_{k}"], out[f"y_{k}"], out[f"g_{k}"] = X[idx], y[idx], g[idx]
    return out
