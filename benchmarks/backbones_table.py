"""Architectures and starting weights side by side on one dataset: the table of docs/benchmarks.md.

    python benchmarks/backbones_table.py [--data ../shared/data/cifake-mini] [--sizes 64 128]
        [--only probe,lite0-pretrained,lite0-scratch,b3-scratch] [--out docs/results/backbones.json]

Imports the dataset into a fresh temporary workspace, then, at each image size, runs through
aivh's own code (the store, the trainer, the probe) and reports per run: best validation F1
(at its best threshold), F1 at 0.5, AUC, wall seconds and training images per second:
- probe: frozen ImageNet tf_efficientnet_lite0 features + logistic regression (`aivh probe`)
- lite0-pretrained: ImageNet Lite0 fine-tuned, the head alone for the first epoch
- lite0-scratch: Lite0 from random weights
- b3-scratch: torchvision EfficientNet-B3 from random weights (aivh's default before)
All runs share the split (seed 0) and use 2 decoding workers, batch 32. The test labels of
cifake-mini are held back, so exported submissions cannot be scored here.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {
    "probe": {"arch": "tf_efficientnet_lite0", "pretrained": "imagenet", "probe": True, "epochs": 1,
              "batch_size": 64},
    "lite0-pretrained": {"arch": "tf_efficientnet_lite0", "pretrained": "imagenet", "epochs": 6,
                         "freeze_epochs": 1, "patience": 6},
    "lite0-scratch": {"arch": "tf_efficientnet_lite0", "epochs": 10, "lr": 1e-3, "patience": 10},
    "b3-scratch": {"arch": "efficientnet_b3", "epochs": 10, "lr": 1e-3, "patience": 4},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifake-mini"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--only", default=",".join(RECIPES))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", help="also write the rows as JSON here")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="aivh-backbones-"))
    os.environ["AIVH_HOME"] = str(home)
    os.environ.pop("AIVH_DB_URL", None)
    sys.path.insert(0, str(ROOT))
    import torch

    from db import queries
    from db.store import session_factory
    from engine import jobs
    from engine.config import TrainConfig
    from engine.ingest import import_dataset
    from engine.probe import create_probe, execute_probe

    sessions = session_factory()
    import_dataset(sessions, Path(args.data), "data", progress=False)
    rows = []
    for size in args.sizes:
        for name in args.only.split(","):
            recipe = RECIPES[name]
            cfg = TrainConfig.from_dict({"img_size": size, "batch_size": 32, "device": "cpu",
                                         "workers": args.workers, "seed": 0, **recipe})
            with sessions.begin() as s:
                ds = queries.get_dataset(s, "data")
                run_id = (create_probe if cfg.probe else jobs.create_run)(s, ds, cfg).id
            t0 = time.perf_counter()
            run = (execute_probe(run_id, sessions=sessions, progress=False) if cfg.probe
                   else jobs.execute(run_id, progress=False, sessions=sessions))
            wall = time.perf_counter() - t0
            with sessions() as s:
                best = queries.best_epoch(s, run)
                epochs = queries.epochs(s, run_id)
            row = {"recipe": name, "img_size": size, "run": run_id, "status": run.status,
                   "epochs_run": len(epochs), "best_epoch": run.best_epoch,
                   "val_best_f1": round(best.val_best_f1, 4), "val_f1": round(best.val_f1, 4),
                   "val_auc": round(best.val_auc, 4), "wall_s": round(wall, 1),
                   "train_img_s": round(sum(e.images_per_s for e in epochs) / max(len(epochs), 1), 1),
                   "lr": cfg.lr, "config": {k: v for k, v in cfg.to_dict().items() if k in recipe or k == "lr"}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "cores": os.cpu_count(),
            "data": args.data}
    if args.out:
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print("| recipe | px | best val F1 | F1@0.5 | AUC | epochs | wall | train img/s |")
    for r in rows:
        print(f"| {r['recipe']} | {r['img_size']} | {r['val_best_f1']:.4f} | {r['val_f1']:.4f} | {r['val_auc']:.4f} "
              f"| {r['epochs_run']} | {r['wall_s'] / 60:.1f} min | {r['train_img_s']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
