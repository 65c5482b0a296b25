"""Finetune Dashboard: `streamlit run app.py`."""

from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="Finetune Dashboard", page_icon=":material/model_training:", layout="wide")

PAGES = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/data.py", title="Data", icon=":material/folder_open:"),
    st.Page("pages/setup.py", title="Setup", icon=":material/tune:"),
    st.Page("pages/training.py", title="Training", icon=":material/monitoring:"),
    st.Page("pages/evaluation.py", title="Evaluation", icon=":material/analytics:"),
    st.Page("pages/predict.py", title="Predict", icon=":material/image_search:"),
    st.Page("pages/runs.py", title="Runs", icon=":material/list:"),
]

st.navigation(PAGES).run()
