r"""A victim trained on frozen features: transfer learning with a fixed feature extractor.

Given a learner :math:`\mathcal A` (any :class:`~poisoning.victims.base.Victim`) and a feature map
:math:`\phi` (e.g. the penultimate layer of a pretrained network, its parameters closed over),
:func:`on_features` is the victim

.. math::  \theta^\star(X, y, s) = \mathcal A\big(\phi(X), y, s\big),\qquad
           \mathrm{decision}(\theta, X) = \mathrm{decision}_{\mathcal A}\big(\theta, \phi(X)\big),

the "last layer retrained on frozen features" setting of Koh & Liang (2017, §5.2) and of the
frozen-feature rows of Schwarzschild et al. (2021). It is differentiable in the raw inputs :math:`X`
through :math:`\phi` (chain rule) and through the learner's own derivative (the KKT map of an SVM, the
implicit function theorem of a smooth head), so an attack moves *images* while the victim solves a
convex problem on their features.

The fixed block's features are computed once per attack: ``prepare`` stores :math:`\phi(X_{tr})`
(and the learner's own cache on them), and a step evaluates :math:`\phi` on the moving rows only.

References: P. W. Koh, P. Liang, *Understanding Black-box Predictions via Influence Functions*, ICML
2017; A. Schwarzschild et al., *Just How Toxic is Data Poisoning?*, ICML 2021.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax

from poisoning.victims.base import Victim

__all__ = ["on_features"]


@functools.lru_cache(maxsize=None)
def on_features(victim: Victim, features: Callable, *, name: str | None = None) -> Victim:
    """``victim`` trained on ``features(X)`` (see the module docstring).

    Args:
      victim: the learner on the features (its labels, task and derivative method carry over).
      features: ``X (n, ...) -> (n, d)``, a pure, differentiable function (a frozen network's
        penultimate layer with its parameters closed over). Memoized on ``(victim, features)`` by
        identity: pass the same function object to reuse compiled attack loops.
      name: a label for reports (default ``"<victim> on <features.__name__>"``).
    """
    if not isinstance(victim, Victim):
        raise ValueError(f"argument 'victim' must be a Victim, got {type(victim).__name__}")
    if not callable(features):
        raise ValueError(f"argument 'features' must be callable, got {type(features).__name__}")
    phi = features

    def fit(X, y, weights, warm_start):
        return victim.fit_fn(phi(X), y, weights, warm_start)

    def decision(params, X):
        return victim.decision_fn(params, phi(X))

    def loss(params, X, y):
        return victim.loss_fn(params, phi(X), y)

    def init(n, d, dtype):
        shape = (1, *d) if isinstance(d, tuple) else (1, d)
        out = jax.eval_shape(phi, jax.ShapeDtypeStruct(shape, dtype))
        if len(out.shape) != 2:
            raise ValueError(f"argument 'features' must map (n, ...) inputs to (n, d) features, got shape "
                             f"{out.shape} for an input of shape {shape}")
        return victim.init_fn(n, int(out.shape[1]), dtype)

    def prepare(X_fixed, y_fixed):
        F = phi(X_fixed)
        inner = None if victim.prepare_fn is None else victim.prepare_fn(F, y_fixed)
        return inner, F

    def fit_appended(cache, X_fixed, y_fixed, X_new, y_new, weights, warm_start):
        inner, F = cache
        return victim.fit_appended_fn(inner, F.astype(X_fixed.dtype), y_fixed, phi(X_new).astype(X_fixed.dtype),
                                      y_new, weights, warm_start)

    train_loss = None
    if victim.train_loss is not None:
        def train_loss(params, X, y, weights):
            return victim.train_loss(params, phi(X), y, weights)

    label = name or f"{victim.name} on {getattr(features, '__name__', 'features')}"
    return Victim(name=label, task=victim.task, n_classes=victim.n_classes, fit_fn=fit, decision_fn=decision,
                  loss_fn=loss, init_fn=init, train_loss=train_loss, residual_fn=victim.residual_fn,
                  prepare_fn=prepare, fit_appended_fn=fit_appended, method=victim.method,
                  warm_starts=victim.warm_starts, checked=victim.checked)
