"""A run's life: created (queued), claimed by one process, trained, ended; resumed after a death.

`aivh train` calls `execute` in-process; the dashboard calls `launch`, which starts
`python -m engine.worker --run-id N` in its own session. Only the process that owns the run
(engine.liveness) writes its progress, epochs and end (engine.recording); several processes
training one run are engine.distributed's.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from db import labelling, queries
from db import runs as owners
from db.models import Dataset, Epoch, Prediction, Run, RunKind, RunStatus
from db.store import child_env, run_dir, session_factory
from engine import device
from engine.atomic import file_sha1
from engine.backbones import DEFAULT_ARCH
from engine.checkpoints import recover_checkpoints, torch_load
from engine.config import TrainConfig
from engine.duplicates import split_groups
from engine.errors import Cancelled, LostRun, Pruned, WeightsError
from engine.liveness import Heartbeat, reap_stale
from engine.metrics import threshold_note
from engine.model import weights_source
from engine.processes import now, owner_alive, owner_text, process_started, this_process
from engine.recording import StoreCallbacks, epoch_values, record_best
from engine.splits import split_images
from engine.train import EpochResult, TrainData, rank_and_world, train

log = logging.getLogger("aivh.jobs")


def recorded(cfg: TrainConfig) -> TrainConfig:
    """The config as a run records it: with where its starting weights come from."""
    return dataclasses.replace(cfg, weights_source=weights_source(cfg.pretrained, cfg.arch))


def create_run(s: Session, dataset: Dataset, cfg: TrainConfig) -> Run:
    """A queued run, its config recording where its starting weights come from. ValueError,
    nothing recorded, when its device is not on this machine (say cuda without a GPU)."""
    device.require(cfg.device)
    cfg = recorded(cfg)
    run = Run(dataset_id=dataset.id, kind=RunKind.TRAIN.value, status=RunStatus.QUEUED.value,
              config=cfg.to_dict(), labels_as_of=labelling.newest_label_id(s, dataset.id))
    s.add(run)
    s.flush()
    return run


def create_like_run(s: Session, like_id: int, overrides: dict | None = None,
                    dataset: Dataset | None = None) -> Run:
    """A queued run with `like_id`'s config (and `overrides`) on the current labels."""
    like = queries.get_run(s, like_id)
    base = dict(like.config)
    overrides = overrides or {}
    if "arch" in overrides and overrides["arch"] != base.get("arch", DEFAULT_ARCH):
        for key in ("mean", "std", "img_size"):  # the new architecture's own, unless given
            base.pop(key, None)
    if "pretrained" in overrides and overrides["pretrained"] != base.get("pretrained"):
        base.pop("lr", None)  # the default for the new weights, unless given
    cfg = TrainConfig.from_dict({**base, "keep_epoch": "best", "weights_source": None, **overrides})
    run = create_run(s, dataset or s.get(Dataset, like.dataset_id), cfg)
    if cfg.probe:
        run.kind = RunKind.PROBE.value
    run.like_run_id = like_id
    return run


def train_data(s: Session, run: Run) -> tuple[TrainData, list[int], list[int]]:
    """The run's split: recorded once, read back on resume so nothing moves."""
    cfg = TrainConfig.from_dict(run.config)
    ds = s.get(Dataset, run.dataset_id)
    ims = {im.id: im for im in queries.images(s, ds.id, "train")}
    train_ids = queries.run_image_ids(s, run.id, "train")
    val_ids = queries.run_image_ids(s, run.id, "val")
    if not train_ids:
        strata = {i: v for i, v in labelling.import_labels(s, ds.id).items() if i in ims}
        keys = {i: ims[i].rel_path for i in strata}
        content, grouping = split_groups(s, ds.id, Path(ds.root), strata, group=cfg.group, progress=False)
        train_ids, val_ids = split_images(keys, strata, val_fraction=cfg.val_fraction, seed=cfg.seed,
                                          limit=cfg.limit, content=content)
        run.config = {**run.config, "grouping": grouping}  # how the split grouped, for the record
        if not train_ids or not val_ids:
            raise ValueError(f"dataset {ds.name!r} has too few labelled images to train "
                             f"({len(train_ids)} train, {len(val_ids)} validation)")
        queries.set_run_images(s, run.id, {"train": train_ids, "val": val_ids})
    labels = labelling.current_labels(s, ds.id, as_of=run.labels_as_of)
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


