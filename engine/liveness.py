"""Is a run's owner alive? Processes (host, pid, start time), heartbeats, and reaping runs whose owner died.

A run is owned by one process, recorded as (host, pid, process start time): the start time
tells a reused pid apart. On this host a run is alive exactly while that process is; a run
owned on another host is alive while its heartbeat is (a thread beats every HEARTBEAT_S,
whatever the trainer is doing).
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db import runs as owners
from db.models import Run
from db.store import run_dir

HEARTBEAT_S = 5.0  # seconds between heartbeats while training

log = logging.getLogger("aivh.liveness")


STALE_S = 60.0  # a run owned on another host and silent this long is dead


def now() -> datetime:
    return datetime.now(UTC)


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise OSError("no btime in /proc/stat")


def process_started(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch, to 1/100 s), from /proc; None when
    it does not exist or there is no /proc. With the pid it names one process: a pid reused by
    a later process has another start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(") ", 1)[1].split()[19])  # field 22: starttime, in clock ticks
        return round(_boot_time() + ticks / os.sysconf("SC_CLK_TCK"), 2)
    except (OSError, ValueError, IndexError):
        return None


def this_process() -> owners.Owner:
    pid = os.getpid()
    return socket.gethostname(), pid, process_started(pid)


def _alive(pid: int | None, started: float | None = None) -> bool:
    """Process `pid` runs (not a zombie) and, when `started` is known, is the one that started then."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:  # a finished child of a long-lived parent (the dashboard) lingers as a zombie
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] == "Z":
            return False
    except OSError:
        return True  # no /proc: the pid is all there is to go on
    if started is not None:
        now_started = process_started(pid)
        return now_started is not None and abs(now_started - started) < 0.5
    return True


def process_alive(pid: int | None, started: float | None = None) -> bool:
    """Whether process `pid` (of this host) runs and, when `started` is known, is the one that
    started then: how a sweep's dead worker is told (engine.sweep), as a run's dead owner is."""
    return _alive(pid, started)


def _host(run: Run) -> str | None:
    return run.host or (run.progress or {}).get("host")  # runs from before migration 0003


def _beat_age(run: Run) -> float | None:
    beat = run.heartbeat_at
    if beat is None:
        return None
    if beat.tzinfo is None:
        beat = beat.replace(tzinfo=UTC)  # SQLite returns naive datetimes
    return (now() - beat).total_seconds()


def owner_alive(run: Run) -> bool:
    """Whether the process that owns the run lives: by the process itself on this host, by its
    heartbeat (STALE_S) elsewhere."""
    if not run.pid:
        return False
    if _host(run) == socket.gethostname():
        return _alive(run.pid, run.pid_started)
    age = _beat_age(run)
    return age is not None and age <= STALE_S


def owner_text(run: Run) -> str:
    return f"pid {run.pid} on {_host(run) or 'an unknown host'}"


def _exit_reason(run_id: int) -> str:
    """The last line the run's process wrote to process.txt (its error, usually)."""
    path = run_dir(run_id) / "process.txt"
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return f": {lines[-1][:500]}" if lines else ""


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
        age = _beat_age(run)
        if run.status == "queued":
            error = f"process {run.pid} exited before the run started{_exit_reason(run.id)}"
        elif _host(run) == socket.gethostname() or not run.pid:
            error = f"process {run.pid} stopped" + (
                f" (last heartbeat {age:.0f} s ago)" if age is not None else "")
        else:
            error = (f"process {run.pid} on {_host(run)} stopped: no heartbeat for "
                     f"{age:.0f} s" if age is not None else f"process {run.pid} on {_host(run)} stopped")
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
