"""The Sweep page's door to sweeps (engine.sweep): read a sweep's state and figures; start and
resume one (its workers start as their own processes and outlive the page)."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard.store.sessions import sessions_for
from db.store import db_url


def sweeps() -> list[dict]:
    """Every sweep's summary (engine.sweep_report.summary), oldest first. Reads only: a trial whose
    worker died shows running until an action (start, resume) or `aivh sweep --list` fails it."""
    from engine import sweep_report
    from engine.sweep_storage import storage_exists

    if not storage_exists():  # no sweep yet: nothing created while the page renders
        return []
    return sweep_report.list_sweeps()


def sweep_summary(sweep_id: int) -> dict:
    from engine import sweep_report

    return sweep_report.summary(sweep_id, sessions_for(db_url()))


def sweep_trials(sweep_id: int) -> pd.DataFrame:
    """One row per trial: number, state, value, run, its run's status and epochs, then each
    parameter as a column."""
    from engine import sweep, sweep_report

    rows = sweep_report.trial_rows(sweep.load_study(sweep.storage(), sweep_id), sessions_for(db_url()))
    return pd.DataFrame([{k: v for k, v in r.items() if k != "params"} | r["params"] for r in rows])


def sweep_figures(sweep_id: int, summary: dict) -> dict:
    """Optuna's plotly figures (engine.sweep_report.figures): history, parallel, importances,
    intermediate; cached on what changes them (the trial counts and epochs of `summary`), so
    the page's poll every few seconds does not refit the importances."""
    version = tuple(summary[k] for k in ("completed", "pruned", "failed", "running", "epochs_run"))
    return _figures(db_url(), sweep_id, version)


@st.cache_data(show_spinner=False, max_entries=32)
def _figures(url: str, sweep_id: int, version: tuple) -> dict:
    from engine import sweep, sweep_report

    return sweep_report.figures(sweep_id, sweep.storage(url))


def default_space(fixed: dict) -> str:
    from engine.search_space import default_space as space
    from engine.search_space import space_text

    return space_text(space(fixed))


def start_sweep(dataset: str, trials: int, *, parallel: int, space: str | None, metric: str,
                fixed: dict, pruner: str) -> int:
    """A new sweep and its `parallel` worker processes; its id. UsageError, ValueError or
    LookupError (nothing made) when the request is wrong."""
    from engine import sweep

    sweep_id = sweep.create_sweep(sessions_for(db_url()), dataset, trials, space=space or None, metric=metric,
                                  fixed=fixed, pruner=pruner)
    sweep.spawn_workers(sweep_id, parallel, detached=True)
    return sweep_id


def resume_sweep(sweep_id: int, parallel: int) -> None:
    """Fail the trials whose worker died, then start `parallel` workers to finish the count."""
    from engine import sweep

    study = sweep.load_study(sweep.storage(), sweep_id)
    sweep.fail_dead_trials(study, sessions_for(db_url()))
    sweep.spawn_workers(sweep_id, parallel, detached=True)
