"""Runs: datasets and runs, per-epoch curves, several runs compared on one chart and table."""
import pandas as pd
import plotly.express as px
import streamlit as st

from dashboard import common
from db import queries

CURVES = {"val_best_f1": "validation F1 (best threshold)", "val_f1": "validation F1 @ 0.5",
          "val_auc": "validation ROC AUC", "train_loss": "training loss", "val_loss": "validation loss",
          "lr": "learning rate", "images_per_s": "images / s"}


def datasets_ui() -> bool:
    with common.sessions()() as s:
        rows = queries.dataset_counts(s)
    if not rows:
        st.info("The store is empty. Import a Kaggle-layout folder with `aivh import DATA_DIR` "
                "or run `aivh demo`.")
        return False
    st.subheader("Datasets")
    st.dataframe(pd.DataFrame(rows, columns=["dataset", "root", "train images", "test images", "runs"]),
                 hide_index=True)
    return True


def runs_table(runs: dict) -> pd.DataFrame:
    names = common.dataset_names()
    with common.sessions()() as s:
        epochs = queries.epochs_for_runs(s, list(runs))
    best = {(e.run_id, e.epoch): e for e in epochs}
    rows = []
    for r in runs.values():
        b = best.get((r.id, r.best_epoch))
        cfg = r.config
        rows.append({"run": r.id, "dataset": names.get(r.dataset_id), "status": r.status,
                     "epochs": f"{sum(e.run_id == r.id for e in epochs)}/{cfg.get('epochs')}",
                     "img size": cfg.get("img_size"), "batch": cfg.get("batch_size"), "lr": cfg.get("lr"),
                     "labels as of": r.labels_as_of, "best epoch": r.best_epoch,
                     "val F1 (best thr.)": b.val_best_f1 if b else None,
                     "best thr.": r.best_threshold, "val AUC": b.val_auc if b else None,
                     "chosen thr.": r.chosen_threshold, "error": r.error or ""})
    return pd.DataFrame(rows)


def curves_ui(run_ids: list[int]) -> None:
    with common.sessions()() as s:
        epochs = queries.epochs_for_runs(s, run_ids)
    if not epochs:
        st.info("The selected runs have no finished epoch yet.")
        return
    df = pd.DataFrame([{**{k: getattr(e, k) for k in ("run_id", "epoch", *CURVES)}} for e in epochs])
    df["run"] = "#" + df["run_id"].astype(str)
    cols = st.columns(2)
    for i, (key, title) in enumerate(CURVES.items()):
        fig = px.line(df, x="epoch", y=key, color="run", markers=True, title=title)
        fig.update_layout(height=300, margin={"l": 10, "r": 10, "t": 40, "b": 10})
        cols[i % 2].plotly_chart(fig, key=f"curve_{key}")


st.title("Runs")
common.workspace_caption()
if datasets_ui():
    runs = common.runs_by_id()
    if not runs:
        st.info("No runs yet. Start one on the Train page or with `aivh train --dataset NAME`.")
    else:
        st.subheader("Runs")
        table = runs_table(runs)
        st.dataframe(table, hide_index=True)
        for r in runs.values():
            if r.status == "failed":
                st.error(f"Run #{r.id} failed: {r.error or 'no error recorded'}")
        st.subheader("Compare")
        default = [max(runs)]
        chosen = st.multiselect("Runs to compare", list(reversed(runs)), default=default,
                                format_func=lambda i: common.run_label(runs[i], common.dataset_names()))
        if chosen:
            st.dataframe(table[table["run"].isin(chosen)], hide_index=True)
            curves_ui(chosen)
