"""Home: what the dashboard does, the workspace at a glance, and a one-click demo."""

from __future__ import annotations

import streamlit as st

from finetune_core.auth.access import can_start
from finetune_core.data import IngestError, create_demo_dataset
from finetune_core.data.demo import DEMO_PER_CLASS, DEMO_SPLIT
from finetune_core.data.split import quotas
from finetune_core.device import DeviceInfo, device_info
from finetune_core.jobs.manager import JobError
from finetune_core.presets import demo_config
from finetune_core.store import RunStatus
from ui.components import (
    Metric,
    error_box,
    fmt_pct,
    fmt_when,
    metric_row,
    status_badge,
)
from ui.services import (
    current_user,
    get_job_manager,
    get_workspace,
    imagenet_cached,
    user,
    val_accuracy,
)
from ui.setup_form import open_in_setup

ws = get_workspace()
manager = get_job_manager()


def intro() -> None:
    st.title("Finetune Dashboard")
    st.markdown(
        "Turn a folder of labelled images into a **fine-tuned image classifier** without "
        "writing code.  \nUpload your images and check their health, pick a pretrained model "
        "and a recipe, and watch it train live.  \nThen read an honest evaluation, try the "
        "model on new images and export it — every run stays in this workspace for the whole "
        "team."
    )


def workspace_numbers(info: DeviceInfo) -> None:
    """Datasets, runs, jobs and the training device at a glance."""
    counts = ws.counts()
    running = len(manager.active_runs())
    queued = len(manager.queue_positions())
    memory = f"{info.memory_gb:g} GB" if info.memory_gb else "unknown"
    metric_row(
        [
            Metric("Datasets", str(counts["datasets"])),
            Metric("Runs", str(counts["runs"])),
            Metric(
                "Training now",
                str(running),
                help="Runs train in their own processes; an admin sets how many at once per device (Training page).",
            ),
            Metric("Queued", str(queued)),
            Metric(
                "Device",
                "GPU" if info.kind == "cuda" else info.kind.upper(),
                help=f"{info.name}; memory {memory}; bf16 {'yes' if info.bf16 else 'no'}",
            ),
        ]
    )
    st.caption(
        f"Training runs on **{info.name}** · {'GPU' if info.kind == 'cuda' else 'system'} "
        f"memory {memory} · {info.cores} CPU cores · "
        f"bf16 {'supported' if info.bf16 else 'not supported'}"
    )


def start_demo(train: bool) -> None:
    """Create the demo dataset; then train a quick model, or open Setup with it."""
    with st.status("Preparing the demo dataset…", expanded=False) as status:
        try:
            dataset = create_demo_dataset(
                ws, per_class=DEMO_PER_CLASS, split=DEMO_SPLIT, creator=current_user()
            )
        except IngestError as exc:
            status.update(
                label="The demo dataset could not be created", state="error", expanded=True
            )
            error_box(str(exc), exc)
            return
        # The demo's settings never use weights that cannot load here: a probe on cached
        # ImageNet weights, else a small network from scratch (no download needed).
        config = demo_config(dataset.id, pretrained_available=imagenet_cached("resnet18"))
        if not train:
            status.update(label="Demo dataset ready", state="complete")
            open_in_setup(config)
        try:
            run_id = manager.submit(config, creator=current_user())
        except JobError as exc:
            status.update(label="The demo run could not start", state="error", expanded=True)
            error_box(str(exc), exc)
            return
        status.update(label="Demo run queued", state="complete")
    st.switch_page("views/training.py", query_params={"run": run_id})


def demo_card() -> None:
    st.subheader(":material/rocket_launch: Try it with the demo dataset")
    total = 3 * DEMO_PER_CLASS
    st.markdown(
        f"{total} small generated pictures of three shapes (circles, squares, triangles) on "
        "noisy backgrounds. One click creates the dataset and trains a small model — a minute "
        "or two on a CPU — and opens the live training view."
    )
    st.caption(
        f"{DEMO_SPLIT.val:.0%} of the pictures are for validation (choosing the best epoch) and "
        f"{DEMO_SPLIT.test:.0%} for the final test, {quotas(DEMO_PER_CLASS, DEMO_SPLIT)[0]} "
        "of each class in each. The two accuracies differ by a few points by chance; the "
        "test figure is the honest one, as the model was never chosen on it."
    )
    with st.container(horizontal=True):
        signed_in = can_start(user())
        if st.button(
            "Train a quick demo model",
            type="primary",
            icon=":material/bolt:",
            disabled=not signed_in,
        ):
            start_demo(train=True)
        if st.button(
            "Set up a run on the demo data", icon=":material/tune:", disabled=not signed_in
        ):
            start_demo(train=False)


def own_images_card() -> None:
    st.subheader(":material/photo_library: Use your own images")
    st.markdown(
        "1. **Data** — upload a zip or a folder with one sub-folder per class (or a CSV).\n"
        "2. **Setup** — choose a model and a recipe; *Quick* is a good first try.\n"
        "3. **Training** — watch the curves; close the tab whenever you like.\n"
        "4. **Evaluation** — confusion matrix, mistakes, report and export."
    )
    with st.container(horizontal=True):
        st.page_link("views/data.py", label="Add a dataset", icon=":material/upload:")
        st.page_link("views/runs.py", label="All runs", icon=":material/list:")


def recent_runs() -> None:
    st.subheader("Recent runs")
    recent = ws.list_runs(limit=5)
    if not recent:
        st.info("No runs yet. Start with the demo above, or add a dataset on the Data page.")
    for run in recent:
        with st.container(border=True, horizontal=True, vertical_alignment="center"):
            status_badge(run.status)
            st.text(run.name or run.id)
            st.caption(
                f"{run.model} · {run.strategy} · val accuracy {fmt_pct(val_accuracy(run))} "
                f"· {fmt_when(run.created_at)}"
            )
            target = (
                "views/training.py"
                if run.status in RunStatus.ACTIVE or run.status == RunStatus.FAILED
                else "views/evaluation.py"
            )
            st.page_link(
                target, label="Open", icon=":material/open_in_new:", query_params={"run": run.id}
            )


def main() -> None:
    intro()
    workspace_numbers(device_info())
    left, right = st.columns(2, gap="medium")
    with left, st.container(border=True, height="stretch"):
        demo_card()
    with right, st.container(border=True, height="stretch"):
        own_images_card()
    recent_runs()


main()
