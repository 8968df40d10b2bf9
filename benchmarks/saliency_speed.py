"""Seconds for one saliency map per method, at a given image size, on this machine.

    python benchmarks/saliency_speed.py [--img-size 300] [--device cpu] [--json]

Uses a Kaggle-sized 768x512 JPEG drawn here and an EfficientNet-B3 with one logit (random
weights: the cost does not depend on them). Each method runs once to warm up, then is
timed over three runs (median). Targets: Grad-CAM or plain gradients under 2 s on a
2-core CPU; Integrated Gradients with 32 steps under 1 s on a GPU.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import saliency
from engine.model import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--img-size", type=int, default=300)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--methods", nargs="+", default=["gradcam", "saliency", "integrated_gradients"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kaggle-sized.jpg"
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (512, 768, 3), dtype=np.uint8)).save(path, quality=90)
        model = saliency.for_captum(build_model(None)).to(device)
        _, x = saliency.preprocess(path, args.img_size)
        x = x.to(device)
        out = {"device": str(device), "img_size": args.img_size, "threads": torch.get_num_threads()}
        for method in args.methods:
            settings = saliency.Settings(method, steps=32, batch=32 if device.type == "cuda" else 8)
            saliency.attribute(model, x, settings)
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                saliency.attribute(model, x, settings)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            out[f"{method}_s"] = round(statistics.median(times), 3)
    print(json.dumps(out) if args.json else "\n".join(f"{k:28s} {v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
