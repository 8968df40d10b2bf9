"""Hyperparameter sweeps: an Optuna study whose trials are ordinary aivh runs (kind `trial`).

The study lives in Optuna's RDB storage beside the store (engine/sweep_storage.py); what a
sweep is now (its trials, summary, list and figures) is read by engine/sweep_report.py.

A sweep is a study; its id is the study's id. Each trial samples a TrainConfig from the
space (a training flag given on the command line is fixed and leaves it), creates a run of
kind `trial` whose config records `sweep` and `trial`, and trains it through
engine.jobs.execute; after each recorded epoch the validation metric is reported to the
pruner (`after_epoch`), which may end the run as `pruned`, epochs and checkpoints kept.
Workers are processes (engine.sweep_worker), each pulling trials from the shared study until
the requested count of completed and pruned trials is reached. A worker that dies leaves its
trial running: `fail_dead_trials` marks it failed (at once on this host, by its process; on
another host when Optuna's heartbeat goes stale, after processes.STALE_S as for runs), reaps
its run (failed) and enqueues its parameters again, so `aivh sweep --resume` completes the count.
"""
from __future__ import annotations

import logging
import math
import socket
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.models import RunKind
from db.store import child_env, home, session_factory
from engine.choices import PRUNERS, SWEEP_METRICS
from engine.config import TrainConfig
from engine.errors import Pruned, UsageError
from engine.liveness import reap_stale
from engine.processes import process_alive, this_process
from engine.search_space import default_space, parse_space, sample, space_text
from engine.sweep_storage import load_study, retry_callback, storage

log = logging.getLogger("aivh.sweep")

METRICS = SWEEP_METRICS


# --- sweeps --------------------------------------------------------------------------------

def _study_name() -> str:
    return f"aivh-sweep-{uuid.uuid4().hex[:12]}"


def make_pruner(kind: str, startup: int, warmup: int):
    """Optuna's pruners: the median of earlier trials at the same epoch, successive halving
    (ASHA, rungs from epoch `warmup`+1, a quarter kept at each), or none."""
    import optuna

    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)
    if kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, warmup), reduction_factor=4,
                                                      min_early_stopping_rate=0)
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise UsageError(f"--pruner must be one of {', '.join(PRUNERS)} (got {kind!r})")


def create_sweep(sessions: sessionmaker[Session], dataset: str, trials: int, *, space: str | None = None,
                 metric: str = "val_best_f1", fixed: dict | None = None, pruner: str = "median",
                 prune_startup: int = 2, prune_warmup: int = 1, timeout: float | None = None,
                 seed: int = 0) -> int:
    """A new sweep (an empty study with what it needs in its user attributes); its id.
    Refuses, creating nothing, with one clear error (UsageError, ValueError, LookupError)."""
    import optuna

    fixed = dict(fixed or {})
    if trials < 1:
        raise UsageError(f"--trials must be at least 1 (got {trials})")
    if metric not in METRICS:
        raise UsageError(f"--metric must be one of {', '.join(METRICS)} (got {metric!r})")
    if timeout is not None and timeout <= 0:
        raise UsageError(f"--timeout must be above 0 seconds (got {timeout})")
    if prune_startup < 0 or prune_warmup < 0:
        raise UsageError("--prune-startup and --prune-warmup must be 0 or more")
    make_pruner(pruner, prune_startup, prune_warmup)
    parsed = parse_space(space) if space else default_space(fixed)
    both = sorted(set(parsed) & set(fixed))
    if both:
        raise UsageError(f"{', '.join(both)} is both fixed by a training flag and in --space: give one")
    if not parsed:
        raise UsageError("nothing left to sweep: every parameter of the space is fixed by a flag")
    _trainable(fixed)
    _check_space(parsed, fixed)
    with sessions() as s:
        ds = queries.get_dataset(s, dataset)
        ds_id, ds_name = ds.id, ds.name
    st = storage()
    study = optuna.create_study(storage=st, study_name=_study_name(), direction="maximize")
    attrs = {"aivh": 1, "dataset": ds_name, "dataset_id": ds_id, "trials": trials, "metric": metric,
             "space": space_text(parsed), "fixed": fixed, "pruner": pruner, "prune_startup": prune_startup,
             "prune_warmup": prune_warmup, "timeout": timeout, "seed": seed,
             "created": datetime.now(UTC).isoformat(timespec="seconds")}
    for k, v in attrs.items():
        study.set_user_attr(k, v)
    return st.get_study_id_from_name(study.study_name)


