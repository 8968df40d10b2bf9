"""A run's stored embeddings: each image's pooled feature vector (the head's input) from the
run's checkpoint, float16, in the run folder, indexed by image id.

The file format is the contract between what writes embeddings (`aivh embed`) and what reads
them (duplicates by embedding, the embedding map, "more like this"):
runs/<id>/embeddings.npz with
  image_id   int64   (N,)    the store's image ids, ascending, unique
  vectors    float16 (N, D)  pooled features
  checkpoint str     ()      sha1 of the checkpoint they came from ("" for a backbone only)
written through an atomic rename, read with allow_pickle=False.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from db.store import home
from engine import atomic

FILE = "embeddings.npz"


@dataclass(frozen=True)
class Embeddings:
    image_id: np.ndarray  # int64 (N,), ascending
    vectors: np.ndarray  # float16 (N, D)
    checkpoint: str

    def rows(self, image_ids) -> np.ndarray:
        """Row positions of `image_ids` (-1 where an image has no vector)."""
        ids = np.asarray(image_ids, dtype=np.int64)
        if not len(self.image_id):
            return np.full(len(ids), -1, dtype=np.int64)
        pos = np.clip(np.searchsorted(self.image_id, ids), 0, len(self.image_id) - 1)
        return np.where(self.image_id[pos] == ids, pos, -1)


def path(run_id: int) -> Path:
    """Where the run's embeddings are (reading creates no folder)."""
    return home() / "runs" / str(run_id) / FILE


def save(run_id: int, image_id, vectors, checkpoint: str = "") -> Path:
    """Write a run's embeddings (sorted by image id) atomically; returns the file."""
    ids = np.asarray(image_id, dtype=np.int64)
    vecs = np.asarray(vectors, dtype=np.float16)
    if vecs.ndim != 2 or len(ids) != len(vecs):
        raise ValueError(f"embeddings: {len(ids)} ids for vectors of shape {vecs.shape}")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("embeddings: an image id appears twice")
    order = np.argsort(ids, kind="stable")
    file = path(run_id)
    file.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(file, durable=False) as tmp, open(tmp, "wb") as f:
        np.savez(f, image_id=ids[order], vectors=vecs[order], checkpoint=np.array(checkpoint))
    return file


def load(run_id: int) -> Embeddings:
    """The run's embeddings; LookupError naming the command when it has none yet."""
    file = path(run_id)
    if not file.is_file():
        raise LookupError(f"run {run_id} has no embeddings yet: run `aivh embed --run {run_id}`")
    with np.load(file, allow_pickle=False) as z:
        found = Embeddings(z["image_id"].astype(np.int64), z["vectors"], str(z["checkpoint"]))
    if len(found.image_id) != len(found.vectors) or np.any(np.diff(found.image_id) <= 0):
        raise ValueError(f"{file}: not an embeddings file aivh wrote (ids unsorted or not one per vector)")
    return found


def exists(run_id: int) -> bool:
    return path(run_id).is_file()


def source_note(s, run, found: Embeddings) -> tuple[str, str | None]:
    """(one line: which checkpoint the run's embeddings came from, a warning when that is not the
    run's best checkpoint now: neighbours and the map would show an older model). The best
    checkpoint's sha1 is the one its validation predictions name (db.predictions.sources)."""
    from db import predictions

    if not found.checkpoint:
        return f"Embeddings of run #{run.id}: no checkpoint recorded (a backbone alone).", None
    best = sorted({v.checkpoint_sha1 for v in predictions.sources(s, run.id, "val")
                   if v.epoch == run.best_epoch and v.checkpoint_sha1})
    short = found.checkpoint[:12]
    if found.checkpoint in best:
        return f"Embeddings of run #{run.id}'s best checkpoint (epoch {run.best_epoch}, sha1 {short}).", None
    line = f"Embeddings of run #{run.id} from checkpoint sha1 {short}."
    if not best:  # no best epoch recorded with a sha1 (a run from before aivh recorded them): cannot tell
        return line, None
    return line, (f"These embeddings come from another checkpoint than run #{run.id}'s best now (epoch "
                  f"{run.best_epoch}, sha1 {best[0][:12]}): neighbours, copies by features and the map "
                  f"show the older model. Run `aivh embed --run {run.id}` again.")
