"""Image files: paths kept inside a dataset root, header probes, safe decoding (and the run's JPEG decode rule), JPEG bytes for the device."""
from __future__ import annotations

import functools
import hashlib
import io
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps

from engine.choices import JPEG_SCALES
from engine.errors import UnreadableImage


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    bytes: int
    sha1: str
    mtime_ns: int | None = None  # the file's modification time when it was read
    meta: FileMeta | None = None  # what the header says (format, JPEG quality, ...)


@dataclass(frozen=True)
class FileMeta:
    """What a file's header says, read without decoding pixels: the properties a detector can
    learn instead of generation traces (engine.shortcuts). Stored on the image row."""

    format: str | None  # Pillow's name: JPEG, PNG, WEBP ...
    mode: str | None  # RGB, L, CMYK, RGBA, P ...
    jpeg_quality: int | None = None  # 1-100, estimated from the quantization tables (JPEG only)
    subsampling: str | None = None  # 4:4:4, 4:2:2 or 4:2:0 (colour JPEG only)
    progressive: bool | None = None  # progressive JPEG, interlaced PNG
    has_exif: bool = False
    has_icc: bool = False

    def columns(self) -> dict:
        """The image row's columns (db.models.Image) for this file."""
        return {"format": self.format, "mode": self.mode, "jpeg_quality": self.jpeg_quality,
                "subsampling": self.subsampling, "progressive": self.progressive,
                "has_exif": self.has_exif, "has_icc": self.has_icc}


# the example tables of the JPEG standard (Annex K), in natural (row-major) order, as Pillow
# reports `im.quantization`; libjpeg (and so Pillow, most cameras, most generators' pipelines)
# scales them by quality
_LUMA = np.array([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
                  14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
                  18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
                  49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99])
_CHROMA = np.full(64, 99)
_CHROMA[[0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 24, 25]] = [17, 18, 24, 47, 18, 21, 26, 66, 24, 26, 56, 47, 66]


