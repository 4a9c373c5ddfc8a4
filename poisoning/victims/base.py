r"""The victim record: data in, differentiable trained parameters out.

A victim is what a poisoning attack attacks: a learning algorithm seen as a function

.. math::  (X, y, s) \;\mapsto\; \theta^\star(X, y, s) = \arg\min_\theta\; \frac{1}{\sum_i s_i}\sum_i s_i\,
           \ell(\theta; x_i, y_i) + \Omega(\theta)

(for the learners that minimize a loss; a network trained for :math:`T` steps is the map of those
steps) whose result is *differentiable* in the features :math:`X`, in real-valued targets and in the
example weights :math:`s` (:math:`s_i = 0` means example :math:`i` is absent: this is how an attack
keeps array shapes fixed while points come and go). How the derivative is obtained is the victim's
business: the KKT conditions of an SVM's dual (:mod:`bilevel.kkt`), the implicit function theorem on a
smooth training loss (:class:`bilevel.Implicit`), or differentiation through the training steps
(:mod:`bilevel.unroll`).

One record, :class:`Victim`, for all of them:

- ``fit(X, y, weights=None, warm_start=None) -> params``; ``warm_start`` is a previous ``params`` of a
  nearby problem (the SVM reuses its active set, smooth learners their minimizer; victims trained for
  a fixed number of steps always start from their fixed initialization);
- ``decision(params, X)``: real scores, ``(n,)`` for binary victims (positive = class 1) and
  ``(n, K)`` logits for multiclass ones; ``predict(params, X)``: class labels (or real predictions);
- ``loss(params, X, y) -> (n,)``: the per-example surrogate loss the victim trains on (hinge,
  logistic, cross-entropy, squared error), which objectives use;
- ``init(n, d, dtype)``: parameters that, given as ``warm_start``, mean "start cold" (one compiled loop
  serves the first solve and the warm ones);
- ``prepare(X_fixed, y_fixed)`` / ``fit_appended(cache, X_fixed, y_fixed, X_new, y_new, weights,
  warm_start)``: training on a fixed block plus appended rows with the fixed block's work done once
  (the SVM caches the Gram block of the clean training set; others simply concatenate).

**One label convention.** Classification labels are integers ``0 .. K-1`` at every public entry point
(binary victims map them to :math:`\pm1` inside); regression targets are real. Labels are validated:
eagerly on concrete arrays and, under ``jit``, through the checked path of :mod:`bilevel._checks`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np

from bilevel._checks import error_if

__all__ = ["Victim", "TASKS", "normalized_weights", "check_features", "check_labels", "check_weights"]

TASKS = ("binary", "multiclass", "regression")


# ----------------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------------
def _concrete(x):
    if isinstance(x, jax.core.Tracer):
        return None
    try:
        return np.asarray(x)
    except Exception:
        return None


def check_features(X, name: str = "X", d=None):
    """``X`` as an array of shape ``(n, d)`` (or ``(n, ...)``, e.g. images); NaN/inf rejected (eagerly)
    naming ``name``; ``d`` (an int or a shape tuple) checks the feature shape."""
    if not hasattr(X, "shape"):
        X = np.asarray(X)
    if X.ndim < 2:
        raise ValueError(f"argument {name!r} must be an array of shape (n, d) or (n, ...), got shape {tuple(X.shape)}")
    feat = tuple(X.shape[1:])
    if d is not None and feat != (tuple(d) if isinstance(d, tuple) else (int(d),)):
        raise ValueError(f"argument {name!r} has feature shape {feat}, expected {d}")
    if not jnp.issubdtype(X.dtype, jnp.number) or jnp.issubdtype(X.dtype, jnp.complexfloating):
        raise ValueError(f"argument {name!r} must hold real numbers, got dtype {X.dtype}")
    a = _concrete(X)
    if a is not None and a.size and not np.all(np.isfinite(a)):
        raise ValueError(f"argument {name!r} contains NaN or inf")
    return X


def check_labels(y, task: str, n_classes: int | None, name: str = "y", n: int | None = None):
    """Validate labels for a victim's ``task``: integers in ``0..K-1`` (classification; integral floats
    accepted) or finite reals (regression). Raises ``ValueError`` naming ``name``; under ``jit`` the
    range check is staged (a checked path). Returns ``y`` as an array (int32 for classification)."""
    if not hasattr(y, "shape"):
        y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"argument {name!r} must be a 1-D array of labels, got shape {tuple(y.shape)}")
    if n is not None and y.shape[0] != n:
        raise ValueError(f"argument {name!r} has {y.shape[0]} labels but there are {n} examples")
    a = _concrete(y)
    if task == "regression":
        if not (jnp.issubdtype(y.dtype, jnp.floating) or jnp.issubdtype(y.dtype, jnp.integer)):
            raise ValueError(f"argument {name!r} must hold real targets, got dtype {y.dtype}")
        if a is not None and a.size and not np.all(np.isfinite(a)):
            raise ValueError(f"argument {name!r} contains NaN or inf")
        return y
    K = int(n_classes)
    valid = f"integer class labels in {{0, ..., {K - 1}}}"
    if jnp.issubdtype(y.dtype, jnp.bool_):
        y = y.astype(jnp.int32) if a is None else a.astype(np.int32)
        a = _concrete(y)
    if not (jnp.issubdtype(y.dtype, jnp.integer) or jnp.issubdtype(y.dtype, jnp.floating)):
        raise ValueError(f"argument {name!r} must hold {valid}, got dtype {y.dtype}")
    if a is not None:
        if a.size == 0:
            return jnp.asarray(a, jnp.int32)
        bad = ~np.isfinite(a) if a.dtype.kind == "f" else np.zeros(a.shape, bool)
        ints = np.where(bad, -1, a).astype(np.float64)
        if np.any(bad) or np.any(ints != np.round(ints)) or ints.min() < 0 or ints.max() > K - 1:
            shown = np.unique(a)[:8]
            hint = " (binary labels are 0/1 here, not -1/+1)" if K == 2 and np.any(a == -1) else ""
            raise ValueError(f"argument {name!r} must hold {valid}, got values {shown.tolist()}{hint}")
        return jnp.asarray(ints.astype(np.int32))
    yi = jnp.round(y).astype(jnp.int32) if jnp.issubdtype(y.dtype, jnp.floating) else y.astype(jnp.int32)
    bad = jnp.any((yi < 0) | (yi > K - 1) | (yi != y))
    message = f"argument {name!r} must hold {valid} (checked under jit)".replace("{", "{{").replace("}", "}}")
    return error_if(yi, bad, message, error=ValueError)


def check_weights(weights, n: int, name: str = "weights"):
    """Example weights: ``None`` or a finite, non-negative ``(n,)`` array (eager check)."""
    if weights is None:
        return None
    if not hasattr(weights, "shape"):
        weights = np.asarray(weights, float)
    if tuple(weights.shape) != (n,):
        raise ValueError(f"argument {name!r} must have shape ({n},), got {tuple(weights.shape)}")
    a = _concrete(weights)
    if a is not None and a.size and (not np.all(np.isfinite(a)) or np.any(a < 0)):
        raise ValueError(f"argument {name!r} must be finite and non-negative")
    if a is not None and a.size and not np.any(a > 0):
        raise ValueError(f"argument {name!r} must have at least one positive entry")
    return weights


def normalized_weights(weights, n: int, dtype):
    """Weights rescaled to sum to ``n`` (a weighted mean is then the mean over the present examples)."""
    if weights is None:
        return jnp.ones((n,), dtype)
    w = jnp.asarray(weights, dtype)
    return w * (n / jnp.sum(w))


# ----------------------------------------------------------------------------------------------------
# the record
# ----------------------------------------------------------------------------------------------------
def _default_fit_appended(victim):
    def fit_appended(cache, X_fixed, y_fixed, X_new, y_new, weights, warm_start):
        del cache
        X = jnp.concatenate([X_fixed, X_new.astype(X_fixed.dtype)], axis=0)
        y = jnp.concatenate([y_fixed, y_new.astype(y_fixed.dtype)])
        return victim.fit_fn(X, y, weights, warm_start)

    return fit_appended


@dataclasses.dataclass(frozen=True, eq=False)
class Victim:
    """A victim learner (see the module docstring). Compared and hashed by identity: the constructors
    in :mod:`poisoning.victims` are memoized, so equal settings give the same object and compiled
    attack loops are reused.

    Attributes:
      name: a label for reports, e.g. ``"svm(C=1)"``.
      task: ``"binary"``, ``"multiclass"`` or ``"regression"``.
      n_classes: ``K`` (2 for binary victims; ``None`` for regression).
      fit_fn: ``(X, y_internal, weights, warm_start) -> params`` (labels already encoded: :math:`\\pm1`
        for binary, int for multiclass, real for regression).
      decision_fn: ``(params, X) -> scores``.
      loss_fn: ``(params, X, y_internal) -> (n,)`` per-example surrogate loss.
      init_fn: ``(n, d, dtype) -> params`` meaning "start cold" as a warm start.
      train_loss: the smooth training objective ``(params, X, y_internal, weights) -> scalar`` that
        ``fit`` minimizes, when there is one (``None`` for the SVM dual and unrolled victims).
      residual_fn: ``params -> scalar`` optimality residual of a fit (a diagnostic), or ``None``.
      prepare_fn, fit_appended_fn: the fixed-block fast path (see the module docstring); default:
        no cache, concatenation.
      method: how derivatives are obtained (for reports): ``"kkt"``, ``"implicit"``, ``"unrolled"``,
        ``"backgradient"``.
      warm_starts: whether ``fit`` uses ``warm_start`` (False for victims trained a fixed number of
        steps from a fixed initialization).
      checked: labels are validated at run time under ``jit`` too (the default). The attack driver,
        which validates every array once at its boundary, hands objectives :attr:`trusted`: the same
        victim without the per-step run-time check (a host callback per call).
    """

    name: str
    task: Literal["binary", "multiclass", "regression"]
    n_classes: int | None
    fit_fn: Callable
    decision_fn: Callable
    loss_fn: Callable
    init_fn: Callable
    train_loss: Callable | None = None
    residual_fn: Callable | None = None
    prepare_fn: Callable | None = None
    fit_appended_fn: Callable | None = None
    method: str = "implicit"
    warm_starts: bool = True
    checked: bool = True

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"argument 'task' must be one of {TASKS}, got {self.task!r}")
        if self.task == "regression":
            if self.n_classes is not None:
                raise ValueError("a regression victim has n_classes=None")
        elif not (isinstance(self.n_classes, int) and self.n_classes >= 2):
            raise ValueError(f"argument 'n_classes' must be an int >= 2, got {self.n_classes!r}")
        if self.task == "binary" and self.n_classes != 2:
            raise ValueError("a binary victim has n_classes=2")
        if self.fit_appended_fn is None:
            object.__setattr__(self, "fit_appended_fn", _default_fit_appended(self))

    # -- labels ------------------------------------------------------------------------------------
    def encode(self, y, dtype=None):
        """Public labels -> the encoding the learner trains on (no validation; see :meth:`check_labels`)."""
        y = jnp.asarray(y)
        if self.task == "binary":
            return (2 * y - 1).astype(dtype or jnp.result_type(float))
        if self.task == "multiclass":
            return y.astype(jnp.int32)
        return y.astype(dtype or jnp.result_type(y, float))

    def check_labels(self, y, name: str = "y", n: int | None = None):
        """Validated public labels (see :func:`check_labels`); a :attr:`trusted` victim checks concrete
        labels only."""
        if not self.checked and _concrete(y) is None:
            return y
        return check_labels(y, self.task, self.n_classes, name, n)

    @property
    def trusted(self) -> "Victim":
        """This victim without run-time label checks on traced values (for callers that validated their
        data eagerly, like :func:`poisoning.attack.run`); one object per victim."""
        if not self.checked:
            return self
        twin = self.__dict__.get("_trusted")
        if twin is None:
            twin = dataclasses.replace(self, checked=False)
            object.__setattr__(self, "_trusted", twin)
        return twin

    # -- the learner -------------------------------------------------------------------------------
    def fit(self, X, y, weights=None, warm_start=None):
        """Train on ``(X, y)``, examples weighted by ``weights`` (``None``: all 1; 0: absent); the result
        is differentiable in ``X``, ``weights`` and real targets. Called eagerly it runs one compiled
        function per argument shapes (compiled once per victim); under a caller's trace it is inlined."""
        X = check_features(X)
        dtype = jnp.result_type(X, float)
        y = self.check_labels(y, n=X.shape[0])
        weights = check_weights(weights, X.shape[0])
        args = (jnp.asarray(X, dtype), self.encode(y, dtype), weights, warm_start)
        traced = any(_concrete(a) is None for a in jax.tree_util.tree_leaves(args))
        return (self.fit_fn if traced else self._fit_compiled)(*args)

    @property
    def _fit_compiled(self):
        fn = self.__dict__.get("_fit_jit")
        if fn is None:
            fn = jax.jit(self.fit_fn)
            object.__setattr__(self, "_fit_jit", fn)
        return fn

    def decision(self, params, X):
        """Scores: ``(n,)`` (binary: positive means class 1; regression: the prediction) or ``(n, K)`` logits."""
        return self.decision_fn(params, jnp.asarray(X))

    def predict(self, params, X):
        """Class labels ``0..K-1`` (binary: 1 where the score is >= 0), or real predictions."""
        s = self.decision(params, X)
        if self.task == "binary":
            return (s >= 0).astype(jnp.int32)
        if self.task == "multiclass":
            return jnp.argmax(s, axis=-1).astype(jnp.int32)
        return s

    def loss(self, params, X, y):
        """Per-example surrogate loss ``(n,)`` at public labels ``y``."""
        X = jnp.asarray(X)
        y = self.check_labels(y, n=X.shape[0])
        return self.loss_fn(params, X, self.encode(y, jnp.result_type(X, float)))

    def error(self, params, X, y):
        """0-1 error (classification) or mean squared error (regression)."""
        dtype = jnp.result_type(float)
        if self.task == "regression":
            return jnp.mean(jnp.square(self.predict(params, X) - jnp.asarray(y)).astype(dtype))
        return jnp.mean((self.predict(params, X) != jnp.asarray(y)).astype(dtype))

    def init(self, n: int, d, dtype=None):
        """Parameters meaning "start cold" when passed as ``warm_start`` (fixed shapes for loops); ``d`` is
        the number of features (or the feature shape of image inputs)."""
        d = tuple(int(v) for v in d) if isinstance(d, tuple) else int(d)
        return self.init_fn(int(n), d, dtype or jnp.result_type(float))

    def residual(self, params):
        """Optimality residual of a fit (NaN when the victim reports none)."""
        if self.residual_fn is None:
            return jnp.asarray(jnp.nan)
        return jnp.asarray(self.residual_fn(params))

    # -- the fixed-block fast path -----------------------------------------------------------------
    def prepare(self, X_fixed, y_fixed):
        """Work on the fixed training block done once per attack (``None`` if the victim has none)."""
        if self.prepare_fn is None:
            return None
        return self.prepare_fn(jnp.asarray(X_fixed), self.encode(y_fixed, jnp.result_type(X_fixed, float)))

    def fit_appended(self, cache, X_fixed, y_fixed, X_new, y_new, weights=None, warm_start=None):
        """``fit`` on the rows of ``X_fixed`` followed by those of ``X_new`` (public labels), reusing
        ``cache = prepare(X_fixed, y_fixed)``; ``weights`` covers all rows."""
        dtype = jnp.result_type(X_fixed, float)
        return self.fit_appended_fn(cache, jnp.asarray(X_fixed, dtype), self.encode(y_fixed, dtype),
                                    jnp.asarray(X_new, dtype), self.encode(y_new, dtype), weights, warm_start)

    def __repr__(self):
        return f"Victim({self.name})"
