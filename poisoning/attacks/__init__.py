"""Published poisoning attacks, each a small module: an objective, a feasible set, a victim and a call
of the one driver (:func:`poisoning.attack.run`).

- :mod:`~poisoning.attacks.biggio2012` — Biggio, Nelson & Laskov 2012 (linear SVM, KKT hypergradients);
- :mod:`~poisoning.attacks.munoz2017` — Muñoz-González et al. 2017 (error-generic / -specific,
  implicit or back-gradient hypergradients);
- :mod:`~poisoning.attacks.label_flip` — random, optimized (relaxed bilevel) and greedy label flips;
- :mod:`~poisoning.attacks.koh2022` — Koh, Steinhardt & Liang 2022 (influence and KKT attacks against
  sanitizers);
- :mod:`~poisoning.attacks.jagielski2018` — Jagielski et al. 2018 regression poisoning (OptP, BGD, StatP);
- :mod:`~poisoning.attacks.solans2020` — Solans, Biggio & Castillo 2020 fairness poisoning;
- :mod:`~poisoning.attacks.subpopulation` — Jagielski et al. 2021 subpopulation attacks.

Submodules are imported on first use (``poisoning.attacks.biggio2012``), so importing one attack does
not import them all.
"""

import importlib

__all__ = ["biggio2012", "munoz2017", "label_flip", "koh2022", "jagielski2018", "solans2020", "subpopulation"]


def __getattr__(name):
    if name in __all__:
        return importlib.import_module(f"poisoning.attacks.{name}")
    raise AttributeError(f"module 'poisoning.attacks' has no attribute {name!r}")
