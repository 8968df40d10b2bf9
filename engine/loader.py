"""The Dataset, its collation and the DataLoader: images in, batches out (Pillow in workers, or JPEG bytes for the device)."""
from __future__ import annotations

import random
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from engine.choices import DECODES
from engine.errors import UnreadableImage
from engine.images import check_unchanged, jpeg_for_device, load_for_model, resolve_inside, to_chw, uses_draft
from engine.transforms import MIN_SCALE, device_plan, transform


class DeviceBatch:
    """A batch whose JPEGs are still compressed: decoded on the model's device (nvJPEG on CUDA).

    pixels: uint8 (P, 3, S, S) of the images Pillow decoded (or None); the JPEGs' file bytes
    travel as one 1-D uint8 tensor (one shared-memory segment from a worker, not one per
    image) cut into per-image views by `jpegs`; plans: per JPEG, device_plan()'s crop box and
    flip. Positions and labels list the pixels first.
    """

    def __init__(self, pixels, jpegs: list, plans: list | None = None, *, sizes: list[int] | None = None):
        import torch

        self.pixels = pixels
        if sizes is None:  # a list of 1-D uint8 tensors, packed here
            sizes = [int(j.numel()) for j in jpegs]
            jpegs = torch.cat(list(jpegs)) if jpegs else torch.empty(0, dtype=torch.uint8)
        self.blob, self.sizes = jpegs, sizes
        self.plans = plans if plans is not None else [None] * len(sizes)

    @property
    def jpegs(self) -> list:
        """Each JPEG's bytes: contiguous views of the packed tensor."""
        return list(self.blob.split(self.sizes)) if self.sizes else []

    def __len__(self) -> int:
        return (0 if self.pixels is None else len(self.pixels)) + len(self.sizes)

    def pin_memory(self) -> DeviceBatch:  # DataLoader's pin_memory thread calls this
        return DeviceBatch(None if self.pixels is None else self.pixels.pin_memory(), self.blob, self.plans,
                           sizes=self.sizes)


class ImageDataset:
    """A map-style dataset (torch is imported lazily: `aivh import` never needs it).

    Yields (uint8 (3, S, S) tensor, position, label), or (None, position, message) for a file
    that fails to decode. With raw_jpeg, JPEGs the device can decode come back undecoded:
    (their bytes as a 1-D uint8 tensor, position, label, device_plan()) (CUDA: nvJPEG, with
    the same augmentation done on the GPU). jpeg_scale: the run's JPEG rule (TrainConfig.jpeg_scale,
    images.load_for_model); under "draft" a JPEG that draft mode would decode smaller stays with
    Pillow even with raw_jpeg (images.jpeg_for_device), so both decoders follow the rule.
    """

    def __init__(self, root: Path, rel_paths: list[str], labels: list[int] | None, *,
                 size: int, train: bool, mode: str = "resize", seed: int = 0, raw_jpeg: bool = False,
                 stamps: dict[str, tuple[int | None, int | None]] | None = None,
                 min_scale: float = MIN_SCALE, jpeg_scale: str = "draft"):
        self.root, self.rel_paths, self.labels = Path(root), rel_paths, labels
        self.jpeg_scale = jpeg_scale
        self._draft_size = size if uses_draft(jpeg_scale, mode) else None  # ValueError: an unknown rule
        # rel_path -> (bytes, mtime_ns) as import recorded them (queries.image_stamps): a file
        # that no longer matches was replaced after import and is skipped like an unreadable one
        self.stamps = stamps
        self.size, self.train, self.mode, self.seed = size, train, mode, seed
        self.raw_jpeg = raw_jpeg
        self.min_scale = min_scale  # training's random-resized crop (TrainConfig.aug_min_scale)
        self.epoch = 0  # set by the trainer so augmentation differs per epoch but is repeatable

    def __len__(self) -> int:
        return len(self.rel_paths)

    def _rng(self, i: int) -> random.Random:
        """Augmentation draws for item i: repeatable per (seed, epoch, item)."""
        return random.Random(hash((self.seed, self.epoch, i)))

    def __getitem__(self, i: int):
        import torch

        y = float(self.labels[i]) if self.labels is not None else -1.0
        try:
            path = resolve_inside(self.root, self.rel_paths[i])
            if self.stamps is not None and (stamp := self.stamps.get(self.rel_paths[i])) is not None:
                check_unchanged(path, *stamp)
            if self.raw_jpeg and (found := jpeg_for_device(path, self._draft_size)) is not None:
                data, w, h = found
                plan = device_plan(w, h, self.size, train=self.train, mode=self.mode, rng=self._rng(i),
                                   min_scale=self.min_scale)
                if plan is not None:
                    return (torch.frombuffer(bytearray(data), dtype=torch.uint8), i, y, plan)
            rng = self._rng(i)  # Pillow draws the same numbers afresh
            im = transform(load_for_model(path, self.size, mode=self.mode, jpeg_scale=self.jpeg_scale), self.size,
                           train=self.train, mode=self.mode, rng=rng, min_scale=self.min_scale)
        except UnreadableImage as e:  # its message is words already
            return (None, i, f"{self.rel_paths[i]}: {e}")
        except Exception as e:  # noqa: BLE001 - a file deleted, replaced or corrupt after import
            return (None, i, f"{self.rel_paths[i]}: {type(e).__name__}: {e}")
        return (to_chw(im), i, y)


