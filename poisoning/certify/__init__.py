"""Certified defenses against data poisoning: certificates that bound what *any* attack could do.

- :mod:`~poisoning.certify.partition`: the hash partition of Deep Partition Aggregation (pixel sum mod
  k; label-independent), laid out as padded, masked rows for ``vmap``;
- :mod:`~poisoning.certify.aggregate`: the plurality vote (ties to the smaller class) and the DPA /
  SS-DPA certified radius :math:`\\lfloor (n_c - \\max_{c' \\ne c}(n_{c'} + [c' < c]))/2 \\rfloor`,
  certified accuracy and median certified robustness;
- :mod:`~poisoning.certify.dpa`: the k base learners (logistic, LeNet-5, NiN) trained at once with
  ``jax.vmap`` by :mod:`poisoning.training`, and the label-free PCA representation of SS-DPA.

Reference: A. Levine, S. Feizi, *Deep Partition Aggregation: Provable Defenses against General
Poisoning Attacks*, ICLR 2021 (``experiments/levine2021.py`` reproduces its MNIST table).
"""

from poisoning.certify import aggregate, dpa, partition
from poisoning.certify.aggregate import (
    certified_accuracy,
    certified_radius,
    certify_votes,
    median_certified,
    plurality,
    vote_counts,
)
from poisoning.certify.dpa import (
    BASE_LEARNERS,
    SoftmaxRegression,
    base_model,
    default_train_config,
    partition_votes,
    partition_weights,
    pca_features,
    train_and_vote,
    train_partitions,
)
from poisoning.certify.partition import (
    check_num_partitions,
    partition_indices,
    partition_layout,
    partition_sizes,
    pixel_sum_hash,
)

__all__ = [
    "partition",
    "aggregate",
    "dpa",
    # the hash partition
    "pixel_sum_hash",
    "partition_indices",
    "partition_sizes",
    "partition_layout",
    "check_num_partitions",
    # the vote and the certificate
    "vote_counts",
    "plurality",
    "certified_radius",
    "certify_votes",
    "certified_accuracy",
    "median_certified",
    # the base learners
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

# the certified bound of Steinhardt, Koh & Liang 2017 (issue 13)
from poisoning.certify import steinhardt  # noqa: E402
from poisoning.certify.steinhardt import CertifyConfig, certify, certify_sweep, oracle_region  # noqa: E402

__all__ += ["steinhardt", "CertifyConfig", "certify", "certify_sweep", "oracle_region"]
