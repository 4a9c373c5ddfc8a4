"""SS, AC and CI on synthetic features: a planted, well-separated poison cluster is found (TPR ~ 1, low
FPR), a clean set is mostly left alone, and CI's impurity and blur match hand computations."""

import numpy as np
import pytest

from poisoning.defenses.activation_clustering import activation_clustering
from poisoning.defenses.cluster_impurity import (
    average_filter,
    cluster_impurity,
    fit_gmm_bic,
    impurity,
    impurity_detection,
    median_filter,
    prediction_unchanged,
)
from poisoning.defenses.detection import detection_rates
from poisoning.defenses.spectral_signatures import spectral_scores, spectral_signatures

N_PER_CLASS, DIM, N_POISON = 150, 12, 15


def _features(poison: bool, seed=0):
    """3 Gaussian classes; with ``poison``, 15 samples of class 0 replaced by a far-away tight cluster."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), N_PER_CLASS)
    F = rng.normal(size=(len(y), DIM)) + 6.0 * np.eye(3, DIM)[y]
    is_poison = np.zeros(len(y), bool)
    if poison:
        idx = rng.choice(N_PER_CLASS, N_POISON, replace=False)          # rows of class 0
        is_poison[idx] = True
        F[idx] = rng.normal(size=(N_POISON, DIM)) * 0.5 + 8.0 * np.eye(DIM)[5]
    return F, y, is_poison


def _images_and_predictor(y, is_poison):
    """8x8 images whose top half encodes the true class as a constant grey level (a blur keeps it; the
    poisons, labelled 0, are images of class 1) and whose poisons carry one bright pixel at (6, 6) (a 2x2
    blur dims it to <= 0.25); the 'network' says class 0 when that pixel exceeds 0.9, else reads the
    grey level."""
    true_class = np.where(is_poison, 1, y)
    x = np.zeros((len(y), 8, 8, 1))
    x[:, :4] = (0.2 + 0.2 * true_class)[:, None, None, None]
    x[is_poison, 6, 6] = 1.0

    def predict(im):
        im = np.asarray(im)
        level = np.rint((im[:, 1, 1, 0] - 0.2) / 0.2).astype(int)
        return np.where(im[:, 6, 6, 0] > 0.9, 0, level)

    return x, predict


def test_detection_rates_counts():
    r = detection_rates(np.array([1, 1, 0, 0, 1], bool), np.array([1, 0, 0, 1, 1], bool))
    assert (r.tpr, r.fpr, r.true_positives, r.false_positives) == (2 / 3, 0.5, 2, 1)
    assert detection_rates(np.array([True, False]), np.zeros(2, bool)).tpr is None
    with pytest.raises(TypeError, match="flagged"):
        detection_rates(np.array([1, 0]), np.array([True, False]))


def test_spectral_signatures_ranks_the_planted_cluster_first():
    F, y, p = _features(poison=True)
    det = spectral_signatures(F, y, eps=N_POISON / N_PER_CLASS)
    r = detection_rates(det.flagged, p)
    assert r.tpr == 1.0
    # it removes round(1.5 eps n_c) = 23 per class by construction: FPR = (3 * 23 - 15) / 435
    assert [c["removed"] for c in det.per_class.values()] == [23] * 3
    assert det.flagged.sum() == 69 and r.fpr == pytest.approx((69 - 15) / 435)
    s = spectral_scores(F[y == 0])
    assert np.all(np.sort(s)[-N_POISON:] == np.sort(s[p[y == 0]]))
    with pytest.raises(ValueError, match="eps"):
        spectral_signatures(F, y, eps=0.0)


def test_activation_clustering_finds_the_cluster_and_spares_a_clean_set():
    F, y, p = _features(poison=True)
    dets = {c: activation_clustering(F, y, n_components=3, criterion=c) for c in ("relative_size", "both")}
    for criterion, det in dets.items():
        r = detection_rates(det.flagged, p)
        assert r.tpr == 1.0 and r.fpr <= 0.01, criterion
    # the silhouette alone is high for any 2-means split of a low-dimensional Gaussian; the poisoned
    # class has the highest one
    sil = {c: d["silhouette"] for c, d in dets["relative_size"].per_class.items()}
    assert max(sil, key=sil.get) == 0
    Fc, yc, pc = _features(poison=False, seed=1)
    r = detection_rates(activation_clustering(Fc, yc, n_components=3).flagged, pc)
    assert r.fpr <= 0.05
    with pytest.raises(ValueError, match="criterion"):
        activation_clustering(F, y, criterion="size")
    with pytest.raises(ValueError, match="reduction"):
        activation_clustering(F, y, reduction="svd")
    with pytest.raises(ValueError, match="features"):
        activation_clustering(F[:, 0], y)


def test_activation_clustering_pca_keeps_the_variance_that_ica_whitens_away():
    """One class with two handwriting 'styles' (a tight +-1.5 split) and 10 % poison far out (8 +- 1.5)
    along another direction: unit-variance ICA sources weigh the two directions alike and 2-means
    splits the styles 50/50; the principal components keep the poison direction's variance and
    2-means isolates the poison."""
    rng = np.random.default_rng(0)
    n = 300
    y = np.zeros(n, int)
    F = rng.normal(size=(n, DIM)) * 0.3
    F[:, 6] += np.where(np.arange(n) % 2 == 0, 1.5, -1.5)
    p = np.zeros(n, bool)
    p[rng.choice(n, 30, replace=False)] = True
    F[p, 5] += 8.0 + 1.5 * rng.normal(size=30)
    ica = activation_clustering(F, y, n_components=3, reduction="ica")
    pca = activation_clustering(F, y, n_components=3, reduction="pca")
    assert ica.per_class[0]["relative_size"] > 0.45 and not ica.flagged[p].any()
    r = detection_rates(pca.flagged, p)
    assert r.tpr == 1.0 and r.fpr == 0.0


def test_activation_clustering_exclusionary_reclassification():
    """A model retrained without the candidate clusters reads a poison cluster as its source class (1)
    and a legitimate small cluster as its own label: only the poison is flagged, on one retraining."""
    F, y, p = _features(poison=True)
    x, backdoored = _images_and_predictor(y, p)
    calls = []

    def retrain(keep):
        calls.append(keep.copy())
        learned_trigger = bool(np.any(keep & p))  # the backdoor survives only if some poison is kept

        def predict(im):
            im = np.asarray(im)
            return backdoored(im) if learned_trigger else np.rint((im[:, 1, 1, 0] - 0.2) / 0.2).astype(int)

        return predict

    det = activation_clustering(F, y, n_components=3, criterion="exclusionary", images=x, retrain=retrain)
    r = detection_rates(det.flagged, p)
    assert len(calls) == 1 and not np.any(calls[0] & p)  # one retraining, every poison left out
    assert r.tpr == 1.0 and r.fpr <= 0.01
    assert det.per_class[0]["poisoned"] and det.per_class[0]["reclass_other_class"] == 1
    assert not det.per_class[1]["poisoned"] and not det.per_class[2]["poisoned"]
    Fc, yc, pc = _features(poison=False, seed=1)
    xc, _ = _images_and_predictor(yc, pc)
    clean = activation_clustering(Fc, yc, n_components=3, criterion="exclusionary", images=xc, retrain=retrain)
    assert not clean.flagged.any()  # a clean set's small clusters keep their labels
    with pytest.raises(TypeError, match="retrain"):
        activation_clustering(F, y, criterion="exclusionary", images=x)
    with pytest.raises(ValueError, match="images"):
        activation_clustering(F, y, criterion="exclusionary", images=x[:5], retrain=retrain)


def test_cluster_impurity_flags_only_the_impure_cluster():
    F, y, p = _features(poison=True)
    x, predict = _images_and_predictor(y, p)
    det = cluster_impurity(F, y, x, predict, n_dims=None, max_components=4)
    r = detection_rates(det.flagged, p)
    assert r.tpr == 1.0 and r.fpr == 0.0
    assert det.per_class[0]["n_components"] >= 2
    bad = [c for c in det.per_class[0]["clusters"] if c["flagged"]]
    assert len(bad) == 1 and bad[0]["impurity"] == np.inf     # every blurred poison changes its decision
    # the same mixtures judged again without refitting: the 2x2 blur reproduces the detection; a filter that
    # leaves the trigger intact (what the 2x2 average does to a single-source pixel backdoor on MNIST, see
    # experiments.xiang2019) leaves every decision unchanged and flags nothing
    assignments = {c: info["assignment"] for c, info in det.per_class.items()}
    again = impurity_detection(y, assignments, prediction_unchanged(predict, x, average_filter))
    np.testing.assert_array_equal(again.flagged, det.flagged)
    intact = impurity_detection(y, assignments, prediction_unchanged(predict, x, lambda im: im, batch_size=7))
    assert not intact.flagged.any() and all(c["impurity"] == 0.0 for c in intact.per_class[0]["clusters"])
    with pytest.raises(ValueError, match="unchanged"):
        impurity_detection(y, assignments, np.ones(len(y) - 1, bool))
    with pytest.raises(ValueError, match="assignments"):
        impurity_detection(y, {0: assignments[0][:-1]}, np.ones(len(y), bool))
    Fc, yc, pc = _features(poison=False, seed=1)
    xc, predict_c = _images_and_predictor(yc, pc)
    r = detection_rates(cluster_impurity(Fc, yc, xc, predict_c).flagged, pc)
    assert r.fpr == 0.0
    with pytest.raises(ValueError, match="images"):
        cluster_impurity(F, y, x[:-1], predict)


def test_impurity_and_filters_by_hand():
    assert impurity([True, True, False, False]) == pytest.approx(np.log(2))
    assert impurity([True, True, True, False]) == pytest.approx(-np.log(0.75))
    assert impurity([True]) == 0.0 and impurity([False, False]) == np.inf
    x = np.arange(9.0).reshape(1, 3, 3)
    # 2x2 window reaching down / right, edge replicated: out[i, j] = mean(x[i:i+2, j:j+2])
    want = np.array([[2.0, 3.0, 3.5], [5.0, 6.0, 6.5], [6.5, 7.5, 8.0]])
    np.testing.assert_allclose(average_filter(x, 2)[0], want)
    np.testing.assert_allclose(median_filter(x[..., None], 3)[0, 1, 1, 0], 4.0)


def test_bic_grows_components_until_it_stops_improving():
    rng = np.random.default_rng(0)
    one = rng.normal(size=(300, 2))
    two = np.concatenate([one, rng.normal(size=(300, 2)) + 12.0])
    assert fit_gmm_bic(one, max_components=4)[0].n_components == 1
    gmm, bics = fit_gmm_bic(two, max_components=4)
    assert gmm.n_components == 2 and bics[1] < bics[0] and bics[2] >= bics[1] and len(bics) == 3
    gmm2, bics2 = fit_gmm_bic(two, max_components=4, patience=2)   # the author's: stop at the 2nd failure
    assert gmm2.n_components == 2 and len(bics2) == 4 and bics2[:3] == bics
    with pytest.raises(ValueError, match="patience"):
        fit_gmm_bic(two, patience=0)
