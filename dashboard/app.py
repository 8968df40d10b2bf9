"""aivh dashboard entry: builds the navigation only; each page is its own file."""
import streamlit as st

st.set_page_config(page_title="aivh", layout="wide")
pages = [st.Page("pages/runs.py", title="Runs", default=True)]
st.navigation(pages).run()
