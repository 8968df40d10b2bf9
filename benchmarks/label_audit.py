"""Does the label audit find planted label errors, and does fixing them help?

Copies a Kaggle-layout dataset (default ../shared/data/cifake-mini) with a seeded 5% of its
train.csv labels flipped, imports it into a fresh store, then:

1. runs `aivh audit` (k fold runs + cleanlab) and reports precision and recall of the flagged
   set and precision at k = number flipped (random order would give the flip rate);
2. trains a run on the noisy labels ("before");
3. plays a reviewer who works through the flagged queue worst first and restores every
   flipped label met there (a relabel row with author and note, as the Review page writes);
4. retrains with `--like` the before run on the current labels ("after") and compares both
   on the same evaluation images (shared validation images whose label did not change).

    python benchmarks/label_audit.py --workdir /tmp/aivh-audit [--epochs 4] [--img-size 32]

Prints a report and, last, one JSON line.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def flipped_copy(src: Path, dst: Path, rate: float, seed: int, limit: int | None) -> tuple[set[str], int]:
    """Copy the dataset with `rate` of train.csv's labels flipped; returns (flipped names, train rows)."""
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    with open(src / "train.csv", newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames, list(reader)
    if limit:
        rows = random.Random(seed + 1).sample(rows, limit)
    chosen = random.Random(seed).sample(range(len(rows)), round(rate * len(rows)))
    for n in chosen:
        rows[n]["label"] = str(1 - int(rows[n]["label"]))
    with open(dst / "train.csv", "w", newline="") as f:
        w = csv.DictWriter(f, header)
        w.writeheader()
        w.writerows(rows)
    (dst / "train_data").mkdir()
    for r in rows:
        shutil.copy2(src / r["file_name"], dst / r["file_name"])
    shutil.copy2(src / "test.csv", dst / "test.csv")
    shutil.copytree(src / "test_data_v2", dst / "test_data_v2")
    return {rows[n]["file_name"] for n in chosen}, len(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifake-mini"))
    ap.add_argument("--workdir", default="/tmp/aivh-audit")
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--limit", type=int, help="use a random subset of N training rows (smoke runs)")
    ap.add_argument("--probe", action="store_true",
                    help="audit folds as linear probes on a frozen pretrained backbone (--arch, --pretrained)")
    ap.add_argument("--arch", default=None, help="(efficientnet_b3; tf_efficientnet_lite0 with --probe)")
    ap.add_argument("--pretrained", default=None, help="(none; imagenet with --probe)")
    ap.add_argument("--audit-only", action="store_true", help="stop after the audit (no before/after runs)")
    args = ap.parse_args()

    work = Path(args.workdir).resolve()
    os.environ["AIVH_HOME"] = str(work / "store")
    os.environ.pop("AIVH_DB_URL", None)
    shutil.rmtree(work / "store", ignore_errors=True)

    import torch

    from db import evaluation, labelling, queries
    from db.store import session_factory
    from engine import audit as au
    from engine import jobs
    from engine.compare import compare_runs
    from engine.config import TrainConfig
    from engine.ingest import import_dataset

    t_start = time.perf_counter()
    flipped, n_train = flipped_copy(Path(args.data), work / "data", args.rate, args.seed, args.limit)
    sessions = session_factory()
    import_dataset(sessions, work / "data", "noisy", progress=False)
    cfg = TrainConfig.from_dict({
        "epochs": args.epochs, "img_size": args.img_size, "batch_size": args.batch_size, "lr": args.lr,
        "device": args.device, "workers": args.workers, "seed": args.seed, "patience": args.epochs,
        "arch": args.arch or ("tf_efficientnet_lite0" if args.probe else "efficientnet_b3"),
        "pretrained": args.pretrained or ("imagenet" if args.probe else None), "probe": args.probe})
    print(f"{n_train} training rows, {len(flipped)} labels flipped; torch {torch.__version__}, "
          f"device {args.device}", file=sys.stderr)

    # 1. the audit
    t0 = time.perf_counter()
    with sessions.begin() as s:
        audit_id = au.create_audit(s, queries.get_dataset(s, "noisy"), cfg, args.folds).id
    audit = au.run_audit(sessions, audit_id, progress=False)
    audit_s = time.perf_counter() - t0
    with sessions() as s:
        rows = evaluation.audit_rows(s, audit_id)
    is_flip = [r.rel_path in flipped for r in rows]
    flagged = [r for r in rows if r.flagged]
    tp = sum(r.rel_path in flipped for r in flagged)
    k = len(flipped)
    audit_fig = {"scored": len(rows), "flipped": k, "flagged": len(flagged),
                 "flagged_precision": tp / max(len(flagged), 1), "flagged_recall": tp / k,
                 "precision_at_k": sum(is_flip[:k]) / k, "precision_at_150": sum(is_flip[:150]) / 150,
                 "random_precision": k / len(rows), "seconds": round(audit_s, 1)}
    if args.audit_only:
        print(f"audit ({'probe' if args.probe else 'fine-tuned'} folds): {len(rows)} scored, {len(flagged)} "
              f"flagged (precision {audit_fig['flagged_precision']:.3f}, recall {audit_fig['flagged_recall']:.3f}); "
              f"precision@{k} {audit_fig['precision_at_k']:.3f}, @150 {audit_fig['precision_at_150']:.3f}; "
              f"{audit_fig['seconds']} s")
        print(json.dumps({"data": args.data, "train_rows": n_train, "rate": args.rate, "seed": args.seed,
                          "folds": args.folds, "config": cfg.to_dict(), "audit": audit_fig}, default=str))
        return 0

    # 2. the run on the noisy labels
    t0 = time.perf_counter()
    with sessions.begin() as s:
        before = jobs.create_run(s, queries.get_dataset(s, "noisy"), cfg).id
    jobs.execute(before, progress=False)
    before_s = time.perf_counter() - t0

    # 3. the reviewer: every flipped image met in the flagged queue is restored
    restored = 0
    with sessions.begin() as s:
        for r in flagged:
            if r.rel_path in flipped:
                labelling.relabel(s, r.image_id, 1 - r.given_label, author="reviewer",
                                note=f"audit {audit_id} rank {r.rank}")
                restored += 1

    # 4. retrain like the before run, on the current labels; compare on the same images
    t0 = time.perf_counter()
    with sessions.begin() as s:
        like = queries.get_run(s, before)
        run = jobs.create_run(s, queries.get_dataset(s, "noisy"), TrainConfig.from_dict(like.config))
        run.like_run_id = before
        after = run.id
    jobs.execute(after, progress=False)
    after_s = time.perf_counter() - t0
    with sessions() as s:
        cmp = compare_runs(s, before, after)

    result = {"data": args.data, "train_rows": n_train, "rate": args.rate, "seed": args.seed,
              "folds": args.folds, "config": cfg.to_dict(), "device": args.device, "torch": torch.__version__,
              "audit": audit_fig, "audit_id": audit.id, "restored": restored, "still_flipped": k - restored,
              "before_run": before, "after_run": after, "compare": cmp,
              "seconds": {"audit": round(audit_s, 1), "before": round(before_s, 1),
                          "after": round(after_s, 1), "total": round(time.perf_counter() - t_start, 1)}}
    a = audit_fig
    print(f"audit: {a['scored']} images scored, {a['flagged']} flagged; flagged precision "
          f"{a['flagged_precision']:.3f}, recall {a['flagged_recall']:.3f}; precision at k={k}: "
          f"{a['precision_at_k']:.3f} (random: {a['random_precision']:.3f}); {a['seconds']} s")
    print(f"reviewer restored {restored} of {k} flipped labels from the flagged queue")
    print(f"compare on {cmp['images']} images ({cmp['basis']}): before F1@0.5 {cmp['a']['f1_at_0.5']:.4f} "
          f"AUC {cmp['a']['auc']:.4f} | after F1@0.5 {cmp['b']['f1_at_0.5']:.4f} AUC {cmp['b']['auc']:.4f}")
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
