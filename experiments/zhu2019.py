r"""Convex Polytope (Zhu et al. 2019) on the transfer protocol of Schwarzschild et al. (2021).

:mod:`poisoning.attacks.zhu2019` (the polytope coefficients an inner problem on the simplex, solved
and implicitly differentiated by the core) run by :mod:`experiments.schwarzschild2021` with
``--attacks cp``; every flag of that experiment applies. The paper's own numbers are printed beside
ours; the benchmark's CP row (frozen white-box 24 %) is in the table.

Usage::

    python -m experiments.zhu2019 --data-dir ../shared/data
"""

from experiments import _transfer_paper

PAPER = (
    "Schwarzschild et al. 2021 benchmark (CIFAR-10, 25 poisons, eps 8/255): frozen 24 / 7 / 4.5 %, "
    "end-to-end 17 / 7 / 4.5 % (white / grey / black box)",
    "Zhu et al. 2019's own tables (5 poisons, ensembles of substitute nets): not retrieved here",
)


def main(argv=None):
    return _transfer_paper.run("cp", PAPER, argv, "runs/zhu2019")


if __name__ == "__main__":
    main()
