"""Kaggle-layout CSV reading and validation, image probing, the Dataset and its transforms."""
from __future__ import annotations

import csv
import hashlib
import io
import os
import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

TRAIN_CSV, TEST_CSV = "train.csv", "test.csv"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CsvError(ValueError):
    """The CSV itself is unusable (missing file or column): nothing is imported."""


@dataclass(frozen=True)
class Row:
    csv: str  # train.csv | test.csv
    line: int  # physical line number in the file (header is line 1)
    index: int  # 0-based data row: the order export keeps
    file_name: str
    label: int | None  # None for test rows


@dataclass(frozen=True)
class Reject:
    csv: str
    line: int
    file_name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.csv}:{self.line}: {self.file_name or '<empty>'}: {self.reason}"


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    bytes: int
    sha1: str
    mtime_ns: int | None = None  # the file's modification time when it was read


def _parse_label(text: str) -> int | None:
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value in (0.0, 1.0) else None


def _read_rows(path: Path, *, need: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    if not path.is_file():
        raise CsvError(f"{path}: file not found (the Kaggle layout has train.csv and test.csv)")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if header is None:
                raise CsvError(f"{path}: empty file, expected a header with {', '.join(need)}")
            header = [h.strip() for h in header]
            missing = [c for c in need if c not in header]
            if missing:
                raise CsvError(f"{path}: missing column {', '.join(missing)} (header is {','.join(header)})")
            cols = {c: header.index(c) for c in need}
            rows = []
            for values in reader:
                if any(v.strip() for v in values):
                    rows.append((reader.line_num, {c: values[i] if i < len(values) else ""
                                                   for c, i in cols.items()}))
        except UnicodeDecodeError as e:
            raise CsvError(f"{path}: not UTF-8 text after line {reader.line_num} ({e.reason} at byte "
                           f"{e.start})") from None
    return rows


def read_kaggle_csvs(root: Path) -> tuple[list[Row], list[Reject]]:
    """Both CSVs' rows that pass the text checks (label, path, duplicates), plus the rejects.

    Raises CsvError before yielding anything if either CSV or a needed column is missing,
    so a broken folder writes nothing.
    """
    train = list(_read_rows(root / TRAIN_CSV, need=("file_name", "label")))
    test = list(_read_rows(root / TEST_CSV, need=("id",)))
    rows: list[Row] = []
    rejects: list[Reject] = []
    seen: dict[str, str] = {}
    sources = [(TRAIN_CSV, line, r["file_name"], r["label"]) for line, r in train]
    sources += [(TEST_CSV, line, r["id"], None) for line, r in test]
    counters = {TRAIN_CSV: 0, TEST_CSV: 0}
    for name, line, file_name, label_text in sources:
        file_name = file_name.strip()
        index = counters[name]
        counters[name] += 1
        reason = path_problem(root, file_name)
        label = None
        if reason is None and label_text is not None:
            label = _parse_label(label_text)
            if label is None:
                reason = f"label {label_text.strip()!r} is not 0 or 1"
        if reason is None and file_name in seen:
            reason = f"duplicate id (first seen at {seen[file_name]})"
        if reason is not None:
            rejects.append(Reject(name, line, file_name, reason))
            continue
        seen[file_name] = f"{name}:{line}"
        rows.append(Row(name, line, index, file_name, label))
    return rows, rejects


def path_problem(root: Path, file_name: str) -> str | None:
    """Why a CSV path may not be used, or None. Paths must stay inside the dataset root."""
    if not file_name:
        return "empty file name"
    if any(ord(c) < 32 for c in file_name):
        return "control character in the file name"
    if os.path.isabs(file_name) or file_name.startswith(("/", "\\")) or ":" in file_name[:3]:
        return "absolute path (paths must be relative to DATA_DIR)"
    if ".." in Path(file_name.replace("\\", "/")).parts:
        return "path escapes DATA_DIR"
    return None


def resolve_inside(root: Path, rel_path: str) -> Path:
    """The file for a stored path; refuses anything (symlinks too) that leaves the root."""
    root = root.resolve()
    path = (root / rel_path).resolve()
    if not path.is_relative_to(root):
        raise PermissionError(f"{rel_path}: path escapes the dataset root {root}")
    return path


MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # Pillow's decompression-bomb limit


class UnreadableImage(OSError):
    """An image that cannot be decoded: deleted, replaced, truncated, too large or not an image."""


_REPR = re.compile(r"\s*<[^<>]*\bat 0x[0-9a-fA-F]+>")  # "<_io.BytesIO object at 0x7f...>"


def _words(e: BaseException) -> str:
    """An exception's message without Python object reprs, on one line."""
    text = _REPR.sub("", str(e)).split("\n")[0].strip().rstrip(".")
    return text[:160]


_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7]")  # ends a JPEG's entropy-coded data


