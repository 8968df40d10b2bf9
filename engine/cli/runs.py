"""`aivh train`, `aivh audit`, `aivh runs`, `aivh compare`: runs made, listed and compared."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from db import evaluation, queries
from db.store import home, session_factory
from engine.choices import GROUPINGS, RESIZE_MODES
from engine.cli.shared import emit, given, train_config, weights_checked
from engine.errors import UsageError


def cmd_train(args) -> None:
    from engine import distributed, jobs

    require_device(args.device)  # before anything is recorded: one line, no run
    sessions = session_factory()
    launched = distributed.torchrun_rank()  # (rank, world) under torchrun, else None
    if launched is not None and args.nproc > 1:
        raise UsageError("--nproc starts its own processes; under torchrun, leave it out")
    if launched is None:
        run_id = _train_run_id(args, sessions)
    else:
        run_id = distributed.join_torchrun(*launched, lambda: _train_run_id(args, sessions))
        if launched[0] != 0:  # the other ranks only train; rank 0 reports
            distributed.execute_torchrun_rank(run_id, resume=args.resume is not None)
            return
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if launched is not None:
        run = distributed.execute_torchrun_rank(run_id, resume=args.resume is not None, progress=not args.json)
    elif args.nproc > 1:
        run = distributed.execute_distributed(run_id, args.nproc, resume=args.resume is not None,
                                       progress=not args.json)
    elif _is_probe(sessions, run_id):  # `--like` a probe run: the probe refitted on the current labels
        from engine.probe import execute_probe

        run = execute_probe(run_id, sessions=sessions, progress=not args.json)
    else:
        run = jobs.execute(run_id, resume=args.resume is not None, progress=not args.json)
    _report_run(args, sessions, run)


def require_device(name: str | None) -> None:
    """--device checked before anything is recorded (ValueError: one line, no run)."""
    from engine.device import require

    require(name)


def _is_probe(sessions, run_id: int) -> bool:
    with sessions() as s:
        return bool(queries.get_run(s, run_id).config.get("probe"))


def _report_run(args, sessions, run, **extra) -> None:
    """What `aivh train` and `aivh probe` print: the run first, its best epoch's metrics."""
    with sessions() as s:
        best = queries.best_epoch(s, run)
    payload = {"run": run.id, "status": run.status, "best_epoch": run.best_epoch,
               "val_f1": best.val_f1 if best else None,
               "val_best_f1": best.val_best_f1 if best else None,
               "best_threshold": run.best_threshold, "val_auc": best.val_auc if best else None,
               "checkpoint": run.checkpoint, "labels_as_of": run.labels_as_of,
               "like_run": run.like_run_id, "arch": run.config.get("arch", "efficientnet_b3"),
               "weights": run.config.get("weights_source"), **extra}
    emit(args, payload, f"run {run.id} {run.status}: best epoch {run.best_epoch}, "
         f"val F1@0.5 {payload['val_f1']}, best F1 {payload['val_best_f1']} at "
         f"{payload['best_threshold']}, AUC {payload['val_auc']}\ncheckpoint {run.checkpoint}")


PROBE_FLAGS = ("arch", "pretrained", "img_size", "device", "seed", "val_fraction", "limit", "batch_size",
               "workers", "resize_mode", "group")


def cmd_probe(args) -> None:
    import time

    from engine.config import PROBE_DEFAULTS, TrainConfig
    from engine.probe import create_probe, execute_probe

    require_device(args.device)
    sessions = session_factory()
    cfg = weights_checked(TrainConfig.from_dict({**PROBE_DEFAULTS, **given(args, PROBE_FLAGS), "probe": True,
                                                 "epochs": 1}).validate())
    with sessions.begin() as s:
        run_id = create_probe(s, queries.get_dataset(s, args.dataset), cfg).id
    print(f"probe run {run_id}: {cfg.arch} ({cfg.pretrained or 'random weights'}) at {cfg.img_size} px, "
          f"{home() / 'runs' / str(run_id)}", file=sys.stderr)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    t0 = time.perf_counter()
    run = execute_probe(run_id, sessions=sessions, progress=not args.json)
    progress = run.progress or {}
    _report_run(args, sessions, run, seconds=round(time.perf_counter() - t0, 2),
                features_computed=progress.get("features_computed"),
                features_cached=progress.get("features_cached"))


