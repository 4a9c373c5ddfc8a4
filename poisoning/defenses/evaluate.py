r"""Evaluating a poison against the data-sanitization defenses (Koh, Steinhardt & Liang 2022, Sec. 5).

For each defense of :mod:`poisoning.defenses.sanitizers` (sphere, slab, loss, k-NN) and the newer ones
(SEVER, :mod:`~poisoning.defenses.sever`; RONI, :mod:`~poisoning.defenses.roni`; the k-NN label
sanitization of Paudice et al. 2018, :mod:`~poisoning.defenses.label_sanitization`; the SVD sanitizer of
Koh et al. 2022, :mod:`~poisoning.defenses.svd`): fit it on the
*poisoned* training set (the data-dependent defense), remove the top ``fraction`` of each class by its
score (:meth:`~poisoning.defenses.sanitizers.SphereDefense.sanitize`), retrain the victim on what is kept
(removed points get weight 0, so every defense reuses one compiled fit) and measure the victim's test
error. The poison is a :class:`~poisoning.attack.PoisonPoints` whose ``counts`` are copies: every copy
becomes a row (:func:`expand_copies`), as the defender sees it. Written against the victim record
(:mod:`poisoning.victims`; fits compiled once per shape, :func:`fit_victim`): the loss defense scores each
point under the victim retrained on the poisoned set, by the victim's own per-example loss or by
``loss_score`` — :func:`hinge_score` for Koh et al.'s hinge-loss defense (the smoothed hinge of
:func:`~poisoning.victims.smooth_svm` ranks the points of zero hinge differently). Labels are classes
``0..K-1``.

How the newer defenses enter the same protocol: ``sever`` removes ``round(fraction * n)`` points in all over
``sever_rounds`` rounds (a global budget, :func:`~poisoning.defenses.sever.sever`; the victim is its model);
``roni`` removes the top ``fraction`` of each class by the impact of each point on small models trained on
random base sets of the pool (``roni_trials`` draws of ``roni_base`` = 20 base and ``roni_val`` = 50
validation points, fewer for pools under 71 points; the victim is the learner); ``svd`` removes the top
``fraction`` of each class by the residual outside the top-``rank``
subspace; ``label_sanitization`` is the paper's defense, not a removal: every point whose ``label_k`` nearest
neighbours hold another label with a fraction of at least ``label_eta`` is relabelled
(:func:`~poisoning.defenses.label_sanitization.knn_relabel`) and the victim retrains on the relabelled set
(a relabelled poison copy counts as removed in ``poison_kept``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bilevel import ConvergenceError
from poisoning.defenses.label_sanitization import KNNLabelSanitizer, knn_relabel
from poisoning.defenses.roni import RONIDefense
from poisoning.defenses.sanitizers import KNNDefense, LossDefense, SlabDefense, SphereDefense
from poisoning.defenses.sever import SeverDefense
from poisoning.defenses.svd import SVDDefense
from poisoning.victims.base import check_weights

__all__ = ["DEFENSES", "KOH_DEFENSES", "RANDOM_DEFENSES", "fit_victim", "fit_poisoned", "hinge_score",
           "expand_copies", "make_defense", "sanitize_and_train", "evaluate_defenses"]

DEFENSES = ("sphere", "slab", "loss", "knn", "sever", "roni", "label_sanitization", "svd")
KOH_DEFENSES = ("sphere", "slab", "loss", "knn")   # the default of evaluate_defenses (Koh et al.'s four)
RANDOM_DEFENSES = ("roni",)                        # random in their draws (their ``seed`` matters)


@functools.partial(jax.jit, static_argnums=0)
def _fit_compiled(victim, X, y_enc, weights, warm_start):
    params = victim.fit_fn(X, y_enc, weights, warm_start)
    if victim.train_loss is None:
        return params, jnp.zeros((), X.dtype)
    grad = jax.grad(victim.train_loss)(params, X, y_enc, weights)
    return params, optax.tree_utils.tree_norm(grad)


def fit_victim(victim, X, y, weights=None, warm_start=None, *, continuations: int = 2):
    """``victim.fit`` compiled once per victim and data shape (an eager ``fit`` re-traces and re-compiles its
    solver loops at every call): no weights are weights 1 and no warm start is the victim's cold start
    (``victim.init``), so every call shares one compilation. Labels validated as in
    :meth:`~poisoning.victims.Victim.fit`. A smooth victim whose training gradient is not small at the result
    is solved again from where it stopped, up to ``continuations`` times (its iteration cap reached on a stiff
    problem, e.g. a smoothed hinge at a small temperature warm-started far from the poisoned optimum); still
    not small, it raises :class:`bilevel.ConvergenceError` (e.g. Newton thrown off by a cold start)."""
    if isinstance(continuations, bool) or not isinstance(continuations, (int, np.integer)) or continuations < 0:
        raise ValueError(f"argument 'continuations' must be an int >= 0, got {continuations!r}")
    dtype = jnp.result_type(float)
    X = jnp.asarray(np.asarray(X), dtype)
    n = X.shape[0]
    y = victim.check_labels(np.asarray(y), n=n)
    weights = np.ones(n) if weights is None else check_weights(np.asarray(weights, float), n)
    if warm_start is None:
        warm_start = victim.init(n, X.shape[1] if X.ndim == 2 else tuple(X.shape[1:]), dtype)
    warm_start = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(jnp.asarray(a).dtype,
                                                                                        jnp.floating) else a,
                                        warm_start)
    y_enc, weights = victim.encode(y, dtype), jnp.asarray(weights, dtype)
    params, gnorm = _fit_compiled(victim, X, y_enc, weights, warm_start)
    tol = 1e-5 if dtype == jnp.float64 else 1e-2
    for _ in range(int(continuations)):             # the same compiled solve, from its last iterate
        if float(gnorm) <= tol or not np.isfinite(float(gnorm)):
            break
        params, gnorm = _fit_compiled(victim, X, y_enc, weights, params)
    if not float(gnorm) <= tol:  # a smooth victim's solver that diverged or stalled (it may not raise)
        raise ConvergenceError(f"fit_victim: {victim.name} did not converge: gradient norm of its training "
                               f"objective {float(gnorm):.3e} > {tol:g}; try a warm start from a nearby fit")
    return params


def fit_poisoned(victim, X_clean, y_clean, poison=None, warm_start=None):
    """The victim trained on the clean set plus ``poison`` (a :class:`~poisoning.attack.PoisonPoints` or an
    attack result; its rows weighted by their ``counts``), compiled (:func:`fit_victim`), started from
    ``warm_start`` or else from the clean fit (a far poison with many copies can throw a cold-started
    Newton off); ``poison=None``: the clean victim."""
    if poison is None:
        return fit_victim(victim, X_clean, y_clean, warm_start=warm_start)
    if warm_start is None:
        warm_start = fit_victim(victim, X_clean, y_clean)
    X_loc, y_loc, counts = _parts(poison)
    X = np.concatenate([np.asarray(X_clean, float), np.asarray(X_loc, float)])
    y = np.concatenate([np.asarray(y_clean), y_loc])
    weights = np.concatenate([np.ones(len(y_clean)), np.asarray(counts, float)])
    return fit_victim(victim, X, y, weights, warm_start=warm_start)


def hinge_score(victim, params, X, y):
    r"""Hinge loss :math:`\max(0, 1 - \sigma_i f(x_i))` of a binary victim's decision (:math:`\sigma_i = 2y_i - 1`):
    the loss defense of Koh et al. (2022) for SVMs (and the constraint of
    :class:`~poisoning.defenses.regions.SanitizerRegion`)."""
    sign = 2.0 * jnp.asarray(y) - 1.0
    return jnp.maximum(0.0, 1.0 - sign * victim.decision(params, X))


def _error(victim, params, X, y) -> float:
    """0-1 test error in float64 (``Victim.error`` averages a bool array in float32)."""
    return float(np.mean(np.asarray(victim.predict(params, X)) != np.asarray(y)))


def _parts(poison):
    """``(X, y, counts)`` of a :class:`~poisoning.attack.PoisonPoints` or an attack result holding one."""
    poison = getattr(poison, "poison", poison)
    for name in ("X", "y"):
        if not hasattr(poison, name):
            raise ValueError(f"expected a PoisonPoints (or an AttackResult), got {type(poison).__name__}")
    counts = np.ones(len(np.asarray(poison.y)), int) if poison.counts is None else np.asarray(poison.counts)
    return np.asarray(poison.X), np.asarray(poison.y), counts


def expand_copies(X_clean, y_clean, poison):
    """The poisoned training set with every copy of a poison location a row: ``(X, y, is_poison)``.

    ``poison`` is a :class:`~poisoning.attack.PoisonPoints` (``counts`` = integer copies, default 1) or an
    :class:`~poisoning.attack.AttackResult`."""
    X_loc, y_loc, counts = _parts(poison)
    if np.any(counts < 0) or np.any(counts != np.round(counts)):
        raise ValueError(f"argument 'poison.counts' must hold non-negative integers, got {counts.tolist()}")
    counts = counts.astype(int)
    Xp = np.repeat(X_loc, counts, axis=0)
    yp = np.repeat(y_loc, counts)
    X = np.concatenate([np.asarray(X_clean), Xp])
    y = np.concatenate([np.asarray(y_clean), yp]).astype(int)
    return X, y, np.r_[np.zeros(len(y_clean), bool), np.ones(len(yp), bool)]


def make_defense(name: str, victim, *, k: int = 5, warm_start=None, loss_score=None, rank: int = 10,
                 sever_rounds: int = 4, roni_trials: int = 5, roni_base: int = 20, roni_val: int = 50,
                 label_k: int = 10, label_eta: float = 0.5, seed: int = 0):
    """The sanitizer ``name`` (one of :data:`DEFENSES`) for ``victim``'s classes. The loss defense trains
    ``victim`` (from ``warm_start``) on the data it is fit on and scores each point by
    ``loss_score(victim, params, X, y) -> (n,)`` (default: the victim's per-example loss; Koh et al. use
    the hinge, :func:`hinge_score`). SEVER and RONI use ``victim`` as their model (``sever_rounds`` rounds;
    ``roni_trials`` draws of ``roni_base`` base and ``roni_val`` validation points, ``seed``); SVD keeps the
    top ``rank`` directions (at most ``d - 1``, applied when
    fit); label sanitization votes among ``label_k`` neighbours with threshold ``label_eta``."""
    K = victim.n_classes
    if name == "sphere":
        return SphereDefense(num_classes=K)
    if name == "slab":
        return SlabDefense(num_classes=K)
    if name == "knn":
        return KNNDefense(k=k, num_classes=K)
    if name == "sever":
        return SeverDefense(victim, rounds=int(sever_rounds))
    if name == "roni":
        return RONIDefense(victim, n_base=int(roni_base), n_val=int(roni_val), trials=int(roni_trials), seed=int(seed))
    if name == "label_sanitization":
        return KNNLabelSanitizer(k=int(label_k), eta=float(label_eta), num_classes=K)
    if name == "svd":
        return SVDDefense(rank=int(rank), num_classes=K)
    if name == "loss":
        score = (lambda v, p, X, y: v.loss_fn(p, X, v.encode(y, X.dtype))) if loss_score is None else loss_score

        def loss_fn(params, x, y):
            return score(victim, params, x[None], y[None])[0]

        return LossDefense(loss_fn=loss_fn, train_fn=lambda X, y: fit_victim(victim, X, y, warm_start=warm_start),
                           num_classes=K)
    raise ValueError(f"unknown defense {name!r}; choose from {DEFENSES}")


def sanitize_and_train(victim, X, y, defense: str, fraction: float, *, k: int = 5, warm_start=None,
                       loss_score=None, **defense_kw):
    """Fit ``defense`` on ``(X, y)``, drop the top ``fraction`` of each class (SEVER: of all points),
    retrain ``victim`` on the rest (removed rows get weight 0; started at ``warm_start``). Label sanitization
    relabels instead (``fraction`` unused) and retrains on the relabelled set. Returns ``(params, keep_mask)``
    (label sanitization: ``keep`` = not relabelled). ``defense_kw``: :func:`make_defense`'s settings."""
    X, y = np.asarray(X), np.asarray(y)
    if defense == "svd":             # a rank-d subspace leaves no residual
        defense_kw = {**defense_kw, "rank": min(int(defense_kw.get("rank", 10)), X.shape[1] - 1)}
    if defense == "roni":            # small pools: at most a third in the base, the validation set from the rest
        n_base = min(int(defense_kw.get("roni_base", 20)), max(2, len(y) // 3))
        defense_kw = {**defense_kw, "roni_base": n_base,
                      "roni_val": min(int(defense_kw.get("roni_val", 50)), len(y) - n_base)}
    sanitizer = make_defense(defense, victim, k=k, warm_start=warm_start, loss_score=loss_score, **defense_kw)
    if defense == "label_sanitization":
        res = knn_relabel(X, y, sanitizer.k, sanitizer.eta, num_classes=victim.n_classes)
        labels = np.asarray(res.labels)
        return fit_victim(victim, X, labels, warm_start=warm_start), ~np.asarray(res.changed)
    keep, _ = sanitizer.sanitize(X, y, fraction)
    keep = np.asarray(keep)
    return fit_victim(victim, X, y, keep.astype(float), warm_start=warm_start), keep


def evaluate_defenses(victim, X_clean, y_clean, X_test, y_test, attacks: dict, *, defenses=KOH_DEFENSES,
                      fraction: float = 0.05, k: int = 5, loss_score=None, **defense_kw) -> list[dict]:
    """One row per defense: ``clean_error`` (the victim trained on clean data) and, for every
    ``name -> poison`` of ``attacks`` (:class:`~poisoning.attack.PoisonPoints` or attack results),
    ``NAME_no_defense`` and ``NAME_with_defense`` (test 0-1 error without / after the defense) and
    ``NAME_poison_kept`` (the fraction of poison copies the sanitizer keeps). ``k``: the k-NN defense's
    neighbours; ``loss_score``: the loss defense's score; ``defense_kw``: the settings of the newer
    defenses (:func:`make_defense`). ``defenses``: any of :data:`DEFENSES` (default Koh et al.'s four)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"argument 'fraction' must be in [0, 1), got {fraction!r}")
    for name in defenses:
        if name not in DEFENSES:
            raise ValueError(f"argument 'defenses': unknown defense {name!r}; choose from {DEFENSES}")
    X_clean, y_clean = np.asarray(X_clean, float), np.asarray(y_clean).astype(int)
    sets = {name: expand_copies(X_clean, y_clean, a) for name, a in attacks.items()}
    clean = fit_victim(victim, X_clean, y_clean)
    clean_err = _error(victim, clean, X_test, y_test)
    nodef = {name: _error(victim, fit_victim(victim, Xs, ys, warm_start=clean), X_test, y_test)
             for name, (Xs, ys, _) in sets.items()}
    rows = []
    for defense in defenses:
        row = {"defense": defense, "clean_error": clean_err}
        for name, (Xs, ys, is_poison) in sets.items():
            params, keep = sanitize_and_train(victim, Xs, ys, defense, fraction, k=k, warm_start=clean,
                                              loss_score=loss_score, **defense_kw)
            row[f"{name}_no_defense"] = nodef[name]
            row[f"{name}_with_defense"] = _error(victim, params, X_test, y_test)
            row[f"{name}_poison_kept"] = float(keep[is_poison].mean()) if is_poison.any() else 1.0
        rows.append(row)
    return rows
