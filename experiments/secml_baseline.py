"""The secml reference run of the Biggio et al. (2012) attack, for :mod:`experiments.bench_attacks`.

Runs under *another* interpreter that has secml 0.13 (secml pins matplotlib 3.0 and old numpy, so it
cannot share this project's environment); it imports only numpy and secml, never this project.
:mod:`experiments.bench_attacks` writes the split it attacks to an ``.npz`` (no pickles), calls::

    <secml-python> experiments/secml_baseline.py SPLIT.npz OUT.json --budgets 1 5 10 20 --steps 100

and reads back, per budget, secml's wall time and the test error of the SVM retrained on the
poisoned set. Settings follow secml's poisoning tutorial: ``CClassifierSVM(C=1, kernel="linear")``
(dual, so the attack is allowed), ``CAttackPoisoningSVM`` with ``pgd-ls`` (``eta=0.05``,
``eta_min=0.05``, ``eta_max=None``, ``eps=1e-6``, ``max_iter=--steps``), box ``[0, 1]``, and the
*same* initial poison points as ours (``ds_init``: clones of class 1 relabelled 0). Labels are 0/1,
the convention of this project and of secml.

A one-off setup of such an interpreter (not a project dependency)::

    python3 -m venv /tmp/secmlenv
    /tmp/secmlenv/bin/pip install "numpy<1.24" "scipy<1.12" "scikit-learn<1.3" matplotlib joblib \\
        Pillow requests python-dateutil
    /tmp/secmlenv/bin/pip install --no-deps secml==0.13.post1
"""

from __future__ import annotations

import argparse
import json
import os
import time


def run_secml(python, split, X0, y0, budgets, steps, seed=0) -> dict:
    """Run this script under ``python`` (an interpreter with secml) on ``split`` (with ``X_train``,
    ``y_train``, ``X_val``, ``y_val``, ``X_test``, ``y_test`` attributes, labels 0/1) from the start
    points ``X0, y0``; returns the parsed JSON (``clean_test_error``, ``rows``). Called from this
    project's environment (stdlib + numpy only)."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        npz, out = Path(tmp) / "split.npz", Path(tmp) / "secml.json"
        np.savez(npz, X_train=split.X_train, y_train=split.y_train, X_val=split.X_val, y_val=split.y_val,
                 X_test=split.X_test, y_test=split.y_test, X_init=np.asarray(X0), y_init=np.asarray(y0))
        cmd = [str(python), __file__, str(npz), str(out), "--budgets", *map(str, budgets), "--steps", str(steps),
               "--seed", str(seed)]
        proc = subprocess.run(cmd, stdout=sys.stdout, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"secml baseline failed ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
        return json.loads(out.read_text())


def main() -> None:
    import numpy as np

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("split")
    p.add_argument("out")
    p.add_argument("--budgets", nargs="+", type=int, default=[1, 5, 10, 20])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--step-size", type=float, default=0.05)
    p.add_argument("--eps", type=float, default=1e-6)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import logging

    logging.disable(logging.CRITICAL)
    from secml.adv.attacks.poisoning import CAttackPoisoningSVM
    from secml.array import CArray
    from secml.data import CDataset
    from secml.ml.classifiers import CClassifierSVM

    with np.load(args.split, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    to01 = lambda y: CArray(np.asarray(y).astype(int))  # labels are 0/1 (the project's convention, secml's too)
    tr = CDataset(CArray(arrays["X_train"]), to01(arrays["y_train"]))
    val = CDataset(CArray(arrays["X_val"]), to01(arrays["y_val"]))
    X_ts, y_ts = CArray(arrays["X_test"]), to01(arrays["y_test"])
    X0, y0 = arrays["X_init"], arrays["y_init"]

    clf = CClassifierSVM(C=1.0, kernel="linear")
    clf.fit(tr.X, tr.Y)
    clean_err = float((clf.predict(X_ts) != y_ts).mean())
    rows = []
    for b in args.budgets:
        attack = CAttackPoisoningSVM(
            classifier=clf, training_data=tr, val=val, lb=0.0, ub=1.0,
            solver_params={"eta": args.step_size, "eta_min": args.step_size, "eta_max": None,
                           "max_iter": args.steps, "eps": args.eps},
            random_seed=args.seed)
        attack.n_points = b
        counts = {"objective": 0, "gradient": 0}
        for name in counts:  # count secml's retrainings (objective) and hypergradients
            fn = getattr(attack, f"objective_function{'' if name == 'objective' else '_gradient'}")

            def counted(*a, _fn=fn, _name=name, **k):
                counts[_name] += 1
                return _fn(*a, **k)

            setattr(attack, f"objective_function{'' if name == 'objective' else '_gradient'}", counted)
        init = CDataset(CArray(X0[:b]), to01(y0[:b]))
        t0 = time.perf_counter()
        y_pred, _, pois_ds, f_opt = attack.run(X_ts, y_ts, ds_init=init)
        seconds = time.perf_counter() - t0
        rows.append({"n_poison": b, "seconds": seconds, "test_error": float((y_pred != y_ts).mean()),
                     "objective": float(f_opt), "objective_evaluations": counts["objective"],
                     "gradient_evaluations": counts["gradient"]})
        print(f"secml: {b} points {seconds:.2f} s, test error {rows[-1]['test_error']:.4f}, "
              f"{counts['gradient']} gradients, {counts['objective']} objective evaluations", flush=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as fh:
        json.dump({"clean_test_error": clean_err, "rows": rows, "secml_version": __import__("secml").__version__},
                  fh, indent=2)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
