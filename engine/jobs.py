"""The one place that ties a run row to a training process.

`python -m engine.jobs --run-id N` runs a queued run (the dashboard launches it with
`start_new_session=True`); `aivh train` calls `execute` in-process.

A run is owned by one process, recorded as (host, pid, process start time): the start time
tells a reused pid apart. On this host a run is alive exactly while that process is; a run
owned on another host is alive while its heartbeat is (a thread beats every HEARTBEAT_S,
whatever the trainer is doing). Only the owner writes the run's progress, epochs and end.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db import runs as owners
from db.models import Dataset, Epoch, Prediction, Run
from db.store import run_dir, session_factory
from engine.train import (
    Callbacks,
    Cancelled,
    EpochResult,
    TrainConfig,
    TrainData,
    _dist,
    file_sha1,
    recover_checkpoints,
    threshold_note,
    train,
    validate_config,
)

log = logging.getLogger("aivh.jobs")
HEARTBEAT_S = 5.0  # seconds between heartbeats while training
STALE_S = 60.0  # a run owned on another host and silent this long is dead


class LostRun(Exception):
    """This process no longer owns the run (another took it over): it stops without writing."""


def now() -> datetime:
    return datetime.now(UTC)


def split_images(keys: dict[int, str], strata: dict[int, int], *, val_fraction: float,
                 seed: int, limit: int | None = None,
                 content: dict[int, str | None] | None = None) -> tuple[list[int], list[int]]:
    """(train ids, val ids): a pure function of stable keys, the seed and the import labels.

    Images with the same content hash (`content`: id -> sha1 of the file's bytes) form one
    group that lands whole on one side: a copy under another name never trains while its twin
    validates. An image without a hash is a group by itself. Each class (a group's class: the
    most common import label among its copies, the lower on a tie) is ordered by the smallest
    sha1(seed:key) of its members; groups are taken in that order until `val_fraction` of the
    class's images are validation. Import labels never change, so a relabel never moves an
    image between splits. Without duplicates this is exactly the per-image split.
    """
    def rank(i: int) -> str:
        return hashlib.sha1(f"{seed}:{keys[i]}".encode()).hexdigest()

    content = content or {}
    by_content: dict[str, list[int]] = {}
    groups: list[list[int]] = []
    for i in sorted(keys):
        digest = content.get(i)
        if digest is None:
            groups.append([i])
        else:
            by_content.setdefault(digest, []).append(i)
    groups += by_content.values()

    def group_class(g: list[int]) -> int:
        labels = [strata[i] for i in g]
        return min(set(labels), key=lambda v: (-labels.count(v), v))

    total = len(keys)
    train_ids, val_ids = [], []
    for cls in sorted({group_class(g) for g in groups}):
        ranked = sorted((g for g in groups if group_class(g) == cls), key=lambda g: min(map(rank, g)))
        if limit is not None and limit < total:
            budget = max(2, round(limit * sum(map(len, ranked)) / total))
            ranked = _take(ranked, budget)
        size = sum(map(len, ranked))
        n_val = max(1, round(val_fraction * size)) if val_fraction > 0 else 0
        val = _take(ranked, n_val)
        val_ids += [i for g in val for i in g]
        train_ids += [i for g in ranked[len(val):] for i in g]
    return sorted(train_ids), sorted(val_ids)


def _take(groups: list[list[int]], images: int) -> list[list[int]]:
    """The leading groups holding at least `images` images (fewer if there are not that many)."""
    taken, n = [], 0
    for g in groups:
        if n >= images:
            break
        taken.append(g)
        n += len(g)
    return taken


def create_run(s: Session, dataset: Dataset, cfg: TrainConfig) -> Run:
    run = Run(dataset_id=dataset.id, kind="train", status="queued", config=cfg.to_dict(),
              labels_as_of=queries.newest_label_id(s, dataset.id))
    s.add(run)
    s.flush()
    return run


def create_like_run(s: Session, like_id: int, overrides: dict | None = None,
                    dataset: Dataset | None = None) -> Run:
    """A queued run with `like_id`'s config (and `overrides`) on the current labels."""
    like = queries.get_run(s, like_id)
    cfg = TrainConfig.from_dict({**like.config, "select": "best", **(overrides or {})})
    run = create_run(s, dataset or s.get(Dataset, like.dataset_id), cfg)
    run.like_run_id = like_id
    return run


# ---------------------------------------------------------------- the run's owner


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


def _owner_text(run: Run) -> str:
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


class _Heartbeat(threading.Thread):
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


class StoreCallbacks(Callbacks):
    """Writes progress, heartbeat, epochs and best validation predictions; obeys Cancel.
    Writes only while `owner` owns the run (LostRun otherwise)."""

    def __init__(self, sessions: sessionmaker[Session], run_id: int, val_ids: list[int],
                 val_labels: list[int] | None = None, owner: owners.Owner | None = None,
                 heartbeat: _Heartbeat | None = None):
        self.sessions, self.run_id, self.val_ids = sessions, run_id, val_ids
        self.val_labels = np.asarray(val_labels if val_labels is not None else [], dtype=np.int64)
        self.owner, self.heartbeat = owner, heartbeat
        self.last_beat = 0.0

    def _own(self, run: Run) -> None:
        if (self.heartbeat is not None and self.heartbeat.lost) or (
                self.owner is not None and owners.owner_of(run) != self.owner):
            raise LostRun(f"run {self.run_id} is now owned by {_owner_text(run)}; this process stops")

    def on_batch(self, epoch: int, batch: int, batches: int, images_per_s: float,
                 phase: str = "train") -> None:
        if time.monotonic() - self.last_beat < HEARTBEAT_S and batch < batches:
            return
        self.last_beat = time.monotonic()
        with self.sessions.begin() as s:
            run = queries.get_run(s, self.run_id)
            self._own(run)
            if run.cancel_requested:
                raise Cancelled()
            run.heartbeat_at = now()
            progress = {**(run.progress or {}), "epoch": epoch, "phase": phase, "batch": batch,
                        "batches": batches}
            if phase == "train":
                progress["images_per_s"] = round(images_per_s, 2)
            run.progress = progress

    def on_epoch(self, result: EpochResult, *, is_best: bool, val_probs: np.ndarray,
                 checkpoint: Path, checkpoint_sha1: str | None = None) -> None:
        with self.sessions.begin() as s:
            run = queries.get_run(s, self.run_id)
            self._own(run)
            s.merge(Epoch(run_id=self.run_id, **_epoch_values(result)))
            run.heartbeat_at = now()
            if is_best:
                note = threshold_note(self.val_labels, val_probs) if self.val_labels.size else None
                _record_best(s, run, result, checkpoint, checkpoint_sha1, self.val_ids, val_probs, note)


def _epoch_values(result: EpochResult) -> dict:
    values = {k: v for k, v in vars(result).items() if k != "skipped"}
    return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in values.items()}


