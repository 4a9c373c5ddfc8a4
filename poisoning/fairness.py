r"""Group-fairness metrics of a binary classifier (pure ``jax.numpy``, jit-able).

Notation: :math:`\hat y` the predicted label, :math:`y` the true label, :math:`g \in \{0, 1\}` the
sensitive attribute with ``privileged`` (default 1) the *privileged* group and the other value the
*unprivileged* group; "positive" means the *favorable* label (``favorable``, default 1). Labels may be
``{-1, +1}`` or ``{0, 1}``: only equality with ``favorable`` matters. Write :math:`u` for the
unprivileged group and :math:`p` for the privileged one.

- :func:`demographic_parity_difference` (statistical parity difference, AIF360 convention)
  :math:`\mathrm{DP} = P(\hat y = 1 \mid u) - P(\hat y = 1 \mid p)`; 0 is parity, negative means the
  unprivileged group receives the favorable outcome less often (the disparate impact the attack of
  Solans et al. 2020 tries to create; their notebooks compute exactly this difference).
- :func:`disparate_impact_ratio` :math:`\mathrm{DI} = P(\hat y = 1 \mid u) / P(\hat y = 1 \mid p)`
  (1 is parity; the "80 % rule" flags :math:`\mathrm{DI} < 0.8`; Feldman et al. 2015), NaN when the
  privileged group never receives the favorable outcome.
- :func:`group_rates`: per group, :math:`\mathrm{FPR}_g = P(\hat y = 1 \mid y = 0, g)`,
  :math:`\mathrm{FNR}_g = P(\hat y = 0 \mid y = 1, g)`, :math:`\mathrm{TPR}_g = 1 - \mathrm{FNR}_g`, the
  positive rate :math:`P(\hat y = 1 \mid g)` and the group accuracy.
- :func:`average_odds_difference`
  :math:`\mathrm{AOD} = \tfrac12\big[(\mathrm{FPR}_u - \mathrm{FPR}_p) + (\mathrm{TPR}_u - \mathrm{TPR}_p)\big]`
  (Bellamy et al. 2018, AIF360; used by Solans et al. 2020).
- :func:`accuracy` :math:`\frac1n \sum_i [\hat y_i = y_i]`.

A rate whose conditioning set is empty (e.g. the FPR of a group without negatives) is ``NaN``; every
function is a pure function of arrays (no Python control flow on values), so it runs under
:func:`jax.jit`. Argument checks (equal lengths, 1-D, groups in ``{0, 1}``) raise ``ValueError``
naming the argument; the value check of ``groups`` runs only on concrete (non-traced) arrays.

References:
- M. Feldman, S. A. Friedler, J. Moeller, C. Scheidegger, S. Venkatasubramanian, "Certifying and
  removing disparate impact", KDD 2015.
- R. K. E. Bellamy et al., "AI Fairness 360: An extensible toolkit for detecting, understanding, and
  mitigating unwanted algorithmic bias", arXiv:1810.01943, 2018.
- D. Solans, B. Biggio, C. Castillo, "Poisoning attacks on algorithmic fairness", ECML-PKDD 2020.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "check_groups",
    "accuracy",
    "positive_rate",
    "demographic_parity_difference",
    "disparate_impact_ratio",
    "group_rates",
    "average_odds_difference",
    "fairness_report",
]


def check_groups(groups, n: int | None = None, *, name: str = "groups", require_both: bool = False):
    """Validate a sensitive-attribute array: 1-D, length ``n`` (when given), values in ``{0, 1}``
    (checked when concrete), and with ``require_both`` both groups present. Returns it as an array."""
    g = jnp.asarray(groups)
    if g.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of 0/1 group labels, got shape {g.shape}")
    if n is not None and g.shape[0] != n:
        raise ValueError(f"{name} has {g.shape[0]} entries but there are {n} examples")
    if not isinstance(g, jax.core.Tracer):
        v = np.asarray(g)
        if v.dtype == bool:
            v = v.astype(np.int64)
        if not np.all(np.isin(v, (0, 1))):
            bad = sorted(set(np.unique(v).tolist()) - {0, 1})[:5]
            raise ValueError(f"{name} must contain only 0/1 group labels, found {bad}")
        if require_both and (not np.any(v == 0) or not np.any(v == 1)):
            raise ValueError(f"{name} must contain both groups (0 and 1)")
    return g


def _check_pair(y_true, y_pred):
    y_true, y_pred = jnp.asarray(y_true), jnp.asarray(y_pred)
    if y_pred.ndim != 1:
        raise ValueError(f"y_pred must be 1-D, got shape {y_pred.shape}")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must have the same shape")
    return y_true, y_pred


def _rate(event, cond):
    """``P(event | cond)`` over boolean arrays; NaN when ``cond`` is empty."""
    den = jnp.sum(cond)
    num = jnp.sum(event & cond)
    return jnp.where(den > 0, num / jnp.maximum(den, 1), jnp.nan)


def accuracy(y_true, y_pred):
    """Fraction of correct predictions :math:`\\frac1n\\sum_i [\\hat y_i = y_i]`."""
    y_true, y_pred = _check_pair(y_true, y_pred)
    return jnp.mean(y_true == y_pred)


def positive_rate(y_pred, groups=None, group: int = 1, *, favorable=1):
    """:math:`P(\\hat y = \\text{favorable} \\mid g = \\text{group})` (all examples when ``groups`` is None)."""
    y_pred = jnp.asarray(y_pred)
    pos = y_pred == favorable
    if groups is None:
        return jnp.mean(pos)
    g = check_groups(groups, y_pred.shape[0])
    return _rate(pos, g == group)


def demographic_parity_difference(y_pred, groups, *, privileged: int = 1, favorable=1):
    """:math:`P(\\hat y = 1 \\mid \\text{unprivileged}) - P(\\hat y = 1 \\mid \\text{privileged})`."""
    y_pred = jnp.asarray(y_pred)
    if y_pred.ndim != 1:
        raise ValueError(f"y_pred must be 1-D, got shape {y_pred.shape}")
    g = check_groups(groups, y_pred.shape[0])
    pos = y_pred == favorable
    return _rate(pos, g != privileged) - _rate(pos, g == privileged)


def disparate_impact_ratio(y_pred, groups, *, privileged: int = 1, favorable=1):
    """:math:`P(\\hat y = 1 \\mid \\text{unprivileged}) / P(\\hat y = 1 \\mid \\text{privileged})` (NaN if
    the denominator is 0)."""
    y_pred = jnp.asarray(y_pred)
    if y_pred.ndim != 1:
        raise ValueError(f"y_pred must be 1-D, got shape {y_pred.shape}")
    g = check_groups(groups, y_pred.shape[0])
    pos = y_pred == favorable
    den = _rate(pos, g == privileged)
    return jnp.where(den > 0, _rate(pos, g != privileged) / jnp.where(den > 0, den, 1.0), jnp.nan)


def group_rates(y_true, y_pred, groups, *, privileged: int = 1, favorable=1):
    """Per-group rates: a dict ``{"privileged": {...}, "unprivileged": {...}}``, each with ``fpr``,
    ``fnr``, ``tpr``, ``positive_rate`` and ``accuracy`` (scalars; NaN when undefined)."""
    y_true, y_pred = _check_pair(y_true, y_pred)
    g = check_groups(groups, y_pred.shape[0])
    pos_true, pos_pred = y_true == favorable, y_pred == favorable
    out = {}
    for name, in_group in (("privileged", g == privileged), ("unprivileged", g != privileged)):
        fnr = _rate(~pos_pred, pos_true & in_group)
        out[name] = {
            "fpr": _rate(pos_pred, ~pos_true & in_group),
            "fnr": fnr,
            "tpr": 1.0 - fnr,
            "positive_rate": _rate(pos_pred, in_group),
            "accuracy": _rate(y_true == y_pred, in_group),
        }
    return out


def average_odds_difference(y_true, y_pred, groups, *, privileged: int = 1, favorable=1):
    """:math:`\\tfrac12[(\\mathrm{FPR}_u - \\mathrm{FPR}_p) + (\\mathrm{TPR}_u - \\mathrm{TPR}_p)]`."""
    r = group_rates(y_true, y_pred, groups, privileged=privileged, favorable=favorable)
    u, p = r["unprivileged"], r["privileged"]
    return 0.5 * ((u["fpr"] - p["fpr"]) + (u["tpr"] - p["tpr"]))


def _report_arrays(y_true, y_pred, groups, privileged, favorable):
    kw = dict(privileged=privileged, favorable=favorable)
    rates = group_rates(y_true, y_pred, groups, **kw)
    out = {
        "accuracy": accuracy(y_true, y_pred),
        "dp_difference": demographic_parity_difference(y_pred, groups, **kw),
        "disparate_impact_ratio": disparate_impact_ratio(y_pred, groups, **kw),
        "average_odds_difference": average_odds_difference(y_true, y_pred, groups, **kw),
    }
    for grp in ("privileged", "unprivileged"):
        for key in ("fpr", "fnr", "positive_rate"):
            out[f"{key}_{grp}"] = rates[grp][key]
    return out


_report_jit = jax.jit(_report_arrays, static_argnums=(3, 4))


def fairness_report(y_true, y_pred, groups, *, privileged: int = 1, favorable=1) -> dict:
    """All metrics as plain Python floats: ``accuracy``, ``dp_difference``, ``disparate_impact_ratio``,
    ``average_odds_difference``
    and the per-group ``fpr``/``fnr``/``positive_rate`` (keys ``fpr_privileged``, ...); one compiled
    call (inputs validated first)."""
    y_true, y_pred = _check_pair(y_true, y_pred)
    g = check_groups(groups, y_pred.shape[0])
    out = _report_jit(y_true, y_pred, g, int(privileged), favorable)
    return {k: float(v) for k, v in out.items()}
