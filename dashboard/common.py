"""What every page shares: the store, cached loaders, pickers and the reviewer's name.

Pages hold no SQL: loaders here call `db.queries` and return plain frames and values.

Every cached loader is keyed on everything that can change its result, read cheaply on each
call (one small query): the label version, the run's predictions version (count and sum of its
probabilities, checkpoints that made them), the run's state (status, best epoch, thresholds,
checkpoint). New predictions, a new best epoch or a finished run show on the next rerun.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.models import Dataset, Image, Prediction, Run
from db.store import db_url, home, session_factory

OUTCOMES = ("false positive", "false negative", "true positive", "true negative")


@st.cache_resource
def _sessions(url: str) -> sessionmaker[Session]:
    return session_factory(url)


def sessions() -> sessionmaker[Session]:
    return _sessions(db_url())


def runs_by_id() -> dict[int, Run]:
    with sessions()() as s:
        from engine.liveness import reap_stale

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


def _predictions_version(s: Session, run_id: int) -> tuple:
    """Changes whenever a run's predictions do: rows added or removed, a probability rewritten
    (an upsert keeps the row, so a row count or id alone would not see it), another checkpoint."""
    q = select(func.count(), func.sum(Prediction.prob), func.min(Prediction.epoch),
               func.max(Prediction.epoch), func.min(Prediction.checkpoint_sha1),
               func.max(Prediction.checkpoint_sha1))
    return tuple(s.execute(q.where(Prediction.run_id == run_id)).one())


def _run_state(run: Run | None) -> tuple:
    if run is None:
        return (None,)
    return (run.status, run.best_epoch, run.best_threshold, run.chosen_threshold, run.checkpoint,
            run.labels_as_of, str(run.finished_at))


def run_version(run_id: int) -> tuple:
    """The cache key of everything a page shows about a run: labels, predictions, run state."""
    with sessions()() as s:
        return _run_version(s, run_id)


def _run_version(s: Session, run_id: int) -> tuple:
    return (queries.label_version(s), _predictions_version(s, run_id), _run_state(s.get(Run, run_id)))


@st.cache_data(max_entries=16, show_spinner=False)
def _prediction_frame(url: str, run_id: int, split: str, version: tuple) -> pd.DataFrame:
    with _sessions(url)() as s:
        rows = queries.prediction_rows(s, queries.get_run(s, run_id), split)
    df = pd.DataFrame(rows, columns=["image_id", "rel_path", "prob", "label", "reviews"])
    df["label"] = df["label"].astype("Int64")
    return df


def prediction_frame(run_id: int, split: str) -> pd.DataFrame:
    """A run's predictions on a split with current labels; cached until a label, a prediction
    or the run's state changes."""
    return _prediction_frame(db_url(), run_id, split, run_version(run_id))


def image_sha1s(image_ids) -> dict[int, tuple[str | None, tuple[int | None, int | None]]]:
    """image id -> (content sha1, (bytes, mtime_ns) at import) for a page of images, in one query:
    the sha1 names their thumbnails, the stamp tells a file replaced since import."""
    ids = [int(i) for i in image_ids]
    if not ids:
        return {}
    with sessions()() as s:
        q = select(Image.id, Image.sha1, Image.bytes, Image.mtime_ns).where(Image.id.in_(ids))
        return {i: (sha1, (size, mtime)) for i, sha1, size, mtime in s.execute(q)}


@dataclass(frozen=True)
class SubmissionScores:
    """A run's test predictions in test.csv order, or why a submission would be refused."""

    ids: tuple[str, ...]
    probs: np.ndarray
    refused: str | None = None

    def called_ai(self, threshold: float) -> np.ndarray:
        """0/1 per test image at `threshold`: the submission's labels (p >= threshold is AI)."""
        return (self.probs >= threshold).astype(int)


def _test_version(s: Session, run: Run) -> tuple:
    """Test images of the run's dataset (added, re-probed) and test.csv on disk (size, mtime)."""
    from engine.kaggle import TEST_CSV

    q = select(func.count(), func.max(Image.id), func.sum(Image.mtime_ns % 1_000_003), func.max(Image.sha1),
               func.sum(func.length(Image.status)))
    images = s.execute(q.where(Image.dataset_id == run.dataset_id, Image.split == "test")).one()
    root = s.scalar(select(Dataset.root).where(Dataset.id == run.dataset_id))
    try:
        st_ = (Path(root) / TEST_CSV).stat()
        csv_state = (st_.st_size, st_.st_mtime_ns)
    except OSError:
        csv_state = None
    return tuple(images), csv_state


@st.cache_data(max_entries=8, show_spinner=False)
def _test_scores(url: str, run_id: int, version: tuple) -> SubmissionScores:
    from engine.errors import ExportRefused
    from engine.export import submission_rows

    with _sessions(url)() as s:
        run = queries.get_run(s, run_id)
        # test images in test.csv order (submission_rows' order) with the run's probability, one query
        q = (select(Image.rel_path, Prediction.prob).outerjoin(
                Prediction, (Prediction.image_id == Image.id) & (Prediction.run_id == run_id))
             .where(Image.dataset_id == run.dataset_id, Image.split == "test")
             .order_by(Image.split, Image.csv_row))
        rows = s.execute(q).all()
        if not rows or any(p is None for _, p in rows):
            try:  # the engine's own refusal, in its words
                submission_rows(s, run, 0.5)
            except ExportRefused as e:
                return SubmissionScores((), np.zeros(0), str(e))
    return SubmissionScores(tuple(r for r, _ in rows), np.array([p for _, p in rows], dtype=float))


