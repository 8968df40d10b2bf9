"""Captum attributions for one image: why the model called it AI-generated.

Methods (all on the single logit, model in eval mode, in-place activations switched off
because Captum's hooks see corrupted gradients through them):

- saliency: plain input gradients |d logit / d x|
- integrated_gradients: path integral from a baseline (black, mean or blur), batched
- smoothgrad: saliency averaged over noisy copies (NoiseTunnel)
- gradcam: Grad-CAM on the last convolutional block, upsampled to the image
- occlusion: logit drop when a sliding grey window hides a region

Every map is (H, W), non-negative, at the size the model saw, over the same pixels as
prediction with Pillow decoding (the same decode under the run's JPEG rule,
images.load_for_model, the same resize and normalisation; a CUDA prediction decodes JPEGs on
the device, whose pixels differ by the decoder's rounding, docs/benchmarks.md). For display, `on_image` puts
the map back over the image at its own aspect ratio: resize mode squashes the whole picture
into the square the model sees, so the map is stretched back over all of it; crop mode sees
a centre square, so the map covers that square and the rest is dimmed.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from engine import backbones
from engine.atomic import atomic_path
from engine.choices import BASELINES, METHODS
from engine.images import load_for_model
from engine.transforms import normalize, transform


@dataclass(frozen=True)
class Settings:
    method: str
    steps: int = 32  # integrated gradients: points on the path
    baseline: str = "mean"  # integrated gradients: dataset-mean grey, black, or the blurred input
    batch: int = 8  # integrated gradients / smoothgrad / occlusion: forward passes per batch
    samples: int = 16  # smoothgrad: noisy copies
    noise: float = 0.15  # smoothgrad: noise std in normalised units
    window: int = 0  # occlusion: window side in pixels (0: an eighth of the image)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown saliency method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.baseline not in BASELINES:
            raise ValueError(f"unknown baseline {self.baseline!r}; choose one of {', '.join(BASELINES)}")
        if self.steps < 2 or self.samples < 1 or self.batch < 1:
            raise ValueError("steps must be >= 2, samples and batch >= 1")


DISPLAY_SIDE = 512  # longest side of the picture a map is shown over
MIN_DISPLAY_SIDE = 256  # smaller pictures (CIFAKE's 32 px) are enlarged, crisp


@dataclass
class Attribution:
    image: np.ndarray  # (H, W, 3) uint8: the pixels the model saw
    map: np.ndarray  # (H, W) float32, >= 0
    prob: float  # probability of AI-generated
    settings: Settings
    delta: float | None = None  # integrated gradients: Captum's convergence delta
    picture: np.ndarray | None = None  # (h, w, 3) uint8: the image at its own aspect ratio
    box: tuple[int, int, int, int] | None = None  # where `image` came from in `picture`: x0, y0, x1, y1


def for_captum(model: nn.Module) -> nn.Module:
    """Eval mode, gradients on, and no in-place activation (torchvision's B3 has 79)."""
    model.eval()
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    return model


def preprocess(path: Path, size: int, mode: str = "resize", norm: tuple | None = None, *,
               jpeg_scale: str = "draft") -> tuple[np.ndarray, torch.Tensor]:
    """The exact prediction preprocessing: (H, W, 3) uint8 and the (1, 3, S, S) model input."""
    pixels, x, _ = _decode(path, size, mode, norm, jpeg_scale)
    return pixels, x


def _decode(path: Path, size: int, mode: str, norm: tuple | None = None, jpeg_scale: str = "draft"):
    decoded = load_for_model(path, size, mode=mode, jpeg_scale=jpeg_scale)
    im = transform(decoded, size, train=False, mode=mode, rng=None)
    pixels = np.asarray(im, dtype=np.uint8).copy()
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None]
    return pixels, normalize(x, torch.device("cpu"), norm=norm), decoded


def model_box(w: int, h: int, size: int, mode: str) -> tuple[float, float, float, float]:
    """The region of a w x h image that the model's size x size input shows (prediction's
    transform): all of it in resize mode, the centre crop in crop mode (after crop mode
    enlarges an image whose short side is under `size`)."""
    if mode != "crop":
        return 0.0, 0.0, float(w), float(h)
    scale = 1.0
    if min(w, h) < size:
        scale = size / min(w, h)
    sw, sh = (max(size, round(w * scale)), max(size, round(h * scale))) if scale != 1.0 else (w, h)
    x, y = (sw - size) // 2, (sh - size) // 2
    return x / scale, y / scale, (x + size) / scale, (y + size) / scale