def _train_run_id(args, sessions) -> int:
    """The run `aivh train` works on: the one to resume, or a new queued one."""
    from engine import jobs
    from engine.config import TrainConfig

    if args.resume is not None:
        with sessions.begin() as s:
            jobs.check_resumable(s, args.resume)
        return args.resume
    with sessions.begin() as s:
        if args.like is not None:
            dataset = queries.get_dataset(s, args.dataset) if args.dataset else None
            run = jobs.create_like_run(s, args.like, given(args), dataset)
            weights_checked(TrainConfig.from_dict(run.config).validate())  # else nothing is recorded
        elif args.dataset:
            run = jobs.create_run(s, queries.get_dataset(s, args.dataset), train_config(args))
        else:
            raise UsageError("train needs --dataset NAME, --like RUN or --resume RUN")
        run_id = run.id
    print(f"run {run_id}: {home() / 'runs' / str(run_id)}"
          + (f" (config of run {args.like}, current labels)" if args.like else ""), file=sys.stderr)
    return run_id


def cmd_audit(args) -> None:
    from engine import audit as au

    require_device(args.device)
    sessions = session_factory()
    if args.list:
        with sessions() as s:
            rows = [{"audit": a.id, "dataset_id": a.dataset_id, "folds": a.folds, "status": a.status,
                     "flagged": a.flagged, "labels_as_of": a.labels_as_of, "error": a.error}
                    for a in evaluation.list_audits(s)]
        emit(args, rows, "\n".join(f"audit {r['audit']}: {r['folds']} folds, {r['status']}, "
                                     f"{r['flagged']} flagged" for r in rows) or "no audits yet")
        return
    with sessions.begin() as s:
        if args.resume is not None:
            audit_id = evaluation.get_audit(s, args.resume).id
        elif args.dataset:
            cfg = train_config(args, probe_defaults=args.probe)
            audit_id = au.create_audit(s, queries.get_dataset(s, args.dataset), cfg, args.folds).id
        else:
            raise UsageError("audit needs --dataset NAME (or --resume AUDIT, --list)")
    print(f"audit {audit_id}: {args.folds if args.resume is None else 'resuming'} fold runs",
          file=sys.stderr)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    audit = au.run_audit(sessions, audit_id, progress=not args.json)
    with sessions() as s:
        rows = evaluation.audit_rows(s, audit_id)
        out = au.write_audit_csv(s, audit_id, Path(args.out)) if args.out else None
        runs = [r.id for r in evaluation.audit_runs(s, audit_id)]
    payload = {"audit": audit_id, "status": audit.status, "folds": audit.folds, "runs": runs,
               "scored": len(rows), "flagged": audit.flagged, "csv": str(out) if out else None,
               "worst": [r.rel_path for r in rows[:10]]}
    emit(args, payload, f"audit {audit_id} {audit.status}: {len(rows)} training images scored, "
          f"{audit.flagged} flagged as likely label errors" + (f"; wrote {out}" if out else ""))


def cmd_runs(args) -> None:
    from engine.liveness import reap_stale

    sessions = session_factory()
    with sessions.begin() as s:
        reap_stale(s)
        names = {d.id: d.name for d in queries.list_datasets(s)}
        rows = []
        for run in queries.list_runs(s):
            best = queries.best_epoch(s, run)
            rows.append({"run": run.id, "dataset": names.get(run.dataset_id), "kind": run.kind,
                         "audit": run.audit_id, "sweep": run.config.get("sweep"),
                         "like_run": run.like_run_id, "status": run.status,
                         "epochs": run.config.get("epochs"), "img_size": run.config.get("img_size"),
                         "best_epoch": run.best_epoch, "val_f1": best.val_f1 if best else None,
                         "val_best_f1": best.val_best_f1 if best else None,
                         "val_auc": best.val_auc if best else None, "error": run.error})
    head = f"{'run':>4}  {'dataset':<16} {'status':<10} {'best':>4} {'F1@0.5':>7} {'bestF1':>7} {'AUC':>7}"
    lines = [head] + [
        f"{r['run']:>4}  {str(r['dataset'])[:16]:<16} {r['status']:<10} {r['best_epoch'] or '-'!s:>4} "
        f"{_fmt(r['val_f1'])} {_fmt(r['val_best_f1'])} {_fmt(r['val_auc'])}" for r in rows]
    emit(args, rows, "\n".join(lines) if rows else "no runs yet")


def _fmt(x) -> str:
    return f"{x:7.4f}" if isinstance(x, float) else f"{'-':>7}"


