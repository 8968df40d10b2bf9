"""The spread of tests/test_shortcuts.py's robustness figures over drawings x probe seeds.

    nice -n 10 python benchmarks/robustness_spread.py [--drawings 0 1 ... 9] [--probe-seeds 0 5 9]

For each drawing of the test's dataset (_noise_or_smooth: 30 grainy and 30 smooth 64 px
images, `seed` the drawing) and each probe seed (the split and the regression's folds), a
64 px Lite0 ImageNet probe with half the images for validation, then `aivh robustness` on its
30 validation images: none's F1 and AUC, jpeg50's F1, calls changed and mean change, the mean
change of jpeg95 and jpeg75. One line per pair, then min / max of each, and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drawings", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--probe-seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--workdir", type=Path,
                        default=Path(tempfile.gettempdir()) / "aivh-robustness-spread")
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.environ["AIVH_HOME"] = str(args.workdir / "home")
    os.environ.pop("AIVH_DB_URL", None)
    from db import queries
    from db.store import session_factory
    from engine.config import TrainConfig
    from engine.ingest import import_dataset
    from engine.probe import create_probe, execute_probe
    from engine.robustness import score_run
    from tests.test_shortcuts import _noise_or_smooth

    sessions = session_factory()
    rows = []
    for drawing in args.drawings:
        name = f"d{drawing}"
        import_dataset(sessions, _noise_or_smooth(args.workdir / name, seed=drawing), name, progress=False)
        for seed in args.probe_seeds:
            cfg = TrainConfig.from_dict({"arch": "tf_efficientnet_lite0", "pretrained": "imagenet",
                                         "probe": True, "img_size": 64, "device": "cpu", "workers": 0, "batch_size": 64,
                                         "val_fraction": 0.5, "seed": seed})
            with sessions.begin() as s:
                run_id = create_probe(s, queries.get_dataset(s, name), cfg).id
            execute_probe(run_id, sessions=sessions, progress=False)
            scored = score_run(sessions, run_id, device="cpu", progress=False)
            out = {r["perturbation"]: r for r in scored["rows"]}
            none, q50 = out["none"], out["jpeg50"]
            row = {"drawing": drawing, "probe_seed": seed, "none_f1": none["f1"], "none_auc": none["auc"],
                   "jpeg50_f1_under_none": none["f1"] - q50["f1"], "jpeg50_flipped": q50["flipped"],
                   "jpeg50_change": q50["mean_abs_change"], "jpeg95_change": out["jpeg95"]["mean_abs_change"],
                   "jpeg75_change": out["jpeg75"]["mean_abs_change"]}
            rows.append(row)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}),
                  flush=True)
    summary = {k: [min(r[k] for r in rows), max(r[k] for r in rows)] for k in rows[0] if k not in
               ("drawing", "probe_seed")}
    summary["ordered"] = sum(r["jpeg95_change"] < r["jpeg75_change"] < r["jpeg50_change"] for r in rows)
    for k, v in summary.items():
        print(f"{k:>22}: {v}")
    print(json.dumps({"pairs": len(rows), "summary": summary}))


if __name__ == "__main__":
    main()
