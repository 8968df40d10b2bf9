"""Shift: why a run may fail on the test set. File-property shortcuts, train/test shift, results
per slice, and robustness to re-encoding and resizing, each with what it means."""
import pandas as pd
import streamlit as st

from dashboard import store, ui
from dashboard.sections import robustness_ui, slices_ui
from engine.thresholds import default_threshold

OPEN_TEST_LIKE = 200  # the most test-like training images the page opens in Review


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
        if run_id is not None and shift["most_test_like"]:
            open_test_like_ui(dataset_id, run_id, shift["most_test_like"])


def open_test_like_ui(dataset_id: int, run_id: int, most_test_like: list[int]) -> None:
    """Open the most test-like training images in Review: all of them, in that order, and the
    button says how many, and how many have the run's prediction (its validation images, unless
    `aivh predict` did more); the others show "no prediction"."""
    frame = store.selection_frame(dataset_id, run_id, most_test_like[:OPEN_TEST_LIKE])
    ids = frame["image_id"].tolist()
    predicted = int(frame["prob"].notna().sum())
    if st.button(f"Open the {len(ids):,} most test-like training images in Review "
                 f"({predicted:,} with run #{run_id}'s prediction)"):
        ui.open_in_review(ids, "most test-like training images (file properties)", run_id=run_id)
    if predicted < len(ids):
        st.caption(f"{len(ids) - predicted:,} of them have no prediction by run #{run_id} and show none: "
                   f"`aivh predict --run {run_id} --split train` adds them.")


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
