"""kill -9 in the middle of writing a checkpoint or an export leaves the previous file whole."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine.checkpoints import save_atomic
from engine.export import write_submission
from tests.conftest import ROOT


def _kill_mid_write(kind: str, path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "tests.kill_writer", kind, str(path)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:  # a temporary file with bytes in it: mid-write
            if any(p.stat().st_size > 0 for p in path.parent.glob(f".{path.name}.*.tmp*")):
                break
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.002)
        else:
            pytest.fail("the writer never started writing")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def test_kill_during_checkpoint_write_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_atomic({"model": {"w": torch.zeros(3)}, "epoch": 0}, path)
    _kill_mid_write("checkpoint", path)
    state = torch.load(path, weights_only=True)
    n = state["epoch"]  # the old one or a whole new one, never a torn file
    assert state["model"]["w"].numel() in (3, 40_000_000)
    assert bool((state["model"]["w"] == float(n)).all())


def test_kill_during_export_keeps_the_previous_submission(tmp_path):
    path = tmp_path / "submission.csv"
    write_submission([("test_data_v2/a.jpg", 1), ("test_data_v2/b.jpg", 0)], path)
    before = path.read_text()
    _kill_mid_write("export", path)
    text = path.read_text()
    lines = text.splitlines()
    assert text == before or (len(lines) == 1_500_001 and text.endswith("\n")), len(lines)
    assert lines[0] == "id,label"
