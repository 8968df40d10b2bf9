"""What each cached loader of dashboard.store is keyed on, read from a session the store opened.

Each key is one small query that changes whenever what it guards does: the label version, a
run's predictions (count and sum of probabilities: an upsert keeps the row, so a count or id
alone would not see a rewritten probability; the checkpoints that made them), a run's state
(status, best epoch, thresholds, checkpoint), a dataset's test images and test.csv on disk, an
audit's state. This module opens no session; dashboard.store is the only one that does.
"""
from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db import queries
from db.models import Dataset, Image, Prediction, Run


def predictions(s: Session, run_id: int) -> tuple:
    """Changes whenever a run's predictions do: rows added or removed, a probability rewritten,
    another checkpoint."""
    q = select(func.count(), func.sum(Prediction.prob), func.min(Prediction.epoch),
               func.max(Prediction.epoch), func.min(Prediction.checkpoint_sha1),
               func.max(Prediction.checkpoint_sha1))
    return tuple(s.execute(q.where(Prediction.run_id == run_id)).one())


def run_state(run: Run | None) -> tuple:
    if run is None:
        return (None,)
    return (run.status, run.best_epoch, run.best_threshold, run.chosen_threshold, run.checkpoint,
            run.labels_as_of, str(run.finished_at))


def run(s: Session, run_id: int) -> tuple:
    """Everything a page shows about a run: labels, predictions, run state."""
    return (queries.label_version(s), predictions(s, run_id), run_state(s.get(Run, run_id)))


def test_images(s: Session, run: Run) -> tuple:
    """Test images of the run's dataset (added, re-probed) and test.csv on disk (size, mtime)."""
    from engine.kaggle import TEST_CSV

    q = select(func.count(), func.max(Image.id), func.sum(Image.mtime_ns % 1_000_003), func.max(Image.sha1),
               func.sum(func.length(Image.status)))
    images = s.execute(q.where(Image.dataset_id == run.dataset_id, Image.split == "test")).one()
    root = s.scalar(select(Dataset.root).where(Dataset.id == run.dataset_id))
    try:
        st_ = (Path(root) / TEST_CSV).stat()
        csv_state = (st_.st_size, st_.st_mtime_ns)
    except OSError:
        csv_state = None
    return tuple(images), csv_state


def audit(s: Session, audit_id: int) -> tuple:
    """Labels and the audit's status, flagged count and fold runs."""
    found = queries.get_audit(s, audit_id)
    return (queries.label_version(s), found.status, found.flagged,
            tuple((r.id, r.status) for r in queries.audit_runs(s, audit_id)))


def compare(s: Session, a: int, b: int) -> tuple:
    """Run a's state and labels, run b's predictions and state, the dataset's evaluation sets."""
    sets = tuple(e.id for e in queries.list_eval_sets(s, queries.get_run(s, a).dataset_id))
    return (run(s, a), predictions(s, b), run_state(s.get(Run, b)), sets)
