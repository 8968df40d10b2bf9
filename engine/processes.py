"""Process identity and whether a run's owner lives, from the run's row alone: pure (no store
import, no session), so pages may use it (dashboard/ui.py). engine/liveness.py builds on it:
reaping runs whose owner died, and the heartbeat thread.

A run is owned by one process, recorded as (host, pid, process start time): the start time
tells a reused pid apart. On this host a run is alive exactly while that process is; a run
owned on another host is alive while its heartbeat is (engine.liveness.HEARTBEAT_S).
"""
from __future__ import annotations

import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from db.models import Run

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


def this_process() -> tuple[str, int, float | None]:
    pid = os.getpid()
    return socket.gethostname(), pid, process_started(pid)


def process_alive(pid: int | None, started: float | None = None) -> bool:
    """Whether process `pid` (of this host) runs (not a zombie) and, when `started` is known, is
    the one that started then: how a run's dead owner is told, and a sweep's dead worker (engine.sweep)."""
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


def host_of(run: Run) -> str | None:
    return run.host or (run.progress or {}).get("host")  # runs from before migration 0003


def beat_age(run: Run) -> float | None:
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
    if host_of(run) == socket.gethostname():
        return process_alive(run.pid, run.pid_started)
    age = beat_age(run)
    return age is not None and age <= STALE_S


def owner_text(run: Run) -> str:
    return f"pid {run.pid} on {host_of(run) or 'an unknown host'}"


def last_line(path: Path) -> str:
    """The last non-blank line a process wrote to its output file (its error, usually), at most
    500 characters; "" when there is none or no file."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:500] if lines else ""
