"""Published poisoning attacks, each a small module: an objective, a feasible set, a victim and a call
of the one driver (:func:`poisoning.attack.run`).

- :mod:`~poisoning.attacks.biggio2012` — Biggio, Nelson & Laskov 2012 (linear SVM, KKT hypergradients);
- :mod:`~poisoning.attacks.munoz2017` — Muñoz-González et al. 2017 (error-generic / -specific,
  implicit or back-gradient hypergradients);
- :mod:`~poisoning.attacks.label_flip` — random, optimized (relaxed bilevel) and greedy label flips;
- :mod:`~poisoning.attacks.koh2022` — Koh, Steinhardt & Liang 2022 (influence, KKT and min-max attacks
  against sanitizers, with the release's decoy parameters);
- :mod:`~poisoning.attacks.jagielski2018` — Jagielski et al. 2018 regression poisoning (OptP, BGD, StatP);
- :mod:`~poisoning.attacks.solans2020` — Solans, Biggio & Castillo 2020 fairness poisoning;
- :mod:`~poisoning.attacks.subpopulation` — Jagielski et al. 2021 subpopulation attacks;
- :mod:`~poisoning.attacks.koh2017` — Koh & Liang 2017 influence attack on frozen features (training
  images perturbed inside the 8-bit box through the driver and a frozen-feature victim);
- :mod:`~poisoning.attacks.shafahi2018` — Poison Frogs feature collision (forward-backward splitting);
- :mod:`~poisoning.attacks.zhu2019` — Convex Polytope (the coefficients an inner problem on the simplex);
- :mod:`~poisoning.attacks.aghakhani2021` — Bullseye Polytope (equal coefficients, multi-draw);
- :mod:`~poisoning.attacks.geiping2021` — Witches' Brew gradient matching (poisons for networks
  trained from scratch; signed Adam, restarts, differentiable augmentation, ensembles);
- :mod:`~poisoning.attacks.souri2022` — Sleeper Agent (gradient matching toward a hidden trigger, model
  selection, retraining between crafting rounds);
- :mod:`~poisoning.attacks.gu2017` — BadNets: a trigger (:mod:`poisoning.triggers`) stamped on a fraction
  of the training images, relabelled single-target or all-to-all;
- :mod:`~poisoning.attacks.huang2020` — MetaPoison (Adam through unrolled training steps of an ensemble
  at staggered epochs);
- :mod:`~poisoning.attacks.cina2022` — sponge poisoning (a training step that raises the activation
  density: energy and latency on sparsity-aware hardware);
- :mod:`~poisoning.attacks.adaptive` — defense-aware attacks: the sanitizer's region as the feasible set,
  or the candidates it keeps (one door for every attack and defense, ``adaptive_attack``);
- :mod:`~poisoning.attacks.defense_loop` — the defense in the attacker's loop: a simulated sanitizer,
  the victim trained on its survivors, candidate selection on the attacker's validation split.

The last three are feature-space attacks on transfer learning (:mod:`poisoning.transfer`): a loss on
the poisons' features, an optional inner problem, an l_inf ball around the bases, the core's leader loop.

Submodules are imported on first use (``poisoning.attacks.biggio2012``), so importing one attack does
not import them all.
"""

import importlib

__all__ = ["biggio2012", "munoz2017", "label_flip", "koh2022", "jagielski2018", "solans2020", "subpopulation",
           "koh2017", "shafahi2018", "zhu2019", "aghakhani2021", "geiping2021", "souri2022", "huang2020", "cina2022",
           "gu2017", "chen2017", "turner2019", "saha2020", "adaptive",
           "defense_loop"]


def __getattr__(name):
    if name in __all__:
        return importlib.import_module(f"poisoning.attacks.{name}")
    raise AttributeError(f"module 'poisoning.attacks' has no attribute {name!r}")