def _record_best(s: Session, run: Run, result: EpochResult, checkpoint: Path, sha1: str | None,
                 val_ids: list[int], val_probs: np.ndarray, note: str | None) -> None:
    threshold = result.val_best_threshold
    run.best_epoch, run.checkpoint = result.epoch, str(checkpoint)
    run.best_threshold = None if np.isnan(threshold) else threshold
    run.threshold_note = note if run.best_threshold is None else None
    if run.best_threshold is None and run.threshold_note is None:
        run.threshold_note = "validation could not choose a threshold"
    _store_val_predictions(s, run.id, val_ids, val_probs, epoch=result.epoch, checkpoint_sha1=sha1)


def _store_val_predictions(s: Session, run_id: int, val_ids: list[int], probs: np.ndarray, *,
                           epoch: int | None = None, checkpoint_sha1: str | None = None) -> None:
    """The best epoch's validation probabilities, each row naming that epoch and best.pt's sha1."""
    owners.replace_predictions(s, run_id, val_ids,
                               [(i, p) for i, p in zip(val_ids, probs) if not np.isnan(p)],
                               epoch=epoch, checkpoint_sha1=checkpoint_sha1)


def _train_data(s: Session, run: Run) -> tuple[TrainData, list[int], list[int]]:
    """The run's split: recorded once, read back on resume so nothing moves."""
    cfg = TrainConfig.from_dict(run.config)
    ds = s.get(Dataset, run.dataset_id)
    ims = {im.id: im for im in queries.images(s, ds.id, "train")}
    train_ids = queries.run_image_ids(s, run.id, "train")
    val_ids = queries.run_image_ids(s, run.id, "val")
    if not train_ids:
        strata = {i: v for i, v in queries.import_labels(s, ds.id).items() if i in ims}
        keys = {i: ims[i].rel_path for i in strata}
        train_ids, val_ids = split_images(keys, strata, val_fraction=cfg.val_fraction, seed=cfg.seed,
                                          limit=cfg.limit, content={i: ims[i].sha1 for i in strata})
        if not train_ids or not val_ids:
            raise ValueError(f"dataset {ds.name!r} has too few labelled images to train "
                             f"({len(train_ids)} train, {len(val_ids)} validation)")
        queries.set_run_images(s, run.id, {"train": train_ids, "val": val_ids})
    labels = queries.current_labels(s, ds.id, as_of=run.labels_as_of)
    data = TrainData(Path(ds.root), [ims[i].rel_path for i in train_ids],
                     [labels[i] for i in train_ids], [ims[i].rel_path for i in val_ids],
                     [labels[i] for i in val_ids], stamps=queries.image_stamps(s, ds.id))
    return data, train_ids, val_ids


