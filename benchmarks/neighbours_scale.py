"""Neighbours at Kaggle's scale (issue 17's targets): the figures of docs/benchmarks.md, "Neighbours".

    python benchmarks/neighbours_scale.py [--images 80000] [--dim 1536] [--data DIR] [--out FILE.json]
        [--only hashes,nn,map]

- hashes: N small JPEGs (64x48, smooth content plus noise; built once under
  ~/.cache/aivh/neighbours-bench-N) imported into a fresh workspace, then `aivh duplicates --json`
  twice: the first hashes every image in worker processes and stores the hashes, the second reuses
  them. Target: under 2 minutes on 2 cores.
- nn: nearest neighbours (engine.neighbours.embedding_pairs: faiss, exact up to 20,000 rows, IVF
  above) on N x dim random float16 vectors with 1% planted near copies, and how many of those
  were found. Target: under a minute. Also faiss's exact search on a 10,000-row slice, for scale.
- map: a run with N x dim embeddings and its cached 2-D map (PCA here: UMAP on 80,000 is the
  one-off computation), then the Map page's first render from that cache under AppTest (server
  side: the browser's drawing is not in it). Target: under 2 s.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_images(root: Path, n: int) -> Path:
    """A Kaggle-layout folder of n drawn JPEGs (90% train, 10% test), built once."""
    from PIL import Image

    if (root / "test.csv").is_file():
        return root
    rng = np.random.default_rng(0)
    (root / "train_data").mkdir(parents=True, exist_ok=True)
    (root / "test_data_v2").mkdir(parents=True, exist_ok=True)
    train, test = [], []
    for i in range(n):
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)  # a coarse layout of its own
        im = Image.fromarray(small).resize((64, 48), Image.BICUBIC)
        arr = np.clip(np.asarray(im, dtype=np.int16) + rng.integers(-8, 9, (48, 64, 3)), 0, 255)
        name = f"{'test_data_v2' if i % 10 == 0 else 'train_data'}/{i:08d}.jpg"
        Image.fromarray(arr.astype(np.uint8)).save(root / name, quality=85)
        (test if i % 10 == 0 else train).append(name)
    with open(root / "train.csv", "w") as f:
        f.write(",file_name,label\n" + "".join(f"{k},{p},{k % 2}\n" for k, p in enumerate(train)))
    with open(root / "test.csv", "w") as f:
        f.write("id\n" + "".join(f"{p}\n" for p in test))
    return root


def aivh(home: Path, *args: str) -> tuple[dict, float]:
    env = {**os.environ, "AIVH_HOME": str(home)}
    env.pop("AIVH_DB_URL", None)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "engine.cli", *args, "--json"], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1]), time.perf_counter() - t0


def bench_hashes(n: int, data: Path, home: Path) -> dict:
    t0 = time.perf_counter()
    make_images(data, n)
    made = time.perf_counter() - t0
    _imported, t_import = aivh(home, "import", str(data), "--name", "bench")
    first, t_first = aivh(home, "duplicates", "--dataset", "bench")
    _second, t_second = aivh(home, "duplicates", "--dataset", "bench")
    return {"images": first["images"], "make_s": round(made, 1), "import_s": round(t_import, 1),
            "duplicates_first_s": round(t_first, 1), "duplicates_first_hash_s": first["hash_seconds"],
            "duplicates_again_s": round(t_second, 1), "pairs": len(first["pairs"]), "counts": first["counts"]}


def bench_nn(n: int, dim: int) -> dict:
    import faiss

    from engine import neighbours

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    plants = rng.choice(n, n // 100, replace=False)
    twins = rng.choice(np.setdiff1d(np.arange(n), plants), len(plants), replace=False)
    x[twins] = x[plants] + 0.1 * rng.standard_normal((len(plants), dim), dtype=np.float32)  # cosine ~0.995
    v = x.astype(np.float16)
    del x
    t0 = time.perf_counter()
    a, b, _c = neighbours.embedding_pairs(v)
    t_pairs = time.perf_counter() - t0
    found = set(zip(a.tolist(), b.tolist()))
    truth = {tuple(sorted((int(p), int(t)))) for p, t in zip(plants, twins)}
    sub = neighbours._unit(v[:10_000])
    t1 = time.perf_counter()
    index = faiss.IndexFlatIP(dim)
    index.add(sub)
    index.search(sub, 11)
    t_exact = time.perf_counter() - t1
    return {"rows": n, "dim": dim, "pairs_s": round(t_pairs, 1), "planted": len(truth),
            "planted_found": len(truth & found), "other_pairs": len(found - truth),
            "exact_10k_s": round(t_exact, 1), "exact_80k_estimate_s": round(t_exact * (n / 10_000) ** 2, 0)}


def bench_map(n: int, dim: int, home: Path) -> dict:
    os.environ["AIVH_HOME"] = str(home)
    os.environ.pop("AIVH_DB_URL", None)
    from streamlit.testing.v1 import AppTest

    from db import queries
    from db.models import Run
    from db.store import session_factory
    from engine import embeddings, neighbours
    from engine.config import TrainConfig

    sessions = session_factory()
    with sessions.begin() as s:
        ds = queries.get_dataset(s, "bench")
        ids = [i for i, *_ in queries.image_facts(s, ds.id)][:n]
        run = Run(dataset_id=ds.id, status="succeeded", config=TrainConfig(img_size=32).to_dict(),
                  checkpoint="/nonexistent/best.pt", best_epoch=1, best_threshold=0.5)
        s.add(run)
        s.flush()
        run_id = run.id
    embeddings.save(run_id, ids, np.random.default_rng(0).standard_normal((len(ids), dim), dtype=np.float32))
    t0 = time.perf_counter()
    neighbours.embedding_map(run_id, method="pca")
    t_pca = time.perf_counter() - t0
    at = AppTest.from_file(str(ROOT / "dashboard" / "views" / "embedding_map.py"), default_timeout=120)
    at.query_params["run"] = str(run_id)
    t1 = time.perf_counter()
    at.run()
    t_first = time.perf_counter() - t1
    assert not at.exception, at.exception
    t2 = time.perf_counter()
    at.run()
    t_again = time.perf_counter() - t2
    return {"points": len(ids), "pca_s": round(t_pca, 1), "first_render_s": round(t_first, 2),
            "rerender_s": round(t_again, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=80_000)
    p.add_argument("--dim", type=int, default=1536)
    p.add_argument("--data", help="(~/.cache/aivh/neighbours-bench-N)")
    p.add_argument("--only", default="hashes,nn,map")
    p.add_argument("--out")
    args = p.parse_args()
    data = Path(args.data or Path.home() / ".cache" / "aivh" / f"neighbours-bench-{args.images}")
    only = set(args.only.split(","))
    result = {"date": time.strftime("%Y-%m-%d"), "cores": len(os.sched_getaffinity(0))}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        if "hashes" in only or "map" in only:
            result["hashes"] = bench_hashes(args.images, data, home)
            print(json.dumps(result["hashes"]), file=sys.stderr, flush=True)
        if "nn" in only:
            result["nn"] = bench_nn(args.images, args.dim)
            print(json.dumps(result["nn"]), file=sys.stderr, flush=True)
        if "map" in only:
            result["map"] = bench_map(args.images, args.dim, home)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
