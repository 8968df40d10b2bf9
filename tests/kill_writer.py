"""Writes a file over and over through aivh's atomic writers, for the kill -9 test.
Usage: python -m tests.kill_writer checkpoint|export PATH"""
from __future__ import annotations

import sys
from pathlib import Path

import torch


def main() -> int:
    kind, path = sys.argv[1], Path(sys.argv[2])
    n = 0
    while True:  # until killed
        n += 1
        if kind == "checkpoint":
            from engine.train import save_atomic

            save_atomic({"model": {"w": torch.full((40_000_000,), float(n))}, "epoch": n}, path)
        else:
            from engine.export import write_submission

            write_submission([(f"test_data_v2/{i:032x}.jpg", (i + n) % 2) for i in range(1_500_000)], path)


if __name__ == "__main__":
    sys.exit(main())
