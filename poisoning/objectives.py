r"""Upper-level objectives of poisoning attacks: pure functions the attacker *maximizes*.

Every objective has the signature ``objective(victim, params, *target) -> scalar``, where ``params``
are the victim's parameters after training on the poisoned set,
:math:`w^\star(X_p) = \arg\min_w \mathcal L_{tr}(w; D_{tr} \cup D_p)`, ``target`` the attacker's data
(e.g. ``X_val, y_val``), and ``victim.loss(params, X, y)`` the victim's per-example surrogate loss (hinge
for the SVM, cross-entropy for logistic regression and networks, squared error for regression). An
objective written against the victim record runs unchanged against every victim. The attack solves

.. math::  \max_{X_p \in \Phi} \; A(X_p) = \text{objective}\big(w^\star(X_p), D_{val}\big),

with :math:`\nabla_{X_p} A` obtained by implicit differentiation of the training problem.
A new attack is one new function with this signature (see :mod:`poisoning.attack`).

- :func:`error_generic` — indiscriminate (availability) attack: the validation loss
  :math:`\sum_k \ell(y_k, f_{w}(x_k))`; with the hinge loss and ``reduction="sum"`` this is exactly
  :math:`L(x_c) = \sum_k (1 - y_k f_{x_c}(x_k))_+` of Biggio, Nelson & Laskov (2012, eq. 2).
- :func:`error_specific` — targeted attack (Muñoz-González et al. 2017, §3.1): the attacker wants
  ``y_target`` predicted on ``X_val``, so it *minimizes* the loss toward those labels; returned negated
  so that every objective is maximized.

References: B. Biggio, B. Nelson, P. Laskov, "Poisoning attacks against support vector machines",
ICML 2012. L. Muñoz-González et al., "Towards poisoning of deep learning algorithms with
back-gradient optimization", AISec 2017.
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["error_generic", "error_specific", "summed_loss", "classification_error"]


def _reduce(values, reduction):
    if reduction == "mean":
        return jnp.mean(values)
    if reduction == "sum":
        return jnp.sum(values)
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def error_generic(victim, params, X_val, y_val, *, reduction: str = "mean"):
    r"""Validation loss :math:`\frac1{|V|}\sum_{k\in V} \ell(y_k, f_w(x_k))` (``"sum"``: without
    :math:`1/|V|`). Maximizing it degrades the victim on the whole distribution (Biggio et al. 2012)."""
    return _reduce(victim.loss(params, X_val, y_val), reduction)


def error_specific(victim, params, X_val, y_target, *, reduction: str = "mean"):
    r"""Negated loss toward the attacker's labels, :math:`-\frac1{|V|}\sum_k \ell(y^{target}_k, f_w(x_k))`:
    maximizing it pushes the victim to predict ``y_target`` on ``X_val`` (Muñoz-González et al. 2017)."""
    return -_reduce(victim.loss(params, X_val, y_target), reduction)


def summed_loss(victim, params, X_val, y_val):
    r"""Biggio et al.'s eq. 2 for the SVM: :math:`L = \sum_k \ell(y_k, f(x_k))`, the per-example loss summed."""
    return jnp.sum(victim.loss(params, X_val, y_val))


def classification_error(victim, params, X, y):
    """0-1 error rate ``mean(predict(params, X) != y)`` (evaluation only; not differentiable)."""
    return jnp.mean(victim.predict(params, X) != jnp.asarray(y))
