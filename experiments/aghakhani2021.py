r"""Bullseye Polytope (Aghakhani et al. 2021) on the transfer protocol of Schwarzschild et al. (2021).

:mod:`poisoning.attacks.aghakhani2021` (the poisons' mean feature on the target's) run by
:mod:`experiments.schwarzschild2021` with ``--attacks bp``; every flag of that experiment applies.
The benchmark's BP row (frozen white-box 85 %, black-box 8.5 %) is in the table.

Usage::

    python -m experiments.aghakhani2021 --data-dir ../shared/data
"""

from experiments import _transfer_paper

PAPER = (
    "Schwarzschild et al. 2021 benchmark (CIFAR-10, 25 poisons, eps 8/255): frozen 85 % white box, "
    "8.5 % black box",
    "Aghakhani et al. 2021's own tables: not retrieved here",
)


def main(argv=None):
    return _transfer_paper.run("bp", PAPER, argv, "runs/aghakhani2021")


if __name__ == "__main__":
    main()
