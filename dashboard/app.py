"""aivh dashboard entry: builds the navigation only; each page is its own file under views/
(not pages/: Streamlit's older auto-discovery reads a pages/ folder and would show its own list)."""
import streamlit as st

from dashboard import ui

st.set_page_config(page_title="aivh", layout="wide")
# page icons are emoji: the page's icon becomes the tab's favicon, and a Material Symbols icon
# (":material/...:") would be fetched from fonts.gstatic.com; an emoji is drawn in the page
ui.login_gate()  # only when secrets.toml has an [auth] section (a shared deployment)
pages = [
    st.Page("views/runs.py", title="Runs", icon="📈", default=True),
    st.Page("views/train.py", title="Train", icon="🏋️"),
    st.Page("views/evaluate.py", title="Evaluate", icon="📊"),
    st.Page("views/review.py", title="Review", icon="🔍"),
    st.Page("views/shift.py", title="Shift", icon="↔️"),
    st.Page("views/export.py", title="Export", icon="📤"),
    st.Page("views/duplicates.py", title="Duplicates", icon="👯"),
    st.Page("views/embedding_map.py", title="Map", icon="🗺️", url_path="map"),
    st.Page("views/sweep.py", title="Sweep", icon="🎛️"),
]
st.navigation(pages).run()