def _trainable(values: dict) -> None:
    """A valid config whose starting weights can be had (ValueError: one line)."""
    from engine.weights import require

    cfg = TrainConfig.from_dict(values).validate()
    require(cfg.arch, cfg.pretrained)


def _check_space(space: dict, fixed: dict) -> None:
    """Every end of a range and every choice must make a valid config with the fixed flags: a
    bad value is one error now, not a failed trial later."""
    for name, p in space.items():
        values = list(p.choices) if p.choices is not None else [p.low, p.high]
        if name == "freeze_epochs" and p.choices is None:
            values = [p.low]  # sample() keeps the high end under each trial's epochs
        if p.choices is not None and any(v == "" for v in values):
            raise UsageError(f"--space {name}: an empty choice")
        for v in values:
            if name in ("batch_size", "img_size", "epochs", "freeze_epochs") and v is not None:
                v = int(v)
            try:
                _trainable({**fixed, name: v})
            except (ValueError, UsageError) as e:
                raise UsageError(f"--space {name}={v}: {e}") from None


def fail_dead_trials(study, sessions: sessionmaker[Session] | None = None) -> list[int]:
    """Trials left running by a worker that died on this host: failed at once (by their
    process, as liveness judges a run's owner), their runs reaped as failed, their parameters
    enqueued again. Trials of workers on other hosts are left to Optuna's heartbeat. Returns
    the trial numbers failed."""
    import optuna
    from optuna.trial import TrialState

    failed = []
    here = socket.gethostname()
    st = study._storage
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not worker_gone(t, here):
            continue
        trial_id = st.get_trial_id_from_study_id_trial_number(study._study_id, t.number)
        try:
            if st.set_trial_state_values(trial_id, state=TrialState.FAIL):
                failed.append(t.number)
                retry_callback()(study, st.get_trial(trial_id))
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another process failed it first
    if failed:
        with (sessions or session_factory()).begin() as s:
            reap_stale(s)
    return failed


def worker_gone(trial, here: str | None = None) -> bool:
    """The trial's worker ran on this host and its process is gone (another host's: Optuna's heartbeat)."""
    worker = trial.user_attrs.get("worker")
    return bool(worker) and worker[0] == (here or socket.gethostname()) and not process_alive(worker[1], worker[2])


def _counts(study) -> dict[str, int]:
    from optuna.trial import TrialState

    out = {"complete": 0, "pruned": 0, "fail": 0, "running": 0, "waiting": 0}
    for t in study.get_trials(deepcopy=False):
        out[{TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "fail",
             TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}[t.state]] += 1
    return out


