"""What pages read: runs, datasets and the cached loaders, each keyed on the version of what it shows."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
from sqlalchemy.orm import Session

from dashboard.store.sessions import query, read
from db import evaluation, labelling, queries
from db.models import Dataset, Run
from db.store import db_url, home, run_dir  # noqa: F401 - home, run_dir: the folders pages show


def runs_by_id() -> dict[int, Run]:
    """Every run by id, oldest first, as stored (nothing is marked here: see ui.status_text)."""
    with read() as s:
        return {r.id: r for r in queries.list_runs(s)}


def dataset_names() -> dict[int, str]:
    with read() as s:
        return {d.id: d.name for d in queries.list_datasets(s)}


def dataset_root(dataset_id: int) -> str:
    with read() as s:
        return next(d.root for d in queries.list_datasets(s) if d.id == dataset_id)


def dataset_counts() -> list[tuple]:
    return query(queries.dataset_counts)


def epochs_for_runs(run_ids: list[int]) -> list:
    return query(queries.epochs_for_runs, run_ids)


def best_epochs(all_runs: dict[int, Run]) -> dict[int, object]:
    """run id -> the epoch row of its kept checkpoint (queries.best_epoch), for runs that have one."""
    with read() as s:
        found = {r.id: queries.best_epoch(s, r) for r in all_runs.values() if r.best_epoch is not None}
    return {i: e for i, e in found.items() if e is not None}


def run_with_epochs(run_id: int) -> tuple[Run, list]:
    with read() as s:
        return queries.get_run(s, run_id), queries.epochs(s, run_id)


def eval_set_names(dataset_id: int) -> list[str]:
    with read() as s:
        return [e.name for e in evaluation.list_eval_sets(s, dataset_id)]


def label_history(image_id: int) -> list:
    return query(labelling.label_history, image_id)


def exports() -> list:
    return query(queries.exports)


def audits() -> list:
    return query(evaluation.list_audits)


def run_key(s: Session, run_id: int) -> tuple:
    return (labelling.label_version(s), queries.predictions_version(s, run_id),
            queries.run_state(s.get(Run, run_id)))


def _test_key(s: Session, run: Run) -> tuple:
    """Test images of the run's dataset and test.csv on disk (size, mtime)."""
    from engine.kaggle import TEST_CSV

    try:
        st_ = (Path(s.get(Dataset, run.dataset_id).root) / TEST_CSV).stat()
        csv_state = (st_.st_size, st_.st_mtime_ns)
    except OSError:
        csv_state = None
    return queries.images_version(s, run.dataset_id, "test"), csv_state


def run_version(run_id: int) -> tuple:
    """The cache key of everything a page shows about a run: labels, predictions, run state."""
    with read() as s:
        return run_key(s, run_id)


@st.cache_data(max_entries=16, show_spinner=False)
def _prediction_frame(url: str, run_id: int, split: str, version: tuple) -> pd.DataFrame:
    with read(url) as s:
        rows = queries.prediction_rows(s, queries.get_run(s, run_id), split)
    df = pd.DataFrame(rows, columns=["image_id", "rel_path", "prob", "label", "reviews"])
    df["label"] = df["label"].astype("Int64")
    return df


def prediction_frame(run_id: int, split: str) -> pd.DataFrame:
    """A run's predictions on a split with current labels; cached on run_version."""
    return _prediction_frame(db_url(), run_id, split, run_version(run_id))


def image_sha1s(image_ids) -> dict[int, tuple[str | None, tuple[int | None, int | None]]]:
    """image id -> (sha1: the thumbnail's name, (bytes, mtime_ns) at import) for a page, one query."""
    ids = [int(i) for i in image_ids]
    if not ids:
        return {}
    with read() as s:
        return queries.thumbnail_keys(s, ids)


@dataclass(frozen=True)
class SubmissionScores:
    """A run's test predictions in test.csv order, or why a submission would be refused."""

    ids: tuple[str, ...]
    probs: np.ndarray
    refused: str | None = None

    def called_ai(self, threshold: float) -> np.ndarray:
        """0/1 per test image at `threshold`: the submission's labels (p >= threshold is AI)."""
        return (self.probs >= threshold).astype(int)


@st.cache_data(max_entries=8, show_spinner=False)
def _test_scores(url: str, run_id: int, version: tuple) -> SubmissionScores:
    from engine.errors import ExportRefused
    from engine.export import submission_rows

    with read(url) as s:
        run = queries.get_run(s, run_id)
        rows = queries.submission_probabilities(s, run)  # test.csv order, as submission_rows
        if not rows or any(p is None for _, p in rows):
            try:  # the engine's own refusal, in its words
                submission_rows(s, run, 0.5)
            except ExportRefused as e:
                return SubmissionScores((), np.zeros(0), str(e))
    return SubmissionScores(tuple(r for r, _ in rows), np.array([p for _, p in rows], dtype=float))