def _scaled(table: np.ndarray) -> np.ndarray:
    """(100, 64): libjpeg's table at quality 1..100 (jpeg_quality_scaling, forced baseline)."""
    q = np.arange(1, 101)[:, None]
    scale = np.where(q < 50, 5000 // q, 200 - 2 * q)
    return np.clip((table[None, :] * scale + 50) // 100, 1, 255)


_SCALED = (_scaled(_LUMA), _scaled(_CHROMA))
_SAMPLING = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}


def jpeg_quality(tables: dict) -> int | None:
    """The libjpeg quality whose scaled standard tables are nearest (sum of absolute
    differences) to the file's luminance table, and chrominance where present: exact for
    files libjpeg wrote, the nearest equivalent for other encoders' own tables."""
    if not tables or 0 not in tables or len(tables[0]) != 64:
        return None
    chroma = tables.get(1)
    return _nearest_quality(tuple(tables[0]), tuple(chroma) if chroma is not None and len(chroma) == 64 else None)


@functools.lru_cache(maxsize=256)
def _nearest_quality(luma: tuple, chroma: tuple | None) -> int:
    """Cached: a dataset's files mostly share a few tables (15 us a file uncached, 85,714 files)."""
    dist = np.abs(_SCALED[0] - np.asarray(luma)).sum(axis=1)
    if chroma is not None:
        dist = dist + np.abs(_SCALED[1] - np.asarray(chroma)).sum(axis=1)
    return int(dist.argmin()) + 1


def file_meta(im: Image.Image) -> FileMeta:
    """The header's properties of an opened image (nothing decoded)."""
    info, fmt = im.info, im.format
    quality = subsampling = progressive = None
    if fmt == "JPEG":
        from PIL import JpegImagePlugin

        quality = jpeg_quality(getattr(im, "quantization", None) or {})
        subsampling = _SAMPLING.get(JpegImagePlugin.get_sampling(im)) if im.mode == "RGB" else None
        progressive = bool(info.get("progressive") or info.get("progression"))
    elif fmt == "PNG":
        progressive = bool(info.get("interlace"))
    return FileMeta(fmt, im.mode, quality, subsampling, progressive,
                    has_exif=bool(info.get("exif")), has_icc=bool(info.get("icc_profile")))


def resolve_inside(root: Path, rel_path: str) -> Path:
    """The file for a stored path; refuses anything (symlinks too) that leaves the root."""
    root = root.resolve()
    path = (root / rel_path).resolve()
    if not path.is_relative_to(root):
        raise PermissionError(f"{rel_path}: path escapes the dataset root {root}")
    return path


MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # Pillow's decompression-bomb limit


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
                meta = file_meta(im)  # before _decodes: a PNG's verify() spends the image
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
    return ImageInfo(width, height, len(data), hashlib.sha1(data).hexdigest(), mtime_ns, meta)


def probe_meta(root: Path, rel_path: str) -> FileMeta | None:
    """The header's properties of a file already imported (a store from before they were
    recorded): the header alone is read and parsed, no pixel decoded, no hash. None when the
    file cannot be opened now (the next changed-file check reports it)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(resolve_inside(root, rel_path)) as im:
                return file_meta(im)
    except Exception:  # noqa: BLE001 - missing, replaced or damaged since: left unfilled
        return None


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


def load_rgb(path: Path | IO[bytes], size: int, *, draft: bool = True) -> Image.Image:
    """Decode as upright RGB; JPEG draft mode decodes at the smallest scale still >= size
    (draft=False: full resolution). Paths that feed a model call load_for_model, which applies
    the run's rule; this is for thumbnails and perceptual hashes.

    Any failure (missing, truncated, not an image, larger than the bomb limit) is an
    UnreadableImage naming the file; CMYK, grayscale, palette, alpha, 16-bit and animated
    images (first frame) become 8-bit RGB.
    """
    name = path.name if isinstance(path, Path) else "image"  # bytes in memory: a perturbed copy
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        if im.width * im.height > MAX_PIXELS:
            raise UnreadableImage(f"{name}: image too large: {im.width}x{im.height} pixels")
        if im.format == "JPEG" and draft:
            im.draft("RGB", (size, size))
        im = ImageOps.exif_transpose(im)
        return _to_rgb(im)
    except UnreadableImage:
        raise
    except Exception as e:
        raise UnreadableImage(f"{name}: {type(e).__name__}: {e}".split("\n")[0][:300]) from e


def uses_draft(jpeg_scale: str, mode: str) -> bool:
    """Whether a run's JPEGs are decoded in draft mode: its rule says "draft" and it resizes
    the whole image (crop mode keeps native pixels, whatever the rule)."""
    if jpeg_scale not in JPEG_SCALES:
        raise ValueError(f"unknown JPEG scale {jpeg_scale!r}: choose one of {', '.join(JPEG_SCALES)}")
    return jpeg_scale == "draft" and mode != "crop"


def jpeg_scale_of(config: dict) -> str:
    """A stored run's JPEG rule (TrainConfig.jpeg_scale). Runs recorded before the rule was
    stored trained with draft mode, so "draft" is what they read as, and every path decodes
    their images so (before, `aivh robustness` decoded them at full resolution)."""
    return config.get("jpeg_scale") or "draft"


def load_for_model(path: Path | IO[bytes], size: int, *, mode: str = "resize",
                   jpeg_scale: str = "draft") -> Image.Image:
    """The one decode of every path that feeds a run's model with Pillow: training and its
    validation, prediction and embeddings in the loader's workers (engine.loader), robustness
    (engine.robustness), saliency (engine.saliency). jpeg_scale: the run's recorded rule
    (jpeg_scale_of); "draft" decodes a JPEG at the smallest DCT scale (1/2, 1/4, 1/8) still
    at least size x size, "full" at full resolution, and crop mode always at full resolution.
    On a 2048x1536 JPEG at 300 px the two rules give the model pixels about 1 grey level apart
    on average (docs/benchmarks.md), so a run is read back with the rule it trained with."""
    return load_rgb(path, size, draft=uses_draft(jpeg_scale, mode))


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16-bit: keep the top 8 bits
        arr = np.asarray(im).astype(np.uint32) >> 8
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode in ("P", "PA", "LA", "RGBA") or "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("RGB")


def jpeg_for_device(path: Path, draft_size: int | None = None) -> tuple[bytes, int, int] | None:
    """The JPEG's bytes, up to and with its end-of-image marker, when the device decoder can take
    them: an RGB JPEG, upright, whole, within the pixel limit. What follows the marker (a
    camera's trailer, which may be another JPEG) is cut off, so the decoder sees one image.
    None when Pillow must decode it (CMYK, grayscale, EXIF-rotated, cut short, any other
    format): only the header is parsed here.

    draft_size: the model's size when the run's rule is draft (uses_draft). The device decodes
    at full resolution only (nvJPEG has no DCT scaling), so a JPEG that draft mode would
    decode smaller (Pillow's own choice, asked of the header) is left to Pillow too: the
    device then sees only files that draft would decode at full size anyway, and the rule
    holds on both paths."""
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
            if draft_size is not None:
                im.draft("RGB", (draft_size, draft_size))  # header only: where libjpeg would scale
                if im.size != (w, h):
                    return None
    except Exception:  # noqa: BLE001 - Pillow's own decode reports it properly
        return None
    return data, w, h


def to_chw(im: Image.Image):
    """An RGB Pillow image as a uint8 (3, H, W) tensor."""
    import torch

    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)
