"""`aivh bench`: how much of the model's own speed aivh's data path keeps.

In one process: the model-only training step and inference on uint8 tensors already on the
device (measured before and after the end-to-end phase, the faster pass kept), and end-to-end
training and prediction from Kaggle-sized JPEG files through the
real loader (decode with JPEG draft mode in worker processes, uint8 to the device,
normalisation there). Ratios end-to-end / model-only are the figures that matter.
"""
from __future__ import annotations

import io
import os
import resource
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

KAGGLE_SIZE = (768, 512)


def base_jpegs(count: int = 64, size: tuple[int, int] = KAGGLE_SIZE) -> list[bytes]:
    """Smooth content plus sensor-like noise at quality 90: about 100 KB at 768x512, like Kaggle's."""
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]].astype(np.float32)
    for _ in range(count):
        f = rng.uniform(0.002, 0.02, 6)
        img = np.stack([127 + 60 * np.sin(xx * f[c] + yy * f[c + 3]) for c in range(3)], -1)
        img += rng.normal(0, 9, img.shape)
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def with_comment(jpeg: bytes, text: str) -> bytes:
    """Insert a COM segment right after SOI: a valid JPEG with its own bytes and sha1."""
    payload = text.encode()
    return jpeg[:2] + b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def build_dataset(root: Path, n: int) -> Path:
    """A Kaggle-layout folder of n training JPEGs (+ n/14 test ids), built once and reused."""
    done = root / ".complete"
    if done.exists() and done.read_text() == str(n):
        return root
    bases = base_jpegs()
    n_test = max(1, n // 14)
    (root / "train_data").mkdir(parents=True, exist_ok=True)
    (root / "test_data_v2").mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    train_lines, test_lines = [",file_name,label"], ["id"]
    names = [f"{'train_data' if i < n else 'test_data_v2'}/{i:032x}.jpg" for i in range(n + n_test)]

    def write(i: int) -> None:
        path = root / names[i]
        if not path.exists():
            path.write_bytes(with_comment(bases[i % len(bases)], names[i]))

    with ThreadPoolExecutor(8) as pool:  # file writes release the GIL
        list(pool.map(write, range(len(names)), chunksize=256))
    for i, name in enumerate(names):
        if i < n:
            train_lines.append(f"{i},{name},{int(rng.integers(0, 2))}")
        else:
            test_lines.append(name)
    (root / "train.csv").write_text("\n".join(train_lines) + "\n")
    (root / "test.csv").write_text("\n".join(test_lines) + "\n")
    done.write_text(str(n))
    return root


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(batches, step, device, warmup: int, lag: int = 0) -> float:
    """images/s over the batches after `warmup` ones (compilation, worker start-up, caches).

    lag: batches a pipelined source has already computed when it hands one over (infer()
    yields batch k after queuing k + 1): the first `lag` after the clock starts are not counted.
    The source must hold more batches than are taken, or the last hand-over comes free."""
    seen, t0 = 0, None
    for n, batch in enumerate(batches):
        if n == warmup:
            _sync(device)
            t0, seen = time.perf_counter(), 0
        images = step(batch)
        seen += images if t0 is None or n >= warmup + lag else 0
    _sync(device)
    return seen / (time.perf_counter() - t0)


def run_bench(*, device: str = "auto", img_size: int = 300, batch_size: int | None = None,
              compile: bool = False, steps: int | None = None, warmup: int = 2, workers: int | None = None,
              data_dir: Path | None = None, progress: bool = True, decode: str = "auto",
              arch: str = "efficientnet_b3") -> dict:
    import torch
    from torch import nn
    from torch.utils.data import RandomSampler

    from engine.backbones import spec
    from engine.device import autocast, default_workers, prepare, resolve_device
    from engine.gpu_decode import default_ahead, device_batches
    from engine.infer import infer
    from engine.loader import make_loader, resolve_decode
    from engine.model import build_model
    from engine.train import train_step
    from engine.transforms import normalize

    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    norm = (spec(arch).mean, spec(arch).std)
    batch_size = batch_size or (128 if cuda else 32)
    steps = steps or (30 if cuda else 6)
    workers = default_workers(cuda) if workers is None else workers
    train_decode = resolve_decode(decode, dev, train=True)
    decode = resolve_decode(decode, dev)
    # prediction steps are 3x cheaper than training's at least: time 3x as many, for a steadier
    # figure (on 2 CPU cores, 6 steps gave prediction ratios from 0.82 to 0.98 in two runs)
    pred_steps = 3 * steps
    n_files = max(256, (warmup + pred_steps + 1) * batch_size)  # + 1: see the prediction phase
    root = build_dataset(Path(data_dir or Path.home() / ".cache" / "aivh" / "bench-data"), n_files)
    paths = [f"train_data/{i:032x}.jpg" for i in range(n_files)]
    labels = [i % 2 for i in range(n_files)]
    say = (lambda m: print(m, flush=True)) if progress else (lambda m: None)
    torch.manual_seed(0)
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats()
    model = prepare(build_model(None, arch), dev)
    step_model = torch.compile(model) if compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = nn.BCEWithLogitsLoss()
    gen = torch.Generator(device="cpu").manual_seed(0)
    x_dev = torch.randint(0, 256, (batch_size, 3, img_size, img_size), dtype=torch.uint8, generator=gen).to(dev)
    y_dev = torch.randint(0, 2, (batch_size,), generator=gen).float().to(dev)
    n = warmup + steps

    def train_on(batch) -> int:
        x, y = batch[0], batch[1]
        if x is None:
            return 0
        train_step(step_model, x, y, opt, loss_fn, dev, norm)
        return int(x.shape[0])

    ahead = default_ahead(dev, train_decode == "device")
    pred_ahead = default_ahead(dev, decode == "device")

    out: dict = {"arch": arch, "device": torch.cuda.get_device_name(dev) if cuda else f"cpu ({os.cpu_count()} cores)",
                 "img_size": img_size, "batch_size": batch_size, "compile": compile, "steps": steps,
                 "predict_steps": pred_steps,
                 "workers": workers, "decode": decode, "train_decode": train_decode, "train_ahead": ahead,
                 "predict_ahead": pred_ahead,
                 "torch": torch.__version__}
    say(f"bench on {out['device']}: {img_size} px, batch {batch_size}, {steps} timed steps ({pred_steps} predicting), {workers} workers, "
        f"JPEGs decoded by the {train_decode} (training) and the {decode} (prediction)")
    step_model.train()
    out["train_model_img_s"] = _timed(((x_dev, y_dev) for _ in range(n)), train_on, dev, warmup)
    say(f"  train, model only:  {out['train_model_img_s']:8.1f} img/s")
    def train_e2e(feed_ahead: int) -> float:
        loader = make_loader(root, paths, labels, size=img_size, batch_size=batch_size, workers=workers,
                             device=dev, train=True, sampler=RandomSampler(range(n_files), generator=gen),
                             decode=train_decode)
        step_model.train()
        feed = device_batches(loader, dev, ahead=feed_ahead)
        try:
            return _timed((b for _, b in zip(range(n), feed)), train_on, dev, warmup)
        finally:
            feed.close()

    out["train_e2e_img_s"] = train_e2e(ahead)
    say(f"  train, end to end:  {out['train_e2e_img_s']:8.1f} img/s (feed {ahead} batches ahead)")
    if cuda:  # the other feed, for the comparison in the same run
        out["train_other_feed_img_s"] = train_e2e(0 if ahead else 2)
        say(f"  train, end to end, feed {0 if ahead else 2} ahead: {out['train_other_feed_img_s']:8.1f} img/s")
    # model-only again, after the end-to-end phase: the first phase also pays the allocator's
    # first-touch page faults, so the faster of the two passes is the model's speed
    again = _timed(((x_dev, y_dev) for _ in range(n)), train_on, dev, warmup)
    out["train_model_img_s"] = max(out["train_model_img_s"], again)
    say(f"  train, model only, second pass: {again:8.1f} img/s")

    step_model.eval()

    @torch.no_grad()
    def infer_on(x) -> int:
        with autocast(dev):
            step_model(normalize(x, dev, channels_last=cuda, norm=norm)).float().cpu()
        return int(x.shape[0])

    m = warmup + pred_steps
    out["predict_model_img_s"] = _timed((x_dev for _ in range(m)), infer_on, dev, warmup)
    say(f"  predict, model only: {out['predict_model_img_s']:8.1f} img/s")
    # infer() hands batch k over once k + 1 is queued: with m + 1 batches in the loader and m
    # taken, every batch counted after the clock starts was computed after it started

    def predict_e2e(feed_ahead: int) -> float:
        pred_loader = make_loader(root, paths[: (m + 1) * batch_size], None, size=img_size, batch_size=batch_size,
                                  workers=workers, device=dev, decode=decode)
        batches = infer(step_model, pred_loader, dev, ahead=feed_ahead, norm=norm)
        try:
            return _timed((torch.sigmoid(logits).tolist() for _, (_idx, logits, _f) in zip(range(m), batches)),
                          len, dev, warmup, lag=1)
        finally:
            batches.close()

    out["predict_e2e_img_s"] = predict_e2e(pred_ahead)
    say(f"  predict, end to end: {out['predict_e2e_img_s']:8.1f} img/s (feed {pred_ahead} batches ahead)")
    if cuda:
        out["predict_other_feed_img_s"] = predict_e2e(0 if pred_ahead else 2)
        say(f"  predict, end to end, feed {0 if pred_ahead else 2} ahead: {out['predict_other_feed_img_s']:8.1f} img/s")
    again = _timed((x_dev for _ in range(m)), infer_on, dev, warmup)
    out["predict_model_img_s"] = max(out["predict_model_img_s"], again)
    say(f"  predict, model only, second pass: {again:8.1f} img/s")
    out["train_ratio"] = out["train_e2e_img_s"] / out["train_model_img_s"]
    out["predict_ratio"] = out["predict_e2e_img_s"] / out["predict_model_img_s"]
    if cuda:
        out["train_other_feed_ratio"] = out["train_other_feed_img_s"] / out["train_model_img_s"]
        out["predict_other_feed_ratio"] = out["predict_other_feed_img_s"] / out["predict_model_img_s"]
    out["peak_device_mem_gb"] = torch.cuda.max_memory_allocated(dev) / 2**30 if cuda else None
    out["peak_host_mem_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    out["peak_worker_mem_gb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    for k, v in list(out.items()):
        if isinstance(v, float):
            out[k] = round(v, 4 if "ratio" in k else 2)
    say(f"  ratios end to end / model only: train {out['train_ratio']:.3f}, predict {out['predict_ratio']:.3f}")
    return out


def _warm_compile(cfg, dev) -> None:
    """Compile the training step once, outside the clock, as a run's every epoch after its
    first finds it: a model of the same shape, a few steps on random batches (the compiled
    code and Inductor's caches are then reused by the trainer's own torch.compile)."""
    import torch
    from torch import nn

    from engine.device import prepare
    from engine.model import build_model
    from engine.train import train_step

    model = prepare(build_model(None, cfg.arch), dev)
    step_model = torch.compile(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, 256, (cfg.batch_size, 3, cfg.img_size, cfg.img_size), dtype=torch.uint8, device=dev)
    y = torch.randint(0, 2, (cfg.batch_size,), device=dev).float()
    step_model.train()
    for _ in range(3):
        train_step(step_model, x, y, opt, nn.BCEWithLogitsLoss(), dev, (cfg.mean, cfg.std))
    _sync(dev)


def run_epoch(n: int, *, device: str = "auto", img_size: int = 300, batch_size: int | None = None,
              compile: bool = False, workers: int | None = None, data_dir: Path | None = None,
              progress: bool = True, decode: str = "auto", arch: str = "efficientnet_b3") -> dict:
    """One full training epoch through aivh's trainer over n generated Kaggle-sized JPEGs:
    90% trained on, 10% validated (BatchNorm re-estimation and validation included), as
    `aivh train` does it, without the store. With compile, the model is compiled once before
    the clock starts (a one-off per run, reported as epoch_compile_seconds)."""
    import tempfile

    from engine.config import TrainConfig
    from engine.device import default_workers, resolve_device
    from engine.loader import resolve_decode
    from engine.train import TrainData, train

    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    root = build_dataset(Path(data_dir or Path.home() / ".cache" / "aivh" / f"bench-data-{n}"), n)
    paths = [f"train_data/{i:032x}.jpg" for i in range(n)]
    labels = [i % 2 for i in range(n)]
    n_val = n // 10
    cfg = TrainConfig(epochs=1, img_size=img_size, batch_size=batch_size or (128 if cuda else 32),
                      device=str(dev), compile=compile, workers=default_workers(cuda) if workers is None else workers,
                      decode=decode, arch=arch)
    data = TrainData(root, paths[n_val:], labels[n_val:], paths[:n_val], labels[:n_val])
    warm = None
    if compile:
        t0 = time.perf_counter()
        _warm_compile(cfg, dev)
        warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        result = train(cfg, data, Path(out), progress=progress)
    wall = time.perf_counter() - t0
    ep = result.history[0]
    return {"epoch_images": n, "epoch_train_images": n - n_val, "epoch_val_images": n_val,
            "epoch_seconds": round(ep.seconds, 1), "epoch_wall_seconds": round(wall, 1),
            "epoch_img_s": round(ep.images_per_s, 1), "epoch_workers": cfg.workers,
            "epoch_batch_size": cfg.batch_size, "epoch_compile": compile,
            "epoch_compile_seconds": None if warm is None else round(warm, 1),
            "epoch_train_decode": resolve_decode(decode, dev, train=True)}
