r"""Koh & Liang (2017, §5.2): training-set attacks by influence on a model with frozen features.

"Understanding black-box predictions via influence functions", ICML 2017 (arXiv:1703.04730).

Victim
------
A top layer retrained on the frozen features :math:`\phi(x)` of a pretrained network (Inception-v3
on Dogfish in the paper, logistic regression with weight decay 0.001):

.. math::  \hat\theta(X) = \arg\min_\theta\; \frac1n\sum_{i=1}^n \ell\big(\theta; \phi(x_i), y_i\big)
           + \frac{\lambda}2\|w\|^2

(:func:`poisoning.victims.on_features` of :func:`poisoning.victims.logistic`), differentiable in the raw
training images through :math:`\phi` and the implicit function theorem.

Attack
------
Perturbing a training image :math:`x_i \to x_i + \delta` changes the loss of a test target
:math:`z_t` by :math:`\frac1n \mathcal I_{\text{pert,loss}}(z_i, z_t)^\top\delta` to first order, with

.. math::  \mathcal I_{\text{pert,loss}}(z_i, z_t)^\top = -\nabla_\theta \ell(z_t, \hat\theta)^\top
           H_{\hat\theta}^{-1}\, \nabla_x \nabla_\theta \ell(z_i, \hat\theta)
           = n\, \nabla_{x_i}\, \ell\big(z_t, \hat\theta(X)\big),

i.e. :math:`\mathcal I_{\text{pert,loss}}` is, up to the factor :math:`n`, the hypergradient of the
target's loss with respect to the training image through the IFT (:func:`influence_gradient`). The
attack (released code, ``dataset_poisoning.py``):

1. choose the ``k`` training images with the largest :math:`\|\mathcal I_{\text{pert,loss}}(z_i, z_t)\|_1`
   (:func:`select_images`);
2. iterate, retraining the top layer at every step,

   .. math::  x_j \leftarrow \Pi_{[x_j^0 - \varepsilon,\, x_j^0 + \varepsilon] \cap [0, 1]}\Big(x_j + \alpha\,
              \mathrm{sign}\,\nabla_{x_j} \ell\big(z_t, \hat\theta(X)\big)\Big)

   with :math:`\varepsilon = 0.5/255` (the perturbed image has the same 8-bit representation as the
   original) and :math:`\alpha = 0.02/255` (the release's ``0.02 * 2/255`` on pixels in :math:`[-1, 1]`),
   for at most 100 steps, stopping once the target's true-class probability falls below 0.5.

The labels of the perturbed images are kept (a clean-label attack). Composed from the one driver: the
``k`` images leave the clean rows and enter as :class:`~poisoning.attack.PoisonPoints` with their true
labels, the objective is the target's loss saturated at :math:`-\log(\text{threshold})`
(:func:`target_loss`: once the target is flipped its gradient is zero, the signed step is zero and the
driver stops), the feasible set is the box :math:`[x^0 - \varepsilon, x^0 + \varepsilon] \cap [0, 1]`,
and the step rule is optax's ``scale_by_sign``.

Cost: each :func:`attack` compiles its own loop (the box around its images is a constant of the
compiled code), a few seconds on the ResNet features of :mod:`experiments.koh2017`; a long loop over
targets should call ``jax.clear_caches()`` now and then, or the compiled loops kept in JAX's caches
exhaust the process's memory maps.

Deviations: the release also tried, for ``k = 1``, the second-ranked image alone after the first
failed (and stopped at the first ``k`` that succeeded); here each ``k`` uses the top-``k`` images.

References: P. W. Koh, P. Liang, "Understanding black-box predictions via influence functions", ICML
2017; official code ``kohpangwei/influence-release``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from poisoning.attack import AttackResult, PoisoningAttack, PoisonPoints, run
from poisoning.feasible import Box
from poisoning.victims.base import Victim, check_features, check_labels

__all__ = ["target_loss", "influence_gradient", "select_images", "signed_step", "koh_attack", "attack", "KohResult"]

EPS_8BIT = 0.5 / 255  # half a quantization level: the same 8-bit image
STEP_SIZE = 0.02 / 255  # the release's 0.02 * (2/255) on pixels in [-1, 1]


def target_loss(victim, params, X_target, y_target, cap):
    r"""The objective: the target's loss :math:`\min(\sum_t \ell(z_t, \theta), \text{cap})`, saturated at
    ``cap`` so the ascent stops once the target is flipped (with the log-loss, ``cap = -log p`` stops
    when the true class's probability falls below ``p``)."""
    return jnp.minimum(jnp.sum(victim.loss(params, X_target, y_target)), cap)


def signed_step(step_size: float) -> optax.GradientTransformation:
    r"""The step :math:`u = \alpha\,\mathrm{sign}(g)` of the attack (optax; the driver ascends)."""
    if isinstance(step_size, bool) or not (isinstance(step_size, (int, float, np.floating)) and np.isfinite(step_size)
                                            and step_size > 0):
        raise ValueError(f"argument 'step_size' must be a finite number > 0, got {step_size!r}")
    return optax.chain(optax.scale_by_sign(), optax.scale(-float(step_size)))


def _check_problem(victim, X_train, y_train, x_target, y_target):
    if not isinstance(victim, Victim):
        raise ValueError(f"argument 'victim' must be a poisoning.victims.Victim, got {type(victim).__name__}")
    if victim.task == "regression":
        raise ValueError(f"argument 'victim' must be a classifier, got {victim.name}")
    X = np.asarray(check_features(X_train, "X_train"))
    y = np.asarray(check_labels(y_train, victim.task, victim.n_classes, "y_train", X.shape[0]))
    x_t = np.asarray(check_features(x_target, "x_target", tuple(X.shape[1:])))
    y_t = np.asarray(check_labels(y_target, victim.task, victim.n_classes, "y_target", x_t.shape[0]))
    if x_t.shape[0] < 1:
        raise ValueError("argument 'x_target' holds no target")
    return X, y, x_t, y_t


@functools.partial(jax.jit, static_argnums=0)
def _influence_gradient(victim, X, y, x_t, y_t):
    return jax.grad(lambda X: jnp.sum(victim.loss(victim.fit(X, y), x_t, y_t)))(X)


def influence_gradient(victim: Victim, X_train, y_train, x_target, y_target):
    r""":math:`\nabla_{x_i}\, \ell(z_t, \hat\theta(X)) = \frac1n \mathcal I_{\text{pert,loss}}(z_i, z_t)` for
    every training image ``x_i`` (an array shaped like ``X_train``): the derivative of the targets' summed
    loss under the victim trained on ``(X_train, y_train)`` (module docstring)."""
    X, y, x_t, y_t = _check_problem(victim, X_train, y_train, x_target, y_target)
    dtype = jnp.result_type(float)
    return _influence_gradient(victim.trusted, jnp.asarray(X, dtype), jnp.asarray(y), jnp.asarray(x_t, dtype),
                               jnp.asarray(y_t))


def select_images(victim: Victim, X_train, y_train, x_target, y_target, n_images: int, *, gradient=None):
    r"""Indices of the ``n_images`` training images with the largest :math:`\|\mathcal I_{\text{pert,loss}}
    (z_i, z_t)\|_1` (the sum of absolute pixel derivatives, as in the release), largest first.
    ``gradient``: a precomputed :func:`influence_gradient`."""
    X, y, x_t, y_t = _check_problem(victim, X_train, y_train, x_target, y_target)
    k = _check_count(n_images, X.shape[0])
    g = influence_gradient(victim, X, y, x_t, y_t) if gradient is None else np.asarray(gradient)
    if g.shape != X.shape:
        raise ValueError(f"argument 'gradient' must have the shape of X_train {X.shape}, got {g.shape}")
    score = np.sum(np.abs(np.asarray(g, np.float64)).reshape(len(X), -1), axis=1)
    return np.argsort(-score, kind="stable")[:k]


def _check_count(n_images, n):
    if isinstance(n_images, bool) or not isinstance(n_images, (int, np.integer)) or not 1 <= int(n_images) <= n:
        raise ValueError(f"argument 'n_images' must be an integer in [1, {n}] (the training set's size), "
                         f"got {n_images!r}")
    return int(n_images)


def _check_radius(eps):
    if isinstance(eps, bool) or not (isinstance(eps, (int, float, np.floating)) and np.isfinite(eps) and eps > 0):
        raise ValueError(f"argument 'eps' must be a finite number > 0, got {eps!r}")


def koh_attack(victim: Victim, X_start, *, eps: float = EPS_8BIT, step_size: float = STEP_SIZE) -> PoisoningAttack:
    r"""The configured :class:`~poisoning.attack.PoisoningAttack`: ``victim`` + :func:`target_loss` + the box
    :math:`[x^0 - \varepsilon, x^0 + \varepsilon] \cap [0, 1]` around ``X_start`` + :func:`signed_step`;
    no gain-based stop (signed steps of a fraction of a quantization level gain little), a zero step
    stops (the saturated objective, or every pixel pushed against its bound)."""
    _check_radius(eps)
    X0 = np.asarray(X_start, np.float64)
    feasible = Box(np.clip(X0 - eps, 0.0, 1.0), np.clip(X0 + eps, 0.0, 1.0))
    return PoisoningAttack(victim, target_loss, feasible, step=signed_step(step_size), gain_tol=None, tol=0.0)


class KohResult(NamedTuple):
    """Output of :func:`attack`.

    Attributes:
      indices: the perturbed training images (rows of ``X_train``), most influential first.
      X_original, X_perturbed: those images before and after; labels: their (unchanged) labels.
      flipped: whether the target's predicted label differs from its true label under the victim trained
        on the perturbed set; p_true_clean, p_true: the target's true-class probability with the
        unperturbed training set (at most ``threshold`` when the target starts misclassified: the
        objective is capped) and with the perturbed one.
      n_steps: attack steps taken; result: the driver's :class:`~poisoning.attack.AttackResult`.
    """

    indices: np.ndarray
    X_original: np.ndarray
    X_perturbed: np.ndarray
    labels: np.ndarray
    flipped: bool
    p_true_clean: float
    p_true: float
    n_steps: int
    result: AttackResult


def attack(victim: Victim, X_train, y_train, x_target, y_target, n_images: int, *, eps: float = EPS_8BIT,
           steps: int = 100, step_size: float = STEP_SIZE, threshold: float = 0.5, indices=None,
           gradient=None) -> KohResult:
    r"""Perturb ``n_images`` training images within ``eps`` (and ``[0, 1]``) to flip the prediction of the
    target ``(x_target, y_target)`` (one image, its true label) under ``victim`` retrained on the
    perturbed set (module docstring).

    Args:
      victim: a classifier whose ``loss`` is the negative log-likelihood (``victims.logistic``,
        ``victims.softmax``, on features), so :math:`p_\text{true} = e^{-\ell}`.
      n_images: the number ``k`` of perturbed training images.
      eps: the :math:`\ell_\infty` radius around the originals (default half an 8-bit level).
      steps, step_size: at most ``steps`` signed steps of ``step_size``.
      threshold: stop once the target's true-class probability is below it (paper: 0.5).
      indices: the images to perturb (default :func:`select_images`); gradient: a precomputed
        :func:`influence_gradient` for the selection.
    """
    _check_radius(eps)
    signed_step(step_size)  # validates step_size
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"argument 'steps' must be an integer >= 1, got {steps!r}")
    X, y, x_t, y_t = _check_problem(victim, X_train, y_train, x_target, y_target)
    if x_t.shape[0] != 1:
        raise ValueError(f"argument 'x_target' must hold one target image, got {x_t.shape[0]}")
    if not (isinstance(threshold, (int, float, np.floating)) and 0 < threshold < 1):
        raise ValueError(f"argument 'threshold' must be in (0, 1), got {threshold!r}")
    k = _check_count(n_images, X.shape[0])
    if indices is None:
        idx = select_images(victim, X, y, x_t, y_t, k, gradient=gradient)
    else:
        idx = np.asarray(indices).reshape(-1)
        if idx.shape != (k,) or idx.dtype.kind not in "iu" or len(np.unique(idx)) != k \
                or np.any(idx < 0) or np.any(idx >= X.shape[0]):
            raise ValueError(f"argument 'indices' must be {k} distinct row indices of X_train, got {indices!r}")
    keep = np.setdiff1d(np.arange(X.shape[0]), idx)
    X0, y0 = X[idx], y[idx]
    att = koh_attack(victim, X0, eps=eps, step_size=step_size)
    cap = np.asarray(-np.log(threshold), jnp.result_type(float))
    res = run(att, X[keep], y[keep], PoisonPoints(X0, y0), (x_t, y_t, cap), steps=steps)
    Xp = np.asarray(res.poison.X)
    flipped = bool(np.asarray(victim.predict(res.params, x_t))[0] != y_t[0])
    # the start iterate is the unperturbed set (its objective: the loss, capped at -log threshold)
    p_clean = float(np.exp(-res.history[0][0]))
    p_true = float(np.exp(-np.asarray(victim.loss(res.params, x_t, y_t))[0]))
    return KohResult(indices=idx, X_original=X0, X_perturbed=Xp, labels=y0, flipped=flipped, p_true_clean=p_clean,
                     p_true=p_true, n_steps=int(res.n_steps[0]), result=res)
