"""Why a detector may fail on the test set: file-property shortcuts and train/test shift.

`aivh shortcuts`: how well the header properties recorded at import (engine.images.FileMeta:
size, bytes per pixel, format, JPEG quality, subsampling, ...) predict the training label,
each alone and all together. A label that file properties predict is a label a detector can
learn without looking at generation traces ("Fake or JPEG?", Grommelt et al. 2024).

`aivh shift` (adversarial validation): a classifier told to tell training images from test
images, on the same properties and, with a run, on that run's pooled features. Its
cross-validated AUC is 0.5 when the two are alike; its out-of-fold score of each training image
says how test-like it is, and `aivh evalset --like-test N` freezes the N most test-like.

Every AUC here is of out-of-fold predictions (stratified k-fold, seeded): all features together
by scikit-learn's HistGradientBoostingClassifier (it handles missing values, a PNG's JPEG
quality, and categories itself), each feature alone by its bins' class rates (feature_alone).
Either way the direction is learned, so 0.5 is useless and 1 perfect whichever way round a
feature works (a little under 0.5 is noise).
"""
from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from db import labelling, queries
from db.models import Dataset

# name -> kind: "num" (numbers; None is missing), "cat" (categories), "bool"
FEATURES = {"width": "num", "height": "num", "aspect_ratio": "num", "bytes": "num",
            "bytes_per_pixel": "num", "format": "cat", "mode": "cat", "jpeg_quality": "num",
            "subsampling": "cat", "progressive": "bool", "exif": "bool", "icc": "bool"}
SHORTCUT_AUC, WEAK_AUC = 0.75, 0.6  # the sentence's words: predictable, somewhat, not
TOP_POOLED = 10  # pooled-feature dimensions listed by `shift --run`


@dataclass
class MetaTable:
    """The metadata features of some images: X (N, F) float with NaN for missing, in FEATURES' order."""

    ids: list[int]
    paths: list[str]
    splits: list[str]
    x: np.ndarray
    names: list[str] = field(default_factory=lambda: list(FEATURES))

    @property
    def categorical(self) -> np.ndarray:
        return np.array([FEATURES.get(n) == "cat" for n in self.names])


def meta_table(s: Session, dataset_id: int, split: str | None = None) -> MetaTable:
    """Every readable image's metadata features; refuses a store whose headers were never read."""
    rows = queries.image_meta(s, dataset_id, split)
    if not rows:
        raise ValueError("no readable images" + (f" on the {split} split" if split else ""))
    missing = sum(r[6] is None for r in rows)  # format
    if missing:
        raise ValueError(f"{missing} of {len(rows)} images have no file metadata yet (imported before "
                         "aivh recorded it): run `aivh import DATA_DIR` again to read their headers")
    cols = dict(zip(queries.META_COLUMNS, zip(*[r[3:] for r in rows])))
    w = np.array(cols["width"], dtype=float)
    h = np.array(cols["height"], dtype=float)
    b = np.array(cols["bytes"], dtype=float)
    values = {"width": w, "height": h, "aspect_ratio": w / h, "bytes": b, "bytes_per_pixel": b / (w * h),
              "jpeg_quality": _numbers(cols["jpeg_quality"]), "progressive": _numbers(cols["progressive"]),
              "exif": _numbers(cols["has_exif"]), "icc": _numbers(cols["has_icc"])}
    for name in ("format", "mode", "subsampling"):
        values[name] = _codes(cols[name])
    x = np.column_stack([values[n] for n in FEATURES])
    return MetaTable([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], x)


def _numbers(column) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in column])


def _codes(column) -> np.ndarray:
    """Categories as 0, 1, ... in sorted order (NaN: none), as the booster's categorical input."""
    known = sorted({v for v in column if v is not None})
    index = {v: i for i, v in enumerate(known)}
    return np.array([np.nan if v is None else float(index[v]) for v in column])


def _folds(y: np.ndarray, folds: int, seed: int):
    from sklearn.model_selection import StratifiedKFold

    folds = int(min(folds, np.bincount(y.astype(int), minlength=2).min()))
    if folds < 2:
        raise ValueError("each class needs at least 2 images to cross-validate")
    return StratifiedKFold(folds, shuffle=True, random_state=seed)


