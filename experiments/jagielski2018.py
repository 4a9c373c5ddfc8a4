"""Jagielski et al. 2018 (IEEE S&P): poisoning linear regression, OptP vs BGD vs StatP.

Protocol (official code defaults): train 300, validation 250, test 500 drawn at random from the data set
(features and response in [0, 1]); poisoning rates up to 20 % of the poisoned training set
(``m = round(p n / (1 - p))``, 75 points at 20 %). For each rate the attacks are run independently:
StatP, BGD (features only, responses fixed, training objective) and OptP (features and responses,
validation objective by default, best of inverse/boundary-flip starts). The victim (``--model``,
default ridge; :mod:`poisoning.victims`) is retrained on the poisoned set and its *test* MSE reported.

Paper: OptP beats BGD by up to 6.83x; MSE up to 155.7x the clean model (their Figs. 3-6).

Defenses (``--defenses``, Sec. V of the paper), run against every attack's poison in the same run: TRIM
(:mod:`poisoning.defenses.trim`, the victim retrained on the ``n`` points it trusts, ``n`` = the clean
training size, as in the paper; ``--trim-restarts`` random starting subsets of ``n`` points, vmapped) and
scikit-learn's ``HuberRegressor`` and ``RANSACRegressor`` (around ``Ridge`` with the victim's penalty) as
baselines; each row holds the test MSE of ``{attack}_{defense}``. Paper (Figs. 9-10, the bug-fixed
version): TRIM stays close to the clean MSE at every poisoning rate, where Huber and RANSAC (and Chen et
al.'s robust regression and RONI) do not.

Usage::

    python -m experiments.jagielski2018                                   # diabetes (offline)
    python -m experiments.jagielski2018 --dataset house_prices --data-dir DIR
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Sequence

import numpy as np

from experiments import _cli

__all__ = ["build_parser", "make_victim", "defend", "run", "main"]

PAPER_NOTE = "paper: OptP beats BGD by up to 6.83x; MSE up to 155.7x the clean model"
PAPER_DEFENSE_NOTE = ("paper (Sec. V, Figs. 9-10): TRIM stays near the clean MSE at every rate up to 20 %; "
                      "Huber and RANSAC fail (MSE grows with the poisoning rate)")
ATTACKS = ("statp", "bgd", "optp")
DEFENSES = ("trim", "huber", "ransac")


DEFAULT_REG = {"ols": 1e-6, "ridge": 1e-2, "lasso": 1e-3, "enet": 1e-3}


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
    p.add_argument("--defenses", nargs="*", choices=DEFENSES, default=list(DEFENSES),
                   help="defenses run against every attack's poison (none: attacks only)")
    p.add_argument("--trim-restarts", type=int, default=8, help="TRIM's random starting subsets (vmapped)")
    p.add_argument("--trim-max-iter", type=int, default=50, help="TRIM's cap on alternations")
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


def _poisoned_rows(Xtr, ytr, poison):
    """The training set the defender sees: the clean rows plus every copy of every poison point, and which
    rows are poison (real targets kept; ``evaluate.expand_copies`` casts labels to int)."""
    poison = getattr(poison, "poison", poison)
    Xp, yp = np.asarray(poison.X, np.float64), np.asarray(poison.y, np.float64)
    counts = np.ones(len(yp), int) if poison.counts is None else np.asarray(poison.counts).round().astype(int)
    Xp, yp = np.repeat(Xp, counts, axis=0), np.repeat(yp, counts)
    return (np.concatenate([Xtr, Xp]), np.concatenate([ytr, yp]),
            np.r_[np.zeros(len(ytr), bool), np.ones(len(yp), bool)])


def defend(victim, defenses, X, y, n_keep: int, X_test, y_test, *, reg: float = 1e-2, seed: int = 0,
           restarts: int = 8, max_iter: int = 50) -> dict[str, Any]:
    """Test MSE of each defense trained on the (poisoned) set ``(X, y)``: ``trim`` (the victim refit on the
    ``n_keep`` points TRIM keeps), ``huber`` (scikit-learn's ``HuberRegressor``, default epsilon 1.35),
    ``ransac`` (``RANSACRegressor`` around ``Ridge(alpha = reg * N)``: the ridge victim's penalty, since
    :func:`poisoning.victims.ridge` minimizes ``mean(r^2) / 2 + reg |w|^2 / 2``; subsets of ``d + 1`` points,
    NaN when no consensus set is found). Also ``huber_converged`` (lbfgs stopped before ``max_iter``).
    Also ``trim_iterations`` and ``trim_keep`` (the kept mask, for removal rates)."""
    import jax
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import HuberRegressor, RANSACRegressor, Ridge

    from poisoning.defenses.trim import trim

    out: dict[str, Any] = {}
    mse = lambda pred: float(np.mean((np.asarray(pred) - y_test) ** 2))
    if "trim" in defenses:
        res = trim(victim, X, y, n_keep, max_iter=max_iter, key=jax.random.key(seed), restarts=restarts)
        out["trim"] = mse(victim.predict(res.params, X_test))
        out["trim_iterations"] = int(res.iterations)
        out["trim_keep"] = np.asarray(res.keep)
    if "huber" in defenses:
        with warnings.catch_warnings(record=True) as caught:    # lbfgs may stop at max_iter: recorded, not printed
            warnings.simplefilter("always", ConvergenceWarning)
            out["huber"] = mse(HuberRegressor(max_iter=2000).fit(X, y).predict(X_test))
        out["huber_converged"] = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    if "ransac" in defenses:
        try:
            model = RANSACRegressor(Ridge(alpha=reg * len(y)), min_samples=X.shape[1] + 1,  # LinearRegression's
                                    random_state=seed).fit(X, y)                           # default subset size
            out["ransac"] = mse(model.predict(X_test))
        except ValueError as err:           # no consensus set found: RANSAC gives no model at all
            print(f"note: RANSAC failed ({err}); recorded as NaN")
            out["ransac"] = float("nan")
    return out


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
    defenses = tuple(args.defenses)
    def_kw = dict(reg=DEFAULT_REG.get(args.model, 1e-2) if args.reg is None else args.reg, seed=args.seed,
                  restarts=args.trim_restarts, max_iter=args.trim_max_iter)

    def defended(row, poisons):
        """``{attack}_{defense}`` test MSEs and TRIM's removal rates for each attack's poison."""
        from poisoning.defenses.trim import removal_rates

        for name, poison in poisons.items():
            if poison is None:      # the clean set: TRIM with n_keep = N keeps every point, i.e. the plain fit
                res = defend(victim, [d for d in defenses if d != "trim"], Xtr, ytr, n, Xte, yte, **def_kw)
                res["trim"] = mse_clean
                is_poison = np.zeros(n, bool)
            else:
                X, y, is_poison = _poisoned_rows(Xtr, ytr, poison)
                res = defend(victim, defenses, X, y, n, Xte, yte, **def_kw)
            for d in defenses:
                row[f"mse_{name}_{d}"] = res[d]
            if "huber" in defenses:
                row[f"huber_{name}_converged"] = res["huber_converged"]
            if "trim" in defenses and is_poison.any():
                rates = removal_rates(res["trim_keep"], is_poison)
                row[f"trim_{name}_detection"] = rates["detection_rate"]
                row[f"trim_{name}_false_positive"] = rates["false_positive_rate"]

    clean_defended: dict[str, Any] = {}
    if defenses:
        defended(clean_defended, {"clean": None})
    rows = []
    bar = _cli.progress(total=len(rates), desc="rates")
    for rate in rates:
        m = J.n_poison_for_rate(rate, n)
        t0 = time.perf_counter()
        if m == 0:
            row = {"poison_rate": rate, "n_poison": 0, "mse_clean": mse_clean, "mse_statp": mse_clean,
                   "mse_bgd": mse_clean, "mse_optp": mse_clean}
            for a in ATTACKS:
                row.update({f"mse_{a}_{d}": clean_defended[f"mse_clean_{d}"] for d in defenses})
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
            defended(row, {"statp": statp, "bgd": rb.poison, "optp": ro.poison})
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
    for d in defenses:
        summary[f"max_optp_{d}_over_clean"] = max((r[f"mse_optp_{d}"] / mse_clean for r in poisoned), default=1.0)
    results = {
        "experiment": "jagielski2018",
        "dataset": args.dataset,
        "model": victim.name,
        "config": {"n_train": n, "n_val": len(yv), "n_test": len(yte), "seed": args.seed, "rates": rates,
                   "objective": args.objective, "init": args.init, **step_kw, "quick": bool(args.quick),
                   "defenses": list(defenses), "trim_restarts": args.trim_restarts,
                   "trim_max_iter": args.trim_max_iter},
        "clean_defended": clean_defended,
        "rows": rows,
        "summary": summary,
        "total_seconds": total,
        "paper": PAPER_NOTE,
        "paper_defenses": PAPER_DEFENSE_NOTE,
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
    if defenses:
        print("\ndefenses against OptP (test MSE; a defense on the clean set: "
              + ", ".join(f"{d} {clean_defended[f'mse_clean_{d}']:.4g}" for d in defenses) + ")")
        table = [[r["poison_rate"], r["mse_clean"], r["mse_optp"]] + [r[f"mse_optp_{d}"] for d in defenses]
                 + ([f"{r.get('trim_optp_detection', float('nan')):.2f}"] if "trim" in defenses else [])
                 for r in rows]
        print(_cli.format_table(table, ["rate", "clean", "no defense"] + list(defenses)
                                + (["trim detect"] if "trim" in defenses else [])))
        print(PAPER_DEFENSE_NOTE)
    if not args.no_plots:
        _plot(out, results)
        if defenses:
            _plot_defenses(out, results, defenses)
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


def _plot_defenses(out, results, defenses):
    """Test MSE against the poisoning rate, one panel per attack, one line per defense (and none, and clean)."""
    plt = _cli.pyplot()
    fig, axes = plt.subplots(1, len(ATTACKS), figsize=(4.2 * len(ATTACKS), 3.4), sharey=True)
    rates = [100 * r["poison_rate"] for r in results["rows"]]
    for ax, attack in zip(axes, ATTACKS):
        ax.plot(rates, [r["mse_clean"] for r in results["rows"]], "k--", label="clean")
        ax.plot(rates, [r[f"mse_{attack}"] for r in results["rows"]], "o-", label="no defense")
        for d, style in zip(defenses, ("s-", "^-", "v-")):
            ax.plot(rates, [r[f"mse_{attack}_{d}"] for r in results["rows"]], style,
                    label={"trim": "TRIM", "huber": "Huber", "ransac": "RANSAC"}[d])
        ax.set_yscale("log")                # a failing defense can be orders of magnitude off
        ax.set_xlabel("poisoning rate (%)")
        ax.set_title(f"{attack}: {results['dataset']}, {results['model']}")
    axes[0].set_ylabel("test MSE (log scale)")
    axes[0].legend()
    _cli.save_figure(fig, out / "defenses_mse_vs_rate.png")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