def _jpeg_end(data: bytes) -> int | None:
    """Where the JPEG ends: the offset just past its end-of-image marker, found by walking its
    segments as a decoder reads them (each scan's entropy-coded data runs to the next marker
    that is neither a stuffed byte nor a restart); None when the walk never reaches it (a cut
    file). Bytes after it (a camera's trailer, even a second JPEG) are never looked at. About
    85 us for a 115 KB 768x512 file, against 2.4 ms for decoding it at 1/8 scale."""
    n, pos = len(data), 2
    while pos + 1 < n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0xD9:
            return pos + 2
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            pos += 2
        else:
            if pos + 4 > n:
                return None
            end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
            if end > n:
                return None
            if marker == 0xDA:  # start of scan: its data runs to the next real marker
                found = _NEXT_MARKER.search(data, end)
                if found is None:
                    return None
                pos = found.start()
            else:
                pos = end
    return None


def _jpeg_reaches_eoi(data: bytes) -> bool:
    return _jpeg_end(data) is not None


def _decodes(im: Image.Image, fmt: str | None, data: bytes) -> str | None:
    """Why the pixels do not decode, or None. Truncation is judged by decoding, not by where
    the end marker sits (phone cameras append trailers after it), and cheaply: a JPEG whose
    segments reach its end-of-image marker is whole without decoding (_jpeg_reaches_eoi); one
    whose do not is decoded at 1/8 scale (every coefficient is still read, so a cut file fails)
    and refused only if that fails. A PNG checks its chunks and their CRCs without inflating;
    other formats decode in full."""
    what = fmt or "image"
    try:
        if fmt == "PNG":
            im.verify()
        elif fmt == "JPEG" and _jpeg_reaches_eoi(data):
            return None
        else:
            if fmt == "JPEG":
                im.draft("RGB", (1, 1))
            im.load()
    except Image.DecompressionBombError:
        raise
    except Exception as e:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ValueError ...
        text = _words(e).lower()
        if "truncated" in text or "not processed" in text or "broken" in text:
            return (f"truncated {what}: the file ends before the picture does "
                    "(an interrupted copy or download?)")
        return f"damaged {what}: its pixels cannot be decoded ({_words(e) or 'no detail'})"
    return None


def probe_image(root: Path, rel_path: str) -> ImageInfo | str:
    """Size, byte count, modification time and sha1, and whether the pixels decode (cheaply,
    see _decodes). Returns the reason in words when the file cannot be used."""
    try:
        path = resolve_inside(root, rel_path)
    except PermissionError:
        return "a symlink leads outside DATA_DIR (images are read only from inside it)"
    try:
        with open(path, "rb") as f:
            mtime_ns = os.fstat(f.fileno()).st_mtime_ns
            data = f.read()
    except FileNotFoundError:
        return "missing file"
    except IsADirectoryError:
        return "a folder, not an image file"
    except OSError as e:
        return f"unreadable file ({e.strerror or _words(e)})"
    if not data:
        return "empty file (0 bytes)"
    try:
        with warnings.catch_warnings():  # over the limit is reported below, not warned
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height, fmt = *im.size, im.format
                if width * height > MAX_PIXELS:
                    return (f"image too large: {width}x{height} pixels (limit {MAX_PIXELS:,}; "
                            "a decompression bomb?)")
                if problem := _decodes(im, fmt, data):
                    return problem
    except Image.DecompressionBombError as e:
        return f"decompression bomb ({_words(e)})"
    except Image.UnidentifiedImageError:
        return f"not an image: no image format recognised in its {len(data):,} bytes ({_sniff(data)})"
    except Exception as e:  # noqa: BLE001 - PIL raises many types for damaged headers
        return f"not an image: damaged header ({_words(e) or 'no detail'})"
    return ImageInfo(width, height, len(data), hashlib.sha1(data).hexdigest(), mtime_ns)


def _sniff(data: bytes) -> str:
    """What the bytes look like, for a file that is no image."""
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "an HTML page: a failed download?"
    try:
        data[:512].decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return "binary data of no known image format"


def check_unchanged(path: Path, size: int | None, mtime_ns: int | None) -> None:
    """Raise UnreadableImage when the file's size or modification time is not what import
    recorded: the file was replaced, and the store's sha1, size and thumbnails describe
    another picture. None (a store from before mtimes were recorded) skips that check."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UnreadableImage(f"{path.name}: missing file") from None
    if size is not None and st.st_size != size:
        why = f"{st.st_size:,} bytes now, {size:,} at import"
    elif mtime_ns is not None and st.st_mtime_ns != mtime_ns:
        why = "modified at " + _when(st.st_mtime_ns) + ", imported as of " + _when(mtime_ns)
    else:
        return
    raise UnreadableImage(f"changed since import ({why}); run `aivh import DATA_DIR` again to record it")


def _when(ns: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# ---------------------------------------------------------------- decoding and transforms


def load_rgb(path: Path, size: int, *, draft: bool = True) -> Image.Image:
    """Decode as upright RGB; JPEG draft mode decodes at the smallest scale still >= size
    (draft=False for crop mode, whose point is the native resolution).

    Any failure (missing, truncated, not an image, larger than the bomb limit) is an
    UnreadableImage naming the file; CMYK, grayscale, palette, alpha, 16-bit and animated
    images (first frame) become 8-bit RGB.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        if im.width * im.height > MAX_PIXELS:
            raise UnreadableImage(f"{path.name}: image too large: {im.width}x{im.height} pixels")
        if im.format == "JPEG" and draft:
            im.draft("RGB", (size, size))
        im = ImageOps.exif_transpose(im)
        return _to_rgb(im)
    except UnreadableImage:
        raise
    except Exception as e:
        raise UnreadableImage(f"{path.name}: {type(e).__name__}: {e}".split("\n")[0][:300]) from e


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16-bit: keep the top 8 bits
        arr = np.asarray(im).astype(np.uint32) >> 8
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode in ("P", "PA", "LA", "RGBA") or "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("RGB")