def check_claim(run: Run, me: owners.Owner, *, resume: bool, world: int) -> None:
    """Why `me` may not take the run (ValueError, FileNotFoundError); nothing when it may."""
    run_id = run.id
    if (problem := device.unavailable(run.config.get("device"))) is not None:
        raise ValueError(f"run {run_id}: {problem}")
    if owners.owner_of(run) != me and owner_alive(run):
        raise ValueError(f"run {run_id} is already running ({owner_text(run)})")
    if resume:
        if run.status == "succeeded":
            raise ValueError(f"run {run_id} already succeeded; nothing to resume")
        if run.status == "pruned":
            raise ValueError(f"run {run_id} was pruned by its sweep; nothing to resume")
        if run.status == "queued":
            raise ValueError(f"run {run_id} has not started yet")
        if not (run_dir(run_id) / "last.pt").is_file() and not (run_dir(run_id) / "last.next.pt").is_file():
            raise FileNotFoundError(f"run {run_id} has no checkpoint to resume from "
                                    f"({run_dir(run_id) / 'last.pt'})")
        _refuse_world(run, world)
    elif run.status != "queued":
        raise ValueError(f"run {run_id} is {run.status}, not queued; use --resume {run_id}")


def claim(s: Session, run_id: int, me: owners.Owner, *, resume: bool, world: int) -> Run:
    """Make this process the run's owner, or refuse (ValueError, FileNotFoundError) without
    changing anything: a refusal never touches another process's run."""
    run = queries.get_run(s, run_id)
    check_claim(run, me, resume=resume, world=world)
    values = {"status": "running", "heartbeat_at": now(), "error": None, "finished_at": None,
              "started_at": run.started_at or now()}
    if resume:
        values["cancel_requested"] = False  # resuming a cancelled run is asking it to go on
    else:
        values["world_size"] = world  # a cancel asked while the run was queued stays: it is honoured
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
            s.merge(Epoch(run_id=run_id, **epoch_values(h)))
        if not history:
            return
        from engine.train import epoch_score

        cfg = TrainConfig.from_dict(run.config)
        best = history[-1] if cfg.keep_epoch == "last" else max(history, key=epoch_score)
        best_pt = out / "best.pt"
        sha1 = file_sha1(best_pt) if best_pt.is_file() else None
        stored = s.scalars(select(Prediction.epoch).where(
            Prediction.run_id == run_id,
            Prediction.image_id.in_(queries.run_image_ids(s, run_id, "val"))).limit(1)).first()
        if run.best_epoch != best.epoch or stored != best.epoch:
            data, _train_ids, val_ids = train_data(s, run)
            probs = state["best_val_probs"].numpy().astype(np.float64)
            log.info("run %d: store brought back to last.pt (best epoch %d)", run_id, best.epoch)
            record_best(s, run, best, best_pt, sha1, val_ids, probs,
                         threshold_note(np.asarray(data.val_labels), probs))


def resume_from(run_id: int, resume: bool) -> Path | None:
    """last.pt to resume from; None (train from scratch) when the run died before its first
    epoch was recorded (recover() discarded that epoch's staged checkpoint)."""
    last = run_dir(run_id) / "last.pt"
    return last if resume and last.is_file() else None


