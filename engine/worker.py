"""The process a launched run lives in: `python -m engine.worker --run-id N [--resume]`.

The dashboard starts it through engine.jobs.launch with start_new_session=True, so the run
outlives the page that started it.
"""
from __future__ import annotations

import argparse
import sys

from engine.jobs import execute


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.worker", description=__doc__)
    parser.add_argument("--run-id", type=int, required=True)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    try:
        run = execute(args.run_id, resume=args.resume, progress=False)
    except Exception as e:  # noqa: BLE001 - the process entry point reports any failure
        print(f"aivh: error: {e}", file=sys.stderr)
        return 1
    return 0 if run.status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
