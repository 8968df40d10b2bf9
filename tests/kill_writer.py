"""Writes a file over and over through aivh's atomic writers, for the kill -9 test.
Usage: python -m tests.kill_writer checkpoint|export PATH
       python -m tests.kill_writer epoch-end POINT RUN_ID: trains the run (AIVH_HOME's store) and
       kills itself with SIGKILL at POINT of epoch 2's end (see tests/test_trust_runs.py)"""
from __future__ import annotations

import sys
from pathlib import Path

import torch


def kill_at_epoch_end(point: str, run_id: int) -> None:
    import os
    import signal

    from engine import checkpoints, jobs, recording

    real_save, real_rename, real_store = checkpoints.save_atomic, checkpoints._rename, recording.store_val_predictions

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def save(obj, path):
        if obj.get("epoch") == 2 and point == f"writing {Path(path).name}":
            die()
        real_save(obj, path)

    def store(s, rid, ids, probs, **kw):
        real_store(s, rid, ids, probs, **kw)
        if kw.get("epoch") == 2 and point == "store":
            s.flush()
            die()  # the epoch's rows written, not committed

    def rename(src, dst):
        if point == f"renaming {dst.name}" and torch.load(src, weights_only=True)["epoch"] == 2:
            die()
        real_rename(src, dst)

    checkpoints.save_atomic, checkpoints._rename, recording.store_val_predictions = save, rename, store
    jobs.execute(run_id, progress=False)


def main() -> int:
    if sys.argv[1] == "epoch-end":
        kill_at_epoch_end(sys.argv[2], int(sys.argv[3]))
        return 0
    kind, path = sys.argv[1], Path(sys.argv[2])
    n = 0
    while True:  # until killed
        n += 1
        if kind == "checkpoint":
            from engine.checkpoints import save_atomic

            save_atomic({"model": {"w": torch.full((40_000_000,), float(n))}, "epoch": n}, path)
        else:
            from engine.export import write_submission

            write_submission([(f"test_data_v2/{i:032x}.jpg", (i + n) % 2) for i in range(1_500_000)], path)


if __name__ == "__main__":
    sys.exit(main())
