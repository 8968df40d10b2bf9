"""EfficientNet-B3 from torchvision with a single-logit head, and weight loading."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import EfficientNet_B3_Weights, efficientnet_b3

from engine.errors import WeightsError


def build_model(pretrained: str | None = None) -> nn.Module:
    """B3 whose head outputs one logit (no Sigmoid: the loss applies it).

    pretrained: None (random init), "imagenet" (torchvision's weights API; needs a download
    the first time), or the path of a local torchvision B3 state dict or an aivh checkpoint.

    Also flushes denormal floats to zero in the calling thread (and the CPU kernels it runs):
    on an AMD EPYC a B3 training step at 32 px took 18 s with them and 0.4-0.7 s without, and
    no prediction depends on numbers below 1e-38.
    """
    torch.set_flush_denormal(True)  # x86 only; a no-op returning False elsewhere
    if pretrained == "imagenet":
        model = efficientnet_b3(weights=EfficientNet_B3_Weights.IMAGENET1K_V1)
    else:
        model = efficientnet_b3(weights=None)
    in_features = model.classifier[1].in_features  # 1536
    if pretrained not in (None, "imagenet"):
        load_backbone(model, Path(pretrained))
    model.classifier[1] = nn.Linear(in_features, 1)
    return model


def _load(path: Path) -> object:
    """torch.load without unpickling arbitrary objects; any unusable file is a WeightsError."""
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a WeightsError
        raise WeightsError(f"{path}: not a PyTorch weights file ({type(e).__name__})") from None


def read_weights(path: Path, obj: object = None) -> dict:
    """The state dict in a torchvision weights file or an aivh checkpoint."""
    obj = _load(path) if obj is None else obj
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors")
    return {k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in obj.items()}


def load_backbone(model: nn.Module, path: Path) -> None:
    """Load every weight but the classifier head, which is replaced for one logit."""
    state = {k: v for k, v in read_weights(path).items() if not k.startswith("classifier.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("classifier.")]
    if missing or unexpected:
        raise WeightsError(
            f"{path}: not EfficientNet-B3 weights ({len(missing)} missing, {len(unexpected)} unexpected keys)"
        )


def load_trained(path: Path) -> tuple[nn.Module, dict]:
    """A model from an aivh checkpoint, with the config it was trained with."""
    ckpt = _load(path)
    if not isinstance(ckpt, dict) or "config" not in ckpt:
        raise WeightsError(f"{path}: not an aivh checkpoint (no config inside)")
    model = build_model(None)
    model.load_state_dict(read_weights(path, ckpt))
    return model, ckpt["config"]
