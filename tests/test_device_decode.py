"""Prediction's device decode (nvJPEG on CUDA; here torchvision's CPU decoder, the same code
path) gives the model the pixels Pillow in the workers gives it, and falls back properly."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine.bench import base_jpegs
from engine.gpu_decode import decode_on_device, to_device
from engine.loader import DeviceBatch, ImageDataset, collate, resolve_decode
from tests.conftest import SAMPLE

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Three Kaggle-sized JPEGs (768x512) and four of the sample's 32x32 CIFAKE JPEGs."""
    root = tmp_path_factory.mktemp("dec")
    names = []
    for k, data in enumerate(base_jpegs(3)):
        (root / f"k{k}.jpg").write_bytes(data)
        names.append(f"k{k}.jpg")
    for k, p in enumerate(sorted((SAMPLE / "train_data").iterdir())[:4]):
        (root / f"c{k}.jpg").write_bytes(p.read_bytes())
        names.append(f"c{k}.jpg")
    return root, names


def batch_pixels(root, names, size, mode, raw, train=False, **rule):
    ds = ImageDataset(root, names, None, size=size, train=train, mode=mode, raw_jpeg=raw, seed=3, **rule)
    x, _y, idx, failed = collate([ds[i] for i in range(len(names))])
    x, rows, errors = to_device(x, CPU, size, mode)
    failed = failed + [(int(idx[r]), m) for r, m in errors]
    idx = idx if rows is None else idx[rows]
    return x[idx.argsort()].float(), failed


@pytest.mark.parametrize("size,mode", [(64, "resize"), (300, "resize"), (64, "crop"), (300, "crop")])
def test_device_decode_gives_pillows_pixels(images, size, mode):
    """The decoders themselves, under the full-resolution rule (the device takes every JPEG)."""
    root, names = images
    ds = ImageDataset(root, names, None, size=size, train=False, mode=mode, raw_jpeg=True, jpeg_scale="full")
    assert all(ds[i][0].ndim == 1 for i in range(len(names)))  # every one went to the device undecoded
    pil, f1 = batch_pixels(root, names, size, mode, raw=False, jpeg_scale="full")
    dev, f2 = batch_pixels(root, names, size, mode, raw=True, jpeg_scale="full")
    assert not f1 and not f2 and pil.shape == dev.shape == (len(names), 3, size, size)
    diff = (pil - dev).abs()
    # rounding and IDCT differences only: under half a grey level on average
    assert diff.mean() < 0.6, float(diff.mean())
    assert diff.amax(dim=(1, 2, 3)).max() <= 16
    if size == 64 and mode == "resize":  # the draft rule: 768x512 decodes at 1/8 for 64 px, with Pillow
        ds = ImageDataset(root, names, None, size=size, train=False, mode=mode, raw_jpeg=True)
        assert [ds[i][0].ndim for i in range(len(names))] == [3] * 3 + [1] * 4


@pytest.mark.parametrize("size,mode", [(300, "resize"), (64, "crop")])
def test_training_augmentation_on_the_device_is_pillows(images, size, mode):
    """Workers draw the random crop and flip exactly as transform() would; the device applies them."""
    root, names = images
    kaggle = names[:3]  # 768x512: no draft scaling at 300 px, so both paths draw the same box
    pil, f1 = batch_pixels(root, kaggle, size, mode, raw=False, train=True)
    dev, f2 = batch_pixels(root, kaggle, size, mode, raw=True, train=True)
    assert not f1 and not f2
    plain, _ = batch_pixels(root, kaggle, size, mode, raw=False, train=False)
    assert (pil - plain).abs().mean() > 5  # augmentation did something
    assert (pil - dev).abs().mean() < 0.6, float((pil - dev).abs().mean())


