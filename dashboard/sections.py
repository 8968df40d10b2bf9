"""Page sections two pages show (Shift and Evaluate): a run's results per slice and its
robustness rows, each chart with a way to open the images behind a bar in Review."""
from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from dashboard import store, ui
from engine.thresholds import fmt_threshold

SPLIT_COLUMNS = {"val called AI": "val", "test called AI": "test"}


def _clicked(event, key: str) -> dict | None:
    """The first point a click on a chart newly selected (st.plotly_chart's on_select), if any.
    The chart keeps its selection across reruns: only a click not seen before counts, so a
    choice made in the select box afterwards stands."""
    try:
        points = event.selection.points
    except AttributeError:
        return None
    point = points[0] if points else None
    seen = f"{key}_last_click"
    if point == st.session_state.get(seen):
        return None
    st.session_state[seen] = point
    return point


def slices_ui(run_id: int, threshold: float, key: str = "slices") -> None:
    st.subheader(f"Results per slice at threshold {fmt_threshold(threshold)}")
    st.write("On validation: F1, precision, recall and the share called AI per slice; on the "
             "unlabelled test split, the share called AI. A slice where the two shares differ is "
             "where the test set is shifted from what validation measured. Click a bar, or pick a "
             "slice below, to open its images in Review.")
    table = store.slices(run_id, threshold)
    st.dataframe(table, hide_index=True)
    long = table.melt(id_vars=["dimension", "slice"], value_vars=list(SPLIT_COLUMNS),
                      var_name="split", value_name="called AI").dropna()
    if long.empty:
        return
    long["split"] = long["split"].map(SPLIT_COLUMNS)
    fig = px.bar(long, x="slice", y="called AI", color="split", barmode="group", facet_col="dimension",
                 facet_col_wrap=2, custom_data=["dimension", "split"])
    fig.update_xaxes(matches=None)
    fig.update_layout(height=520, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    event = st.plotly_chart(fig, key=f"{key}_chart", on_select="rerun", selection_mode="points")
    bars = {_bar_name(r.dimension, r.slice, r.split): (r.dimension, r.slice, r.split) for r in long.itertuples()}
    point = _clicked(event, key)
    if point and point.get("customdata"):
        dimension, split = point["customdata"][:2]
        clicked = _bar_name(dimension, point.get("x"), split)
        if clicked in bars:
            st.session_state[f"{key}_bar"] = clicked
    c1, c2 = st.columns([3, 1])
    name = c1.selectbox("Slice", list(bars), key=f"{key}_bar")
    if c2.button("Open in Review", key=f"{key}_open"):
        dimension, value, split = bars[name]
        ui.open_in_review(store.slice_ids(run_id, split, dimension, value), name, run_id=run_id)


def _bar_name(dimension: str, value, split: str) -> str:
    return f"{dimension}: {value} ({'validation' if split == 'val' else 'test'})"


def robustness_ui(run_id: int, key: str = "robustness") -> None:
    st.subheader("Robustness")
    stored = store.robustness(run_id)
    if stored is None:
        st.info(f"Not measured yet: `aivh robustness --run {run_id}` re-scores validation after JPEG "
                "re-encoding, rescaling, cropping and a PNG round trip, and stores the rows here.")
        return
    rows = pd.DataFrame(stored["rows"])
    st.write("The run's validation F1, AUC and share called AI after each perturbation of both classes: "
             "a metric that falls under a perturbation the test set may carry (other JPEG quality, "
             "other sizes) is a score that will not hold there. Click a bar, or pick a perturbation "
             "below, to open the images whose call it changed in Review.")
    fig = px.bar(rows.melt(id_vars="perturbation", value_vars=["f1", "auc", "called_ai"]), x="perturbation",
                 y="value", color="variable", barmode="group")
    fig.update_layout(height=320, margin={"l": 10, "r": 10, "t": 10, "b": 10})
    event = st.plotly_chart(fig, key=f"{key}_chart", on_select="rerun", selection_mode="points")
    st.dataframe(rows.drop(columns=["flipped_ids"], errors="ignore"), hide_index=True)
    if "flipped_ids" not in rows:  # measured before aivh kept the images behind each row
        st.caption(f"Run `aivh robustness --run {run_id}` again to open the images behind each bar.")
        return
    names = rows["perturbation"].tolist()
    point = _clicked(event, key)
    if point and point.get("x") in names:
        st.session_state[f"{key}_bar"] = point["x"]
    flipped = dict(zip(names, rows["flipped_ids"]))
    c1, c2 = st.columns([3, 1])
    name = c1.selectbox("Perturbation", names, key=f"{key}_bar",
                        format_func=lambda n: f"{n}: {len(flipped[n]):,} calls changed")
    if c2.button("Open in Review", key=f"{key}_open", disabled=not flipped[name]):
        ui.open_in_review(flipped[name], f"calls changed by {name}", run_id=run_id)
