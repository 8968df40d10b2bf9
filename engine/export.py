"""Kaggle submission: `id,label`, every test id once, in test.csv's order, int labels.

Before anything is written, export checks what it would otherwise trust: that the dataset's
test.csv, as it is now, lists exactly the store's test images in the same order; that the test
predictions come from the checkpoint whose threshold is applied; and that the threshold is not
degenerate. The file is validated before it is renamed into place.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from db import predictions as preds
from db import queries
from db.models import Dataset, Run
from engine import atomic
from engine.errors import ExportRefused
from engine.thresholds import default_threshold, fmt_threshold

AUC_MARGIN = 0.05  # validation AUC within 0.5 + this (or two null standard deviations): chance


ONE_CLASS_SHARE = 0.98  # a threshold calling at least this share one class calls "everything" it


STALE_FLAG = "--allow-stale-predictions"


def submission_rows(s: Session, run: Run, threshold: float) -> list[tuple[str, int]]:
    tests = queries.images(s, run.dataset_id, "test", ok_only=False)  # csv order
    if not tests:
        raise ExportRefused(f"dataset of run {run.id} has no test images")
    probs = queries.predictions(s, run.id, [im.id for im in tests])
    missing = [im for im in tests if im.id not in probs]
    if missing:
        first = missing[0]
        why = " (unreadable at import)" if first.status != "ok" else ""
        raise ExportRefused(
            f"no prediction for {len(missing)} of {len(tests)} test images, e.g. {first.rel_path}{why}; "
            f"run `aivh predict --run {run.id} --split test`")
    return [(im.rel_path, int(probs[im.id] >= threshold)) for im in tests]


def test_csv_ids(s: Session, run: Run) -> list[str]:
    """The ids of the dataset's test.csv as the file is now, refusing unless they are exactly the
    store's test images in the same order (rows rejected at import never entered the store, and
    the file may have changed since)."""
    from engine.kaggle import TEST_CSV, read_rows

    ds = s.get(Dataset, run.dataset_id)
    path = Path(ds.root) / TEST_CSV
    try:
        ids = [r["id"].strip() for _, r in read_rows(path, need=("id",))]
    except ValueError as e:
        raise ExportRefused(f"cannot read the dataset's test.csv: {e}") from None
    stored = [im.rel_path for im in queries.images(s, run.dataset_id, "test", ok_only=False)]
    if ids == stored:
        return ids
    head = f"{path} has {len(ids)} ids, the store {len(stored)} test images of dataset {ds.name!r}"
    known = set(stored)
    extra = [(n, i) for n, i in enumerate(ids) if i not in known]
    if extra:
        n, example = extra[0]
        raise ExportRefused(f"{head}: {len(extra)} not in the store, e.g. {example!r} (data row {n + 1}); "
                            f"run `aivh import` again, or fix test.csv")
    listed = set(ids)
    gone = [i for i in stored if i not in listed]
    if gone:
        raise ExportRefused(f"{head}: {len(gone)} stored ids no longer in test.csv, e.g. {gone[0]!r}; "
                            f"restore test.csv or import the dataset under a new name")
    n = next(k for k, (a, b) in enumerate(zip(ids, stored)) if a != b) if len(ids) == len(stored) else 0
    raise ExportRefused(f"{head}: the same ids in another order (data row {n + 1} is {ids[n]!r}, "
                        f"imported as {stored[n]!r}); restore test.csv's order")


def stale_problem(s: Session, run: Run) -> str | None:
    """Why the run's test predictions may not come from the checkpoint whose threshold export
    applies (the run's best epoch); None when they do."""
    found = preds.sources(s, run.id, "test")
    if not found or run.best_epoch is None:
        return None
    how = f"run `aivh predict --run {run.id} --split test` again, or pass {STALE_FLAG}"
    if len(found) > 1:
        parts = ", ".join(f"{src.count} from {src.describe()}" for src in found)
        return f"test predictions of run {run.id} come from several checkpoints ({parts}); {how}"
    src = found[0]
    if not src.known:
        return (f"test predictions of run {run.id} come from an unknown checkpoint (stored before aivh "
                f"recorded checkpoints), the threshold from epoch {run.best_epoch}; {how}")
    if src.epoch != run.best_epoch:
        return (f"test predictions of run {run.id} come from the epoch {src.epoch} checkpoint, but the "
                f"threshold is that of epoch {run.best_epoch} (the best); {how}")
    val = [v for v in preds.sources(s, run.id, "val") if v.epoch == run.best_epoch and v.checkpoint_sha1]
    if src.checkpoint_sha1 and val and all(v.checkpoint_sha1 != src.checkpoint_sha1 for v in val):
        return (f"test predictions of run {run.id} come from an epoch {src.epoch} checkpoint with sha1 "
                f"{src.checkpoint_sha1[:12]}, the threshold from another one (sha1 {val[0].checkpoint_sha1[:12]}); "
                f"{how}")
    return None


def prediction_source(s: Session, run: Run, split: str) -> str:
    """One line for the pages: which checkpoint made the run's predictions on a split."""
    found = preds.sources(s, run.id, split)
    if not found:
        return f"no {split} predictions"
    made = "; ".join(f"{src.count:,} by {src.describe()}" for src in found)
    return f"{split} predictions: {made} (best epoch: {run.best_epoch})"


def _val_auc(s: Session, run: Run, y: np.ndarray, p: np.ndarray) -> float | None:
    best = queries.best_epoch(s, run)
    if best is not None and best.val_auc is not None:
        return float(best.val_auc)
    if y.size and 0 < y.sum() < y.size:
        from engine import metrics

        return metrics.roc_auc(y, p)
    return None


def chance_margin(y: np.ndarray) -> float:
    """How far above 0.5 a validation AUC must be to beat chance: AUC_MARGIN, or two standard
    deviations of the AUC of random scores on these labels (Mann-Whitney null:
    sqrt((n1 + n0 + 1) / (12 n1 n0))) when validation is small; 30 images give 0.21."""
    pos = int(np.sum(y))
    neg = int(np.size(y)) - pos
    if pos == 0 or neg == 0:
        return AUC_MARGIN
    return max(AUC_MARGIN, 2 * float(np.sqrt((pos + neg + 1) / (12 * pos * neg))))


def _called(share: float) -> str | None:
    if share >= ONE_CLASS_SHARE:
        return "AI-generated"
    if share <= 1 - ONE_CLASS_SHARE:
        return "human-made"
    return None


def threshold_warnings(s: Session, run: Run, threshold: float, test_labels: list[int] | None = None,
                       *, val: tuple[np.ndarray, np.ndarray] | None = None) -> list[str]:
    """What is wrong with exporting at `threshold`: it calls (nearly) every validation or test
    image one class, or the validation AUC says the model does no better than chance (or
    validation is too small for any AUC to say otherwise).

    val: the run's labelled validation (labels, probabilities) when the caller has them loaded.
    """
    if val is None:
        rows = [(p, label) for _, _, p, label, _ in queries.prediction_rows(s, run, "val") if label is not None]
        val = (np.array([r[1] for r in rows], dtype=int), np.array([r[0] for r in rows], dtype=float))
    y, p = np.asarray(val[0], dtype=int), np.asarray(val[1], dtype=float)
    t = fmt_threshold(threshold)
    out = []
    if p.size:
        share, truth = float((p >= threshold).mean()), float(y.mean())
        cls = _called(share)
        if cls and _called(truth) != cls:
            out.append(f"degenerate threshold: {t} calls {share:.1%} of the validation images AI-generated "
                       f"({truth:.1%} are), nearly everything {cls}")
    auc = _val_auc(s, run, y, p)
    if auc is not None and auc <= 0.5 + (margin := chance_margin(y)):
        on = f" on {y.size:,} labelled validation images" if y.size else ""
        if 0.5 + margin >= 1.0:  # not even a perfect AUC would tell the model from chance
            out.append(f"too few labelled validation images to judge the model: validation AUC {auc:.3f}"
                       f"{on}, where chance alone reaches 0.5 + {margin:.3f}; validate on more images")
        else:
            out.append(f"degenerate model: validation AUC {auc:.3f}, no better than chance (0.5 + {margin:.3f}{on})")
    if test_labels:
        share = sum(test_labels) / len(test_labels)
        cls = _called(share)
        if cls:
            out.append(f"degenerate threshold: {t} calls {share:.1%} of the test images AI-generated, "
                       f"nearly everything {cls}")
    return out


def write_submission(rows: list[tuple[str, int]], path: Path, test_ids: list[str] | None = None) -> None:
    """Through a temporary file in the same folder and a rename: never a half-written CSV, and
    never one the validator rejects (checked against `test_ids`, else the rows' own ids)."""
    with atomic.atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["id", "label"])
            writer.writerows(rows)
        problems = validate_submission(tmp, [r[0] for r in rows] if test_ids is None else test_ids)
        if problems:
            raise ExportRefused(f"the written submission failed validation ({'; '.join(problems)}); "
                                f"{path} was left as it was")