def out_of_fold(x: np.ndarray, y: np.ndarray, *, categorical: np.ndarray | None = None, folds: int = 5,
                seed: int = 0) -> np.ndarray:
    """Out-of-fold probability of class 1 from gradient boosting: every row scored by a model
    that never saw it. One thread: the booster's OpenMP threads, on a busy 2-core machine,
    made 300 rows take minutes (2026-11-27)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import cross_val_predict
    from threadpoolctl import threadpool_limits

    cat = categorical if categorical is not None and categorical.any() else None
    model = HistGradientBoostingClassifier(max_iter=60, learning_rate=0.1, early_stopping=False,
                                           categorical_features=cat, random_state=seed)
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a fold where a category is constant
        return cross_val_predict(model, x, y, cv=_folds(y, folds, seed), method="predict_proba")[:, 1]


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p))


BINS = 32  # a numeric feature with more distinct values than this is cut at its quantiles,
ROWS_PER_BIN = 20  # into at most one bin per this many rows (fewer rows, fewer and steadier bins)


def _bins(col: np.ndarray) -> np.ndarray:
    """Bin index per row: each distinct value (few values) or quantile bin; missing its own bin."""
    bins = np.full(col.shape, -1, dtype=np.int64)
    ok = ~np.isnan(col)
    values = np.unique(col[ok])
    if values.size <= BINS:
        bins[ok] = np.searchsorted(values, col[ok])
    else:
        k = int(np.clip(ok.sum() // ROWS_PER_BIN, 2, BINS))
        edges = np.unique(np.quantile(col[ok], np.linspace(0, 1, k + 1)[1:-1]))
        bins[ok] = np.searchsorted(edges, col[ok], side="right")
    return bins + 1  # 0: missing


def feature_alone(col: np.ndarray, y: np.ndarray, *, folds: int = 5, seed: int = 0) -> float:
    """AUC of one feature alone: out of fold, each row scored by its bin's class-1 rate among
    the other folds' rows (smoothed towards the overall rate by one row), so a feature that
    works either way round, or only in a middle band, scores as it predicts."""
    bins = _bins(col)
    if np.unique(bins).size < 2:
        return 0.5
    p = np.empty(len(y))
    for fit, held in _folds(y, folds, seed).split(col.reshape(-1, 1), y):
        n = np.bincount(bins[fit], minlength=bins.max() + 1)
        k = np.bincount(bins[fit], weights=y[fit], minlength=bins.max() + 1)
        prior = y[fit].mean()
        p[held] = ((k + prior) / (n + 1))[bins[held]]
    return _auc(y, p)


def feature_aucs(table: MetaTable, y: np.ndarray, *, folds: int = 5, seed: int = 0) -> list[dict]:
    """[{name, auc}] of each feature alone (feature_alone), highest first."""
    out = [{"name": name, "auc": round(feature_alone(table.x[:, j], y, folds=folds, seed=seed), 4)}
           for j, name in enumerate(table.names)]
    return sorted(out, key=lambda f: -f["auc"])


def _labelled(s: Session, dataset_id: int) -> tuple[MetaTable, np.ndarray]:
    table = meta_table(s, dataset_id, "train")
    labels = labelling.current_labels(s, dataset_id)
    keep = [i for i, image_id in enumerate(table.ids) if image_id in labels]
    sub = MetaTable([table.ids[i] for i in keep], [table.paths[i] for i in keep],
                    [table.splits[i] for i in keep], table.x[keep])
    return sub, np.array([labels[i] for i in sub.ids], dtype=int)


def audit_shortcuts(s: Session, dataset: str, *, folds: int = 5, seed: int = 0) -> dict:
    """How well file properties predict the training label: each alone and all together."""
    ds = queries.get_dataset(s, dataset)
    table, y = _labelled(s, ds.id)
    together = _auc(y, out_of_fold(table.x, y, categorical=table.categorical, folds=folds, seed=seed))
    features = feature_aucs(table, y, folds=folds, seed=seed)
    worst = max(together, features[0]["auc"])  # one feature alone can say it as loudly as all together
    verdict = "shortcut" if worst >= SHORTCUT_AUC else "weak" if worst >= WEAK_AUC else "none"
    return {"dataset": dataset, "images": len(y), "ai": int(y.sum()), "metadata_auc": round(together, 4),
            "features": features, "verdict": verdict,
            "sentence": shortcut_sentence(together, features[0], verdict)}


def shortcut_sentence(auc: float, top: dict, verdict: str) -> str:
    if verdict == "shortcut":
        return (f"The training label is predictable from file properties alone (AUC {auc:.2f}; "
                f"{top['name']} alone {top['auc']:.2f}): a detector can score well here by learning "
                "them instead of generation traces, and fail on test images made another way.")
    if verdict == "weak":
        return (f"File properties predict the training label somewhat (AUC {auc:.2f}; {top['name']} "
                f"alone {top['auc']:.2f}): check that the detector does not lean on them.")
    return f"File properties alone do not predict the training label (AUC {auc:.2f}): no metadata shortcut found."


@dataclass
class Shift:
    """Adversarial validation: train (0) against test (1)."""

    auc: float
    features: list[dict]
    train_ids: list[int]
    train_paths: list[str]
    test_likeness: np.ndarray  # out-of-fold P(test) of each training image
    test_images: int
    metadata_auc: float | None = None  # with pooled features: the metadata's alone

    def most_test_like(self, n: int) -> list[int]:
        """Positions in train_ids, most test-like first (ties by image id)."""
        return sorted(range(len(self.train_ids)), key=lambda i: (-self.test_likeness[i], self.train_ids[i]))[:n]


def measure_shift(s: Session, dataset_id: int, *, pooled: np.ndarray | None = None, folds: int = 5,
                  seed: int = 0) -> Shift:
    """pooled: (N, D) features of meta_table(s, dataset_id)'s images in its order (a run's), or None."""
    table = meta_table(s, dataset_id)
    y = np.array([sp == "test" for sp in table.splits], dtype=int)
    if y.sum() == 0 or y.sum() == len(y):
        raise ValueError("shift needs both training and test images")
    p_meta = out_of_fold(table.x, y, categorical=table.categorical, folds=folds, seed=seed)
    features = feature_aucs(table, y, folds=folds, seed=seed)
    p, meta_auc = p_meta, None
    if pooled is not None:
        if len(pooled) != len(table.ids):
            raise ValueError(f"the dataset's images changed while the run's features were computed "
                             f"({len(pooled)} then {len(table.ids)}): run the command again")
        meta_auc = _auc(y, p_meta)
        x = np.column_stack([table.x, pooled])
        cat = np.concatenate([table.categorical, np.zeros(pooled.shape[1], bool)])
        p = out_of_fold(x, y, categorical=cat, folds=folds, seed=seed)
        features = sorted(features + _pooled_aucs(pooled, y), key=lambda f: -f["auc"])
    train = np.flatnonzero(y == 0)
    return Shift(round(_auc(y, p), 4), features, [table.ids[i] for i in train],
                 [table.paths[i] for i in train], p[train], int(y.sum()),
                 None if meta_auc is None else round(meta_auc, 4))


def _pooled_aucs(pooled: np.ndarray, y: np.ndarray) -> list[dict]:
    """The TOP_POOLED pooled dimensions whose values alone separate train from test most
    (rank AUC, oriented: max(auc, 1 - auc); a missing row counts as the lowest value)."""
    from scipy.stats import rankdata

    ranks = rankdata(np.nan_to_num(pooled, nan=-np.inf), axis=0)
    n1, n0 = int(y.sum()), int(len(y) - y.sum())
    auc = (ranks[y == 1].sum(axis=0) - n1 * (n1 + 1) / 2) / (n1 * n0)
    auc = np.maximum(auc, 1 - auc)
    top = np.argsort(-auc)[:TOP_POOLED]
    return [{"name": f"pooled[{j}]", "auc": round(float(auc[j]), 4)} for j in top]


def run_features(sessions, run_id: int, *, device: str = "auto", batch_size: int = 64,
                 progress: bool = True) -> tuple[int, np.ndarray]:
    """(dataset id, (N, D) pooled features of the run's checkpoint) for meta_table's images,
    computed once per image and cached under the checkpoint's sha1 (engine.probe.cached_features)."""
    import dataclasses

    from engine.checkpoints import load_checkpoint
    from engine.config import TrainConfig
    from engine.device import resolve_device
    from engine.probe import cached_features

    with sessions() as s:
        run = queries.get_run(s, run_id)
        if not run.checkpoint:
            raise ValueError(f"run {run_id} has no checkpoint yet (status {run.status})")
        ds = s.get(Dataset, run.dataset_id)
        table = meta_table(s, ds.id)
        keys = queries.content_keys(s, ds.id, None)
        stamps = queries.image_stamps(s, ds.id)
    model, config, _epoch, sha1 = load_checkpoint(Path(run.checkpoint))
    # the cache names a feature space by architecture and weights: these weights are the checkpoint's
    cfg = dataclasses.replace(TrainConfig.from_dict(config), weights_source=f"checkpoint {sha1}")
    dev = resolve_device(device)
    feats, _computed = cached_features(model.to(dev).eval(), cfg, Path(ds.root), table.paths,
                                       [keys[i] for i in table.ids], device=dev, batch_size=batch_size,
                                       stamps=stamps, progress=progress)
    return ds.id, feats


def shift_report(shift: Shift, dataset: str, labels: dict[int, int], *, run: int | None = None) -> dict:
    top = shift.most_test_like(10)
    return {"dataset": dataset, "run": run, "auc": shift.auc, "metadata_auc": shift.metadata_auc,
            "features": shift.features, "train": len(shift.train_ids), "test": shift.test_images,
            "most_test_like": [{"file_name": shift.train_paths[i], "label": labels.get(shift.train_ids[i]),
                                "test_likeness": round(float(shift.test_likeness[i]), 4)} for i in top],
            "sentence": shift_sentence(shift)}


def shift_sentence(shift: Shift) -> str:
    top = shift.features[0]
    if shift.auc >= SHORTCUT_AUC:
        return (f"Test images are easy to tell from training images (AUC {shift.auc:.2f}; {top['name']} "
                f"alone {top['auc']:.2f}): validation scores will not carry over; choose the threshold "
                "on test-like images (`aivh evalset --like-test N`).")
    if shift.auc >= WEAK_AUC:
        return (f"Test images differ somewhat from training images (AUC {shift.auc:.2f}; most in "
                f"{top['name']}).")
    return f"Test images look like training images to this classifier (AUC {shift.auc:.2f}): no shift found."


def write_likeness(path: Path, shift: Shift, labels: dict[int, int]) -> Path:
    """Every training image's test-likeness, most test-like first, as CSV."""
    from engine.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["file_name", "label", "test_likeness"])
        for i in shift.most_test_like(len(shift.train_ids)):
            label = labels.get(shift.train_ids[i])
            w.writerow([shift.train_paths[i], "" if label is None else label, f"{shift.test_likeness[i]:.6f}"])
    return path


def freeze_test_like(s: Session, dataset: str, n: int, name: str, *, author: str | None = None,
                     seed: int = 0, pooled: np.ndarray | None = None):
    """The n most test-like labelled training images frozen as an evaluation set: by file
    properties, and with `pooled` (run_features of a run on this dataset) by both, as
    `aivh shift --run` ranks them."""
    from db import evaluation

    if n < 1:
        raise ValueError("--like-test needs a positive number of images")
    ds = queries.get_dataset(s, dataset)
    shift = measure_shift(s, ds.id, pooled=pooled, seed=seed)
    labels = labelling.current_labels(s, ds.id)
    ranked = [shift.train_ids[i] for i in shift.most_test_like(len(shift.train_ids))
              if shift.train_ids[i] in labels][:n]
    return evaluation.create_eval_set(s, ds.id, name, ranked, author=author), shift