def submission_scores(run_id: int) -> SubmissionScores:
    """The submission's ids and probabilities, loaded once per predictions version: a threshold
    typed on the Export page counts rows from these without reading the store again."""
    with sessions()() as s:
        run = queries.get_run(s, run_id)
        version = (_run_version(s, run_id), _test_version(s, run))
    return _test_scores(db_url(), run_id, version)


@st.cache_data(max_entries=16, show_spinner=False)
def _compare(url: str, a: int, b: int, eval_set: str | None,
             version: tuple) -> tuple[dict | None, str | None]:
    from engine.compare import compare_runs as compare

    with _sessions(url)() as s:
        try:
            return compare(s, a, b, eval_set=eval_set), None
        except (ValueError, LookupError) as e:
            return None, str(e)


def compare_runs(a: int, b: int, *, eval_set: str | None = None) -> dict:
    """engine.compare.compare_runs, computed once per state of both runs and the labels.
    Raises ValueError (with the engine's message) when the runs cannot be compared."""
    with sessions()() as s:
        sets = tuple(e.id for e in queries.list_eval_sets(s, queries.get_run(s, a).dataset_id))
        version = (_run_version(s, a), _predictions_version(s, b), _run_state(s.get(Run, b)), sets)
    result, error = _compare(db_url(), a, b, eval_set, version)
    if error is not None:
        raise ValueError(error)
    return result


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
def _audit_frame(url: str, audit_id: int, version: tuple) -> pd.DataFrame:
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
    """An audit's ranked images (worst first) with current labels; cached until a label or the
    audit (its status, flagged count, fold runs) changes."""
    with sessions()() as s:
        audit = queries.get_audit(s, audit_id)
        version = (queries.label_version(s), audit.status, audit.flagged,
                   tuple((r.id, r.status) for r in queries.audit_runs(s, audit_id)))
    return _audit_frame(db_url(), audit_id, version)


def audits() -> list:
    with sessions()() as s:
        return queries.list_audits(s)


def labels_changed(dataset_id: int, before: int | None, after: int | None) -> int:
    """How many images' labels differ between two label states (None after: now). Label rows
    are only ever added, so the two label ids fix the answer: cached on them."""
    with sessions()() as s:
        after = after if after is not None else queries.newest_label_id(s, dataset_id)
    return _labels_changed(db_url(), dataset_id, before, after)


@st.cache_data(max_entries=64, show_spinner=False)
def _labels_changed(url: str, dataset_id: int, before: int | None, after: int | None) -> int:
    """queries.labels_changed's count (it reads only the images labelled between the states)."""
    with _sessions(url)() as s:
        return len(queries.labels_changed(s, dataset_id, before, after))


def eval_set_names(dataset_id: int) -> list[str]:
    with sessions()() as s:
        return [e.name for e in queries.list_eval_sets(s, dataset_id)]


@st.cache_data(max_entries=32, show_spinner=False)
def _provenance(url: str, run_id: int, split: str, version: tuple) -> tuple[str, str | None]:
    from engine.export import prediction_source, stale_problem

    with _sessions(url)() as s:
        run = queries.get_run(s, run_id)
        return prediction_source(s, run, split), stale_problem(s, run) if split == "test" else None


def provenance(run_id: int, split: str) -> tuple[str, str | None]:
    """engine.export's line on which checkpoint made a run's predictions on a split, and (test
    split) why they may not come from the best checkpoint; once per state of the run."""
    return _provenance(db_url(), run_id, split, run_version(run_id))


def labelled_val(run_id: int, version: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probabilities) of the run's labelled validation images, from the cached frame."""
    df = _prediction_frame(db_url(), run_id, "val", version or run_version(run_id))
    df = df[df["label"].notna()]
    return df["label"].to_numpy(dtype=int), df["prob"].to_numpy(dtype=float)


def export_checks(run_id: int, threshold: float) -> tuple[str, str | None, list[str]]:
    """For the Export page: which checkpoint made the test predictions, why they may be stale,
    and what is wrong with `threshold` (engine.export's own checks). The store is read once per
    state of the run (its predictions, labels, test images and test.csv), not per keystroke."""
    from engine.export import threshold_warnings

    url = db_url()
    with sessions()() as s:
        run = queries.get_run(s, run_id)
        version = _run_version(s, run_id)
        scores = _test_scores(url, run_id, (version, _test_version(s, run)))
        made_by, stale = _provenance(url, run_id, "test", version)
        labels = None if scores.refused else scores.called_ai(threshold).tolist()
        warnings = threshold_warnings(s, run, threshold, labels, val=labelled_val(run_id, version))
    return made_by, stale, warnings
