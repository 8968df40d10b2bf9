"""Export: a Kaggle submission for a run at a threshold; past exports."""
import pandas as pd
import streamlit as st

from dashboard import store, ui
from engine.errors import ExportRefused
from engine.thresholds import default_threshold, fmt_threshold


def preview(run, threshold: float) -> list[int] | None:
    """The label each test image would get, in test.csv order (cached per state of the run's
    predictions, not per keystroke), or None with the reason shown."""
    scores = store.submission_scores(run.id)
    if scores.refused:
        st.error(scores.refused)
        return None
    return scores.called_ai(threshold).tolist()


def checks(run, threshold: float) -> tuple[str | None, list[str]]:
    """Which checkpoint made the test predictions (shown), why they may be stale, and what is
    wrong with the threshold."""
    made_by, stale, warnings = store.export_checks(run.id, threshold)
    st.caption(f"Made by: {made_by}")
    return stale, warnings


def history_ui() -> None:
    rows = [{"when": e.created_at, "run": e.run_id, "threshold": fmt_threshold(e.threshold), "rows": e.rows,
             "called AI": f"{e.positive_rate:.1%}", "path": e.path,
             "warnings": "; ".join(e.warnings or []), "override": e.override or ""}
            for e in store.exports()]
    st.subheader("Past exports")
    if rows:
        st.dataframe(pd.DataFrame(rows), hide_index=True)
    else:
        st.caption("None yet.")


st.title("Export a Kaggle submission")
runs = store.runs_by_id()
run = ui.pick_run(runs)
if run is not None:
    default, source = default_threshold(run)
    # the widget holds the exact value (0.99957 stays 0.99957); only its display is rounded
    threshold = st.number_input("Threshold", 0.0, 1.0, value=float(default), step=0.01,
                                format="%.6f", key=f"export_thr_{run.id}_{default!r}",  # a new default restarts it
                                help=f"default: {source.replace('_', ' ')}")
    st.caption(f"Threshold: {fmt_threshold(threshold)} (call AI-generated when p ≥ threshold)")
    rows = preview(run, threshold)
    if rows:
        positive = sum(rows) / len(rows)
        c1, c2 = st.columns(2)
        c1.metric("Rows", f"{len(rows):,}")
        c2.metric("Called AI-generated", f"{positive:.1%}")
        stale, warnings = checks(run, threshold)
        ready = True
        if stale:
            st.error(stale)
            ready = st.checkbox("Export anyway with these predictions (recorded with the export)",
                                key="export_stale")
        if source == "default":
            warnings.insert(0, f"the run has no threshold of its own ({run.threshold_note or 'validation stored none'}):"
                               f" {fmt_threshold(default)} is a guess")
        if warnings:
            st.warning(" · ".join(warnings))
            ready = st.checkbox("Export anyway at this threshold (the warning is recorded with the export)",
                                key="export_warned") and ready
        out = store.home() / "exports" / f"run{run.id}_t{fmt_threshold(threshold)}.csv"
        if st.button("Write submission", type="primary", disabled=not ready):
            try:
                result = store.export(run.id, out, threshold, allow_stale=bool(stale))
            except ExportRefused as e:
                st.error(str(e))
            else:
                st.session_state["last_export"] = result["path"]
                st.success(f"Wrote {result['rows']:,} rows to {result['path']}")
        last = st.session_state.get("last_export")
        if last and last == str(out.resolve()) and out.is_file():
            st.download_button("Download submission.csv", out.read_bytes(), file_name="submission.csv",
                               mime="text/csv")
    history_ui()
