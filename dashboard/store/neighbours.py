"""The Duplicates and Map pages' door, and Review's "more like this": near copies, a run's
embeddings, its 2-D map, images of any split with labels and predictions, relabelling many.

Reads are cached on what changes them (labels, predictions, images, stored hashes, the embeddings
file); the writes are actions a page calls on a click: hashing the images that have no perceptual
hash yet, computing the map once, relabelling a selection in one transaction."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from dashboard.store.loaders import run_key
from dashboard.store.sessions import read, sessions_for, write
from db import labelling, queries
from db.models import Dataset
from db.store import db_url
from engine import embeddings

ROW_COLUMNS = ["image_id", "rel_path", "split", "prob", "label", "reviews"]


def _stamp(path) -> tuple | None:
    try:
        st_ = path.stat()
    except OSError:
        return None
    return st_.st_size, st_.st_mtime_ns


def _version(s, dataset_id: int, run_id: int | None) -> tuple:
    return (labelling.label_version(s), queries.images_version(s, dataset_id, "train"),
            queries.images_version(s, dataset_id, "test"),
            queries.predictions_version(s, run_id) if run_id is not None else None)


@st.cache_data(max_entries=8, show_spinner=False)
def _image_frame(url: str, dataset_id: int, run_id: int | None, version: tuple) -> pd.DataFrame:
    with read(url) as s:
        rows = queries.image_rows(s, dataset_id, run_id)
        roles = {}
        if run_id is not None:
            roles = {i: "train" for i in queries.run_image_ids(s, run_id, "train")}
            roles.update({i: "val" for i in queries.run_image_ids(s, run_id, "val")})
    df = pd.DataFrame(rows, columns=ROW_COLUMNS)
    df["label"] = df["label"].astype("Int64")
    df["prob"] = df["prob"].astype(float)
    role = df["image_id"].map(roles).astype(object)
    df["role"] = role.where(role.notna(), df["split"])  # train / val (the run's), else the split
    return df


def image_frame(dataset_id: int, run_id: int | None = None) -> pd.DataFrame:
    """Every readable image: ROW_COLUMNS and its role in the run (train / val / test); prob is
    NaN where the run made no prediction. Cached on labels, images, predictions."""
    with read() as s:
        version = _version(s, dataset_id, run_id)
    return _image_frame(db_url(), dataset_id, run_id, version)


@st.cache_data(max_entries=8, show_spinner=False)
def _meta_columns(url: str, dataset_id: int, version: tuple) -> pd.DataFrame:
    with read(url) as s:
        meta = queries.image_meta(s, dataset_id)
    m = pd.DataFrame(meta, columns=["image_id", "rel_path", "split", *queries.META_COLUMNS])
    return m.drop(columns=["rel_path", "split"]).set_index("image_id")


def meta_columns(dataset_id: int) -> pd.DataFrame:
    """Every readable image's file properties (queries.META_COLUMNS), indexed by image id."""
    with read() as s:
        version = _version(s, dataset_id, None)
    return _meta_columns(db_url(), dataset_id, version)


def selection_frame(dataset_id: int, run_id: int | None, image_ids) -> pd.DataFrame:
    """ROW_COLUMNS of exactly `image_ids` (what a page opened in Review) in the order given;
    ids that are not images of the dataset are left out (prob NaN: no prediction by the run)."""
    wanted = list(dict.fromkeys(int(i) for i in image_ids))
    df = image_frame(dataset_id, run_id).set_index("image_id")
    return df.reindex([i for i in wanted if i in df.index]).reset_index()[ROW_COLUMNS]


def unhashed(dataset_id: int) -> int:
    """Images with no stored perceptual hash yet (the Duplicates page offers to hash them)."""
    with read() as s:
        return queries.count_without_phash(s, dataset_id)


def hash_images(dataset_id: int) -> int:
    """Action: perceptual hashes of the images that have none, stored; how many were missing."""
    from pathlib import Path

    from engine.duplicates import ensure_phashes

    with write() as s:
        before = queries.count_without_phash(s, dataset_id)
        ensure_phashes(s, dataset_id, Path(s.get(Dataset, dataset_id).root), progress=False)
    return before


@st.cache_data(max_entries=8, show_spinner=False)
def _duplicates(url: str, dataset_id: int, run_id: int | None, max_bits: int, min_cosine: float,
                version: tuple) -> dict:
    from engine.duplicates import find_duplicates

    with read(url) as s:
        name = s.get(Dataset, dataset_id).name
    return find_duplicates(sessions_for(url), name, run_id, max_bits=max_bits, min_cosine=min_cosine,
                           progress=False, hash_missing=False)  # rendering reads; hash_images writes


