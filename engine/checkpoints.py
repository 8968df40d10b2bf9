"""Checkpoint files: staged at an epoch's end, promoted once the store has recorded the epoch,
recovered after a crash, hashed, and loaded safely (weights_only)."""
from __future__ import annotations

import hashlib
import io
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from engine.atomic import atomic_path

if TYPE_CHECKING:
    from engine.config import TrainConfig
    from engine.train import TrainResult

log = logging.getLogger("aivh.checkpoints")
LAST_NEXT, BEST_NEXT = "last.next.pt", "best.next.pt"  # staged at an epoch's end, renamed once recorded





def torch_load(path: Path) -> dict:
    """A checkpoint's dict, tensors only (weights_only: nothing in the file is executed)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def save_atomic(obj: dict, path: Path) -> None:
    """Write then rename: a kill mid-write leaves the previous file intact."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def stage_checkpoints(out_dir: Path, model, opt, sched, cfg: TrainConfig, result: TrainResult,
                       epoch: int, bad_epochs: int, world: int = 1, *, is_best: bool) -> None:
    """last.next.pt holds everything --resume needs; best.next.pt only what prediction needs."""
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(), "epoch": epoch, "bad_epochs": bad_epochs,
             "config": cfg.to_dict(), "history": [asdict(h) for h in result.history],
             "best_val_probs": torch.from_numpy(result.best_val_probs).float(),
             "rng": torch.get_rng_state(), "world_size": world}
    device = next(model.parameters()).device
    if device.type == "cuda":  # the GPU's generator too (dropout, stochastic depth on the device)
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    save_atomic(state, out_dir / LAST_NEXT)
    if is_best:
        save_atomic({"model": model.state_dict(), "config": cfg.to_dict(), "epoch": epoch},
                    out_dir / BEST_NEXT)


def _rename(src: Path, dst: Path) -> None:
    os.replace(src, dst)


def promote_checkpoints(out_dir: Path) -> None:
    """Staged files replace best.pt, then last.pt (a rename each: never a torn file)."""
    for staged, final in ((BEST_NEXT, "best.pt"), (LAST_NEXT, "last.pt")):
        if (out_dir / staged).is_file():
            _rename(out_dir / staged, out_dir / final)
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover_checkpoints(out_dir: Path, recorded_epochs: set[int]) -> int | None:
    """Finish or undo an end of epoch that a kill or an error interrupted: staged files whose
    epoch the store recorded are promoted, others deleted. Returns last.pt's epoch (None: none)."""
    last_next, best_next = out_dir / LAST_NEXT, out_dir / BEST_NEXT
    if last_next.is_file():
        epoch = int(torch.load(last_next, map_location="cpu", weights_only=True)["epoch"])
        if epoch in recorded_epochs:
            log.info("epoch %d was recorded but its checkpoints not yet in place: promoting them", epoch)
            promote_checkpoints(out_dir)
        else:
            log.info("epoch %d was not recorded: discarding its staged checkpoints", epoch)
            best_next.unlink(missing_ok=True)  # best first: a lone best.next.pt is always discarded
            last_next.unlink()
    else:
        best_next.unlink(missing_ok=True)
    last = out_dir / "last.pt"
    if not last.is_file():
        return None
    return int(torch.load(last, map_location="cpu", weights_only=True)["epoch"])






def load_checkpoint(path: Path) -> tuple[nn.Module, dict, int | None, str]:
    """(model, config, epoch, sha1) of an aivh checkpoint, read once: the hash is of the bytes
    loaded, even if the trainer replaces the file meanwhile. weights_only: no code runs."""
    from engine.errors import WeightsError
    from engine.model import from_checkpoint

    try:
        data = path.read_bytes()
    except OSError as e:
        raise WeightsError(f"{path}: cannot read the checkpoint ({e.strerror or type(e).__name__})") from None
    try:
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a WeightsError
        raise WeightsError(f"{path}: not a PyTorch weights file ({type(e).__name__})") from None
    model, config = from_checkpoint(path, ckpt)
    epoch = ckpt.get("epoch")
    return model, config, int(epoch) if epoch is not None else None, hashlib.sha1(data).hexdigest()
