r"""Biggio, Nelson & Laskov (2012), "Poisoning attacks against support vector machines", ICML.

Threat model: the attacker knows the learner (linear SVM, :math:`C = 1`), its training set
:math:`D_{tr}` and a validation set :math:`D_{val}` drawn from the same distribution, and injects
points :math:`(x_c, y_c)` with chosen features (label fixed) to maximize the validation hinge loss

.. math::

    L(x_c) = \sum_{k \in D_{val}} \big(1 - y_k f_{x_c}(x_k)\big)_+ ,
    \qquad f_{x_c} = \text{SVM trained on } D_{tr} \cup \{(x_c, y_c)\}.

As composed here — victim :func:`poisoning.victims.svm` (the dual's KKT map gives the paper's eq. 9-10),
objective :func:`poisoning.objectives.summed_loss` (eq. 2), feasible set :math:`[0, 1]^d`, step rule
``fixed_step(t)``:

1. *Initialization*: clone a random training point of the attacked class and flip its label
   (:func:`clone_and_flip`).
2. *Ascent*: :math:`x_c \leftarrow P_{[0,1]^d}\big(x_c + t\, u / \|u\|\big)`, :math:`u = \nabla L(x_c)`,
   :math:`t = 0.05`; the SVM is warm-started from the previous iterate's active set (the paper uses
   incremental SVM updates, Cauwenberghs & Poggio 2000).
3. *Stop* when the gain :math:`L(x_c^{(p)}) - L(x_c^{(p-1)}) < \varepsilon` (``patience`` times in a
   row; 1 = the paper's rule) or after ``steps`` steps; keep the best point seen.
4. *Multiple points*: a sequence of single-point attacks (``mode="sequential"``).

Multiclass extension (not in the paper; secml's version is binary too): :func:`ovr_attack` attacks a
one-vs-rest ensemble (:func:`poisoning.victims.ovr_svm`) with the same objective — the sum over classes
of the validation hinge losses; the poison point has one class label and enters every binary problem.
"""

from __future__ import annotations

import functools

import numpy as np

from bilevel.stackelberg import fixed_step
from poisoning import victims
from poisoning.attack import AttackResult, PoisoningAttack, PoisonPoints, run
from poisoning.feasible import Box
from poisoning.objectives import summed_loss

__all__ = ["biggio_attack", "clone_and_flip", "poison_svm", "ovr_attack", "PAPER"]

PAPER = {
    "single_point_test_error": "2-5% -> 15-20% (MNIST 7v1, 9v8, 4v0; Fig. 2, ~400 iterations)",
    "multi_point": "steady growth with the number of points, high variance (Fig. 3, 0-8% poison)",
    "step_size": 0.05,
    "box": (0.0, 1.0),
    "C": 1.0,
}


@functools.lru_cache(maxsize=None)
def biggio_attack(C: float = 1.0, *, step_size: float = 0.05, box=(0.0, 1.0), tol: float | None = 1e-6,
                  patience: int = 1) -> PoisoningAttack:
    """The paper's attack: linear SVM (``C``), summed validation hinge loss, box ``[0, 1]``, unit-gradient
    steps of length ``step_size``; stop on gain < ``tol`` (``patience`` times; ``None``: run every step).
    Memoized: equal settings share one attack, hence one compiled loop."""
    return PoisoningAttack(victims.svm(float(C)), summed_loss, Box(float(box[0]), float(box[1])),
                           step=fixed_step(float(step_size)), gain_tol=None if tol is None else float(tol),
                           patience=int(patience))


def clone_and_flip(X_train, y_train, n_points: int, *, attacked_label=1, poison_label=0, seed=0):
    """Initial poison: ``n_points`` random training points of class ``attacked_label`` (without
    replacement while possible), relabelled ``poison_label``. Returns ``(PoisonPoints, indices)``."""
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero(np.asarray(y_train) == attacked_label)
    if pool.size == 0:
        raise ValueError(f"argument 'y_train': no training point has label {attacked_label!r}")
    if int(n_points) < 1:
        raise ValueError(f"argument 'n_points' must be >= 1, got {n_points!r}")
    idx = rng.choice(pool, size=int(n_points), replace=int(n_points) > pool.size)
    X0 = np.asarray(X_train)[idx].copy()
    return PoisonPoints(X0, np.full((int(n_points),), poison_label, dtype=np.int64)), idx


def poison_svm(X_train, y_train, X_val, y_val, n_points: int, *, steps: int = 400, seed=0,
               attack: PoisoningAttack | None = None, attacked_label=1, poison_label=0,
               callback=None) -> tuple[AttackResult, np.ndarray]:
    """Multi-point Biggio attack (a sequence of single-point attacks). Labels are 0/1. Returns
    ``(result, start points)``; the first ``k`` rows of ``result.poison.X`` are the ``k``-point attack."""
    attack = biggio_attack() if attack is None else attack
    poison, _ = clone_and_flip(X_train, y_train, n_points, attacked_label=attacked_label,
                               poison_label=poison_label, seed=seed)
    res = run(attack, X_train, y_train, poison, (X_val, y_val), steps=steps, mode="sequential", callback=callback)
    return res, np.asarray(poison.X)


@functools.lru_cache(maxsize=None)
def ovr_attack(n_classes: int, C: float = 1.0, *, step_size: float = 0.05, box=(0.0, 1.0), tol: float = 1e-6,
               patience: int = 1) -> PoisoningAttack:
    """The Biggio attack against a one-vs-rest SVM ensemble: maximize the sum of the per-class validation
    hinge losses (labels ``0..K-1``)."""
    return PoisoningAttack(victims.ovr_svm(int(n_classes), float(C)), summed_loss,
                           Box(float(box[0]), float(box[1])), step=fixed_step(float(step_size)),
                           gain_tol=float(tol), patience=int(patience))
