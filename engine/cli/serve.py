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
    emit(args, payload, f"demo workspace {ws}: run {run_id} {run.status}, "
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
    emit(args, {"workspace": str(ws), "reused": True, "runs": runs}, f"demo workspace {ws}: {what}")
    _serve_demo(args, ws)


def _serve_demo(args, ws: Path) -> None:
    if not args.no_serve:
        print(f"dashboard on http://{args.host}:{args.port}  (AIVH_HOME={ws})", file=sys.stderr)
        _become(serve_command(args.host, args.port))


def add_parsers(sub, common) -> None:
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
