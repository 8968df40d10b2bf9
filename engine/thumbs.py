"""Thumbnails made once and cached on disk, read only from inside a dataset root."""
from __future__ import annotations

from pathlib import Path

from PIL import Image as PILImage

from engine.atomic import atomic_path
from engine.images import check_unchanged, load_rgb, resolve_inside


def thumbnail(cache: Path, root: str | Path, rel_path: str, sha1: str | None, size: int = 192,
              stamp: tuple[int | None, int | None] | None = None) -> Path:
    """Path of a JPEG thumbnail (longest side `size`), made on first use.

    Raises FileNotFoundError for a missing image and PermissionError for a path outside
    the root, so a crafted path in the store cannot read other files.
    """
    source = resolve_inside(Path(root), rel_path)
    key = sha1 or f"{abs(hash((str(root), rel_path))):x}"
    out = cache / "thumbs" / f"{key}_{size}.jpg"
    if not source.is_file():  # checked even when cached: a deleted image must not look present
        raise FileNotFoundError(f"{rel_path}: image file is missing")
    if stamp is not None:  # (bytes, mtime_ns) as imported: a replaced file is not shown as the old one
        check_unchanged(source, *stamp)
    if out.is_file():
        return out
    im = load_rgb(source, size)
    if max(im.size) < size:  # small images (CIFAKE is 32 px) are shown enlarged, crisp
        scale = size // max(im.size)
        im = im.resize((im.width * scale, im.height * scale), PILImage.NEAREST)
    im.thumbnail((size, size))
    with atomic_path(out, durable=False) as tmp:
        im.save(tmp, "JPEG", quality=88)
    return out