def test_crop_mode_decodes_at_native_resolution(images):
    """Crop mode keeps native pixels: no JPEG draft scaling on either path."""
    root, names = images
    pil, _ = batch_pixels(root, names[:3], 64, "crop", raw=False)
    with Image.open(root / names[0]) as im:
        w, h = im.size
        native = np.asarray(im.convert("RGB").crop(((w - 64) // 2, (h - 64) // 2, (w + 64) // 2, (h + 64) // 2)))
    assert np.abs(pil[0].permute(1, 2, 0).numpy() - native).max() == 0


def _save(path, img: Image.Image, **kw) -> str:
    img.save(path, **kw)
    return path.name


def test_what_the_device_cannot_take_is_decoded_by_pillow_and_failures_are_named(tmp_path):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    names = [_save(tmp_path / "cmyk.jpg", rgb.convert("CMYK"), format="JPEG"),
             _save(tmp_path / "gray.jpg", rgb.convert("L"), format="JPEG"),
             _save(tmp_path / "rotated.jpg", rgb, format="JPEG", exif=exif),
             _save(tmp_path / "png.jpg", rgb, format="PNG"),
             _save(tmp_path / "plain.jpg", rgb, format="JPEG")]
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "plain.jpg").read_bytes()[:300])
    names.append("cut.jpg")
    ds = ImageDataset(tmp_path, names, None, size=32, train=False, raw_jpeg=True)
    items = [ds[i] for i in range(len(names))]
    assert [it[0] is not None and it[0].ndim for it in items] == [3, 3, 3, 3, 1, False]
    pil, f1 = batch_pixels(tmp_path, names, 32, "resize", raw=False)
    dev, f2 = batch_pixels(tmp_path, names, 32, "resize", raw=True)
    assert [p for p, _ in f1] == [p for p, _ in f2] == [5] and "cut.jpg" in f2[0][1]
    assert torch.equal(pil[:4], dev[:4])  # Pillow decoded those on both paths
    assert (pil[4] - dev[4]).abs().mean() < 1.0


def test_a_jpeg_the_decoder_refuses_is_reported_and_the_rest_of_the_batch_kept():
    good = torch.frombuffer(bytearray(base_jpegs(1, size=(64, 48))[0]), dtype=torch.uint8)
    bad = torch.frombuffer(bytearray(b"\xff\xd8\xff\xdb" + bytes(200) + b"\xff\xd9"), dtype=torch.uint8)
    out, kept, errors = decode_on_device([good, bad, good], CPU, 32)
    assert kept == [0, 2] and out.shape == (2, 3, 32, 32) and [k for k, _ in errors] == [1]
    x, rows, errs = to_device(DeviceBatch(None, [good, bad, good]), CPU, 32, "resize")
    assert x.shape == (2, 3, 32, 32) and rows == [0, 2] and [r for r, _ in errs] == [1]


def test_decode_choice():
    assert resolve_decode("auto", CPU) == "workers"
    assert resolve_decode("auto", torch.device("cuda")) == "device"
    with pytest.raises(ValueError, match="unknown decode"):
        resolve_decode("gpu", CPU)


def test_training_with_device_decode(tmp_path):
    """The trainer takes DeviceBatches: decode, augmentation, BatchNorm re-estimation and
    validation all through the device path, every image seen."""
    from engine.config import TrainConfig
    from engine.train import TrainData, train

    rows = [line.split(",") for line in (SAMPLE / "train.csv").read_text().splitlines()[1:61]]
    paths, labels = [r[1] for r in rows], [int(r[2]) for r in rows]
    cfg = TrainConfig(epochs=1, img_size=32, batch_size=8, workers=0, decode="device", bn_batches=2)
    result = train(cfg, TrainData(SAMPLE, paths[:48], labels[:48], paths[48:], labels[48:]), tmp_path,
                   progress=False)
    ep = result.history[0]
    assert ep.skipped == 0 and np.isfinite(ep.train_loss) and np.isfinite(ep.val_loss)
    assert np.isfinite(result.best_val_probs).all() and len(result.best_val_probs) == 12


@pytest.mark.parametrize("size", [64, 300, 600])
def test_batched_crop_resize_flip_is_pillows_within_one_grey_level(size):
    """resample_boxes (two batched matrix products on the device) against Pillow's
    Image.resize(box=...) and mirror, image by image: 20 random training boxes, down and up."""
    import io
    import random

    from engine.gpu_decode import resample_boxes
    from engine.transforms import random_box

    ims = [Image.open(io.BytesIO(b)).convert("RGB") for b in base_jpegs(4)]
    x = torch.stack([torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1) for im in ims])
    for seed in range(5):
        plans, pil = [], []
        for k, im in enumerate(ims):
            rng = random.Random(seed * 10 + k)
            box = random_box(*im.size, rng)
            flip = int(rng.random() < 0.5)
            plans.append((*box, flip, 1))
            out = im.resize((size, size), Image.BICUBIC, box=box)
            pil.append(np.asarray(out.transpose(Image.FLIP_LEFT_RIGHT) if flip else out, dtype=np.float32))
        dev = resample_boxes(x, plans, size).permute(0, 2, 3, 1).numpy().astype(np.float32)
        diff = np.abs(dev - np.stack(pil))
        assert diff.max() <= 1 and diff.mean() < 0.3, (seed, diff.max(), diff.mean())


