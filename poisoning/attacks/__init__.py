"""Published poisoning attacks built on :mod:`poisoning.attack` (one module per paper)."""

from poisoning.attacks.biggio2012 import (
    biggio_attack,
    clone_and_flip,
    ovr_attack,
    ovr_svm_learner,
    poison_svm,
    validation_hinge,
)

__all__ = ["biggio_attack", "clone_and_flip", "ovr_attack", "ovr_svm_learner", "poison_svm", "validation_hinge"]
