"""What ``make demo`` runs: the Biggio et al. (2012) SVM poisoning attack on scikit-learn's digits.

Runs :mod:`experiments.biggio2012` with its defaults on the offline digits data (7 vs 1, TR = 100, a
linear SVM with C = 1, 1 / 5 / 10 / 20 poison points crafted through the SVM dual's KKT conditions),
prints the table of test error against the number of poison points beside the paper's MNIST numbers,
and where the results and plots went (``runs/demo`` unless ``--out``). Needs no downloaded data and
runs in well under a minute on two CPU cores (a few seconds of it compiling the attack loop once).
``--hpo`` runs the hyperparameter-optimization example instead (:mod:`experiments.hpo_digits`:
per-pixel L2 weights of logistic regression learned by implicit hypergradients).

Usage::

    python -m experiments.demo [--out DIR] [--seed N] [--quick] [--hpo]
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from experiments import _cli, biggio2012, hpo_digits


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = _cli.base_parser(__doc__.split("\n\n")[0], default_out="runs/demo")
    parser.add_argument("--hpo", action="store_true", help="run the hyperparameter-optimization example instead")
    args = parser.parse_args(argv)
    forwarded = ["--out", str(args.out), "--seed", str(args.seed)] + (["--quick"] if args.quick else [])
    t0 = time.perf_counter()
    if args.hpo:
        print("bilevel demo: per-pixel L2 weights of logistic regression on digits, learned by implicit")
        print("hypergradients of the validation loss (experiments/hpo_digits.py, default settings)\n")
        results = hpo_digits.main(forwarded)
    else:
        print("bilevel demo: Biggio, Nelson & Laskov (2012) poisoning of a linear SVM on scikit-learn's digits,")
        print("hypergradients through the SVM dual's KKT conditions (experiments/biggio2012.py, default settings)\n")
        results = biggio2012.main(forwarded)
    print(f"\ndemo finished in {time.perf_counter() - t0:.1f} s; results and plots in {args.out}")
    return results


if __name__ == "__main__":
    main()
