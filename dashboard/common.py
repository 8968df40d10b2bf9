"""What every page shares: the store, cached loaders, pickers and the reviewer's name.

Pages hold no SQL: loaders here call `db.queries` and return plain frames and values.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st
from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.models import Run
from db.store import db_url, home, session_factory

OUTCOMES = ("false positive", "false negative", "true positive", "true negative")


@st.cache_resource
def _sessions(url: str) -> sessionmaker[Session]:
    return session_factory(url)


def sessions() -> sessionmaker[Session]:
    return _sessions(db_url())


def runs_by_id() -> dict[int, Run]:
    with sessions()() as s:
        from engine.jobs import reap_stale

        with s.begin():
            reap_stale(s)
        return {r.id: r for r in queries.list_runs(s)}


def dataset_names() -> dict[int, str]:
    with sessions()() as s:
        return {d.id: d.name for d in queries.list_datasets(s)}


def dataset_root(dataset_id: int) -> str:
    with sessions()() as s:
        return next(d.root for d in queries.list_datasets(s) if d.id == dataset_id)


def run_label(run: Run, names: dict[int, str]) -> str:
    cfg = run.config
    return f"#{run.id} {names.get(run.dataset_id, '?')} · {run.status} · {cfg.get('img_size')} px"


def pick_run(runs: dict[int, Run], *, key: str = "run", only_with_checkpoint: bool = True) -> Run | None:
    """A run selector whose choice lives in the URL (?run=N), so links and reloads keep it."""
    names = dataset_names()
    usable = [r for r in runs.values() if r.checkpoint or not only_with_checkpoint]
    if not usable:
        st.info("No trained run yet. Start one on the Train page or with `aivh train`.")
        return None
    ids = [r.id for r in reversed(usable)]
    wanted = st.query_params.get(key)
    index = ids.index(int(wanted)) if wanted and wanted.isdigit() and int(wanted) in ids else 0
    chosen = st.selectbox("Run", ids, index=index, format_func=lambda i: run_label(runs[i], names), key=key)
    st.query_params[key] = str(chosen)
    return runs[chosen]


def label_version() -> int:
    with sessions()() as s:
        return queries.label_version(s)


@st.cache_data(max_entries=16, show_spinner=False)
def _prediction_frame(url: str, run_id: int, split: str, version: int) -> pd.DataFrame:
    with _sessions(url)() as s:
        rows = queries.prediction_rows(s, queries.get_run(s, run_id), split)
    df = pd.DataFrame(rows, columns=["image_id", "rel_path", "prob", "label", "reviews"])
    df["label"] = df["label"].astype("Int64")
    return df


def prediction_frame(run_id: int, split: str) -> pd.DataFrame:
    """A run's predictions on a split with current labels; cached until a label changes."""
    return _prediction_frame(db_url(), run_id, split, label_version())


def outcome(df: pd.DataFrame, threshold: float) -> np.ndarray:
    called = df["prob"].to_numpy() >= threshold
    label = df["label"].to_numpy(dtype=float, na_value=np.nan)
    out = np.full(len(df), "unlabelled", dtype=object)
    out[(label == 1) & called] = "true positive"
    out[(label == 0) & called] = "false positive"
    out[(label == 1) & ~called] = "false negative"
    out[(label == 0) & ~called] = "true negative"
    return out


def run_threshold(run: Run) -> float:
    from engine.export import default_threshold

    return float(default_threshold(run)[0])


def auth_configured() -> bool:
    """True when secrets.toml has an [auth] section: the dashboard is shared and needs a login."""
    try:
        return "auth" in st.secrets
    except Exception:  # noqa: BLE001 - no secrets file at all (Streamlit raises its own types)
        return False


def logged_in_name() -> str | None:
    """The name (else e-mail) of the user logged in through st.login, when login is configured."""
    if not auth_configured() or not st.user.get("is_logged_in"):
        return None
    return str(st.user.get("name") or st.user.get("email") or "").strip() or None


def login_gate() -> None:
    """With login configured, nothing but a login button until the user has logged in (OIDC)."""
    if not auth_configured():
        return
    if not st.user.get("is_logged_in"):
        st.title("aivh")
        st.write("This review lab is shared: log in to review and relabel.")
        if st.button("Log in", type="primary"):
            st.login()
        st.stop()
    st.sidebar.caption(f"Logged in as {logged_in_name()}")
    if st.sidebar.button("Log out"):
        st.logout()


def reviewer() -> str:
    """The logged-in user's name when login is configured; otherwise asked once in the sidebar
    and remembered in the URL (?reviewer=...)."""
    if auth_configured():
        name = logged_in_name() or ""
        st.sidebar.text_input("Reviewer", value=name, disabled=True, key="reviewer_name")
        return name
    name = st.sidebar.text_input("Reviewer", value=st.query_params.get("reviewer", ""),
                                 placeholder="your name", key="reviewer_name")
    if name:
        st.query_params["reviewer"] = name
    return name.strip()


def workspace_caption() -> None:
    st.caption(f"store: {home()}")


@st.cache_data(max_entries=8, show_spinner=False)
def _audit_frame(url: str, audit_id: int, version: int) -> pd.DataFrame:
    with _sessions(url)() as s:
        rows = queries.audit_rows(s, audit_id)
        fold_run = {i: r.id for r in queries.audit_runs(s, audit_id)
                    for i in queries.run_image_ids(s, r.id, "val")}
    df = pd.DataFrame(rows, columns=["rank", "image_id", "rel_path", "given_label", "prob", "quality",
                                     "flagged", "label", "reviews"])
    df["label"] = df["label"].astype("Int64")
    df["fold_run"] = df["image_id"].map(fold_run)
    return df


def audit_frame(audit_id: int) -> pd.DataFrame:
    """An audit's ranked images (worst first) with current labels; cached until a label changes."""
    return _audit_frame(db_url(), audit_id, label_version())


def audits() -> list:
    with sessions()() as s:
        return queries.list_audits(s)


def labels_changed(dataset_id: int, before: int | None, after: int | None) -> int:
    """How many images' labels differ between two label states (None after: now)."""
    with sessions()() as s:
        after = after if after is not None else queries.newest_label_id(s, dataset_id)
        return len(queries.labels_changed(s, dataset_id, before, after))


def eval_set_names(dataset_id: int) -> list[str]:
    with sessions()() as s:
        return [e.name for e in queries.list_eval_sets(s, dataset_id)]
