"""Where the model runs: device choice, autocast, memory format and compile, decoding workers."""
from __future__ import annotations

import os
from contextlib import nullcontext

import torch
from torch import nn


def unavailable(name: str | None) -> str | None:
    """Why device `name` cannot be used on this machine (one line), or None when it can: the
    check made before a run is recorded or a command starts its work."""
    if not name or name in ("auto", "cpu"):
        return None
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            return f"device {name}: no CUDA device is available on this machine (use cpu, or auto)"
        index = name.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            return (f"device {name}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                    f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    if name == "mps" and not torch.backends.mps.is_available():
        return f"device {name}: Apple's MPS is not available on this machine (use cpu, or auto)"
    return None


def require(name: str | None) -> None:
    """unavailable() as an error: ValueError (one line) when the device cannot be used."""
    problem = unavailable(name)
    if problem:
        raise ValueError(problem)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    require(name)
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
