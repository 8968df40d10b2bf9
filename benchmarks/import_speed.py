"""Import speed on a generated dataset of Kaggle-sized JPEGs.

    python benchmarks/import_speed.py [--n 80000] [--data bench-data/kaggle-sized]

Builds (once, cached) a Kaggle-layout folder: N training JPEGs of 768x512 with realistic
file sizes (about 100 KB: smooth content plus sensor-like noise at quality 90) and a
test.csv of N/14 ids. Each file is one of 64 base images with a unique JPEG comment
segment, so every file has its own bytes and sha1. Then imports it into a fresh store
in this process and prints rows/s and seconds (target: 80,000 rows in under 30 s on 2 cores).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def base_jpegs(count: int = 64, size: tuple[int, int] = (768, 512)) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]].astype(np.float32)
    for _ in range(count):
        f = rng.uniform(0.002, 0.02, 6)
        img = np.stack([127 + 60 * np.sin(xx * f[c] + yy * f[c + 3]) for c in range(3)], -1)
        img += rng.normal(0, 9, img.shape)  # noise keeps the files at realistic sizes
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def with_comment(jpeg: bytes, text: str) -> bytes:
    """Insert a COM segment right after SOI: a valid JPEG with its own sha1."""
    payload = text.encode()
    return jpeg[:2] + b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def build(root: Path, n: int) -> Path:
    done = root / ".complete"
    if done.exists() and done.read_text() == str(n):
        return root
    bases = base_jpegs()
    n_test = max(1, n // 14)
    (root / "train_data").mkdir(parents=True, exist_ok=True)
    (root / "test_data_v2").mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    train_lines, test_lines = [",file_name,label"], ["id"]
    for i in range(n + n_test):
        name = f"{'train_data' if i < n else 'test_data_v2'}/{i:032x}.jpg"
        (root / name).write_bytes(with_comment(bases[i % len(bases)], name))
        if i < n:
            train_lines.append(f"{i},{name},{int(rng.integers(0, 2))}")
        else:
            test_lines.append(name)
    (root / "train.csv").write_text("\n".join(train_lines) + "\n")
    (root / "test.csv").write_text("\n".join(test_lines) + "\n")
    done.write_text(str(n))
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=80_000, help="training rows")
    ap.add_argument("--data", default="bench-data/kaggle-sized")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    root = build(Path(args.data).resolve(), args.n)
    sizes = [p.stat().st_size for p in list((root / "train_data").iterdir())[:500]]
    with tempfile.TemporaryDirectory() as home:
        os.environ["AIVH_HOME"] = home
        os.environ.pop("AIVH_DB_URL", None)
        from db.store import session_factory
        from engine.ingest import import_dataset

        t0 = time.perf_counter()
        result = import_dataset(session_factory(), root, "bench", progress=False)
        seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        again = import_dataset(session_factory(), root, "bench", progress=False)
        reimport = time.perf_counter() - t1
    rows = result.train + result.test
    out = {"rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds),
           "reimport_seconds": round(reimport, 2), "reimport_added": again.added,
           "mean_file_kb": round(sum(sizes) / len(sizes) / 1024, 1), "cpus": os.cpu_count()}
    print(json.dumps(out) if args.json else
          f"imported {rows} rows in {seconds:.1f} s ({rows / seconds:,.0f} rows/s; mean file "
          f"{out['mean_file_kb']} KB); re-import {reimport:.1f} s, {again.added} added")


if __name__ == "__main__":
    main()