def _refuse_world(run: Run, world: int) -> None:
    """Resume only with the process count the run trained with (its scheduler is sized by it)."""
    if run.world_size is not None and run.world_size != world:
        how = f"--nproc {run.world_size}" if run.world_size > 1 else "one process (no --nproc)"
        raise ValueError(f"run {run.id} was trained by {run.world_size} process(es) and cannot resume "
                         f"with {world}: resume it with {how}")


def _check_claim(run: Run, me: owners.Owner, *, resume: bool, world: int) -> None:
    """Why `me` may not take the run (ValueError, FileNotFoundError); nothing when it may."""
    run_id = run.id
    if owners.owner_of(run) != me and owner_alive(run):
        raise ValueError(f"run {run_id} is already running ({_owner_text(run)})")
    if resume:
        if run.status == "succeeded":
            raise ValueError(f"run {run_id} already succeeded; nothing to resume")
        if run.status == "queued":
            raise ValueError(f"run {run_id} has not started yet")
        if not (run_dir(run_id) / "last.pt").is_file() and not (run_dir(run_id) / "last.next.pt").is_file():
            raise FileNotFoundError(f"run {run_id} has no checkpoint to resume from "
                                    f"({run_dir(run_id) / 'last.pt'})")
        _refuse_world(run, world)
    elif run.status != "queued":
        raise ValueError(f"run {run_id} is {run.status}, not queued; use --resume {run_id}")


def _claim(s: Session, run_id: int, me: owners.Owner, *, resume: bool, world: int) -> Run:
    """Make this process the run's owner, or refuse (ValueError, FileNotFoundError) without
    changing anything: a refusal never touches another process's run."""
    run = queries.get_run(s, run_id)
    _check_claim(run, me, resume=resume, world=world)
    values = {"status": "running", "heartbeat_at": now(), "error": None, "finished_at": None,
              "cancel_requested": False, "started_at": run.started_at or now()}
    if not resume:
        values["world_size"] = world
    if not owners.take(s, run_id, owners.owner_of(run), me, **values):
        raise ValueError(f"run {run_id} was just taken by another process")
    return queries.get_run(s, run_id)