def execute(run_id: int, *, resume: bool = False, progress: bool = True,
            sessions: sessionmaker[Session] | None = None, after_epoch=None) -> Run:
    """Run (or resume) a run to its end, recording every step; returns the finished row.

    Refuses (ValueError, FileNotFoundError), changing nothing, when the run is not this
    process's to take: its owner lives, it is not queued (or, to resume, not dead), or it
    trained with another process count. Once taken, a failure is recorded on the run.
    after_epoch(EpochResult): called once each epoch is recorded and its checkpoints promoted;
    errors.Pruned from it ends the run as pruned (engine.sweep's pruner).
    """
    sessions = sessions or session_factory()
    me = this_process()
    world = rank_and_world()[1]
    with sessions.begin() as s:
        claim(s, run_id, me, resume=resume, world=world)
    out = run_dir(run_id)
    handler = logging.FileHandler(out / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("aivh").addHandler(handler)
    logging.getLogger("aivh").setLevel(logging.INFO)
    beat = Heartbeat(sessions, run_id, me)
    beat.start()
    try:
        with sessions.begin() as s:
            run = queries.get_run(s, run_id)
            if run.cancel_requested:  # asked while it was queued: it never starts
                raise Cancelled()
            cfg = TrainConfig.from_dict(run.config).validate()
            data, _train_ids, val_ids = train_data(s, run)
            run.progress = {"host": me[0], "epoch": 0, "epochs": cfg.epochs,
                            "batch": 0, "batches": 0, "batch_size": cfg.batch_size,
                            "train_images": len(data.train_paths), "val_images": len(val_ids)}
        if resume:
            recover(sessions, run_id)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        log.info("run %d %s on %d train / %d val images", run_id, "resumed" if resume else "started",
                 len(data.train_paths), len(val_ids))
        callbacks = StoreCallbacks(sessions, run_id, val_ids, data.val_labels, me, beat, after_epoch)
        train(cfg, data, out, callbacks,
              resume=resume_from(run_id, resume), progress=progress)
        return finish(sessions, run_id, me, "succeeded")
    except Cancelled:
        log.info("run %d cancelled", run_id)
        return finish(sessions, run_id, me, "cancelled")
    except Pruned as e:
        log.info("run %d pruned: %s", run_id, e)
        return finish(sessions, run_id, me, "pruned", str(e) or None)
    except LostRun as e:
        log.warning("%s", e)
        raise
    except WeightsError as e:  # unusable starting weights: one line, no traceback
        log.error("run %d failed: %s", run_id, e)
        finish(sessions, run_id, me, "failed", f"{type(e).__name__}: {e}")
        raise
    except BaseException as e:
        log.exception("run %d failed", run_id)
        finish(sessions, run_id, me, "failed", f"{type(e).__name__}: {e}")
        raise
    finally:
        beat.stop()
        logging.getLogger("aivh").removeHandler(handler)
        handler.close()


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
        check_claim(run, this_process(), resume=resume, world=1)
        expected = owners.owner_of(run)
    out = run_dir(run_id)
    cmd = [sys.executable, "-m", "engine.worker", "--run-id", str(run_id)] + (["--resume"] if resume else [])
    with open(out / "process.txt", "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=Path(__file__).resolve().parents[1], env=child_env())
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
    if run.status == "pruned":
        raise ValueError(f"run {run_id} was pruned by its sweep; nothing to resume")
    if owner_alive(run) and owners.owner_of(run) != this_process():
        raise ValueError(f"run {run_id} is already running ({owner_text(run)})")
    if run.status == "queued":
        raise ValueError(f"run {run_id} has not started yet")
    if world is not None:
        _refuse_world(run, world)


def finish(sessions: sessionmaker[Session], run_id: int, owner: owners.Owner, status: str,
            error: str | None = None) -> Run:
    """Record the run's end, if this process still owns it (else leave it to its owner)."""
    with sessions.begin() as s:
        if not owners.set_if_owner(s, run_id, owner, status=status, finished_at=now(), error=error,
                                   pid=None, pid_started=None):
            log.warning("run %d: not finished as %s by this process, which no longer owns it", run_id, status)
        return queries.get_run(s, run_id)
