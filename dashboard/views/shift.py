"""Shift: why a run may fail on the test set. File-property shortcuts, train/test shift, results
per slice, and robustness to re-encoding and resizing, each with what it means."""
import pandas as pd
import streamlit as st

from dashboard import store, ui
from dashboard.sections import robustness_ui, slices_ui
from engine.thresholds import default_threshold


def shortcuts_ui(dataset_id: int, run_id: int | None = None) -> None:
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
        if run_id is not None and shift["most_test_like"] and st.button(
                "Open the run's 200 most test-like training images in Review"):
            # of the images the run predicted (its validation ones, unless it predicted more)
            frame = store.selection_frame(dataset_id, run_id, shift["most_test_like"])
            ids = frame.loc[frame["prob"].notna(), "image_id"].head(200).tolist()
            ui.open_in_review(ids, "most test-like training images (file properties)", run_id=run_id)


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
        shortcuts_ui(run.dataset_id, run.id)
        slices_ui(run.id, default_threshold(run)[0])
        robustness_ui(run.id)
