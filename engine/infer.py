"""The inference loop: a model and a loader in, probabilities by position out."""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader

from engine.device import autocast
from engine.gpu_decode import device_batches
from engine.transforms import normalize


@torch.no_grad()
def infer(model: nn.Module, loader: DataLoader, device: torch.device, *, ahead: int | None = None,
          norm: tuple | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[tuple[int, str]]]]:
    """Yields (positions, logits as float32 on the CPU, failed [(position, message)]) per batch.

    Pipelined: batch k+1 is queued on the device before batch k's logits are copied back, so
    the device does not wait for the host between batches; with ahead > 0 the decoding of
    the next batches overlaps the model too (device_batches). norm: the architecture's input
    (mean, std), backbones.norm_of(config); ImageNet's when None.
    """
    model.eval()
    pending = None
    for x, _y, idx, failed in device_batches(loader, device, ahead=ahead):
        if x is None:
            out = (idx, None, failed)
        else:
            with autocast(device):
                logits = model(normalize(x, device, channels_last=device.type == "cuda", norm=norm)).squeeze(1)
            out = (idx, logits, failed)
        if pending is not None:
            yield _finish(pending)
        pending = out
    if pending is not None:
        yield _finish(pending)


def _finish(batch) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, str]]]:
    idx, logits, failed = batch
    return idx, torch.empty(0) if logits is None else logits.float().cpu(), failed


@torch.no_grad()
def embed(model: nn.Module, loader: DataLoader, device: torch.device, *, norm: tuple | None = None,
          ) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[tuple[int, str]]]]:
    """Like infer, but yields each batch's pooled features (backbones.features: the head's
    input) as float32 on the CPU: what a linear probe is fitted on."""
    from engine.backbones import features

    model.eval()
    for x, _y, idx, failed in device_batches(loader, device):
        if x is None:
            yield idx, torch.empty(0), failed
            continue
        with autocast(device):
            f = features(model, normalize(x, device, channels_last=device.type == "cuda", norm=norm))
        yield idx, f.float().cpu(), failed
