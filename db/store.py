"""Workspace paths, the one engine and sessionmaker per database URL."""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from db.models import Base


def home() -> Path:
    """The workspace folder: `AIVH_HOME`, else ~/.aivh."""
    path = Path(os.environ.get("AIVH_HOME") or Path.home() / ".aivh").expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def db_url() -> str:
    return os.environ.get("AIVH_DB_URL") or f"sqlite:///{home() / 'aivh.db'}"


def run_dir(run_id: int) -> Path:
    path = home() / "runs" / str(run_id)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers keep reading while a run writes
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


@lru_cache(maxsize=8)
def get_engine(url: str | None = None) -> Engine:
    url = url or db_url()
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    Base.metadata.create_all(engine)
    return engine


def session_factory(url: str | None = None) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url or db_url()), expire_on_commit=False)
