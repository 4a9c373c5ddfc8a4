"""Data-sanitization defenses and what an attacker needs to know about them.

- :mod:`~poisoning.defenses.sanitizers`: the sphere / slab / loss / k-NN sanitizers (fit, score, remove);
- :mod:`~poisoning.defenses.regions`: the region of points they keep, as a feasible set of the attack
  driver (:class:`~poisoning.defenses.regions.SanitizerRegion`);
- :mod:`~poisoning.defenses.evaluate`: a poison against each defense (sanitize, retrain the victim, test
  error), written against the victim record.
"""

from poisoning.defenses import evaluate, regions, sanitizers
from poisoning.defenses.evaluate import (
    DEFENSES,
    evaluate_defenses,
    expand_copies,
    fit_poisoned,
    fit_victim,
    hinge_score,
    make_defense,
    sanitize_and_train,
)
from poisoning.defenses.regions import (
    SanitizerRegion,
    class_thresholds,
    hinge_thresholds,
    loss_halfspaces,
    project_region,
)
from poisoning.defenses.sanitizers import *  # noqa: F401,F403  (the public names, listed once in sanitizers.__all__)

__all__ = list(sanitizers.__all__) + list(regions.__all__) + list(evaluate.__all__)
