"""What ``make demo`` runs: the hyperparameter example with its default settings.

Learns one L2 weight per pixel of a 10-class logistic regression on scikit-learn's digits by implicit
hypergradient descent (:mod:`experiments.hpo_digits`), prints the before/after table and where the
results and plots went (``runs/demo`` unless ``--out``). Needs no downloaded data; takes well under a
minute on two CPU cores (most of it compiling the outer step once).

Usage::

    python -m experiments.demo [--out DIR] [--seed N] [--quick]
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from experiments import _cli, hpo_digits


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = _cli.base_parser(__doc__.split("\n\n")[0], default_out="runs/demo")
    args = parser.parse_args(argv)
    print("bilevel demo: per-pixel L2 weights of logistic regression on digits, learned by implicit")
    print("hypergradients of the validation loss (experiments/hpo_digits.py, default settings)\n")
    forwarded = ["--out", str(args.out), "--seed", str(args.seed)]
    if args.quick:
        forwarded.append("--quick")
    t0 = time.perf_counter()
    results = hpo_digits.main(forwarded)
    print(f"\ndemo finished in {time.perf_counter() - t0:.1f} s")
    return results


if __name__ == "__main__":
    main()