def recover(sessions: sessionmaker[Session], run_id: int) -> None:
    """Bring a dead run's checkpoints and store back to one epoch history: finish or undo the
    end of epoch a kill or error interrupted, then make the store's epochs, best epoch and
    validation predictions those of last.pt. Does nothing while the run's owner lives (unless
    this process owns it)."""
    out = run_dir(run_id)
    with sessions.begin() as s:
        run = queries.get_run(s, run_id)
        if owners.owner_of(run) != this_process() and owner_alive(run):
            return
        last = recover_checkpoints(out, {e.epoch for e in queries.epochs(s, run_id)})
        if last is None:
            return
        state = torch_load(out / "last.pt")
        history = [EpochResult(**h) for h in state["history"]]
        s.execute(delete(Epoch).where(Epoch.run_id == run_id, Epoch.epoch > last))
        for h in history:
            s.merge(Epoch(run_id=run_id, **_epoch_values(h)))
        if not history:
            return
        from engine.train import _rank

        cfg = TrainConfig.from_dict(run.config)
        best = history[-1] if cfg.select == "last" else max(history, key=_rank)
        best_pt = out / "best.pt"
        sha1 = file_sha1(best_pt) if best_pt.is_file() else None
        stored = s.scalars(select(Prediction.epoch).where(
            Prediction.run_id == run_id,
            Prediction.image_id.in_(queries.run_image_ids(s, run_id, "val"))).limit(1)).first()
        if run.best_epoch != best.epoch or stored != best.epoch:
            data, _train_ids, val_ids = _train_data(s, run)
            probs = state["best_val_probs"].numpy().astype(np.float64)
            log.info("run %d: store brought back to last.pt (best epoch %d)", run_id, best.epoch)
            _record_best(s, run, best, best_pt, sha1, val_ids, probs,
                         threshold_note(np.asarray(data.val_labels), probs))


def _resume_from(run_id: int, resume: bool) -> Path | None:
    """last.pt to resume from; None (train from scratch) when the run died before its first
    epoch was recorded (recover() discarded that epoch's staged checkpoint)."""
    last = run_dir(run_id) / "last.pt"
    return last if resume and last.is_file() else None


