"""Training: live progress of a run, stop/cancel/resume, and the queue.

The page only reads: the job manager (one per server) owns the runs, so a refresh, a
closed tab or a second browser shows the same state. While the run is active a
fragment polls the manager's snapshot; when it ends, one full rerun shows the final
state and polling stops.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from finetune_core.auth.access import (
    PermissionDenied,
    can_modify,
    can_start,
    guarded_resume,
    guarded_stop,
)
from finetune_core.config import RunConfig
from finetune_core.device import device_info
from finetune_core.jobs.manager import JobError
from finetune_core.reporting import charts
from finetune_core.runs import RunPaths, read_log
from finetune_core.store import RunRecord, RunStatus, StoreError
from finetune_core.training.progress import Progress
from ui import setup_form as form
from ui.components import (
    Metric,
    error_box,
    esc,
    fmt_duration,
    fmt_pct,
    fmt_when,
    metric_row,
    pick_run,
    status_badge,
)
from ui.services import (
    current_user,
    get_job_manager,
    get_workspace,
    public,
    user,
    val_accuracy,
)

POLL_SECONDS = 2.0  # each viewer's refresh costs the training thread GIL time: keep it calm
LOG_LINES = 30
RUN_LOG_LINES = 500  # of run.log, shown once the run has ended

ws = get_workspace()
manager = get_job_manager()


def is_active(run_id: str) -> bool:
    record = ws.get_run(run_id)
    return manager.is_active(run_id) or (record is not None and record.status in RunStatus.ACTIVE)


def header(record: RunRecord) -> None:
    with st.container(horizontal=True, vertical_alignment="center"):
        st.subheader(esc(record.name or record.id), anchor=False)
        status_badge(record.status)
    dataset = ws.get_dataset(record.dataset_id)
    st.caption(
        f"{record.model} · {record.strategy} · dataset {esc(dataset.name) if dataset else '(deleted)'}"
        + (f" · started by {esc(record.creator)}" if record.creator else "")
        + f" · {fmt_when(record.created_at)} · "
        f"id `{record.id}`"
        + (f" · on {esc(record.device)}" if record.lease_owner and record.device else "")
    )


def progress_text(snap: Progress) -> str:
    if snap.status == RunStatus.QUEUED:
        return "Waiting in the queue"
    parts = [f"Epoch {snap.epoch} of {snap.epochs}" if snap.epochs else "Starting"]
    if snap.steps:
        parts.append(f"step {snap.step} of {snap.steps}")
    if snap.phase:
        parts.append(esc(snap.phase))
    return " · ".join(parts)


def live_numbers(snap: Progress, record: RunRecord, active: bool) -> None:
    best = (
        f"{snap.best_epoch} ({fmt_pct(snap.best_metric)})" if snap.best_epoch is not None else "–"
    )
    loss = f"{snap.train_loss:.4f}" if snap.train_loss is not None else "–"
    if not active:
        batch = snap.batch_size or (record.config or {}).get("batch_size", "–")
        metric_row(
            [
                Metric("Epochs run", f"{record.epochs_run} of {snap.epochs or record.epochs_run}"),
                Metric("Training time", fmt_duration(record.train_seconds or snap.elapsed_seconds)),
                Metric("Batch size", str(batch)),
                Metric("Best epoch", str(snap.best_epoch) if snap.best_epoch is not None else "–"),
                Metric("Best val. accuracy", fmt_pct(snap.best_metric)),
                Metric("Final train loss", loss),
            ],
            per_row=3,
        )
        return
    memory_label = "GPU memory" if on_gpu(record) else "Process memory"
    metric_row(
        [
            Metric("ETA", fmt_duration(snap.eta_seconds), help="Time left for all epochs."),
            Metric("Elapsed", fmt_duration(snap.elapsed_seconds)),
            Metric(
                "Images / s",
                f"{snap.images_per_second:,.0f}" if snap.images_per_second else "–",
            ),
            Metric(memory_label, f"{snap.memory_mb:,.0f} MB" if snap.memory_mb else "–"),
            Metric("Train loss", loss),
            Metric("Learning rate", f"{snap.lr:.2e}" if snap.lr else "–"),
            Metric("Best epoch (val acc.)", best),
            Metric(
                "Early-stop patience",
                "off"
                if not (record.config or {}).get("early_stopping", True)
                else str(snap.patience_left)
                if snap.patience_left is not None
                else "–",
                help="Epochs without improvement left before early stopping ends the run.",
            ),
        ],
        per_row=4,
    )


def on_gpu(record: RunRecord) -> bool:
    """Whether the run trains on a GPU (its memory figure is then GPU memory)."""
    device = (record.config or {}).get("device", "auto")
    if device.startswith("cuda"):
        return True
    return device == "auto" and device_info().kind == "cuda"


def controls(record: RunRecord, snap: Progress) -> None:
    me = user()
    allowed = can_modify(me, record)
    why = None if allowed else f"Only {record.creator or 'its creator'} or an admin can do this."
    with st.container(horizontal=True):
        if snap.status == RunStatus.QUEUED or record.status == RunStatus.QUEUED:
            if st.button("Cancel", icon=":material/cancel:", key="cancel_run", disabled=not allowed,
                         help=why or "Remove the run from the queue."):  # fmt: skip
                try:
                    guarded_stop(manager, ws, me, record.id)
                except (PermissionDenied, StoreError) as exc:
                    st.error(esc(str(exc)))
                else:
                    st.rerun(scope="app")
        elif record.status == RunStatus.RUNNING and st.button(
            "Stop",
            icon=":material/stop:",
            key="stop_run",
            disabled=not allowed,
            help=why or "Stop after the current batch; the best checkpoint so far is kept.",
        ):
            try:
                guarded_stop(manager, ws, me, record.id)
            except (PermissionDenied, StoreError) as exc:
                st.error(esc(str(exc)))
            else:
                st.toast("Stopping after the current batch; the best model is kept.")


@st.cache_resource(max_entries=32, show_spinner=False)
def shared_curves(run_id: str, epochs: int, best_epoch: int | None, _history: tuple):
    """The training curves, built once per finished epoch and shared by every session
    watching: a plotly figure takes ~0.1 s of the GIL, which the training thread needs."""
    return charts.training_curves(list(_history), best_epoch)


def live_view(run_id: str, was_active: bool) -> None:
    """The run's numbers, curves and log; a fragment that polls while the run is active."""
    record = ws.get_run(run_id)
    snap = manager.snapshot(run_id)
    if record is None or snap is None:
        st.warning("This run no longer exists.")
        return
    still_active = manager.is_active(run_id) or record.status in RunStatus.ACTIVE
    if was_active and not still_active:
        st.rerun(scope="app")  # one full rerun shows the final state and ends the polling
    if still_active:
        if snap.status == RunStatus.QUEUED:
            position = manager.queue_positions().get(run_id)
            st.info(
                f"Queued{f' at position {position}' if position else ''}: it starts when the "
                "runs before it finish.",
                icon=":material/schedule:",
            )
        elif record.status not in RunStatus.ACTIVE:
            st.info("Training finished; evaluating the model and writing the report…",
                    icon=":material/hourglass_top:")  # fmt: skip
        st.progress(snap.fraction, text=progress_text(snap))
        controls(record, snap)
    live_numbers(snap, record, still_active)
    st.plotly_chart(
        shared_curves(run_id, len(snap.history), snap.best_epoch, snap.history),
        key="training_curves",
    )
    # Once the run has ended, its own log file (kept across restarts) replaces the live lines.
    saved = [] if still_active else read_log(RunPaths(ws.run_dir(run_id)), last=RUN_LOG_LINES)
    lines = saved or list(snap.log[-LOG_LINES:])
    if lines:
        label = "Run log" if saved else "Log"
        with st.expander(label, expanded=still_active, icon=":material/notes:"):
            st.code(public("\n".join(lines)), language="text")


