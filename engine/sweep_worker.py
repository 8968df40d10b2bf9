"""A sweep's worker process: `python -m engine.sweep_worker --sweep N`.

`aivh sweep --parallel K` and the Sweep page start K of them (engine.sweep.spawn_workers);
each pulls trials from the shared Optuna study until the sweep has its count.
"""
from __future__ import annotations

import argparse
import logging
import sys

from db.store import require_store
from engine.sweep import work


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.sweep_worker", description=__doc__)
    parser.add_argument("--sweep", type=int, required=True)
    parser.add_argument("--index", type=int, default=0, help="this worker's number (its sampler's seed)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    try:
        require_store()  # a worker only uses a store: none there, one line and nothing created
        work(args.sweep, progress=False, index=args.index)
    except Exception as e:  # noqa: BLE001 - the process entry point reports any failure
        print(f"aivh: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
