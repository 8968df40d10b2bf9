"""Where a sweep's Optuna study lives, and Optuna's storage opened on it.

Beside the store (`storage_url`): on PostgreSQL the store's own database, in a schema
`optuna`; on SQLite a sibling file `<store>.optuna.db`. Both because Optuna stamps its own
Alembic revision in a table named `alembic_version`, which the store already uses for its
migrations (db/store.py): in one namespace Optuna would read the store's revision as its own
and refuse to open ("no longer compatible with the table schema"), or the store would read
Optuna's. The storage beats a heartbeat for each running trial: a stale one is failed, its run
reaped and its parameters enqueued again (`_trial_died`).
"""
from __future__ import annotations

import functools
import warnings
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from db.store import db_url, get_engine, session_factory, sqlite_file
from engine.liveness import HEARTBEAT_S, reap_stale
from engine.processes import STALE_S

SCHEMA = "optuna"  # PostgreSQL: Optuna's tables (and its alembic_version) live here


def storage_url(url: str | None = None) -> tuple[str, dict]:
    """Optuna's storage URL and engine arguments for the store at `url` (see the module's doc)."""
    url = url or db_url()
    u = make_url(url)
    if u.drivername.startswith("sqlite"):
        found = sqlite_file(get_engine(url))
        if found is None:
            raise ValueError("sweeps need a store in a file or on a server, not an in-memory SQLite")
        path = Path(found[0]).resolve()
        sibling = path.with_name(f"{path.stem}.optuna{path.suffix or '.db'}")
        return f"sqlite:///{sibling}", {"connect_args": {"timeout": 60}}
    if u.drivername.startswith("postgresql"):
        try:
            with get_engine(url).begin() as c:
                c.exec_driver_sql("CREATE SCHEMA IF NOT EXISTS optuna")  # SCHEMA
        except IntegrityError:  # two processes created it at once: IF NOT EXISTS is not atomic
            pass
        return url, {"connect_args": {"options": f"-csearch_path={SCHEMA}"}, "pool_pre_ping": True}
    raise ValueError(f"sweeps need a SQLite or PostgreSQL store (this one is {u.drivername})")


def storage_exists(url: str | None = None) -> bool:
    """Whether the store has Optuna's tables yet (a first sweep creates them): read only, so a
    page can say "no sweeps" without creating anything while it renders."""
    from sqlalchemy import text

    url = url or db_url()
    target, _ = storage_url(url) if url.startswith("sqlite") else (url, None)
    if url.startswith("sqlite"):
        return Path(make_url(target).database).is_file()
    with get_engine(url).connect() as c:
        return c.execute(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": f"{SCHEMA}.studies"}).scalar_one()


def storage(url: str | None = None):
    """Optuna's RDBStorage for the store, with heartbeats: a trial whose worker stops beating
    for processes.STALE_S is failed, its run reaped and its parameters enqueued again. One per
    store URL in a process (the dashboard asks every few seconds)."""
    return _storage_for(url or db_url())


@functools.lru_cache(maxsize=8)
def _storage_for(url: str):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    target, kwargs = storage_url(url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(target, engine_kwargs=kwargs,
                                          heartbeat_interval=int(2 * HEARTBEAT_S),
                                          grace_period=int(STALE_S),
                                          heartbeat_stale_trial_callback=_trial_died)


def retry_callback():
    """Optuna's callback that enqueues a failed trial's parameters again (at most twice)."""
    import optuna

    with warnings.catch_warnings():  # experimental since Optuna 2.8, and the documented way
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)


def _trial_died(study, trial) -> None:
    """Optuna failed a trial whose heartbeat went stale: reap its run too (liveness agrees:
    its owner's heartbeat is as old) and enqueue its parameters again."""
    with session_factory()() as s, s.begin():
        reap_stale(s)
    retry_callback()(study, trial)


def load_study(st, sweep_id: int, pruner=None, sampler=None):
    """The sweep's Optuna study in storage `st`; LookupError when there is no such sweep."""
    import optuna

    try:
        name = st.get_study_name_from_id(sweep_id)
    except KeyError:
        raise LookupError(f"no sweep {sweep_id} (aivh sweep --list shows them)") from None
    study = optuna.load_study(study_name=name, storage=st, pruner=pruner, sampler=sampler)
    if not study.user_attrs.get("aivh"):
        raise LookupError(f"no sweep {sweep_id} (study {name!r} is not an aivh sweep)")
    return study
