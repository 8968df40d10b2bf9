"""The `aivh` command. Every subcommand takes --json and then prints one JSON object last."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from db import queries
from db.store import home, session_factory
from engine.errors import UsageError, error_line

SAMPLE = Path(__file__).parent / "sample"


def _emit(args, payload: dict | list, text: str) -> None:
    if args.json:
        print(json.dumps(payload, default=str))
    else:
        print(text)


def cmd_import(args) -> None:
    from engine.ingest import import_dataset

    result = import_dataset(session_factory(), args.data_dir, args.name, progress=not args.json)
    for r in result.rejects[:3] if result.summary else result.rejects:  # the summary speaks for the rest
        print(f"rejected {r}", file=sys.stderr)
    for name in result.changed:
        print(f"changed since the last import, probed again: {name}", file=sys.stderr)
    for line in (result.duplicates_line(), result.summary):
        if line:
            print(line, file=sys.stderr)
    _emit(args, result.to_json(),
          f"dataset {result.dataset}: {result.train} train, {result.test} test images "
          f"({result.added} new, {len(result.rejects)} rejected)")


TRAIN_FLAGS = ("epochs", "img_size", "batch_size", "lr", "val_fraction", "seed", "device", "limit",
               "pretrained", "workers", "compile", "resize_mode", "patience", "decode")


def _given(args) -> dict:
    """The training flags given on the command line."""
    return {k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k, None) is not None}


def _train_config(args):
    from engine.config import TrainConfig

    cfg = TrainConfig.from_dict(_given(args))
    _check_config(cfg)
    return cfg


def cmd_train(args) -> None:
    from engine import distributed, jobs

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
    else:
        run = jobs.execute(run_id, resume=args.resume is not None, progress=not args.json)
    with sessions() as s:
        best = queries.best_epoch(s, run)
    payload = {"run": run_id, "status": run.status, "best_epoch": run.best_epoch,
               "val_f1": best.val_f1 if best else None,
               "val_best_f1": best.val_best_f1 if best else None,
               "best_threshold": run.best_threshold, "val_auc": best.val_auc if best else None,
               "checkpoint": run.checkpoint, "labels_as_of": run.labels_as_of,
               "like_run": run.like_run_id}
    _emit(args, payload, f"run {run_id} {run.status}: best epoch {run.best_epoch}, "
          f"val F1@0.5 {payload['val_f1']}, best F1 {payload['val_best_f1']} at "
          f"{payload['best_threshold']}, AUC {payload['val_auc']}\ncheckpoint {run.checkpoint}")


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
            run = jobs.create_like_run(s, args.like, _given(args), dataset)
            _check_config(TrainConfig.from_dict(run.config))
        elif args.dataset:
            run = jobs.create_run(s, queries.get_dataset(s, args.dataset), _train_config(args))
        else:
            raise UsageError("train needs --dataset NAME, --like RUN or --resume RUN")
        run_id = run.id
    print(f"run {run_id}: {home() / 'runs' / str(run_id)}"
          + (f" (config of run {args.like}, current labels)" if args.like else ""), file=sys.stderr)
    return run_id


def _check_config(cfg) -> None:
    """The check the Train page shares (TrainConfig.problems): refused before a run exists."""

    try:
        cfg.validate()
    except ValueError as e:
        raise UsageError(str(e)) from None


def cmd_predict(args) -> None:
    from engine.predict import predict_run

    result = predict_run(session_factory(), args.run, args.split, batch_size=args.batch_size,
                         device=args.device, workers=args.workers, progress=not args.json,
                         decode=args.decode)
    for msg in result.pop("skipped_files"):
        print(f"skipped {msg}", file=sys.stderr)
    made_by = f"epoch {result['epoch']} checkpoint" if result["epoch"] is not None else "checkpoint"
    _emit(args, result, f"run {args.run}: {result['images']} {args.split} predictions by its {made_by} "
          f"(sha1 {result['checkpoint_sha1'][:12]}) stored in {result['seconds']} s ({result['skipped']} skipped)")


def cmd_export(args) -> None:
    from engine.export import export_run, fmt_threshold

    result = export_run(session_factory(), args.run, Path(args.out), args.threshold,
                        allow_stale=args.allow_stale_predictions)
    for line in ([result["override"]] if result["override"] else []) + result["warnings"]:
        print(f"warning: {line}", file=sys.stderr)
    _emit(args, result, f"wrote {result['rows']} rows to {result['path']} (threshold "
          f"{fmt_threshold(result['threshold'])} [{result['threshold_source']}], {result['positive_rate']:.1%} AI)")


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
                         "audit": run.audit_id, "like_run": run.like_run_id, "status": run.status,
                         "epochs": run.config.get("epochs"), "img_size": run.config.get("img_size"),
                         "best_epoch": run.best_epoch, "val_f1": best.val_f1 if best else None,
                         "val_best_f1": best.val_best_f1 if best else None,
                         "val_auc": best.val_auc if best else None, "error": run.error})
    head = f"{'run':>4}  {'dataset':<16} {'status':<10} {'best':>4} {'F1@0.5':>7} {'bestF1':>7} {'AUC':>7}"
    lines = [head] + [
        f"{r['run']:>4}  {str(r['dataset'])[:16]:<16} {r['status']:<10} {r['best_epoch'] or '-'!s:>4} "
        f"{_fmt(r['val_f1'])} {_fmt(r['val_best_f1'])} {_fmt(r['val_auc'])}" for r in rows]
    _emit(args, rows, "\n".join(lines) if rows else "no runs yet")


def _fmt(x) -> str:
    return f"{x:7.4f}" if isinstance(x, float) else f"{'-':>7}"


def cmd_audit(args) -> None:
    from engine import audit as au

    sessions = session_factory()
    if args.list:
        with sessions() as s:
            rows = [{"audit": a.id, "dataset_id": a.dataset_id, "folds": a.folds, "status": a.status,
                     "flagged": a.flagged, "labels_as_of": a.labels_as_of, "error": a.error}
                    for a in queries.list_audits(s)]
        _emit(args, rows, "\n".join(f"audit {r['audit']}: {r['folds']} folds, {r['status']}, "
                                     f"{r['flagged']} flagged" for r in rows) or "no audits yet")
        return
    with sessions.begin() as s:
        if args.resume is not None:
            audit_id = queries.get_audit(s, args.resume).id
        elif args.dataset:
            audit_id = au.create_audit(s, queries.get_dataset(s, args.dataset), _train_config(args),
                                       args.folds).id
        else:
            raise UsageError("audit needs --dataset NAME (or --resume AUDIT, --list)")
    print(f"audit {audit_id}: {args.folds if args.resume is None else 'resuming'} fold runs",
          file=sys.stderr)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    audit = au.run_audit(sessions, audit_id, progress=not args.json)
    with sessions() as s:
        rows = queries.audit_rows(s, audit_id)
        out = au.write_audit_csv(s, audit_id, Path(args.out)) if args.out else None
        runs = [r.id for r in queries.audit_runs(s, audit_id)]
    payload = {"audit": audit_id, "status": audit.status, "folds": audit.folds, "runs": runs,
               "scored": len(rows), "flagged": audit.flagged, "csv": str(out) if out else None,
               "worst": [r.rel_path for r in rows[:10]]}
    _emit(args, payload, f"audit {audit_id} {audit.status}: {len(rows)} training images scored, "
          f"{audit.flagged} flagged as likely label errors" + (f"; wrote {out}" if out else ""))


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
    _emit(args, r, "\n".join(lines))


def cmd_evalset(args) -> None:
    with session_factory().begin() as s:
        es = queries.freeze_validation(s, args.run, args.name, author=args.author)
        images = len(queries.eval_set_image_ids(s, es.id))
    _emit(args, {"eval_set": args.name, "images": images, "id": es.id},
          f"froze {images} validation images of run {args.run} as evaluation set {args.name!r}")


def cmd_labels_export(args) -> None:
    from engine.atomic import write_csv

    out = Path(args.out)
    with session_factory()() as s:
        rows = queries.label_history_rows(s, queries.get_dataset(s, args.dataset).id)
    write_csv(out, ["label_id", "file_name", "split", "label", "source", "author", "note", "created_at"],
              ([r.id, r.rel_path, r.split, r.label, r.source, r.author or "", r.note or "",
                r.created_at.isoformat()] for r in rows))
    _emit(args, {"path": str(out), "rows": len(rows)}, f"wrote {len(rows)} label rows to {out}")


def cmd_saliency(args) -> None:
    from engine import saliency

    settings = saliency.Settings(args.method, steps=args.steps, baseline=args.baseline,
                                 samples=args.samples)
    t0 = time.perf_counter()
    att, _ = saliency.explain_run_image(session_factory(), args.run, args.image.strip(), settings)
    seconds = time.perf_counter() - t0
    out = saliency.render(att, Path(args.out), opacity=args.opacity)
    payload = {"run": args.run, "image": args.image, "method": args.method, "prob": round(att.prob, 6),
               "settings": dataclasses.asdict(settings), "delta": att.delta,
               "mass": saliency.mass_summary(att.map), "seconds": round(seconds, 3), "path": str(out)}
    _emit(args, payload, f"{args.image}: p(AI) = {att.prob:.4f}; {args.method} map written to {out} "
          f"(image | overlay | heatmap) in {seconds:.2f} s")


def cmd_bench(args) -> None:
    from engine.bench import run_bench, run_epoch

    data = Path(args.data).expanduser() if args.data else None
    if args.epoch_only and not args.epoch:
        raise UsageError("--epoch-only needs --epoch N")
    out = {} if args.epoch_only else run_bench(
        device=args.device, img_size=args.img_size, batch_size=args.batch_size, compile=args.compile,
        steps=args.steps, workers=args.workers, data_dir=data, progress=not args.json, decode=args.decode)
    if args.epoch:
        out |= run_epoch(args.epoch, device=args.device, img_size=args.img_size, batch_size=args.batch_size,
                         compile=args.compile, workers=args.workers, decode=args.decode,
                         data_dir=data and data.with_name(f"{data.name}-{args.epoch}"), progress=not args.json)
    parts = []
    if not args.epoch_only:
        parts.append(f"train {out['train_e2e_img_s']} / {out['train_model_img_s']} img/s (ratio {out['train_ratio']:.3f}); "
                     f"predict {out['predict_e2e_img_s']} / {out['predict_model_img_s']} img/s (ratio "
                     f"{out['predict_ratio']:.3f}); peak host memory {out['peak_host_mem_gb']} GB"
                     + (f", device {out['peak_device_mem_gb']} GB" if out["peak_device_mem_gb"] is not None else ""))
    if args.epoch:
        parts.append(f"one epoch over {out['epoch_images']:,} images: {out['epoch_seconds']} s "
                     f"({out['epoch_img_s']} training img/s)")
    _emit(args, out, "; ".join(parts))


def serve_command(host: str, port: int) -> list[str]:
    import dashboard

    app = Path(dashboard.__file__).parent / "app.py"
    return [sys.executable, "-m", "streamlit", "run", str(app), "--server.address", host,
            "--server.port", str(port), "--server.headless", "true",
            "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
            "--server.enableXsrfProtection", "true", "--server.enableCORS", "true",
            "--client.toolbarMode", "viewer"]


def cmd_serve(args) -> None:
    cmd = serve_command(args.host, args.port)
    print(f"dashboard on http://{args.host}:{args.port} (store: {home()})", file=sys.stderr)
    _become(cmd)


def _become(cmd: list[str]) -> None:
    """Replace this process with the server, so a signal to `aivh serve` reaches it."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(cmd[0], cmd)


