"""Import speed on a generated dataset of Kaggle-sized JPEGs.

    python benchmarks/import_speed.py [--n 80000] [--data bench-data/kaggle-sized]

Builds (once, cached) a Kaggle-layout folder: N training JPEGs of 768x512 with realistic
file sizes (about 100 KB: smooth content plus sensor-like noise at quality 90) and a
test.csv of N/14 ids. Each file is one of 64 base images with a unique JPEG comment
segment, so every file has its own bytes and sha1. Then imports it into a fresh store
in this process and prints rows/s and seconds (target: 80,000 rows in under 30 s on 2 cores),
then the re-import, and the import that fills in header properties of rows stored without them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine.bench import build_dataset as build


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
        # a store from before the header properties were recorded (migration 0004): the next
        # import reads every header again (no decode, no hash) to fill them in
        from sqlalchemy import update

        from db.models import Image
        with session_factory().begin() as s:
            s.execute(update(Image).values(format=None))
        t2 = time.perf_counter()
        refill = import_dataset(session_factory(), root, "bench", progress=False)
        refill_seconds = time.perf_counter() - t2
    rows = result.train + result.test
    out = {"rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds),
           "reimport_seconds": round(reimport, 2), "reimport_added": again.added,
           "metadata_fill_seconds": round(refill_seconds, 2), "metadata_filled": refill.metadata_filled,
           "mean_file_kb": round(sum(sizes) / len(sizes) / 1024, 1), "cpus": os.cpu_count()}
    print(json.dumps(out) if args.json else
          f"imported {rows} rows in {seconds:.1f} s ({rows / seconds:,.0f} rows/s; mean file "
          f"{out['mean_file_kb']} KB); re-import {reimport:.1f} s, {again.added} added; metadata fill "
          f"of {refill.metadata_filled} rows {refill_seconds:.1f} s")


if __name__ == "__main__":
    main()
