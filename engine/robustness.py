"""`aivh robustness`: a run's scores on a split after each everyday change to the files.

Each image is decoded once at full resolution, and each perturbation (a JPEG re-encode at
quality 95, 75 and 50, a downscale by 0.5, an upscale by 2, a centre crop of 0.8, a PNG round
trip) is applied in memory to both classes; a re-encoded copy is then read as the run reads any
file (its recorded JPEG rule, images.load_for_model: draft mode on a large JPEG when the run
trained so), a rescaled or cropped one goes on as pixels, then the run's own resize and
normalisation. `none` is the file itself through that same decode, so its row scores exactly
the pixels training, validation and prediction with Pillow give the model. A detector that
learned generation traces keeps its F1 and AUC; one that learned file properties (JPEG quality,
size) moves with them ("Fake or JPEG?", Grommelt et al. 2024; DIRE fell to chance on re-saved
fakes).

The rows are stored as `robustness-<split>.json` in the run's folder (db.store.run_dir), beside
the checkpoint they were computed from and naming its sha1: a small derived table, written once
per request and recomputed at will, so it needs no table of its own (and no migration); the
file is named by the run's row, as checkpoints are.
"""
from __future__ import annotations

import io
import json
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from db import labelling, queries
from db.models import Dataset
from db.store import run_dir
from engine import backbones, metrics
from engine.atomic import write_text
from engine.checkpoints import load_checkpoint
from engine.choices import SPLITS
from engine.device import autocast, prepare, resolve_device
from engine.errors import UnreadableImage
from engine.images import (
    check_unchanged,
    jpeg_scale_of,
    load_for_model,
    load_rgb,
    resolve_inside,
    to_chw,
    uses_draft,
)
from engine.transforms import normalize, transform


def _reencode(fmt: str, **options) -> Callable[[Image.Image], bytes]:
    """The image saved again: the new file's bytes, which the run's decode then reads."""
    def apply(im: Image.Image) -> bytes:
        buf = io.BytesIO()
        im.save(buf, fmt, **options)
        return buf.getvalue()
    return apply


def _scale(factor: float) -> Callable[[Image.Image], Image.Image]:
    def apply(im: Image.Image) -> Image.Image:
        w, h = im.size
        return im.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.BICUBIC)
    return apply


def _centre_crop(share: float) -> Callable[[Image.Image], Image.Image]:
    def apply(im: Image.Image) -> Image.Image:
        w, h = im.size
        cw, ch = max(1, round(w * share)), max(1, round(h * share))
        x, y = (w - cw) // 2, (h - ch) // 2
        return im.crop((x, y, x + cw, y + ch))
    return apply


# name -> what it does to the full-resolution RGB image: a new file's bytes (decoded as the run
# decodes files) or new pixels; "none" (None: the file itself, decoded as every other path
# decodes it) first: the others are compared with it
PERTURBATIONS: dict[str, Callable[[Image.Image], Image.Image | bytes] | None] = {
    "none": None,
    "jpeg95": _reencode("JPEG", quality=95),
    "jpeg75": _reencode("JPEG", quality=75),
    "jpeg50": _reencode("JPEG", quality=50),
    "downscale0.5": _scale(0.5),
    "upscale2": _scale(2.0),
    "crop0.8": _centre_crop(0.8),
    "png": _reencode("PNG"),
}


def stored_path(run_id: int, split: str) -> Path:
    return run_dir(run_id) / f"robustness-{split}.json"


def stored(run_id: int, split: str = "val") -> dict | None:
    """The rows last computed for a run's split, or None."""
    path = stored_path(run_id, split)
    return json.loads(path.read_text()) if path.is_file() else None


def _images(s, run, split: str, limit: int | None, seed: int) -> tuple[list[tuple[int, str]], dict[int, int]]:
    """(image id, path) of the split (a stratified seeded subset of `limit`), and their labels."""
    labels = labelling.current_labels(s, run.dataset_id)
    if split == "test":
        ims = queries.image_paths(s, run.dataset_id, "test")
    elif split in ("val", "train"):
        ids = set(queries.run_image_ids(s, run.id, split))
        ims = [(i, p) for i, p in queries.image_paths(s, run.dataset_id, "train") if i in ids and i in labels]
    else:
        raise ValueError(f"unknown split {split!r}: {', '.join(SPLITS)}")
    if not ims:
        raise ValueError(f"run {run.id} has no {split} images to score")
    if limit is not None and limit < len(ims):
        rng = np.random.default_rng(seed)
        groups: dict[int | None, list] = {}
        for im in ims:
            groups.setdefault(labels.get(im[0]), []).append(im)
        keep = []
        for members in groups.values():  # each class in its share of the split
            k = max(1, round(limit * len(members) / len(ims)))
            keep += [members[j] for j in sorted(rng.choice(len(members), min(k, len(members)), replace=False))]
        ims = sorted(keep)
    return ims, labels


