"""The trainer's callbacks that record a run in the store: progress, cancel requests, epochs, the best checkpoint and its validation predictions. Only the run's owner writes."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db import runs as owners
from db.models import Epoch, Run
from engine import liveness
from engine.errors import Cancelled, LostRun
from engine.liveness import Heartbeat
from engine.metrics import threshold_note
from engine.processes import now, owner_text
from engine.train import Callbacks, EpochResult


class StoreCallbacks(Callbacks):
    """Writes progress, heartbeat, epochs and best validation predictions; obeys Cancel.
    Writes only while `owner` owns the run (LostRun otherwise)."""

    def __init__(self, sessions: sessionmaker[Session], run_id: int, val_ids: list[int],
                 val_labels: list[int] | None = None, owner: owners.Owner | None = None,
                 heartbeat: Heartbeat | None = None, after_epoch=None):
        self.sessions, self.run_id, self.val_ids = sessions, run_id, val_ids
        self._after_epoch = after_epoch  # engine.sweep: report to the pruner, maybe raise Pruned
        self.val_labels = np.asarray(val_labels if val_labels is not None else [], dtype=np.int64)
        self.owner, self.heartbeat = owner, heartbeat
        self.last_beat = 0.0

    def _own(self, run: Run) -> None:
        if (self.heartbeat is not None and self.heartbeat.lost) or (
                self.owner is not None and owners.owner_of(run) != self.owner):
            raise LostRun(f"run {self.run_id} is now owned by {owner_text(run)}; this process stops")

    def on_batch(self, epoch: int, batch: int, batches: int, images_per_s: float,
                 phase: str = "train") -> None:
        if time.monotonic() - self.last_beat < liveness.HEARTBEAT_S and batch < batches:
            return
        self.last_beat = time.monotonic()
        with self.sessions.begin() as s:
            run = queries.get_run(s, self.run_id)
            self._own(run)
            if run.cancel_requested:
                raise Cancelled()
            run.heartbeat_at = now()
            progress = {**(run.progress or {}), "epoch": epoch, "phase": phase, "batch": batch,
                        "batches": batches}
            if phase == "train":
                progress["images_per_s"] = round(images_per_s, 2)
            run.progress = progress

    def on_epoch(self, result: EpochResult, *, is_best: bool, val_probs: np.ndarray,
                 checkpoint: Path, checkpoint_sha1: str | None = None) -> None:
        with self.sessions.begin() as s:
            run = queries.get_run(s, self.run_id)
            self._own(run)
            s.merge(Epoch(run_id=self.run_id, **epoch_values(result)))
            run.heartbeat_at = now()
            if is_best:
                note = threshold_note(self.val_labels, val_probs) if self.val_labels.size else None
                record_best(s, run, result, checkpoint, checkpoint_sha1, self.val_ids, val_probs, note)

    def after_epoch(self, result: EpochResult) -> None:
        if self._after_epoch is not None:
            self._after_epoch(result)


def epoch_values(result: EpochResult) -> dict:
    values = {k: v for k, v in vars(result).items() if k != "skipped"}
    return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in values.items()}


def record_best(s: Session, run: Run, result: EpochResult, checkpoint: Path, sha1: str | None,
                 val_ids: list[int], val_probs: np.ndarray, note: str | None) -> None:
    threshold = result.val_best_threshold
    run.best_epoch, run.checkpoint = result.epoch, str(checkpoint)
    run.best_threshold = None if np.isnan(threshold) else threshold
    run.threshold_note = note if run.best_threshold is None else None
    if run.best_threshold is None and run.threshold_note is None:
        run.threshold_note = "validation could not choose a threshold"
    store_val_predictions(s, run.id, val_ids, val_probs, epoch=result.epoch, checkpoint_sha1=sha1)


def store_val_predictions(s: Session, run_id: int, val_ids: list[int], probs: np.ndarray, *,
                           epoch: int | None = None, checkpoint_sha1: str | None = None) -> None:
    """The best epoch's validation probabilities, each row naming that epoch and best.pt's sha1."""
    owners.replace_predictions(s, run_id, val_ids,
                               [(i, p) for i, p in zip(val_ids, probs) if not np.isnan(p)],
                               epoch=epoch, checkpoint_sha1=checkpoint_sha1)