def submission_scores(run_id: int) -> SubmissionScores:
    """The submission's ids and probabilities, once per state: a typed threshold reads nothing."""
    with read() as s:
        run = queries.get_run(s, run_id)
        version = (run_key(s, run_id), _test_key(s, run))
    return _test_scores(db_url(), run_id, version)


@st.cache_data(max_entries=16, show_spinner=False)
def _compare(url: str, a: int, b: int, eval_set: str | None,
             version: tuple) -> tuple[dict | None, str | None]:
    from engine.compare import compare_runs as compare

    with read(url) as s:
        try:
            return compare(s, a, b, eval_set=eval_set), None
        except (ValueError, LookupError) as e:
            return None, str(e)


def compare_runs(a: int, b: int, *, eval_set: str | None = None) -> dict:
    """engine.compare.compare_runs once per state of both runs; ValueError (the engine's words) if refused."""
    with read() as s:
        sets = tuple(e.id for e in evaluation.list_eval_sets(s, queries.get_run(s, a).dataset_id))
        version = (run_key(s, a), queries.predictions_version(s, b), queries.run_state(s.get(Run, b)), sets)
    result, error = _compare(db_url(), a, b, eval_set, version)
    if error is not None:
        raise ValueError(error)
    return result


@st.cache_data(max_entries=8, show_spinner=False)
def _audit_frame(url: str, audit_id: int, version: tuple) -> pd.DataFrame:
    with read(url) as s:
        rows = evaluation.audit_rows(s, audit_id)
        fold_run = {i: r.id for r in evaluation.audit_runs(s, audit_id)
                    for i in queries.run_image_ids(s, r.id, "val")}
    df = pd.DataFrame(rows, columns=["rank", "image_id", "rel_path", "given_label", "prob", "quality",
                                     "flagged", "label", "reviews"])
    df["label"] = df["label"].astype("Int64")
    df["fold_run"] = df["image_id"].map(fold_run)
    return df


def audit_frame(audit_id: int) -> pd.DataFrame:
    """An audit's ranked images (worst first) with current labels; cached on its state."""
    with read() as s:
        audit = evaluation.get_audit(s, audit_id)
        version = (labelling.label_version(s), audit.status, audit.flagged,
                   tuple((r.id, r.status) for r in evaluation.audit_runs(s, audit_id)))
    return _audit_frame(db_url(), audit_id, version)


def labels_changed(dataset_id: int, before: int | None, after: int | None) -> int:
    """Images whose label differs between two label states (None after: now); cached on the ids."""
    with read() as s:
        after = after if after is not None else labelling.newest_label_id(s, dataset_id)
    return _labels_changed(db_url(), dataset_id, before, after)


@st.cache_data(max_entries=64, show_spinner=False)
def _labels_changed(url: str, dataset_id: int, before: int | None, after: int | None) -> int:
    """labelling.labels_changed's count (it reads only the images labelled between the states)."""
    with read(url) as s:
        return len(labelling.labels_changed(s, dataset_id, before, after))


@st.cache_data(max_entries=32, show_spinner=False)
def _provenance(url: str, run_id: int, split: str, version: tuple) -> tuple[str, str | None]:
    from engine.export import prediction_source, stale_problem

    with read(url) as s:
        run = queries.get_run(s, run_id)
        return prediction_source(s, run, split), stale_problem(s, run) if split == "test" else None


def provenance(run_id: int, split: str) -> tuple[str, str | None]:
    """Which checkpoint made the run's predictions on a split, and (test) why they may be stale."""
    return _provenance(db_url(), run_id, split, run_version(run_id))


def labelled_val(run_id: int, version: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probabilities) of the run's labelled validation images, from the cached frame."""
    df = _prediction_frame(db_url(), run_id, "val", version or run_version(run_id))
    df = df[df["label"].notna()]
    return df["label"].to_numpy(dtype=int), df["prob"].to_numpy(dtype=float)


def threshold_warnings(run_id: int, threshold: float, test_labels: list[int] | None) -> list[str]:
    """engine.export.threshold_warnings for the Evaluate page (validation from the cached frame)."""
    from engine.export import threshold_warnings as warn

    with read() as s:
        return warn(s, queries.get_run(s, run_id), threshold, test_labels, val=labelled_val(run_id))


def export_checks(run_id: int, threshold: float) -> tuple[str, str | None, list[str]]:
    """Export page: what made the test predictions, why stale, what is wrong with `threshold`
    (engine.export's checks), reading the store once per state of the run, not per keystroke."""
    from engine.export import threshold_warnings as warn

    url = db_url()
    with read(url) as s:
        run = queries.get_run(s, run_id)
        version = run_key(s, run_id)
        scores = _test_scores(url, run_id, (version, _test_key(s, run)))
        made_by, stale = _provenance(url, run_id, "test", version)
        labels = None if scores.refused else scores.called_ai(threshold).tolist()
        warnings = warn(s, run, threshold, labels, val=labelled_val(run_id, version))
    return made_by, stale, warnings
