r"""Randomized smoothing against label flips (Rosenfeld, Winston, Ravikumar & Kolter, ICML 2020).

Binary labels :math:`y \in \{0, 1\}^n`. The smoothed classifier trains the base learner on labels with
noise, :math:`\tilde y = y \oplus \xi`, :math:`\xi_i \sim \mathrm{Bernoulli}(q)` i.i.d. (:math:`q < 1/2`),
and predicts :math:`g(x) = \arg\max_c P_\xi(f(x; \tilde y) = c)`.

**Certificate** (the discrete Neyman-Pearson argument). Let an adversary flip a set :math:`S` of
:math:`r` labels, :math:`y' = y \oplus 1_S`. For a noisy label vector :math:`z`, only the coordinates in
:math:`S` tell the two label distributions apart: with :math:`k = |\{i \in S : z_i = y_i\}|`,
:math:`K \sim \mathrm{Bin}(r, 1-q)` under the clean labels and :math:`K \sim \mathrm{Bin}(r, q)` under
:math:`y'`, and the likelihood ratio :math:`(q / (1-q))^{2k-r}` decreases in :math:`k`. If
:math:`P(f = c) \ge p` under :math:`y`, the least :math:`P(f = c)` can be under :math:`y'` is obtained by the
set of largest :math:`k` first: fill the mass :math:`p` of :math:`\mathrm{Bin}(r, 1-q)` from
:math:`k = r` down (the last level in part) and read the same levels' mass under :math:`\mathrm{Bin}(r, q)`.
The prediction :math:`c` is certified against :math:`r` flips when that least mass exceeds 1/2
(:func:`flip_radius`: the largest such :math:`r`, which needs no knowledge of the base learner).

**Linear least squares** (the paper's base learner, exact and training-free). With features
:math:`h(x)` (a bias appended) and training features :math:`H`, ridge regression on the labels gives
:math:`f(x; \tilde y) = \mathbb 1[\beta(x)^\top \tilde y \ge 1/2]`,
:math:`\beta(x) = H (H^\top H + \lambda n I)^{-1} h(x)`: a sum of independent two-valued terms. The
Chernoff bound :math:`P(\beta^\top \tilde y \ge 1/2) \le \min_{t \ge 0} e^{-t/2} \prod_i
E\,e^{t \beta_i \tilde y_i}` (and its mirror for :math:`< 1/2`) gives a deterministic lower bound
:math:`p` on the majority's probability (:func:`chernoff_bounds`), hence the radius without sampling.

Reference: E. Rosenfeld, E. Winston, P. Ravikumar, J. Z. Kolter, *Certified Robustness to
Label-Flipping Attacks via Randomized Smoothing*, ICML 2020.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

__all__ = ["required_probability", "flip_radius", "ridge_label_weights", "chernoff_bounds", "certify_linear"]


def _check_q(q) -> float:
    if isinstance(q, bool) or not isinstance(q, (int, float, np.floating)) or not 0 < q < 0.5:
        raise ValueError(f"argument 'q' (label-flip probability) must be in (0, 1/2), got {q!r}")
    return float(q)


def _binom_pmf(r, k, p):
    """``P(Bin(r, p) = k)`` for arrays ``r``, ``k`` (``k > r`` gives 0)."""
    ok = (k >= 0) & (k <= r)
    kk, rr = jnp.clip(k, 0, r), r
    logc = gammaln(rr + 1.0) - gammaln(kk + 1.0) - gammaln(rr - kk + 1.0)
    return jnp.where(ok, jnp.exp(logc + kk * jnp.log(p) + (rr - kk) * jnp.log1p(-p)), 0.0)


def required_probability(q: float, max_radius: int) -> jax.Array:
    r"""``(max_radius + 1,)``: entry ``r`` is the probability :math:`p^*(r)` the prediction needs under the
    clean labels to stay the majority after any ``r`` flips (certified iff ``p > p^*(r)``; ``p^*(0) =
    1/2``). Closed form: walk the levels :math:`k = r, r-1, \dots` of the two binomials (module
    docstring) until their mass under the flipped labels reaches 1/2, and read the clean mass there."""
    q = _check_q(q)
    return _required(jnp.asarray(q, float), int(max_radius))


@functools.partial(jax.jit, static_argnames=("max_radius",))
def _required(q, max_radius):
    k = jnp.arange(max_radius, -1, -1).astype(q.dtype)

    def one(r):
        a = _binom_pmf(r, k, 1.0 - q)              # level k's mass under the clean labels (k = max .. 0)
        b = _binom_pmf(r, k, q)                    # ... under the flipped labels
        cb, ca = jnp.cumsum(b), jnp.cumsum(a)
        j = jnp.argmax(cb >= 0.5)                  # the level where the flipped mass reaches 1/2
        b_before, a_before = cb[j] - b[j], ca[j] - a[j]
        return a_before + (0.5 - b_before) / jnp.where(b[j] > 0, b[j], 1.0) * a[j]

    return jax.vmap(one)(jnp.arange(max_radius + 1).astype(q.dtype))


def flip_radius(p_lower, q: float, max_radius: int = 1000) -> jax.Array:
    """The largest number of label flips ``r <= max_radius`` the smoothed prediction is certified
    against, for a lower bound ``p_lower`` (array) on its probability under the clean labels and flip
    probability ``q``; ``-1`` where ``p_lower <= 1/2`` (no certified prediction)."""
    q = _check_q(q)
    if isinstance(max_radius, bool) or not isinstance(max_radius, (int, np.integer)) or max_radius < 0:
        raise ValueError(f"argument 'max_radius' must be an int >= 0, got {max_radius!r}")
    p = jnp.asarray(p_lower)
    if not jnp.issubdtype(p.dtype, jnp.floating):
        p = p.astype(float)
    if not isinstance(p, jax.core.Tracer) and bool(jnp.any(~jnp.isfinite(p) | (p < 0) | (p > 1))):
        raise ValueError("argument 'p_lower' must hold probabilities in [0, 1]")
    need = required_probability(q, int(max_radius)).astype(p.dtype)
    ok = p[..., None] > need                       # certified at r, for r = 0 .. max_radius
    return (jnp.sum(jnp.cumprod(ok, axis=-1), axis=-1) - 1).astype(jnp.int32)


def ridge_label_weights(H_train, H_test, lam: float) -> jax.Array:
    """``(n_test, n)``: row ``j`` is :math:`\\beta(x_j)`, so that ridge regression on labels ``z`` (the
    features with a bias column appended, penalty :math:`\\lambda n \\|w\\|^2`, bias included) predicts
    ``beta @ z`` at the test points."""
    H = jnp.asarray(H_train)
    Ht = jnp.asarray(H_test)
    if H.ndim != 2 or Ht.ndim != 2 or H.shape[1] != Ht.shape[1]:
        raise ValueError(f"arguments 'H_train', 'H_test' must be (n, d) and (m, d) features, got {H.shape}, {Ht.shape}")
    if isinstance(lam, bool) or not isinstance(lam, (int, float, np.floating)) or not lam > 0:
        raise ValueError(f"argument 'lam' must be > 0, got {lam!r}")
    ones = jnp.ones((H.shape[0], 1), H.dtype)
    Hb = jnp.concatenate([H, ones], axis=1)
    Htb = jnp.concatenate([Ht, jnp.ones((Ht.shape[0], 1), Ht.dtype)], axis=1)
    gram = Hb.T @ Hb + lam * H.shape[0] * jnp.eye(Hb.shape[1], dtype=H.dtype)
    return jnp.linalg.solve(gram, Htb.T).T @ Hb.T


def _log_mgf(t, beta, y, q):
    """``log E exp(t * beta . z)`` for ``z_i = y_i`` w.p. ``1 - q`` else ``1 - y_i`` (``t`` scalar)."""
    hit, miss = t * beta * y, t * beta * (1 - y)
    return jnp.sum(jnp.logaddexp(jnp.log1p(-q) + hit, jnp.log(q) + miss))


def _chernoff(beta, y, q, threshold, sign, iters):
    """``min_{t >= 0} exp(-t s thr) E exp(t s beta.z)`` with ``s = sign`` (``+1``: P(score >= thr)), found
    by bisection on the derivative of the convex exponent over a bracket that doubles until it holds."""
    def phi(t):
        return _log_mgf(sign * t, beta, y, q) - sign * t * threshold

    dphi = jax.grad(phi)

    def grow(hi):
        return jax.lax.while_loop(lambda h: (dphi(h) < 0) & (h < 1e6), lambda h: 2 * h, hi)

    hi = grow(jnp.asarray(1.0, beta.dtype))

    def bisect(_, lohi):
        lo, hi = lohi
        mid = 0.5 * (lo + hi)
        neg = dphi(mid) < 0
        return jnp.where(neg, mid, lo), jnp.where(neg, hi, mid)

    lo, hi = jax.lax.fori_loop(0, iters, bisect, (jnp.zeros_like(hi), hi))
    t = 0.5 * (lo + hi)
    return jnp.minimum(1.0, jnp.exp(jnp.minimum(phi(t), 0.0)))


@functools.partial(jax.jit, static_argnames=("iters",))
def _bounds(beta, y, q, threshold, iters):
    def one(b):
        return (_chernoff(b, y, q, threshold, 1.0, iters), _chernoff(b, y, q, threshold, -1.0, iters))

    return jax.lax.map(one, beta, batch_size=64)


def chernoff_bounds(beta, y, q: float, threshold: float = 0.5, *, iters: int = 60):
    """Upper bounds on :math:`P(\\beta_j^\\top \\tilde y \\ge \\text{threshold})` and on
    :math:`P(\\beta_j^\\top \\tilde y < \\text{threshold})` under label noise ``q``, for each row of ``beta``
    ``(m, n)`` and labels ``y`` ``(n,)`` in {0, 1}: two ``(m,)`` arrays."""
    q = _check_q(q)
    beta = jnp.asarray(beta)
    y = jnp.asarray(y)
    if beta.ndim != 2 or y.shape != (beta.shape[1],):
        raise ValueError(f"arguments 'beta', 'y' must be (m, n) and (n,), got {beta.shape}, {y.shape}")
    if not isinstance(y, jax.core.Tracer) and bool(jnp.any((y != 0) & (y != 1))):
        raise ValueError("argument 'y' must hold binary labels 0 / 1")
    return _bounds(beta, y.astype(beta.dtype), jnp.asarray(q, beta.dtype), jnp.asarray(threshold, beta.dtype),
                   int(iters))


def certify_linear(H_train, y, H_test, q: float, lam: float = 1e-2, *, max_radius: int = 1000):
    """Prediction and certified number of label flips of the smoothed ridge classifier at each test
    point: ``(pred, radius)`` ``(m,)`` int32, ``pred = -1`` (abstain) and ``radius = -1`` where neither
    class has a Chernoff-certified probability above 1/2."""
    beta = ridge_label_weights(H_train, H_test, lam)
    up1, up0 = chernoff_bounds(beta, y, q)        # P(pred 1) <= up1, P(pred 0) <= up0
    pred = jnp.where(up0 < 0.5, 1, jnp.where(up1 < 0.5, 0, -1)).astype(jnp.int32)
    p_lower = jnp.where(pred == 1, 1.0 - up0, jnp.where(pred == 0, 1.0 - up1, 0.0))
    return pred, flip_radius(p_lower, q, max_radius)

