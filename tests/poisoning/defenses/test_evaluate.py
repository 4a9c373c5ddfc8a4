"""Defense evaluation: copies as rows, sanitize-and-retrain, the per-defense table (against the victim record)."""

import numpy as np
import pytest

from poisoning import victims
from poisoning.attack import PoisonPoints
from poisoning.defenses.evaluate import (
    evaluate_defenses,
    expand_copies,
    fit_poisoned,
    fit_victim,
    hinge_score,
    make_defense,
    sanitize_and_train,
)
from poisoning.defenses.sanitizers import SphereDefense, linear_hinge_losses


def _data(n, d=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = np.clip(0.5 + 0.2 * (2 * y[:, None] - 1) + 0.1 * rng.standard_normal((n, d)), 0, 1)
    return X, y


def test_expand_copies():
    X, y = _data(6)
    poison = PoisonPoints(np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]), np.array([1, 0]), counts=np.array([2, 1]))
    Xs, ys, is_p = expand_copies(X, y, poison)
    assert Xs.shape == (9, 3) and is_p.tolist() == [False] * 6 + [True] * 3
    np.testing.assert_array_equal(Xs[6:], [[0, 0, 0], [0, 0, 0], [1, 1, 1]])
    np.testing.assert_array_equal(ys[6:], [1, 1, 0])
    Xs, _, is_p = expand_copies(X, y, PoisonPoints(poison.X, poison.y))  # no counts: one copy each
    assert is_p.sum() == 2
    with pytest.raises(ValueError, match="counts"):
        expand_copies(X, y, PoisonPoints(poison.X, poison.y, counts=np.array([1.5, 1.0])))
    with pytest.raises(ValueError, match="PoisonPoints"):
        expand_copies(X, y, "not a poison")


def test_copies_as_weights_and_table():
    """Weights of integer copies = the copies as rows (the same training objective); the table's numbers
    equal the sanitize-and-retrain done by hand; a far poison is removed by the sphere, a poison at its
    class mean with k + 1 copies is kept by every defense (k-NN score 0)."""
    X, y = _data(40)
    Xt, yt = _data(30, seed=1)
    victim = victims.smooth_svm(0.05, 0.1)
    far = PoisonPoints(np.array([[3.0, -2.0, 3.0]]), np.array([1]), counts=np.array([6]))
    inside = PoisonPoints(X[y == 0].mean(0, keepdims=True), np.array([0]), counts=np.array([6]))
    Xs, ys, _ = expand_copies(X, y, far)
    p_rows, p_weights = fit_victim(victim, Xs, ys), fit_poisoned(victim, X, y, far)
    np.testing.assert_allclose(np.asarray(p_rows["w"]), np.asarray(p_weights["w"]), atol=1e-10)
    np.testing.assert_allclose(float(p_rows["b"]), float(p_weights["b"]), atol=1e-10)
    np.testing.assert_allclose(hinge_score(victim, p_rows, Xs, ys),
                               linear_hinge_losses(p_rows["w"], p_rows["b"], Xs, ys), atol=1e-12)

    rows = evaluate_defenses(victim, X, y, Xt, yt, {"far": far, "inside": inside}, fraction=0.25,
                             loss_score=hinge_score)
    assert [r["defense"] for r in rows] == ["sphere", "slab", "loss", "knn"]
    clean = fit_victim(victim, X, y)
    err = lambda p: float(np.mean(np.asarray(victim.predict(p, Xt)) != yt))
    params, keep = sanitize_and_train(victim, Xs, ys, "sphere", 0.25, warm_start=clean)
    # the sphere defense by hand: fit on the poisoned data, drop round(0.05 n_c) per class
    keep_hand, _ = SphereDefense(num_classes=2).sanitize(Xs, ys, 0.25)
    np.testing.assert_array_equal(keep, np.asarray(keep_hand))
    assert (~keep).sum() == sum(round(0.25 * np.sum(ys == c)) for c in (0, 1))
    for r in rows:
        assert r["clean_error"] == err(clean)
        assert r["far_no_defense"] == err(fit_poisoned(victim, X, y, far))
        assert r["inside_poison_kept"] == 1.0
    sphere = rows[0]
    assert sphere["far_poison_kept"] == 0.0 and sphere["far_with_defense"] == err(params)
    # the loss defense scores by the victim's own loss by default (the smoothed hinge here)
    keep, scores = make_defense("loss", victim, warm_start=clean).sanitize(Xs, ys, 0.25)
    p_poisoned = fit_victim(victim, Xs, ys, warm_start=clean)
    np.testing.assert_allclose(scores, victim.loss(p_poisoned, Xs, ys), rtol=1e-12)
    assert (~np.asarray(keep)).sum() == sum(round(0.25 * np.sum(ys == c)) for c in (0, 1))
    with pytest.raises(ValueError, match="fraction"):
        evaluate_defenses(victim, X, y, Xt, yt, {"far": far}, fraction=1.0)
    with pytest.raises(ValueError, match="unknown defense"):
        evaluate_defenses(victim, X, y, Xt, yt, {"far": far}, defenses=("pca",))


