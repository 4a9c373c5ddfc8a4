r"""Deep Partition Aggregation and SS-DPA: k base classifiers trained at once with ``jax.vmap``.

DPA (Levine & Feizi 2021) trains one base classifier :math:`f_i` per hash partition :math:`P_i`
(:mod:`poisoning.certify.partition`) and predicts with their plurality vote, certified by
:mod:`poisoning.certify.aggregate`. The certificate needs each :math:`f_i` to be a *deterministic
function of its own partition*; here:

- partition :math:`i` is row :math:`i` of :func:`~poisoning.certify.partition.partition_layout`,
  padded to a common ``size`` with a mask; padded slots get weight 0 and real ones weight
  ``size / |P_i|``, so the engine's weighted batch mean (:func:`poisoning.training.batch_loss`,
  :math:`\frac1B\sum_b w_b \ell_b`) is, for full-batch training (``batch_size = size``), exactly the mean
  loss over :math:`P_i`, whatever the padding, up to the order of a floating-point sum. For the
  certificate to hold bit for bit, the base learner is defined with a padded ``size`` fixed in advance
  (``partition_layout(..., size=S)``, S at least the largest clean partition): then :math:`f_i` is a
  function of :math:`P_i` alone (a poisoned partition larger than S is refused, not silently cut);
- the initialization and data order of :math:`f_i` come from ``fold_in(key, i)`` (a fixed seed per
  partition, never from the data), so training the partitions in chunks, or all at once, or in a
  Python loop gives the same model (threefry keys are ``vmap``-invariant);
- with mini-batches (``batch_size < size``) a batch mixes real and padded slots, so :math:`f_i`
  depends on ``size`` too: fix ``size`` in advance (an upper bound on any partition, poisoned or not)
  for the certificate to hold exactly.

The base learners (:func:`base_model`) are flax modules trained by the project's engine
(:mod:`poisoning.training`): ``"logistic"`` (softmax regression on the pixels, :class:`SoftmaxRegression`;
convex, zero-initialized, full-batch Adam), ``"cnn"`` (:class:`~poisoning.models.LeNet5`, no
BatchNorm) and ``"nin"`` (the paper's Network-in-Network, :class:`~poisoning.models.NetworkInNetwork`;
its BatchNorm statistics include the zero padding of short partitions: a documented approximation).

**SS-DPA** (label flips). In the paper each base classifier is *semi-supervised*: it uses the whole
unlabeled training set (RotNet features learned on all images, Gidaris et al. 2018) plus the labels of
its partition only. Here the unsupervised representation is a PCA of all training images
(:func:`pca_features`, label-free and computed once), and each base classifier is the logistic base
learner on those features with its partition's labels. A label flip changes neither the images (so
neither the features nor the hash) nor any partition but one, so Theorem 2 applies as stated. PCA is a
much weaker representation than RotNet: a documented simplification.

Reference: A. Levine, S. Feizi, *Deep Partition Aggregation: Provable Defenses against General
Poisoning Attacks*, ICLR 2021.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bilevel._checks import error_if
from poisoning.models import LeNet5, NetworkInNetwork
from poisoning.training import TrainConfig, init_state, predict, train

__all__ = [
    "BASE_LEARNERS",
    "SoftmaxRegression",
    "base_model",
    "default_train_config",
    "partition_weights",
    "train_partitions",
    "partition_votes",
    "train_and_vote",
    "pca_features",
]

BASE_LEARNERS = ("logistic", "cnn", "nin")


class SoftmaxRegression(nn.Module):
    """Multinomial logistic regression on the flattened input: ``head(x.reshape(n, -1))``.

    Zero-initialized (the loss is convex, so the initialization does not matter and every base model
    starts from the same point). ``features=True`` returns the flattened input.
    """

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False, features: bool = False):
        x = jnp.asarray(x)
        x = x.reshape(x.shape[0], -1)
        if features:
            return x
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name="head")(x)


def base_model(name: str, num_classes: int, image_shape, **knobs) -> nn.Module:
    """The base learner ``name`` in :data:`BASE_LEARNERS` for images of ``image_shape`` ``(H, W[, C])``.

    ``"cnn"`` is LeNet-5 with its zero padding chosen to bring ``H`` to 32 (2 for MNIST, 12 for 8x8
    digits); ``"nin"`` accepts ``channels=(c1, c2, c3)`` (default the paper's (192, 160, 96)).
    """
    if name not in BASE_LEARNERS:
        raise ValueError(f"argument 'name' must be one of {BASE_LEARNERS}, got {name!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"argument 'num_classes' must be an int >= 2, got {num_classes!r}")
    if name == "logistic":
        return SoftmaxRegression(num_classes=num_classes, **knobs)
    h = int(image_shape[0])
    if name == "cnn":
        knobs.setdefault("pad", max((32 - h) // 2, 0))
        return LeNet5(num_classes=num_classes, **knobs)
    return NetworkInNetwork(num_classes=num_classes, **knobs)


def default_train_config(name: str, size: int, *, quick: bool = False) -> TrainConfig:
    """A training recipe per base learner for partitions padded to ``size``.

    - ``logistic``: full batch, SGD with momentum 0.9 (lr 0.3), weight decay 1e-3, 100 steps (30 with
      ``quick``);
    - ``cnn``: full batch, SGD with momentum 0.9 (lr 0.05), 100 steps (30 with ``quick``);
    - ``nin``: the paper's recipe as far as a CPU allows: SGD (lr 0.1, momentum 0.9, weight decay
      5e-4), batch 16, 200 epochs with a step decay at 60/120/160 (the paper's partitions are ~50 images).

    SGD rather than Adam for the full-batch learners: Adam divides by the root of the squared gradient,
    which turns the rounding noise of near-zero gradient coordinates into full-size steps, so the
    model would depend (visibly, in float32) on the order of the padded sum; with SGD the padding
    changes the parameters by float rounding only (tested).
    """
    if name not in BASE_LEARNERS:
        raise ValueError(f"argument 'name' must be one of {BASE_LEARNERS}, got {name!r}")
    if name == "logistic":
        return TrainConfig(epochs=30 if quick else 100, batch_size=size, optimizer="sgd", learning_rate=0.3,
                           weight_decay=1e-3, momentum=0.9)
    if name == "cnn":
        return TrainConfig(epochs=30 if quick else 100, batch_size=size, optimizer="sgd", learning_rate=0.05,
                           momentum=0.9)
    return TrainConfig(epochs=5 if quick else 200, batch_size=min(16, size), optimizer="sgd", learning_rate=0.1,
                       momentum=0.9, weight_decay=5e-4, schedule="step", milestones=(60.0, 120.0, 160.0),
                       decay=0.2)


def partition_weights(mask) -> jax.Array:
    """Per-slot loss weights ``size / |P_i|`` on a partition's samples and 0 on padding, ``(k, size)``:
    the engine's mean over a full padded batch is then the mean over the partition (0 for an empty one)."""
    mask = jnp.asarray(mask)
    if mask.ndim != 2 or mask.dtype != jnp.bool_:
        raise ValueError(f"argument 'mask' must be a (k, size) bool array, got {mask.dtype}{mask.shape}")
    counts = jnp.sum(mask, axis=1, keepdims=True)
    return jnp.where(mask, mask.shape[1] / jnp.maximum(counts, 1), 0.0).astype(jnp.float32)


def _check_training_data(X, y, num_classes):
    X, y = jnp.asarray(X), jnp.asarray(y)
    if X.ndim not in (3, 4):
        raise ValueError(f"argument 'X' must be images (n, H, W[, C]), got shape {X.shape}")
    if y.shape != (X.shape[0],) or not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(f"argument 'y' must be ({X.shape[0]},) integer labels, got {y.dtype}{y.shape}")
    if jnp.issubdtype(X.dtype, jnp.floating):
        error_if(None, jnp.any(~jnp.isfinite(X)), "argument 'X' contains NaN or inf", error=ValueError)
    if num_classes is not None:
        error_if(None, jnp.any((y < 0) | (y >= num_classes)),
                 f"argument 'y': labels must be in [0, {num_classes})", error=ValueError)
    return X, y


def _train_rows(model, config, X, y, partitions, index, mask, key):
    size = index.shape[1]
    if size % config.batch_size:
        raise ValueError(f"the padded partition size ({size}) must be a multiple of config.batch_size "
                         f"({config.batch_size}); use batch_size=size for full-batch training")
    steps = size // config.batch_size
    dtype = jnp.float64 if config.compute_dtype == "float64" else None  # float64 parameters on request
    weights = partition_weights(mask).astype(dtype or jnp.float32)

    def one(p, idx, w):
        k = jax.random.fold_in(key, p)
        xi, yi = jnp.take(X, idx, axis=0), jnp.take(y, idx, axis=0)
        state = init_state(model, config, xi, jax.random.fold_in(k, 0), steps_per_epoch=steps, dtype=dtype)
        return train(model, state, (xi, yi, w), config, key=jax.random.fold_in(k, 1))

    return jax.vmap(one)(partitions, index, weights)


def train_partitions(model: nn.Module, config: TrainConfig, X, y, index, mask, partitions, key):
    """Train the base learners of ``partitions`` (a ``(m,)`` int array of partition ids) at once.

    Args:
      model, config: the base learner and its recipe (:func:`base_model`, :func:`default_train_config`).
      X, y: the whole training set (images ``(n, H, W[, C])`` and labels).
      index, mask: the ``(k, size)`` layout of :func:`~poisoning.certify.partition.partition_layout`.
      partitions: which rows to train (e.g. ``jnp.arange(200) + 400`` for a chunk).
      key: the run's key; partition ``i`` uses ``fold_in(key, i)`` (so chunks compose).

    Returns the stacked :class:`~poisoning.training.TrainState` (leading axis ``m``).
    """
    X, y = _check_training_data(X, y, getattr(model, "num_classes", None))
    partitions = jnp.asarray(partitions, jnp.int32)
    index, mask = jnp.asarray(index), jnp.asarray(mask)
    return _train_rows(model, config, X, y, partitions, index[partitions], mask[partitions], key)


def partition_votes(model: nn.Module, states, X_test, *, batch_size: int = 1000) -> jax.Array:
    """Each stacked base model's predicted class on ``X_test``: ``(m, n_test)`` int32."""
    def one(state):
        return jnp.argmax(predict(model, state, X_test, batch_size=batch_size), axis=-1).astype(jnp.int32)

    return jax.vmap(one)(states)


@functools.partial(jax.jit, static_argnames=("model", "config", "batch_size"))
def _train_and_vote(model, config, X, y, index, mask, partitions, X_test, key, batch_size):
    states = _train_rows(model, config, X, y, partitions, index[partitions], mask[partitions], key)
    return partition_votes(model, states, X_test, batch_size=batch_size)


def train_and_vote(model: nn.Module, config: TrainConfig, X, y, index, mask, partitions, X_test, key,
                   *, batch_size: int = 1000) -> jax.Array:
    """:func:`train_partitions` then :func:`partition_votes` in one compiled call: the votes
    ``(len(partitions), n_test)`` of the chunk's base models (their parameters are not kept, so a chunk
    of hundreds of models fits in memory)."""
    X, y = _check_training_data(X, y, getattr(model, "num_classes", None))
    X_test = jnp.asarray(X_test)
    if X_test.ndim != X.ndim or X_test.shape[1:] != X.shape[1:]:
        raise ValueError(f"argument 'X_test' must be images shaped like X's {X.shape[1:]}, got {X_test.shape}")
    return _train_and_vote(model, config, X, y, jnp.asarray(index), jnp.asarray(mask),
                           jnp.asarray(partitions, jnp.int32), X_test, key, min(batch_size, X_test.shape[0]))


@functools.partial(jax.jit, static_argnames=("dim", "whiten"))
def _pca(X, dim, whiten):
    flat = X.reshape(X.shape[0], -1).astype(jnp.float32)
    mean = jnp.mean(flat, axis=0)
    centred = flat - mean
    cov = centred.T @ centred / flat.shape[0]
    _, vecs = jnp.linalg.eigh(cov)
    comps = vecs[:, ::-1][:, :dim]
    # a deterministic sign: the largest-magnitude entry of each component is positive
    signs = jnp.sign(comps[jnp.argmax(jnp.abs(comps), axis=0), jnp.arange(dim)])
    comps = comps * jnp.where(signs == 0, 1.0, signs)
    scale = jnp.sqrt(jnp.mean((centred @ comps) ** 2, axis=0)) + 1e-6
    if not whiten:  # one common scale (the first component's): the variances' ratios are kept
        scale = jnp.full_like(scale, scale[0])
    return mean, comps / scale


def pca_features(X_unlabeled, dim: int, *, whiten: bool = True):
    """A label-free representation for SS-DPA: ``transform(X) -> (n, 1, dim)`` PCA features.

    The principal directions are those of *all* training images (no labels), each scaled to unit
    variance (``whiten=True``) or all by the first one's standard deviation (``whiten=False``). The
    output has a singleton "row" axis so the image engine (``(n, H, W)`` inputs) trains
    :class:`SoftmaxRegression` on it unchanged. Returns the function ``transform``.
    """
    X = jnp.asarray(X_unlabeled)
    if X.ndim < 2:
        raise ValueError(f"argument 'X_unlabeled' must be (n, ...) images, got shape {X.shape}")
    d = int(np.prod(X.shape[1:]))
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= d:
        raise ValueError(f"argument 'dim' must be an int in [1, {d}], got {dim!r}")
    if jnp.issubdtype(X.dtype, jnp.floating):
        error_if(None, jnp.any(~jnp.isfinite(X)), "argument 'X_unlabeled' contains NaN or inf", error=ValueError)
    mean, proj = _pca(X, dim, bool(whiten))

    def transform(images):
        images = jnp.asarray(images)
        flat = images.reshape(images.shape[0], -1).astype(jnp.float32)
        return ((flat - mean) @ proj)[:, None, :]

    return transform