def final_state(record: RunRecord) -> None:
    """How a finished run ended, and what can be done with it next."""
    _outcome(record)
    _final_actions(record)


def _outcome(record: RunRecord) -> None:
    if record.status == RunStatus.SUCCEEDED:
        st.success(
            f"Finished: best validation accuracy {fmt_pct(val_accuracy(record))} at epoch "
            f"{record.best_epoch} of {record.epochs_run}, in {fmt_duration(record.train_seconds)}.",
            icon=":material/check_circle:",
        )
        if record.error:  # post-run step (evaluation/report) failed
            st.warning(esc(public(record.error)))
    elif record.status == RunStatus.FAILED:
        error_box(
            f"The run failed: {record.error or 'no reason was recorded.'}",
            details=record.traceback or None,
        )
        if manager.can_resume(record):
            st.caption("Its last saved epoch is kept: once the cause is fixed, it can resume.")
    elif record.status in RunStatus.RESUMABLE:
        reason = (record.error or "The run was stopped").strip().rstrip(".")
        st.info(
            f"{esc(public(reason[:1].upper() + reason[1:]))}. It can resume from its last checkpoint.",
            icon=":material/pause_circle:",
        )


def _final_actions(record: RunRecord) -> None:
    with st.container(horizontal=True):
        if record.status in (RunStatus.SUCCEEDED, RunStatus.STOPPED) or record.best_epoch:
            st.page_link(
                "views/evaluation.py",
                label="Open the evaluation",
                icon=":material/analytics:",
                query_params={"run": record.id},
            )
        if manager.can_resume(record) and st.button(
            "Resume",
            icon=":material/play_arrow:",
            key="resume_run",
            type="primary",
            disabled=not can_modify(user(), record),
        ):
            try:
                guarded_resume(manager, ws, user(), record.id)
            except (JobError, PermissionDenied, StoreError) as exc:
                st.error(esc(str(exc)))
            else:
                st.rerun()
        if st.button(
            "Re-run with the same settings",
            icon=":material/replay:",
            key="rerun_run",
            disabled=not can_start(user()),
        ):
            try:
                new_id = manager.rerun(record.id, creator=current_user())
            except JobError as exc:
                st.error(esc(str(exc)))
            else:
                # The run picker is drawn already: the URL selects the new run on the rerun.
                st.query_params["run"] = new_id
                st.rerun()
        if record.config and st.button(
            "Change settings and re-run",
            icon=":material/tune:",
            key="edit_run",
            disabled=not can_start(user()),
            help="Open Setup with this run's settings and dataset.",
        ):
            form.open_in_setup(RunConfig.from_dict(record.config))