def test_newer_defenses_in_the_table():
    """SEVER, RONI, k-NN label sanitization and SVD run through evaluate_defenses: SEVER removes
    round(f n) points in all, RONI and SVD round(f n_c) per class (equal to their sanitizers by hand), label
    sanitization relabels a flipped copy sitting among the other class (kept 0) and keeps a clean-label one."""
    from poisoning.defenses.evaluate import DEFENSES, KOH_DEFENSES
    from poisoning.defenses.svd import SVDDefense

    assert set(KOH_DEFENSES) < set(DEFENSES) and {"sever", "roni", "label_sanitization", "svd"} <= set(DEFENSES)
    X, y = _data(30)
    Xt, yt = _data(20, seed=1)
    victim = victims.smooth_svm(0.05, 0.1)
    flip = PoisonPoints(X[y == 0][:1], np.array([1]))                       # a class-0 point labelled 1
    same = PoisonPoints(X[y == 1][:1] + 0.01, np.array([1]))                # a class-1 point, right label
    new = ("label_sanitization", "svd")
    rows = evaluate_defenses(victim, X, y, Xt, yt, {"flip": flip, "same": same}, defenses=new, fraction=0.2)
    assert [r["defense"] for r in rows] == list(new)
    by = {r["defense"]: r for r in rows}
    assert by["label_sanitization"]["flip_poison_kept"] == 0.0
    assert by["label_sanitization"]["same_poison_kept"] == 1.0
    assert all(0.0 <= r["flip_with_defense"] <= 1.0 for r in rows)
    Xs, ys, _ = expand_copies(X, y, flip)
    clean = fit_victim(victim, X, y)
    _, keep = sanitize_and_train(victim, Xs, ys, "svd", 0.2, warm_start=clean, rank=10)   # rank capped at d - 1
    keep_hand, _ = SVDDefense(rank=2, num_classes=2).sanitize(Xs, ys, 0.2)
    np.testing.assert_array_equal(keep, np.asarray(keep_hand))
    _, keep = sanitize_and_train(victim, Xs, ys, "sever", 0.2, warm_start=clean, sever_rounds=2)
    assert (~keep).sum() == round(0.2 * len(ys))
    _, keep = sanitize_and_train(victim, Xs, ys, "roni", 0.2, warm_start=clean, roni_trials=1)
    assert (~keep).sum() == sum(round(0.2 * np.sum(ys == c)) for c in (0, 1))
    with pytest.raises(ValueError, match="unknown defense"):
        evaluate_defenses(victim, X, y, Xt, yt, {"flip": flip}, defenses=("nope",))


def test_a_stalled_fit_continues_from_its_last_iterate():
    """A Newton solve capped at 2 iterations stops short of the optimum; fit_victim continues it from its last
    iterate (the same compiled solve) and reaches the 50-iteration fit; without continuations it raises."""
    from bilevel import ConvergenceError

    X, y = _data(40)
    full = fit_victim(victims.smooth_svm(0.05, 0.1), X, y)
    short = victims.smooth_svm(0.05, 0.1, maxiter=2)
    with pytest.raises(ConvergenceError, match="did not converge"):
        fit_victim(short, X, y, continuations=0)
    params = fit_victim(short, X, y, continuations=5)
    np.testing.assert_allclose(params["w"], full["w"], atol=1e-6)
    np.testing.assert_allclose(params["b"], full["b"], atol=1e-6)
    with pytest.raises(ValueError, match="continuations"):
        fit_victim(short, X, y, continuations=-1)
