"""The one place that ties a run row to a training process.

`python -m engine.jobs --run-id N` runs a queued run (the dashboard launches it with
`start_new_session=True`); `aivh train` calls `execute` in-process.
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
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.models import Dataset, Epoch, Prediction, Run
from db.store import run_dir, session_factory
from engine.train import Callbacks, Cancelled, EpochResult, TrainConfig, TrainData, train

log = logging.getLogger("aivh.jobs")
HEARTBEAT_S = 5.0  # seconds between heartbeats while training
STALE_S = 60.0  # a running run silent this long is dead


def now() -> datetime:
    return datetime.now(UTC)


def split_images(keys: dict[int, str], strata: dict[int, int], *, val_fraction: float,
                 seed: int, limit: int | None = None) -> tuple[list[int], list[int]]:
    """(train ids, val ids): a pure function of stable keys, the seed and the import labels.

    Each class is ordered by sha1(seed:key); the first `val_fraction` of it is validation.
    Import labels never change, so a relabel never moves an image between splits.
    """
    def rank(i: int) -> str:
        return hashlib.sha1(f"{seed}:{keys[i]}".encode()).hexdigest()

    total = len(keys)
    train_ids, val_ids = [], []
    for cls in sorted(set(strata.values())):
        members = sorted((i for i in keys if strata[i] == cls), key=rank)
        if limit is not None and limit < total:
            members = members[: max(2, round(limit * len(members) / total))]
        n_val = max(1, round(val_fraction * len(members))) if val_fraction > 0 else 0
        val_ids += members[:n_val]
        train_ids += members[n_val:]
    return sorted(train_ids), sorted(val_ids)


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


class StoreCallbacks(Callbacks):
    """Writes progress, heartbeat, epochs and best validation predictions; obeys Cancel."""

    def __init__(self, sessions: sessionmaker[Session], run_id: int, val_ids: list[int]):
        self.sessions, self.run_id, self.val_ids = sessions, run_id, val_ids
        self.last_beat = 0.0

    def on_batch(self, epoch: int, batch: int, batches: int, images_per_s: float,
                 phase: str = "train") -> None:
        if time.monotonic() - self.last_beat < HEARTBEAT_S and batch < batches:
            return
        self.last_beat = time.monotonic()
        with self.sessions.begin() as s:
            run = queries.get_run(s, self.run_id)
            if run.cancel_requested:
                raise Cancelled()
            run.heartbeat_at = now()
            progress = {**(run.progress or {}), "epoch": epoch, "phase": phase, "batch": batch,
                        "batches": batches}
            if phase == "train":
                progress["images_per_s"] = round(images_per_s, 2)
            run.progress = progress

    def on_epoch(self, result: EpochResult, *, is_best: bool, val_probs: np.ndarray,
                 checkpoint: Path) -> None:
        values = {k: v for k, v in vars(result).items() if k != "skipped"}
        values = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in values.items()}
        with self.sessions.begin() as s:
            s.merge(Epoch(run_id=self.run_id, **values))
            run = queries.get_run(s, self.run_id)
            run.heartbeat_at = now()
            if is_best:
                run.best_epoch, run.checkpoint = result.epoch, str(checkpoint)
                run.best_threshold = result.val_best_threshold
                _store_val_predictions(s, self.run_id, self.val_ids, val_probs)


def _store_val_predictions(s: Session, run_id: int, val_ids: list[int], probs: np.ndarray) -> None:
    s.execute(delete(Prediction).where(Prediction.run_id == run_id,
                                       Prediction.image_id.in_(val_ids)))
    queries.upsert_predictions(s, run_id, [(i, p) for i, p in zip(val_ids, probs) if not np.isnan(p)])


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
        train_ids, val_ids = split_images(keys, strata, val_fraction=cfg.val_fraction,
                                          seed=cfg.seed, limit=cfg.limit)
        if not train_ids or not val_ids:
            raise ValueError(f"dataset {ds.name!r} has too few labelled images to train "
                             f"({len(train_ids)} train, {len(val_ids)} validation)")
        queries.set_run_images(s, run.id, {"train": train_ids, "val": val_ids})
    labels = queries.current_labels(s, ds.id, as_of=run.labels_as_of)
    data = TrainData(Path(ds.root), [ims[i].rel_path for i in train_ids],
                     [labels[i] for i in train_ids], [ims[i].rel_path for i in val_ids],
                     [labels[i] for i in val_ids])
    return data, train_ids, val_ids


def execute(run_id: int, *, resume: bool = False, progress: bool = True,
            sessions: sessionmaker[Session] | None = None) -> Run:
    """Run (or resume) a run to its end, recording every step; returns the finished row."""
    sessions = sessions or session_factory()
    out = run_dir(run_id)
    handler = logging.FileHandler(out / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("aivh").addHandler(handler)
    logging.getLogger("aivh").setLevel(logging.INFO)
    try:
        with sessions.begin() as s:
            run = queries.get_run(s, run_id)
            if resume and not (out / "last.pt").is_file():
                raise FileNotFoundError(f"run {run_id} has no checkpoint to resume from ({out / 'last.pt'})")
            if resume:
                check_resumable(s, run_id)
            elif run.status != "queued":
                raise ValueError(f"run {run_id} is {run.status}, not queued; use --resume {run_id}")
            cfg = TrainConfig.from_dict(run.config)
            data, _train_ids, val_ids = _train_data(s, run)
            run.status, run.pid, run.heartbeat_at, run.error = "running", os.getpid(), now(), None
            run.started_at = run.started_at or now()
            run.cancel_requested = False
            run.progress = {"host": socket.gethostname(), "epoch": 0, "epochs": cfg.epochs,
                            "batch": 0, "batches": 0, "batch_size": cfg.batch_size,
                            "train_images": len(data.train_paths), "val_images": len(val_ids)}
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        log.info("run %d %s on %d train / %d val images", run_id, "resumed" if resume else "started",
                 len(data.train_paths), len(val_ids))
        train(cfg, data, out, StoreCallbacks(sessions, run_id, val_ids),
              resume=out / "last.pt" if resume else None, progress=progress)
        return _finish(sessions, run_id, "succeeded")
    except Cancelled:
        log.info("run %d cancelled", run_id)
        return _finish(sessions, run_id, "cancelled")
    except BaseException as e:
        log.exception("run %d failed", run_id)
        _finish(sessions, run_id, "failed", f"{type(e).__name__}: {e}")
        raise
    finally:
        logging.getLogger("aivh").removeHandler(handler)
        handler.close()


def execute_distributed(run_id: int, nproc: int, *, resume: bool = False, progress: bool = True) -> Run:
    """Train a run with DistributedDataParallel in `nproc` processes on this machine: NCCL, one
    GPU each, on CUDA; gloo on the CPU (the cores shared out). Rank 0 is the run's process of
    record (store, heartbeat, checkpoints); the others only train."""
    import torch
    import torch.multiprocessing as mp

    sessions = session_factory()
    with sessions.begin() as s:  # the split is fixed before any rank reads it
        _train_data(s, queries.get_run(s, run_id))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    try:
        mp.spawn(_rank_main, args=(run_id, nproc, resume, progress, torch.cuda.is_available()),
                 nprocs=nproc, join=True)
    except Exception as e:
        with sessions.begin() as s:
            run = queries.get_run(s, run_id)
            if run.status in ("running", "queued"):
                run.status, run.finished_at, run.error = "failed", now(), f"a training process died: {e}"
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
    last = run_dir(run_id) / "last.pt"
    train(cfg, data, run_dir(run_id), None, resume=last if resume else None, progress=False)


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
            with session_factory().begin() as s:
                _train_data(s, queries.get_run(s, run_id))
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


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a finished child of a long-lived parent (the dashboard) lingers as a zombie
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def reap_stale(s: Session) -> list[int]:
    """Mark running runs whose heartbeat stopped as failed; returns their ids."""
    reaped = []
    for run in s.scalars(select(Run).where(Run.status == "running")):
        beat = run.heartbeat_at
        if beat is not None and beat.tzinfo is None:
            beat = beat.replace(tzinfo=UTC)  # SQLite returns naive datetimes
        here = (run.progress or {}).get("host") == socket.gethostname()
        if beat is None or (now() - beat).total_seconds() > STALE_S or (here and not _alive(run.pid)):
            run.status, run.finished_at = "failed", now()
            run.error = f"process {run.pid} stopped (no heartbeat since {beat:%Y-%m-%d %H:%M:%S} UTC)" \
                if beat else f"process {run.pid} stopped"
            reaped.append(run.id)
    return reaped


def launch(run_id: int, *, resume: bool = False) -> int:
    """Start a run as its own process (its own session: it outlives the caller), logging to log.txt."""
    out = run_dir(run_id)
    cmd = [sys.executable, "-m", "engine.jobs", "--run-id", str(run_id)] + (["--resume"] if resume else [])
    with open(out / "process.txt", "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=Path(__file__).resolve().parents[1])
    return proc.pid


def request_cancel(s: Session, run_id: int) -> None:
    """The job checks this flag between batches."""
    queries.get_run(s, run_id).cancel_requested = True


def check_resumable(s: Session, run_id: int) -> None:
    """A run may resume if it died: failed, cancelled, or 'running' with its process gone."""
    reap_stale(s)
    run = queries.get_run(s, run_id)
    if run.status == "succeeded":
        raise ValueError(f"run {run_id} already succeeded; nothing to resume")
    if run.status == "running" and _alive(run.pid):
        raise ValueError(f"run {run_id} is still running (pid {run.pid})")
    if run.status == "queued":
        raise ValueError(f"run {run_id} has not started yet")


def _finish(sessions: sessionmaker[Session], run_id: int, status: str, error: str | None = None) -> Run:
    with sessions.begin() as s:
        run = queries.get_run(s, run_id)
        run.status, run.finished_at, run.error, run.pid = status, now(), error, None
        return run


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