def score_run(sessions, run_id: int, split: str = "val", *, limit: int | None = None, batch_size: int = 32,
              device: str = "auto", seed: int = 0, progress: bool = True) -> dict:
    """F1 and AUC (at the run's threshold: chosen, else best validation F1, else 0.5), the share
    called AI, the mean probability and its mean change from `none`, per perturbation; stored
    with the run and returned."""
    from tqdm import tqdm

    from engine.thresholds import default_threshold

    t0 = time.perf_counter()
    with sessions() as s:
        run = queries.get_run(s, run_id)
        if not run.checkpoint:
            raise ValueError(f"run {run_id} has no checkpoint yet (status {run.status})")
        threshold, source = default_threshold(run)
        root = Path(s.get(Dataset, run.dataset_id).root)
        ims, labels = _images(s, run, split, limit, seed)
        stamps = queries.image_stamps(s, run.dataset_id)
    model, cfg, epoch, sha1 = load_checkpoint(Path(run.checkpoint))
    dev = resolve_device(device)
    model = prepare(model, dev).eval()
    size, mode, norm = cfg["img_size"], cfg.get("resize_mode", "resize"), backbones.norm_of(cfg)
    jpeg_scale = jpeg_scale_of(cfg)
    probs: dict[str, list[float]] = {name: [] for name in PERTURBATIONS}
    scored, skipped = [], []
    bar = tqdm(total=len(ims), desc=f"robustness {split}", unit="img", disable=not progress, mininterval=0.5)
    for start in range(0, len(ims), batch_size):
        batch = ims[start:start + batch_size]
        decoded = []
        for image_id, path in batch:
            try:
                decoded.append((image_id, *_decode(root, path, stamps.get(path), size, mode, jpeg_scale)))
            except UnreadableImage as e:
                skipped.append(f"{path}: {e}")
        for name, change in PERTURBATIONS.items():
            if decoded:
                pictures = [as_read if change is None else _read(change(full), size, mode, jpeg_scale)
                            for _, as_read, full in decoded]
                probs[name] += _predict(model, pictures, size, mode, norm, dev)
        scored += [i for i, *_ in decoded]
        bar.update(len(batch))
    bar.close()
    y = np.array([labels.get(i, -1) for i in scored])
    out = {"run": run_id, "split": split, "images": len(scored), "limit": limit, "seed": seed,
           "threshold": threshold, "threshold_source": source, "epoch": epoch, "checkpoint_sha1": sha1,
           "jpeg_scale": jpeg_scale,
           "rows": _rows(y, {k: np.array(v) for k, v in probs.items()}, threshold, scored),
           "skipped": skipped, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
           "seconds": round(time.perf_counter() - t0, 2)}
    write_text(stored_path(run_id, split), json.dumps(out, indent=1))
    return out


def _decode(root: Path, path: str, stamp: tuple | None, size: int, mode: str, jpeg_scale: str,
            ) -> tuple[Image.Image, Image.Image]:
    """The file as the run reads it (its JPEG rule: what `none` scores), and at full resolution,
    upright RGB (what the perturbations start from: a downscale starts from the file's pixels)."""
    try:
        file = resolve_inside(root, path)
    except PermissionError as e:
        raise UnreadableImage(str(e)) from None
    if stamp is not None:
        check_unchanged(file, *stamp)
    full = load_rgb(file, 0, draft=False)
    if uses_draft(jpeg_scale, mode):  # only then can the two differ
        return load_for_model(file, size, mode=mode, jpeg_scale=jpeg_scale), full
    return full, full


def _read(changed: Image.Image | bytes, size: int, mode: str, jpeg_scale: str) -> Image.Image:
    """A perturbation's result as the model will see it before the resize: a new file's bytes
    through the run's decode, pixels as they are."""
    if isinstance(changed, bytes):
        return load_for_model(io.BytesIO(changed), size, mode=mode, jpeg_scale=jpeg_scale)
    return changed


@torch.no_grad()
def _predict(model, ims: list[Image.Image], size: int, mode: str, norm, dev) -> list[float]:
    rng = random.Random(0)  # unused at prediction: transform() draws only when training
    x = torch.stack([to_chw(transform(im, size, train=False, mode=mode, rng=rng)) for im in ims])  # (B, 3, S, S)
    with autocast(dev):
        logits = model(normalize(x, dev, norm=norm)).squeeze(1)
    return torch.sigmoid(logits.float()).cpu().tolist()


def _rows(y: np.ndarray, probs: dict[str, np.ndarray], threshold: float, ids: list[int]) -> list[dict]:
    """Per perturbation: the metrics, how many calls (p >= threshold) it changed (`flipped`) and
    which images those were (`flipped_ids`: the images behind the row, for Review)."""
    labelled = y >= 0
    both = labelled.any() and len(set(y[labelled].tolist())) == 2
    base = probs["none"]
    rows = []
    for name, p in probs.items():
        rows.append({
            "perturbation": name,
            "f1": round(float(metrics.f1_at(y[labelled], p[labelled], threshold)), 4) if labelled.any() else None,
            "auc": round(metrics.roc_auc(y[labelled], p[labelled]), 4) if both else None,
            "called_ai": round(float((p >= threshold).mean()), 4) if len(p) else None,
            "mean_prob": round(float(p.mean()), 4) if len(p) else None,
            "mean_abs_change": round(float(np.abs(p - base).mean()), 6) if len(p) else None,
            "flipped_ids": [int(i) for i, a, b in zip(ids, p >= threshold, base >= threshold) if a != b],
        })
        rows[-1]["flipped"] = len(rows[-1]["flipped_ids"])
    return rows
