"""The Shift page's reports: file-property shortcuts, train/test shift, results per slice, stored robustness rows."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard.store.loaders import prediction_frame
from dashboard.store.sessions import read
from db import queries
from db.models import Dataset
from db.store import db_url


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
    return {"shortcuts": found, "shift": {"auc": shift.auc, "features": shift.features,
                                          "sentence": shortcuts.shift_sentence(shift)}}


def shortcut_report(dataset_id: int) -> dict:
    """`aivh shortcuts` and `aivh shift` (file properties only) for a dataset, cached on its images."""
    with read() as s:
        version = _images_key(s, dataset_id)
    return _shortcut_report(db_url(), dataset_id, version)


@st.cache_data(max_entries=8, show_spinner=False)
def _meta_frame(url: str, dataset_id: int, version: tuple) -> pd.DataFrame:
    with read(url) as s:
        rows = queries.image_meta(s, dataset_id)
    return pd.DataFrame(rows, columns=["image_id", "rel_path", "split", *queries.META_COLUMNS]).set_index("image_id")


def slices(run_id: int, threshold: float) -> pd.DataFrame:
    """engine.slices.slice_table of the run's validation and test predictions at `threshold`."""
    from engine.slices import slice_table

    with read() as s:
        dataset_id = queries.get_run(s, run_id).dataset_id
        version = _images_key(s, dataset_id)
    meta = _meta_frame(db_url(), dataset_id, version).drop(columns=["rel_path", "split"])
    val = prediction_frame(run_id, "val").join(meta, on="image_id").dropna(subset=["label"])
    test = prediction_frame(run_id, "test").join(meta, on="image_id")
    return slice_table(val, test, threshold)


def robustness(run_id: int, split: str = "val") -> dict | None:
    """The rows `aivh robustness` stored for the run, if it was run."""
    from engine.robustness import stored

    return stored(run_id, split)
