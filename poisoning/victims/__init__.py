"""Victims: data in, differentiable trained parameters out (one record, :class:`Victim`).

Every learner a poisoning attack can target, with one label convention (integer classes ``0..K-1``;
real targets for regression) and one interface (``fit``, ``decision``, ``predict``, ``loss``, ``init``,
``prepare`` / ``fit_appended``):

- :func:`svm` (exact dual through the KKT map), :func:`ovr_svm`, :func:`smooth_svm`;
- :func:`logistic`, :func:`softmax`, :func:`adaline`, :func:`mlp` (smooth, implicit by default; any
  :mod:`bilevel.unroll` strategy as ``method``);
- :func:`ridge`, :func:`ols`, :func:`lasso`, :func:`elastic_net` (regression);
- :func:`network`: a flax module trained by optax for ``T`` steps, differentiated through (or by
  reversing) the steps;
- :func:`on_features`: any of them trained on frozen features (transfer learning), differentiable in
  the raw inputs;
- :func:`smooth_victim`: the builder for a new smooth victim (a loss, a solver, a method).
"""

from poisoning.victims.features import on_features
from poisoning.victims.base import Victim, check_features, check_labels, check_weights, normalized_weights
from poisoning.victims.linear import adaline, logistic, ols, ridge, smooth_victim, softmax
from poisoning.victims.mlp import mlp
from poisoning.victims.network import network
from poisoning.victims.sparse import elastic_net, lasso
from poisoning.victims.svm import ovr_svm, smooth_svm, svm

__all__ = [
    "Victim",
    "check_features",
    "check_labels",
    "check_weights",
    "normalized_weights",
    "smooth_victim",
    "svm",
    "ovr_svm",
    "smooth_svm",
    "logistic",
    "softmax",
    "adaline",
    "mlp",
    "ridge",
    "ols",
    "lasso",
    "elastic_net",
    "network",
    "on_features",
]
