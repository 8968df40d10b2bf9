"""The process a launched run lives in: `python -m engine.worker --run-id N [--resume]`.

The dashboard starts it through engine.jobs.launch with start_new_session=True, so the run
outlives the page that started it. A probe run (config `probe`) is fitted by engine.probe;
any other run is trained by engine.jobs.execute.
"""
from __future__ import annotations

import argparse
import sys

from db import queries
from db.store import require_store, session_factory
from engine.jobs import execute
from engine.probe import execute_probe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.worker", description=__doc__)
    parser.add_argument("--run-id", type=int, required=True)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    try:
        require_store()  # a worker only uses a store: none there, one line and nothing created
        with session_factory()() as s:
            is_probe = bool(queries.get_run(s, args.run_id).config.get("probe"))
        if is_probe:
            run = execute_probe(args.run_id, progress=False)
        else:
            run = execute(args.run_id, resume=args.resume, progress=False)
    except Exception as e:  # noqa: BLE001 - the process entry point reports any failure
        print(f"aivh: error: {e}", file=sys.stderr)
        return 1
    return 0 if run.status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
