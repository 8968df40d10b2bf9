"""`aivh bench` reports what it measured, and the fast decode path matches the plain one."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from engine.bench import KAGGLE_SIZE, base_jpegs, build_dataset
from engine.images import load_rgb
from engine.transforms import transform
from tests.conftest import aivh

KEYS = {"device", "img_size", "train_model_img_s", "train_e2e_img_s", "train_ratio", "predict_model_img_s",
        "predict_e2e_img_s", "predict_ratio", "peak_host_mem_gb", "peak_device_mem_gb"}


def test_bench_json_has_every_figure(workspace, tmp_path):
    out = aivh("bench", "--img-size", "32", "--batch-size", "4", "--steps", "2", "--workers", "1",
               "--device", "cpu", "--data", str(tmp_path / "bench"), "--json", env_home=workspace)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert KEYS <= set(r) and r["device"].startswith("cpu") and r["img_size"] == 32
    for k in ("train_model_img_s", "train_e2e_img_s", "predict_model_img_s", "predict_e2e_img_s"):
        assert r[k] > 0
    assert abs(r["train_ratio"] - r["train_e2e_img_s"] / r["train_model_img_s"]) < 0.01
    assert r["peak_host_mem_gb"] > 0.1 and r["peak_device_mem_gb"] is None
    files = list((tmp_path / "bench" / "train_data").iterdir())
    assert len(files) >= 256  # Kaggle-sized files, built once
    with Image.open(files[0]) as im:
        assert im.size == KAGGLE_SIZE


def test_generated_files_have_kaggle_like_sizes(tmp_path):
    sizes = [len(b) for b in base_jpegs(8)]
    assert 60_000 < np.mean(sizes) < 200_000
    root = build_dataset(tmp_path / "d", 20)
    assert len({p.read_bytes() for p in (root / "train_data").iterdir()}) == 20  # every file its own bytes


def test_draft_mode_decoding_gives_the_same_model_input_as_a_full_decode(tmp_path):
    """JPEG draft mode (decode at 1/2, 1/4 or 1/8 scale) is the fast path; the model must see
    nearly the pixels a full decode then resize would give it."""
    root = build_dataset(tmp_path / "d", 4)
    rng = __import__("random").Random(0)
    for path in sorted((root / "train_data").iterdir()):
        for size in (64, 300):
            fast = np.asarray(transform(load_rgb(path, size), size, train=False, mode="resize", rng=rng),
                              dtype=np.float32)
            with Image.open(path) as im:
                full = np.asarray(transform(im.convert("RGB"), size, train=False, mode="resize", rng=rng),
                                  dtype=np.float32)
            assert fast.shape == full.shape == (size, size, 3)
            assert np.abs(fast - full).mean() < 4.0, (path.name, size, np.abs(fast - full).mean())
