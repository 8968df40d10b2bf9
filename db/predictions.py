"""Predictions with the checkpoint that made them (its epoch and the file's sha1).

Each takes a session first; callers own the transaction.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from db.models import Image, Prediction, RunImage


@dataclass(frozen=True)
class Source:
    """One checkpoint's share of a run's predictions on a split; epoch and sha1 are None for
    predictions stored before aivh recorded checkpoints (an unknown checkpoint)."""

    epoch: int | None
    checkpoint_sha1: str | None
    count: int

    @property
    def known(self) -> bool:
        return self.epoch is not None

    def describe(self) -> str:
        if not self.known:
            return "an unknown checkpoint (predicted before aivh recorded checkpoints)"
        sha = f", sha1 {self.checkpoint_sha1[:12]}" if self.checkpoint_sha1 else ""
        return f"the epoch {self.epoch} checkpoint{sha}"


def upsert(s: Session, run_id: int, pairs: Iterable[tuple[int, float]], *, epoch: int | None,
           checkpoint_sha1: str | None) -> int:
    """Store (image id, probability) pairs made by one checkpoint, replacing older ones."""
    rows = [{"run_id": run_id, "image_id": int(i), "prob": float(p), "epoch": epoch,
             "checkpoint_sha1": checkpoint_sha1} for i, p in pairs]
    if not rows:
        return 0
    insert = pg_insert if s.bind.dialect.name == "postgresql" else sqlite_insert
    stmt = insert(Prediction.__table__)
    stmt = stmt.on_conflict_do_update(
        index_elements=["run_id", "image_id"],
        set_={"prob": stmt.excluded.prob, "epoch": stmt.excluded.epoch,
              "checkpoint_sha1": stmt.excluded.checkpoint_sha1})
    s.execute(stmt, rows)
    return len(rows)


def sources(s: Session, run_id: int, split: str) -> list[Source]:
    """Which checkpoints made a run's predictions on a split ("test", or the run's own "val" /
    "train" images), most predictions first: one entry when the set is consistent."""
    q = select(Prediction.epoch, Prediction.checkpoint_sha1, func.count()).where(Prediction.run_id == run_id)
    if split == "test":
        q = q.join(Image, Image.id == Prediction.image_id).where(Image.split == "test")
    elif split in ("val", "train"):
        q = q.join(RunImage, (RunImage.run_id == Prediction.run_id) & (RunImage.image_id == Prediction.image_id)
                   ).where(RunImage.role == split)
    else:
        raise ValueError(f"unknown split {split!r}: test, val or train")
    q = q.group_by(Prediction.epoch, Prediction.checkpoint_sha1)
    found = [Source(e, h, n) for e, h, n in s.execute(q)]
    return sorted(found, key=lambda x: (-x.count, x.epoch or 0))


def drop_for_images(s: Session, image_ids: Iterable[int]) -> int:
    """Delete every run's predictions of these images (their files' content changed: what was
    predicted is another picture's); how many rows."""
    ids = list(image_ids)
    if not ids:
        return 0
    return s.execute(delete(Prediction).where(Prediction.image_id.in_(ids))).rowcount or 0
