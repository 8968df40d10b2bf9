"""The two JPEG decode rules (TrainConfig.jpeg_scale) against each other and against the device
path's decoder, on the CPU: pixel gaps of the model's input and decode + resize time.

    python benchmarks/decode_rule.py [--repeats 10] [--json]

Files: the 2048x1536 JPEG of tests/test_decode_rule.py (sharp shapes and lines over noise) and
eight 768x512 Kaggle-sized ones (engine.bench.base_jpegs). "device" is torchvision's CPU JPEG
decoder through engine.gpu_decode (the code nvJPEG runs on CUDA), always at full resolution.
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

from engine.bench import base_jpegs  # noqa: E402
from engine.gpu_decode import to_device  # noqa: E402
from engine.loader import ImageDataset, collate  # noqa: E402
from tests.test_decode_rule import big_jpeg  # noqa: E402

CPU = torch.device("cpu")


def model_input(root: Path, names: list[str], size: int, rule: str, raw: bool) -> torch.Tensor:
    ds = ImageDataset(root, names, None, size=size, train=False, raw_jpeg=raw, jpeg_scale=rule)
    x, _y, idx, failed = collate([ds[i] for i in range(len(names))])
    assert not failed, failed
    x, rows, errors = to_device(x, CPU, size, "resize")
    assert rows is None and not errors
    return x[idx.argsort()].float()


def gap(a: torch.Tensor, b: torch.Tensor) -> dict:
    d = (a - b).abs()
    return {"mean": round(float(d.mean()), 2), "max": int(d.max())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp())
    (root / "big.jpg").write_bytes(big_jpeg())
    for k, data in enumerate(base_jpegs(8)):
        (root / f"k{k}.jpg").write_bytes(data)
    sets = {"2048x1536": ["big.jpg"], "768x512": [f"k{k}.jpg" for k in range(8)]}
    rows = []
    for label, names in sets.items():
        for size in (300, 224, 64):
            draft = model_input(root, names, size, "draft", raw=False)
            full = model_input(root, names, size, "full", raw=False)
            device = model_input(root, names, size, "full", raw=True)
            times = {}
            for rule in ("draft", "full"):
                ds = ImageDataset(root, names, None, size=size, train=False, jpeg_scale=rule)
                t0 = time.perf_counter()
                for _ in range(args.repeats):
                    for i in range(len(names)):
                        ds[i]
                times[rule] = round((time.perf_counter() - t0) / (args.repeats * len(names)) * 1000, 1)
            rows.append({"images": label, "size": size, "draft_vs_full": gap(draft, full),
                         "device_vs_full": gap(device, full), "device_vs_draft": gap(device, draft),
                         "ms_per_image": times})
    if args.json:
        print(json.dumps(rows))
        return
    for r in rows:
        print(f"{r['images']} @ {r['size']}: draft vs full {r['draft_vs_full']}, device vs full "
              f"{r['device_vs_full']}, device vs draft {r['device_vs_draft']}, ms/image {r['ms_per_image']}")


if __name__ == "__main__":
    main()
