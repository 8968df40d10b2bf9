"""A training process killed with SIGKILL resumes from its last checkpoint and finishes
exactly as an uninterrupted run of the same seed."""
import json
import os
import signal
import subprocess
import sys
import time

from sqlalchemy import create_engine, text

from tests.conftest import ROOT, SAMPLE, aivh

TRAIN = ["train", "--dataset", "sample", "--epochs", "3", "--img-size", "32", "--batch-size", "16",
         "--limit", "64", "--workers", "0", "--patience", "9", "--json"]


def _epochs(db, run):
    with db.connect() as c:
        return c.execute(text("select epoch, train_loss, val_loss from epochs where run_id=:r order by epoch"),
                         {"r": run}).all()


def test_killed_run_resumes_to_the_same_result(workspace):
    aivh("import", str(SAMPLE), "--name", "sample", env_home=workspace)
    db = create_engine(f"sqlite:///{workspace / 'aivh.db'}")
    env = {**os.environ, "AIVH_HOME": str(workspace)}
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", *TRAIN], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not _epochs(db, 1) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(_epochs(db, 1))
    assert 1 <= done_before < 3
    with db.connect() as c:
        assert c.execute(text("select status from runs where id=1")).scalar() == "running"
    # the next look at the runs (CLI or dashboard) shows it failed: its pid is gone on this host
    listed = json.loads(aivh("runs", "--json", env_home=workspace).stdout.splitlines()[-1])
    assert listed[0]["status"] == "failed" and "stopped" in listed[0]["error"]

    resumed = json.loads(aivh("train", "--resume", "1", "--json", env_home=workspace).stdout.splitlines()[-1])
    assert resumed["status"] == "succeeded"
    killed = _epochs(db, 1)
    assert [e.epoch for e in killed] == [1, 2, 3]

    # the same config, never interrupted
    straight = json.loads(aivh(*TRAIN, env_home=workspace).stdout.splitlines()[-1])
    assert straight["run"] == 2
    for a, b in zip(killed, _epochs(db, 2)):
        assert abs(a.train_loss - b.train_loss) < 1e-4 and abs(a.val_loss - b.val_loss) < 1e-4, (a, b)
    assert abs(resumed["val_best_f1"] - straight["val_best_f1"]) < 1e-6

    again = aivh("train", "--resume", "1", env_home=workspace, check=False)
    assert again.returncode == 1 and "already succeeded" in again.stderr
