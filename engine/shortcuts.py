"""Why a detector may fail on the test set: file-property shortcuts and train/test shift.

`aivh shortcuts`: how well the header properties recorded at import (engine.images.FileMeta:
size, bytes per pixel, format, JPEG quality, subsampling, ...) predict the training label,
each alone and all together. A label that file properties predict is a label a detector can
learn without looking at generation traces ("Fake or JPEG?", Grommelt et al. 2024).

`aivh shift` (adversarial validation): a classifier told to tell training images from test
images, on the same properties and, with a run, on that run's pooled features. Its
cross-validated AUC is 0.5 when the two are alike; its out-of-fold score of each training image
says how test-like it is, and `aivh evalset --like-test N` freezes the N most test-like. With a
run, only the images it never trained on take part (a model's features tell the images it was
trained on from the others, which is not shift); the run's features are scored together and
alone, not dimension by dimension (the best of D dimensions looks like a finding on noise).

Every AUC here is of out-of-fold predictions (stratified group k-fold, shuffled with the seed;
copies held out together, as the split keeps them: image_groups; fewer folds than asked when a
class has fewer groups, the number used reported as `folds`): all features together by
scikit-learn's HistGradientBoostingClassifier (it handles missing values, a PNG's JPEG quality,
and categories itself), each feature alone by its bins' class rates (feature_alone), a run's
features alone by a standardised logistic regression (features_alone_oof: linear, as a probe
reads them, and a fraction of the booster's time on 1,280 columns). Either way the direction
is learned, so 0.5 is useless and 1 perfect whichever way round a feature works (a little under
0.5 is noise).
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
from engine.folds import FoldError, codes, group_folds

# name -> kind: "num" (numbers; None is missing), "cat" (categories), "bool"
FEATURES = {"width": "num", "height": "num", "aspect_ratio": "num", "bytes": "num",
            "bytes_per_pixel": "num", "format": "cat", "mode": "cat", "jpeg_quality": "num",
            "subsampling": "cat", "progressive": "bool", "exif": "bool", "icc": "bool"}
SHORTCUT_AUC, WEAK_AUC = 0.75, 0.6  # the sentence's words: predictable, somewhat, not


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


def image_groups(s: Session, dataset_id: int, ids: list[int], group: str | None = None) -> np.ndarray:
    """A group number per image of `ids`, as the split keeps them together: training images by
    engine.duplicates.split_groups (byte-identical copies, train.csv's `group` column, and with
    group "near-duplicates", a run's --group, perceptual-hash near copies); any image joins the
    group of every image it is a byte copy of (and, with "near-duplicates", a near copy of), in
    any split. Cross-validation holds a group out whole, so a copy never scores its twin.
    Without `group` (`aivh shortcuts`, `aivh shift` without a run) near copies are not grouped."""
    from engine.duplicates import clusters, split_groups

    ds = s.get(Dataset, dataset_id)
    content = queries.content_keys(s, dataset_id, None)
    training = queries.content_keys(s, dataset_id, "train")
    train_ids = [i for i in ids if i in training]
    grouped, _how = split_groups(s, dataset_id, Path(ds.root), train_ids, group=group, progress=False)
    first: dict[str, int] = {}
    edges = []
    for pos, i in enumerate(ids):
        for key in (f"group {grouped[i]}" if i in grouped else None, f"content {content.get(i, i)}"):
            if key is not None:
                edges.append((first.setdefault(key, pos), pos))
    edges += _near_edges(s, dataset_id, ids) if group == "near-duplicates" else []
    a, b = (np.array(side, np.int64) for side in zip(*edges)) if edges else (np.zeros(0, np.int64),) * 2
    joined = clusters(len(ids), a, b)
    # each group named by its training images' split group, else its first image's content key
    name: dict[int, str] = {}
    for pos, i in enumerate(ids):
        if i in grouped:
            name.setdefault(int(joined[pos]), grouped[i])
    for pos, i in enumerate(ids):
        name.setdefault(int(joined[pos]), content.get(i, f"id:{i}"))
    return codes([name[int(c)] for c in joined])


def _near_edges(s: Session, dataset_id: int, ids: list[int]) -> list[tuple[int, int]]:
    """Positions in `ids` of the perceptual-hash near copies (engine.duplicates.PHASH_MAX bits),
    in any split; hashes missing so far are computed and written in the caller's transaction."""
    from engine.duplicates import ensure_phashes, phash_pairs

    hashes = ensure_phashes(s, dataset_id, Path(s.get(Dataset, dataset_id).root), progress=False)
    hashed = [pos for pos, i in enumerate(ids) if hashes.get(i)]
    a, b, _ = phash_pairs([hashes[ids[pos]] for pos in hashed])
    return [(hashed[x], hashed[y]) for x, y in zip(a.tolist(), b.tolist())]


def out_of_fold(x: np.ndarray, y: np.ndarray, *, groups: np.ndarray | None = None,
                categorical: np.ndarray | None = None, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold probability of class 1 from gradient boosting: every row scored by a model
    that saw neither it nor any row of its group (image_groups). One thread: the booster's
    OpenMP threads, on a busy 2-core machine, made 300 rows take minutes (2026-11-27)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import cross_val_predict
    from threadpoolctl import threadpool_limits

    cat = categorical if categorical is not None and categorical.any() else None
    model = HistGradientBoostingClassifier(max_iter=60, learning_rate=0.1, early_stopping=False,
                                           categorical_features=cat, random_state=seed)
    cv = group_folds(y, groups, folds, seed)
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a fold where a category is constant
        return cross_val_predict(model, x, y, cv=cv, method="predict_proba")[:, 1]


FEATURES_C = 0.01  # the regression's inverse regularisation on standardised run features (features_alone_oof)


def features_alone_oof(x: np.ndarray, y: np.ndarray, *, groups: np.ndarray | None = None, folds: int = 5,
                       seed: int = 0) -> np.ndarray:
    """Out-of-fold probability of class 1 from a run's pooled features alone: a logistic
    regression (C FEATURES_C, fixed, not tuned on the held-out rows) on features standardised on
    each fold's training part (missing rows, images that failed to decode, at the training part's
    means), the folds as out_of_fold's. Linear, as a probe reads the features; on 4,000 x 1,280
    features a fraction of gradient boosting's time (docs/benchmarks.md)."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(SimpleImputer(keep_empty_features=True), StandardScaler(),
                          LogisticRegression(C=FEATURES_C, max_iter=5000))
    cv = group_folds(y, groups, folds, seed)
    return cross_val_predict(model, x, y, cv=cv, method="predict_proba")[:, 1]


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


def feature_alone(col: np.ndarray, y: np.ndarray, *, groups: np.ndarray | None = None, folds: int = 5,
                  seed: int = 0) -> float:
    """AUC of one feature alone: out of fold (groups held out whole), each row scored by its
    bin's class-1 rate among the other folds' rows (smoothed towards the overall rate by one
    row), so a feature that works either way round, or only in a middle band, scores as it predicts."""
    bins = _bins(col)
    if np.unique(bins).size < 2:
        return 0.5
    p = np.empty(len(y))
    for fit, held in group_folds(y, groups, folds, seed):
        n = np.bincount(bins[fit], minlength=bins.max() + 1)
        k = np.bincount(bins[fit], weights=y[fit], minlength=bins.max() + 1)
        prior = y[fit].mean()
        p[held] = ((k + prior) / (n + 1))[bins[held]]
    return _auc(y, p)


def feature_aucs(table: MetaTable, y: np.ndarray, *, groups: np.ndarray | None = None, folds: int = 5,
                 seed: int = 0) -> list[dict]:
    """[{name, auc}] of each feature alone (feature_alone), highest first."""
    out = [{"name": name,
            "auc": round(feature_alone(table.x[:, j], y, groups=groups, folds=folds, seed=seed), 4)}
           for j, name in enumerate(table.names)]
    return sorted(out, key=lambda f: -f["auc"])


def _labelled(s: Session, dataset_id: int) -> tuple[MetaTable, np.ndarray]:
    table = meta_table(s, dataset_id, "train")
    labels = labelling.current_labels(s, dataset_id)
    keep = [i for i, image_id in enumerate(table.ids) if image_id in labels]
    sub = MetaTable([table.ids[i] for i in keep], [table.paths[i] for i in keep],
                    [table.splits[i] for i in keep], table.x[keep])
    return sub, np.array([labels[i] for i in sub.ids], dtype=int)


def _folds_used(y: np.ndarray, groups: np.ndarray, folds: int, seed: int, dataset: str, what: str) -> int:
    """How many folds group_folds deals (fewer than asked when a class has fewer groups); a fold
    whose training part lacks a class refused in one line naming the dataset."""
    try:
        return len(group_folds(y, groups, folds, seed))
    except FoldError as e:
        raise ValueError(f"dataset {dataset!r}, {what}: {e}; try fewer --folds (2 at least) or another "
                         "--seed, or check train.csv's group column") from None


def audit_shortcuts(s: Session, dataset: str, *, folds: int = 5, seed: int = 0) -> dict:
    """How well file properties predict the training label: each alone and all together. `folds`
    in the result: the number of folds used."""
    ds = queries.get_dataset(s, dataset)
    table, y = _labelled(s, ds.id)
    groups = image_groups(s, ds.id, table.ids)
    used = _folds_used(y, groups, folds, seed, dataset, "label against file properties")
    together = _auc(y, out_of_fold(table.x, y, groups=groups, categorical=table.categorical, folds=folds,
                                   seed=seed))
    features = feature_aucs(table, y, groups=groups, folds=folds, seed=seed)
    worst = max(together, features[0]["auc"])  # one feature alone can say it as loudly as all together
    verdict = "shortcut" if worst >= SHORTCUT_AUC else "weak" if worst >= WEAK_AUC else "none"
    return {"dataset": dataset, "images": len(y), "ai": int(y.sum()), "metadata_auc": round(together, 4),
            "features": features, "verdict": verdict, "folds": used,
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
class RunFeatures:
    """A run's pooled features of the dataset's images it never trained on (run_features)."""

    run_id: int
    ids: list[int]  # image ids, in meta_table's order
    feats: np.ndarray  # (len(ids), D)
    excluded: int  # images left out: the run's training images and their copies (trained_on)
    group: str | None = None  # the run's --group: "near-duplicates" groups near copies too


@dataclass
class Shift:
    """Adversarial validation: train (0) against test (1)."""

    auc: float
    features: list[dict]  # each file property alone, out of fold
    train_ids: list[int]
    train_paths: list[str]
    test_likeness: np.ndarray  # out-of-fold P(test) of each training image
    test_images: int
    metadata_auc: float | None = None  # with a run's features: the file properties' alone
    pooled_auc: float | None = None  # with a run's features: theirs alone
    excluded: int = 0  # with a run's features: images it trained on (or copies of them), left out
    folds: int = 0  # cross-validation folds used (fewer than asked when a split has fewer groups)

    def most_test_like(self, n: int) -> list[int]:
        """Positions in train_ids, most test-like first (ties by image id)."""
        return sorted(range(len(self.train_ids)), key=lambda i: (-self.test_likeness[i], self.train_ids[i]))[:n]


def measure_shift(s: Session, dataset_id: int, *, pooled: RunFeatures | None = None, folds: int = 5,
                  seed: int = 0) -> Shift:
    """Train against test on file properties and, with `pooled` (run_features), on the run's
    features too, over the images the run never trained on only: a model's features tell the
    images it was trained on from the others, which is not shift. Every AUC out of fold, copies
    held out together (image_groups; near copies too when the run grouped them); the run's
    features alone by features_alone_oof, with the file properties by gradient boosting."""
    table = meta_table(s, dataset_id)
    if pooled is not None:
        keep = set(pooled.ids)
        rows = [n for n, i in enumerate(table.ids) if i in keep]
        if [table.ids[n] for n in rows] != pooled.ids:
            raise ValueError(f"the dataset's images changed while the run's features were computed "
                             f"({len(pooled.ids)} then {len(rows)}): run the command again")
        table = MetaTable(pooled.ids, [table.paths[n] for n in rows], [table.splits[n] for n in rows],
                          table.x[rows])
    y = np.array([sp == "test" for sp in table.splits], dtype=int)
    if y.sum() == 0 or y.sum() == len(y):
        raise ValueError("shift needs both training and test images" + (
            f" the run never trained on ({pooled.excluded} it trained on left out)" if pooled else ""))
    groups = image_groups(s, dataset_id, table.ids, None if pooled is None else pooled.group)
    used = _folds_used(y, groups, folds, seed, s.get(Dataset, dataset_id).name,
                       "training against test images")
    p_meta = out_of_fold(table.x, y, groups=groups, categorical=table.categorical, folds=folds, seed=seed)
    features = feature_aucs(table, y, groups=groups, folds=folds, seed=seed)
    p, meta_auc, pooled_auc = p_meta, None, None
    if pooled is not None:
        meta_auc = round(_auc(y, p_meta), 4)
        alone = features_alone_oof(pooled.feats, y, groups=groups, folds=folds, seed=seed)
        pooled_auc = round(_auc(y, alone), 4)
        x = np.column_stack([table.x, pooled.feats])
        cat = np.concatenate([table.categorical, np.zeros(pooled.feats.shape[1], bool)])
        p = out_of_fold(x, y, groups=groups, categorical=cat, folds=folds, seed=seed)
    train = np.flatnonzero(y == 0)
    return Shift(round(_auc(y, p), 4), features, [table.ids[i] for i in train],
                 [table.paths[i] for i in train], p[train], int(y.sum()), meta_auc, pooled_auc,
                 0 if pooled is None else pooled.excluded, used)


def trained_on(s: Session, run_id: int) -> set[int]:
    """The images a run trained on and every byte-identical copy of them, in any split; for a
    run trained with --group near-duplicates, every perceptual-hash near copy too (joined
    transitively, as its split joined them; hashes missing so far are written in the caller's
    transaction). A run without it kept only byte copies apart: its near copies are not left out."""
    run = queries.get_run(s, run_id)
    content = queries.content_keys(s, run.dataset_id, None)
    trained = queries.run_image_ids(s, run_id, "train")
    if _run_group(run) == "near-duplicates":
        ids = list(content)
        joined = image_groups(s, run.dataset_id, ids, "near-duplicates")
        pos = {i: p for p, i in enumerate(ids)}
        seen = {int(joined[pos[i]]) for i in trained if i in pos}
        return {i for i, g in zip(ids, joined.tolist()) if g in seen}
    seen = {content[i] for i in trained if i in content}
    return {i for i, k in content.items() if k in seen}


def _run_group(run) -> str | None:
    return (run.config or {}).get("group")


def run_features(sessions, run_id: int, *, device: str = "auto", batch_size: int = 64,
                 progress: bool = True) -> tuple[int, RunFeatures]:
    """(dataset id, the run checkpoint's pooled features of meta_table's images the run never
    trained on: trained_on's left out), computed once per image and cached under the
    checkpoint's sha1 (engine.probe.cached_features)."""
    import dataclasses

    from engine.checkpoints import load_checkpoint
    from engine.config import TrainConfig
    from engine.device import resolve_device
    from engine.probe import cached_features

    with sessions.begin() as s:  # trained_on may store perceptual hashes
        run = queries.get_run(s, run_id)
        if not run.checkpoint:
            raise ValueError(f"run {run_id} has no checkpoint yet (status {run.status})")
        ds = s.get(Dataset, run.dataset_id)
        table = meta_table(s, ds.id)
        seen = trained_on(s, run_id)
        group = _run_group(run)
        keys = queries.content_keys(s, ds.id, None)
        stamps = queries.image_stamps(s, ds.id)
    rows = [n for n, i in enumerate(table.ids) if i not in seen]
    ids = [table.ids[n] for n in rows]
    model, config, _epoch, sha1 = load_checkpoint(Path(run.checkpoint))
    # the cache names a feature space by architecture and weights: these weights are the checkpoint's
    cfg = dataclasses.replace(TrainConfig.from_dict(config), weights_source=f"checkpoint {sha1}")
    dev = resolve_device(device)
    feats, _computed = cached_features(model.to(dev).eval(), cfg, Path(ds.root),
                                       [table.paths[n] for n in rows], [keys[i] for i in ids], device=dev,
                                       batch_size=batch_size, stamps=stamps, progress=progress)
    return ds.id, RunFeatures(run_id, ids, feats, len(table.ids) - len(rows), group)


def shift_report(shift: Shift, dataset: str, labels: dict[int, int], *, run: int | None = None) -> dict:
    top = shift.most_test_like(10)
    return {"dataset": dataset, "run": run, "auc": shift.auc, "metadata_auc": shift.metadata_auc,
            "pooled_auc": shift.pooled_auc, "features": shift.features, "train": len(shift.train_ids),
            "test": shift.test_images, "excluded": shift.excluded, "folds": shift.folds,
            "most_test_like": [{"file_name": shift.train_paths[i], "label": labels.get(shift.train_ids[i]),
                                "test_likeness": round(float(shift.test_likeness[i]), 4)} for i in top],
            "sentence": shift_sentence(shift)}


def _loudest(shift: Shift) -> tuple[str, float]:
    """What tells the two apart best alone: a file property, or the run's features."""
    top = shift.features[0]
    if shift.pooled_auc is not None and shift.pooled_auc > top["auc"]:
        return "the run's features", shift.pooled_auc
    return top["name"], top["auc"]


def shift_sentence(shift: Shift) -> str:
    name, auc = _loudest(shift)
    if shift.auc >= SHORTCUT_AUC:
        return (f"Test images are easy to tell from training images (AUC {shift.auc:.2f}; {name} "
                f"alone {auc:.2f}): validation scores will not carry over; choose the threshold "
                "on test-like images (`aivh evalset --like-test N`).")
    if shift.auc >= WEAK_AUC:
        return f"Test images differ somewhat from training images (AUC {shift.auc:.2f}; most in {name})."
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
                     seed: int = 0, pooled: RunFeatures | None = None):
    """The n most test-like labelled training images frozen as an evaluation set: by file
    properties, and with `pooled` (run_features of a run on this dataset) by both, as
    `aivh shift --run` ranks them, among the images that run never trained on."""
    from db import evaluation

    if n < 1:
        raise ValueError("--like-test needs a positive number of images")
    ds = queries.get_dataset(s, dataset)
    shift = measure_shift(s, ds.id, pooled=pooled, seed=seed)
    labels = labelling.current_labels(s, ds.id)
    ranked = [shift.train_ids[i] for i in shift.most_test_like(len(shift.train_ids))
              if shift.train_ids[i] in labels][:n]
    return evaluation.create_eval_set(s, ds.id, name, ranked, author=author), shift
