"""Second-order products against dense Hessians and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np

from bilevel import gauss_newton_vp, hessian_matvec, hvp, mixed_jvp, mixed_vjp

RNG = np.random.default_rng(3)


def f(p, theta):
    w, b = p["w"], p["b"]
    return jnp.sum(jnp.sin(w) * theta[:3]) + jnp.sum(w**2 * b) + b**3 * theta[3] + jnp.prod(theta[:2]) * b


P = {"w": jnp.asarray(RNG.normal(size=3)), "b": jnp.asarray(0.7)}
THETA = jnp.asarray(RNG.normal(size=4))
V = {"w": jnp.asarray(RNG.normal(size=3)), "b": jnp.asarray(-0.4)}


def _flat_fn():
    from jax.flatten_util import ravel_pytree

    flat, unravel = ravel_pytree(P)
    return flat, unravel, (lambda z, th: f(unravel(z), th))


def test_hvp_matches_dense_hessian():
    flat, unravel, g = _flat_fn()
    H = jax.hessian(g)(flat, THETA)
    from jax.flatten_util import ravel_pytree

    v = ravel_pytree(V)[0]
    out = ravel_pytree(hvp(f, P, V, THETA))[0]
    np.testing.assert_allclose(out, H @ v, rtol=1e-12)
    out2 = ravel_pytree(hessian_matvec(f, P, THETA)(V))[0]
    np.testing.assert_allclose(out2, H @ v, rtol=1e-12)


def test_mixed_products_match_dense_cross_derivative():
    flat, unravel, g = _flat_fn()
    from jax.flatten_util import ravel_pytree

    # cross[i, j] = d/dtheta_j (grad_x f)_i
    cross = jax.jacfwd(jax.grad(g, argnums=0), argnums=1)(flat, THETA)
    dtheta = jnp.asarray(RNG.normal(size=4))
    np.testing.assert_allclose(ravel_pytree(mixed_jvp(f, P, (THETA,), (dtheta,)))[0], cross @ dtheta, rtol=1e-12)
    u = V
    (ct,) = mixed_vjp(f, P, (THETA,), u)
    np.testing.assert_allclose(ct, cross.T @ ravel_pytree(u)[0], rtol=1e-12)
    # and against central finite differences of grad_x f
    eps = 1e-6
    gx = lambda th: ravel_pytree(jax.grad(f)(P, th))[0]
    fd = (gx(THETA + eps * dtheta) - gx(THETA - eps * dtheta)) / (2 * eps)
    np.testing.assert_allclose(ravel_pytree(mixed_jvp(f, P, (THETA,), (dtheta,)))[0], fd, rtol=1e-6)


def test_gauss_newton_equals_hessian_for_linear_model_and_is_psd():
    X = jnp.asarray(RNG.normal(size=(20, 4)))
    y = jnp.asarray(RNG.integers(0, 3, size=20))
    W = jnp.asarray(RNG.normal(size=(4, 3)))
    predict = lambda W: X @ W
    out_loss = lambda z: jnp.sum(jax.nn.logsumexp(z, axis=1) - jnp.take_along_axis(z, y[:, None], 1)[:, 0])
    full = lambda W: out_loss(predict(W))
    V = jnp.asarray(RNG.normal(size=(4, 3)))
    # For a model linear in its parameters the Gauss-Newton matrix equals the Hessian.
    np.testing.assert_allclose(gauss_newton_vp(predict, out_loss, W, V), hvp(lambda w: full(w), W, V), rtol=1e-10)
    # Non-linear model: GN is PSD even where the Hessian is not.
    predict_nl = lambda W: jnp.tanh(X @ W) * 3.0
    for _ in range(5):
        v = jnp.asarray(RNG.normal(size=(4, 3)))
        assert jnp.vdot(v, gauss_newton_vp(predict_nl, out_loss, W, v)) >= -1e-10