def cmd_demo(args) -> None:
    from engine import jobs
    from engine.config import TrainConfig
    from engine.errors import ExportRefused
    from engine.export import export_run
    from engine.ingest import import_dataset
    from engine.predict import predict_run

    ws = Path(args.workspace).expanduser().resolve()
    made_here = ws.exists() and (ws / ".aivh-demo").exists()
    if ws.exists() and not made_here and any(ws.iterdir()):
        raise UsageError(f"{ws} exists and is not an aivh demo workspace; pick --workspace")
    say = (lambda m: print(m, file=sys.stderr))
    if made_here and not args.fresh:
        _reuse_demo(args, ws)
        return
    if made_here:
        shutil.rmtree(ws)  # --fresh, and only ever a folder this command made
    ws.mkdir(parents=True, exist_ok=True)
    (ws / ".aivh-demo").touch()
    _use_workspace(ws)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    sessions = session_factory()
    imported = import_dataset(sessions, SAMPLE, "cifake-sample", progress=not args.json)
    say(f"imported {imported.train} train / {imported.test} test images from the bundled sample")
    cfg = TrainConfig(epochs=args.epochs, img_size=64, batch_size=32, lr=2e-3, device="cpu",
                      workers=min(2, os.cpu_count() or 1), patience=args.epochs)
    with sessions.begin() as s:
        run_id = jobs.create_run(s, queries.get_dataset(s, "cifake-sample"), cfg).id
    say(f"training run {run_id}: {cfg.epochs} epochs at {cfg.img_size} px on the CPU")
    run = jobs.execute(run_id, progress=not args.json)
    pred = predict_run(sessions, run_id, "test", device="cpu", workers=cfg.workers,
                       progress=not args.json)
    try:
        export = export_run(sessions, run_id, ws / "submission.csv")["path"]
    except ExportRefused as e:  # e.g. a degenerate threshold: said, and the dashboard still opens
        export = None
        say(f"no submission written: {e} (`aivh export --run {run_id} --threshold T`, or the Export page)")
    payload = {"workspace": str(ws), "reused": False, "run": run_id, "status": run.status,
               "test_predictions": pred["images"], "submission": export}
    _emit(args, payload, f"demo workspace {ws}: run {run_id} {run.status}, "
          f"{pred['images']} test predictions, submission {export or 'not written'}")
    _serve_demo(args, ws)


