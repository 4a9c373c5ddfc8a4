"""Published poisoning attacks built on :mod:`poisoning.attack` (one module per paper).

- :mod:`~poisoning.attacks.biggio2012`: SVM poisoning through the dual's KKT conditions (binary and one-vs-rest);
- :mod:`~poisoning.attacks.munoz2017`: gradient poisoning of softmax LR / MLP / Adaline (implicit or back-gradient);
- :mod:`~poisoning.attacks.label_flip`: random, relaxed-bilevel optimized and greedy label flipping;
- :mod:`~poisoning.attacks.koh2022`: influence attack projected onto the sanitizers' feasible region;
- :mod:`~poisoning.attacks.jagielski2018`: regression poisoning (OptP, BGD, StatP) and the TRIM defense;
- :mod:`~poisoning.attacks.subpopulation`: FeatureMatch / ClusterMatch subpopulation attacks (Jagielski 2021);
- :mod:`~poisoning.attacks.solans2020`: fairness poisoning of logistic regression (disparate-impact surrogate),
  Zafar-style synthetic data (Solans, Biggio & Castillo 2020).
"""

from poisoning.attacks.biggio2012 import (
    biggio_attack,
    clone_and_flip,
    ovr_attack,
    ovr_svm_learner,
    poison_svm,
    validation_hinge,
)

from poisoning.attacks import (  # noqa: E402  (submodules, one per paper)
    jagielski2018,
    koh2022,
    label_flip,
    munoz2017,
    solans2020,
    subpopulation,
)

__all__ = ["biggio_attack", "clone_and_flip", "ovr_attack", "ovr_svm_learner", "poison_svm", "validation_hinge"]
