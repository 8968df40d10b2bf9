"""DistributedDataParallel: one run trained by several processes, started here (--nproc) or by torchrun."""
from __future__ import annotations

import os
import socket

from db import queries
from db import runs as owners
from db.models import Run
from db.store import run_dir, session_factory
from engine.config import TrainConfig
from engine.jobs import check_claim, execute, recover, resume_from, train_data
from engine.processes import now, owner_alive, this_process
from engine.train import train


def execute_distributed(run_id: int, nproc: int, *, resume: bool = False, progress: bool = True) -> Run:
    """Train a run with DistributedDataParallel in `nproc` processes on this machine: NCCL, one
    GPU each, on CUDA; gloo on the CPU (the cores shared out). Rank 0 is the run's process of
    record (store, heartbeat, checkpoints); the others only train."""
    import torch
    import torch.multiprocessing as mp

    sessions = session_factory()
    with sessions.begin() as s:  # refused before any rank starts; the split fixed before they read it
        run = queries.get_run(s, run_id)
        check_claim(run, this_process(), resume=resume, world=nproc)
        train_data(s, run)
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
        data, _, _ = train_data(s, run)
    train(cfg, data, run_dir(run_id), None, resume=resume_from(run_id, resume), progress=False)


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

    from engine.errors import Reported, error_line, say

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
                check_claim(run, this_process(), resume=resume, world=world)
                train_data(s, run)
            if resume:
                recover(sessions, run_id)  # every rank then reads the same last.pt
            box = [run_id, None]
        except Exception as e:  # noqa: BLE001 - told to every rank, then raised here
            error, box = e, [None, error_line(e)]
    dist.broadcast_object_list(box, src=0)
    if box[0] is None:
        if rank != 0:  # said before rank 0 may exit: torchrun then stops the other ranks
            say(f"rank 0 could not start the run: {box[1]}")
        dist.barrier()
        dist.destroy_process_group()
        if error is not None:
            raise error
        raise Reported(box[1])
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