def test_jpeg_bytes_travel_as_one_tensor():
    """A worker's batch of JPEGs is one shared-memory segment, not one per image."""
    import pickle

    parts = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in base_jpegs(3, size=(64, 48))]
    b = DeviceBatch(None, parts, [None] * 3)
    assert b.blob.ndim == 1 and b.sizes == [len(p) for p in parts] and len(b) == 3
    assert all(torch.equal(a, c) for a, c in zip(b.jpegs, parts))
    again = pickle.loads(pickle.dumps(b.pin_memory()))
    assert all(torch.equal(a, c) for a, c in zip(again.jpegs, parts))


def _feed_loader(images, workers=0):
    from engine.loader import make_loader

    root, names = images
    return make_loader(root, names * 3, list(range(len(names) * 3)), size=32, batch_size=4, workers=workers,
                       device=CPU, decode="device")


def test_the_feed_ahead_gives_the_batches_in_series_gives(images):
    """device_batches with a thread decoding ahead: the same batches, in the same order."""
    from engine.gpu_decode import device_batches

    serial = list(device_batches(_feed_loader(images), CPU, ahead=0))
    ahead = list(device_batches(_feed_loader(images), CPU, ahead=2))
    assert len(serial) == len(ahead) == 6
    for (x0, y0, i0, f0), (x1, y1, i1, f1) in zip(serial, ahead):
        assert torch.equal(x0, x1) and torch.equal(y0, y1) and torch.equal(i0, i1) and f0 == f1 == []


def test_the_feed_stops_its_thread_when_left_early_and_passes_errors_on(images):
    import threading

    from engine.gpu_decode import device_batches

    feed = device_batches(_feed_loader(images), CPU, ahead=2)
    next(feed)
    feed.close()
    assert not [t for t in threading.enumerate() if t.name == "aivh-device-feed"]

    class Broken:
        dataset = _feed_loader(images).dataset

        def __iter__(self):
            yield next(iter(_feed_loader(images)))
            raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        got.extend(device_batches(Broken(), CPU, ahead=2))
    assert len(got) == 1


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A 2048x1536 camera-sized JPEG (draft mode decodes it at 1/4 scale for 300 px) and a
    768x512 one (draft leaves it whole at 300 px)."""
    from tests.test_decode_rule import big_jpeg

    root = tmp_path_factory.mktemp("big")
    (root / "big.jpg").write_bytes(big_jpeg())
    (root / "kaggle.jpg").write_bytes(base_jpegs(1)[0])
    return root


@pytest.mark.parametrize("train", [False, True])
def test_under_the_draft_rule_the_device_leaves_to_pillow_what_draft_would_scale(big, train):
    """The device decodes at full resolution only; a run's draft rule (the default, and every
    run stored before the rule) would decode the big JPEG at 1/4 scale, so it stays with Pillow
    and the model gets draft's pixels on both paths (before, the device path gave it full
    decode's: 1.7 grey levels apart on average, up to 28). The 768x512 JPEG still goes to the
    device, and training draws the same crop and flip on both paths."""
    ds = ImageDataset(big, ["big.jpg", "kaggle.jpg"], None, size=300, train=train, raw_jpeg=True)
    assert [ds[i][0].ndim for i in range(2)] == [3, 1]
    pil, f1 = batch_pixels(big, ["big.jpg"], 300, "resize", raw=False, train=train)
    dev, f2 = batch_pixels(big, ["big.jpg"], 300, "resize", raw=True, train=train)
    assert not f1 and not f2 and torch.equal(pil, dev)


@pytest.mark.parametrize("train", [False, True])
def test_under_the_full_rule_the_device_decodes_the_large_jpeg_as_pillow_does(big, train):
    """jpeg_scale "full": the device takes the big JPEG and gives Pillow's full decode within
    the decoders' own rounding (torchvision's libjpeg-turbo here; nvJPEG on a GPU: 0.27 mean, 5
    max on 768x512, docs/benchmarks.md), far nearer than draft's pixels."""
    ds = ImageDataset(big, ["big.jpg"], None, size=300, train=train, raw_jpeg=True, jpeg_scale="full")
    assert ds[0][0].ndim == 1
    full, f1 = batch_pixels(big, ["big.jpg"], 300, "resize", raw=False, train=train, jpeg_scale="full")
    dev, f2 = batch_pixels(big, ["big.jpg"], 300, "resize", raw=True, train=train, jpeg_scale="full")
    draft, _ = batch_pixels(big, ["big.jpg"], 300, "resize", raw=False, train=train)
    assert not f1 and not f2
    diff = (full - dev).abs()
    assert diff.mean() < 0.6 and diff.max() <= 16, (float(diff.mean()), float(diff.max()))
    assert (draft - dev).abs().mean() > 2 * diff.mean()
