"""Export: a Kaggle submission for a run at a threshold; past exports."""
import pandas as pd
import streamlit as st

from dashboard import common
from db import queries
from db.store import home
from engine.export import ExportRefused, default_threshold, export_run, submission_rows


def preview(run, threshold: float) -> list[tuple[str, int]] | None:
    with common.sessions()() as s:
        try:
            return submission_rows(s, queries.get_run(s, run.id), threshold)
        except ExportRefused as e:
            st.error(str(e))
            return None


def history_ui() -> None:
    with common.sessions()() as s:
        rows = [{"when": e.created_at, "run": e.run_id, "threshold": e.threshold, "rows": e.rows,
                 "called AI": f"{e.positive_rate:.1%}", "path": e.path} for e in queries.exports(s)]
    st.subheader("Past exports")
    if rows:
        st.dataframe(pd.DataFrame(rows), hide_index=True)
    else:
        st.caption("None yet.")


st.title("Export a Kaggle submission")
runs = common.runs_by_id()
run = common.pick_run(runs)
if run is not None:
    default, source = default_threshold(run)
    threshold = st.number_input("Threshold", 0.0, 1.0, value=round(float(default), 4), step=0.01,
                                format="%.4f", key=f"export_thr_{run.id}",
                                help=f"default: {source.replace('_', ' ')}")
    rows = preview(run, threshold)
    if rows:
        positive = sum(label for _, label in rows) / len(rows)
        c1, c2 = st.columns(2)
        c1.metric("Rows", f"{len(rows):,}")
        c2.metric("Called AI-generated", f"{positive:.1%}")
        out = home() / "exports" / f"run{run.id}_t{threshold:.4f}.csv"
        if st.button("Write submission", type="primary"):
            result = export_run(common.sessions(), run.id, out, threshold)
            st.session_state["last_export"] = result["path"]
            st.success(f"Wrote {result['rows']:,} rows to {result['path']}")
        last = st.session_state.get("last_export")
        if last and last == str(out.resolve()) and out.is_file():
            st.download_button("Download submission.csv", out.read_bytes(), file_name="submission.csv",
                               mime="text/csv")
    history_ui()
