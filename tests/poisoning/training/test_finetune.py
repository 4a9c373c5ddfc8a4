"""Transfer learning: features, the convex head on frozen features (and its gradient), fine-tuning."""

import jax
import jax.numpy as jnp
import numpy as np

from poisoning.training import (
    extract_features,
    finetune,
    fit_linear_head,
    head_params,
    init_state,
    predict,
    with_head,
)
from tests.poisoning.training._tiny import CONFIG, MODEL, STEPS, data, key


def _features(n=40, d=4, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    f = rng.standard_normal((n, d)) + 1.5 * np.eye(k, d)[y]
    return jnp.asarray(f), jnp.asarray(y)


def test_linear_head_is_multinomial_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    f, y = _features()
    reg = 1e-2
    head = fit_linear_head(f, y, 3, reg=reg)
    sk = LogisticRegression(C=1.0 / (len(y) * reg), tol=1e-12, max_iter=10_000).fit(np.asarray(f), np.asarray(y))
    ours = jax.nn.softmax(f @ head["w"] + head["b"])
    np.testing.assert_allclose(ours, sk.predict_proba(np.asarray(f)), atol=1e-6)
    assert set(head_params(head)) == {"kernel", "bias"}


def test_linear_head_is_differentiable_in_the_features():
    """Hypergradient of a validation loss through the head's fit (implicit function theorem) against
    central finite differences, float64: what a feature-space poisoning attack needs."""
    f, y = _features(n=20)
    fv, yv = _features(n=10, seed=1)

    def val_loss(f):
        head = fit_linear_head(f, y, 3, reg=1e-1)
        logits = fv @ head["w"] + head["b"]
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(10), yv])

    g = jax.jit(jax.grad(val_loss))(f)
    fn = jax.jit(val_loss)
    eps = 1e-6
    for i, j in [(0, 0), (3, 2), (7, 1)]:
        e = jnp.zeros_like(f).at[i, j].set(eps)
        fd = (float(fn(f + e)) - float(fn(f - e))) / (2 * eps)
        np.testing.assert_allclose(float(g[i, j]), fd, rtol=1e-5, atol=1e-8)


def test_features_transfer_and_fine_tuning():
    x, y = data()
    s0 = init_state(MODEL, CONFIG, x, key(0), steps_per_epoch=STEPS)
    feats = extract_features(MODEL, s0, x)
    np.testing.assert_allclose(feats, MODEL.apply(s0.variables, x, features=True), rtol=1e-5, atol=1e-6)
    # a two-class task on frozen features: the convex head, put into the network
    y2 = (y > 0).astype(np.int32)
    two = MODEL.clone(num_classes=2)
    head = fit_linear_head(feats.astype(jnp.float32), y2, 2, reg=1e-2)
    moved = with_head(two, s0, CONFIG, key(1), x, head=head_params(head))
    np.testing.assert_allclose(predict(two, moved, x), feats @ head["w"] + head["b"], rtol=1e-4, atol=1e-5)
    for name in s0.params:
        if name != "head":
            assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(moved.params[name]),
                                                            jax.tree_util.tree_leaves(s0.params[name])))
    # end to end, with a new head: every layer moves
    cfg = CONFIG.replace(epochs=1)
    tuned = finetune(two, s0, (x, y2), cfg, key(2))
    assert tuned.params["head"]["kernel"].shape == (4, 2)
    assert not np.allclose(tuned.params["Conv_0"]["kernel"], s0.params["Conv_0"]["kernel"])
