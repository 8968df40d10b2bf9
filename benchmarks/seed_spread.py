"""The spread over seeds of the trained-model numbers that tests hold to a floor.

    python benchmarks/seed_spread.py backbones [--fold-seeds 10] [--init-seeds 5]
    python benchmarks/seed_spread.py ddp [--seeds 0 1 2 3 4 5] [--workdir /tmp/aivh-spread]
    python benchmarks/seed_spread.py probe [--seeds 0 1 2 3 4 5] [--workdir /tmp/aivh-spread]

backbones: tests/test_backbones.py's probe AUC on the bundled sample (frozen 64 px Lite0
features, 5-fold out-of-fold logistic regression): ImageNet weights over fold seeds, random
weights over init seeds x fold seeds, and the gap (pretrained minus random) over every pair.

ddp: tests/test_ddp.py's trainings (the tinted-noise dataset, B3 from scratch at 32 px) per
`--seed`: one process of 32 and `--nproc 2` of 16 for 5 epochs, and `torchrun` with two
processes for 3 epochs; their validation AUCs and the single/DDP difference.

probe: tests/test_backbones.py's `aivh probe` (pretrained Lite0, 64 px) on the bundled sample:
its validation AUC (30 images) per `--seed`.

Prints one line per seed, then min / median / max of each quantity, and last one JSON line.
Run it with `nice -n 10` on a shared machine.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _summary(values: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    out = {k: {"n": len(v), "min": float(np.min(v)), "median": float(np.median(v)), "max": float(np.max(v))}
           for k, v in values.items()}
    for k, s in out.items():
        print(f"{k:>14}: n={s['n']:>2} min {s['min']:.3f} median {s['median']:.3f} max {s['max']:.3f}")
    return out


def backbones(fold_seeds: int, init_seeds: int) -> dict:
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from engine.model import build_model
    from tests.test_backbones import LITE0, _sample_features

    def probe_auc(x, y, fold_seed):  # the test's probe, its fold seed free
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=3000))
        p = cross_val_predict(model, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=fold_seed),
                              method="predict_proba")[:, 1]
        return float(roc_auc_score(y, p))

    x, y = _sample_features(build_model("imagenet", LITE0))
    pre = [probe_auc(x, y, f) for f in range(fold_seeds)]
    print("pretrained by fold seed:", " ".join(f"{v:.3f}" for v in pre), flush=True)
    rand, gap = [], []
    for i in range(init_seeds):
        torch.manual_seed(i)
        xr, yr = _sample_features(build_model(None, LITE0))
        row = [probe_auc(xr, yr, f) for f in range(fold_seeds)]
        print(f"random init seed {i} by fold seed:", " ".join(f"{v:.3f}" for v in row), flush=True)
        rand += row
        gap += [p - r for p in pre for r in row]
    return {"pretrained": pre, "random": rand, "gap": gap}


def probe(seeds: list[int], workdir: Path) -> dict:
    """tests/test_backbones.py's `aivh probe` on the bundled sample at 64 px: validation AUC on
    its 30 validation images, per `--seed` (the split, and the regression's folds)."""
    home = workdir / "home-probe"
    shutil.rmtree(home, ignore_errors=True)
    os.environ["AIVH_HOME"] = str(home)
    os.environ.pop("AIVH_DB_URL", None)
    from db import queries
    from db.store import session_factory
    from engine.config import TrainConfig
    from engine.ingest import import_dataset
    from engine.probe import create_probe, execute_probe
    from tests.conftest import SAMPLE
    from tests.test_backbones import LITE0

    sessions = session_factory()
    import_dataset(sessions, SAMPLE, "s", progress=False)
    aucs = []
    for seed in seeds:
        cfg = TrainConfig.from_dict({"arch": LITE0, "pretrained": "imagenet", "probe": True, "img_size": 64,
                                     "device": "cpu", "seed": seed})
        with sessions.begin() as s:
            run_id = create_probe(s, queries.get_dataset(s, "s"), cfg).id
        execute_probe(run_id, sessions=sessions, progress=False)
        with sessions() as s:
            auc = queries.epochs(s, run_id)[-1].val_auc
        print(f"seed {seed}: val AUC {auc:.3f}", flush=True)
        aucs.append(float(auc))
    return {"seeds": seeds, "val_auc": aucs}


def _tinted_dataset(root: Path) -> Path:
    from tests.test_ddp import _tinted

    if not (root / "train.csv").is_file():
        _tinted(root)
    return root


def _train(home: Path, extra: list[str], launcher: tuple[str, ...] = ()) -> float:
    env = {**os.environ, "AIVH_HOME": str(home)}
    env.pop("AIVH_DB_URL", None)
    proc = subprocess.run([sys.executable, *launcher, "-m", "engine.cli", *extra], env=env, cwd=ROOT,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"aivh {' '.join(extra)} failed:\n{proc.stderr[-2000:]}")
    payloads = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return float(payloads[-1]["val_auc"])


def ddp(seeds: list[int], workdir: Path) -> dict:
    from tests.test_ddp import TORCHRUN

    data = _tinted_dataset(workdir / "tint")
    values: dict[str, list[float]] = {"single": [], "ddp": [], "difference": [], "torchrun": []}
    for seed in seeds:
        home = workdir / f"home-{seed}"
        shutil.rmtree(home, ignore_errors=True)
        env = {**os.environ, "AIVH_HOME": str(home)}
        env.pop("AIVH_DB_URL", None)
        subprocess.run([sys.executable, "-m", "engine.cli", "import", str(data), "--name", "tint"], env=env,
                       cwd=ROOT, capture_output=True, check=True)
        common = ["train", "--dataset", "tint", "--img-size", "32", "--lr", "2e-3", "--workers", "0",
                  "--val-fraction", "0.25", "--seed", str(seed), "--device", "cpu", "--json"]
        five, three = ["--epochs", "5", "--patience", "5"], ["--epochs", "3", "--patience", "3"]
        single = _train(home, [*common, *five, "--batch-size", "32"])
        two = _train(home, [*common, *five, "--batch-size", "16", "--nproc", "2"])
        tr = _train(home, [*common, *three, "--batch-size", "16"], launcher=TORCHRUN)
        for k, v in (("single", single), ("ddp", two), ("difference", abs(two - single)), ("torchrun", tr)):
            values[k].append(v)
        print(f"seed {seed}: single {single:.3f}  ddp {two:.3f}  |diff| {abs(two - single):.3f}  "
              f"torchrun {tr:.3f}", flush=True)
        shutil.rmtree(home, ignore_errors=True)
    return {"seeds": seeds, **values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    b = sub.add_parser("backbones")
    b.add_argument("--fold-seeds", type=int, default=10)
    b.add_argument("--init-seeds", type=int, default=5)
    d = sub.add_parser("ddp")
    d.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    d.add_argument("--workdir", type=Path, default=Path("/tmp/aivh-spread"))
    p = sub.add_parser("probe")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/aivh-spread"))
    args = parser.parse_args()
    if args.what == "backbones":
        values = backbones(args.fold_seeds, args.init_seeds)
    else:
        values = (ddp if args.what == "ddp" else probe)(args.seeds, args.workdir)
    summary = _summary({k: v for k, v in values.items() if k != "seeds"})
    print(json.dumps({"what": args.what, "summary": summary,
                      **{k: v for k, v in values.items() if k != "gap"}}))  # the gap: every pair, summarised


if __name__ == "__main__":
    main()
