"""Where the model runs: device choice, autocast, memory format and compile, decoding workers."""
from __future__ import annotations

import os
from contextlib import nullcontext

import torch
from torch import nn


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


def default_workers(cuda: bool | None = None) -> int:
    """Decoding processes: half the cores, up to 4, on the CPU (the model needs the other
    half: on 2 cores one worker kept 96% of the training step, two 76%, docs/benchmarks.md);
    all cores but one (at most 16) beside a GPU, whose training step outruns a few decoders."""
    cores = os.cpu_count() or 1
    cuda = torch.cuda.is_available() if cuda is None else cuda
    return max(1, min(16, cores - 1)) if cuda else max(1, min(4, cores // 2))
