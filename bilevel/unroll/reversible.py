r"""Exactly reversible multiplication by a rational momentum :math:`\gamma = n/d` on int64 fixed-point numbers.

*Exact reversal* (``exact=True``, momentum only): in floating point the division by
:math:`\gamma` amplifies rounding errors by :math:`1/\gamma` per step, so the float reversal
(``exact=False``) diverges from the true trajectory after a few dozen steps. Following Maclaurin
et al. (Sec. 3, Alg. 3), :math:`x` and :math:`v` are instead held as int64 fixed-point numbers
with ``radix_bits`` fractional bits; :math:`\gamma` is taken as a rational :math:`n/d`
(``Fraction(momentum).limit_denominator(2**16)``, e.g. ``0.9 = 9/10``) and :math:`v \cdot n/d` is
computed *reversibly*: the remainder :math:`v \bmod d` is pushed onto a per-parameter
arbitrary-precision integer (the *information buffer*, base-:math:`d` digit), :math:`v` becomes
:math:`\lfloor v/d\rfloor n` plus a base-:math:`n` digit popped from the buffer. Each step
therefore stores exactly the :math:`\log_2(d/n) = \log_2(1/\gamma)` bits that the
multiplication destroys (0.152 bits for :math:`\gamma=0.9`), and the backward pass undoes every
integer operation bit for bit: the reconstructed :math:`x_0, v_0` and the emptied buffer are
checked at the end (``on_failure``). The gradient is quantized to the same grid before it is
added, and :math:`\eta v` is rounded to it, so the fixed-point forward map is a bijection.
*Memory*: the buffer is a ``uint32`` array of
:math:`\lceil (T\log_2(1/\gamma) + \log_2 d + \log_2\frac{1}{1-\gamma} + 3)/32\rceil + 1` limbs per
parameter, one of them spare to detect overflow (7 limbs = 28 bytes per parameter for
:math:`T=1000`, :math:`\gamma=0.9`; 2 limbs for :math:`T \le 147`; see
:func:`information_buffer_limbs`). It is allocated once and does grow with :math:`T`, but
:math:`64/\log_2(1/\gamma) \approx 420` times more slowly than a stored float64 trajectory of
:math:`x` (which would also need :math:`v`). The
hypergradient computed is that of the real-valued map evaluated along the fixed-point trajectory,
which differs from the float64 trajectory by :math:`O(2^{-\text{radix\_bits}})` per step.

Reference: D. Maclaurin, D. Duvenaud, R. P. Adams, *Gradient-based Hyperparameter Optimization through
Reversible Learning*, ICML 2015 (Sec. 3, Alg. 3).
"""

from __future__ import annotations

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np

from bilevel.unroll._common import check_steps

__all__ = ["information_buffer_limbs", "momentum_fraction", "mul_gamma", "div_gamma"]

MAX_DENOMINATOR = 2**16


def momentum_fraction(momentum: float) -> Fraction:
    return Fraction(float(momentum)).limit_denominator(MAX_DENOMINATOR)


def information_buffer_limbs(steps: int, momentum: float) -> int:
    """Number of 32-bit limbs per parameter of the exact-reversal information buffer.

    The buffer holds at most :math:`T\\log_2(d/n) + \\log_2\\frac{d/n}{d/n-1} + \\log_2 d` bits for
    :math:`\\gamma = n/d` (see the module docstring); one spare limb detects overflow.
    """
    steps = check_steps("steps", steps)
    frac = momentum_fraction(momentum)
    n, d = frac.numerator, frac.denominator
    if not 0 < n < d:
        raise ValueError(f"argument 'momentum' must be in (0, 1) for exact reversal, got {momentum!r}")
    c = d / n
    bits = steps * math.log2(c) + math.log2(c / (c - 1.0)) + math.log2(d) + 3.0
    return int(math.ceil(bits / 32.0)) + 1


_U32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)


def _buffer_push(buf, digit, base):
    """``buf <- buf * base + digit`` on a (limbs, P) uint32 big integer (limb 0 least significant).
    Returns the new buffer and whether it overflowed."""
    base = np.uint64(base)

    def body(carry, limb):
        tmp = limb.astype(jnp.uint64) * base + carry
        return tmp >> _S32, (tmp & _U32).astype(jnp.uint32)

    carry, new = jax.lax.scan(body, digit.astype(jnp.uint64), buf)
    return new, jnp.any(carry != 0)


def _buffer_pop(buf, base):
    """``(buf // base, buf % base)`` on a (limbs, P) uint32 big integer."""
    base = np.uint64(base)

    def body(rem, limb):
        cur = (rem << _S32) | limb.astype(jnp.uint64)
        return cur % base, (cur // base).astype(jnp.uint32)

    rem, new = jax.lax.scan(body, jnp.zeros(buf.shape[1:], jnp.uint64), buf, reverse=True)
    return new, rem


def mul_gamma(v, buf, n, d):
    """Exactly reversible ``v <- v * n / d`` (int64 ``v``), Maclaurin et al. 2015, Alg. 3."""
    buf, over = _buffer_push(buf, jnp.mod(v, d), d)
    v = jnp.floor_divide(v, d) * n
    buf, digit = _buffer_pop(buf, n)
    return v + digit.astype(jnp.int64), buf, over


def div_gamma(v, buf, n, d):
    """Inverse of :func:`_mul_gamma`."""
    buf, over = _buffer_push(buf, jnp.mod(v, n), n)
    v = jnp.floor_divide(v, n) * d
    buf, digit = _buffer_pop(buf, d)
    return v + digit.astype(jnp.int64), buf, over
