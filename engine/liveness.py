"""Runs whose owner died, and the heartbeat that tells a live one: reaping (reap_stale) and
the Heartbeat thread. Whether an owner lives, from the run's row alone, is engine/processes.py.

A run owned on another host is alive while its heartbeat is (a thread beats every HEARTBEAT_S,
whatever the trainer is doing).
"""
from __future__ import annotations

import logging
import socket
import threading

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db import runs as owners
from db.models import Run
from db.store import run_dir
from engine.processes import beat_age, host_of, last_line, now, owner_alive

HEARTBEAT_S = 5.0  # seconds between heartbeats while training

log = logging.getLogger("aivh.liveness")


def _exit_reason(run_id: int) -> str:
    """The last line the run's process wrote to process.txt (its error, usually)."""
    line = last_line(run_dir(run_id) / "process.txt")
    return f": {line}" if line else ""


def reap_stale(s: Session) -> list[int]:
    """Mark runs whose owning process is gone as failed, with the reason; returns their ids.

    "running" runs, and "queued" ones a process was started for (launch) that died before it
    took the run. A run on this host is judged by its process, on another host by its heartbeat.
    """
    reaped = []
    for run in s.scalars(select(Run).where(Run.status.in_(("running", "queued")))):
        if run.status == "queued" and not run.pid:
            continue  # waiting for `aivh train` or a launch: no process yet
        if owner_alive(run):
            continue
        age = beat_age(run)
        if run.status == "queued":
            error = f"process {run.pid} exited before the run started{_exit_reason(run.id)}"
        elif host_of(run) == socket.gethostname() or not run.pid:
            error = f"process {run.pid} stopped" + (
                f" (last heartbeat {age:.0f} s ago)" if age is not None else "")
        else:
            error = (f"process {run.pid} on {host_of(run)} stopped: no heartbeat for "
                     f"{age:.0f} s" if age is not None else f"process {run.pid} on {host_of(run)} stopped")
        if owners.set_if_owner(s, run.id, owners.owner_of(run), status="failed", finished_at=now(),
                               error=error):
            reaped.append(run.id)
    return reaped


class Heartbeat(threading.Thread):
    """Beats for the run every HEARTBEAT_S while the trainer builds, compiles, re-estimates
    BatchNorm or validates; notices when the run is no longer this process's."""

    def __init__(self, sessions: sessionmaker[Session], run_id: int, owner: owners.Owner):
        super().__init__(name=f"heartbeat-run-{run_id}", daemon=True)
        self.sessions, self.run_id, self.owner = sessions, run_id, owner
        self.halt = threading.Event()
        self.lost = False

    def run(self) -> None:
        while not self.halt.wait(HEARTBEAT_S):
            try:
                with self.sessions.begin() as s:
                    if not owners.set_if_owner(s, self.run_id, self.owner, heartbeat_at=now()):
                        self.lost = True
                        return
            except Exception as e:  # noqa: BLE001 - a busy or unreachable store: try again next beat
                log.warning("run %d: heartbeat not written (%s)", self.run_id, e)

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=HEARTBEAT_S + 30)
