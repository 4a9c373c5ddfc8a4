"""Feature-space transfer attacks: FC (Shafahi 2018), CP (Zhu 2019), BP (Aghakhani 2021) on the core."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from poisoning.attacks import aghakhani2021, shafahi2018, zhu2019
from poisoning.transfer import FeatureSpaceAttack, frozen_head_predictions

_RNG = np.random.default_rng(0)
_W1 = _RNG.standard_normal((3, 3, 3, 4)) * 0.5
_W2 = _RNG.standard_normal((4 * 4 * 4, 6)) * 0.3


def conv_features(x):  # a frozen "network": strided conv, relu, dense, tanh on 8x8x3 images
    x = jnp.asarray(x)
    h = jax.lax.conv_general_dilated(x, jnp.asarray(_W1, x.dtype), (2, 2), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.tanh(jax.nn.relu(h).reshape(x.shape[0], -1) @ jnp.asarray(_W2, x.dtype))


def _images(k, seed=1, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.uniform(0.05, 0.95, size=(k, 8, 8, 3)), dtype), jnp.asarray(rng.uniform(size=(8, 8, 3)), dtype)


def _fd(f, x, direction, h=1e-6):
    return (f(x + h * direction) - f(x - h * direction)) / (2 * h)


@pytest.mark.parametrize("mod", [shafahi2018, zhu2019, aghakhani2021])
def test_crafting_lowers_the_loss_inside_the_budget(mod):
    bases, target = _images(4, dtype=np.float32)
    eps = 8 / 255
    res = jax.jit(lambda b, t: mod.craft(conv_features, b, t, eps=eps, steps=40, lr=0.01))(bases, target)
    d = np.asarray(res.poisons) - np.asarray(bases)
    assert np.max(np.abs(d)) <= eps + 1e-6 and np.max(np.abs(d)) > 0.5 * eps  # moved, within the ball
    assert float(res.poisons.min()) >= 0.0 and float(res.poisons.max()) <= 1.0
    assert float(res.loss) < 0.7 * float(res.loss_start)
    assert int(res.n_steps) == 40 and np.isfinite(np.asarray(res.history)).sum() == 41
    # the reported loss is the loss at the returned poisons
    a = {shafahi2018: lambda: shafahi2018.attack(input_dim=192), zhu2019: zhu2019.attack,
         aghakhani2021: aghakhani2021.attack}[mod]()
    np.testing.assert_allclose(float(a.objective(conv_features, res.poisons, target,
                                                 None if a.respond is None else res.response)),
                               float(res.loss), rtol=1e-4)


def test_projection_is_the_exact_box_projection():
    a = aghakhani2021.attack(eps=0.1)
    bases = jnp.asarray([[0.05, 0.5, 0.97]])
    x = jnp.asarray([[-0.3, 0.55, 1.2]])
    np.testing.assert_allclose(np.asarray(a.project(x, bases)), [[0.0, 0.55, 1.0]])
    with pytest.raises(ValueError, match="'eps'"):
        FeatureSpaceAttack(loss=aghakhani2021.bullseye_loss, eps=-1.0)
    with pytest.raises(ValueError, match="'target'"):
        a.craft(conv_features, jnp.zeros((2, 8, 8, 3)), jnp.zeros((8, 8)))
    with pytest.raises(ValueError, match="'respond_init'"):
        FeatureSpaceAttack(loss=zhu2019.polytope_loss, respond=lambda F, f, w: w)


def test_polytope_coefficients_match_an_independent_solver_and_their_derivative():
    from jaxopt import ProjectedGradient
    from jaxopt.projection import projection_simplex

    rng = np.random.default_rng(3)
    F = jnp.asarray(rng.standard_normal((5, 7)))
    f = jnp.asarray(rng.standard_normal(7)) * 0.3 + 0.5 * F[1] + 0.3 * F[3]
    c = zhu2019.polytope_coefficients(F, f, iters=3000)
    pg = ProjectedGradient(lambda c_, F_, f_: 0.5 * jnp.sum((f_ - c_ @ F_) ** 2), projection_simplex,
                           maxiter=20000, tol=1e-12)
    oracle = pg.run(jnp.full(5, 0.2), F_=F, f_=f).params
    np.testing.assert_allclose(np.asarray(c), np.asarray(oracle), atol=1e-6)
    assert abs(float(jnp.sum(c)) - 1.0) < 1e-9 and float(c.min()) >= 0.0
    # the derivative of c*(F) (implicit, through the projected-gradient fixed point) vs central differences
    direction = jnp.asarray(rng.standard_normal(F.shape))
    g = jax.jvp(lambda F_: zhu2019.polytope_coefficients(F_, f, iters=3000), (F,), (direction,))[1]
    fd = _fd(lambda F_: zhu2019.polytope_coefficients(F_, f, iters=3000), F, direction)
    np.testing.assert_allclose(np.asarray(g), np.asarray(fd), atol=1e-5)
    # reverse mode agrees with forward mode
    v = jnp.asarray(rng.standard_normal(5))
    rev = jax.grad(lambda F_: zhu2019.polytope_coefficients(F_, f, iters=3000) @ v)(F)
    np.testing.assert_allclose(float(jnp.sum(rev * direction)), float(g @ v), atol=1e-6)


def test_attack_gradients_match_central_differences_in_float64():
    bases, target = _images(3)
    rng = np.random.default_rng(5)
    direction = jnp.asarray(rng.standard_normal(bases.shape))
    # CP: the bilevel objective (coefficients re-solved) -- its gradient through the IFT
    cp = zhu2019.attack(inner_iters=3000)

    def cp_value(x):
        both = conv_features(jnp.concatenate([x, target[None]]))
        c = zhu2019.polytope_coefficients(both[:-1], both[-1], iters=3000)
        return zhu2019.polytope_loss(both[:-1], both[-1], c)

    g = jax.grad(cp_value)(bases)
    np.testing.assert_allclose(float(jnp.sum(g * direction)), float(_fd(cp_value, bases, direction)), rtol=1e-5)
    # the driver's hypergradient is that gradient
    solver = cp._solver(conv_features)
    warm = ((None, None, jnp.full(3, 1 / 3)),)  # (poison features, target feature, coefficients) per member
    _, _, hg = solver._value_and_hypergrad(bases, warm, (bases, target))
    np.testing.assert_allclose(np.asarray(hg), np.asarray(g), atol=1e-8)
    for loss in (shafahi2018.collision_loss, aghakhani2021.bullseye_loss):
        a = FeatureSpaceAttack(loss=loss)
        f = lambda x: a.objective(conv_features, x, target)
        np.testing.assert_allclose(float(jnp.sum(jax.grad(f)(bases) * direction)),
                                   float(_fd(f, bases, direction)), rtol=1e-5)


def test_proximal_pull_is_the_backward_step_and_the_watermark_a_blend():
    s = 0.25
    tx = shafahi2018.proximal_pull(s)
    b = jnp.asarray([1.0, 2.0])
    state = tx.init(b)
    x, u = jnp.asarray([3.0, -1.0]), jnp.asarray([0.5, 0.5])
    upd, _ = tx.update(u, state, x)
    np.testing.assert_allclose(np.asarray(x + upd), np.asarray((x + u + s * b) / (1 + s)))
    # the fixed point of FB splitting on ||x - t||^2 + beta ||x - b||^2 (scalar closed form)
    beta, lr, t0 = 0.5, 0.1, 3.0
    step = optax.chain(optax.sgd(lr), shafahi2018.proximal_pull(lr * beta))
    x = jnp.asarray(1.0)
    st = step.init(x)
    for _ in range(300):
        u, st = step.update(2 * (x - t0), st, x)
        x = x + u
    assert abs(float(x) - (t0 + 0.5 * beta * 1.0) / (1 + 0.5 * beta)) < 1e-6  # argmin of (x-t)^2 + beta/2 (x-1)^2
    w = shafahi2018.watermark(jnp.zeros((2, 3)), jnp.ones(3), 0.3)
    np.testing.assert_allclose(np.asarray(w), 0.3)
    with pytest.raises(ValueError, match="'opacity'"):
        shafahi2018.watermark(jnp.zeros((2, 3)), jnp.ones(3), 1.5)
    with pytest.raises(ValueError, match="'strength'"):
        shafahi2018.proximal_pull(-1.0)


def test_multi_draw_masks_are_fixed_by_the_key():
    f1 = aghakhani2021.dropout_draws(conv_features, draws=3, rate=0.5, key=jax.random.PRNGKey(1))
    f2 = aghakhani2021.dropout_draws(conv_features, draws=3, rate=0.5, key=jax.random.PRNGKey(1))
    x, _ = _images(2)
    a, b = f1(x), f2(x)
    assert len(a) == 3 and all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(a, b))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(a[1]))
    # the members' mean is the plain features in expectation: each entry is 0 or feature / (1 - rate)
    F = np.asarray(conv_features(x))
    for m in a:
        m = np.asarray(m)
        assert np.all(np.isclose(m, 0) | np.isclose(m, 2 * F))
    with pytest.raises(ValueError, match="'rate'"):
        aghakhani2021.dropout_draws(conv_features, draws=2, rate=1.0, key=jax.random.PRNGKey(0))


def test_bullseye_poisons_flip_a_frozen_head_that_the_bases_do_not():
    """End to end on a toy transfer problem: 4 base-class poisons around a target, a logistic head
    retrained on frozen features of a 40-image set: BP moves the target to the base class."""
    rng = np.random.default_rng(7)
    x0 = rng.uniform(0.0, 0.55, size=(20, 8, 8, 3))
    x1 = rng.uniform(0.45, 1.0, size=(20, 8, 8, 3))
    X = jnp.asarray(np.concatenate([x0, x1]), jnp.float32)
    y = jnp.asarray([0] * 20 + [1] * 20)
    target = jnp.asarray(rng.uniform(0.1, 0.6, size=(8, 8, 3)), jnp.float32)  # looks like class 0
    idx = jnp.arange(20, 24)  # four class-1 images become poisons (base class 1)
    F = conv_features(X)
    pred = lambda F_: frozen_head_predictions(F_, y, conv_features(target[None]), 2, reg=1e-3)[0]
    assert int(pred(F)) == 0
    res = aghakhani2021.craft(conv_features, X[idx], target, eps=0.5, steps=150, lr=0.02)
    F_p = F.at[idx].set(conv_features(res.poisons))
    assert int(pred(F_p)) == 1