def picture_view(decoded: Image.Image, size: int, mode: str,
                 max_side: int = DISPLAY_SIDE) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The decoded image at its own aspect ratio (longest side at most `max_side`; a small one
    enlarged by a whole factor) and the model input's box in its pixels."""
    w, h = decoded.size
    im = decoded.copy()
    if max(w, h) < MIN_DISPLAY_SIDE:
        k = MIN_DISPLAY_SIDE // max(w, h)
        im = im.resize((w * k, h * k), Image.NEAREST)
    im.thumbnail((max_side, max_side), Image.BICUBIC)
    sx, sy = im.width / w, im.height / h
    x0, y0, x1, y1 = model_box(w, h, size, mode)
    box = (round(x0 * sx), round(y0 * sy), min(im.width, round(x1 * sx)), min(im.height, round(y1 * sy)))
    return np.asarray(im, dtype=np.uint8).copy(), box


def on_image(att: Attribution) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(picture, map, inside): the picture at its own aspect ratio, the map resized back onto
    the region the model saw (zero elsewhere), and the boolean mask of that region.
    Without a picture (an Attribution made by hand): the model's input as it is."""
    if att.picture is None or att.box is None:
        return att.image, att.map, np.ones(att.map.shape, dtype=bool)
    h, w = att.picture.shape[:2]
    x0, y0, x1, y1 = att.box
    heat = np.zeros((h, w), dtype=np.float32)
    inside = np.zeros((h, w), dtype=bool)
    resized = Image.fromarray(att.map.astype(np.float32)).resize((x1 - x0, y1 - y0), Image.BILINEAR)
    heat[y0:y1, x0:x1] = np.clip(np.asarray(resized, dtype=np.float32), 0, None)
    inside[y0:y1, x0:x1] = True
    return att.picture, heat, inside


def _logit(model: nn.Module, sign: float = 1.0):
    """(B,) one logit per image, signed so that it is the evidence for the predicted class."""
    return lambda x: sign * model(x)[:, 0]


def _baseline(x: torch.Tensor, kind: str, norm: tuple | None = None) -> torch.Tensor:
    if kind == "mean":
        return torch.zeros_like(x)  # normalised zero = the mean colour of the architecture's inputs
    if kind == "blur":
        k = max(3, x.shape[-1] // 8) | 1
        return torch.nn.functional.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)
    black = torch.zeros(1, 3, *x.shape[-2:], dtype=torch.uint8)
    return normalize(black, x.device, norm=norm)


