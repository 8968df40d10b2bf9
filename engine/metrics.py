"""Binary classification metrics in pure numpy (probabilities of label 1 in, floats out)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _check(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(np.int64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {p.size}")
    return y, p


def confusion(y, p, threshold: float = 0.5) -> np.ndarray:
    """[[tn, fp], [fn, tp]] with prediction = p >= threshold."""
    y, p = _check(y, p)
    pred = p >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    tn = int(np.sum(~pred & (y == 0)))
    return np.array([[tn, fp], [fn, tp]])


def f1_at(y, p, threshold: float = 0.5) -> float:
    (_, fp), (fn, tp) = confusion(y, p, threshold)
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


@dataclass(frozen=True)
class Sweep:
    thresholds: np.ndarray  # (K,) descending distinct scores: predict 1 when p >= t
    precision: np.ndarray  # (K,)
    recall: np.ndarray  # (K,)
    f1: np.ndarray  # (K,)
    fpr: np.ndarray  # (K,)
    positive_rate: np.ndarray  # (K,) share of images called 1


def sweep(y, p) -> Sweep:
    """Every distinct score as a threshold, in one sort (no scores: empty curves)."""
    y, p = _check(y, p)
    if y.size == 0:
        empty = np.zeros(0)
        return Sweep(empty, empty, empty, empty, empty, empty)
    order = np.argsort(-p, kind="mergesort")
    ys, ps = y[order], p[order]
    last = np.r_[np.flatnonzero(np.diff(ps)), ps.size - 1]  # last index of each distinct score
    tp = np.cumsum(ys)[last]
    fp = (last + 1) - tp
    pos, neg = max(int(y.sum()), 0), y.size - int(y.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 1.0)
        recall = tp / pos if pos else np.zeros_like(tp, dtype=float)
        fpr = fp / neg if neg else np.zeros_like(fp, dtype=float)
        f1 = np.where(tp > 0, 2 * tp / (tp + fp + pos), 0.0)
    return Sweep(ps[last], precision, recall, f1, fpr, (last + 1) / y.size)


def best_threshold(y, p) -> tuple[float, float]:
    """(threshold, F1) maximising F1; the midpoint to the next lower score, so it generalises."""
    s = sweep(y, p)
    if s.thresholds.size == 0:
        return 0.5, 0.0
    k = int(np.argmax(s.f1))
    lower = s.thresholds[k + 1] if k + 1 < s.thresholds.size else 0.0
    return float((s.thresholds[k] + lower) / 2), float(s.f1[k])


def roc_auc(y, p) -> float:
    """Area under ROC via the rank-sum (Mann-Whitney U) with ties averaged; nan if one class."""
    y, p = _check(y, p)
    pos = int(y.sum())
    neg = y.size - pos
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(p.size)
    sorted_p = p[order]
    # average ranks over ties
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_p)) + 1]
    ends = np.r_[starts[1:], p.size]
    avg = (starts + ends + 1) / 2.0  # 1-based mean rank of each tie block
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def average_precision(y, p) -> float:
    """Step-wise area under the PR curve (as scikit-learn's average_precision_score)."""
    s = sweep(y, p)
    recall = np.r_[0.0, s.recall]
    return float(np.sum(np.diff(recall) * s.precision))


def summary(y, p, threshold: float = 0.5) -> dict[str, float]:
    t, best = best_threshold(y, p)
    return {
        "f1": f1_at(y, p, threshold),
        "best_f1": best,
        "best_threshold": t,
        "auc": roc_auc(y, p),
    }


def reliability(y, p, bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean predicted probability, observed share of 1s, count) per equal-width bin."""
    y, p = _check(y, p)
    which = np.minimum((p * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(which, weights=p, minlength=bins) / count
        frac = np.bincount(which, weights=y, minlength=bins) / count
    keep = count > 0
    return mean_p[keep], frac[keep], count[keep]


def threshold_for_rate(p, rate: float) -> float:
    """The threshold at which a share `rate` of the scores is called 1 (p >= t)."""
    p = np.sort(np.asarray(p, dtype=np.float64))[::-1]
    if p.size == 0 or rate <= 0:
        return 1.0
    k = min(p.size, max(1, round(rate * p.size)))
    return float(p[k - 1])




def threshold_note(val_y: np.ndarray, probs: np.ndarray) -> str | None:
    """Why no validation threshold can be chosen (None when one can): F1 over one class
    is the same at every cut, so any threshold picked would be arbitrary."""
    keep = ~np.isnan(probs)
    y = np.asarray(val_y)[keep]
    if not y.size:
        return "no validation image could be decoded, so no threshold was chosen"
    if not (y == 1).any():
        return (f"validation has no AI-generated (label 1) image among its {y.size}, so no threshold "
                "was chosen; set one (Evaluate page or `aivh export --threshold`)")
    if not (y == 0).any():
        return (f"validation has no human-made (label 0) image among its {y.size}, so no threshold "
                "was chosen; set one (Evaluate page or `aivh export --threshold`)")
    return None


# ---------------------------------------------------------------- per image, for review and display

OUTCOMES = ("false positive", "false negative", "true positive", "true negative")


def outcomes(label, p, threshold: float) -> np.ndarray:
    """Per image: one of OUTCOMES at `threshold` (p >= threshold is called 1), or "unlabelled"
    where the label is missing (NaN)."""
    called = np.asarray(p, dtype=np.float64) >= threshold
    label = np.asarray(label, dtype=np.float64)
    out = np.full(called.shape, "unlabelled", dtype=object)
    out[(label == 1) & called] = "true positive"
    out[(label == 0) & called] = "false positive"
    out[(label == 1) & ~called] = "false negative"
    out[(label == 0) & ~called] = "true negative"
    return out


def wrongness(label, p) -> np.ndarray:
    """How confidently wrong each prediction is: |p - label|; where the label is missing (NaN),
    p itself (the most AI-like first). Review sorts by it, highest first."""
    label = np.asarray(label, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    return np.where(np.isnan(label), p, np.abs(p - np.nan_to_num(label)))


def precision_recall(y, p, threshold: float = 0.5) -> tuple[float, float]:
    """(precision, recall) at `threshold`; 0.0 where nothing was called 1 or nothing is 1."""
    (_, fp), (fn, tp) = confusion(y, p, threshold)
    return (tp / (tp + fp) if tp + fp else 0.0), (tp / (tp + fn) if tp + fn else 0.0)


def called_rate_curve(p, points: int = 201) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds evenly over [0, 1], share of scores called 1 at each: p >= threshold)."""
    p = np.sort(np.asarray(p, dtype=np.float64).ravel())
    grid = np.linspace(0, 1, points)
    if p.size == 0:
        return grid, np.zeros(points)
    return grid, 1 - np.searchsorted(p, grid, side="left") / p.size


def eta_seconds(progress: dict, epochs: int) -> float | None:
    """Seconds a running run still needs from its progress record (images/s, epoch, batch of
    batches, training images, batch size): the rest of this epoch and every epoch after it.
    None without a measured speed."""
    ips = progress.get("images_per_s")
    if not ips:
        return None
    left = (epochs - max(progress.get("epoch", 0), 1)) * progress.get("train_images", 0)
    left += (progress.get("batches", 0) - progress.get("batch", 0)) * progress.get("batch_size", 32)
    return left / ips