def _use_workspace(ws: Path) -> None:
    os.environ["AIVH_HOME"] = str(ws)
    os.environ.pop("AIVH_DB_URL", None)


def _reuse_demo(args, ws: Path) -> None:
    """A second `aivh demo`: the first one's relabels and runs stay; the dashboard opens on them."""
    _use_workspace(ws)
    with session_factory()() as s:
        runs = [{"run": r.id, "status": r.status} for r in queries.list_runs(s)]
    what = ", ".join(f"run {r['run']} {r['status']}" for r in runs) or "no runs yet"
    print(f"reusing the demo workspace {ws} ({what}); `aivh demo --fresh` deletes it and starts afresh",
          file=sys.stderr)
    _emit(args, {"workspace": str(ws), "reused": True, "runs": runs}, f"demo workspace {ws}: {what}")
    _serve_demo(args, ws)


def _serve_demo(args, ws: Path) -> None:
    if not args.no_serve:
        print(f"dashboard on http://{args.host}:{args.port}  (AIVH_HOME={ws})", file=sys.stderr)
        _become(serve_command(args.host, args.port))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aivh", description="Review lab for AI-generated image detectors.")
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    c = sub.add_parser("import", parents=[common], help="import a Kaggle-layout folder")
    c.add_argument("data_dir")
    c.add_argument("--name", help="dataset name (default: the folder's name)")
    c.set_defaults(func=cmd_import)

    # training flags default to None: what is not given comes from TrainConfig or the --like run
    training = argparse.ArgumentParser(add_help=False)
    t = training.add_argument_group("training (defaults: TrainConfig's)")
    t.add_argument("--epochs", type=int, help="(12)")
    t.add_argument("--img-size", type=int, help="(300)")
    t.add_argument("--batch-size", type=int, help="(32)")
    t.add_argument("--lr", type=float, help="(1e-3)")
    t.add_argument("--val-fraction", type=float, help="(0.1)")
    t.add_argument("--seed", type=int, help="(0)")
    t.add_argument("--device", help="auto, cpu or cuda (auto)")
    t.add_argument("--limit", type=int, help="train on a stratified subset of N images")
    t.add_argument("--pretrained", help="PATH of a torchvision B3 state dict, or 'imagenet'")
    t.add_argument("--workers", type=int, help="decoding processes (half the cores up to 4 on the CPU; all cores "
                                               "but one, up to 16, with a GPU)")
    t.add_argument("--decode", choices=("auto", "workers", "device"),
                   help="JPEG decode: Pillow in the workers, or the device (nvJPEG on CUDA, augmentation on "
                        "the GPU); auto: workers for training, device for validation on CUDA")
    t.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    t.add_argument("--resize-mode", choices=("resize", "crop"), help="(resize)")
    t.add_argument("--patience", type=int, help="early-stopping patience in epochs (3)")

    c = sub.add_parser("train", parents=[common, training], help="train EfficientNet-B3")
    c.add_argument("--dataset")
    c.add_argument("--resume", type=int, metavar="RUN", help="continue a run that died")
    c.add_argument("--like", type=int, metavar="RUN",
                   help="copy RUN's config (flags given here override) and train on the current labels")
    c.add_argument("--nproc", type=int, default=1,
                   help="DistributedDataParallel processes (one per GPU; on the CPU, gloo shares the cores); "
                        "or launch `torchrun --nproc-per-node N $(which aivh) train ...` instead")
    c.set_defaults(func=cmd_train)

    c = sub.add_parser("audit", parents=[common, training],
                       help="k-fold out-of-fold probabilities + cleanlab: likely label errors")
    c.add_argument("--dataset")
    c.add_argument("--folds", type=int, default=5)
    c.add_argument("--out", help="also write file_name,given_label,prob,quality,flagged worst first")
    c.add_argument("--resume", type=int, metavar="AUDIT", help="finish an audit that died")
    c.add_argument("--list", action="store_true", help="list audits")
    c.set_defaults(func=cmd_audit)

    c = sub.add_parser("compare", parents=[common], help="two runs on the same evaluation images")
    c.add_argument("--runs", type=int, nargs=2, required=True, metavar=("RUN_A", "RUN_B"))
    c.add_argument("--eval-set", help="a frozen evaluation set instead of shared unchanged val images")
    c.set_defaults(func=cmd_compare)

    c = sub.add_parser("evalset", parents=[common], help="freeze a run's validation images for comparisons")
    c.add_argument("--run", type=int, required=True)
    c.add_argument("--name", required=True)
    c.add_argument("--author")
    c.set_defaults(func=cmd_evalset)

    c = sub.add_parser("labels", help="label history")
    lsub = c.add_subparsers(dest="labels_command", required=True)
    c = lsub.add_parser("export", parents=[common], help="every label row, oldest first, as CSV")
    c.add_argument("--dataset", required=True)
    c.add_argument("--out", required=True)
    c.set_defaults(func=cmd_labels_export)

    c = sub.add_parser("predict", parents=[common], help="store probabilities for a split")
    c.add_argument("--run", type=int, required=True)
    c.add_argument("--split", choices=("test", "val", "train", "all"), default="test")
    c.add_argument("--batch-size", type=int, default=64)
    c.add_argument("--device", default="auto")
    c.add_argument("--workers", type=int)
    c.add_argument("--decode", choices=("auto", "workers", "device"), default="auto",
                   help="where JPEGs are decoded: Pillow in the worker processes, or the model's device "
                        "(nvJPEG batch decode on CUDA); auto: device on CUDA")
    c.set_defaults(func=cmd_predict)

    c = sub.add_parser("export", parents=[common], help="write a Kaggle submission CSV")
    c.add_argument("--run", type=int, required=True)
    c.add_argument("--threshold", type=float,
                   help="default: the run's chosen, else best validation-F1 threshold (refused when degenerate)")
    c.add_argument("--out", default="submission.csv")
    c.add_argument("--allow-stale-predictions", action="store_true",
                   help="export even when the test predictions do not come from the run's best checkpoint "
                        "(recorded with the export)")
    c.set_defaults(func=cmd_export)

    from engine.choices import BASELINES, METHODS

    c = sub.add_parser("saliency", parents=[common], help="why the model called an image AI-generated")
    c.add_argument("--run", type=int, required=True)
    c.add_argument("--image", required=True, help="the image's name as in the CSV")
    c.add_argument("--method", choices=METHODS, required=True)
    c.add_argument("--out", required=True, help="PNG: image | overlay | heatmap")
    c.add_argument("--steps", type=int, default=32, help="integrated gradients: path steps")
    c.add_argument("--baseline", choices=BASELINES, default="mean", help="integrated gradients baseline")
    c.add_argument("--samples", type=int, default=16, help="smoothgrad: noisy copies")
    c.add_argument("--opacity", type=float, default=0.5, help="heatmap opacity over the image")
    c.set_defaults(func=cmd_saliency)

    c = sub.add_parser("bench", parents=[common], help="data path vs model-only speed, in one process")
    c.add_argument("--device", default="auto")
    c.add_argument("--img-size", type=int, default=300)
    c.add_argument("--batch-size", type=int, help="default: 128 on CUDA, 32 on the CPU")
    c.add_argument("--compile", action="store_true", help="torch.compile the model")
    c.add_argument("--steps", type=int, help="timed training batches per measurement (default: 30 CUDA, 6 CPU); prediction times 3x as many")
    c.add_argument("--workers", type=int, help="decoding processes (default: half the cores up to 4 on the "
                                               "CPU, all cores but one up to 16 with a GPU)")
    c.add_argument("--decode", choices=("auto", "workers", "device"), default="auto",
                   help="JPEG decode: Pillow in the workers, or the device (nvJPEG on CUDA); auto: device "
                        "for prediction on CUDA, workers for training")
    c.add_argument("--epoch", type=int, metavar="N",
                   help="also time one full training epoch (trainer, validation included) over N generated "
                        "Kaggle-sized images, e.g. 80000")
    c.add_argument("--epoch-only", action="store_true", help="with --epoch: time the epoch alone, no bench phases")
    c.add_argument("--data", help="where the generated Kaggle-sized JPEGs are cached "
                                  "(default ~/.cache/aivh/bench-data)")
    c.set_defaults(func=cmd_bench)

    c = sub.add_parser("runs", parents=[common], help="list runs")
    c.set_defaults(func=cmd_runs)

    for name, func, helptext in (("serve", cmd_serve, "start the dashboard"),
                                 ("demo", cmd_demo, "bundled sample -> CPU run -> dashboard")):
        c = sub.add_parser(name, parents=[common], help=helptext)
        c.add_argument("--host", default="127.0.0.1", help="bind address (default: local only)")
        c.add_argument("--port", type=int, default=8501)
        c.set_defaults(func=func)
    c.add_argument("--workspace", default="aivh-demo",
                   help="workspace folder (made here; a second demo reuses it)")
    c.add_argument("--fresh", action="store_true",
                   help="delete the previous demo workspace (its relabels and runs) and start afresh")
    c.add_argument("--epochs", type=int, default=3)
    c.add_argument("--no-serve", action="store_true", help="stop before starting the dashboard")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # CsvError, ExportRefused and WeightsError are ValueErrors: no heavy imports needed here
    known = (UsageError, LookupError, FileNotFoundError, ValueError, PermissionError,
             RuntimeError)
    try:
        args.func(args)
    except known as e:
        print(f"aivh: error: {error_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("aivh: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
