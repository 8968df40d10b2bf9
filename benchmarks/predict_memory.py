"""Peak host memory of `aivh predict` for 10,000 vs 80,000 images: does it stay flat?

    python benchmarks/predict_memory.py [--sizes 10000 80000] [--workdir DIR] [--json]

For each size N, builds (once) a Kaggle-layout folder of N training JPEGs of 768x512 (plus
N/14 test ids), imports it into one store, records a small real run on it (1 epoch on 64
images at 32 px: the model's quality does not matter here, its checkpoint does), then runs
`aivh predict --split all` in a fresh process and reads that process's peak resident memory
(the parent; the decoding workers report theirs separately). Predictions are streamed: one
short transaction per batch, nothing kept per image but the position list.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROBE = """
import json, resource, sys
from db.store import session_factory
from engine.predict import predict_run
r = predict_run(session_factory(), int(sys.argv[1]), "all", batch_size=64, workers=2, device="cpu", progress=False)
print(json.dumps({"images": r["images"], "seconds": r["seconds"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "peak_worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 80_000])
    ap.add_argument("--workdir", default="bench-data/predict-memory")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from engine.bench import build_dataset

    work = Path(args.workdir).resolve()
    env = {**os.environ, "AIVH_HOME": str(work / "store"), "PYTHONPATH": str(ROOT)}
    out: dict = {"sizes": {}}

    def aivh(*a: str) -> dict:
        proc = subprocess.run([sys.executable, "-m", "engine.cli", *a, "--json"], env=env, check=True,
                              capture_output=True, text=True)
        return json.loads(proc.stdout.strip().splitlines()[-1])

    for n in args.sizes:
        root = build_dataset(work / f"data-{n}", n)
        name = f"n{n}"
        aivh("import", str(root), "--name", name)
        run = aivh("train", "--dataset", name, "--epochs", "1", "--img-size", "32", "--limit", "64",
                   "--batch-size", "16", "--workers", "0", "--device", "cpu")["run"]
        proc = subprocess.run([sys.executable, "-c", PROBE, str(run)], env=env, check=True,
                              capture_output=True, text=True)
        out["sizes"][n] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(n, out["sizes"][n], flush=True)
    peaks = [v["peak_rss_mb"] for v in out["sizes"].values()]
    out["peak_ratio_largest_to_smallest"] = round(peaks[-1] / peaks[0], 3)
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
