"""Saliency for an image of a run's dataset: the run's checkpoint and config, the image's file
and stamp, read from the store, then engine.saliency.explain (cached under the workspace).
Kept apart from engine/saliency.py, which reads no store, so the Review page may import that."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from db import queries
from db.models import Dataset
from db.store import home
from engine import backbones
from engine.images import check_unchanged, jpeg_scale_of, resolve_inside
from engine.model import load_trained
from engine.saliency import Attribution, Settings, checkpoint_key, explain


def explain_run_image(sessions, run_id: int, rel_path: str, settings: Settings, *,
                      model: nn.Module | None = None) -> tuple[Attribution, Path]:
    """Attribution for an image of a run's dataset, named as in the CSV. Returns it and the file.

    Raises ValueError for a run without a checkpoint, LookupError for an image not in the
    dataset, FileNotFoundError for a missing file, PermissionError for a path outside the root.
    """
    with sessions() as s:
        run = queries.get_run(s, run_id)
        if not run.checkpoint:
            raise ValueError(f"run {run_id} has no checkpoint (status {run.status})")
        ds = s.get(Dataset, run.dataset_id)
        im = queries.image_by_path(s, ds.id, rel_path)
        if im is None:
            raise LookupError(f"no image {rel_path!r} in dataset {ds.name!r} (name it as in the CSV)")
        stamp = (im.bytes, im.mtime_ns)
        checkpoint, cfg = Path(run.checkpoint), run.config
    if not checkpoint.is_file():
        raise FileNotFoundError(f"run {run_id}: checkpoint not found at {checkpoint}")
    path = resolve_inside(Path(ds.root), rel_path)
    if not path.is_file():
        raise FileNotFoundError(f"{rel_path}: image file is missing")
    check_unchanged(path, *stamp)  # UnreadableImage (an OSError) for a file replaced since import
    if model is None:
        model, _ = load_trained(checkpoint)
    att = explain(model, path, cfg["img_size"], settings, mode=cfg.get("resize_mode", "resize"),
                  cache=home() / "cache", cache_key=checkpoint_key(checkpoint), norm=backbones.norm_of(cfg),
                  jpeg_scale=jpeg_scale_of(cfg))
    return att, path
