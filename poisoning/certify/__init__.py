"""Certified defenses against data poisoning: certificates that bound what *any* attack could do.

- :mod:`~poisoning.certify.partition`: the hash partition of Deep Partition Aggregation (pixel sum mod
  k; label-independent), laid out as padded, masked rows for ``vmap``;
- :mod:`~poisoning.certify.aggregate`: the plurality vote (ties to the smaller class) and the DPA /
  SS-DPA certified radius :math:`\\lfloor (n_c - \\max_{c' \\ne c}(n_{c'} + [c' < c]))/2 \\rfloor`,
  certified accuracy and median certified robustness;
- :mod:`~poisoning.certify.finite_aggregation`: Finite Aggregation (each sample in d of k*d base learners)
  and its certificate;
- :mod:`~poisoning.certify.label_flip_smoothing`: randomized smoothing over label flips (Rosenfeld et al.
  2020), the Neyman-Pearson radius and a Chernoff-bounded ridge classifier;
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
from poisoning.certify.steinhardt import (  # noqa: E402
    CertifyConfig,
    DataDependentRegion,
    certify,
    certify_data_dependent,
    certify_sweep,
    oracle_region,
    worst_point_data_dependent,
)

__all__ += ["steinhardt", "CertifyConfig", "certify", "certify_sweep", "oracle_region", "DataDependentRegion",
            "certify_data_dependent", "worst_point_data_dependent"]

# Finite Aggregation (Wang, Levine & Feizi 2022)
from poisoning.certify import finite_aggregation  # noqa: E402
from poisoning.certify.finite_aggregation import (  # noqa: E402
    bucket_learners,
    fa_certified_radius,
    fa_layout,
    spread_shifts,
)

__all__ += ["finite_aggregation", "spread_shifts", "bucket_learners", "fa_layout", "fa_certified_radius"]

# label-flip randomized smoothing (Rosenfeld et al. 2020)
from poisoning.certify import label_flip_smoothing  # noqa: E402
from poisoning.certify.label_flip_smoothing import (  # noqa: E402
    certify_linear,
    chernoff_bounds,
    flip_radius,
    required_probability,
    ridge_label_weights,
)

__all__ += ["label_flip_smoothing", "required_probability", "flip_radius", "ridge_label_weights", "chernoff_bounds",
            "certify_linear"]
