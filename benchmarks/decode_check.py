"""Device JPEG decode (nvJPEG on CUDA) against Pillow in the workers: same pixels, same predictions?

    python benchmarks/decode_check.py [--device cuda] [--img-size 300] [--json]

Two sets of images: 512 generated Kaggle-sized JPEGs (768x512, downscaled to the model's
size) and the bundled sample's 300 CIFAKE training JPEGs (32x32, upscaled). For each, the
same B3 (a trained checkpoint with --checkpoint, else seeded random weights; eval mode,
bf16 autocast on CUDA) predicts through both decode paths of `engine.predict.infer`; the reference for "within bf16 tolerance" is the
difference between bf16 and fp32 predictions on identical pixels. Also times the device
decode + resize alone on batches of 128 Kaggle-sized JPEGs.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.bench import build_dataset
from engine.device import prepare
from engine.gpu_decode import decode_on_device, to_device
from engine.infer import infer
from engine.loader import ImageDataset, collate, make_loader
from engine.model import build_model, load_trained
from engine.precise_bn import recalibrate_bn as _recalibrate_bn
from engine.transforms import normalize

SAMPLE = Path(__file__).resolve().parents[1] / "engine" / "sample"


def predictions(model, root, names, device, size, decode, workers, ahead=None) -> torch.Tensor:
    loader = make_loader(root, names, None, size=size, batch_size=64, workers=workers, device=device,
                         decode=decode)
    out = torch.full((len(names),), float("nan"))
    for idx, logits, failed in infer(model, loader, device, ahead=ahead):
        assert not failed, failed
        out[idx] = torch.sigmoid(logits)
    return out


@torch.no_grad()
def fp32_predictions(model, root, names, device, size, workers) -> torch.Tensor:
    """The same Pillow pixels without bf16 autocast: the yardstick for bf16 tolerance."""
    loader = make_loader(root, names, None, size=size, batch_size=64, workers=workers, device=device,
                         decode="workers")
    out = torch.full((len(names),), float("nan"))
    for x, _y, idx, _failed in loader:
        out[idx] = torch.sigmoid(model(normalize(x, device, channels_last=device.type == "cuda"))[:, 0]).float().cpu()
    return out


def pixels(root, names, device, size, decode, train=False) -> torch.Tensor:
    """One batch of model input through one decode path; train=True: training's random crop and
    flip, drawn by the same seeded generator on both paths."""
    ds = ImageDataset(root, names, None, size=size, train=train, seed=7, raw_jpeg=decode == "device")
    x, _y, idx, _failed = collate([ds[i] for i in range(len(names))])
    x, rows, _ = to_device(x, device, size, "resize")
    idx = idx if rows is None else idx[rows]
    return x[idx.argsort()].float().cpu()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--img-size", type=int, default=300)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--checkpoint", help="an aivh checkpoint (a trained model); default: seeded random "
                                         "weights with BatchNorm statistics from the images")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    dev, size = torch.device(args.device), args.img_size
    torch.manual_seed(0)
    model = load_trained(Path(args.checkpoint))[0] if args.checkpoint else build_model(None)
    model = prepare(model, dev).eval()
    calibrated = bool(args.checkpoint)
    out: dict = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                 "img_size": size, "torch": torch.__version__,
                 "model": Path(args.checkpoint).name if args.checkpoint else "random, BatchNorm from the images"}
    with tempfile.TemporaryDirectory() as tmp:
        kaggle = build_dataset(Path(tmp) / "kaggle", 512)
        sets = {"kaggle_768x512": (kaggle, [f"train_data/{i:032x}.jpg" for i in range(512)]),
                "cifake_32x32": (SAMPLE, sorted(f"train_data/{p.name}" for p in (SAMPLE / "train_data").iterdir()))}
        for name, (root, names) in sets.items():
            if not calibrated:  # BatchNorm statistics from real images: outputs then vary per image
                _recalibrate_bn(model, make_loader(root, names[:256], None, size=size, batch_size=64, workers=0,
                                                   device=dev, decode="workers"), dev)
                calibrated = True
            a = pixels(root, names, dev, size, "workers")
            b = pixels(root, names, dev, size, "device")
            diff = (a - b).abs()
            pw = predictions(model, root, names, dev, size, "workers", args.workers)
            pd = predictions(model, root, names, dev, size, "device", args.workers)
            pd0 = predictions(model, root, names, dev, size, "device", args.workers, ahead=0)
            ta = pixels(root, names[:128], dev, size, "workers", train=True)
            tb = pixels(root, names[:128], dev, size, "device", train=True)
            tdiff = (ta - tb).abs()
            p32 = fp32_predictions(model, root, names, dev, size, args.workers) if dev.type == "cuda" else None
            out[name] = {"images": len(names),
                         "pixel_mean_abs_diff": round(float(diff.mean()), 4),
                         "pixel_max_abs_diff": float(diff.max()),
                         "pixels_differing_share": round(float((diff > 0).float().mean()), 4),
                         "prob_std_across_images": round(float(pw.std()), 5),
                         "prob_max_abs_diff_device_vs_workers": round(float((pw - pd).abs().max()), 5),
                         "prob_mean_abs_diff_device_vs_workers": round(float((pw - pd).abs().mean()), 5),
                         "prob_max_abs_diff_decoded_ahead_vs_in_series": round(float((pd - pd0).abs().max()), 6),
                         "train_augmented_pixel_mean_abs_diff": round(float(tdiff.mean()), 4),
                         "train_augmented_pixel_max_abs_diff": float(tdiff.max()),
                         "prob_mean_abs_diff_bf16_vs_fp32": None if p32 is None else round(float((pw - p32).abs().mean()), 5),
                         "prob_max_abs_diff_bf16_vs_fp32": None if p32 is None else round(float((pw - p32).abs().max()), 5)}
        # device decode + resize alone, batches of 128 Kaggle-sized JPEGs
        data = [torch.frombuffer(bytearray((kaggle / f"train_data/{i:032x}.jpg").read_bytes()), dtype=torch.uint8)
                for i in range(128)]
        decode_on_device(data, dev, size)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        reps = 20 if dev.type == "cuda" else 2
        t0 = time.perf_counter()
        for _ in range(reps):
            decode_on_device(data, dev, size)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        out["device_decode_resize_img_s"] = round(reps * len(data) / (time.perf_counter() - t0), 1)
        # the same with training's random crop, resize and flip (one batched resample)
        import random

        from engine.transforms import device_plan
        plans = [device_plan(768, 512, size, train=True, mode="resize", rng=random.Random(i)) for i in range(128)]
        decode_on_device(data, dev, size, plans=plans)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            decode_on_device(data, dev, size, plans=plans)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        out["device_decode_train_augment_img_s"] = round(reps * len(data) / (time.perf_counter() - t0), 1)
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