def work(sweep_id: int, *, sessions: sessionmaker[Session] | None = None, progress: bool = False,
         on_trial=None, index: int = 0) -> None:
    """This process pulls trials from the sweep until the requested count of completed and
    pruned trials is reached (counting those running elsewhere) or its timeout passes.
    on_trial(study, frozen_trial): after each trial (the CLI's progress bar). The sampler's
    seed: the sweep's, the worker's index and the trials already made (one worker repeats;
    K workers, or a resumed sweep, do not propose alike)."""
    import optuna

    sessions = sessions or session_factory()
    st = storage()
    attrs = load_study(st, sweep_id).user_attrs
    pruner = make_pruner(attrs["pruner"], attrs["prune_startup"], attrs["prune_warmup"])
    trials = attrs["trials"]
    startup = max(2, min(10, trials // 3))
    made = len(st.get_all_trials(sweep_id, deepcopy=False))
    seed = attrs.get("seed", 0) * 1_000_003 + index * 10_007 + made
    study = load_study(st, sweep_id, pruner=pruner,
                  sampler=optuna.samplers.TPESampler(n_startup_trials=startup, seed=seed))
    fail_dead_trials(study, sessions)
    note_worker(sweep_id, this_process()[1])  # a worker started by hand or by --parallel 1 too
    c = _counts(study)
    if c["complete"] + c["pruned"] + c["running"] >= trials:
        return
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)
    callbacks = [optuna.study.MaxTrialsCallback(trials, states=states), StopAfterFailures(sweep_id)]
    if on_trial is not None:
        callbacks.append(on_trial)
    study.optimize(lambda trial: objective(trial, sweep_id, attrs, sessions, progress),
                   timeout=attrs.get("timeout"), catch=(Exception,), callbacks=callbacks,
                   gc_after_trial=True)


class StopAfterFailures:
    """Failed trials do not count towards the sweep: a failure every trial meets (the dataset
    gone, a weights file missing, memory) would loop for ever. This worker stops after
    `limit` failures in a row; --resume starts it again."""

    def __init__(self, sweep_id: int, limit: int = 3):
        self.sweep_id, self.limit, self.row = sweep_id, limit, 0

    def __call__(self, study, trial) -> None:
        from optuna.trial import TrialState

        self.row = self.row + 1 if trial.state == TrialState.FAIL else 0
        if self.row >= self.limit:
            log.error("sweep %d: %d trials failed in a row in this worker; it stops (aivh sweep --resume %d "
                      "starts it again)", self.sweep_id, self.row, self.sweep_id)
            study.stop()


def objective(trial, sweep_id: int, attrs: dict, sessions: sessionmaker[Session], progress: bool) -> float:
    """One trial: a run of kind `trial` with the sampled config, trained by jobs.execute; its
    epochs reported to the pruner. Returns the metric at the run's kept (best) epoch."""
    import optuna

    from engine import jobs

    trial.set_user_attr("worker", list(this_process()))
    trial.set_user_attr("run", None)  # a retried trial carries its dead predecessor's
    fixed, metric = attrs["fixed"], attrs["metric"]
    params = sample(trial, parse_space(attrs["space"]), fixed)
    cfg = TrainConfig.from_dict({**fixed, **params}).validate()
    with sessions.begin() as s:
        run = jobs.create_run(s, queries.get_dataset(s, attrs["dataset"]), cfg)
        run.kind = RunKind.TRIAL.value
        run.config = {**run.config, "sweep": sweep_id, "trial": trial.number}
        run_id = run.id
    trial.set_user_attr("run", run_id)
    log.info("sweep %d trial %d: run %d with %s", sweep_id, trial.number, run_id, params)

    def after_epoch(er) -> None:
        value = getattr(er, metric)
        if not math.isnan(value):
            trial.report(value, er.epoch)
        if er.epoch < cfg.epochs and trial.should_prune():  # after the last epoch it saves nothing
            raise Pruned(f"trial {trial.number} pruned after epoch {er.epoch} ({metric} {value:.4f})")

    run = jobs.execute(run_id, progress=progress, sessions=sessions, after_epoch=after_epoch)
    if run.status == "pruned":
        raise optuna.TrialPruned(f"run {run_id} pruned")
    if run.status != "succeeded":
        raise RuntimeError(f"run {run_id} ended {run.status}")
    with sessions() as s:
        best = queries.best_epoch(s, queries.get_run(s, run_id))
    value = getattr(best, metric) if best is not None else None
    if value is None or math.isnan(value):
        raise ValueError(f"run {run_id} has no {metric} at its best epoch")
    return float(value)


def _workers_dir(sweep_id: int) -> Path:
    return home() / "sweeps" / str(sweep_id) / "workers"


def note_worker(sweep_id: int, pid: int) -> None:
    """Record a worker process of this host (one small file each: no two writers share one), so
    a page can tell whether any still runs before it offers to start more (live_workers)."""
    import json

    from engine.atomic import write_text
    from engine.processes import process_started

    host = socket.gethostname()
    write_text(_workers_dir(sweep_id) / f"{host}-{pid}.json",
               json.dumps({"host": host, "pid": pid, "started": process_started(pid)}))


def live_workers(sweep_id: int) -> int:
    """Workers of this sweep on this host whose process still runs (the one recorded, not a
    later process with its pid). Workers on other hosts are not counted: their trials show."""
    import json

    here, alive = socket.gethostname(), 0
    folder = _workers_dir(sweep_id)
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            w = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        alive += w.get("host") == here and process_alive(w.get("pid"), w.get("started"))
    return alive


def spawn_workers(sweep_id: int, k: int, *, detached: bool) -> list[subprocess.Popen]:
    """K worker processes (python -m engine.sweep_worker), each logging to
    sweeps/<id>/worker-<n>.txt in the workspace; `detached`: in sessions of their own, so
    they outlive the caller (the dashboard). No more workers than trials left to start: each
    worker starts a trial before any counts (so N can still be overrun by up to K-1 when
    trials end at the same moment)."""
    study = load_study(storage(), sweep_id)
    c = _counts(study)
    k = max(0, min(k, int(study.user_attrs["trials"]) - c["complete"] - c["pruned"] - c["running"]))
    out = home() / "sweeps" / str(sweep_id)
    out.mkdir(parents=True, exist_ok=True)
    procs = []
    for n in range(k):
        with open(out / f"worker-{n}.txt", "ab") as f:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "engine.sweep_worker", "--sweep", str(sweep_id), "--index", str(n)],
                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=detached,
                cwd=Path(__file__).resolve().parents[1], env=child_env()))
            note_worker(sweep_id, procs[-1].pid)  # alive from now, not only once it imported torch
    return procs
