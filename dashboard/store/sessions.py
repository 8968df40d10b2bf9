"""Sessions of the dashboard's store door: one sessionmaker per database URL, read and write blocks."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st
from sqlalchemy.orm import Session, sessionmaker

from db.store import db_url, home, run_dir  # noqa: F401 - home, run_dir: the folders pages show


@st.cache_resource
def sessions_for(url: str) -> sessionmaker[Session]:
    from db.store import session_factory

    return session_factory(url)


@contextmanager
def read(url: str | None = None) -> Iterator[Session]:
    with sessions_for(url or db_url())() as s:
        yield s


def query(fn, *args):
    """One db.queries read in its own session: fn(session, *args)."""
    with read() as s:
        return fn(s, *args)


@contextmanager
def write() -> Iterator[Session]:
    with sessions_for(db_url()).begin() as s:
        yield s
