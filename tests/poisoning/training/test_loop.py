"""The training loop: determinism, chunking, vmap, differentiability, precision, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from poisoning.training import (
    TrainConfig,
    as_float_images,
    evaluate,
    init_state,
    make_step_fn,
    predict,
    train,
    train_epochs,
    train_step,
)
from tests.poisoning.training._tiny import CONFIG, MODEL, STEPS, TinyCNN, data, key, leaves_equal


def test_same_key_gives_bit_identical_parameters_and_training_learns():
    x, y = data()
    s0 = init_state(MODEL, CONFIG, x, key(0), steps_per_epoch=STEPS)
    a = train(MODEL, s0, (x, y), CONFIG, key=key(1))
    b = train(MODEL, s0, (x, y), CONFIG, key=key(1))
    c = train(MODEL, s0, (x, y), CONFIG, key=key(2))
    assert leaves_equal(a, b)
    assert not leaves_equal(a.params, c.params)
    assert int(a.step) == CONFIG.epochs * STEPS
    # BatchNorm statistics are carried functionally and change during training
    assert not leaves_equal(a.batch_stats, s0.batch_stats)
    # split into chunks of one epoch: the same batches and augmentations, the same bits
    h, _ = train_epochs(MODEL, s0, (x, y), CONFIG, 1, key=key(1))
    h, metrics = train_epochs(MODEL, h, (x, y), CONFIG, 1, key=key(1))
    assert leaves_equal(a, h)
    assert metrics["loss"].shape == (1,) and np.isfinite(metrics["loss"]).all()
    learn = CONFIG.replace(epochs=1, schedule="constant", learning_rate=0.1)
    s = init_state(MODEL, learn, x, key(0), steps_per_epoch=STEPS)
    for _ in range(30):  # one compiled epoch, called 30 times
        s, _ = train_epochs(MODEL, s, (x, y), learn, 1, key=key(3))
    assert evaluate(MODEL, s, (x, y))["accuracy"] > 0.6  # chance is 1/3


def test_vmap_over_seeds_and_over_data_partitions_equals_a_loop():
    cfg = CONFIG.replace(epochs=1)

    def one(k, x, y):
        s = init_state(MODEL, cfg, x, jax.random.fold_in(k, 0), steps_per_epoch=STEPS)
        return train(MODEL, s, (x, y), cfg, key=jax.random.fold_in(k, 1)).params

    # three models at once: two seeds on one data set, a third on another partition (as DPA's base
    # models). threefry (the default generator) gives the same numbers under vmap as in a loop;
    # "rbg" does not.
    keys = jax.random.split(jax.random.key(0), 3)
    (x, y), (x2, y2) = data(), data(seed=1)
    xs, ys = jnp.stack([x, x, x2]), jnp.stack([y, y, y2])
    batched = jax.jit(jax.vmap(one))(keys, xs, ys)
    looped = jax.jit(one)
    for i in range(3):
        for a, b in zip(jax.tree_util.tree_leaves(batched), jax.tree_util.tree_leaves(looped(keys[i], xs[i], ys[i]))):
            np.testing.assert_allclose(a[i], b, rtol=2e-5, atol=2e-6)
    assert not np.allclose(batched["head"]["kernel"][0], batched["head"]["kernel"][1])


def test_gradient_through_three_steps_wrt_images_matches_finite_differences():
    """Reverse mode through 3 augmented BatchNorm training steps (bilevel.unroll.unrolled_solve over
    make_step_fn) against central finite differences, float64; forward mode with conv="lax"."""
    from bilevel.unroll import unrolled_solve

    x, y = data(n=8)
    x = x.astype(np.float64)
    x_val, y_val = data(seed=5, n=6)
    cfg = TrainConfig(epochs=1, batch_size=4, learning_rate=0.5, momentum=0.9, weight_decay=1e-2,
                      augment=CONFIG.augment, compute_dtype="float64")

    def make_loss(model):
        s0 = init_state(model, cfg, x, key(0), steps_per_epoch=2, dtype=jnp.float64)
        step_fn = make_step_fn(model, cfg, n=8, key=key(1))

        def loss(x):
            s = unrolled_solve(step_fn, s0, (x, jnp.asarray(y)), steps=3)  # epoch 2 starts at step 3
            logits = model.apply(s.variables, jnp.asarray(x_val, jnp.float64))
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(6), y_val])

        return loss

    loss = make_loss(MODEL)
    value, grad = jax.jit(jax.value_and_grad(loss))(x)
    assert np.isfinite(value) and float(jnp.max(jnp.abs(grad))) > 0
    rng = np.random.default_rng(0)
    idx = rng.choice(x.size, size=5, replace=False)
    f = jax.jit(loss)
    eps = 1e-5
    for i in idx:
        e = np.zeros(x.size)
        e[i] = eps
        e = e.reshape(x.shape)
        fd = (float(f(x + e)) - float(f(x - e))) / (2 * eps)
        np.testing.assert_allclose(float(grad.reshape(-1)[i]), fd, rtol=1e-6, atol=1e-9)
    # forward mode needs the plain lax convolution; same numbers
    v = jnp.asarray(rng.standard_normal(x.shape))
    _, jvp = jax.jit(lambda x, v: jax.jvp(make_loss(TinyCNN(conv="lax")), (x,), (v,)))(x, v)
    np.testing.assert_allclose(float(jvp), float(jnp.vdot(grad, v)), rtol=1e-8)


def test_step_function_for_unrolling_replays_train():
    from bilevel.unroll import unrolled_solve

    x, y = data()
    s0 = init_state(MODEL, CONFIG, x, key(0), steps_per_epoch=STEPS)
    step_fn = make_step_fn(MODEL, CONFIG, n=len(x), key=key(1))
    unrolled = jax.jit(lambda s: unrolled_solve(step_fn, s, (jnp.asarray(x), jnp.asarray(y)), steps=2 * STEPS))(s0)
    trained = train(MODEL, s0, (x, y), CONFIG, key=key(1))
    for a, b in zip(jax.tree_util.tree_leaves(unrolled), jax.tree_util.tree_leaves(trained)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_and_head_only_training_and_uint8_images():
    x, y = data()
    cfg = CONFIG.replace(epochs=1, compute_dtype="bfloat16")
    s0 = init_state(MODEL, cfg, x, key(0), steps_per_epoch=STEPS)
    s, metrics = train_epochs(MODEL, s0, (x, y), cfg, 1, key=key(1))
    assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(s.params))
    assert np.isfinite(metrics["loss"]).all()
    head_cfg = CONFIG.replace(epochs=1, trainable="head")
    h0 = init_state(MODEL, head_cfg, x, key(0), steps_per_epoch=STEPS)
    h = train(MODEL, h0, (x, y), head_cfg, key=key(1))
    for name in h0.params:
        same = leaves_equal(h0.params[name], h.params[name])
        assert same == (name != "head"), name
    assert leaves_equal(h0.batch_stats, h.batch_stats)  # the frozen backbone runs in inference mode
    # uint8 pixels are divided by 255 inside the step (a quarter of the memory of float32 data)
    x8 = (np.asarray(x) * 255).round().astype(np.uint8)
    np.testing.assert_allclose(as_float_images(x8), x8.astype(np.float32) / 255, rtol=1e-7)
    assert as_float_images(x) is not None and as_float_images(jnp.asarray(x)).dtype == jnp.float32


def test_train_step_weights_and_predict():
    x, y = data()
    s0 = init_state(MODEL, CONFIG, x, key(0), steps_per_epoch=STEPS)
    ones = jnp.ones(8)
    _, m1 = train_step(MODEL, s0, (x[:8], y[:8], ones), key(1), CONFIG)
    _, m2 = train_step(MODEL, s0, (x[:8], y[:8], 2 * ones), key(1), CONFIG)
    np.testing.assert_allclose(float(m2["loss"]), 2 * float(m1["loss"]), rtol=1e-6)
    # zero weights: no loss gradient, only weight decay and momentum act (SGD: p - lr * wd * p)
    z, _ = train_step(MODEL, s0, (x[:8], y[:8], 0 * ones), key(1), CONFIG)
    lr0 = 0.1  # cosine schedule at step 0
    for a, b in zip(jax.tree_util.tree_leaves(z.params), jax.tree_util.tree_leaves(s0.params)):
        np.testing.assert_allclose(a, b - lr0 * CONFIG.weight_decay * b, rtol=1e-6, atol=1e-7)
    logits = predict(MODEL, s0, x, batch_size=5)  # 24 = 4 * 5 + 4: a padded last chunk
    np.testing.assert_allclose(logits, MODEL.apply(s0.variables, x), rtol=1e-5, atol=1e-6)
    assert predict(MODEL, s0, x, features=True).shape == (24, 4)


def test_bad_arguments_have_clear_errors():
    x, y = data()
    s0 = init_state(MODEL, CONFIG, x, key(0), steps_per_epoch=STEPS)
    with pytest.raises(ValueError, match="labels must be in"):
        train(MODEL, s0, (x, y + 3), CONFIG)
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        train(MODEL, s0, (bad, y), CONFIG)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        train(MODEL, s0, (x[:16], y[:16]), CONFIG)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        train(MODEL, s0, (x[:4], y[:4]), CONFIG)
    with pytest.raises(ValueError, match="labels y must have shape"):
        train(MODEL, s0, (x, y[:-1]), CONFIG)
    with pytest.raises(TypeError, match="integers"):
        train(MODEL, s0, (x, y.astype(np.float32)), CONFIG)
    with pytest.raises(ValueError, match="num_epochs"):
        train_epochs(MODEL, s0, (x, y), CONFIG, 0)
    with pytest.raises(TypeError, match="TrainState"):
        train(MODEL, s0.params, (x, y), CONFIG)
