"""The victim record: every learner against an independent implementation (scikit-learn), one label
convention, weights meaning presence, the fixed-block fast path, warm starts."""

import jax
import numpy as np
import pytest
from sklearn.linear_model import ElasticNet, Lasso, LogisticRegression, Ridge
from sklearn.svm import SVC

from poisoning import victims


def _data(n=40, d=4, seed=0, k=2):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    X = 0.5 + 0.2 * np.eye(k, d)[y] - 0.2 * (y == 0)[:, None] + 0.15 * rng.standard_normal((n, d))
    return X, y


def test_svm_matches_scikit_learn_and_fast_path():
    X, y = _data()
    v = victims.svm(1.0)
    p = v.fit(X, y)
    ref = SVC(kernel="linear", C=1.0, tol=1e-10).fit(X, y)
    np.testing.assert_allclose(np.asarray(p.w), ref.coef_[0], atol=1e-5)
    np.testing.assert_allclose(float(p.b), ref.intercept_[0], atol=1e-5)
    np.testing.assert_array_equal(np.asarray(v.predict(p, X)), ref.predict(X))
    # the Gram-cached fixed-block fit is the same fit
    cache = v.prepare(X[:30], y[:30])
    q = v.fit_appended(cache, X[:30], y[:30], X[30:], y[30:])
    np.testing.assert_allclose(np.asarray(q.w), np.asarray(p.w), atol=1e-10)
    # weight 0 removes an example; a cold-start placeholder gives the cold fit
    w = np.ones(40)
    w[-5:] = 0
    # (against scikit-learn on the 35 kept rows: one compilation fewer than a second fit of our own)
    removed = v.fit(X, y, w)
    ref35 = SVC(kernel="linear", C=1.0, tol=1e-10).fit(X[:-5], y[:-5])
    np.testing.assert_allclose(np.asarray(removed.w), ref35.coef_[0], atol=1e-5)
    np.testing.assert_allclose(float(removed.b), ref35.intercept_[0], atol=1e-5)
    warm = v.fit(X, y, w, warm_start=v.init(40, 4))
    np.testing.assert_allclose(np.asarray(warm.w), np.asarray(removed.w), atol=1e-10)


def test_logistic_and_softmax_match_scikit_learn():
    X, y = _data(k=2)
    reg = 0.05
    p = victims.logistic(reg).fit(X, y)
    ref = LogisticRegression(C=1.0 / (reg * len(y)), tol=1e-12, max_iter=10000).fit(X, y)
    np.testing.assert_allclose(np.asarray(p["w"]), ref.coef_[0], rtol=1e-4)
    X3, y3 = _data(60, 4, 1, k=3)
    p3 = victims.softmax(3, reg).fit(X3, y3)
    ref3 = LogisticRegression(C=1.0 / (reg * len(y3)), tol=1e-12, max_iter=10000).fit(X3, y3)
    # multinomial logits agree up to the common shift of the classes
    logits = np.asarray(victims.softmax(3, reg).decision(p3, X3))
    ref_logits = ref3.decision_function(X3)
    np.testing.assert_allclose(logits - logits.mean(1, keepdims=True), ref_logits - ref_logits.mean(1, keepdims=True),
                               atol=2e-3)
    assert set(np.unique(np.asarray(victims.softmax(3, reg).predict(p3, X3)))) <= {0, 1, 2}


def test_regression_victims_match_scikit_learn():
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(50, 5))
    y = X @ np.array([0.8, 0.0, -0.5, 0.0, 0.3]) + 0.1 + 0.05 * rng.standard_normal(50)
    p = victims.ridge(0.1).fit(X, y)
    ref = Ridge(alpha=0.1 * len(y)).fit(X, y)  # (1/2n)||r||^2 + reg/2 ||w||^2  <->  alpha = n * reg
    np.testing.assert_allclose(np.asarray(p["w"]), ref.coef_, rtol=1e-6)
    for v, r in [(victims.lasso(1e-2, tol=1e-14), Lasso(alpha=1e-2, tol=1e-12, max_iter=100000)),
                 (victims.elastic_net(1e-2, 0.5, tol=1e-14), ElasticNet(alpha=1e-2, l1_ratio=0.5, tol=1e-12,
                                                                         max_iter=100000))]:
        q = v.fit(X, y)
        r.fit(X, y)
        np.testing.assert_allclose(np.asarray(q["w"]), r.coef_, atol=1e-6)
        np.testing.assert_allclose(float(q["b"]), r.intercept_, atol=1e-6)
    assert np.sum(np.asarray(victims.lasso(1e-2, tol=1e-14).fit(X, y)["w"]) == 0) >= 1  # sparse


def test_one_label_convention_everywhere():
    X, y = _data()
    for v in (victims.svm(1.0), victims.logistic(1e-2), victims.adaline(1e-2), victims.smooth_svm()):
        with pytest.raises(ValueError, match="0/1 here, not -1/\\+1"):
            v.fit(X, 2 * y - 1)
        with pytest.raises(ValueError, match="'y'"):
            v.loss(v.fit(X, y), X, y + 2)
        pred = np.asarray(v.predict(v.fit(X, y), X))
        assert pred.dtype.kind == "i" and set(np.unique(pred)) <= {0, 1}
        assert float(v.error(v.fit(X, y), X, y)) < 0.2
    with pytest.raises(ValueError, match="weights"):
        victims.logistic(1e-2).fit(X, y, -np.ones(len(y)))
    with pytest.raises(ValueError, match="X"):
        victims.logistic(1e-2).fit(X[:, :, None][:, :, 0][:, 0], y)
    with pytest.raises(ValueError, match="NaN"):
        victims.ridge(0.1).fit(X, np.where(np.arange(len(y)) == 3, np.nan, 1.0))


def test_residuals_and_memoized_constructors():
    X, y = _data()
    assert victims.svm(1.0) is victims.svm(1.0) and victims.logistic(0.1) is victims.logistic(0.1)
    assert float(victims.svm(1.0).residual(victims.svm(1.0).fit(X, y))) < 1e-8
    assert np.isnan(float(victims.logistic(0.1).residual(victims.logistic(0.1).fit(X, y))))
    # smooth victims report their training loss; its gradient vanishes at the fit
    v = victims.logistic(0.1)
    p = v.fit(X, y)
    g = jax.grad(v.train_loss)(p, X, v.encode(y))
    assert float(np.linalg.norm(np.asarray(g["w"]))) < 1e-6
