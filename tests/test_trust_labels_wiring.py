"""Issue 13 items 9, 10, 14 through the callers: training, prediction, thumbnails, saliency,
the CLI's text and the Review page's undo."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from db import labelling, queries
from tests.conftest import aivh, copy_sample, draw_jpeg, write_kaggle


def _replace(path, seed: int) -> None:
    """Another valid image in the file's place, with a later modification time."""
    before = path.stat()
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buf, "JPEG")
    path.write_bytes(buf.getvalue())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 3_000_000_000))


def test_training_and_prediction_skip_a_file_replaced_after_import_until_reimported(workspace, tmp_path):
    data = copy_sample(tmp_path / "copy")
    aivh("import", str(data), "--name", "s", env_home=workspace)
    train_name = (data / "train.csv").read_text().split()[1].split(",")[1]
    test_name = (data / "test.csv").read_text().split()[3]
    _replace(data / train_name, 1)
    _replace(data / test_name, 2)
    proc = aivh("train", "--dataset", "s", "--epochs", "1", "--img-size", "32", "--batch-size", "32",
                "--workers", "0", "--json", env_home=workspace)
    run = json.loads(proc.stdout.strip().splitlines()[-1])
    log = (workspace / "runs" / str(run["run"]) / "log.txt").read_text()
    assert f"{train_name}: changed since import" in log, log
    proc = aivh("predict", "--run", str(run["run"]), "--json", "--workers", "0", env_home=workspace)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["skipped"] == 1 and test_name in proc.stderr and "changed since import" in proc.stderr
    again = aivh("import", str(data), "--name", "s", "--json", env_home=workspace)
    res = json.loads(again.stdout.strip().splitlines()[-1])
    assert sorted(res["changed"]) == sorted([train_name, test_name])
    assert "changed since the last import" in again.stderr
    proc = aivh("predict", "--run", str(run["run"]), "--json", "--workers", "0", env_home=workspace)
    assert json.loads(proc.stdout.strip().splitlines()[-1])["skipped"] == 0


def test_thumbnail_of_a_replaced_file_is_refused_not_the_old_one(sessions, tiny_dataset, workspace):
    from engine.errors import UnreadableImage
    from engine.ingest import import_dataset
    from engine.thumbs import thumbnail

    import_dataset(sessions, tiny_dataset, "tiny", progress=False)
    with sessions() as s:
        im = queries.images(s, queries.get_dataset(s, "tiny").id, "train")[0]
    cache = workspace / "cache"
    first = thumbnail(cache, tiny_dataset, im.rel_path, im.sha1, 64, (im.bytes, im.mtime_ns))
    assert first.is_file()
    _replace(tiny_dataset / im.rel_path, 5)
    with pytest.raises(UnreadableImage, match="changed since import"):
        thumbnail(cache, tiny_dataset, im.rel_path, im.sha1, 64, (im.bytes, im.mtime_ns))


def test_cli_says_once_why_every_row_failed(workspace, tmp_path):
    elsewhere, root = tmp_path / "elsewhere", tmp_path / "linked"
    for i in range(30):
        draw_jpeg(elsewhere / f"train_data/{i}.jpg", i)
    root.mkdir()
    (root / "train_data").symlink_to(elsewhere / "train_data")
    write_kaggle(root, [(f"train_data/{i}.jpg", i % 2) for i in range(30)], [])
    proc = aivh("import", str(root), "--json", env_home=workspace, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1  # one line, not 30 alike ones; nothing written
    assert lines[0].startswith("aivh: error: nothing imported: all 30 rows") and "copy" in lines[0]
    assert "train.csv:2: train_data/0.jpg" in lines[0] and not workspace.exists()


def test_review_page_shows_why_an_undo_is_refused(sessions):
    from streamlit.testing.v1 import AppTest

    from tests.conftest import ROOT, finished_run

    run_id = finished_run(sessions)
    at = AppTest.from_file(str(ROOT / "dashboard/views/review.py"), default_timeout=60)
    at.query_params.update({"run": str(run_id), "split": "val", "reviewer": "ana"})
    at.run()
    opener = next(b for b in at.button if b.label == "Open")
    image_id = int(opener.key.split("_")[1])
    with sessions() as s:
        label = labelling.current_labels(s, queries.get_run(s, run_id).dataset_id)[image_id]
    with sessions.begin() as s:
        labelling.relabel(s, image_id, 1 - label, author="ana")
    with sessions.begin() as s:
        labelling.relabel(s, image_id, label, author="ben")
    opener.click().run()
    assert not at.exception
    next(b for b in at.button if b.label == "Undo last review").click().run()
    assert not at.exception
    assert any("ben relabelled it" in w.value for w in at.warning), [w.value for w in at.warning]
    with sessions() as s:
        assert labelling.current_labels(s, queries.get_run(s, run_id).dataset_id)[image_id] == label
