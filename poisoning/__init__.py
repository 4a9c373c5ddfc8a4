"""poisoning: data-poisoning attacks written as upper-level objectives over victim learners.

- :mod:`poisoning.attack` — :class:`~poisoning.attack.Learner` (victim training, differentiable in the
  training features), :class:`~poisoning.attack.PoisoningAttack` (learner + objective + feasible set +
  step rule) and :func:`~poisoning.attack.run` (sequential or joint projected hypergradient ascent);
- :mod:`poisoning.objectives` — objectives to maximize (error-generic, error-specific);
- :mod:`poisoning.feasible` — feasible sets with projections (box, balls, intersections);
- :mod:`poisoning.attacks` — published attacks (Biggio 2012, Muñoz-González 2017, Koh 2022,
  Jagielski 2018 and 2021, Solans 2020, label flipping);
- :mod:`poisoning.fairness` — group-fairness metrics (demographic parity, disparate impact, average
  odds, per-group rates);
- :mod:`poisoning.defenses` — data sanitizers (sphere, slab, loss, k-NN) and their feasible regions;
- :mod:`poisoning.data` — dataset loaders and paper protocols.
"""

from poisoning.attack import (
    AttackResult,
    Learner,
    PoisoningAttack,
    attack_objective,
    hypergradient,
    linear_svm_learner,
    logistic_learner,
    ridge_learner,
    run,
    run_stackelberg,
)
from poisoning.feasible import Box, FeasibleSet, Intersection, L2Ball, LinfBall, Unconstrained
from poisoning.objectives import classification_error, error_generic, error_specific

__all__ = [
    "AttackResult",
    "Learner",
    "PoisoningAttack",
    "attack_objective",
    "hypergradient",
    "linear_svm_learner",
    "logistic_learner",
    "ridge_learner",
    "run",
    "run_stackelberg",
    "Box",
    "FeasibleSet",
    "Intersection",
    "L2Ball",
    "LinfBall",
    "Unconstrained",
    "classification_error",
    "error_generic",
    "error_specific",
]
