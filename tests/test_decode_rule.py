"""One JPEG decode rule per run (TrainConfig.jpeg_scale, recorded with it) for every path that
feeds its model. A large generated JPEG (2048x1536, where Pillow's draft mode decodes at 1/4
scale for a 300 px model) goes through each CPU path as the run's own code runs it, and the
model's input is caught at its first convolution (a global forward pre-hook): training's
batches and its validation, prediction, robustness's `none` row, saliency and embeddings must
all be the same pixels as one decode by the rule, to float rounding (TOL grey levels).

The two rules differ on this file by 1.7 grey levels on average (max 28) at 300 px, so a path
that decodes by the other rule fails by far (before the rule existed, `aivh robustness` decoded
at full resolution while the others used draft mode). The device path (nvJPEG) is
tests/test_device_decode.py's."""
from __future__ import annotations

import io
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch import nn

from tests.conftest import draw_jpeg, write_kaggle

SIZE = 300
ARCH = "test_efficientnet"  # timm's tiny EfficientNet for tests: random weights, no download
BIG = "train_data/big.jpg"
TOL = 0.01  # grey levels: normalisation and back in float32, nothing else


def big_jpeg(seed: int = 0, size: tuple[int, int] = (2048, 1536)) -> bytes:
    """Sharp-edged shapes and lines over sensor-like noise, quality 90: a camera-sized file whose
    1/4-scale (draft) and full decodes visibly differ after the resize."""
    rng = np.random.default_rng(seed)
    w, h = size
    im = Image.new("RGB", size, (128, 128, 128))
    d = ImageDraw.Draw(im)
    for _ in range(300):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        box = (x0, y0, x0 + int(rng.integers(8, 300)), y0 + int(rng.integers(8, 300)))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    for _ in range(200):
        ends = [(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(2)]
        d.line(ends, fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=int(rng.integers(1, 4)))
    arr = np.asarray(im).astype(np.float32) + rng.normal(0, 6, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def reference(path: Path, draft: bool) -> np.ndarray:
    """(3, S, S) float: Pillow alone, by the rule (draft: DCT scaling to >= S first), then
    prediction's antialiased bicubic resize to S x S."""
    with Image.open(path) as im:
        if draft:
            im.draft("RGB", (SIZE, SIZE))
        out = im.convert("RGB").resize((SIZE, SIZE), Image.BICUBIC)
    return np.asarray(out, dtype=np.float32).transpose(2, 0, 1)


@contextmanager
def model_inputs():
    """Every input of a first convolution (3 channels in) while this is open, de-normalised back
    to grey levels: [(training?, (B, 3, H, W) float)]."""
    seen: list = []

    def hook(module, args):
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            seen.append((module.training, args[0].detach().float().clone()))

    handle = nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def pixels(x: torch.Tensor, cfg: dict) -> np.ndarray:
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    return (x * std * 255 + mean * 255).numpy()


def gap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max())


@pytest.fixture()
def big_dataset(tmp_path) -> Path:
    root = tmp_path / "data"
    (root / "train_data").mkdir(parents=True)
    (root / BIG).write_bytes(big_jpeg())
    train = [(BIG, 1)] + [(f"train_data/s{i}.jpg", i % 2) for i in range(3)]
    for i in range(3):
        draw_jpeg(root / f"train_data/s{i}.jpg", i, (64, 48))
    draw_jpeg(root / "test_data_v2/t0.jpg", 9, (64, 48))
    return write_kaggle(root, train, ["test_data_v2/t0.jpg"])


def _run(sessions, root: Path, config: dict, tmp_path: Path) -> int:
    """The folder imported and a succeeded run recorded with `config` and a checkpoint of random
    weights; the big JPEG is its only validation image."""
    from db import labelling, queries
    from db.models import Run
    from engine.ingest import import_dataset
    from engine.model import build_model

    import_dataset(sessions, root, "big", progress=False)
    torch.manual_seed(0)
    ckpt = tmp_path / "run" / "best.pt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"model": build_model(None, ARCH).state_dict(), "config": config, "epoch": 1}, ckpt)
    with sessions.begin() as s:
        ds = queries.get_dataset(s, "big")
        ids = {im.rel_path: im.id for im in queries.images(s, ds.id, "train")}
        run = Run(dataset_id=ds.id, status="succeeded", config=config, checkpoint=str(ckpt), best_epoch=1,
                  best_threshold=0.5, labels_as_of=labelling.newest_label_id(s, ds.id))
        s.add(run)
        s.flush()
        queries.set_run_images(s, run.id, {"train": [i for p, i in ids.items() if p != BIG], "val": [ids[BIG]]})
        return run.id


def stored_paths(sessions, run_id: int, cfg: dict, monkeypatch) -> dict[str, np.ndarray]:
    """The big JPEG's model input on each stored-run path: (3, S, S) grey levels per path.
    Robustness scores `none` and one re-encode only (each perturbation is a forward pass)."""
    from engine import robustness
    from engine.neighbours import embed_run
    from engine.predict import predict_run
    from engine.robustness import score_run
    from engine.run_saliency import explain_run_image
    from engine.saliency import Settings

    got = {}
    with model_inputs() as seen:
        assert predict_run(sessions, run_id, "val", device="cpu", workers=0, progress=False)["images"] == 1
    got["prediction"] = pixels(seen[0][1], cfg)[0]
    monkeypatch.setattr(robustness, "PERTURBATIONS",
                        {k: v for k, v in robustness.PERTURBATIONS.items() if k in ("none", "jpeg75")})
    with model_inputs() as seen:
        assert score_run(sessions, run_id, "val", device="cpu", progress=False)["images"] == 1
    got["robustness none"] = pixels(seen[0][1], cfg)[0]  # `none` is scored first
    with model_inputs() as seen:
        explain_run_image(sessions, run_id, BIG, Settings("saliency"))
    got["saliency"] = pixels(seen[0][1], cfg)[0]
    with model_inputs() as seen:
        assert embed_run(sessions, run_id, "val", device="cpu", workers=0, progress=False)["images"] == 1
    got["embeddings"] = pixels(seen[0][1], cfg)[0]
    return got


def test_the_two_rules_differ_on_a_large_jpeg(big_dataset):
    """What makes the tests below able to fail: on this file draft and full decodes are far
    apart (measured 1.67 mean, 28 max at 300 px), against TOL for the same rule."""
    draft, full = reference(big_dataset / BIG, True), reference(big_dataset / BIG, False)
    assert np.abs(draft - full).mean() > 1.0 and gap(draft, full) > 10


@pytest.mark.parametrize("rule", ["draft", "full"])
def test_every_cpu_path_gives_the_model_the_same_pixels_by_the_runs_rule(sessions, big_dataset, tmp_path, rule,
                                                                         monkeypatch):
    from engine.config import TrainConfig
    from engine.train import TrainData, train

    cfg = TrainConfig(epochs=1, img_size=SIZE, batch_size=2, workers=0, bn_batches=0, device="cpu", arch=ARCH,
                      aug_min_scale=1.0, jpeg_scale=rule)  # min scale 1: training's crop is the whole image
    want = reference(big_dataset / BIG, draft=rule == "draft")

    # training: its batches (the big JPEG is one of them, maybe mirrored) and its validation
    data = TrainData(big_dataset, [BIG, "train_data/s1.jpg"], [1, 0], [BIG], [1])
    with model_inputs() as seen:
        train(cfg, data, tmp_path / "train", progress=False)
    batches = [pixels(x, cfg.to_dict()) for training, x in seen if training]
    rows = [row for b in batches for row in b]
    assert min(min(gap(r, want), gap(r[..., ::-1], want)) for r in rows) <= TOL, "training batch"
    val = [pixels(x, cfg.to_dict()) for training, x in seen if not training]
    assert len(val) == 1 and gap(val[0][0], want) <= TOL, "validation"

    run_id = _run(sessions, big_dataset, cfg.to_dict(), tmp_path)
    for path, got in stored_paths(sessions, run_id, cfg.to_dict(), monkeypatch).items():
        assert gap(got, want) <= TOL, (rule, path, gap(got, want))


def test_a_run_recorded_before_the_rule_is_read_as_its_training_decoded(sessions, big_dataset, tmp_path, monkeypatch):
    """A stored config without jpeg_scale: its training used draft mode, so every path now does
    (before, robustness decoded such a run's images at full resolution)."""
    from engine.backbones import spec
    from engine.config import TrainConfig

    config = TrainConfig(img_size=SIZE, arch=ARCH).to_dict()
    config.pop("jpeg_scale", None)
    config["mean"], config["std"] = list(spec(ARCH).mean), list(spec(ARCH).std)
    assert TrainConfig.from_dict(config).to_dict().get("jpeg_scale", "draft") == "draft"
    run_id = _run(sessions, big_dataset, config, tmp_path)
    want = reference(big_dataset / BIG, draft=True)
    for path, got in stored_paths(sessions, run_id, config, monkeypatch).items():
        assert gap(got, want) <= TOL, (path, gap(got, want))
