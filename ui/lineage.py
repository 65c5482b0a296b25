"""Continue a run and start from another run, and the line saying where a run's
weights came from (the core is finetune_core.jobs.lineage)."""

from __future__ import annotations

import streamlit as st

from finetune_core.auth.access import can_start
from finetune_core.jobs import lineage
from finetune_core.jobs.manager import JobError
from finetune_core.store import RunRecord
from ui.components import esc, fmt_pct, run_label
from ui.services import (
    current_user,
    get_job_manager,
    get_workspace,
    has_model,
    public,
    user,
    val_accuracy,
)

MAX_MORE_EPOCHS = 10_000  # RunConfig's bound on epochs


def continue_controls(record: RunRecord) -> str | None:
    """ "More epochs" and Continue for a SUCCEEDED or STOPPED run with a model: queues a
    child run from its last checkpoint; returns the new run's id once queued (and shows
    it with a link to its training view), else None."""
    if record.status not in lineage.CONTINUABLE or not has_model(record.id):
        return None
    key = f"continue_{record.id}"
    default = int((record.config or {}).get("epochs") or 5)
    allowed = can_start(user())
    with st.container(horizontal=True, vertical_alignment="bottom"):
        epochs = st.number_input(
            "More epochs",
            min_value=1,
            max_value=MAX_MORE_EPOCHS,
            value=max(1, min(default, MAX_MORE_EPOCHS)),
            step=1,
            key=f"{key}_epochs",
            disabled=not allowed,
            help="Epochs of the new run, on a new learning-rate schedule.",
        )
        clicked = st.button(
            "Continue",
            icon=":material/fast_forward:",
            key=f"{key}_go",
            disabled=not allowed,
            help="Queue a new run that starts from this run's last checkpoint with the same "
            "settings; the history of both is shown as one.",
        )
    if clicked:
        try:
            st.session_state[f"{key}_queued"] = lineage.submit_continue(
                get_job_manager(), get_workspace(), record.id, int(epochs), creator=current_user()
            )
        except JobError as exc:
            st.error(esc(public(str(exc))))
            return None
    new_id = str(st.session_state.get(f"{key}_queued") or "")
    if not new_id:
        return None
    st.success(f"Queued {esc(new_id)}, which continues this run.", icon=":material/check:")
    st.page_link(
        "views/training.py",
        label="Open its training view",
        icon=":material/monitoring:",
        query_params={"run": new_id},
    )
    return new_id


def lineage_caption(record: RunRecord) -> None:
    """ "continues r-… (its last checkpoint, epoch 5)", "warm-started from r-…": nothing
    for a run that started from its configured weights."""
    text = lineage.describe(get_workspace(), record)
    if text:
        st.caption(f":material/account_tree: {esc(text)}")


def start_from_select(model: str, dataset_id: str, *, key: str = "start_from") -> str:
    """Pick a finished run of ``model`` trained on the same classes to initialise a new
    run from (its best weights); '' for the configured weights. Put the choice through
    ``lineage.warm_start_config`` (or ``submit_warm_start``) before queueing."""
    sources = lineage.warm_start_sources(get_workspace(), model, dataset_id)
    labels = {r.id: f"{run_label(r)} · val. {fmt_pct(val_accuracy(r))}" for r in sources}
    choice = st.selectbox(
        "Start from a run",
        ["", *labels],
        format_func=lambda rid: labels.get(rid, "No: start from the weights above"),
        key=key,
        help=f"Initialise the whole model from a finished {model} run on the same classes "
        "(its best checkpoint); the weights setting is then not used.",
    )
    return str(choice or "")
