"""Finetune Dashboard: `streamlit run app.py`."""

from __future__ import annotations

import hmac

import streamlit as st

from ui.services import get_job_manager, setting

st.set_page_config(
    page_title="Finetune Dashboard", page_icon=":material/model_training:", layout="wide"
)

PAGES = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/data.py", title="Data", icon=":material/folder_open:"),
    st.Page("pages/setup.py", title="Setup", icon=":material/tune:"),
    st.Page("pages/training.py", title="Training", icon=":material/monitoring:"),
    st.Page("pages/evaluation.py", title="Evaluation", icon=":material/analytics:"),
    st.Page("pages/predict.py", title="Predict", icon=":material/image_search:"),
    st.Page("pages/runs.py", title="Runs", icon=":material/list:"),
]


def password_gate() -> None:
    """When FINETUNE_PASSWORD is set (environment or secrets), ask for it once per session."""
    password = setting("FINETUNE_PASSWORD")
    if not password or st.session_state.get("authenticated"):
        return
    st.title("Finetune Dashboard")
    with st.form("login"):
        typed = st.text_input("Password", type="password")
        if st.form_submit_button("Sign in", type="primary"):
            if hmac.compare_digest(typed.encode(), password.encode()):
                st.session_state["authenticated"] = True
                st.rerun()
            st.error("Wrong password.")
    st.stop()


def job_badge() -> None:
    """Running and queued jobs of this server, on every page."""
    manager = get_job_manager()
    running = 1 if manager.running() else 0
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
            st.page_link("pages/training.py", label="Watch training", icon=":material/monitoring:")
        st.text_input(
            "Your name",
            key="user_name",
            placeholder="shown on your runs",
            help="Recorded as the creator of the datasets and runs you start.",
        )


password_gate()
navigation = st.navigation(PAGES)
job_badge()
navigation.run()
