"""The Shift page's reports: file-property shortcuts, train/test shift, results per slice, stored robustness rows."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard.store.loaders import prediction_frame, run_key
from dashboard.store.sessions import read
from db import labelling, queries
from db.models import Dataset
from db.store import db_url

MOST_TEST_LIKE = 5000  # training images kept in the report, most test-like first (the page opens the run's 200)


def _images_key(s, dataset_id: int) -> tuple:
    """Changes when the dataset's images do (added, re-probed): the key of everything below."""
    return tuple(queries.images_version(s, dataset_id, sp) for sp in ("train", "test"))


@st.cache_data(max_entries=8, show_spinner=False)
def _shortcut_report(url: str, dataset_id: int, version: tuple) -> dict:
    from engine import shortcuts

    with read(url) as s:
        name = s.get(Dataset, dataset_id).name
        try:
            found = shortcuts.audit_shortcuts(s, name)
            shift = shortcuts.measure_shift(s, dataset_id)
        except ValueError as e:  # headers never read, or no test images: said on the page
            return {"error": str(e)}
    order = sorted(range(len(shift.train_ids)), key=lambda i: -float(shift.test_likeness[i]))
    return {"shortcuts": found, "shift": {"auc": shift.auc, "features": shift.features,
                                          "sentence": shortcuts.shift_sentence(shift),
                                          "most_test_like": [int(shift.train_ids[i]) for i in order[:MOST_TEST_LIKE]]}}


def shortcut_report(dataset_id: int) -> dict:
    """`aivh shortcuts` and `aivh shift` (file properties only) for a dataset, cached on its images,
    on its labels (the shortcut audit predicts the current training labels) and on the train.csv
    groups recorded with them (the folds keep a group together; unrecorded ones are refused)."""
    with read() as s:
        version = (_images_key(s, dataset_id), labelling.newest_label_id(s, dataset_id),
                   queries.groups_version(s, dataset_id))
    return _shortcut_report(db_url(), dataset_id, version)


@st.cache_data(max_entries=8, show_spinner=False)
def _meta_frame(url: str, run_id: int, version: tuple) -> pd.DataFrame:
    """File properties of the images a slice table can count: the run's validation images and
    its dataset's test images (not the whole dataset: on 100,000 images, a third of a second)."""
    with read(url) as s:
        dataset_id = queries.get_run(s, run_id).dataset_id
        rows = (queries.image_meta(s, dataset_id, among=queries.role_images(run_id, "val"))
                + queries.image_meta(s, dataset_id, "test"))
    frame = pd.DataFrame(rows, columns=["image_id", "rel_path", "split", *queries.META_COLUMNS])
    return frame.set_index("image_id").drop(columns=["rel_path", "split"])


def _run_meta(run_id: int) -> pd.DataFrame:
    with read() as s:
        version = (run_key(s, run_id), _images_key(s, queries.get_run(s, run_id).dataset_id))
    return _meta_frame(db_url(), run_id, version)


def _with_meta(run_id: int, split: str, meta: pd.DataFrame) -> pd.DataFrame:
    frame = prediction_frame(run_id, split).join(meta, on="image_id")
    return frame.dropna(subset=["label"]) if split == "val" else frame


@st.cache_data(max_entries=32, show_spinner=False)
def _slices(url: str, run_id: int, threshold: float, version: tuple) -> pd.DataFrame:
    from engine.slices import slice_table

    meta = _run_meta(run_id)
    return slice_table(_with_meta(run_id, "val", meta), _with_meta(run_id, "test", meta), threshold)


def slices(run_id: int, threshold: float) -> pd.DataFrame:
    """engine.slices.slice_table of the run's validation and test predictions at `threshold`,
    cached on the run's labels, predictions and state and on its dataset's images."""
    with read() as s:
        version = (run_key(s, run_id), _images_key(s, queries.get_run(s, run_id).dataset_id))
    return _slices(db_url(), run_id, float(threshold), version)


def slice_ids(run_id: int, split: str, dimension: str, name: str) -> list[int]:
    """The image ids behind one bar of the slice chart: the run's predicted `split` images (val:
    labelled ones, as the table counts them) whose `dimension` is `name`."""
    from engine.slices import slice_columns

    frame = _with_meta(run_id, split, _run_meta(run_id))
    if frame.empty:
        return []
    return frame.loc[slice_columns(frame)[dimension] == name, "image_id"].astype(int).tolist()


def robustness(run_id: int, split: str = "val") -> dict | None:
    """The rows `aivh robustness` stored for the run, if it was run."""
    from engine.robustness import stored

    return stored(run_id, split)
