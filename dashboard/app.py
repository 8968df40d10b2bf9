"""aivh dashboard entry: builds the navigation only; each page is its own file."""
import streamlit as st

from dashboard import common

st.set_page_config(page_title="aivh", layout="wide")
common.login_gate()  # only when secrets.toml has an [auth] section (a shared deployment)
pages = [
    st.Page("pages/runs.py", title="Runs", icon=":material/monitoring:", default=True),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("pages/evaluate.py", title="Evaluate", icon=":material/analytics:"),
    st.Page("pages/review.py", title="Review", icon=":material/rate_review:"),
    st.Page("pages/export.py", title="Export", icon=":material/download:"),
]
st.navigation(pages).run()
