"""JPEG decode and augmentation on the model's device (nvJPEG on CUDA), ahead of the model on its own stream."""
from __future__ import annotations

import io
import queue
import threading
import warnings
from collections import defaultdict
from collections.abc import Iterator
from contextlib import nullcontext

import torch
from PIL import Image
from torch.utils.data import DataLoader

from engine.images import to_chw
from engine.loader import DeviceBatch


def _fit(img: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> (N, 3, S, S) uint8 as transform(train=False) does it with Pillow:
    antialiased bicubic (Pillow's kernel), or short side up to S if smaller and a centre crop."""
    h, w = img.shape[-2:]
    if mode == "crop":
        if min(h, w) < size:
            s = size / min(h, w)
            h, w = max(size, round(h * s)), max(size, round(w * s))
            img = _resize(img, h, w)
        y, x = (h - size) // 2, (w - size) // 2
        return img[..., y:y + size, x:x + size]
    return _resize(img, size, size)


def _resize(img: torch.Tensor, h: int, w: int) -> torch.Tensor:
    out = torch.nn.functional.interpolate(img.float(), size=(h, w), mode="bicubic", antialias=True,
                                          align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def decode_on_device(jpegs: list[torch.Tensor], device: torch.device, size: int, mode: str = "resize",
                     plans: list | None = None) -> tuple[torch.Tensor, list[int], list[tuple[int, str]]]:
    """Decode JPEG bytes on the device (nvJPEG on CUDA, libjpeg-turbo on the CPU) and resize there.

    plans: per image, transforms.device_plan()'s crop box and flip (training's augmentation), or
    None for prediction's whole-image fit. Returns (uint8 (N', 3, S, S) on the device, the
    kept positions in `jpegs`, (position, message) for each image that failed). A batch the
    decoder refuses is retried image by image, then with Pillow.

    The run's JPEG rule (TrainConfig.jpeg_scale): the device decodes at full resolution only
    (nvJPEG has no DCT scaling). Under "draft" the loader sends here only JPEGs that Pillow's
    draft mode would decode at full size anyway (images.jpeg_for_device), so both paths follow
    the rule and differ by the decoders alone: nvJPEG against Pillow on 768x512 JPEGs at 300 px,
    0.27 mean / 5 max grey levels (H200, docs/benchmarks.md); torchvision's CPU decoder, this
    same code, on a 2048x1536 JPEG under "full", 0.09 / 6 (tests/test_device_decode.py). Had
    the large JPEG come here under "draft", the gap would be the rules' own: 1.66 / 27.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    plans = plans if plans is not None else [None] * len(jpegs)

    def dec(items):
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its image IO for TorchCodec
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_jpeg(items, mode=ImageReadMode.RGB, device=device)

    try:
        images: list = dec(jpegs)
    except RuntimeError:
        images = []
        for data in jpegs:
            try:
                images.append(dec([data])[0])
            except RuntimeError:
                images.append(None)
    errors = []
    for k, img in enumerate(images):
        if img is None:  # the device decoder refused it: Pillow, as the workers would
            try:
                with Image.open(io.BytesIO(jpegs[k].numpy().tobytes())) as im:
                    images[k] = to_chw(im.convert("RGB")).to(device)
            except Exception as e:  # noqa: BLE001 - reported with the batch's other failures
                errors.append((k, f"{type(e).__name__}: {e}".split("\n")[0][:300]))
    kept = [k for k, img in enumerate(images) if img is not None]
    out = torch.empty(len(kept), 3, size, size, dtype=torch.uint8, device=device)
    slot = {k: n for n, k in enumerate(kept)}
    fits, crops = defaultdict(list), defaultdict(list)  # batched per input shape
    for k in kept:
        plan = plans[k]
        if plan is None or not plan[5]:
            fits[tuple(images[k].shape[-2:])].append(k)
        elif (plan[2] - plan[0], plan[3] - plan[1]) == (size, size):  # crop mode: native pixels
            x0, y0, x1, y1, flip, _ = plan
            crop = images[k][:, y0:y1, x0:x1]
            out[slot[k]] = crop.flip(-1) if flip else crop
        else:
            crops[tuple(images[k].shape[-2:])].append(k)
    for (h, w), ks in fits.items():
        batch = torch.stack([images[k] for k in ks])
        out[[slot[k] for k in ks]] = batch if (h, w) == (size, size) else _fit(batch, size, mode)
    for (h, w), ks in crops.items():
        out[[slot[k] for k in ks]] = resample_boxes(torch.stack([images[k] for k in ks]),
                                                    [plans[k] for k in ks], size)
    return out, kept, errors


def _bicubic(t: torch.Tensor) -> torch.Tensor:
    """Pillow's bicubic kernel (a = -0.5)."""
    a, t = -0.5, t.abs()
    near = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
    far = (((t - 5.0) * t + 8.0) * t - 4.0) * a
    return torch.where(t < 1.0, near, torch.where(t < 2.0, far, torch.zeros_like(t)))


def _resample_weights(lo: torch.Tensor, hi: torch.Tensor, n_in: int, n_out: int) -> torch.Tensor:
    """(N, n_out, n_in) weights of Pillow's antialiased bicubic resize of the span [lo, hi) of
    each row to n_out pixels: the coefficients Pillow's precompute_coeffs computes, pixels
    beyond the span included where the kernel reaches them, as Image.resize(box=...) does."""
    dev = lo.device
    scale = (hi - lo) / n_out  # (N,)
    fscale = scale.clamp(min=1.0)
    support = 2.0 * fscale
    center = lo[:, None] + (torch.arange(n_out, device=dev, dtype=torch.float32) + 0.5) * scale[:, None]
    first = (center - support[:, None] + 0.5).trunc().clamp(min=0)
    stop = (center + support[:, None] + 0.5).trunc().clamp(max=n_in)
    j = torch.arange(n_in, device=dev, dtype=torch.float32)
    w = _bicubic((j - center[..., None] + 0.5) / fscale[:, None, None])
    w = w * ((j >= first[..., None]) & (j < stop[..., None]))
    total = w.sum(-1, keepdim=True)
    return w / torch.where(total == 0, 1.0, total)


def resample_boxes(images: torch.Tensor, plans: list, size: int) -> torch.Tensor:
    """Training's random crop, resize and flip for a batch of same-sized images in two batched
    matrix products: (N, 3, H, W) uint8 and per image device_plan()'s (x0, y0, x1, y1, flip)
    -> (N, 3, S, S) uint8, within rounding of Pillow's transform() on each image."""
    _, _, h, w = images.shape
    box = torch.tensor([p[:4] for p in plans], dtype=torch.float32, device=images.device)
    wx = _resample_weights(box[:, 0], box[:, 2], w, size)  # (N, S, W)
    wy = _resample_weights(box[:, 1], box[:, 3], h, size)  # (N, S, H)
    flip = torch.tensor([bool(p[4]) for p in plans], device=images.device)
    wx = torch.where(flip[:, None, None], wx.flip(1), wx)  # a mirrored output is reversed columns
    rows = images.float() @ wx.transpose(1, 2)[:, None]  # (N, 3, H, S)
    out = wy[:, None] @ rows  # (N, 3, S, S)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def to_device(x, device: torch.device, size: int, mode: str,
              ) -> tuple[torch.Tensor, list[int] | None, list[tuple[int, str]]]:
    """A collated batch (uint8 tensor or DeviceBatch) as uint8 on the device, on the current stream.

    Returns it, the rows of the batch it holds (None: all of them, in order) and
    (row, message) for rows that failed to decode.
    """
    if not isinstance(x, DeviceBatch):
        return x.to(device, non_blocking=True), None, []
    n_pix = 0 if x.pixels is None else len(x.pixels)
    decoded, kept, errors = decode_on_device(x.jpegs, device, size, mode, x.plans)
    parts = [decoded] if x.pixels is None else [x.pixels.to(device, non_blocking=True), decoded]
    rows = list(range(n_pix)) + [n_pix + k for k in kept]
    return torch.cat(parts), (None if len(rows) == len(x) else rows), [(n_pix + k, m) for k, m in errors]


def default_ahead(device: torch.device, raw_jpeg: bool = True) -> int:
    """Batches the feed prepares ahead of the model: 2 when the device decodes the JPEGs (on an
    H200 this kept 87% of the model-only training step against 84% in series, and 70% of
    inference against 63%), none otherwise: for batches Pillow already decoded in the workers
    the thread cost more than it saved (62% against 84%, docs/benchmarks.md), and on the CPU the
    cores that would decode ahead are the ones the model computes on."""
    return 2 if device.type == "cuda" and raw_jpeg else 0


_END = object()


def device_batches(loader: DataLoader, device: torch.device, *, ahead: int | None = None,
                   ) -> Iterator[tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, list[tuple[int, str]]]]:
    """The loader's batches with their images on the device: (x uint8 (B', 3, S, S) or None,
    labels (B',), positions (B',), failed [(position, "path: reason")]), rows that failed to
    decode on the device dropped from x, labels and positions and named in failed.

    ahead > 0: a thread takes the next batches from the loader and moves or decodes them
    (nvJPEG's batch decode blocks its caller until done) on a CUDA stream of its own, up to
    `ahead` batches before the model needs them, so the host never waits for a decode between
    two model steps and the decoder's work overlaps the model's. ahead = 0: in line, in series.
    """
    ds = loader.dataset
    ahead = default_ahead(device, getattr(ds, "raw_jpeg", False)) if ahead is None else ahead

    def place(batch):
        x, y, idx, failed = batch
        if x is None:
            return None, None, torch.empty(0, dtype=torch.long), failed
        x, rows, errors = to_device(x, device, ds.size, ds.mode)
        failed = failed + [(int(idx[r]), f"{ds.rel_paths[int(idx[r])]}: {m}") for r, m in errors]
        if rows is not None:
            y, idx = y[rows], idx[rows]
        return x, y, idx, failed

    if ahead <= 0:
        for batch in loader:
            yield place(batch)
        return
    cuda = device.type == "cuda"
    q: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    batches = iter(loader)  # worker processes start here, in the calling thread
    index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else None

    def work() -> None:
        try:
            if cuda:
                torch.cuda.set_device(index)  # the current device is per thread
                stream = torch.cuda.Stream(index)
            with torch.cuda.stream(stream) if cuda else nullcontext():
                for batch in batches:
                    placed = place(batch)
                    ready = None
                    if cuda:
                        ready = torch.cuda.Event()
                        ready.record(stream)
                    if not put((placed, ready)):
                        return
            put(_END)
        except BaseException as e:  # noqa: BLE001 - raised again in the consumer
            put(e)

    thread = threading.Thread(target=work, name="aivh-device-feed", daemon=True)
    thread.start()
    main = torch.cuda.current_stream(device) if cuda else None
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            (x, y, idx, failed), ready = item
            if cuda:
                main.wait_event(ready)
                if x is not None:
                    x.record_stream(main)  # made on the feed's stream, used on this one
            yield x, y, idx, failed
    finally:
        stop.set()
        thread.join(timeout=30)
