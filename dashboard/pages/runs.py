"""Runs: what is in the store (the full review pages arrive with the dashboard issue)."""
import pandas as pd
import streamlit as st

from db import queries
from db.store import home, session_factory

st.title("aivh runs")
st.caption(f"store: {home()}")
with session_factory()() as s:
    datasets = {d.id: d.name for d in queries.list_datasets(s)}
    runs = queries.list_runs(s)
    rows = [{"run": r.id, "dataset": datasets.get(r.dataset_id), "status": r.status,
             "best epoch": r.best_epoch, "best threshold": r.best_threshold,
             "created": r.created_at} for r in runs]
if not datasets:
    st.info("The store is empty. Import a Kaggle-layout folder with `aivh import DATA_DIR`.")
elif not rows:
    st.info("No runs yet. Train one with `aivh train --dataset NAME`.")
else:
    st.dataframe(pd.DataFrame(rows), hide_index=True, use_container_width=True)
