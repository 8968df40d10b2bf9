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


def test_outcomes_per_image_by_hand():
    label = [1, 0, 1, 0, np.nan]
    p = [0.9, 0.7, 0.2, 0.1, 0.8]
    assert metrics.outcomes(label, p, 0.5).tolist() == [
        "true positive", "false positive", "false negative", "true negative", "unlabelled"]
    assert metrics.outcomes([1], [0.5], 0.5).tolist() == ["true positive"]  # p >= t is called 1
    assert set(metrics.OUTCOMES) == {"true positive", "false positive", "false negative", "true negative"}


def test_wrongness_is_distance_from_the_label_or_p_when_unlabelled():
    got = metrics.wrongness([1, 0, 0, np.nan], [0.25, 0.75, 0.0, 0.6])
    assert got.tolist() == pytest.approx([0.75, 0.75, 0.0, 0.6])


def test_precision_recall_by_hand():
    # called 1 at 0.5: p = 0.9 (1), 0.6 (0), 0.55 (1) -> tp 2, fp 1; label 1 at 0.3 missed -> fn 1
    y = [1, 0, 1, 1, 0]
    p = [0.9, 0.6, 0.55, 0.3, 0.1]
    assert metrics.precision_recall(y, p, 0.5) == pytest.approx((2 / 3, 2 / 3))
    assert metrics.precision_recall(y, p, 0.95) == (0.0, 0.0)  # nothing called 1
    assert metrics.precision_recall([0, 0], [0.9, 0.1], 0.5) == (0.0, 0.0)  # nothing is 1


def test_called_rate_curve_by_hand():
    grid, share = metrics.called_rate_curve([0.1, 0.5, 0.5, 0.9], points=5)  # 0, .25, .5, .75, 1
    assert grid.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert share.tolist() == [1.0, 0.75, 0.75, 0.25, 0.0]
    assert metrics.called_rate_curve([], points=3)[1].tolist() == [0.0, 0.0, 0.0]


def test_eta_by_hand():
    # epoch 2 of 5: 3 more epochs of 100 images, plus 6 batches of 16 left in this one = 396 images
    prog = {"images_per_s": 20.0, "epoch": 2, "batch": 4, "batches": 10, "train_images": 100,
            "batch_size": 16}
    assert metrics.eta_seconds(prog, 5) == pytest.approx(396 / 20)
    # before the first epoch is numbered it counts as the first; batch size defaults to 32
    assert metrics.eta_seconds({"images_per_s": 10.0, "batch": 2, "batches": 3, "train_images": 50}, 2) \
        == pytest.approx((50 + 32) / 10)
    assert metrics.eta_seconds({"epoch": 1}, 3) is None  # no speed measured yet
