"""Label audit: k fold runs give every training image an out-of-fold probability, and
cleanlab ranks each image's label by how likely it is wrong.

An audit is a row in `audits` and k runs (kind "fold") that point at it. Fold runs keep their
final epoch (`keep_epoch="last"`), so nothing is chosen on the labels being audited. With
`probe` in its config, each fold is a linear probe on a frozen backbone's cached features
(engine.probe): the same k folds in seconds rather than k trainings.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from db import evaluation, labelling, queries
from db import runs as owners
from db.models import Audit, AuditScore, Dataset, Run, RunKind, RunStatus
from engine import jobs
from engine.atomic import write_csv
from engine.config import TrainConfig
from engine.duplicates import split_groups
from engine.probe import execute_probe
from engine.processes import now
from engine.splits import assign_folds

log = logging.getLogger("aivh.audit")
CSV_COLUMNS = ("file_name", "given_label", "prob", "quality", "flagged")


def create_audit(s: Session, dataset: Dataset, cfg: TrainConfig, folds: int) -> Audit:
    """The audit row and its k queued fold runs, each with its train / held-out images fixed."""
    if folds < 2:
        raise ValueError(f"--folds must be at least 2, not {folds}")
    cfg = jobs.recorded(dataclasses.replace(cfg, keep_epoch="last", limit=None))
    ims = {im.id: im.rel_path for im in queries.images(s, dataset.id, "train")}
    strata = {i: v for i, v in labelling.import_labels(s, dataset.id).items() if i in ims}
    if min(np.bincount(list(strata.values()), minlength=2)) < folds:
        raise ValueError(f"dataset {dataset.name!r} needs at least {folds} labelled images of each "
                         f"class for {folds} folds")
    groups, grouping = split_groups(s, dataset.id, Path(dataset.root), strata, group=cfg.group, progress=False)
    fold_of = assign_folds({i: ims[i] for i in strata}, strata, folds, cfg.seed, groups=groups)
    audit = Audit(dataset_id=dataset.id, folds=folds, config={**cfg.to_dict(), "grouping": grouping},
                  status="queued", labels_as_of=labelling.newest_label_id(s, dataset.id))
    s.add(audit)
    s.flush()
    for k in range(folds):
        run = Run(dataset_id=dataset.id, kind=RunKind.FOLD.value, status=RunStatus.QUEUED.value,
                  config=cfg.to_dict(), labels_as_of=audit.labels_as_of, audit_id=audit.id, fold=k)
        s.add(run)
        s.flush()
        queries.set_run_images(s, run.id, {
            "train": sorted(i for i, f in fold_of.items() if f != k),
            "val": sorted(i for i, f in fold_of.items() if f == k)})
    return audit


def run_audit(sessions: sessionmaker[Session], audit_id: int, *, progress: bool = True) -> Audit:
    """Train the fold runs that have not succeeded (resuming a dead one), then score."""
    with sessions.begin() as s:
        audit = evaluation.get_audit(s, audit_id)
        audit.status, audit.error = "running", None
        fold_runs = [(r.id, r.status, bool(r.config.get("probe"))) for r in evaluation.audit_runs(s, audit_id)]
    try:
        for n, (run_id, status, is_probe) in enumerate(fold_runs, 1):
            if status == "succeeded":
                continue
            log.info("audit %d: fold %d/%d (run %d%s)", audit_id, n, len(fold_runs), run_id,
                     ", a probe on cached features" if is_probe else "")
            if is_probe:  # seconds of work, nothing to resume: a dead one starts again
                if status != "queued":
                    _requeue(sessions, run_id)
                run = execute_probe(run_id, sessions=sessions, progress=progress)
            else:
                resume = status != "queued" and _resumable(sessions, run_id)
                run = jobs.execute(run_id, resume=resume, progress=progress, sessions=sessions)
            if run.status != "succeeded":
                raise RuntimeError(f"fold run {run_id} {run.status}")
        with sessions.begin() as s:
            flagged = score_audit(s, audit_id)
            audit = evaluation.get_audit(s, audit_id)
            audit.status, audit.flagged, audit.finished_at = "succeeded", flagged, now()
            return audit
    except BaseException as e:
        with sessions.begin() as s:
            audit = evaluation.get_audit(s, audit_id)
            audit.status, audit.error = "failed", f"{type(e).__name__}: {e}"
        raise


def _resumable(sessions: sessionmaker[Session], run_id: int) -> bool:
    """A fold run that died resumes from last.pt; one that died before its first epoch restarts."""
    from db.store import run_dir

    if not (run_dir(run_id) / "last.pt").is_file():
        _requeue(sessions, run_id)  # checks it may, as below
        return False
    with sessions.begin() as s:
        jobs.check_resumable(s, run_id)
    return True


def _requeue(sessions: sessionmaker[Session], run_id: int) -> None:
    """Queue a dead fold run again, taking it from its dead owner (compare and set) and leaving
    no owner, so nothing reaps it as a dead queued run before this process claims it."""
    with sessions.begin() as s:
        jobs.check_resumable(s, run_id)  # refuses while its owner lives
        run = queries.get_run(s, run_id)
        if not owners.take(s, run_id, owners.owner_of(run), (None, None, None),
                           status=RunStatus.QUEUED.value, error=None, finished_at=None,
                           cancel_requested=False):  # resuming the audit asks its folds to go on
            raise ValueError(f"run {run_id} was taken by another process while being queued again")


def label_scores(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(quality, flagged) per image from cleanlab: self-confidence scores, pruned-by-noise-rate issues."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    pred_probs = np.column_stack([1.0 - probs, probs])
    quality = get_label_quality_scores(labels, pred_probs)
    flagged = find_label_issues(labels, pred_probs, n_jobs=1)
    return quality, flagged


def score_audit(s: Session, audit_id: int) -> int:
    """Store a score per training image that has an out-of-fold probability; returns how many are flagged."""
    audit = evaluation.get_audit(s, audit_id)
    given = labelling.current_labels(s, audit.dataset_id, as_of=audit.labels_as_of)
    oof: dict[int, float] = {}
    for run in evaluation.audit_runs(s, audit_id):
        held_out = queries.run_image_ids(s, run.id, "val")
        oof.update(queries.predictions(s, run.id, held_out))
    ids = sorted(i for i in oof if i in given)
    if len(ids) < 2 or len({given[i] for i in ids}) < 2:
        raise ValueError(f"audit {audit_id}: too few out-of-fold predictions to score ({len(ids)})")
    labels = np.array([given[i] for i in ids])
    probs = np.array([oof[i] for i in ids])
    quality, flagged = label_scores(labels, probs)
    order = sorted(range(len(ids)), key=lambda n: (quality[n], ids[n]))
    s.execute(delete(AuditScore).where(AuditScore.audit_id == audit_id))
    s.execute(AuditScore.__table__.insert(), [
        {"audit_id": audit_id, "image_id": ids[n], "given_label": int(labels[n]), "prob": float(probs[n]),
         "quality": float(quality[n]), "flagged": bool(flagged[n]), "rank": r}
        for r, n in enumerate(order, 1)])
    return int(flagged.sum())


def write_audit_csv(s: Session, audit_id: int, path: Path) -> Path:
    """file_name,given_label,prob,quality,flagged worst first; temporary file + rename."""
    return write_csv(path, CSV_COLUMNS, (
        [row.rel_path, row.given_label, f"{row.prob:.6f}", f"{row.quality:.6f}", int(row.flagged)]
        for row in evaluation.audit_rows(s, audit_id)))
