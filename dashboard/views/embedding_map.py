"""Map: a run's embeddings in 2-D (UMAP, or PCA without umap-learn; computed once, cached),
coloured by label, prediction, error, split or a file property; a lasso or box selection opens
exactly those images in Review."""
import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from dashboard import store, ui
from engine.export import default_threshold

COLOURS = ["label", "prediction", "error", "split", "format", "jpeg_quality", "width", "height", "bytes",
           "mode", "subsampling", "progressive", "has_exif", "has_icc"]


def colour_column(df: pd.DataFrame, by: str, threshold: float) -> pd.Series:
    if by == "label":
        return df["label"].map({1: "AI-generated", 0: "human-made"}).astype(object).fillna("unlabelled")
    if by == "prediction":
        return df["prob"]
    if by == "error":
        called = (df["prob"] >= threshold).to_numpy()
        label = df["label"].to_numpy(dtype=float, na_value=np.nan)
        out = np.where(np.isnan(label), "unlabelled", np.where(called == (label == 1), "right", "wrong"))
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
if not store.map_ready(run.id):
    st.info("The 2-D map of these embeddings is not computed yet (once; UMAP, or PCA without umap-learn).")
    if st.button("Compute the map", type="primary"):
        with st.spinner("Projecting the embeddings to 2-D..."):
            store.compute_map(run.id)
        st.rerun()
    st.stop()
df, method = store.map_frame(run.id)
by = st.selectbox("Colour by", COLOURS, index=COLOURS.index(st.query_params.get("colour", "label"))
                  if st.query_params.get("colour") in COLOURS else 0)
st.query_params["colour"] = by
threshold = float(default_threshold(run)[0])
df = df.assign(colour=colour_column(df, by, threshold))
fig = px.scatter(df, x="x", y="y", color="colour", custom_data=["image_id"], hover_name="rel_path",
                 hover_data={"x": False, "y": False, "role": True, "prob": ":.3f", "colour": False},
                 render_mode="webgl", labels={"colour": by}, height=640)
fig.update_traces(marker={"size": 5 if len(df) < 5000 else 3})
fig.update_layout(dragmode="lasso", xaxis_title=f"{method} 1", yaxis_title=f"{method} 2")
st.caption(f"{len(df):,} images · {method.upper()} of run #{run.id}'s embeddings · threshold {threshold:.4g} "
           "for errors · draw a lasso (or a box) round points to open them in Review")
event = st.plotly_chart(fig, on_select="rerun", selection_mode=("lasso", "box"), key=f"map_{run.id}")
points = (event or {}).get("selection", {}).get("points", []) if event else []
chosen = sorted({int(p["customdata"][0]) for p in points if p.get("customdata")})
if chosen:
    st.write(f"{len(chosen):,} images selected")
    if st.button(f"Open the {len(chosen):,} selected in Review", type="primary"):
        ui.open_in_review(chosen, f"{len(chosen)} images lassoed on the map", run_id=run.id)
