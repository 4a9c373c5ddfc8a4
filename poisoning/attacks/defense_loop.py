r"""The defense in the attacker's loop: simulate a sanitizer on clean + poison, ascend against the victim
trained on its survivors, and choose among candidate poisons by the simulated defended validation error.

Threat model (Steinhardt, Koh & Liang 2017; Koh, Steinhardt & Liang 2022): the attacker knows the clean
training set and the defense. It can therefore run the defense itself. Write :math:`D` for the clean set,
:math:`P` for a poison (locations :math:`x_j`, labels :math:`y_j`, copies :math:`c_j`), :math:`F` for the
sanitizer (fit on :math:`D \cup P`, it removes the top ``fraction`` of each class by its score, or relabels
for label sanitization) and :math:`\theta(S)` for the victim trained on :math:`S`. The defended validation
error of a poison is

.. math:: E_F(P) = \mathrm{err}\big(\theta(F(D \cup P));\, D_{val}\big)

on the attacker's *validation* set :math:`D_{val}` (never the test set). Three tools:

- :class:`DefenseSimulation`: :math:`F` as the attacker runs it (:func:`poisoning.defenses.evaluate.sanitize_and_train`
  with the evaluation's settings), ``run(poison) -> (params, keep, is_poison)`` and
  ``validation(poison, X_val, y_val) -> (error, hinge)`` (``mistakes``: per draw and point). RONI (Nelson et al. 2008) costs ``2 n T`` fits per
  call, so its simulation (``roni="external"``, the default) scores the clean pool once against its own draws
  and each poison location as an external candidate against the same draws (Nelson et al.'s original use:
  a candidate judged against a pool it is not part of), then removes the top ``fraction`` per class of the
  merged scores; its draws come from ``seed`` (the matrix gives the attacker a seed other than the
  defender's: it knows the defense, not its random draws). ``roni="exact"`` runs the defense itself.
- :func:`defense_in_the_loop`: projected ascent of the attack's objective against the victim trained on the
  *survivors*: the keep mask is piecewise constant in the poison, so it is held fixed within a round
  (:class:`SurvivorPoison` weights the clean rows by it and each location by its surviving copies: one
  compiled driver for every mask) and recomputed between rounds; the round whose poison has the highest
  simulated :math:`E_F` is returned (the start included, so it never does worse on the attacker's estimate).
- :func:`select_poison`: the candidate of highest :math:`E_F` (ties: higher simulated validation hinge, then
  the earlier candidate). With the naive poison among the candidates the chosen one is at least as strong as
  the naive one *on the attacker's estimate*; on the test set it may still lose. Against a random defense
  (RONI) that estimate is itself random, and :func:`confirm_choice` re-scores the choice on independent draws
  before it replaces the naive poison (the winner's curse), and keeps it only if its lead there is beyond noise.

:func:`concentrate` merges a poison's copies onto fewer locations so that every location holds at least
:func:`copies_to_survive` copies: a location with ``k + 1`` copies has k-NN score 0 (its ``k`` nearest
same-class points are its own copies), and one with ``label_k // 2 + 2`` copies has a label-consistent
neighbourhood, so k-NN label sanitization (Paudice et al. 2018; ``eta = 1/2``, ties to the smaller class)
leaves its label; against RONI every copy goes to one location, whose copies in RONI's validation draws then
vouch for each other.

References: J. Steinhardt, P. W. Koh, P. Liang, NeurIPS 2017; P. W. Koh, J. Steinhardt, P. Liang, Machine
Learning 111, 2022; B. Nelson et al., LEET 2008; A. Paudice, L. Muñoz-González, E. C. Lupu, 2018.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bilevel import ConvergenceError
from poisoning.attack import PoisoningAttack, PoisonPoints, run
from poisoning.defenses.evaluate import (DEFENSES, RANDOM_DEFENSES, expand_copies, fit_victim, hinge_score,
                                        sanitize_and_train)
from poisoning.defenses.roni import RONIDefense
from poisoning.defenses.sanitizers import remove_fraction_per_class

__all__ = ["SurvivorPoison", "DefenseSimulation", "LoopResult", "Confirmation", "copies_to_survive", "concentrate",
           "select_poison", "confirm_choice", "defense_in_the_loop"]


# ------------------------------------------------------------------------------------------------
# the poison of the survivors' victim
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SurvivorPoison(PoisonPoints):
    r""":class:`~poisoning.attack.PoisonPoints` whose victim trains on the survivors of a defense: clean row
    ``i`` weighted by ``clean_weights[i]`` (1 kept, 0 removed) and location ``j`` by ``counts[j]`` (its
    surviving copies). The mask is data, not structure: one compiled driver serves every mask."""

    clean_weights: Any = None

    def training_weights(self, clean, active, dtype):
        w = super().training_weights(clean, active, dtype)
        n = clean.X.shape[0]
        if self.clean_weights is None:
            return w
        return jnp.concatenate([w[:n] * jnp.asarray(self.clean_weights, dtype), w[n:]])

    def validate(self, victim, X_train, name="poison"):
        out = super().validate(victim, X_train, name)
        cw = None if self.clean_weights is None else np.asarray(self.clean_weights, float)
        if cw is not None and (cw.shape != (np.shape(X_train)[0],) or np.any(cw < 0) or not np.all(np.isfinite(cw))):
            raise ValueError(f"argument '{name}.clean_weights' must be {np.shape(X_train)[0]} finite non-negative "
                             f"numbers")
        return dataclasses.replace(out, clean_weights=cw)


jax.tree_util.register_dataclass(SurvivorPoison, data_fields=["X", "y", "counts", "clean_weights"],
                                 meta_fields=["optimize_labels"])


def _points(poison) -> PoisonPoints:
    """A plain :class:`~poisoning.attack.PoisonPoints` ``(X, y, integer counts)`` of ``poison``."""
    poison = getattr(poison, "poison", poison)
    X, y = np.asarray(poison.X, float), np.asarray(poison.y).astype(int)
    counts = np.ones(len(y), int) if poison.counts is None else np.rint(np.asarray(poison.counts)).astype(int)
    return PoisonPoints(X, y, counts=counts)


# ------------------------------------------------------------------------------------------------
# the attacker's copy of the defense
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class DefenseSimulation:
    """The sanitizer ``defense`` (one of :data:`poisoning.defenses.evaluate.DEFENSES`) as the attacker runs
    it on ``(X_clean, y_clean)`` + a poison, with the evaluation's settings (``fraction`` removed per class,
    ``k``, ``rank``, ``label_k``, ``roni_trials``, ``sever_rounds``, ``seed``; the loss defense by
    ``loss_score``, default :func:`~poisoning.defenses.evaluate.hinge_score`). Build with :meth:`prepare`
    (it fits the clean victim and, for RONI's ``"external"`` simulation, scores the clean pool once)."""

    defense: str
    victim: Any
    X_clean: np.ndarray
    y_clean: np.ndarray
    fraction: float
    clean_params: Any
    settings: dict
    roni: str = "external"
    roni_clean_scores: Any = None      # external RONI: per draw, the clean pool's scores
    roni_state: Any = None             # external RONI: per draw, the RONIState
    draws: int = 1

    @classmethod
    def prepare(cls, defense: str, victim, X_clean, y_clean, *, fraction: float, k: int = 5, rank: int = 10,
                label_k: int = 10, roni_trials: int = 2, sever_rounds: int = 4, seed: int = 0,
                loss_score=hinge_score, roni: Literal["external", "exact"] = "external",
                clean_params=None, draws: int = 1) -> "DefenseSimulation":
        """``draws``: for RONI, the random defense, the simulation is run with ``draws`` independent draws
        (seeds ``seed``, ``seed + 1``, ...) and :meth:`validation` averages over them: the attacker knows the
        defense, not the defender's draws, so it estimates the *expected* defended error (a single draw makes
        the choice among candidates a winner's curse). Ignored by the deterministic defenses."""
        if defense not in DEFENSES:
            raise ValueError(f"argument 'defense': unknown defense {defense!r}; choose from {DEFENSES}")
        if not 0.0 <= float(fraction) < 1.0:
            raise ValueError(f"argument 'fraction' must be in [0, 1), got {fraction!r}")
        if roni not in ("external", "exact"):
            raise ValueError(f"argument 'roni' must be 'external' or 'exact', got {roni!r}")
        draws = _check_draws(draws)
        draws = draws if defense in RANDOM_DEFENSES else 1
        X_clean, y_clean = np.asarray(X_clean, float), np.asarray(y_clean).astype(int)
        clean_params = fit_victim(victim, X_clean, y_clean) if clean_params is None else clean_params
        settings = dict(k=int(k), rank=int(rank), label_k=int(label_k), roni_trials=int(roni_trials),
                        sever_rounds=int(sever_rounds), seed=int(seed), loss_score=loss_score)
        states = scores = None
        if defense == "roni" and roni == "external":
            states, scores = _external_roni(victim, X_clean, y_clean, int(roni_trials), int(seed), draws)
        return cls(defense, victim, X_clean, y_clean, float(fraction), clean_params, settings, roni, scores, states,
                   draws)

    @property
    def random(self) -> bool:
        """Whether the defense draws at random (RONI): then the simulation's score of a poison is itself random."""
        return self.defense in RANDOM_DEFENSES

    def fresh_draws(self, draws: int | None = None) -> "DefenseSimulation":
        """The same simulation with ``draws`` (default: as many as this one's) new seeds from ``seed + self.draws``
        on, independent of this one's: the held-out check of a choice made on this one's draws
        (:func:`confirm_choice`). A deterministic defense returns itself."""
        draws = self.draws if draws is None else _check_draws(draws)
        if not self.random:
            return self
        settings = dict(self.settings, seed=self.settings["seed"] + self.draws)
        states = scores = None
        if self.roni == "external":
            states, scores = _external_roni(self.victim, self.X_clean, self.y_clean, settings["roni_trials"],
                                            settings["seed"], draws)
        return dataclasses.replace(self, settings=settings, roni_clean_scores=scores, roni_state=states, draws=draws)

    def _roni_keep(self, poison: PoisonPoints, draw: int):
        s = self.settings
        d = _roni(self.victim, len(self.y_clean), s["roni_trials"], s["seed"] + draw)
        X_loc, y_loc = np.asarray(poison.X), np.asarray(poison.y)
        m = len(y_loc)
        pad = -(-max(m, 1) // 8) * 8                      # fixed batch sizes: one compilation per multiple of 8
        idx = np.r_[np.arange(m), np.zeros(pad - m, int)]
        loc_scores = np.asarray(d.score(self.roni_state[draw], X_loc[idx], y_loc[idx]))[:m]
        counts = np.asarray(poison.counts).astype(int)
        Xs, ys, is_p = expand_copies(self.X_clean, self.y_clean, poison)
        scores = np.concatenate([self.roni_clean_scores[draw], np.repeat(loc_scores, counts)])
        keep = np.asarray(remove_fraction_per_class(jnp.asarray(scores), ys, self.fraction, self.victim.n_classes))
        params = fit_victim(self.victim, Xs, ys, keep.astype(float), warm_start=self.clean_params)
        return params, keep, is_p

    def run(self, poison, draw: int = 0):
        """``(params, keep, is_poison)``: the victim retrained after the defense on clean + ``poison`` (every
        copy a row), the defense's keep mask (label sanitization: not relabelled) and the poison rows; RONI
        with the draws of ``seed + draw``."""
        poison = _points(poison)
        if self.defense == "roni" and self.roni == "external":
            return self._roni_keep(poison, draw)
        Xs, ys, is_p = expand_copies(self.X_clean, self.y_clean, poison)
        s = self.settings
        params, keep = sanitize_and_train(self.victim, Xs, ys, self.defense, self.fraction, k=s["k"],
                                          warm_start=self.clean_params, loss_score=s["loss_score"], rank=s["rank"],
                                          label_k=s["label_k"], roni_trials=s["roni_trials"],
                                          sever_rounds=s["sever_rounds"], seed=s["seed"] + draw)
        return params, np.asarray(keep), is_p

    def mistakes(self, poison, X_val, y_val) -> tuple[np.ndarray, np.ndarray]:
        """``(errors, hinges)``, each ``(draws, n_val)``: per draw of the simulation and validation point, the
        defended victim's 0-1 mistake and hinge loss."""
        y_val = np.asarray(y_val).astype(int)
        errors, hinges = [], []
        for i in range(self.draws):
            params, _, _ = self.run(poison, draw=i)
            errors.append(np.asarray(self.victim.predict(params, X_val)) != y_val)
            hinges.append(np.asarray(hinge_score(self.victim, params, X_val, y_val), float))
        return np.asarray(errors, float), np.asarray(hinges, float)

    def validation(self, poison, X_val, y_val) -> tuple[float, float]:
        """``(error, hinge)``: the defended victim's 0-1 error and mean hinge on ``(X_val, y_val)``, averaged
        over the simulation's ``draws`` (:meth:`mistakes`)."""
        errors, hinges = self.mistakes(poison, X_val, y_val)
        return float(errors.mean()), float(hinges.mean())


def _check_draws(draws) -> int:
    if isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or draws < 1:
        raise ValueError(f"argument 'draws' must be an int >= 1, got {draws!r}")
    return int(draws)


def _external_roni(victim, X_clean, y_clean, trials: int, seed: int, draws: int):
    """External RONI's per-draw states and clean-pool scores, draws ``seed, ..., seed + draws - 1``."""
    states, scores = [], []
    for i in range(draws):
        d = _roni(victim, len(y_clean), trials, seed + i)
        states.append(d.fit(X_clean, y_clean))
        scores.append(np.asarray(d.score_train(states[-1], X_clean, y_clean)))
    return states, scores


def _roni(victim, n: int, trials: int, seed: int) -> RONIDefense:
    """RONI with the evaluation's draw sizes for a pool of ``n`` (:func:`poisoning.defenses.evaluate.sanitize_and_train`)."""
    n_base = min(20, max(2, n // 3))
    return RONIDefense(victim, n_base=n_base, n_val=min(50, n - n_base), trials=int(trials), seed=int(seed))


# ------------------------------------------------------------------------------------------------
# copies
# ------------------------------------------------------------------------------------------------
def copies_to_survive(defense: str, *, k: int = 5, label_k: int = 10, total: int = 1) -> int:
    """Copies per location that make a defense blind, or blinder, to it: ``k + 1`` for the k-NN defense (its
    score is 0), ``label_k // 2 + 2`` for k-NN label sanitization (a strict own-label majority among the
    ``label_k`` neighbours), ``total`` (every copy on one location) for RONI, 1 for every other defense.

    RONI draws its validation sets from the same pool as its candidates, so a location's other copies sit in
    them; the candidate copy's fit classifies those as their (poison) label, which lowers its measured impact,
    the more so the more copies share the location (measured with ``experiments.defense_matrix``'s RONI, 2
    trials, on MNIST-1-7 7x7, n = 400, eps 0.1, 40 copies, 10 draws: one location keeps 88-98 % of them, four
    locations 57-84 %, for the Biggio, Muñoz-González and Koh influence poisons; see the README)."""
    if defense == "knn":
        return int(k) + 1
    if defense == "label_sanitization":
        return int(label_k) // 2 + 2
    if defense == "roni":
        return max(1, int(total))
    return 1


def concentrate(poison, copies: int, *, order=None) -> PoisonPoints:
    """``poison``'s copies moved onto ``m = max(1, total // copies)`` of its locations (those first in
    ``order``, default: most copies first), split as evenly as possible, so each keeps >= ``copies`` copies
    when ``total >= copies``. A poison that already has that many copies everywhere is returned as is."""
    p = _points(poison)
    copies = int(copies)
    if copies < 1:
        raise ValueError(f"argument 'copies' must be >= 1, got {copies!r}")
    counts = np.asarray(p.counts)
    live = counts > 0
    total = int(counts.sum())
    if total == 0 or np.all(counts[live] >= copies):
        return p
    m = max(1, total // copies)
    order = np.argsort(-counts, kind="stable") if order is None else np.asarray(order)
    pick = [j for j in order if live[j]][:m]
    new = np.full(len(pick), total // len(pick))
    new[: total - new.sum()] += 1
    return PoisonPoints(p.X[pick], p.y[pick], counts=new)


# ------------------------------------------------------------------------------------------------
# selection and the ascent against the survivors
# ------------------------------------------------------------------------------------------------
def select_poison(simulation: DefenseSimulation, candidates: dict, X_val, y_val):
    """``(name, poison, scores)``: the candidate (``name -> poison``) of the highest simulated defended
    validation error (ties: higher validation hinge, then the earlier name); ``scores[name] = (error, hinge)``.
    Scored on ``(X_val, y_val)`` only."""
    if not candidates:
        raise ValueError("argument 'candidates' is empty")
    scores = {name: simulation.validation(p, X_val, y_val) for name, p in candidates.items()}
    best = max(scores, key=lambda nm: (scores[nm][0], scores[nm][1]))   # max() keeps the first among equals
    return best, _points(candidates[best]), scores


class Confirmation(NamedTuple):
    """Output of :func:`confirm_choice`: the candidate ``name`` kept, ``scores`` (``name -> (error, hinge)`` on
    the fresh draws; empty when nothing was checked), the chosen candidate's ``lead`` over the baseline there
    (mean paired error difference) and its standard error ``se``."""

    name: str
    scores: dict
    lead: float | None = None
    se: float | None = None


def confirm_choice(simulation: DefenseSimulation, candidates: dict, chosen: str, baseline: str, X_val, y_val, *,
                   draws: int | None = None, z: float = 2.0) -> Confirmation:
    r"""The winner's-curse check of a choice made on a random defense's simulated draws (:class:`Confirmation`).

    When the defense draws at random (RONI), the candidate of the highest simulated defended error is chosen on
    a noisy score, so its lead over ``baseline`` is biased upwards: the maximum of several noisy scores
    overestimates the best one (the winner's curse). The choice is therefore scored again, with ``baseline``,
    on :meth:`DefenseSimulation.fresh_draws` (``draws`` of them, default as many as the selection's; independent
    of those it was chosen on; both candidates on the same draws and the same validation set). With
    :math:`d_{ji}` the difference of their 0-1 mistakes on validation point :math:`i` under fresh draw
    :math:`j` (:math:`J` draws, :math:`m` points), the lead :math:`\bar d` has the standard error

    .. math:: \mathrm{se} = \sqrt{\operatorname{var}_j(\bar d_{j\cdot}) / J
              + \operatorname{var}_i(\bar d_{\cdot i}) / m}

    (the draws' noise, and the validation sample's: the choice must carry over to new data, not to these
    ``m`` points only). The choice is kept only if :math:`\bar d > 0` and :math:`\bar d > z\,\mathrm{se}`;
    else ``baseline`` is returned. ``z = 0``: any strictly positive lead. More fresh draws than selection
    draws are cheap: two candidates are scored, not all. A deterministic defense, or ``chosen == baseline``,
    is returned unchecked."""
    if chosen not in candidates or baseline not in candidates:
        raise ValueError(f"arguments 'chosen' ({chosen!r}) and 'baseline' ({baseline!r}) must name candidates")
    if not (np.isfinite(z) and z >= 0):
        raise ValueError(f"argument 'z' must be a finite number >= 0, got {z!r}")
    if chosen == baseline or not simulation.random:
        return Confirmation(chosen, {})
    fresh = simulation.fresh_draws(draws)
    (ec, hc), (eb, hb) = (fresh.mistakes(candidates[nm], X_val, y_val) for nm in (chosen, baseline))
    d = np.asarray(ec, float) - np.asarray(eb, float)
    lead = float(d.mean())
    J, m = d.shape
    var = (np.var(d.mean(axis=1), ddof=1) / J if J > 1 else 0.0) + (np.var(d.mean(axis=0), ddof=1) / m
                                                                     if m > 1 else 0.0)
    se = float(np.sqrt(var))
    scores = {baseline: (float(np.mean(eb)), float(np.mean(hb))), chosen: (float(np.mean(ec)), float(np.mean(hc)))}
    keep = lead > 0.0 and lead > z * se
    return Confirmation(chosen if keep else baseline, scores, lead, se)


class LoopResult(NamedTuple):
    """Output of :func:`defense_in_the_loop`: the chosen ``poison`` (with the start's copies), ``history`` the
    simulated ``(error, hinge)`` of the start and of each round's iterate, ``best`` the chosen index (0: the
    start)."""

    poison: PoisonPoints
    history: list
    best: int


def defense_in_the_loop(attack: PoisoningAttack, simulation: DefenseSimulation, X_clean, y_clean, poison,
                        X_val, y_val, *, rounds: int = 2, steps: int = 5, warm_start=None):
    """Ascend ``attack``'s objective on ``(X_val, y_val)`` against the victim trained on the defense's
    survivors (module docstring): ``rounds`` rounds of ``steps`` driver steps, the keep mask of
    ``simulation`` recomputed before each. Returns ``(poison, history)``: the iterate (start included) of the
    highest simulated defended validation error (ties: higher hinge, earlier), with ``poison``'s copies
    (:class:`LoopResult`). ``warm_start``: the driver's warm start (default the clean fit). An iterate whose
    defended victim does not train (:class:`bilevel.ConvergenceError` in the simulation) ends the loop with a
    warning and is not a candidate; the history holds the rounds before it."""
    if int(rounds) < 1 or int(steps) < 1:
        raise ValueError(f"arguments 'rounds' and 'steps' must be >= 1, got {rounds!r}, {steps!r}")
    p = _points(poison)
    n = len(np.asarray(y_clean))
    warm = simulation.clean_params if warm_start is None else warm_start
    iterates, history = [p], [simulation.validation(p, X_val, y_val)]
    for _ in range(int(rounds)):
        _, keep, is_p = simulation.run(p)
        kept_copies = np.bincount(np.repeat(np.arange(len(p.y)), p.counts), weights=keep[is_p].astype(float),
                                  minlength=len(p.y))
        sp = SurvivorPoison(p.X, p.y, counts=kept_copies, clean_weights=keep[:n].astype(float))
        with warnings.catch_warnings():           # a round that cannot improve on its start is expected here
            warnings.filterwarnings("ignore", message=".*ascent stalled", category=RuntimeWarning)
            res = run(attack, X_clean, y_clean, sp, (X_val, y_val), steps=int(steps), warm_start=warm)
        p = PoisonPoints(np.asarray(res.poison.X, float), p.y, counts=p.counts)
        try:
            score = simulation.validation(p, X_val, y_val)
        except ConvergenceError as err:             # the attacker cannot train on it: not a candidate; stop
            warnings.warn(f"defense_in_the_loop: round {len(iterates)} dropped, its defended victim did not "
                          f"train ({err})", RuntimeWarning, stacklevel=2)
            break
        iterates.append(p)
        history.append(score)
    best = max(range(len(iterates)), key=lambda i: (history[i][0], history[i][1]))
    return LoopResult(iterates[best], history, best)