def attribute(model: nn.Module, x: torch.Tensor, settings: Settings, norm: tuple | None = None,
              ) -> tuple[np.ndarray, float | None]:
    """(H, W) non-negative map for input x (1, 3, H, W), and IG's convergence delta. norm: the
    architecture's input (mean, std), for the black baseline."""
    from captum.attr import (
        IntegratedGradients,
        LayerAttribution,
        LayerGradCam,
        NoiseTunnel,
        Occlusion,
        Saliency,
    )

    with torch.no_grad():
        sign = 1.0 if float(model(x)[0, 0]) >= 0 else -1.0  # explain the class the model called
    forward, s, delta = _logit(model, sign), settings, None
    x = x.detach().clone().requires_grad_(True)
    if s.method == "saliency":
        attr = Saliency(forward).attribute(x, abs=True)
    elif s.method == "integrated_gradients":
        attr, d = IntegratedGradients(forward).attribute(
            x, baselines=_baseline(x.detach(), s.baseline, norm), n_steps=s.steps,
            internal_batch_size=s.batch, return_convergence_delta=True)
        delta = float(d.abs().max())
        attr = attr.abs()
    elif s.method == "smoothgrad":
        attr = NoiseTunnel(Saliency(forward)).attribute(
            x, nt_type="smoothgrad", nt_samples=s.samples, nt_samples_batch_size=s.batch, stdevs=s.noise,
            abs=True)
    elif s.method == "gradcam":
        cam = LayerGradCam(forward, backbones.gradcam_layer(model)).attribute(x, relu_attributions=True)
        attr = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")
    else:  # occlusion: how much the logit moves when a window is hidden, either way
        w = s.window or max(2, x.shape[-1] // 8)
        stride = max(1, w // 2)
        attr = Occlusion(forward).attribute(
            x, sliding_window_shapes=(3, w, w), strides=(3, stride, stride), baselines=0.0,
            perturbations_per_eval=s.batch).abs()
    heat = attr.detach().float().sum(dim=1)[0].clamp_min(0)  # (H, W)
    return heat.cpu().numpy().astype(np.float32), delta


def explain(model: nn.Module, path: Path, size: int, settings: Settings, *, mode: str = "resize",
            cache: Path | None = None, cache_key: str = "", norm: tuple | None = None,
            jpeg_scale: str = "draft") -> Attribution:
    """Attribution for one image file, from the on-disk cache when it was computed before.
    norm: the architecture's input (mean, std), backbones.norm_of(config); ImageNet's when None.
    jpeg_scale: the run's JPEG rule (images.jpeg_scale_of(config)), as its training decoded."""
    pixels, x, decoded = _decode(path, size, mode, norm, jpeg_scale)
    picture, box = picture_view(decoded, size, mode)
    file = None
    if cache is not None:
        stamp = path.stat()  # a file replaced under the same name is not its old map
        digest = hashlib.sha1(json.dumps([cache_key, str(path), stamp.st_size, stamp.st_mtime_ns, size, mode,
                                          asdict(settings)]
                                         + ([list(map(list, norm))] if norm is not None else [])
                                         + ([jpeg_scale] if jpeg_scale != "draft" else []),  # draft: keys as before
                                         sort_keys=True).encode()).hexdigest()
        file = cache / "saliency" / f"{digest}.npz"
        if file.is_file():
            saved = np.load(file, allow_pickle=False)
            delta = float(saved["delta"]) if saved["delta"].size else None
            return Attribution(pixels, saved["map"], float(saved["prob"]), settings, delta, picture, box)
    model = for_captum(model)
    with torch.no_grad():
        prob = float(torch.sigmoid(model(x)[0, 0]))
    heat, delta = attribute(model, x, settings, norm)
    if file is not None:
        with atomic_path(file, durable=False) as tmp:
            np.savez(tmp, map=heat, prob=np.float32(prob), delta=np.array([] if delta is None else [delta]))
    return Attribution(pixels, heat, prob, settings, delta, picture, box)


def mass_summary(heat: np.ndarray) -> dict:
    """Where the attribution mass lies: centre of mass, a 3x3 grid of shares, and the
    smallest box holding half of the mass of the top pixels."""
    h, w = heat.shape
    total = float(heat.sum())
    if total <= 0:
        return {"total": 0.0}
    p = heat / total
    ys, xs = np.mgrid[0:h, 0:w]
    grid = [[float(p[i * h // 3:(i + 1) * h // 3, j * w // 3:(j + 1) * w // 3].sum()) for j in range(3)]
            for i in range(3)]
    order = np.argsort(p, axis=None)[::-1]
    top = order[: max(1, int(np.searchsorted(np.cumsum(p.ravel()[order]), 0.5)) + 1)]
    ty, tx = np.unravel_index(top, p.shape)
    return {"center": [round(float((p * xs).sum()) / w, 4), round(float((p * ys).sum()) / h, 4)],
            "grid_3x3": [[round(v, 4) for v in row] for row in grid],
            "half_mass_box": [int(tx.min()), int(ty.min()), int(tx.max()) + 1, int(ty.max()) + 1],
            "half_mass_pixels_share": round(len(top) / (h * w), 4)}


def colorize(heat: np.ndarray) -> np.ndarray:
    """(H, W) -> (H, W, 3) uint8 with a perceptual colour map (matplotlib's inferno)."""
    from matplotlib import colormaps

    low, top = float(heat.min()), float(np.percentile(heat, 99.5))
    scaled = np.clip((heat - low) / (top - low), 0, 1) if top > low else np.zeros_like(heat)
    return (colormaps["inferno"](scaled)[..., :3] * 255).astype(np.uint8)


def overlay(pixels: np.ndarray, heat: np.ndarray, opacity: float = 0.5,
            inside: np.ndarray | None = None) -> np.ndarray:
    """The map over the pixels; with `inside`, pixels outside it (not seen by the model) dimmed."""
    if inside is None:
        return (pixels * (1 - opacity) + colorize(heat) * opacity).astype(np.uint8)
    out = pixels.astype(np.float32) * 0.35
    colours = colorize(np.where(inside, heat, heat[inside].min() if inside.any() else 0))
    out[inside] = pixels[inside] * (1 - opacity) + colours[inside] * opacity
    return out.astype(np.uint8)


def panels(att: Attribution, opacity: float = 0.5) -> np.ndarray:
    """Image | overlay | heatmap side by side, at the image's own aspect ratio."""
    picture, heat, inside = on_image(att)
    colours = colorize(np.where(inside, heat, heat[inside].min() if inside.any() else 0))
    colours[~inside] = 0
    return np.concatenate([picture, overlay(picture, heat, opacity, inside), colours], axis=1)


def render(att: Attribution, out: Path, *, opacity: float = 0.5, scale: int = 0) -> Path:
    """Image | overlay | heatmap side by side at the image's own aspect ratio, written through a
    temporary file."""
    side = panels(att, opacity)
    im = Image.fromarray(side)
    scale = scale or max(1, 256 // side.shape[0])
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    with atomic_path(out) as tmp:
        im.save(tmp, format="PNG")
    return out



def checkpoint_key(path: Path) -> str:
    """Identifies a checkpoint's content cheaply: a rewritten file gets new cache entries."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found at {path}")
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
