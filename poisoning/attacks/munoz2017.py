r"""Muñoz-González et al. (2017): gradient-based poisoning of multiclass and binary learners.

"Towards poisoning of deep learning algorithms with back-gradient optimization", AISec 2017
(arXiv:1708.08689).

The attack maximizes an upper-level objective :math:`A(w^\star(X_p), D_{val})` over poison features
:math:`X_p \in [0, 1]^{m\times d}` with fixed labels, one point at a time (``mode="sequential"``),
by projected ascent along the unit hypergradient with backtracking (accept an improving point, else
halve the step; :class:`bilevel.stackelberg.Backtrack`). Composed from:

- **Victims** (:mod:`poisoning.victims`): :func:`softmax_victim` (multiclass L2 logistic regression, the
  paper's MNIST model), :func:`mlp_victim` (10 tanh hidden units, softmax output),
  :func:`adaline_victim` (binary, squared loss on :math:`\pm1` targets) and :func:`cnn_victim` (a small
  convolutional network, :class:`MunozCNN`, trained by ``T`` steps of heavy-ball SGD and always reversed
  by back-gradient: the paper's §5 deep-network experiment), the first three each with
  ``method="implicit"`` (train to convergence, the implicit function theorem) or
  ``method="backgradient"`` (the victim *is* ``T`` steps of fixed-step gradient descent from a fixed
  start and the hypergradient reverses that trajectory, :class:`bilevel.unroll.BackGradient`: the
  paper's method, T = 60 for LR on MNIST).
- **Preconditioning** of the implicit softmax victim: :class:`GramBasis` (top eigenvectors of the
  clean training data's second moments, computed once) and :func:`kfac_basis` (a low-rank K-FAC change
  of variables built from it and the warm start), which cut the L-BFGS and CG iterations of each
  hypergradient ~3x on MNIST without changing the minimizer or the hypergradient (beyond tolerance).
- **Objectives**: :func:`poisoning.objectives.error_generic` (mean validation cross-entropy) and
  :func:`poisoning.objectives.error_specific` (negated cross-entropy toward the attacker's labels, e.g.
  validation 8s relabelled 3).
- **Initialization**: :func:`init_generic` (clones of training points with random other labels) and
  :func:`init_specific` (clones of training points of classes ``a`` and ``b`` with the labels swapped);
  **baseline** :func:`random_flip_poison` (validation points with random wrong labels).
- :func:`munoz_attack` (the configured :class:`~poisoning.attack.PoisoningAttack`) and :func:`poison`
  (init + :func:`poisoning.attack.run`).

Labels are class indices ``0..K-1`` (Adaline: 0/1).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bilevel import CG, GMRES, Implicit
from bilevel.solvers import LBFGS, GradientDescent, Newton
from bilevel.stackelberg import Backtrack
from bilevel.unroll import BackGradient
from poisoning import victims
from poisoning.attack import PoisoningAttack, PoisonPoints, run
from poisoning.feasible import Box
from poisoning.models._common import Conv, ImageClassifier, max_pool
from poisoning.objectives import error_generic, error_specific
from poisoning.victims import Victim

__all__ = [
    "softmax_victim",
    "mlp_victim",
    "adaline_victim",
    "MunozCNN",
    "cnn_victim",
    "gd_learning_rate",
    "kfac_basis",
    "GramBasis",
    "init_generic",
    "init_specific",
    "random_flip_poison",
    "munoz_attack",
    "poison",
]

Method = Literal["implicit", "backgradient"]


def gd_learning_rate(X, reg: float = 0.0, curvature: float = 0.5) -> float:
    r"""A safe fixed step :math:`1/L` for gradient descent on a linear model over ``X``:
    :math:`L = \text{curvature}\cdot\lambda_{\max}([X, 1]^\top [X, 1]/n) + \text{reg}` (``curvature`` 0.5
    bounds the softmax cross-entropy's curvature, 1 the squared loss's)."""
    X = np.asarray(X, np.float64)
    Z = np.concatenate([X, np.ones((len(X), 1))], axis=1)
    lam = float(np.linalg.eigvalsh(Z.T @ Z / len(Z))[-1])
    return 1.0 / (curvature * lam + reg)



@dataclasses.dataclass(frozen=True, eq=False)
class GramBasis:
    r"""The top ``rank`` eigenpairs :math:`(V_r, g_r)` of the (bias-augmented) second-moment matrix
    :math:`G = \frac1n [X, 1]^\top [X, 1]` of a fixed data set (the clean training set) and the next
    eigenvalue ``g_rest`` (used for all remaining directions): the input factor of :func:`kfac_basis`.
    Computed once (``O(d^3)``, outside any attack loop); the poison rows are left out, which only makes
    the preconditioner slightly less exact. Hashed by identity (learners built with it are memoized
    per basis)."""

    V: np.ndarray
    g: np.ndarray
    g_rest: float

    @classmethod
    def from_data(cls, X, rank: int = 20) -> "GramBasis":
        X = np.asarray(X, np.float64)
        if X.ndim != 2 or len(X) == 0:
            raise ValueError(f"X must be a non-empty (n, d) array, got shape {X.shape}")
        if not 1 <= int(rank) <= X.shape[1]:
            raise ValueError(f"rank must be in [1, d={X.shape[1]}], got {rank}")
        Z = np.concatenate([X, np.ones((len(X), 1))], axis=1)
        g, V = np.linalg.eigh(Z.T @ Z / len(Z))
        g, V = np.maximum(g[::-1], 0.0), V[:, ::-1]
        r = int(rank)
        return cls(V=np.ascontiguousarray(V[:, :r]), g=g[:r], g_rest=float(g[r]))


def kfac_basis(params, X, sw, reg, basis: GramBasis):
    r"""A low-rank Kronecker-factored (K-FAC) approximation of the softmax-regression Hessian, used as a
    change of variables that preconditions both the inner solve and the adjoint (IFT) solve.

    With :math:`Z = [X, 1]` and per-example softmax curvature :math:`S_i = \mathrm{diag}(p_i) - p_i p_i^\top`,
    the Hessian of :func:`softmax_learner`'s loss in the :math:`(d+1)\times k` weights is
    :math:`H = \frac1n\sum_i s_i\, z_i z_i^\top \otimes S_i + \text{reg}\,I` (bias row unpenalized).
    K-FAC (Martens & Grosse, ICML 2015) replaces it by :math:`G \otimes A + \text{reg}\,I` with
    :math:`G = \frac1n Z^\top Z` and :math:`A = \frac1n\sum_i s_i S_i = Q\,\mathrm{diag}(a)\,Q^\top`; we keep
    :math:`G`'s top-:math:`r` eigenpairs :math:`(V_r, g_r)` (``basis``) and give every other direction the
    eigenvalue ``g_rest``. The map :math:`\Theta \mapsto W = \big[\Theta \circ m_c + V_r((M - m_c)\circ
    V_r^\top\Theta)\big] Q^\top`, :math:`M_{ij} = (g_i a_j + \text{reg})^{-1/2}`,
    :math:`m_{c,j} = (g_\text{rest} a_j + \text{reg})^{-1/2}`, is that approximation's inverse square root.
    Minimizing over :math:`\Theta` changes nothing at the optimum (a fixed invertible linear map) but
    the Hessian :math:`T^\top H T` is far better conditioned (MNIST, 1000 points, reg 1e-3: warm L-BFGS
    ~3x fewer iterations, CG ~2-3x), at :math:`O(r\,d\,k)` extra cost per evaluation. The probabilities
    :math:`p_i` are those of ``params`` (the warm start). Everything here is a constant
    (``stop_gradient``): :math:`W^\star = T\Theta^\star` does not depend on the choice of :math:`T`, so the
    implicit derivative through :math:`\Theta^\star` with :math:`T` fixed is exact.

    Returns ``(to_params, from_params)``: :math:`\Theta \mapsto` params and its inverse.
    """
    sg = jax.lax.stop_gradient
    X, sw, W0, b0 = sg(X), sg(sw), sg(params["w"]), sg(params["b"])
    n = X.shape[0]
    if basis.V.shape[0] != X.shape[1] + 1:
        raise ValueError(f"basis is for {basis.V.shape[0] - 1} features, X has {X.shape[1]}")
    V, g = jnp.asarray(basis.V, X.dtype), jnp.asarray(basis.g, X.dtype)
    P = jax.nn.softmax(X @ W0 + b0, axis=-1)
    A = jnp.diag(sw @ P / n) - (P * sw[:, None]).T @ P / n
    a, Q = jnp.linalg.eigh(A)
    a = jnp.maximum(a, 0.0)
    Mr = 1.0 / jnp.sqrt(g[:, None] * a[None, :] + reg)
    Mc = 1.0 / jnp.sqrt(basis.g_rest * a + reg)

    def to_params(theta):
        R = theta * Mc + V @ ((Mr - Mc) * (V.T @ theta))
        W = R @ Q.T
        return {"w": W[:-1], "b": W[-1]}

    def from_params(p):
        W = jnp.concatenate([p["w"], p["b"][None, :]], axis=0) @ Q
        return W / Mc + V @ ((1.0 / Mr - 1.0 / Mc) * (V.T @ W))

    return to_params, from_params


def _training(method: Method, implicit, solver, steps, learning_rate, momentum):
    """``(solver, method)`` of a victim: converged + IFT, or ``steps`` GD steps reversed by back-gradient
    (first order, Domke 2012, as in the paper, for plain GD; bit-exact, Maclaurin et al. 2015, for
    heavy-ball ``momentum > 0``, which needs ``jax_enable_x64``)."""
    if method == "implicit":
        return solver, implicit
    if method == "backgradient":
        mom = None if not momentum else float(momentum)
        gd = GradientDescent(learning_rate=float(learning_rate), momentum=mom, maxiter=int(steps), tol=1e-30,
                             on_failure="ignore")
        return gd, BackGradient(steps=int(steps), exact=mom is not None, learning_rate=float(learning_rate),
                                momentum=mom, on_failure="ignore")
    raise ValueError(f"argument 'method' must be 'implicit' or 'backgradient', got {method!r}")


@functools.lru_cache(maxsize=None)
def softmax_victim(n_classes: int = 10, reg: float = 1e-3, *, method: Method = "implicit", steps: int = 60,
                   learning_rate: float = 1.0, momentum: float | None = None, solver=None, implicit=None,
                   precondition: GramBasis | None = None) -> Victim:
    r"""The paper's MNIST victim: :func:`poisoning.victims.softmax` (``n_classes``, ``reg``).

    ``method="implicit"``: L-BFGS to gradient norm 1e-7 (``solver``), IFT with conjugate gradients; with
    ``precondition`` a :class:`GramBasis` (of the clean training set) both run in the low-rank K-FAC
    coordinates of :func:`kfac_basis` (class factor from the warm start), ~3x fewer L-BFGS and CG
    iterations on MNIST (same minimizer and hypergradient up to the solver tolerances).
    ``method="backgradient"``: ``steps`` GD steps of size ``learning_rate`` from zero (use
    :func:`gd_learning_rate` for a safe step), reversed by :class:`bilevel.unroll.BackGradient`."""
    if precondition is not None and not isinstance(precondition, GramBasis):
        raise ValueError(f"argument 'precondition' must be None or a GramBasis, got {type(precondition).__name__}")
    solver = LBFGS(maxiter=500, tol=1e-7, on_failure="ignore") if solver is None else solver
    implicit = Implicit(linear_solver=CG(tol=1e-10), on_failure="ignore") if implicit is None else implicit
    solver, strategy = _training(method, implicit, solver, steps, learning_rate, momentum)
    reparam = None if precondition is None else functools.partial(kfac_basis, reg=float(reg), basis=precondition)
    return victims.softmax(int(n_classes), float(reg), solver=solver, method=strategy, reparam=reparam)


@functools.lru_cache(maxsize=None)
def mlp_victim(n_classes: int = 10, hidden: int = 10, reg: float = 1e-3, *, method: Method = "implicit",
               steps: int = 200, learning_rate: float = 0.5, momentum: float | None = None, seed: int = 0,
               solver=None, implicit=None) -> Victim:
    r"""One-hidden-layer tanh MLP (the paper's 10 units), :func:`poisoning.victims.mlp`. ``"implicit"``:
    L-BFGS, IFT with GMRES and a small damping (non-convex loss); ``"backgradient"``: ``steps`` GD steps
    (paper: T = 200)."""
    solver = LBFGS(maxiter=1000, tol=1e-7, on_failure="ignore") if solver is None else solver
    implicit = Implicit(linear_solver=GMRES(tol=1e-10, ridge=1e-6), on_failure="ignore") if implicit is None else implicit
    solver, strategy = _training(method, implicit, solver, steps, learning_rate, momentum)
    return victims.mlp(int(n_classes), int(hidden), float(reg), seed=int(seed), solver=solver, method=strategy)


@functools.lru_cache(maxsize=None)
def adaline_victim(reg: float = 1e-3, *, method: Method = "implicit", steps: int = 80, learning_rate: float = 0.1,
                   momentum: float | None = None, solver=None, implicit=None) -> Victim:
    r"""Adaline (binary, labels 0/1), :func:`poisoning.victims.adaline`. ``"implicit"``: Newton (the loss
    is quadratic) + IFT; ``"backgradient"``: ``steps`` GD steps (paper: T = 80)."""
    solver = Newton(tol=1e-9, maxiter=50, on_failure="ignore") if solver is None else solver
    implicit = Implicit(linear_solver=CG(tol=1e-12), on_failure="ignore") if implicit is None else implicit
    solver, strategy = _training(method, implicit, solver, steps, learning_rate, momentum)
    return victims.adaline(float(reg), solver=solver, method=strategy)


class MunozCNN(ImageClassifier):
    r"""A small CNN on flattened square grey images (the rows of the attack's ``(n, side**2)`` features):
    ``len(channels)`` blocks of a ``kernel x kernel`` convolution (SAME padding), ReLU and 2x2 max-pooling,
    then a dense layer to ``num_classes`` logits. ``compute_dtype`` (e.g. ``jnp.float32``) runs the
    layers in that precision whatever the dtype of the parameters and input (XLA:CPU's fast convolution
    kernels are float32 only); ``None`` computes in the input's dtype (float64 in the tests).

    The paper (Muñoz-González et al. 2017, §5) poisons "a convolutional neural network" on MNIST digits
    1, 5 and 6; this is a small network of that kind, not their exact architecture."""

    side: int = 28
    channels: tuple = (8, 16)
    kernel: int = 5
    compute_dtype: object = None

    @nn.compact
    def __call__(self, x, train: bool = False, features: bool = False):
        x = jnp.asarray(x)
        if x.ndim == 2:
            if x.shape[1] != self.side * self.side:
                raise ValueError(f"argument 'x' must have side**2 = {self.side ** 2} features, "
                                 f"got shape {x.shape}")
            x = x.reshape(x.shape[0], self.side, self.side)
        x = self.prepare(x)
        dt = self.compute_dtype
        if dt is not None:
            x = x.astype(dt)
        k = int(self.kernel)
        for i, c in enumerate(self.channels):
            x = nn.relu(Conv(int(c), (k, k), conv=self.conv, padding="SAME", dtype=dt, name=f"conv{i}")(x))
            x = max_pool(x, 2)
        x = x.reshape(x.shape[0], -1)
        if features:
            return x
        return nn.Dense(self.num_classes, dtype=dt, name="head")(x)


@functools.lru_cache(maxsize=None)
def cnn_victim(n_classes: int = 3, side: int = 28, *, channels: tuple = (8, 16), kernel: int = 5, steps: int = 100,
               learning_rate: float = 0.05, momentum: float = 0.9, batch_size: int | None = None,
               weight_decay: float = 0.0, compute_dtype=None, seed: int = 0, reverse: str = "backgradient",
               checkpoint=None, conv: str = "auto") -> Victim:
    r"""The paper's §5 victim: :class:`MunozCNN` trained from a fixed initialization (``seed``) by ``steps``
    steps of heavy-ball SGD (``optax.sgd``'s iteration: :math:`v \leftarrow \gamma v + \nabla\mathcal L`,
    :math:`\theta \leftarrow \theta - \eta v`) on the mean cross-entropy (full batch, or mini-batches of
    ``batch_size`` in a fixed seeded order), :func:`poisoning.victims.network`.

    ``reverse="backgradient"`` (default): the hypergradient reverses the trajectory exactly in int64
    fixed point (Maclaurin et al. 2015; needs ``jax_enable_x64`` and ``momentum > 0``); no trajectory
    is stored. ``reverse="unrolled"``: reverse-mode through the stored steps (the reference the
    back-gradient is checked against). The reversal is bit-exact only when the gradient is computed
    identically forward and backward; with ``compute_dtype=jnp.float32`` different compilations of the
    same step can differ in the last bits, and the reversal can amplify that (up to :math:`1/\gamma` per step)
    (see ``hypergradient_check`` in :mod:`experiments.munoz2017`). ``checkpoint``: rematerialization of the
    unrolled reference (:class:`bilevel.unroll.Unrolled`); ``conv``: the models' convolution (``"lax"``
    compiles faster on tiny inputs)."""
    if not 0.0 < float(momentum) < 1.0:
        raise ValueError(f"argument 'momentum' must be in (0, 1) for an exactly reversible victim, got {momentum!r}")
    if int(side) < 1 or not channels:
        raise ValueError(f"arguments 'side' and 'channels' must be >= 1 and non-empty, got {side!r}, {channels!r}")
    module = MunozCNN(num_classes=int(n_classes), side=int(side), channels=tuple(int(c) for c in channels),
                      kernel=int(kernel), compute_dtype=compute_dtype, conv=conv)
    return victims.network(module, int(n_classes), steps=int(steps), learning_rate=float(learning_rate),
                           momentum=float(momentum), batch_size=None if batch_size is None else int(batch_size),
                           weight_decay=float(weight_decay), reverse=reverse, seed=int(seed),
                           checkpoint=checkpoint if reverse == "unrolled" else None)


# ----------------------------------------------------------------------------------------------------
# initialization and the random-flip baseline
# ----------------------------------------------------------------------------------------------------
def _other_label(rng, y, n_classes):
    """A uniformly random label different from each ``y``."""
    shift = rng.integers(1, n_classes, size=len(y))
    return (np.asarray(y, int) + shift) % n_classes


def init_generic(X_train, y_train, m: int, n_classes: int = 10, seed=0):
    """Error-generic start: ``m`` clones of random training points, each with a random *other* label."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(y_train), size=m, replace=m > len(y_train))
    return np.array(X_train[idx], copy=True), _other_label(rng, np.asarray(y_train)[idx], n_classes)


def init_specific(X_train, y_train, m: int, a: int = 8, b: int = 3, seed=0):
    """Error-specific start: ``m`` clones of training points of classes ``a`` and ``b`` (alternating),
    labels swapped (``a -> b``, ``b -> a``)."""
    rng = np.random.default_rng(seed)
    y_train = np.asarray(y_train)
    ia, ib = rng.permutation(np.flatnonzero(y_train == a)), rng.permutation(np.flatnonzero(y_train == b))
    if len(ia) == 0 or len(ib) == 0:
        raise ValueError(f"the training set needs points of classes {a} and {b}")
    idx = np.array([ia[(j // 2) % len(ia)] if j % 2 == 0 else ib[(j // 2) % len(ib)] for j in range(m)], int)
    y = np.where(y_train[idx] == a, b, a)
    return np.array(X_train[idx], copy=True), y


def random_flip_poison(X_val, y_val, m: int, n_classes: int = 10, seed=0):
    """The paper's baseline: ``m`` validation points given random wrong labels (added as poison)."""
    rng = np.random.default_rng(seed + 7919)
    idx = rng.choice(len(y_val), size=m, replace=m > len(y_val))
    return np.array(X_val[idx], copy=True), _other_label(rng, np.asarray(y_val)[idx], n_classes)


# ----------------------------------------------------------------------------------------------------
# the attack
# ----------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def munoz_attack(victim: Victim, mode: Literal["generic", "specific"] = "generic", *, step_size: float = 0.5,
                 tol: float = 1e-6, min_step: float = 1e-3) -> PoisoningAttack:
    """The attack: ``victim`` + error-generic / error-specific objective + box [0, 1], unit-hypergradient
    steps of length ``step_size`` with backtracking (halve on failure; stop below ``min_step`` or when an
    accepted step gains less than ``tol``). Memoized per settings (one compiled loop)."""
    if mode not in ("generic", "specific"):
        raise ValueError(f"argument 'mode' must be 'generic' or 'specific', got {mode!r}")
    objective = error_generic if mode == "generic" else error_specific
    step = Backtrack(init_step=float(step_size), shrink=0.5, min_step=float(min_step), tol=float(tol),
                     normalization="global")
    return PoisoningAttack(victim, objective, Box(0.0, 1.0), step=step, gain_tol=None)


def poison(attack: PoisoningAttack, X_train, y_train, X_val, y_val, m: int, *, mode="generic", n_classes=10,
           pair=(8, 3), steps: int = 30, seed=0, callback=None):
    """Initialize ``m`` points (:func:`init_generic` / :func:`init_specific`) and run the sequential attack.
    ``y_val`` holds the true labels (generic) or the attacker's targets (specific). Returns
    ``(AttackResult, X_init, y_poison)``."""
    if mode == "generic":
        X0, yp = init_generic(X_train, y_train, m, n_classes, seed)
    else:
        X0, yp = init_specific(X_train, y_train, m, pair[0], pair[1], seed)
    res = run(attack, X_train, y_train, PoisonPoints(X0, yp), (X_val, y_val), steps=steps, mode="sequential",
              callback=callback)
    return res, X0, yp
