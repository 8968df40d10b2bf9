"""Workspace paths, the one engine and sessionmaker per database URL."""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"
FIRST_REVISION = "0001"  # the schema stores had before migrations: they are stamped with it
log = logging.getLogger("aivh.store")


def home(*, create: bool = True) -> Path:
    """The workspace folder: `AIVH_HOME`, else ~/.aivh; made unless `create` is False."""
    path = Path(os.environ.get("AIVH_HOME") or Path.home() / ".aivh").expanduser().resolve()
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def db_url() -> str:
    """The store's URL: `AIVH_DB_URL`, else aivh.db in the workspace (naming it makes nothing)."""
    return os.environ.get("AIVH_DB_URL") or f"sqlite:///{home(create=False) / 'aivh.db'}"


class NoStore(LookupError):
    """A command that needs a store found none: one line naming where it looked."""


def store_exists(url: str | None = None) -> bool:
    """Whether the store at `url` (default: db_url()) is there, without creating it or its
    folder: a SQLite file on disk (an in-memory one always is), or a server database holding
    the store's tables."""
    from sqlalchemy.pool import NullPool

    probe = create_engine(url or db_url(), poolclass=NullPool)
    try:
        if probe.dialect.name == "sqlite":
            found = sqlite_file(probe)
            return found is None or Path(found[0]).is_file()
        with probe.connect() as conn:
            return inspect(conn).has_table("datasets")
    finally:
        probe.dispose()


def require_store(url: str | None = None) -> None:
    """NoStore (one line) unless the store exists: for commands that only use a store, so that
    one run in a new workspace leaves nothing behind (no folder, no aivh.db, no lock file)."""
    url = url or db_url()
    if store_exists(url):
        return
    probe = create_engine(url)
    found = sqlite_file(probe) if probe.dialect.name == "sqlite" else None
    where = found[0] if found else probe.url.render_as_string(hide_password=True)
    raise NoStore(f"no store at {where}: run `aivh import DATA_DIR` first")


def child_env() -> dict[str, str]:
    """The environment for a process this one starts (a run, a sweep worker), which may run in
    another folder: the workspace and a SQLite store named by absolute paths, so it opens the
    very store this process uses."""
    from sqlalchemy.engine import make_url

    env = {**os.environ, "AIVH_HOME": str(home())}
    url = os.environ.get("AIVH_DB_URL")
    found = sqlite_file(get_engine(url)) if url and url.startswith("sqlite") else None
    if found is not None:
        u = make_url(url)
        name, absolute = u.database or "", str(Path(found[0]).resolve())
        if name.startswith("file:"):  # file:PATH?query (the query may sit in the name)
            name = "file:" + absolute + name[len("file:") + len(found[0]):]
        else:
            name = absolute
        env["AIVH_DB_URL"] = u.set(database=name).render_as_string(hide_password=False)
    return env


def run_dir(run_id: int) -> Path:
    path = home() / "runs" / str(run_id)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def sqlite_file(engine: Engine) -> tuple[str, bool] | None:
    """(the file's path, opened read-only) of a SQLite store on disk, as sqlite3 is handed it
    (a `file:` URI's path without its query); None for an in-memory database."""
    if engine.dialect.name != "sqlite":
        return None
    args, kwargs = engine.dialect.create_connect_args(engine.url)
    name = str(args[0] if args else kwargs.get("database", ""))
    readonly = False
    if kwargs.get("uri") and name.startswith("file:"):
        name, _, query = name[len("file:"):].partition("?")
        if "mode=memory" in query:
            return None
        readonly = "mode=ro" in query
    if not name or name == ":memory:":
        return None
    return name, readonly


def _sqlite_wal(engine: Engine) -> None:
    """Put a SQLite store in WAL mode (readers keep reading while a run writes); the mode is
    kept in the file. Switching needs an exclusive lock, and two processes opening a new store
    at once (torchrun's ranks) could both hold a shared lock and want it: SQLite then answers
    "database is locked" at once, not after its busy timeout. So one process at a time
    switches, under the lock migrations take, and a busy answer is retried."""
    import sqlite3

    found = sqlite_file(engine)
    if found is None or found[1]:
        return
    with _file_lock(found[0]):
        deadline = time.monotonic() + 30
        while True:
            conn = engine.raw_connection()  # the engine's own URI handling and pragmas
            try:
                conn.cursor().execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
            finally:
                conn.invalidate()  # not back to the pool: a fresh connection after the switch
            time.sleep(0.05)


@lru_cache(maxsize=8)
def get_engine(url: str | None = None) -> Engine:
    url = url or db_url()
    if url.startswith("sqlite"):
        if url == f"sqlite:///{home(create=False) / 'aivh.db'}":
            home()  # the workspace's own store: its folder is made with it
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        _sqlite_wal(engine)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    migrate(engine)
    return engine


def _alembic_config(connection: Connection):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


@contextlib.contextmanager
def _migration_lock(engine: Engine, connection: Connection) -> Iterator[None]:
    """One migrating process at a time: a file lock beside SQLite, an advisory lock on PostgreSQL."""
    if engine.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_lock(74686)"))
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(74686)"))
            connection.commit()
        return
    found = sqlite_file(engine)
    if found is None:
        yield
        return
    with _file_lock(found[0]):
        yield


@contextlib.contextmanager
def _file_lock(database: str) -> Iterator[None]:
    """A lock file beside a SQLite store: one process at a time changes its schema or mode."""
    with open(f"{database}.migrate.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def _quiet_alembic() -> Iterator[None]:
    """Alembic logs its plugins and each step at INFO; a command that set up INFO logging for
    its own progress would print a dozen such lines. Only its warnings pass."""
    logger = logging.getLogger("alembic")
    old = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(old)


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the store's schema to `revision` (Alembic), keeping every row.

    A store made before migrations existed (tables, no alembic_version) is stamped with the
    first revision, then upgraded like any other. Silent for a current or a new store; one
    line (a warning on the "aivh.store" logger) when an existing store's schema changes.
    """
    with _quiet_alembic():
        changed = _migrate(engine, revision)
    if changed is not None:
        where = engine.url.render_as_string(hide_password=True)
        log.warning("aivh: store %s upgraded from schema %s to %s", where, *changed)


def _migrate(engine: Engine, revision: str) -> tuple[str, str] | None:
    """(from, to) when an existing store's schema changed; None when current or new."""
    from alembic import command

    target = head_revision() if revision == "head" else revision
    with engine.connect() as conn:
        if current_revision(conn) == target:
            return None
        with _migration_lock(engine, conn):
            conn.rollback()  # see what the process that held the lock did
            current = current_revision(conn)
            if current == target:
                return None
            if engine.dialect.name == "sqlite":
                conn.exec_driver_sql("PRAGMA foreign_keys=OFF")  # no cascade may fire mid-migration
            cfg = _alembic_config(conn)
            existing = current is not None or inspect(conn).has_table("datasets")
            if current is None and existing:
                current = FIRST_REVISION
                command.stamp(cfg, FIRST_REVISION)
            command.upgrade(cfg, revision)
            conn.commit()
            if engine.dialect.name == "sqlite":
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
    return (current, target) if existing else None


def session_factory(url: str | None = None) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url or db_url()), expire_on_commit=False)
