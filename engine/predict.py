"""`aivh predict`: a run's best checkpoint over a split's images, probabilities streamed into the store."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from engine import backbones
from engine.checkpoints import load_checkpoint
from engine.device import default_workers, prepare, resolve_device
from engine.images import jpeg_scale_of
from engine.infer import infer
from engine.loader import make_loader


def predict_run(sessions, run_id: int, split: str = "test", *, batch_size: int = 64,
                device: str = "auto", workers: int | None = None, progress: bool = True,
                decode: str = "auto") -> dict:
    """Probabilities for a split's images from the run's best checkpoint, streamed into the store.

    Each prediction is stored with the checkpoint that made it (its epoch and the sha1 of the
    file's bytes, hashed from the very bytes that were loaded), so export can tell predictions
    of an older best epoch from the current one. Each batch is written in its own short
    transaction, so memory stays flat and a crash keeps what was already predicted.
    """
    from tqdm import tqdm

    from db import predictions, queries
    from db.models import Dataset

    t0 = time.perf_counter()
    with sessions() as s:
        run = queries.get_run(s, run_id)
        if not run.checkpoint:
            raise ValueError(f"run {run_id} has no checkpoint yet (status {run.status})")
        ds = s.get(Dataset, run.dataset_id)
        ims = run_split_images(s, run, split)
        stamps = queries.image_stamps(s, run.dataset_id)  # a file replaced since import is skipped
    model, cfg, epoch, sha1 = load_checkpoint(Path(run.checkpoint))
    dev = resolve_device(device)
    model = prepare(model, dev)
    workers = cfg.get("workers", default_workers(dev.type == "cuda")) if workers is None else workers
    loader = make_loader(Path(ds.root), [p for _, p in ims], None, size=cfg["img_size"],
                         batch_size=batch_size, workers=workers, device=dev,
                         mode=cfg.get("resize_mode", "resize"), decode=decode, stamps=stamps,
                         jpeg_scale=jpeg_scale_of(cfg))
    done, skipped = 0, []
    bar = tqdm(total=len(ims), desc=f"predict {split}", unit="img", disable=not progress,
               mininterval=0.5)
    for idx, logits, failed in infer(model, loader, dev, norm=backbones.norm_of(cfg)):
        probs = torch.sigmoid(logits).tolist()
        with sessions.begin() as s:
            done += predictions.upsert(s, run_id, [(ims[i][0], p) for i, p in zip(idx.tolist(), probs)],
                                       epoch=epoch, checkpoint_sha1=sha1)
        skipped += [msg for _, msg in failed]
        bar.update(len(probs) + len(failed))
    bar.close()
    return {"run": run_id, "split": split, "images": done, "skipped": len(skipped),
            "skipped_files": skipped, "epoch": epoch, "checkpoint_sha1": sha1,
            "seconds": round(time.perf_counter() - t0, 2)}


def run_split_images(s, run, split: str) -> list[tuple[int, str]]:
    """(image id, path) to predict: plain tuples, so 80,000 images cost a few MB, not ORM objects."""
    from db import queries

    if split in ("test", "all"):
        return queries.image_paths(s, run.dataset_id, None if split == "all" else "test")
    if split not in ("train", "val"):
        raise ValueError(f"unknown split {split!r}: test, val, train or all")
    ids = set(queries.run_image_ids(s, run.id, split))
    return [(i, p) for i, p in queries.image_paths(s, run.dataset_id, "train") if i in ids]
