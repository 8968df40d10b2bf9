"""Batch inference: a DataLoader of uint8 images in, probabilities out, streamed."""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from engine.data import ImageDataset, collate, normalize


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but no CUDA device is available")
    return torch.device(name)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; full precision on the CPU (bf16 there is slower on most CPUs)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def prepare(model: nn.Module, device: torch.device) -> nn.Module:
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def make_loader(root: Path, rel_paths: list[str], labels: list[int] | None, *, size: int,
                batch_size: int, workers: int, device: torch.device, train: bool = False,
                mode: str = "resize", seed: int = 0, sampler=None) -> DataLoader:
    ds = ImageDataset(root, rel_paths, labels, size=size, train=train, mode=mode, seed=seed)
    return DataLoader(
        ds, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate,
        pin_memory=device.type == "cuda", drop_last=train and len(ds) > batch_size,
        prefetch_factor=4 if workers else None,
    )


@torch.no_grad()
def infer(model: nn.Module, loader: DataLoader, device: torch.device,
          ) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[tuple[int, str]]]]:
    """Yields (positions, logits as float32 on the CPU, failed [(position, message)]) per batch."""
    model.eval()
    for x, _y, idx, failed in loader:
        if x is None:
            yield torch.empty(0, dtype=torch.long), torch.empty(0), failed
            continue
        with autocast(device):
            logits = model(normalize(x, device, channels_last=device.type == "cuda")).squeeze(1)
        yield idx, logits.float().cpu(), failed


def predict_run(sessions, run_id: int, split: str = "test", *, batch_size: int = 64,
                device: str = "auto", workers: int | None = None, progress: bool = True) -> dict:
    """Probabilities for a split's images from the run's best checkpoint, streamed into the store.

    Each batch is written in its own short transaction, so memory stays flat and a crash
    keeps what was already predicted.
    """
    from tqdm import tqdm

    from db import queries
    from db.models import Dataset
    from engine.model import load_trained

    t0 = time.perf_counter()
    with sessions() as s:
        run = queries.get_run(s, run_id)
        if not run.checkpoint:
            raise ValueError(f"run {run_id} has no checkpoint yet (status {run.status})")
        ds = s.get(Dataset, run.dataset_id)
        ims = _split_images(s, run, split)
    model, cfg = load_trained(Path(run.checkpoint))
    dev = resolve_device(device)
    model = prepare(model, dev)
    workers = cfg.get("workers", 2) if workers is None else workers
    loader = make_loader(Path(ds.root), [p for _, p in ims], None, size=cfg["img_size"],
                         batch_size=batch_size, workers=workers, device=dev,
                         mode=cfg.get("resize_mode", "resize"))
    done, skipped = 0, []
    bar = tqdm(total=len(ims), desc=f"predict {split}", unit="img", disable=not progress,
               mininterval=0.5)
    for idx, logits, failed in infer(model, loader, dev):
        probs = torch.sigmoid(logits).tolist()
        with sessions.begin() as s:
            done += queries.upsert_predictions(s, run_id, [(ims[i][0], p) for i, p in zip(idx.tolist(), probs)])
        skipped += [msg for _, msg in failed]
        bar.update(len(probs) + len(failed))
    bar.close()
    return {"run": run_id, "split": split, "images": done, "skipped": len(skipped),
            "skipped_files": skipped, "seconds": round(time.perf_counter() - t0, 2)}


def _split_images(s, run, split: str) -> list[tuple[int, str]]:
    from db import queries

    if split in ("test", "all"):
        ims = queries.images(s, run.dataset_id, None if split == "all" else "test")
        return [(im.id, im.rel_path) for im in ims]
    if split not in ("train", "val"):
        raise ValueError(f"unknown split {split!r}: test, val, train or all")
    ids = set(queries.run_image_ids(s, run.id, split))
    return [(im.id, im.rel_path) for im in queries.images(s, run.dataset_id, "train") if im.id in ids]
