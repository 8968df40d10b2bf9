"""`aivh shortcuts`, `aivh shift`, `aivh robustness`: why a detector may fail on the test set."""
from __future__ import annotations

import sys
from pathlib import Path

from db import labelling, queries
from db.store import session_factory
from engine.choices import SPLITS
from engine.cli.shared import emit


def _table(features: list[dict], n: int = 8) -> str:
    return "\n".join(f"  {f['name']:<16} AUC {f['auc']:.3f}" for f in features[:n])


def cmd_shortcuts(args) -> None:
    from engine.shortcuts import audit_shortcuts

    with session_factory()() as s:
        result = audit_shortcuts(s, args.dataset, folds=args.folds, seed=args.seed)
    emit(args, result, f"{result['sentence']}\nall file properties together: AUC {result['metadata_auc']:.3f} "
          f"({result['images']} labelled training images, {result['folds']} folds)\neach alone, worst first:\n"
          f"{_table(result['features'])}")


def cmd_shift(args) -> None:
    from engine import shortcuts

    sessions = session_factory()
    pooled = None
    if args.run is not None:
        with sessions() as s:
            if queries.get_run(s, args.run).dataset_id != queries.get_dataset(s, args.dataset).id:
                raise ValueError(f"run {args.run} was not trained on dataset {args.dataset!r}")
        _ds, pooled = shortcuts.run_features(sessions, args.run, device=args.device, progress=not args.json)
    with sessions() as s:
        ds = queries.get_dataset(s, args.dataset)
        shift = shortcuts.measure_shift(s, ds.id, pooled=pooled, folds=args.folds, seed=args.seed)
        labels = labelling.current_labels(s, ds.id)
    result = shortcuts.shift_report(shift, args.dataset, labels, run=args.run)
    if args.out:
        result["path"] = str(shortcuts.write_likeness(Path(args.out), shift, labels))
        print(f"wrote every training image's test-likeness to {args.out}", file=sys.stderr)
    meta = ""
    if shift.metadata_auc is not None:
        meta = (f" (file properties alone: AUC {shift.metadata_auc:.3f}; the run's features alone: AUC "
                f"{shift.pooled_auc:.3f})")
    left_out = (f"; {shift.excluded} images the run trained on (or copies of them) left out"
                if args.run is not None else "")
    emit(args, result, f"{result['sentence']}\ntrain vs test: AUC {shift.auc:.3f}{meta}, {result['train']} "
          f"training and {result['test']} test images, {result['folds']} folds{left_out}\n"
          "file properties shifting most:\n"
          f"{_table(result['features'])}")


def cmd_robustness(args) -> None:
    from engine.robustness import score_run

    result = score_run(session_factory(), args.run, args.split, limit=args.limit, batch_size=args.batch_size,
                       device=args.device, seed=args.seed, progress=not args.json)
    for msg in result["skipped"]:
        print(f"skipped {msg}", file=sys.stderr)

    def num(v):
        return "   -  " if v is None else f"{v:.3f}"

    lines = [f"  {r['perturbation']:<13} F1 {num(r['f1'])}  AUC {num(r['auc'])}  called AI {num(r['called_ai'])}  "
             f"mean change {r['mean_abs_change']:.4f}  calls changed {r['flipped']}" for r in result["rows"]]
    shown = result | {"rows": [{k: v for k, v in r.items() if k != "flipped_ids"} for r in result["rows"]]}
    emit(args, shown, f"run {args.run}, {result['images']} {args.split} images at threshold "
          f"{result['threshold']:.4g} ({result['threshold_source']}):\n" + "\n".join(lines))


def add_parsers(sub, common) -> None:
    _shortcuts_parser(sub, common)
    _shift_parser(sub, common)
    _robustness_parser(sub, common)


def _shortcuts_parser(sub, common) -> None:
    c = sub.add_parser("shortcuts", parents=[common],
                       help="how well file properties alone predict the training label")
    c.add_argument("--dataset", required=True)
    c.add_argument("--folds", type=int, default=5, help="cross-validation folds (5)")
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=cmd_shortcuts)


def _shift_parser(sub, common) -> None:
    c = sub.add_parser("shift", parents=[common],
                       help="adversarial validation: how well training and test images can be told apart")
    c.add_argument("--dataset", required=True)
    c.add_argument("--run", type=int,
                   help="add this run's pooled features to the file properties (over the images it never "
                        "trained on)")
    c.add_argument("--out", help="write every training image's test-likeness to this CSV")
    c.add_argument("--folds", type=int, default=5, help="cross-validation folds (5)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", default="auto", help="for --run's features: auto, cpu or cuda")
    c.set_defaults(func=cmd_shift)


def _robustness_parser(sub, common) -> None:
    c = sub.add_parser("robustness", parents=[common],
                       help="a run's F1, AUC and share called AI after re-encoding, rescaling and cropping")
    c.add_argument("--run", type=int, required=True)
    c.add_argument("--split", default="val", choices=SPLITS)
    c.add_argument("--limit", type=int, help="score a stratified, seeded subset of N images")
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--device", default="auto")
    c.add_argument("--seed", type=int, default=0, help="which subset --limit draws")
    c.set_defaults(func=cmd_robustness)
