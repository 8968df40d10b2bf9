"""Map: a run's embeddings in 2-D (UMAP, or PCA without umap-learn; computed once, cached),
coloured by label, prediction, error, split or a file property; a lasso or box selection opens
exactly those images in Review."""
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import store, ui
from engine import metrics
from engine.thresholds import default_threshold

META = ["format", "jpeg_quality", "width", "height", "bytes", "mode", "subsampling", "progressive", "has_exif",
        "has_icc"]
COLOURS = ["label", "prediction", "error", "split", *META]
RIGHT_OR_WRONG = {"true positive": "right", "true negative": "right", "false positive": "wrong",
                  "false negative": "wrong", "unlabelled": "unlabelled"}


def colour_column(df: pd.DataFrame, by: str, threshold: float) -> pd.Series:
    if by == "label":
        return df["label"].map({1: "AI-generated", 0: "human-made"}).astype(object).fillna("unlabelled")
    if by == "prediction":
        return df["prob"]
    if by == "error":
        label = df["label"].to_numpy(dtype=float, na_value=np.nan)
        out = metrics.outcomes(label, df["prob"].to_numpy(dtype=float, na_value=np.nan), threshold)
        out = np.vectorize(RIGHT_OR_WRONG.get, otypes=[str])(out)
        return pd.Series(np.where(df["prob"].isna(), "no prediction", out), index=df.index)
    if by == "split":
        return df["role"]
    return df[by].astype(object).fillna("unknown") if df[by].dtype == object else df[by]


st.title("Embedding map")
runs = store.runs_by_id()
run = ui.pick_run(runs)
if run is None:
    st.stop()
if not store.has_embeddings(run.id):
    st.info(f"Run #{run.id} has no embeddings yet: `aivh embed --run {run.id}`.")
    st.stop()
line, stale = store.embeddings_source(run.id)
st.caption(line)
if stale:
    st.warning(stale)
if not store.map_ready(run.id):
    st.info("The 2-D map of these embeddings is not computed yet (once; UMAP, or PCA without umap-learn).")
    if st.button("Compute the map", type="primary"):
        with st.spinner("Projecting the embeddings to 2-D..."):
            store.compute_map(run.id)
        st.rerun()
    st.stop()
by = st.selectbox("Colour by", COLOURS, index=COLOURS.index(st.query_params.get("colour", "label"))
                  if st.query_params.get("colour") in COLOURS else 0)
st.query_params["colour"] = by
df, method = store.map_frame(run.id, by if by in META else None)
threshold = float(default_threshold(run)[0])
colour = colour_column(df, by, threshold)
size = 5 if len(df) < 5000 else 3
prob = df["prob"].map(lambda p: "no prediction" if np.isnan(p) else f"p(AI) {p:.3f}")
df = df.assign(hover=df["rel_path"] + "<br>" + df["role"].astype(str) + " · " + prob)
hover = "%{text}<extra></extra>"
fig = go.Figure()
trace_ids = []  # image ids of each trace's points: a selection names (trace, point index)
if pd.api.types.is_numeric_dtype(colour) and colour.nunique() > 12:  # a scale, one trace
    fig.add_trace(go.Scattergl(
        x=df["x"].to_numpy(), y=df["y"].to_numpy(), mode="markers", text=df["hover"].to_numpy(),
        hovertemplate=hover,
        marker={"size": size, "color": colour.to_numpy(dtype=float, na_value=np.nan), "colorscale": "Viridis",
                "showscale": True, "colorbar": {"title": by}}))
    trace_ids.append(df["image_id"].to_numpy())
else:  # categories, one trace each (webgl: 80,000 points stay fluid)
    for value in sorted(colour.astype(str).unique()):
        part = df[colour.astype(str).to_numpy() == value]
        fig.add_trace(go.Scattergl(
            x=part["x"].to_numpy(), y=part["y"].to_numpy(), mode="markers", name=value,
            text=part["hover"].to_numpy(), hovertemplate=hover, marker={"size": size}))
        trace_ids.append(part["image_id"].to_numpy())
fig.update_layout(dragmode="lasso", height=640, xaxis_title=f"{method} 1", yaxis_title=f"{method} 2",
                  legend_title_text=by)
st.caption(f"{len(df):,} images · {method.upper()} of run #{run.id}'s embeddings · threshold {threshold:.4g} "
           "for errors · draw a lasso (or a box) round points to open them in Review")
# the key names the colouring: another colouring is another set of traces, and a fresh selection
event = st.plotly_chart(fig, on_select="rerun", selection_mode=("lasso", "box"), key=f"map_{run.id}_{by}")
points = event.selection.points if event else []
chosen = sorted({int(trace_ids[p["curve_number"]][p["point_index"]]) for p in points
                 if p.get("curve_number", len(trace_ids)) < len(trace_ids)})
if chosen:
    st.write(f"{len(chosen):,} images selected")
    if st.button(f"Open the {len(chosen):,} selected in Review", type="primary"):
        ui.open_in_review(chosen, f"{len(chosen)} images lassoed on the map", run_id=run.id)
