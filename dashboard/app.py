"""aivh dashboard entry: builds the navigation only; each page is its own file under views/
(not pages/: Streamlit's older auto-discovery reads a pages/ folder and would show its own list)."""
import streamlit as st

from dashboard import ui

st.set_page_config(page_title="aivh", layout="wide")
ui.login_gate()  # only when secrets.toml has an [auth] section (a shared deployment)
pages = [
    st.Page("views/runs.py", title="Runs", icon=":material/monitoring:", default=True),
    st.Page("views/train.py", title="Train", icon=":material/model_training:"),
    st.Page("views/evaluate.py", title="Evaluate", icon=":material/analytics:"),
    st.Page("views/review.py", title="Review", icon=":material/rate_review:"),
    st.Page("views/shift.py", title="Shift", icon=":material/compare_arrows:"),
    st.Page("views/export.py", title="Export", icon=":material/download:"),
    st.Page("views/duplicates.py", title="Duplicates", icon=":material/content_copy:"),
    st.Page("views/embedding_map.py", title="Map", icon=":material/scatter_plot:", url_path="map"),
    st.Page("views/sweep.py", title="Sweep", icon=":material/tune:"),
]
st.navigation(pages).run()