def torch_load(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def execute(run_id: int, *, resume: bool = False, progress: bool = True,
            sessions: sessionmaker[Session] | None = None) -> Run:
    """Run (or resume) a run to its end, recording every step; returns the finished row.

    Refuses (ValueError, FileNotFoundError), changing nothing, when the run is not this
    process's to take: its owner lives, it is not queued (or, to resume, not dead), or it
    trained with another process count. Once taken, a failure is recorded on the run.
    """
    sessions = sessions or session_factory()
    me = this_process()
    world = _dist()[1]
    with sessions.begin() as s:
        _claim(s, run_id, me, resume=resume, world=world)
    out = run_dir(run_id)
    handler = logging.FileHandler(out / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("aivh").addHandler(handler)
    logging.getLogger("aivh").setLevel(logging.INFO)
    beat = _Heartbeat(sessions, run_id, me)
    beat.start()
    try:
        with sessions.begin() as s:
            run = queries.get_run(s, run_id)
            cfg = validate_config(TrainConfig.from_dict(run.config))
            data, _train_ids, val_ids = _train_data(s, run)
            run.progress = {"host": me[0], "epoch": 0, "epochs": cfg.epochs,
                            "batch": 0, "batches": 0, "batch_size": cfg.batch_size,
                            "train_images": len(data.train_paths), "val_images": len(val_ids)}
        if resume:
            recover(sessions, run_id)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        log.info("run %d %s on %d train / %d val images", run_id, "resumed" if resume else "started",
                 len(data.train_paths), len(val_ids))
        train(cfg, data, out, StoreCallbacks(sessions, run_id, val_ids, data.val_labels, me, beat),
              resume=_resume_from(run_id, resume), progress=progress)
        return _finish(sessions, run_id, me, "succeeded")
    except Cancelled:
        log.info("run %d cancelled", run_id)
        return _finish(sessions, run_id, me, "cancelled")
    except LostRun as e:
        log.warning("%s", e)
        raise
    except BaseException as e:
        log.exception("run %d failed", run_id)
        _finish(sessions, run_id, me, "failed", f"{type(e).__name__}: {e}")
        raise
    finally:
        beat.stop()
        logging.getLogger("aivh").removeHandler(handler)
        handler.close()


def execute_distributed(run_id: int, nproc: int, *, resume: bool = False, progress: bool = True) -> Run:
    """Train a run with DistributedDataParallel in `nproc` processes on this machine: NCCL, one
    GPU each, on CUDA; gloo on the CPU (the cores shared out). Rank 0 is the run's process of
    record (store, heartbeat, checkpoints); the others only train."""
    import torch
    import torch.multiprocessing as mp

    sessions = session_factory()
    with sessions.begin() as s:  # refused before any rank starts; the split fixed before they read it
        run = queries.get_run(s, run_id)
        _check_claim(run, this_process(), resume=resume, world=nproc)
        _train_data(s, run)
    if resume:
        recover(sessions, run_id)  # every rank then reads the same last.pt
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    try:
        mp.spawn(_rank_main, args=(run_id, nproc, resume, progress, torch.cuda.is_available()),
                 nprocs=nproc, join=True)
    except Exception as e:
        with sessions.begin() as s:  # rank 0, the owner, is gone: the run is recorded failed once
            run = queries.get_run(s, run_id)
            if run.status in ("running", "queued") and not owner_alive(run):
                owners.set_if_owner(s, run_id, owners.owner_of(run), status="failed", finished_at=now(),
                                    error=f"a training process died: {e}")
        raise RuntimeError(f"run {run_id}: a training process died ({str(e).strip().splitlines()[-1]})") from e
    with sessions() as s:
        return queries.get_run(s, run_id)


def _rank_main(rank: int, run_id: int, world: int, resume: bool, progress: bool, cuda: bool) -> None:
    import torch.distributed as dist

    _join_group(rank, world, rank, world, cuda)
    try:
        _train_rank(run_id, rank, resume, progress)
    finally:
        dist.destroy_process_group()


def _join_group(rank: int, world: int, local_rank: int, local_world: int, cuda: bool) -> None:
    """NCCL with one GPU per process on CUDA; gloo on the CPU, this machine's cores shared out."""
    import torch
    import torch.distributed as dist

    if cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)


def _train_rank(run_id: int, rank: int, resume: bool, progress: bool) -> None:
    """Rank 0 is the run's process of record (store, heartbeat, checkpoints); the others train."""
    if rank == 0:
        execute(run_id, resume=resume, progress=progress)
        return
    with session_factory()() as s:
        run = queries.get_run(s, run_id)
        cfg = TrainConfig.from_dict(run.config)
        data, _, _ = _train_data(s, run)
    train(cfg, data, run_dir(run_id), None, resume=_resume_from(run_id, resume), progress=False)


def torchrun_rank() -> tuple[int, int] | None:
    """(rank, world size) when this process was started by torchrun with more than one
    process, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if "TORCHELASTIC_RUN_ID" not in os.environ or world < 2:
        return None
    return int(os.environ["RANK"]), world


def join_torchrun(rank: int, world: int, make_run) -> int:
    """Under torchrun: join the process group; rank 0 calls make_run() (a new or resumed run's
    id) and fixes its split before the others read it; every rank gets the id. A failure on
    rank 0 is raised there and, as a one-line error naming it, on the others."""
    import torch
    import torch.distributed as dist

    from engine.cli import error_line

    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    _join_group(rank, world, int(os.environ.get("LOCAL_RANK", rank)), local_world, torch.cuda.is_available())
    box: list = [None, None]
    error = None
    if rank == 0:
        try:
            run_id = make_run()
            sessions = session_factory()
            with sessions.begin() as s:  # refused before the others train; the split fixed first
                run = queries.get_run(s, run_id)
                resume = run.status != "queued"
                _check_claim(run, this_process(), resume=resume, world=world)
                _train_data(s, run)
            if resume:
                recover(sessions, run_id)  # every rank then reads the same last.pt
            box = [run_id, None]
        except Exception as e:  # noqa: BLE001 - told to every rank, then raised here
            error, box = e, [None, error_line(e)]
    dist.broadcast_object_list(box, src=0)
    if box[0] is None:
        dist.destroy_process_group()
        if error is not None:
            raise error
        raise RuntimeError(f"rank 0 could not start the run: {box[1]}")
    return int(box[0])


def execute_torchrun_rank(run_id: int, *, resume: bool = False, progress: bool = True) -> Run | None:
    """This torchrun process's share of the run (after join_torchrun); rank 0 returns the run."""
    import torch.distributed as dist

    rank = dist.get_rank()
    try:
        _train_rank(run_id, rank, resume, progress and rank == 0)
    except Exception as e:
        if rank == 0:
            raise
        raise RuntimeError(f"run {run_id}: rank {rank} failed: {e}") from e
    finally:
        dist.destroy_process_group()
    if rank == 0:
        with session_factory()() as s:
            return queries.get_run(s, run_id)
    return None


def launch(run_id: int, *, resume: bool = False, sessions: sessionmaker[Session] | None = None) -> int:
    """Start a run as its own process (its own session: it outlives the caller), logging to
    process.txt, and record that process as the run's owner; it takes the run from there.

    Refused (ValueError, FileNotFoundError; nothing started) when the run's owner lives, it
    cannot resume, or it trained with more than one process (the dashboard starts one).
    """
    sessions = sessions or session_factory()
    with sessions.begin() as s:
        if resume:
            check_resumable(s, run_id)
        run = queries.get_run(s, run_id)
        _check_claim(run, this_process(), resume=resume, world=1)
        expected = owners.owner_of(run)
    out = run_dir(run_id)
    cmd = [sys.executable, "-m", "engine.jobs", "--run-id", str(run_id)] + (["--resume"] if resume else [])
    with open(out / "process.txt", "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=Path(__file__).resolve().parents[1])
    child = (socket.gethostname(), proc.pid, process_started(proc.pid))
    with sessions.begin() as s:  # unless the child took it already, or another launch got there first
        taken = owners.take(s, run_id, expected, child, heartbeat_at=now())
    if not taken:
        with sessions() as s:
            run = queries.get_run(s, run_id)
        if owners.owner_of(run) != child:
            log.warning("run %d: another process took it before process %d", run_id, proc.pid)
    return proc.pid


def request_cancel(s: Session, run_id: int) -> None:
    """The job checks this flag between batches."""
    queries.get_run(s, run_id).cancel_requested = True


def check_resumable(s: Session, run_id: int, *, world: int | None = None) -> None:
    """A run may resume if it died: failed, cancelled, or 'running' with its process gone;
    never while the process that owns it lives, whatever its status says. `world`: the process
    count it would resume with, refused unless the run trained with it."""
    reap_stale(s)
    run = queries.get_run(s, run_id)
    if run.status == "succeeded":
        raise ValueError(f"run {run_id} already succeeded; nothing to resume")
    if owner_alive(run) and owners.owner_of(run) != this_process():
        raise ValueError(f"run {run_id} is already running ({_owner_text(run)})")
    if run.status == "queued":
        raise ValueError(f"run {run_id} has not started yet")
    if world is not None:
        _refuse_world(run, world)


def _finish(sessions: sessionmaker[Session], run_id: int, owner: owners.Owner, status: str,
            error: str | None = None) -> Run:
    """Record the run's end, if this process still owns it (else leave it to its owner)."""
    with sessions.begin() as s:
        if not owners.set_if_owner(s, run_id, owner, status=status, finished_at=now(), error=error,
                                   pid=None, pid_started=None):
            log.warning("run %d: not finished as %s by this process, which no longer owns it", run_id, status)
        return queries.get_run(s, run_id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.jobs", description=__doc__)
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
