"""`aivh sweep`: hyperparameter sweeps (engine.sweep): start, resume, list."""
from __future__ import annotations

import logging
import sys
import time

from db.store import session_factory
from engine.cli.shared import emit, given
from engine.errors import UsageError


def _text(r: dict) -> str:
    best = (f"best run {r['best_run']} ({r['metric']} {r['best_value']:.4f}) with {r['best_params']}"
            if r["best_run"] is not None else "no completed trial yet")
    return (f"sweep {r['sweep']} on {r['dataset']}: {r['completed']} completed, {r['pruned']} pruned, "
            f"{r['failed']} failed of {r['trials']}; {best}; epochs run {r['epochs_run']} of "
            f"{r['epochs_requested']} requested")


def _run_workers(sweep_id: int, parallel: int, progress: bool) -> None:
    """The sweep's trials: in this process (--parallel 1) or in K worker processes, with a
    bar over the trials unless --json."""
    from tqdm import tqdm

    from engine import sweep, sweep_report

    first = sweep_report.summary(sweep_id)  # the store opened (and migrated) before the workers start
    bar = tqdm(total=first["trials"], desc=f"sweep {sweep_id}", unit="trial", disable=not progress)

    def show(r: dict) -> None:
        bar.n = min(r["completed"] + r["pruned"], r["trials"])
        bar.set_postfix(pruned=r["pruned"], failed=r["failed"], best=r["best_value"], refresh=False)
        bar.refresh()

    show(first)
    if parallel == 1:
        sweep.work(sweep_id, progress=False, on_trial=lambda study, trial: show(sweep_report.summary(sweep_id)))
    else:
        procs = sweep.spawn_workers(sweep_id, parallel, detached=False)
        try:
            while any(p.poll() is None for p in procs):
                time.sleep(2)
                show(sweep_report.summary(sweep_id))
        except KeyboardInterrupt:
            for p in procs:
                p.terminate()
            raise
        for n, p in enumerate(procs):
            if p.returncode:
                print(f"aivh: worker {n} exited with {p.returncode} (its log: "
                      f"sweeps/{sweep_id}/worker-{n}.txt in the workspace)", file=sys.stderr)
    bar.close()


def cmd_sweep(args) -> None:
    from engine import sweep, sweep_report

    if args.parallel < 1:
        raise UsageError(f"--parallel must be at least 1 (got {args.parallel})")
    if args.list:
        rows = sweep_report.list_sweeps(reap=True)
        emit(args, rows, "\n".join(_text(r) for r in rows) or "no sweeps yet")
        return
    from engine.device import require

    require(getattr(args, "device", None))  # a device this machine lacks: one line, no sweep recorded
    sessions = session_factory()
    if args.resume is not None:
        if args.dataset or args.trials is not None or args.space or given(args):
            raise UsageError("--resume continues a sweep as it was made: leave out --dataset, --trials, "
                             "--space and training flags")
        sweep_id = args.resume
        sweep_report.summary(sweep_id, sessions)  # LookupError when there is no such sweep
    elif args.dataset:
        if args.trials is None:
            raise UsageError("sweep needs --trials N")
        sweep_id = sweep.create_sweep(sessions, args.dataset, args.trials, space=args.space, metric=args.metric,
                                      fixed=given(args), pruner=args.pruner, prune_startup=args.prune_startup,
                                      prune_warmup=args.prune_warmup, timeout=args.timeout,
                                      seed=args.seed or 0)
    else:
        raise UsageError("sweep needs --dataset NAME and --trials N (or --resume SWEEP, --list)")
    print(f"sweep {sweep_id}: {'resuming' if args.resume is not None else 'started'}", file=sys.stderr)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    t0 = time.perf_counter()
    _run_workers(sweep_id, args.parallel, progress=not args.json)
    r = sweep_report.summary(sweep_id, sessions)
    r["seconds"] = round(time.perf_counter() - t0, 1)
    emit(args, r, _text(r))


def add_parsers(sub, common, training) -> None:
    from engine.choices import PRUNERS
    from engine.choices import SWEEP_METRICS as METRICS

    c = sub.add_parser("sweep", parents=[common, training],
                       help="hyperparameter sweep (Optuna): trials are runs, hopeless ones pruned")
    c.add_argument("--dataset")
    c.add_argument("--trials", type=int, help="completed and pruned trials to reach")
    c.add_argument("--space", help="NAME=LOW:HIGH[:log] or NAME=A|B|C, comma-separated, e.g. "
                                   "'lr=1e-4:3e-3:log,img_size=64|96|128' (default: lr, weight decay, image size, "
                                   "batch size, resize mode, augmentation; pretrained and freeze epochs when the "
                                   "architecture has packaged weights); a training flag given is fixed instead")
    c.add_argument("--metric", default="val_best_f1", choices=METRICS, help="maximised (val_best_f1)")
    c.add_argument("--timeout", type=float, help="seconds after which a worker starts no new trial")
    c.add_argument("--parallel", type=int, default=1, help="worker processes pulling trials (1)")
    c.add_argument("--pruner", default="median", choices=PRUNERS, help="(median)")
    c.add_argument("--prune-startup", type=int, default=2, help="trials finished before the median pruner prunes (2)")
    c.add_argument("--prune-warmup", type=int, default=1,
                   help="epochs a trial trains before it can be pruned (1); halving's first rung")
    c.add_argument("--resume", type=int, metavar="SWEEP", help="continue a sweep whose processes died")
    c.add_argument("--list", action="store_true", help="list sweeps")
    c.set_defaults(func=cmd_sweep)
