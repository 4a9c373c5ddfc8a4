r"""Biggio, Nelson & Laskov (2012), "Poisoning attacks against support vector machines", ICML.

Threat model: the attacker knows the learner (linear SVM, :math:`C = 1`), its training set
:math:`D_{tr}` and a validation set :math:`D_{val}` drawn from the same distribution, and injects
points :math:`(x_c, y_c)` with chosen features (label fixed) to maximize the validation hinge loss

.. math::

    L(x_c) = \sum_{k \in D_{val}} \big(1 - y_k f_{x_c}(x_k)\big)_+ ,
    \qquad f_{x_c} = \text{SVM trained on } D_{tr} \cup \{(x_c, y_c)\}.

Algorithm (their §3, Alg. 1), as implemented here:

1. *Initialization*: clone a random training point of the attacked class and flip its label
   (:func:`clone_and_flip`; the MATLAB code uses :math:`y_c = -1`).
2. *Ascent*: :math:`x_c \leftarrow P_{[0,1]^d}\big(x_c + t\, u / \|u\|\big)` with :math:`u = \nabla L(x_c)`
   and fixed step :math:`t = 0.05`; the derivative of :math:`(w, b)` w.r.t. :math:`x_c` is the
   derivative of the dual's KKT system on its active set (the paper's eq. 9-10, obtained here by
   implicit differentiation of :func:`bilevel.problems.svm_dual_fit`). The SVM is warm-started from
   the previous iterate's active set (the paper uses incremental SVM updates, Cauwenberghs & Poggio
   2000).
3. *Stop* when the gain :math:`L(x_c^{(p)}) - L(x_c^{(p-1)}) < \varepsilon` (``patience`` times in a
   row; 1 = the paper's rule) or after ``steps`` steps; keep the best point seen.
4. *Multiple points*: a sequence of single-point attacks, each new point added to the training set
   with the earlier ones frozen (:func:`poisoning.attack.run` ``mode="sequential"``).

Multiclass extension (not in the paper; secml's version is binary too): :func:`ovr_svm_learner` is
a one-vs-rest ensemble of :math:`K` linear SVMs, each solved by the same differentiable dual (vmapped
over classes); the attacked objective is the sum over classes of the validation hinge losses,
:math:`\sum_k \sum_{c} (1 - y_k^{(c)} f_c(x_k))_+` with :math:`y^{(c)} = \pm 1` (one-vs-rest
labels), and the prediction is :math:`\arg\max_c f_c`. The poison point has one (integer) class label
and enters every binary problem, as in the OvR training it attacks.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from bilevel.kkt import QPSolution
from bilevel.problems import svm_dual_fit
from poisoning.attack import AttackResult, Learner, PoisoningAttack, linear_svm_learner, run
from poisoning.feasible import Box

__all__ = [
    "validation_hinge",
    "biggio_attack",
    "clone_and_flip",
    "poison_svm",
    "ovr_svm_learner",
    "ovr_attack",
    "PAPER",
]

PAPER = {
    "single_point_test_error": "2-5% -> 15-20% (MNIST 7v1, 9v8, 4v0; Fig. 2, ~400 iterations)",
    "multi_point": "steady growth with the number of points, high variance (Fig. 3, 0-8% poison)",
    "step_size": 0.05,
    "box": (0.0, 1.0),
    "C": 1.0,
}


def validation_hinge(params, X_val, y_val, learner):
    r"""Biggio et al.'s eq. 2: :math:`L = \sum_k (1 - y_k f(x_k))_+` (the learner's per-example loss, summed)."""
    return jnp.sum(learner.loss(params, X_val, y_val))


def biggio_attack(C: float = 1.0, *, step_size: float = 0.05, box=(0.0, 1.0), tol: float = 1e-6,
                  patience: int = 1, step_rule: str = "fixed") -> PoisoningAttack:
    """The paper's attack: linear SVM (``C``), validation hinge loss, box ``[0, 1]``, unit-gradient
    steps of length ``step_size``; stop on gain < ``tol`` (``patience`` times)."""
    return PoisoningAttack(
        learner=linear_svm_learner(float(C)),
        objective=validation_hinge,
        feasible=Box(float(box[0]), float(box[1])),
        step_size=float(step_size),
        normalize=True,
        step_rule=step_rule,
        tol=float(tol),
        patience=int(patience),
    )


def clone_and_flip(X_train, y_train, n_points: int, *, attacked_label=1, poison_label=-1, seed=0):
    """Initial poison: ``n_points`` random training points of class ``attacked_label`` (without
    replacement while possible), relabelled ``poison_label``. Returns ``(X_init, y_init, indices)``."""
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero(np.asarray(y_train) == attacked_label)
    if pool.size == 0:
        raise ValueError(f"no training point has label {attacked_label!r}")
    idx = rng.choice(pool, size=n_points, replace=n_points > pool.size)
    X0 = np.asarray(X_train)[idx].copy()
    return X0, np.full((n_points,), poison_label, dtype=np.asarray(y_train).dtype), idx


def poison_svm(X_train, y_train, X_val, y_val, n_points: int, *, steps: int = 400, seed=0,
               attack: PoisoningAttack | None = None, attacked_label=1, poison_label=-1,
               callback=None) -> tuple[AttackResult, np.ndarray]:
    """Multi-point Biggio attack (sequence of single-point attacks). Returns ``(result, start points)``;
    the first ``k`` rows of ``result.X_poison`` are the ``k``-point attack."""
    attack = biggio_attack() if attack is None else attack
    X0, y0, _ = clone_and_flip(X_train, y_train, n_points, attacked_label=attacked_label,
                               poison_label=poison_label, seed=seed)
    res = run(attack, X_train, y_train, X0, y0, X_val, y_val, steps=steps, mode="sequential", callback=callback)
    return res, X0


# ----------------------------------------------------------------------------------------------------
# multiclass one-vs-rest
# ----------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def ovr_svm_learner(n_classes: int, C: float = 1.0) -> Learner:
    """One-vs-rest ensemble of ``n_classes`` linear SVMs (integer labels ``0..K-1``), each an exact,
    differentiable dual solve (vmapped). ``loss`` is the per-example sum over classes of the OvR hinge
    losses; ``predict`` is the argmax of the ``(n, K)`` decision values."""
    K = int(n_classes)

    def ovr_labels(y, dtype):
        return jnp.where(jnp.asarray(y)[None, :] == jnp.arange(K)[:, None], 1.0, -1.0).astype(dtype)  # (K, n)

    def fit(X, y, weights, warm_start):
        Ci = C * jnp.ones((X.shape[0],), X.dtype) if weights is None else C * jnp.asarray(weights, X.dtype)
        Y = ovr_labels(y, X.dtype)
        if warm_start is None:
            return jax.vmap(lambda yk: svm_dual_fit(X, yk, Ci, on_failure="ignore"))(Y)
        return jax.vmap(lambda yk, ws: svm_dual_fit(X, yk, Ci, warm_start=ws, on_failure="ignore"))(Y, warm_start)

    def decision(params, X):
        return X @ params.w.T + params.b  # (n, K)

    def loss(params, X, y):
        Y = ovr_labels(y, X.dtype).T  # (n, K)
        return jnp.sum(jnp.maximum(0.0, 1.0 - Y * decision(params, X)), axis=1)

    def null_warm(n, d, dtype):
        return QPSolution(x=jnp.zeros((K, n), dtype), eq_multipliers=jnp.zeros((K, 1), dtype),
                          active_lower=jnp.ones((K, n), bool), active_upper=jnp.zeros((K, n), bool),
                          residual=jnp.full((K,), jnp.inf, dtype))

    class _OvR(Learner):
        def predict(self, params, X):
            return jnp.argmax(self.decision(params, X), axis=1)

    return _OvR(name=f"ovr-linear-svm(K={K}, C={C:g})", fit_fn=fit, decision_fn=decision, loss_fn=loss,
                null_warm=null_warm, to_warm=lambda params: params.qp)


def ovr_attack(n_classes: int, C: float = 1.0, *, step_size: float = 0.05, box=(0.0, 1.0),
               tol: float = 1e-6, patience: int = 1) -> PoisoningAttack:
    """The Biggio attack against a one-vs-rest SVM ensemble: maximize the sum of the per-class
    validation hinge losses (labels are integers ``0..K-1``)."""
    return PoisoningAttack(learner=ovr_svm_learner(int(n_classes), float(C)), objective=validation_hinge,
                           feasible=Box(float(box[0]), float(box[1])), step_size=float(step_size),
                           tol=float(tol), patience=int(patience))