def _short_side_to(im: Image.Image, size: int) -> Image.Image:
    w, h = im.size
    if min(w, h) >= size:
        return im
    scale = size / min(w, h)
    return im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)


def random_box(w: int, h: int, rng: random.Random) -> tuple[int, int, int, int]:
    """The mild random-resized crop of training: most of the image, its aspect kept."""
    scale = rng.uniform(0.7, 1.0)
    cw, ch = max(1, round(w * scale)), max(1, round(h * scale))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return x, y, x + cw, y + ch


def random_origin(w: int, h: int, size: int, rng: random.Random) -> tuple[int, int]:
    """Top-left corner of crop mode's random size x size training crop."""
    return rng.randint(0, w - size), rng.randint(0, h - size)


def device_plan(w: int, h: int, size: int, *, train: bool, mode: str, rng: random.Random) -> tuple | None:
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
        box = random_box(w, h, rng)
    return (*box, int(rng.random() < 0.5), 1)


def transform(im: Image.Image, size: int, *, train: bool, mode: str, rng: random.Random) -> Image.Image:
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
        im = im.resize((size, size), Image.BICUBIC, box=random_box(*im.size, rng))
    else:
        im = im.resize((size, size), Image.BICUBIC)
    if train and rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    return im


def jpeg_for_device(path: Path) -> tuple[bytes, int, int] | None:
    """The JPEG's bytes, up to and with its end-of-image marker, when the device decoder can take
    them: an RGB JPEG, upright, whole, within the pixel limit. What follows the marker (a
    camera's trailer, which may be another JPEG) is cut off, so the decoder sees one image.
    None when Pillow must decode it (CMYK, grayscale, EXIF-rotated, cut short, any other
    format): only the header is parsed here."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\xff\xd8" or (end := _jpeg_end(data)) is None:
        return None
    data = data[:end]
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "JPEG" or im.mode != "RGB" or im.width * im.height > MAX_PIXELS:
                return None
            if im.getexif().get(0x0112, 1) != 1:  # EXIF orientation other than upright
                return None
            w, h = im.size
    except Exception:  # noqa: BLE001 - Pillow's own decode reports it properly
        return None
    return data, w, h


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


def to_chw(im: Image.Image):
    """An RGB Pillow image as a uint8 (3, H, W) tensor."""
    import torch

    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)


class ImageDataset:
    """A map-style dataset (torch is imported lazily: `aivh import` never needs it).

    Yields (uint8 (3, S, S) tensor, position, label), or (None, position, message) for a file
    that fails to decode. With raw_jpeg, JPEGs the device can decode come back undecoded:
    (their bytes as a 1-D uint8 tensor, position, label, device_plan()) (CUDA: nvJPEG, with
    the same augmentation done on the GPU).
    """

    def __init__(self, root: Path, rel_paths: list[str], labels: list[int] | None, *,
                 size: int, train: bool, mode: str = "resize", seed: int = 0, raw_jpeg: bool = False,
                 stamps: dict[str, tuple[int | None, int | None]] | None = None):
        self.root, self.rel_paths, self.labels = Path(root), rel_paths, labels
        # rel_path -> (bytes, mtime_ns) as import recorded them (queries.image_stamps): a file
        # that no longer matches was replaced after import and is skipped like an unreadable one
        self.stamps = stamps
        self.size, self.train, self.mode, self.seed = size, train, mode, seed
        self.raw_jpeg = raw_jpeg
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
            if self.raw_jpeg and (found := jpeg_for_device(path)) is not None:
                data, w, h = found
                plan = device_plan(w, h, self.size, train=self.train, mode=self.mode, rng=self._rng(i))
                if plan is not None:
                    return (torch.frombuffer(bytearray(data), dtype=torch.uint8), i, y, plan)
            rng = self._rng(i)  # Pillow draws the same numbers afresh
            im = transform(load_rgb(path, self.size, draft=self.mode != "crop"), self.size, train=self.train, mode=self.mode, rng=rng)
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


def normalize(x, device, *, channels_last: bool = False):
    """uint8 (B, 3, S, S) on host -> normalized float on the device."""
    import torch

    x = x.to(device, non_blocking=True).float().div_(255)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
