"""What a sweep is now: its trials (with their runs' status and epochs), the summary that
`aivh sweep --json` prints and the Sweep page shows, the list of sweeps, and Optuna's figures.
Reading writes nothing, except list_sweeps(reap=True). Making and running a sweep: engine/sweep.py.
"""
from __future__ import annotations

import logging
import warnings

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db.models import Epoch, Run
from db.store import session_factory
from engine.sweep import fail_dead_trials, live_workers, worker_gone
from engine.sweep_storage import load_study, storage

log = logging.getLogger("aivh.sweep")


def _state_name(state) -> str:
    return {"COMPLETE": "succeeded", "FAIL": "failed"}.get(state.name, state.name.lower())


def trial_rows(study, sessions: sessionmaker[Session] | None = None) -> list[dict]:
    """Every trial: number, state, value, run, its run's status and epochs, the parameters;
    a running trial whose worker died on this host says "running (worker gone)" until
    fail_dead_trials fails it (reading writes nothing)."""
    trials = study.get_trials(deepcopy=False)
    run_ids = [t.user_attrs.get("run") for t in trials if t.user_attrs.get("run")]
    runs, epochs = {}, {}
    if run_ids:
        with (sessions or session_factory())() as s:
            runs = {r.id: (r.status, (r.config or {}).get("epochs")) for r in
                    s.scalars(select(Run).where(Run.id.in_(run_ids)))}
            epochs = dict(s.execute(select(Epoch.run_id, func.count()).where(Epoch.run_id.in_(run_ids))
                                    .group_by(Epoch.run_id)).all())
    rows = []
    for t in trials:
        rid = t.user_attrs.get("run")
        status, requested = runs.get(rid, (None, None))
        state = _state_name(t.state)
        if state == "running" and worker_gone(t):
            state = "running (worker gone)"
        rows.append({"trial": t.number, "state": state, "value": t.value, "run": rid,
                     "run_status": status, "epochs_run": epochs.get(rid, 0), "epochs_requested": requested,
                     "params": dict(t.params),
                     "started": t.datetime_start, "finished": t.datetime_complete})
    return rows


def summary(sweep_id: int, sessions: sessionmaker[Session] | None = None, st=None) -> dict:
    """The sweep as `aivh sweep --json` prints it: sweep, trials (requested), completed,
    pruned, failed, running (a live worker's), worker_gone (running, its worker dead on this
    host), workers_alive (its worker processes on this host still running), best_run, best_value, best_params, and what it searched."""
    study = load_study(st or storage(), sweep_id)
    a = study.user_attrs
    rows = trial_rows(study, sessions)
    done = [r for r in rows if r["state"] == "succeeded" and r["value"] is not None]
    best = max(done, key=lambda r: r["value"], default=None)
    count = {s: sum(r["state"] == s for r in rows) for s in ("succeeded", "pruned", "failed", "running")}
    return {"sweep": sweep_id, "dataset": a["dataset"], "trials": a["trials"], "completed": count["succeeded"],
            "pruned": count["pruned"], "failed": count["failed"], "running": count["running"],
            "worker_gone": sum(r["state"] == "running (worker gone)" for r in rows),
            "workers_alive": live_workers(sweep_id),
            "best_run": best["run"] if best else None, "best_value": best["value"] if best else None,
            "best_params": best["params"] if best else None, "metric": a["metric"], "space": a["space"],
            "fixed": a["fixed"], "pruner": a["pruner"],
            "epochs_run": sum(r["epochs_run"] for r in rows),
            "epochs_requested": sum(r["epochs_requested"] or 0 for r in rows if r["run"]),
            "created": a.get("created")}


def list_sweeps(st=None, *, reap: bool = False) -> list[dict]:
    """Every aivh sweep in the store's Optuna storage, oldest first: id, dataset, counts.
    reap: first fail the trials whose worker died on this host (fail_dead_trials); the
    dashboard's loaders only read and leave that to its actions."""
    st = st or storage()
    out = []
    for fs in st.get_all_studies():
        if not fs.user_attrs.get("aivh"):
            continue
        sweep_id = st.get_study_id_from_name(fs.study_name)
        if reap:
            fail_dead_trials(load_study(st, sweep_id))
        out.append(summary(sweep_id, st=st))
    return sorted(out, key=lambda r: r["sweep"])


def figures(sweep_id: int, st=None) -> dict:
    """Optuna's plotly figures for the sweep: optimisation history, parallel coordinates,
    parameter importances (from two finished trials on) and intermediate values (the pruned
    trials' curves stop where they were pruned). A figure that cannot be drawn yet is left out."""
    from optuna import visualization as vis
    from optuna.trial import TrialState

    study = load_study(st or storage(), sweep_id)
    finished = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    out = {}
    makers = {"history": vis.plot_optimization_history, "parallel": vis.plot_parallel_coordinate,
              "intermediate": vis.plot_intermediate_values}
    if len(finished) >= 2 and len({t.value for t in finished}) > 1:
        makers["importances"] = vis.plot_param_importances
    for key, make in makers.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[key] = make(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as e:  # too few trials for this one
            log.info("sweep %d: no %s figure yet (%s)", sweep_id, key, e)
    return out