def validate_submission(path: Path, test_ids: list[str]) -> list[str]:
    """Problems Kaggle would reject the file for; empty when it is fine."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != ["id", "label"]:
        return [f"header must be id,label, not {','.join(rows[0]) if rows else '<empty>'}"]
    problems = []
    ids = [r[0] if r else "" for r in rows[1:]]
    if ids != test_ids:
        problems.append(f"ids differ from test.csv ({len(ids)} rows vs {len(test_ids)} test ids)")
    bad = [i + 2 for i, r in enumerate(rows[1:]) if len(r) != 2 or r[1] not in ("0", "1")]
    if bad:
        problems.append(f"label not an int 0/1 on line {bad[0]} ({len(bad)} lines)")
    return problems


def export_run(sessions: sessionmaker[Session], run_id: int, out: Path,
               threshold: float | None = None, *, allow_stale: bool = False) -> dict:
    """Write the run's submission at `threshold` (default: the run's, see default_threshold).

    Refuses (ExportRefused, nothing written) when test.csv and the store disagree, when the test
    predictions do not come from the best checkpoint (unless allow_stale: then the override is
    recorded), and when the run's own threshold is degenerate (a given threshold is exported with
    its warnings recorded).
    """
    with sessions.begin() as s:
        run = queries.get_run(s, run_id)
        source = "given"
        if threshold is None:
            threshold, source = default_threshold(run)
        if not 0.0 <= threshold <= 1.0:
            raise ExportRefused(f"threshold {threshold} is outside [0, 1]")
        ids = test_csv_ids(s, run)
        rows = submission_rows(s, run, threshold)
        stale = stale_problem(s, run)
        if stale and not allow_stale:
            raise ExportRefused(stale)
        warnings = threshold_warnings(s, run, threshold, [label for _, label in rows])
        if source == "default":
            why = run.threshold_note or "validation stored none"
            warnings.insert(0, f"the run has no threshold of its own ({why}): {fmt_threshold(threshold)} "
                               f"is a guess")
        if warnings and source != "given":
            which = {"chosen": "chosen", "best_val_f1": "best validation-F1"}.get(source, "default")
            raise ExportRefused(f"{'; '.join(warnings)}; refused at the run's {which} threshold "
                                f"{fmt_threshold(threshold)}: pass --threshold to export anyway")
        found = preds.sources(s, run.id, "test")
        made_by = {"epoch": found[0].epoch, "checkpoint_sha1": found[0].checkpoint_sha1} \
            if len(found) == 1 else None
        out = out.expanduser().resolve()
        write_submission(rows, out, ids)
        rate = sum(label for _, label in rows) / len(rows)
        override = f"{STALE_FLAG}: {stale}" if stale else None
        queries.add_export(s, run_id=run_id, threshold=threshold, path=str(out), rows=len(rows),
                           positive_rate=rate, override=override, warnings=warnings or None)
    return {"path": str(out), "rows": len(rows), "positive_rate": round(rate, 6),
            "threshold": threshold, "threshold_source": source, "predictions": made_by,
            "warnings": warnings, "override": override}
