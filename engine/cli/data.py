"""`aivh import`, `aivh evalset`, `aivh labels export`: data in and the label record out."""
from __future__ import annotations

import sys
from pathlib import Path

from db import evaluation, labelling, queries
from db.store import session_factory
from engine.cli.shared import emit
from engine.errors import UsageError


def cmd_import(args) -> None:
    from db.store import store_exists
    from engine.ingest import import_dataset, probe_folder, read_folder

    folder = read_folder(args.data_dir)  # a folder that is no Kaggle layout stops here: no store made
    if not store_exists():  # a first import: a folder with no readable image stops here too
        folder = probe_folder(folder, progress=not args.json)
    result = import_dataset(session_factory(), folder, args.name, progress=not args.json,
                            apply_label_changes=args.apply_label_changes,
                            apply_group_changes=args.apply_group_changes)
    for r in result.rejects:
        print(f"rejected {r}", file=sys.stderr)
    for name in result.changed:
        print(f"changed since the last import (other bytes), probed again: {name}", file=sys.stderr)
    if result.predictions_dropped:
        print(f"{result.predictions_dropped} prediction(s) of the replaced files dropped (made from their "
              "old content): predict again", file=sys.stderr)
    for line in (result.label_changes_line(), result.group_changes_line(), result.duplicates_line()):
        if line:
            print(line, file=sys.stderr)
    emit(args, result.to_json(),
          f"dataset {result.dataset}: {result.train} train, {result.test} test images "
          f"({result.added} new, {len(result.rejects)} rejected)")


def cmd_evalset(args) -> None:
    if (args.run is None) == (args.like_test is None):
        raise UsageError("give --run RUN (its validation images) or --like-test N --dataset D")
    if args.like_test is not None and not args.dataset:
        raise UsageError("--like-test needs --dataset")
    if args.shift_run is not None and args.like_test is None:
        raise UsageError("--shift-run ranks the images of --like-test N; give both")
    pooled = None
    if args.shift_run is not None:  # features first: no transaction held open while they compute
        from engine.shortcuts import run_features

        sessions = session_factory()
        with sessions() as s:
            if queries.get_run(s, args.shift_run).dataset_id != queries.get_dataset(s, args.dataset).id:
                raise ValueError(f"run {args.shift_run} was not trained on dataset {args.dataset!r}")
        _ds, pooled = run_features(sessions, args.shift_run, device=args.device, progress=not args.json)
    with session_factory().begin() as s:
        if args.run is not None:
            es = evaluation.freeze_validation(s, args.run, args.name, author=args.author)
            what, extra = f"validation images of run {args.run}", {}
        else:
            from engine.shortcuts import freeze_test_like

            es, shift = freeze_test_like(s, args.dataset, args.like_test, args.name, author=args.author,
                                         pooled=pooled)
            what, extra = "most test-like labelled training images", {"shift_auc": shift.auc}
            if shift.metadata_auc is not None:
                extra.update(metadata_auc=shift.metadata_auc, pooled_auc=shift.pooled_auc,
                             excluded=shift.excluded)
        images = len(evaluation.eval_set_image_ids(s, es.id))
    emit(args, {"eval_set": args.name, "images": images, "id": es.id, **extra},
          f"froze {images} {what} as evaluation set {args.name!r}")


def cmd_labels_export(args) -> None:
    from engine.atomic import write_csv

    out = Path(args.out)
    with session_factory()() as s:
        rows = labelling.label_history_rows(s, queries.get_dataset(s, args.dataset).id)
    write_csv(out, ["label_id", "file_name", "split", "label", "source", "author", "note", "created_at"],
              ([r.id, r.rel_path, r.split, r.label, r.source, r.author or "", r.note or "",
                r.created_at.isoformat()] for r in rows))
    emit(args, {"path": str(out), "rows": len(rows)}, f"wrote {len(rows)} label rows to {out}")


def add_parsers(sub, common) -> None:
    _import_parser(sub, common)
    _evalset_parser(sub, common)
    _labels_parser(sub, common)


def _import_parser(sub, common) -> None:
    c = sub.add_parser("import", parents=[common], help="import a Kaggle-layout folder")
    c.add_argument("data_dir")
    c.add_argument("--name", help="dataset name (default: the folder's name)")
    c.add_argument("--apply-label-changes", action="store_true",
                   help="record the labels edited in train.csv since the last import (and train.csv's label "
                        "of a replaced file) as label rows by import; without it they are only reported")
    c.add_argument("--apply-group-changes", action="store_true",
                   help="record the groups edited in train.csv since the last import, so later splits and "
                        "audits use them; without it they are only reported (splits keep the recorded ones)")
    c.set_defaults(func=cmd_import)


def _evalset_parser(sub, common) -> None:
    c = sub.add_parser("evalset", parents=[common],
                       help="freeze a run's validation images, or the most test-like ones, for comparisons")
    c.add_argument("--run", type=int, help="freeze this run's validation images")
    c.add_argument("--like-test", type=int, metavar="N",
                   help="freeze the N labelled training images most like the test set (`aivh shift`)")
    c.add_argument("--dataset", help="with --like-test")
    c.add_argument("--shift-run", type=int, metavar="RUN",
                   help="with --like-test: rank by file properties and this run's pooled features "
                        "(as `aivh shift --run RUN`: among the images it never trained on), not by file "
                        "properties alone")
    c.add_argument("--device", default="auto", help="with --shift-run: where the features are computed")
    c.add_argument("--name", required=True)
    c.add_argument("--author")
    c.set_defaults(func=cmd_evalset)


def _labels_parser(sub, common) -> None:
    c = sub.add_parser("labels", help="label history")
    lsub = c.add_subparsers(dest="labels_command", required=True)
    c = lsub.add_parser("export", parents=[common], help="every label row, oldest first, as CSV")
    c.add_argument("--dataset", required=True)
    c.add_argument("--out", required=True)
    c.set_defaults(func=cmd_labels_export)