def cmd_compare(args) -> None:
    from engine.compare import compare_runs

    with session_factory()() as s:
        r = compare_runs(s, args.runs[0], args.runs[1], eval_set=args.eval_set)
    lines = [(f"runs {r['run_a']} vs {r['run_b']}: {r['labels_changed']} labels changed between them; "
             f"{r['images']} evaluation images ({r['basis']}; left out: {r['excluded_label_changed']} "
             f"relabelled, {r['excluded_trained_on']} trained on, {r['excluded_unpredicted']} unpredicted)")]
    for key in ("a", "b"):
        m = r[key]
        lines.append(f"  run {r['run_' + key]}: F1@0.5 {m['f1_at_0.5']:.4f}  F1@{m['run_threshold']:.3f} "
                     f"{m['f1_at_run_threshold']:.4f}  best F1 {m['best_f1']:.4f}  AUC {m['auc']:.4f}")
    emit(args, r, "\n".join(lines))


def add_parsers(sub, common, training) -> None:
    _train_parser(sub, common, training)
    _audit_parser(sub, common, training)
    _compare_parser(sub, common)
    _probe_parser(sub, common)
    _runs_parser(sub, common)


def _train_parser(sub, common, training) -> None:
    c = sub.add_parser("train", parents=[common, training], help="train a detector (EfficientNet-B3 by default; --arch for any timm model)")
    c.add_argument("--dataset")
    c.add_argument("--resume", type=int, metavar="RUN", help="continue a run that died")
    c.add_argument("--like", type=int, metavar="RUN",
                   help="copy RUN's config (flags given here override) and train on the current labels")
    c.add_argument("--nproc", type=int, default=1,
                   help="DistributedDataParallel processes (one per GPU; on the CPU, gloo shares the cores); "
                        "or launch `torchrun --nproc-per-node N $(which aivh) train ...` instead")
    c.set_defaults(func=cmd_train)


def _audit_parser(sub, common, training) -> None:
    c = sub.add_parser("audit", parents=[common, training],
                       help="k-fold out-of-fold probabilities + cleanlab: likely label errors")
    c.add_argument("--dataset")
    c.add_argument("--folds", type=int, default=5)
    c.add_argument("--out", help="also write file_name,given_label,prob,quality,flagged worst first")
    c.add_argument("--resume", type=int, metavar="AUDIT", help="finish an audit that died")
    c.add_argument("--list", action="store_true", help="list audits")
    c.add_argument("--probe", action="store_true",
                   help="folds as linear probes on a frozen pretrained backbone's cached features (seconds, "
                        "not k trainings); --arch defaults to tf_efficientnet_lite0, --pretrained to imagenet")
    c.set_defaults(func=cmd_audit)


def _compare_parser(sub, common) -> None:
    c = sub.add_parser("compare", parents=[common], help="two runs on the same evaluation images")
    c.add_argument("--runs", type=int, nargs=2, required=True, metavar=("RUN_A", "RUN_B"))
    c.add_argument("--eval-set", help="a frozen evaluation set instead of shared unchanged val images")
    c.set_defaults(func=cmd_compare)


def _probe_parser(sub, common) -> None:
    c = sub.add_parser("probe", parents=[common],
                       help="a linear probe on a frozen pretrained backbone: a baseline run in seconds")
    c.add_argument("--dataset", required=True)
    c.add_argument("--arch", help="(tf_efficientnet_lite0)")
    c.add_argument("--pretrained", help="imagenet (default) or PATH of backbone weights")
    c.add_argument("--img-size", type=int, help="(the architecture's native size)")
    c.add_argument("--device", help="auto, cpu or cuda (auto)")
    c.add_argument("--seed", type=int, help="seed of the split and of the fitting (0)")
    c.add_argument("--val-fraction", type=float, help="share of the training images held out (0.1)")
    c.add_argument("--limit", type=int, help="a stratified subset of N training images")
    c.add_argument("--batch-size", type=int, help="feature extraction batch (64)")
    c.add_argument("--workers", type=int, help="decoding processes (half the cores up to 4 on the CPU)")
    c.add_argument("--resize-mode", choices=RESIZE_MODES)
    c.add_argument("--group", choices=GROUPINGS, help="what the split keeps together (copies)")
    c.set_defaults(func=cmd_probe)


def _runs_parser(sub, common) -> None:
    c = sub.add_parser("runs", parents=[common], help="list runs")
    c.set_defaults(func=cmd_runs)
