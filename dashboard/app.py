"""aivh dashboard entry: builds the navigation only; each page is its own file under views/
(not pages/: Streamlit's older auto-discovery reads a pages/ folder and would show its own list)."""
import streamlit as st

from dashboard import ui

st.set_page_config(page_title="aivh", layout="wide")
# no page icons: a page's icon becomes the tab's favicon, so a Material Symbols icon
# (":material/...:") is fetched from fonts.gstatic.com, and an emoji draws as an empty box
# where the machine has no emoji font; without one the favicon is Streamlit's own, served here
ui.login_gate()  # only when secrets.toml has an [auth] section (a shared deployment)
pages = [
    st.Page("views/runs.py", title="Runs", default=True),
    st.Page("views/train.py", title="Train"),
    st.Page("views/evaluate.py", title="Evaluate"),
    st.Page("views/review.py", title="Review"),
    st.Page("views/shift.py", title="Shift"),
    st.Page("views/export.py", title="Export"),
    st.Page("views/duplicates.py", title="Duplicates"),
    st.Page("views/embedding_map.py", title="Map", url_path="map"),
    st.Page("views/sweep.py", title="Sweep"),
]
st.navigation(pages).run()
