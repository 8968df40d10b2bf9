"""What happens to a decoded image before the model: resize or crop, augmentation, normalisation."""
from __future__ import annotations

import random

from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet weights; timm models name their own
IMAGENET_STD = (0.229, 0.224, 0.225)


def _short_side_to(im: Image.Image, size: int) -> Image.Image:
    w, h = im.size
    if min(w, h) >= size:
        return im
    scale = size / min(w, h)
    return im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)


MIN_SCALE = 0.7  # the random-resized crop keeps at least this share of each side (TrainConfig.aug_min_scale)


def random_box(w: int, h: int, rng: random.Random, min_scale: float = MIN_SCALE) -> tuple[int, int, int, int]:
    """The mild random-resized crop of training: most of the image (each side at least
    `min_scale` of it; 1.0: the whole image), its aspect kept."""
    scale = rng.uniform(min_scale, 1.0)
    cw, ch = max(1, round(w * scale)), max(1, round(h * scale))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return x, y, x + cw, y + ch


def random_origin(w: int, h: int, size: int, rng: random.Random) -> tuple[int, int]:
    """Top-left corner of crop mode's random size x size training crop."""
    return rng.randint(0, w - size), rng.randint(0, h - size)


def device_plan(w: int, h: int, size: int, *, train: bool, mode: str, rng: random.Random,
                min_scale: float = MIN_SCALE) -> tuple | None:
    """What transform() would do to a w x h image, for the device to do after decoding:
    (x0, y0, x1, y1, flip, planned), planned=0 for prediction's whole-image fit. None when
    Pillow must do it (crop mode on an image smaller than the crop)."""
    if not train:
        return (0, 0, w, h, 0, 0)
    if mode == "crop":
        if min(w, h) < size:
            return None
        x, y = random_origin(w, h, size, rng)
        box = (x, y, x + size, y + size)
    else:
        box = random_box(w, h, rng, min_scale)
    return (*box, int(rng.random() < 0.5), 1)


def transform(im: Image.Image, size: int, *, train: bool, mode: str, rng: random.Random,
              min_scale: float = MIN_SCALE) -> Image.Image:
    """Resize (whole image) or crop (native resolution, keeps generator traces)."""
    if mode == "crop":
        im = _short_side_to(im, size)
        w, h = im.size
        if train:
            x, y = random_origin(w, h, size, rng)
        else:
            x, y = (w - size) // 2, (h - size) // 2
        im = im.crop((x, y, x + size, y + size))
    elif train:
        im = im.resize((size, size), Image.BICUBIC, box=random_box(*im.size, rng, min_scale))
    else:
        im = im.resize((size, size), Image.BICUBIC)
    if train and rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    return im


def normalize(x, device, *, channels_last: bool = False, norm: tuple | None = None):
    """uint8 (B, 3, S, S) on host -> normalized float on the device. norm: (mean, std) of the
    architecture (backbones.norm_of(config)); ImageNet's when None."""
    import torch

    x = x.to(device, non_blocking=True).float().div_(255)
    mean_, std_ = norm if norm is not None else (IMAGENET_MEAN, IMAGENET_STD)
    mean = torch.tensor(mean_, device=device).view(1, 3, 1, 1)
    std = torch.tensor(std_, device=device).view(1, 3, 1, 1)
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