def queue_table() -> None:
    """What trains on which device, and the line for each device."""
    rows = []
    for record in manager.active_runs():
        phase = "evaluating" if record.phase == "evaluating" else "training"
        rows.append({"Device": record.device or "–", "Position": phase, "Run": record.name,
                     "Model": record.model, "Started by": record.creator, "Id": record.id})  # fmt: skip
    for device, position, record in manager.queue_by_device():
        rows.append({"Device": device, "Position": str(position), "Run": record.name,
                     "Model": record.model, "Started by": record.creator, "Id": record.id})  # fmt: skip
    st.subheader("Queue")
    slots = ", ".join(f"{s.device}: {s.capacity} at once" for s in manager.slots())
    if rows:
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
        st.caption(
            f"Runs belong to the workspace: any server or worker on it trains them, each in its "
            f"own process, in the order they were started. Slots on this server: {slots}."
        )
    else:
        st.caption(f"Nothing is training or waiting. Slots on this server: {slots}.")
    if user().is_admin:
        st.page_link(
            "views/admin.py", label="Change the slots (Users page)", icon=":material/tune:"
        )


def pick_training_run() -> RunRecord:
    """The run to watch: the URL's, else the running one, else the newest."""
    runs = ws.list_runs()
    if not runs:
        st.info("No runs yet. Configure one on the Setup page.", icon=":material/info:")
        st.page_link("views/setup.py", label="Set up a run", icon=":material/tune:")
        st.stop()
    active_ids = [r.id for r in runs if r.status in RunStatus.ACTIVE]
    default = active_ids[0] if active_ids else runs[0].id
    run = pick_run(runs, key="training_run", default=default)
    assert run is not None
    return run


def live_section(run_id: str) -> None:
    active = is_active(run_id)
    st.fragment(run_every=POLL_SECONDS if active else None)(live_view)(run_id, active)


def main() -> None:
    st.title("Training")
    run = pick_training_run()
    header(run)
    if not is_active(run.id):
        final_state(ws.get_run(run.id) or run)
    live_section(run.id)
    queue_table()


main()
