"""Shift: why a run may fail on the test set. File-property shortcuts, train/test shift, results
per slice, and robustness to re-encoding and resizing, each with what it means."""
import pandas as pd
import plotly.express as px
import streamlit as st

from dashboard import store, ui
from engine.export import default_threshold, fmt_threshold


def shortcuts_ui(dataset_id: int) -> None:
    report = store.shortcut_report(dataset_id)
    if "error" in report:
        st.warning(report["error"])
        return
    found, shift = report["shortcuts"], report["shift"]
    c1, c2 = st.columns(2)
    with c1:
        st.subheader("Shortcuts in the training labels")
        st.metric("label from file properties alone (AUC)", f"{found['metadata_auc']:.3f}")
        st.write(found["sentence"])
        st.dataframe(pd.DataFrame(found["features"]), hide_index=True)
    with c2:
        st.subheader("Train / test shift")
        st.metric("training vs test images, file properties (AUC)", f"{shift['auc']:.3f}")
        st.write(shift["sentence"] + " With a run's pooled features: `aivh shift --run RUN`.")
        st.dataframe(pd.DataFrame(shift["features"]), hide_index=True)


def slices_ui(run_id: int, threshold: float) -> None:
    st.subheader(f"Results per slice at threshold {fmt_threshold(threshold)}")
    st.write("On validation: F1, precision, recall and the share called AI per slice; on the "
             "unlabelled test split, the share called AI. A slice where the two shares differ is "
             "where the test set is shifted from what validation measured.")
    table = store.slices(run_id, threshold)
    st.dataframe(table, hide_index=True)
    long = table.melt(id_vars=["dimension", "slice"], value_vars=["val called AI", "test called AI"],
                      var_name="split", value_name="called AI").dropna()
    if len(long):
        fig = px.bar(long, x="slice", y="called AI", color="split", barmode="group", facet_col="dimension",
                     facet_col_wrap=2)
        fig.update_xaxes(matches=None)
        fig.update_layout(height=520, margin={"l": 10, "r": 10, "t": 40, "b": 10})
        st.plotly_chart(fig, key="slices")


def robustness_ui(run_id: int) -> None:
    st.subheader("Robustness")
    stored = store.robustness(run_id)
    if stored is None:
        st.info(f"Not measured yet: `aivh robustness --run {run_id}` re-scores validation after JPEG "
                "re-encoding, rescaling, cropping and a PNG round trip, and stores the rows here.")
        return
    rows = pd.DataFrame(stored["rows"])
    st.write("The run's validation F1, AUC and share called AI after each perturbation of both classes: "
             "a metric that falls under a perturbation the test set may carry (other JPEG quality, "
             "other sizes) is a score that will not hold there.")
    fig = px.bar(rows.melt(id_vars="perturbation", value_vars=["f1", "auc", "called_ai"]), x="perturbation",
                 y="value", color="variable", barmode="group")
    fig.update_layout(height=320, margin={"l": 10, "r": 10, "t": 10, "b": 10})
    st.plotly_chart(fig, key="robustness")
    st.dataframe(rows, hide_index=True)


st.title("Shift")
runs = store.runs_by_id()
names = store.dataset_names()
if not names:
    st.info("The store is empty. Import a dataset with `aivh import DATA_DIR` first.")
else:
    run = ui.pick_run(runs)
    if run is None:
        dataset_id = st.selectbox("Dataset", list(names), format_func=names.get)
        shortcuts_ui(dataset_id)
        st.info("Train a run (or a probe) to see its results per slice and its robustness.")
    else:
        shortcuts_ui(run.dataset_id)
        slices_ui(run.id, default_threshold(run)[0])
        robustness_ui(run.id)
