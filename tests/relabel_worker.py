"""One reviewer process for the concurrency test: relabels images one short transaction each,
as the Review page does. Usage: python -m tests.relabel_worker AUTHOR START_AT IMAGE_ID..."""
from __future__ import annotations

import sys
import time

from db import labelling
from db.store import session_factory


def main() -> int:
    author, start_at, ids = sys.argv[1], float(sys.argv[2]), [int(i) for i in sys.argv[3:]]
    sessions = session_factory()
    while time.time() < start_at:  # every worker starts writing at the same moment
        time.sleep(0.001)
    for n, image_id in enumerate(ids):
        with sessions.begin() as s:
            labelling.relabel(s, image_id, n % 2, author=author, note=f"{author} #{n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
