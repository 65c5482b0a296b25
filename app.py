"""Finetune Dashboard: `streamlit run app.py`."""

from __future__ import annotations

import streamlit as st

from ui import upload_gate
from ui.auth import require_login, sidebar_user_box, signed_in
from ui.services import get_job_manager, require_workspace

st.set_page_config(page_title="Finetune Dashboard", page_icon="🧪", layout="wide")
require_workspace()  # a read-only or damaged workspace: one clear message, not a crash box

PAGES = [
    st.Page("views/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("views/data.py", title="Data", icon=":material/folder_open:"),
    st.Page("views/setup.py", title="Setup", icon=":material/tune:"),
    st.Page("views/training.py", title="Training", icon=":material/monitoring:"),
    st.Page("views/evaluation.py", title="Evaluation", icon=":material/analytics:"),
    st.Page("views/predict.py", title="Predict", icon=":material/image_search:"),
    st.Page("views/runs.py", title="Runs", icon=":material/list:"),
    st.Page("views/admin.py", title="Users", icon=":material/manage_accounts:"),
]


def job_badge() -> None:
    """Running and queued runs of the workspace, on every page."""
    manager = get_job_manager()
    running = len(manager.active_runs())
    queued = len(manager.queue_positions())
    with st.sidebar:
        st.caption("Jobs")
        with st.container(horizontal=True, gap="small"):
            if running or queued:
                if running:
                    st.badge(
                        f"{running} running", icon=":material/progress_activity:", color="blue"
                    )
                if queued:
                    st.badge(f"{queued} queued", icon=":material/schedule:", color="gray")
            else:
                st.badge("idle", icon=":material/check:", color="green")
        if running or queued:
            st.page_link("views/training.py", label="Watch training", icon=":material/monitoring:")


# Navigation is built before the sign-in gate so a shared link (/training?run=...) keeps
# its page through the sign-in; its menu stays hidden until someone is signed in.
upload_gate.install()  # no upload byte is kept for a session that has not signed in
allowed = signed_in()
navigation = st.navigation(PAGES, position="sidebar" if allowed else "hidden")
if not allowed:
    upload_gate.revoke_session()
user = require_login()  # stops here with a sign-in screen until someone is signed in
upload_gate.allow_session()
job_badge()
sidebar_user_box(user)
navigation.run()
