"""Every kind of bad or unusual image, at import, training, prediction, export and in the dashboard."""
from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from db import queries
from engine.errors import UnreadableImage
from engine.images import MAX_PIXELS, load_rgb, probe_image
from tests.conftest import aivh, draw_jpeg, write_kaggle


def _jpeg(arr: np.ndarray, mode: str = "RGB", **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, "JPEG", **save)
    return buf.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression bomb's trick)."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def bad_kinds() -> dict[str, tuple[bytes, str | None]]:
    """name -> (file bytes, reason the import must give, or None when the file must be accepted)."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    good = _jpeg(rgb)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    palette = io.BytesIO()
    Image.fromarray(rgb).quantize(16).save(palette, "PNG", transparency=0)
    sixteen = io.BytesIO()
    Image.fromarray((rng.integers(0, 65536, (40, 48))).astype(np.uint16)).save(sixteen, "PNG")
    gif = io.BytesIO()
    frames = [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(3)]
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return {
        "zero_byte": (b"", "empty file"),
        "truncated_jpeg": (good[: len(good) // 2], "truncated JPEG"),
        "html": (b"<!doctype html><html><body>404 Not Found</body></html>", "not an image"),
        "text": (b"file_name,label\nsomething,1\n", "not an image"),
        "bomb_declared": (_png_declaring(40000, 40000), "decompression bomb"),
        "too_large": (_png_declaring(10000, 10000), "image too large"),
        "cmyk": (_jpeg(rgb, "CMYK"), None),
        "grayscale": (_jpeg(rgb, "L"), None),
        "palette_png": (palette.getvalue(), None),
        "png_16bit": (sixteen.getvalue(), None),
        "exif_rotated": (_jpeg(rgb, exif=exif.tobytes()), None),
        "animated_gif": (gif.getvalue(), None),
    }


@pytest.fixture()
def bad_dataset(tmp_path) -> Path:
    """Kaggle layout: 12 good training images plus every kind, in train and in test."""
    root = tmp_path / "bad"
    train, test = [], []
    for i in range(12):
        name = f"train_data/good{i:02d}.jpg"
        draw_jpeg(root / name, i)
        train.append((name, i % 2))
    for n, (kind, (data, _)) in enumerate(bad_kinds().items()):
        for split, rows in (("train_data", train), ("test_data_v2", test)):
            name = f"{split}/{kind}.jpg"  # every one named .jpg, whatever it holds
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
            rows.append((name, n % 2) if split == "train_data" else name)
    draw_jpeg(root / "test_data_v2/good_test.jpg", 99)
    test.append("test_data_v2/good_test.jpg")
    return write_kaggle(root, train, test)


def test_import_rejects_each_bad_kind_with_its_reason_and_accepts_the_unusual_ones(sessions, bad_dataset):
    from engine.ingest import import_dataset

    result = import_dataset(sessions, bad_dataset, "bad", progress=False)
    kinds = bad_kinds()
    rejected = {Path(r.file_name).stem: (r.csv, r.line, r.reason) for r in result.rejects}
    expected = {k for k, (_, why) in kinds.items() if why}
    assert {k for k in rejected} == expected
    for kind in expected:  # once in train.csv and once in test.csv, with line and reason
        assert kinds[kind][1] in rejected[kind][2], (kind, rejected[kind])
        assert rejected[kind][1] > 1
    assert sum(1 for r in result.rejects) == 2 * len(expected)
    with sessions() as s:
        ok = {Path(im.rel_path).stem for im in queries.images(s, queries.get_dataset(s, "bad").id)}
        unreadable = {Path(im.rel_path).stem for im in queries.images(
            s, queries.get_dataset(s, "bad").id, ok_only=False) if im.status == "unreadable"}
    assert {k for k, (_, why) in kinds.items() if not why} <= ok
    assert unreadable == expected  # kept as unreadable so test.csv stays complete


@pytest.mark.parametrize("kind", [k for k, (_, why) in bad_kinds().items() if why is None])
def test_unusual_images_decode_as_upright_8bit_rgb(tmp_path, kind):
    path = tmp_path / f"{kind}.jpg"
    path.write_bytes(bad_kinds()[kind][0])
    im = load_rgb(path, 32)
    assert im.mode == "RGB"
    arr = np.asarray(im)
    assert im.size == ((40, 48) if kind == "exif_rotated" else (48, 40))
    assert 20 < arr.mean() < 235, f"{kind}: looks saturated ({arr.mean():.1f})"  # 16-bit not clipped white


@pytest.mark.parametrize("kind", [k for k, (_, why) in bad_kinds().items() if why])
def test_decoding_a_bad_file_is_one_clear_error_naming_it(tmp_path, kind):
    path = tmp_path / f"{kind}.jpg"
    path.write_bytes(bad_kinds()[kind][0])
    with pytest.raises(UnreadableImage, match=f"{kind}.jpg"):
        load_rgb(path, 32)
    assert isinstance(probe_image(tmp_path, path.name), str)


def test_bomb_limit_is_pillows():
    assert MAX_PIXELS == Image.MAX_IMAGE_PIXELS


def test_training_and_prediction_skip_files_spoiled_after_import_and_export_refuses(workspace, bad_dataset,
                                                                                     tmp_path):
    aivh("import", str(bad_dataset), "--name", "bad", env_home=workspace)
    # after import: one training image deleted, one replaced by HTML, a test image truncated
    (bad_dataset / "train_data/good00.jpg").unlink()
    (bad_dataset / "train_data/good01.jpg").write_bytes(b"<html>moved</html>")
    good = (bad_dataset / "test_data_v2/good_test.jpg").read_bytes()
    (bad_dataset / "test_data_v2/good_test.jpg").write_bytes(good[: len(good) // 3])
    out = aivh("train", "--dataset", "bad", "--epochs", "1", "--img-size", "32", "--batch-size", "4",
               "--workers", "0", "--device", "cpu", "--val-fraction", "0.2", "--json", env_home=workspace)
    run = json.loads(out.stdout.strip().splitlines()[-1])
    assert run["status"] == "succeeded"
    log = (workspace / "runs" / str(run["run"]) / "log.txt").read_text()
    assert "good00.jpg" in log and "good01.jpg" in log and "skipped" in log
    out = aivh("predict", "--run", str(run["run"]), "--split", "test", "--device", "cpu", "--workers", "0",
               "--json", env_home=workspace)
    pred = json.loads(out.stdout.strip().splitlines()[-1])
    assert pred["skipped"] == 1 and "good_test.jpg" in out.stderr
    refused = aivh("export", "--run", str(run["run"]), "--out", str(tmp_path / "s.csv"), env_home=workspace,
                   check=False)
    assert refused.returncode == 1 and not (tmp_path / "s.csv").exists()
    assert len(refused.stderr.strip().splitlines()) == 1 and "test_data_v2/" in refused.stderr


def test_review_page_shows_a_spoiled_image_as_a_message(sessions, bad_dataset):
    from streamlit.testing.v1 import AppTest

    from tests.conftest import ROOT, finished_run

    run_id = finished_run(sessions, source=bad_dataset, name="bad")
    with sessions() as s:
        rows = queries.prediction_rows(s, queries.get_run(s, run_id), "test")
    for _, rel_path, *_ in rows:  # every test image spoiled after import, in a different way
        (bad_dataset / rel_path).write_bytes(b"<html>gone</html>")
    at = AppTest.from_file(str(ROOT / "dashboard/views/review.py"), default_timeout=60)
    at.query_params.update({"run": str(run_id), "split": "test", "reviewer": "ana"})
    at.run()
    assert not at.exception
    assert any("cannot show the image" in w.value for w in at.warning)
