"""engine.metrics against scikit-learn on seeded random data, ties included."""
import numpy as np
import pytest
from sklearn import metrics as skm

from engine import metrics


def _data(seed: int, n: int = 500, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.25), 0, 1)
    if ties:
        p = np.round(p, 1)  # many tied scores
    return y, p


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [False, True])
def test_auc_and_ap_match_sklearn(seed, ties):
    y, p = _data(seed, ties=ties)
    assert metrics.roc_auc(y, p) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert metrics.average_precision(y, p) == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("t", [0.1, 0.5, 0.73])
def test_f1_and_confusion_match_sklearn(seed, t):
    y, p = _data(seed)
    pred = (p >= t).astype(int)
    assert metrics.f1_at(y, p, t) == pytest.approx(skm.f1_score(y, pred, zero_division=0))
    assert (metrics.confusion(y, p, t) == skm.confusion_matrix(y, pred, labels=[0, 1])).all()


@pytest.mark.parametrize("seed", range(5))
def test_best_threshold_is_the_best_over_all_cuts(seed):
    y, p = _data(seed, ties=seed % 2 == 0)
    t, best = metrics.best_threshold(y, p)
    brute = max(skm.f1_score(y, (p >= c).astype(int), zero_division=0) for c in np.unique(p))
    assert best == pytest.approx(brute)
    assert metrics.f1_at(y, p, t) == pytest.approx(best)  # the midpoint keeps the same cut


def test_sweep_matches_sklearn_curves():
    y, p = _data(7, ties=True)
    s = metrics.sweep(y, p)
    prec, rec, thr = skm.precision_recall_curve(y, p)
    # sklearn lists thresholds ascending with a final (1, 0) point
    assert np.allclose(s.precision[::-1], prec[:-1]) and np.allclose(s.recall[::-1], rec[:-1])
    assert np.allclose(s.thresholds[::-1], thr)
    fpr, tpr, _ = skm.roc_curve(y, p, drop_intermediate=False)
    assert np.allclose(s.fpr, fpr[1:]) and np.allclose(s.recall, tpr[1:])


def test_one_class_auc_is_nan_not_a_crash():
    assert np.isnan(metrics.roc_auc([1, 1, 1], [0.2, 0.4, 0.9]))


def test_empty_input_gives_empty_curves_not_a_crash():
    m = metrics
    s = m.sweep([], [])
    assert all(a.size == 0 for a in (s.thresholds, s.precision, s.recall, s.f1, s.fpr, s.positive_rate))
    assert m.best_threshold([], []) == (0.5, 0.0)
    assert m.average_precision([], []) == 0.0 and np.isnan(m.roc_auc([], []))
    assert m.summary([], [])["best_f1"] == 0.0
