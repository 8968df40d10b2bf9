"""A run's results per slice of the data: image size, aspect ratio, format, JPEG quality.

On labelled images (validation) each slice gets F1, precision, recall and the share called
AI at a threshold; on the unlabelled test split only the share called AI. A slice where the
test's share differs from validation's is where the test is shifted. Pure numpy and pandas.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from engine import metrics

SIZE_EDGES = (0, 64, 256, 512, 1024, np.inf)  # short side, px
QUALITY_EDGES = (0, 60, 80, 90, 101)


def _bucket(values: np.ndarray, edges, names: list[str]) -> np.ndarray:
    out = np.full(len(values), "unknown", dtype=object)
    known = ~pd.isna(values)
    idx = np.digitize(values[known].astype(float), edges[1:-1], right=False)
    out[known] = np.array(names, dtype=object)[idx]
    return out


def slice_columns(meta: pd.DataFrame) -> pd.DataFrame:
    """The slice of each image per dimension, from its width, height, format and jpeg_quality."""
    w, h = meta["width"].to_numpy(dtype=float), meta["height"].to_numpy(dtype=float)
    short = np.minimum(w, h)
    aspect = w / h
    sizes = ["< 64 px", "64-255 px", "256-511 px", "512-1023 px", ">= 1024 px"]
    aspects = np.where(aspect < 0.9, "portrait", np.where(aspect > 1.1, "landscape", "square"))
    quality = _bucket(meta["jpeg_quality"].to_numpy(dtype=object), QUALITY_EDGES,
                      ["< 60", "60-79", "80-89", "90-100"])
    quality[meta["format"].to_numpy() != "JPEG"] = "not JPEG"
    return pd.DataFrame({"size (short side)": _bucket(short, SIZE_EDGES, sizes), "aspect": aspects,
                         "format": meta["format"].fillna("unknown").to_numpy(), "JPEG quality": quality},
                        index=meta.index)


def slice_table(val: pd.DataFrame, test: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """One row per (dimension, slice): validation n, F1, precision, recall and share called AI at
    `threshold` (val needs prob, label and the metadata columns), and the test's n and share
    called AI (test needs prob and the metadata columns; it may be empty)."""
    rows = []
    vs, ts = slice_columns(val), slice_columns(test) if len(test) else None
    for dim in vs.columns:
        names = sorted(set(vs[dim]) | (set(ts[dim]) if ts is not None else set()))
        for name in names:
            v = val[vs[dim] == name]
            y, prob = v["label"].to_numpy(dtype=float), v["prob"].to_numpy(dtype=float)
            row = {"dimension": dim, "slice": name, "val images": len(v)}
            if len(v):
                p, r = metrics.precision_recall(y, prob, threshold)
                row |= {"val F1": metrics.f1_at(y, prob, threshold), "val precision": p, "val recall": r,
                        "val called AI": float((prob >= threshold).mean())}
            t = test[ts[dim] == name] if ts is not None else test.iloc[0:0]
            row |= {"test images": len(t),
                    "test called AI": float((t["prob"].to_numpy(dtype=float) >= threshold).mean()) if len(t) else None}
            rows.append(row)
    return pd.DataFrame(rows)
