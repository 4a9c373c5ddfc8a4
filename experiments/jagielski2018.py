"""Jagielski et al. 2018 (IEEE S&P): poisoning linear regression, OptP vs BGD vs StatP.

Protocol (official code defaults): train 300, validation 250, test 500 drawn at random from the data set
(features and response in [0, 1]); poisoning rates up to 20 % of the poisoned training set
(``m = round(p n / (1 - p))``, 75 points at 20 %). For each rate the attacks are run independently:
StatP, BGD (features only, responses fixed, training objective) and OptP (features and responses,
validation objective by default, best of inverse/boundary-flip starts). The victim (``--model``,
default ridge; :mod:`poisoning.victims`) is retrained on the poisoned set and its *test* MSE reported.

Paper: OptP beats BGD by up to 6.83x; MSE up to 155.7x the clean model (their Figs. 3-6).

Usage::

    python -m experiments.jagielski2018                                   # diabetes (offline)
    python -m experiments.jagielski2018 --dataset house_prices --data-dir DIR
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from experiments import _cli

__all__ = ["build_parser", "make_victim", "run", "main"]

PAPER_NOTE = "paper: OptP beats BGD by up to 6.83x; MSE up to 155.7x the clean model"


def make_victim(model: str, reg: float | None = None):
    """The regression victim of ``--model`` (``reg=None``: its default, 1e-6 / 1e-2 / 1e-3 / 1e-3)."""
    from poisoning import victims

    if model == "ols":
        return victims.ridge(1e-6 if reg is None else reg)
    if model == "ridge":
        return victims.ridge(1e-2 if reg is None else reg)
    if model == "lasso":
        return victims.lasso(1e-3 if reg is None else reg)
    if model == "enet":
        return victims.elastic_net(1e-3 if reg is None else reg, 0.5)
    raise ValueError(f"unknown model {model!r}")


def build_parser():
    p = _cli.base_parser(__doc__.splitlines()[0], default_out="runs/jagielski2018")
    p.add_argument("--dataset", choices=("diabetes", "house_prices"), default="diabetes")
    p.add_argument("--model", choices=("ols", "ridge", "lasso", "enet"), default="ridge")
    p.add_argument("--reg", type=float, default=None, help="regularization weight (default per model)")
    p.add_argument("--n-train", type=int, default=300)
    p.add_argument("--n-val", type=int, default=250)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--rates", nargs="+", type=float, default=(0.0, 0.04, 0.08, 0.12, 0.16, 0.2))
    p.add_argument("--objective", choices=("val", "train"), default="val", help="OptP's attacker objective")
    p.add_argument("--init", choices=("inverse", "boundary", "best"), default="best", help="OptP's start")
    p.add_argument("--steps", type=int, default=100, help="max ascent iterations")
    p.add_argument("--eta", type=float, default=0.1, help="initial step length (unit direction per point)")
    p.add_argument("--beta", type=float, default=0.5, help="line search: step shrink factor on rejection")
    p.add_argument("--sigma", type=float, default=0.9, help="line search: step grows by 1/sigma on acceptance")
    p.add_argument("--eps", type=float, default=1e-4, help="stop when the relative gain is below eps")
    p.add_argument("--no-plots", action="store_true")
    return p


def _load(args):
    from poisoning import datasets as data

    if args.dataset == "diabetes":
        ds = data.load_diabetes(test_fraction=0.0, seed=args.seed)
    else:
        ds = data.load_house_prices(_cli.resolve_data_dir(args.data_dir), test_fraction=0.0, seed=args.seed)
    X, y = np.asarray(ds.X_train, np.float64), np.asarray(ds.y_train, np.float64)
    sizes = [args.n_train, args.n_val, args.n_test]
    if sum(sizes) > len(y):  # diabetes has 442 rows: shrink the three parts proportionally
        f = len(y) / sum(sizes)
        sizes = [int(s * f) for s in sizes]
        print(f"note: {args.dataset} has {len(y)} rows; using train/val/test = {sizes[0]}/{sizes[1]}/{sizes[2]}")
    (Xtr, ytr), (Xv, yv), (Xte, yte) = data.split(X, y, sizes, seed=args.seed)
    return Xtr, ytr, Xv, yv, Xte, yte


def run(args) -> dict[str, Any]:
    import jax

    jax.config.update("jax_enable_x64", True)

    from poisoning.attacks import jagielski2018 as J
    from poisoning.defenses.evaluate import fit_poisoned

    if args.quick:
        args.steps = min(args.steps, 10)
    rates = sorted(set(float(r) for r in args.rates))
    Xtr, ytr, Xv, yv, Xte, yte = _load(args)
    n = len(ytr)
    victim = make_victim(args.model, args.reg)
    step_kw = dict(eta=args.eta, beta=args.beta, sigma=args.sigma, eps=args.eps, steps=args.steps)

    def test_mse(poison=None):
        return float(victim.error(fit_poisoned(victim, Xtr, ytr, poison), Xte, yte))

    t_all = time.perf_counter()
    mse_clean = test_mse()
    rows = []
    bar = _cli.progress(total=len(rates), desc="rates")
    for rate in rates:
        m = J.n_poison_for_rate(rate, n)
        t0 = time.perf_counter()
        if m == 0:
            row = {"poison_rate": rate, "n_poison": 0, "mse_clean": mse_clean, "mse_statp": mse_clean,
                   "mse_bgd": mse_clean, "mse_optp": mse_clean}
        else:
            statp = J.statp(Xtr, ytr, m, victim, seed=args.seed)
            rb = J.bgd(Xtr, ytr, Xv, yv, m, victim, seed=args.seed, **step_kw)
            runs = {kind: J.optp(Xtr, ytr, Xv, yv, m, victim, objective=args.objective, init=kind, seed=args.seed,
                                 **step_kw)
                    for kind in (("inverse", "boundary") if args.init == "best" else (args.init,))}
            init, ro = max(runs.items(), key=lambda kv: kv[1].objective)
            Xo, yo = np.asarray(ro.poison.X), np.asarray(ro.poison.y)
            assert Xo.min() >= 0 and Xo.max() <= 1 and yo.min() >= 0 and yo.max() <= 1
            row = {"poison_rate": rate, "n_poison": m, "mse_clean": mse_clean, "mse_statp": test_mse(statp),
                   "mse_bgd": test_mse(rb.poison), "mse_optp": test_mse(ro.poison),
                   "optp_init": init, "optp_steps": int(ro.n_steps[0]), "bgd_steps": int(rb.n_steps[0]),
                   "optp_objective": ro.objective, "optp_objective_start": float(ro.history[0][0])}
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        bar.update(1)
    bar.close()
    total = time.perf_counter() - t_all

    poisoned = [r for r in rows if r["n_poison"] > 0]
    summary = {
        "max_optp_over_clean": max((r["mse_optp"] / mse_clean for r in poisoned), default=1.0),
        "max_optp_over_bgd": max((r["mse_optp"] / r["mse_bgd"] for r in poisoned), default=1.0),
        "max_optp_over_statp": max((r["mse_optp"] / r["mse_statp"] for r in poisoned), default=1.0),
    }
    results = {
        "experiment": "jagielski2018",
        "dataset": args.dataset,
        "model": victim.name,
        "config": {"n_train": n, "n_val": len(yv), "n_test": len(yte), "seed": args.seed, "rates": rates,
                   "objective": args.objective, "init": args.init, **step_kw, "quick": bool(args.quick)},
        "rows": rows,
        "summary": summary,
        "total_seconds": total,
        "paper": PAPER_NOTE,
    }
    out = _cli.ensure_dir(args.out)
    _cli.write_json_atomic(out / "results.json", results)

    print(f"Jagielski et al. 2018, {args.dataset}, victim {victim.name}: train/val/test = {n}/{len(yv)}/{len(yte)}")
    table = [[r["poison_rate"], r["n_poison"], r["mse_clean"], r["mse_statp"], r["mse_bgd"], r["mse_optp"],
              f"{r['mse_optp'] / mse_clean:.2f}x", r["seconds"]] for r in rows]
    print(_cli.format_table(table, ["rate", "m", "mse_clean", "mse_statp", "mse_bgd", "mse_optp", "optp/clean",
                                    "seconds"]))
    print(f"ours: OptP/BGD up to {summary['max_optp_over_bgd']:.2f}x; OptP/clean up to "
          f"{summary['max_optp_over_clean']:.2f}x; total {total:.1f}s")
    print(PAPER_NOTE)
    if not args.no_plots:
        _plot(out, results)
    print(f"wrote {out / 'results.json'}")
    return results


def _plot(out, results):
    plt = _cli.pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    rates = [100 * r["poison_rate"] for r in results["rows"]]
    for key, label, style in (("mse_clean", "clean", "k--"), ("mse_statp", "StatP", "s-"),
                              ("mse_bgd", "BGD", "^-"), ("mse_optp", "OptP", "o-")):
        ax.plot(rates, [r[key] for r in results["rows"]], style, label=label)
    ax.set_xlabel("poisoning rate (%)")
    ax.set_ylabel("test MSE")
    ax.set_title(f"{results['dataset']}, {results['model']}")
    ax.legend()
    _cli.save_figure(fig, out / "mse_vs_rate.png")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
