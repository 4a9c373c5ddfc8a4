"""Data-sanitization defenses and what an attacker needs to know about them.

- :mod:`~poisoning.defenses.sanitizers`: the sphere / slab / loss / k-NN sanitizers (fit, score, remove);
- :mod:`~poisoning.defenses.regions`: the region of points they keep, as a feasible set of the attack
  driver (:class:`~poisoning.defenses.regions.SanitizerRegion`);
- :mod:`~poisoning.defenses.evaluate`: a poison against each defense (sanitize, retrain the victim, test
  error), written against the victim record;
- backdoor detection on a network's features: :mod:`~poisoning.defenses.spectral_signatures`,
  :mod:`~poisoning.defenses.activation_clustering`, :mod:`~poisoning.defenses.cluster_impurity`, scored by
  :mod:`~poisoning.defenses.detection`;
- defenses that act during training, each a ``step`` of :func:`poisoning.training.train`:
  :mod:`~poisoning.defenses.dp_sgd`, :mod:`~poisoning.defenses.adversarial_poisoning`,
  :mod:`~poisoning.defenses.gaussian_augmentation`;
- :mod:`~poisoning.defenses.trim`: TRIM, iterative trimmed-loss training (Jagielski et al. 2018).
"""

from poisoning.defenses import evaluate, regions, sanitizers
from poisoning.defenses.evaluate import (
    DEFENSES,
    KOH_DEFENSES,
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

# backdoor detection (issue 12): each defense is a module named after it, holding the function of the same
# name (poisoning.defenses.cluster_impurity.cluster_impurity); the package exports the modules, not the
# functions, so the module names are not shadowed.
from poisoning.defenses import activation_clustering, cluster_impurity, detection, spectral_signatures  # noqa: E402
from poisoning.defenses.detection import Detection, DetectionRates, detection_rates  # noqa: E402

__all__ += ["activation_clustering", "cluster_impurity", "spectral_signatures", "detection", "Detection",
            "DetectionRates", "detection_rates"]

# defenses that act during training (issue 11): each is a training step for poisoning.training.train(step=...)
from poisoning.defenses import adversarial_poisoning, dp_sgd, gaussian_augmentation, trim  # noqa: E402
from poisoning.defenses.adversarial_poisoning import AdversarialPoisoning  # noqa: E402
from poisoning.defenses.dp_sgd import DPSGD, dp_epsilon, rdp_sampled_gaussian  # noqa: E402
from poisoning.defenses.gaussian_augmentation import GaussianAugmentation  # noqa: E402
from poisoning.defenses.trim import TrimResult, removal_rates  # noqa: E402  (TRIM, issue 13: the module `trim`)

__all__ += ["adversarial_poisoning", "dp_sgd", "gaussian_augmentation", "trim", "AdversarialPoisoning", "DPSGD",
            "dp_epsilon", "rdp_sampled_gaussian", "GaussianAugmentation", "TrimResult", "removal_rates"]

# model-level backdoor defenses (issue 12) and robust sanitizers (issue 13): modules exported by name
from poisoning.defenses import fine_pruning, label_sanitization, neural_cleanse, roni, sever, strip, svd  # noqa: E402
from poisoning.defenses.fine_pruning import ChannelMask, FinePruningConfig  # noqa: E402
from poisoning.defenses.label_sanitization import KNNLabelSanitizer, knn_relabel  # noqa: E402
from poisoning.defenses.neural_cleanse import NeuralCleanseConfig  # noqa: E402
from poisoning.defenses.roni import RONIDefense  # noqa: E402
from poisoning.defenses.sever import SeverDefense  # noqa: E402
from poisoning.defenses.strip import StripConfig  # noqa: E402
from poisoning.defenses.svd import SVDDefense  # noqa: E402

__all__ += ["fine_pruning", "label_sanitization", "neural_cleanse", "roni", "sever", "strip", "svd", "ChannelMask",
            "FinePruningConfig", "KNNLabelSanitizer", "knn_relabel", "NeuralCleanseConfig", "RONIDefense",
            "SeverDefense", "StripConfig", "SVDDefense"]