def collate(items):
    """Stack decoded items, keep undecoded JPEGs as a DeviceBatch; report failures as (position, message)."""
    import torch

    pixels = [it for it in items if it[0] is not None and len(it) == 3]
    jpegs = [it for it in items if len(it) == 4]
    failed = [(it[1], it[2]) for it in items if it[0] is None]
    if not pixels and not jpegs:
        return None, None, None, failed
    stacked = torch.stack([it[0] for it in pixels]) if pixels else None  # (B, 3, S, S) uint8
    x = DeviceBatch(stacked, [it[0] for it in jpegs], [it[3] for it in jpegs]) if jpegs else stacked
    good = pixels + jpegs
    idx = torch.tensor([it[1] for it in good])
    y = torch.tensor([it[2] for it in good], dtype=torch.float32)
    return x, y, idx, failed




def resolve_decode(decode: str, device: torch.device, *, train: bool = False) -> str:
    """Where JPEGs are decoded: "workers" (Pillow in the loader's processes) or "device" (the
    model's device: nvJPEG batch decode on CUDA). "auto": device for prediction on CUDA, else
    workers. Training keeps the workers unless told: on an H200 with 16 cores they kept 87-91%
    of the model-only step, device decode 79% (docs/benchmarks.md)."""
    if decode not in DECODES:
        raise ValueError(f"unknown decode {decode!r}: choose one of {', '.join(DECODES)}")
    if decode == "auto":
        return "device" if device.type == "cuda" and not train else "workers"
    return decode


def make_loader(root: Path, rel_paths: list[str], labels: list[int] | None, *, size: int,
                batch_size: int, workers: int, device: torch.device, train: bool = False,
                mode: str = "resize", seed: int = 0, sampler=None, decode: str = "auto",
                stamps: dict | None = None, min_scale: float = MIN_SCALE, jpeg_scale: str = "draft") -> DataLoader:
    """With `decode` resolving to "device", workers only read JPEGs (and, for training, draw
    the augmentation); decoding, resizing and flipping happen on the device (to_device).
    jpeg_scale: the run's JPEG rule (TrainConfig.jpeg_scale; a stored run's: images.jpeg_scale_of)."""
    raw = resolve_decode(decode, device, train=train) == "device"
    ds = ImageDataset(root, rel_paths, labels, size=size, train=train, mode=mode, seed=seed, raw_jpeg=raw,
                      stamps=stamps, min_scale=min_scale, jpeg_scale=jpeg_scale)
    return DataLoader(
        ds, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate,
        pin_memory=device.type == "cuda", drop_last=train and len(ds) > batch_size,
        prefetch_factor=4 if workers else None,
    )
