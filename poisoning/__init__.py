"""poisoning: data-poisoning attacks as objectives over differentiable victims, one driver for all.

- :mod:`poisoning.victims` — victims: data in, differentiable trained parameters out (SVMs through their
  KKT map, smooth learners through the implicit function theorem, flax networks through unrolled
  training), one label convention (integer classes ``0..K-1``);
- :mod:`poisoning.attack` — the driver: :class:`~poisoning.attack.PoisoningAttack` (victim + objective +
  feasible set + step rule), the poisons (:class:`~poisoning.attack.PoisonPoints`,
  :class:`~poisoning.attack.LabelFlips`, :class:`~poisoning.attack.PoisonWeights`) and
  :func:`~poisoning.attack.run`, on :mod:`bilevel.stackelberg`'s leader loop;
- :mod:`poisoning.objectives` — objectives to maximize (error-generic, error-specific, ...);
- :mod:`poisoning.feasible` — feasible sets and every projection;
- :mod:`poisoning.attacks` — published attacks, each objective + feasible set + victim + a call;
- :mod:`poisoning.defenses` — sanitizers and the evaluation of attacks against them;
- :mod:`poisoning.transfer` — clean-label attacks on transfer learning crafted in a frozen network's
  feature space (feature collision, convex and bullseye polytopes) and the victims of the transfer
  benchmark (a convex head on frozen features, end-to-end fine-tuning);
- :mod:`poisoning.trials` — independent trials vmapped and sharded over devices (``jax.sharding``);
- :mod:`poisoning.fairness` — group-fairness metrics;
- :mod:`poisoning.datasets` — dataset loaders (one module per source) and paper protocols.
"""

from poisoning import victims
from poisoning.attack import (
    AttackResult,
    LabelFlips,
    PoisoningAttack,
    PoisonPoints,
    PoisonWeights,
    attack_value,
    hypergradient,
    run,
)
from poisoning.feasible import (
    Box,
    BoxL1Ball,
    CappedSimplex,
    FeasibleSet,
    Intersection,
    L1Ball,
    L2Ball,
    LinfBall,
    Product,
    SphereSlab,
    Unconstrained,
)
from poisoning.objectives import classification_error, error_generic, error_specific, summed_loss
from poisoning.victims import Victim

__all__ = [
    "victims",
    "Victim",
    "AttackResult",
    "PoisoningAttack",
    "PoisonPoints",
    "LabelFlips",
    "PoisonWeights",
    "attack_value",
    "hypergradient",
    "run",
    "FeasibleSet",
    "Unconstrained",
    "Box",
    "L2Ball",
    "LinfBall",
    "L1Ball",
    "BoxL1Ball",
    "CappedSimplex",
    "SphereSlab",
    "Intersection",
    "Product",
    "error_generic",
    "error_specific",
    "summed_loss",
    "classification_error",
]
