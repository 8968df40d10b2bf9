"""The architectures aivh trains: torchvision's EfficientNet-B3 (the default, as every run before
2026-11-28 used) and any timm model. Per architecture: its input normalisation, its native
image size, its one-logit head, its Grad-CAM layer and its pooled features.

timm is imported only when a timm architecture is asked for.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from engine.transforms import IMAGENET_MEAN, IMAGENET_STD

DEFAULT_ARCH = "efficientnet_b3"
TORCHVISION_SIZES = {"efficientnet_b3": 300}  # torchvision's own: the weights' native resolution


@dataclass(frozen=True)
class ArchSpec:
    name: str
    library: str  # "torchvision" or "timm"
    img_size: int  # native input size of its ImageNet weights
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def spec(arch: str) -> ArchSpec:
    """What aivh needs to know of an architecture; ValueError (one line) for an unknown name."""
    if arch in TORCHVISION_SIZES:
        return ArchSpec(arch, "torchvision", TORCHVISION_SIZES[arch], IMAGENET_MEAN, IMAGENET_STD)
    try:
        import timm
    except ImportError:
        raise ValueError(f"architecture {arch!r} needs timm (pip install timm); built in: "
                         f"{', '.join(TORCHVISION_SIZES)}") from None
    if not timm.is_model(arch):
        raise ValueError(f"unknown architecture {arch!r}: neither {', '.join(TORCHVISION_SIZES)} "
                         "nor a timm model name (python -c 'import timm; print(timm.list_models())')")
    cfg = timm.get_pretrained_cfg(arch)
    size = int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else 224
    mean = tuple(cfg.mean) if cfg is not None and cfg.mean else IMAGENET_MEAN
    std = tuple(cfg.std) if cfg is not None and cfg.std else IMAGENET_STD
    return ArchSpec(arch, "timm", size, mean, std)


def create(arch: str) -> nn.Module:
    """The architecture with random weights and a head that outputs one logit."""
    s = spec(arch)
    if s.library == "torchvision":
        from torchvision.models import efficientnet_b3

        model = efficientnet_b3(weights=None)
        model.classifier[1] = nn.Linear(model.classifier[1].in_features, 1)
        return model
    import timm

    model = timm.create_model(arch, pretrained=False, num_classes=1)
    # a fresh head with PyTorch's default init, as B3's: timm's EfficientNet init draws a
    # one-output layer from U(-1, 1) (its range is 1/sqrt(fan_out)), logits of about +-20
    model.reset_classifier(1)
    return model


def head(model: nn.Module) -> nn.Linear:
    """The final linear layer (the one logit)."""
    if hasattr(model, "get_classifier"):  # timm
        return model.get_classifier()
    return model.classifier[1]  # torchvision EfficientNet


def head_prefix(model: nn.Module) -> str:
    """The state-dict prefix of the head's parameters ("classifier." for both libraries' EfficientNets)."""
    target = head(model)
    return next(name for name, m in model.named_modules() if m is target) + "."


def backbone_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter but the head's: what --freeze-epochs holds still."""
    in_head = {id(p) for p in head(model).parameters()}
    return [p for p in model.parameters() if id(p) not in in_head]


def gradcam_layer(model: nn.Module) -> nn.Module:
    """The last layer whose output is the final spatial feature map: Grad-CAM's target
    (torchvision's EfficientNet: features[-1]; a timm model: found by one small forward pass,
    the last module to output a tensor of forward_features' shape, e.g. EfficientNet's bn2)."""
    if not hasattr(model, "forward_features"):
        return model.features[-1]  # torchvision EfficientNet
    done: list[tuple[nn.Module, torch.Size]] = []
    hooks = [m.register_forward_hook(lambda m, i, o: done.append((m, o.shape)) if torch.is_tensor(o) else None)
             for m in model.modules() if m is not model]
    cfg = getattr(model, "pretrained_cfg", None) or {}
    side = int(cfg.get("input_size", (3, 64, 64))[-1]) if cfg.get("fixed_input_size") else 64
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            out = model.forward_features(torch.zeros(1, 3, side, side, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    found = [m for m, shape in reversed(done) if shape == out.shape and len(shape) == 4]
    if not found:
        raise ValueError(f"{type(model).__name__} has no spatial feature map for Grad-CAM "
                         f"(its features are {tuple(out.shape)}); use another saliency method")
    return found[0]


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, F) pooled features, the head's input (what a linear probe is fitted on)."""
    if hasattr(model, "forward_head"):  # timm
        return model.forward_head(model.forward_features(x), pre_logits=True)
    return torch.flatten(model.avgpool(model.features(x)), 1)


def norm_of(config: dict) -> tuple[tuple, tuple]:
    """(mean, std) a run's inputs were normalised with: recorded in its config, ImageNet's for
    runs made before architectures other than B3 existed."""
    return tuple(config.get("mean") or IMAGENET_MEAN), tuple(config.get("std") or IMAGENET_STD)