def duplicates(dataset_id: int, run_id: int | None = None, *, max_bits: int | None = None,
               min_cosine: float | None = None) -> dict:
    """`aivh duplicates` for the page (call hash_images first: with every hash stored this only
    reads); cached on labels, images, stored hashes and the run's embeddings file."""
    from engine.duplicates import PHASH_MAX
    from engine.neighbours import COSINE_MIN

    with read() as s:
        version = (_version(s, dataset_id, run_id), queries.count_without_phash(s, dataset_id),
                   _stamp(embeddings.path(run_id)) if run_id is not None else None)
    return _duplicates(db_url(), dataset_id, run_id, PHASH_MAX if max_bits is None else int(max_bits),
                       COSINE_MIN if min_cosine is None else float(min_cosine), version)


def has_embeddings(run_id: int) -> bool:
    return embeddings.exists(run_id)


@st.cache_resource(max_entries=2, show_spinner=False)
def _embeddings(run_id: int, stamp: tuple) -> embeddings.Embeddings:
    return embeddings.load(run_id)


@st.cache_data(max_entries=16, show_spinner=False)
def _embeddings_source(url: str, run_id: int, version: tuple) -> tuple[str, str | None]:
    with read(url) as s:
        return embeddings.source_note(s, queries.get_run(s, run_id), embeddings.load(run_id))


def embeddings_source(run_id: int) -> tuple[str, str | None]:
    """engine.embeddings.source_note: which checkpoint the run's embeddings came from, and a
    warning when it is not the run's best now; cached on the run's state and the file."""
    with read() as s:
        version = (run_key(s, run_id), _stamp(embeddings.path(run_id)))
    return _embeddings_source(db_url(), run_id, version)


def run_embeddings(run_id: int) -> embeddings.Embeddings:
    """The run's embeddings, loaded once per version of the file (LookupError: none yet)."""
    return _embeddings(run_id, _stamp(embeddings.path(run_id)))


def more_like_this(dataset_id: int, run_id: int, image_id: int, k: int = 12) -> pd.DataFrame:
    """The k images nearest `image_id` in the run's embeddings (cosine), with their labels and the
    run's predictions, most similar first. LookupError: no embeddings, or none for this image."""
    from engine.neighbours import nearest

    near = nearest(run_embeddings(run_id), image_id, k)
    sims = pd.DataFrame(near, columns=["image_id", "similarity"])
    rows = selection_frame(dataset_id, run_id, sims["image_id"])
    return sims.merge(rows, on="image_id", how="left")


def map_ready(run_id: int) -> bool:
    """True when the run's 2-D map is cached for its current embeddings."""
    from engine.neighbours import MAP_FILE, embeddings_stamp

    file = embeddings.path(run_id).with_name(MAP_FILE)
    if not (file.is_file() and embeddings.exists(run_id)):
        return False
    with np.load(file, allow_pickle=False) as z:
        return str(z["source"]) == embeddings_stamp(run_id)


def compute_map(run_id: int) -> str:
    """Action: the run's 2-D map (UMAP, else PCA), written next to its embeddings; the method."""
    from engine.neighbours import embedding_map

    return embedding_map(run_id)[2]


@st.cache_data(max_entries=4, show_spinner=False)
def _map_points(run_id: int, stamp: tuple) -> tuple[pd.DataFrame, str]:
    from engine.neighbours import embedding_map

    ids, xy, method = embedding_map(run_id)
    return pd.DataFrame({"image_id": ids, "x": xy[:, 0], "y": xy[:, 1]}), method


def map_frame(run_id: int, meta: str | None = None) -> tuple[pd.DataFrame, str]:
    """The cached map's points joined with image_frame's columns (and the file property `meta`
    when asked for: read only then), and its method."""
    from engine.neighbours import MAP_FILE

    points, method = _map_points(run_id, _stamp(embeddings.path(run_id).with_name(MAP_FILE)))
    with read() as s:
        dataset_id = queries.get_run(s, run_id).dataset_id
    df = points.merge(image_frame(dataset_id, run_id), on="image_id", how="inner")
    if meta is not None:
        df[meta] = df["image_id"].map(meta_columns(dataset_id)[meta])
    return df, method


def relabel_many(dataset_id: int, image_ids, label: int, *, author: str, note: str | None = None) -> int:
    """Action: relabel every image of `image_ids` (of the dataset) to `label` in one transaction;
    how many changed (images already labelled so are left alone)."""
    changed = 0
    with write() as s:
        current = labelling.current_labels(s, dataset_id)
        for image_id in sorted({int(i) for i in image_ids}):
            if current.get(image_id) == label:
                continue
            labelling.relabel(s, image_id, label, author=author, note=note)
            changed += 1
    return changed
