"""Runs: every run in the workspace; filter, sort, open, re-run, resume, rename, delete."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import pandas as pd
import streamlit as st

from finetune_core.auth import audit
from finetune_core.auth.access import (
    PermissionDenied,
    User,
    can_modify,
    can_start,
    guarded_delete_run,
    guarded_rename_run,
    guarded_resume,
    guarded_stop,
)
from finetune_core.config import RunConfig
from finetune_core.jobs.manager import JobError
from finetune_core.store import RunRecord, RunStatus, StoreError
from ui import setup_form as form
from ui.components import (
    STATUS_STYLE,
    esc,
    fmt_duration,
    fmt_when,
    pick_run,
    run_duration,
    status_badge,
    status_label,
)
from ui.lineage import continue_controls, lineage_caption
from ui.services import (
    current_user,
    get_job_manager,
    get_workspace,
    has_model,
    public,
    user,
    val_accuracy,
)

ws = get_workspace()
manager = get_job_manager()


SORTS = {  # label -> (key, descending)
    "Newest first": (lambda r: (r.created_at, r.id), True),
    "Best validation accuracy": (lambda r: val_accuracy(r) or -1.0, True),
    "Longest training": (lambda r: run_duration(r) or 0.0, True),
    "Name": (lambda r: (r.name or r.id).lower(), False),
}

COLUMNS = ["Status", "Name", "Open", "Dataset", "Model", "Strategy", "Val. acc.", "Epochs",
           "Duration", "Creator", "Created"]  # fmt: skip


def dataset_names() -> dict[str, str]:
    return {d.id: d.name for d in ws.list_datasets()}


def filtered_runs(runs: list[RunRecord], datasets: dict[str, str]) -> list[RunRecord]:
    """The runs that match the filters, in the chosen order."""

    def dataset_name(record: RunRecord) -> str:
        return datasets.get(record.dataset_id, "(deleted)")

    f1, f2, f3, f4 = st.columns(4)
    statuses = f1.multiselect(
        "Status", list(STATUS_STYLE), format_func=lambda s: STATUS_STYLE[s][0], key="runs_status"
    )
    chosen_datasets = f2.multiselect(
        "Dataset", sorted({dataset_name(r) for r in runs}), key="runs_ds"
    )
    models = f3.multiselect("Model", sorted({r.model for r in runs}), key="runs_model")
    sort = f4.selectbox("Sort by", list(SORTS), key="runs_sort")
    shown = [
        r
        for r in runs
        if (not statuses or r.status in statuses)
        and (not chosen_datasets or dataset_name(r) in chosen_datasets)
        and (not models or r.model in models)
    ]
    sort_key, descending = SORTS[sort]
    shown.sort(key=sort_key, reverse=descending)
    return shown


def opens_evaluation(record: RunRecord) -> bool:
    """A finished run with a model opens on its evaluation, any other on its training view."""
    return record.status not in RunStatus.ACTIVE and has_model(record.id)


def open_link(record: RunRecord) -> str:
    page = "evaluation" if opens_evaluation(record) else "training"
    return f"{page}?run={record.id}"


def on_row_select(shown: Sequence[RunRecord]) -> None:
    rows = (st.session_state.get("runs_table") or {}).get("selection", {}).get("rows", [])
    if rows and rows[0] < len(shown):
        st.session_state["runs_run"] = shown[rows[0]].id
        st.query_params["run"] = shown[rows[0]].id


def runs_table(shown: list[RunRecord], total: int, datasets: dict[str, str]) -> None:
    table = pd.DataFrame(
        [
            {
                "Status": status_label(r.status),
                "Name": r.name or "–",
                "Open": open_link(r),
                "Dataset": datasets.get(r.dataset_id, "(deleted)"),
                "Model": r.model,
                "Strategy": r.strategy,
                "Val. acc.": val_accuracy(r),
                "Epochs": r.epochs_run,
                "Duration": fmt_duration(run_duration(r)),
                "Creator": r.creator or "–",
                "Created": fmt_when(r.created_at),
            }
            for r in shown
        ],
        columns=COLUMNS,
    )
    st.caption(f"{len(shown)} of {total} run(s). Select a row to act on it.")
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        key="runs_table",
        on_select=partial(on_row_select, shown),
        selection_mode="single-row",
        column_config={
            "Status": st.column_config.TextColumn(width="small"),
            "Val. acc.": st.column_config.ProgressColumn(
                min_value=0.0,
                max_value=1.0,
                format="percent",
                width="small",
                help="Validation accuracy of the best epoch.",
            ),
            "Epochs": st.column_config.NumberColumn(width="small"),
            "Duration": st.column_config.TextColumn(width="small", help="Training time."),
            "Open": st.column_config.LinkColumn(
                display_text="Open",
                width="small",
                help="Open the run (evaluation or live view) in a new tab",
            ),
        },
    )


def run_actions(run: RunRecord, allowed: bool, why: str | None) -> None:
    """Open its pages, re-run, resume or cancel."""
    me = user()
    with st.container(horizontal=True):
        if opens_evaluation(run):
            st.page_link("views/evaluation.py", label="Evaluation", icon=":material/analytics:",
                         query_params={"run": run.id})  # fmt: skip
            st.page_link("views/predict.py", label="Predict", icon=":material/image_search:",
                         query_params={"run": run.id})  # fmt: skip
        st.page_link("views/training.py", label="Training view", icon=":material/monitoring:",
                     query_params={"run": run.id})  # fmt: skip
        if st.button("Re-run", icon=":material/replay:", key="runs_rerun",
                     disabled=not can_start(me),
                     help="Queue a new run with the same settings."):  # fmt: skip
            _rerun(run)
        if run.config and st.button("Change settings", icon=":material/tune:", key="runs_edit",
                                    disabled=not can_start(me),
                                    help="Open Setup with this run's settings and dataset."):  # fmt: skip
            form.open_in_setup(RunConfig.from_dict(run.config))
        if manager.can_resume(run) and st.button(
            "Resume", icon=":material/play_arrow:", key="runs_resume", disabled=not allowed,
            help=why or "Continue from the last checkpoint.",
        ):  # fmt: skip
            _resume(run, me)
        if run.status == RunStatus.QUEUED and st.button(
            "Cancel", icon=":material/cancel:", key="runs_cancel", disabled=not allowed, help=why
        ):
            _cancel(run, me)


def _rerun(run: RunRecord) -> None:
    try:
        new_id = manager.rerun(run.id, creator=current_user())
    except JobError as exc:
        st.error(esc(public(str(exc))))
    else:
        st.switch_page("views/training.py", query_params={"run": new_id})


def _resume(run: RunRecord, me: User) -> None:
    try:
        guarded_resume(manager, ws, me, run.id)
    except (JobError, PermissionDenied, StoreError) as exc:
        st.error(esc(public(str(exc))))
    else:
        st.switch_page("views/training.py", query_params={"run": run.id})


def _cancel(run: RunRecord, me: User) -> None:
    try:
        guarded_stop(manager, ws, me, run.id)
    except (PermissionDenied, StoreError) as exc:
        st.error(esc(public(str(exc))))
    else:
        st.rerun()


def rename_box(run: RunRecord, allowed: bool, why: str | None) -> None:
    new_name = st.text_input(
        "Name", value=run.name, key=f"runs_name_{run.id}", disabled=not allowed
    )
    if st.button("Rename", icon=":material/edit:", key="runs_rename", disabled=not allowed,
                 help=why):  # fmt: skip
        try:
            if not new_name.strip():
                raise StoreError("A run name cannot be empty.")
            guarded_rename_run(ws, user(), run.id, new_name)
        except (PermissionDenied, StoreError) as exc:
            st.error(esc(public(str(exc))))
        else:
            st.rerun()


def delete_box(run: RunRecord, allowed: bool, why: str | None) -> None:
    running = run.status == RunStatus.RUNNING or manager.is_active(run.id)
    confirm = st.checkbox(
        "Yes, delete this run, its model and its report",
        key=f"runs_delete_confirm_{run.id}",
        disabled=running or not allowed,
        help="Stop the run first." if running else why,
    )
    if st.button("Delete run", icon=":material/delete:", key="runs_delete",
                 disabled=not confirm or running or not allowed):  # fmt: skip
        try:
            if run.status == RunStatus.QUEUED:
                guarded_stop(manager, ws, user(), run.id)
            guarded_delete_run(ws, user(), run.id)
        except (PermissionDenied, StoreError) as exc:
            st.error(esc(public(str(exc))))
        else:
            st.session_state.pop("runs_run", None)
            st.query_params.pop("run", None)
            st.rerun()


def selected_run_section(shown: list[RunRecord]) -> None:
    st.subheader("Selected run")
    run = pick_run(shown, key="runs_run")
    assert run is not None
    allowed = can_modify(user(), run)
    why = (
        None if allowed else f"Only {run.creator or 'its creator'} or an admin can change this run."
    )
    with st.container(border=True):
        with st.container(horizontal=True, vertical_alignment="center"):
            st.markdown(f"**{esc(run.name or run.id)}**")
            status_badge(run.status)
            st.caption(f"by {esc(run.creator)}" if run.creator else "")
        lineage_caption(run)
        if run.error:
            st.caption(esc(public(run.error)))
        if run.from_cli:
            st.caption(f"Trained from the command line into {esc(public(run.folder))}")
        run_actions(run, allowed, why)
        continue_controls(run)
        left, right = st.columns(2, gap="medium")
        with left:
            rename_box(run, allowed, why)
        with right:
            delete_box(run, allowed, why)
        history_section(run)


def history_section(run: RunRecord) -> None:
    """The audit log's entries for this run, newest first."""
    log = audit.entries(ws, target_id=run.id, limit=100)
    with st.expander(f"History ({len(log)})", icon=":material/history:"):
        if not log:
            st.caption("Nothing recorded for this run yet.")
            return
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "When": fmt_when(e.time),
                        "Who": e.actor,
                        "Action": e.action,
                        "Detail": e.detail,
                    }
                    for e in log
                ],  # fmt: skip
                columns=["When", "Who", "Action", "Detail"],
            ),
            hide_index=True,
            width="stretch",
            key="runs_history",
        )


def main() -> None:
    st.title("Runs")
    runs = ws.list_runs()
    if not runs:
        st.info("No runs yet. Configure one on the Setup page.", icon=":material/info:")
        st.page_link("views/setup.py", label="Set up a run", icon=":material/tune:")
        st.stop()
    datasets = dataset_names()
    shown = filtered_runs(runs, datasets)
    runs_table(shown, len(runs), datasets)
    if not shown:
        st.info("No run matches the filters.")
        st.stop()
    selected_run_section(shown)


main()
