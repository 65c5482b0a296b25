"""Setup: dataset, model, weights, recipe and hyperparameters; then start the run."""

from __future__ import annotations

import io
import math

import pandas as pd
import streamlit as st

from finetune_core.auth.access import PermissionDenied, can_start
from finetune_core.auth.server_paths import BACKBONE_ADMINS_ONLY, check_config_paths
from finetune_core.config import (
    ConfigError,
    RunConfig,
)
from finetune_core.data import DatasetNotFound, load_dataset
from finetune_core.data.dataset import Dataset
from finetune_core.device import DeviceInfo, device_info
from finetune_core.jobs.manager import JobError
from finetune_core.jobs.records import cli_command
from finetune_core.models.classifier import WeightsError, estimate_train_seconds_per_image
from finetune_core.models.weights import download_imagenet_weights
from finetune_core.presets import PRESETS, PRESETS_BY_KEY
from finetune_core.reporting import charts
from finetune_core.reporting.gallery import augmentation_preview, preview_rows
from finetune_core.training.lr_finder import find_lr
from ui import setup_form as form
from ui.auth import access_settings
from ui.components import error_box, esc, fmt_duration, pick_dataset
from ui.services import (
    allow_custom_backbones,
    architectures,
    current_user,
    get_job_manager,
    get_workspace,
    public,
    user,
    weights_availability,
)
from ui.setup_form import FormProblems, bind, put, val

ws = get_workspace()
manager = get_job_manager()
WEIGHT_SOURCES = {
    "imagenet": "ImageNet pretrained",
    "none": "None (random initialisation)",
    "upload": "Upload a state_dict (.pt / .pth)",
    "custom": "Custom .pt2 backbone",
}


# ----------------------------------------------------------------------- dataset
def dataset_section() -> Dataset:
    """The dataset to train on (the page stops when there is none)."""
    records = ws.list_datasets()
    if not records:
        st.info(
            "There is no dataset to train on yet. Add one on the Data page, or start from the "
            "demo dataset on the Home page.",
            icon=":material/info:",
        )
        st.page_link("views/data.py", label="Add a dataset", icon=":material/upload:")
        st.stop()
    record = pick_dataset(records, key="setup_dataset")
    try:
        dataset = load_dataset(ws, record.id)
    except DatasetNotFound as exc:
        st.error(esc(public(str(exc))))
        st.stop()
    if dataset.health.blocks_training:
        st.error(
            "This dataset has errors that block training: "
            + esc(" ".join(f.message for f in dataset.health.errors))
            + " Fix them on the Data page.",
            icon=":material/block:",
        )
    return dataset


# ----------------------------------------------------------------------- recipe
def recipe_section() -> None:
    st.subheader("Recipe")
    st.segmented_control(
        "Strategy preset",
        [p.key for p in PRESETS],
        format_func=lambda k: PRESETS_BY_KEY[k].title,
        key="setup_preset",
        on_change=form.on_preset_change,
        help="A starting point: it sets the strategy, epochs, learning rate and augmentation. "
        "Every value stays editable below.",
    )
    current = st.session_state.get("setup_preset")
    if current in PRESETS_BY_KEY:
        st.caption(PRESETS_BY_KEY[current].summary)
    else:
        st.caption("Custom settings (no preset matches them exactly).")


# ----------------------------------------------------------------------- model
def model_table(info: DeviceInfo, train_count: int) -> None:
    """The architecture zoo with an epoch-time estimate for this dataset and device."""
    image_size = val("image_size")

    def epoch_seconds(arch: str) -> float | None:
        per_image = estimate_train_seconds_per_image(arch, image_size, info.kind)
        return None if math.isnan(per_image) else per_image * train_count

    table = pd.DataFrame(
        [
            {
                "Model": a.name,
                "Parameters (M)": a.params / 1e6,
                "ImageNet top-1 %": a.imagenet_top1,
                "Native input": f"{a.input_size} px",
                "GFLOPs": a.gflops,
                "ImageNet weights": "cached" if a.cached else "not cached",
                "Est. time / epoch": fmt_duration(epoch_seconds(a.name)),
            }
            for a in architectures()
        ]
    )
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        column_config={
            "Parameters (M)": st.column_config.NumberColumn(format="%.1f"),
            "ImageNet top-1 %": st.column_config.NumberColumn(format="%.1f"),
            "GFLOPs": st.column_config.NumberColumn(format="%.2f"),
            "ImageNet weights": st.column_config.TextColumn(
                help="Cached: on this server. Not cached: a run downloads them when it starts, "
                "where this server can reach the internet (the chosen model is checked below)."
            ),
            "Est. time / epoch": st.column_config.TextColumn(
                help=f"Training every layer on {train_count} images at {image_size} px on "
                f"this {info.kind.upper()}; a linear probe is much faster after its first epoch."
            ),
        },
    )


def weights_source() -> str:
    """Where the weights come from: imagenet, none, upload or custom."""
    custom = allow_custom_backbones() and user().is_admin  # the core checks it again at Start
    options = ["imagenet", "none", "upload"] + (["custom"] if custom else [])
    if val("weights_source") not in options:
        put("weights_source", "imagenet")
    source = st.radio(
        "Weights",
        options,
        format_func=WEIGHT_SOURCES.get,
        **bind("weights_source"),
        help="Pretrained ImageNet weights make small datasets work. 'None' trains from "
        "scratch. A state_dict continues from your own checkpoint of the same architecture.",
    )
    if allow_custom_backbones() and not custom:
        st.caption(BACKBONE_ADMINS_ONLY)
    elif not allow_custom_backbones():
        st.caption(
            "Custom `.pt2` backbones are off; an administrator can allow them with "
            "`FINETUNE_ALLOW_CUSTOM_BACKBONES=1`."
        )
    return source


def architecture_picker(source: str) -> None:
    if source == "custom":
        put("model", "custom")
        st.selectbox("Architecture", ["custom"], disabled=True, key="cfg_model_custom")
        return
    names = [a.name for a in architectures()]
    if val("model") not in names:
        put("model", form.DEFAULTS.model)
    st.selectbox(
        "Architecture",
        names,
        **bind("model"),
        help="Bigger models are more accurate on ImageNet and slower; resnet18, "
        "mobilenet_v3 and efficientnet_b0 suit CPUs.",
    )


def imagenet_weights_status(model_name: str) -> str | None:
    """Whether the ImageNet weights are on this server, can be downloaded (a button to do
    it now), or neither: then the problem that keeps Start disabled."""
    arch = next((a for a in architectures() if a.name == model_name), None)
    if arch is None:
        return None
    if arch.cached:
        st.success(f"ImageNet weights for {model_name} are cached on this server.",
                   icon=":material/check_circle:")  # fmt: skip
        return None
    available = weights_availability(model_name)
    if not available.loads:
        return public(available.message())
    size = f" ({arch.file_size_mb:.0f} MB)" if arch.file_size_mb else ""
    st.warning(
        f"The ImageNet weights for {model_name}{size} are not on this server yet; the "
        "run downloads them when it starts (this needs internet access).",
        icon=":material/cloud_download:",
    )
    if not st.button("Download them now", icon=":material/download:", key="weights_download"):
        return None
    bar = st.progress(0.0, text="Downloading…")

    def on_bytes(done: int, total: int) -> None:
        if total:
            bar.progress(min(1.0, done / total), text=f"{done / 2**20:.0f} MB")

    try:
        download_imagenet_weights(model_name, on_bytes)
    except WeightsError as exc:
        st.error(esc(public(str(exc))))
    else:
        architectures.clear()
        st.rerun()
    return None


def model_section(info: DeviceInfo, train_count: int) -> tuple[str, str | None, str | None]:
    """The architecture and its weights: (weights source, weights value or None while an
    upload is missing, why these weights cannot load here or None)."""
    st.subheader("Model")
    model_table(info, train_count)
    model_col, weights_col = st.columns(2, gap="medium")
    with weights_col:
        source = weights_source()
    with model_col:
        architecture_picker(source)
    with weights_col:
        if source == "imagenet":
            return source, source, imagenet_weights_status(val("model"))
        if source == "none":
            return source, source, None
        if source == "upload":
            return source, form.weights_upload("upload", (".pt", ".pth")), None
        return source, form.weights_upload("custom", (".pt2",)), None


# ----------------------------------------------------------------------- settings
def training_section(problems: FormProblems) -> None:
    st.subheader("Training")
    c1, c2, c3, c4 = st.columns(4)
    with c1:
        problems.number("Epochs", "epochs",
                        help="Passes over the training images. Early stopping may end the "
                        "run sooner.")  # fmt: skip
    with c2:
        problems.number("Image size (px)", "image_size", step=16,
                        help="Images are resized and centre-cropped to this square. 224 "
                        "matches ImageNet; smaller is much faster on a CPU.")  # fmt: skip
    with c3:
        problems.number("Batch size", "batch_size",
                        disabled=val("batch_auto"),
                        help="Images per step. Larger is faster on a GPU until memory runs "
                        "out.")  # fmt: skip
        st.checkbox("Largest that fits (auto)", **bind("batch_auto"),
                    help="Probe the device memory and pick the largest batch that fits.")  # fmt: skip
    with c4:
        problems.number("Learning rate", "lr", step=1e-4,
                        format="%.2e", help="The peak learning rate. The LR finder below "
                        "suggests one for your data.")  # fmt: skip


def config_upload() -> None:
    """Load every setting from a config JSON (applied on the rerun, before the widgets)."""
    loaded = st.file_uploader("Load settings from a config JSON", type=["json"],
                              key="config_upload")  # fmt: skip
    if loaded is None or st.session_state.get("config_loaded") == loaded.file_id:
        return
    try:  # refused here, while the file is shown, when the form could not show it exactly
        uploaded = form.loadable(RunConfig.from_json(loaded.getvalue().decode("utf-8", "replace")))
    except ConfigError as exc:
        st.error(form.problem_list(str(exc)), icon=":material/error:")
        return
    st.session_state["config_loaded"] = loaded.file_id
    form.queue_config(uploaded)
    st.rerun()


def advanced_section(problems: FormProblems, start_runs: list) -> None:
    with st.expander("Advanced settings", icon=":material/settings:"):
        a1, a2, a3 = st.columns(3)
        with a1:
            form.layers_column(problems)
        with a2:
            form.optimizer_column(problems)
        with a3:
            form.run_column(problems)
        form.start_from_picker(problems, start_runs)
        n1, n2 = st.columns([1, 2])
        n1.text_input("Run name", **bind("name"),
                      placeholder=f"{val('model')} {val('strategy')}")  # fmt: skip
        n2.text_input("Notes", **bind("notes"), placeholder="what you are trying")
        config_upload()


# ----------------------------------------------------------------------- preview
@st.cache_data(max_entries=32, show_spinner=False)
def cached_preview(dataset_id: str, preset: str, size: int, seed: int) -> list[list[bytes]]:
    """PNG bytes per image: the original, then four augmented views."""
    ds = load_dataset(ws, dataset_id)
    rows = preview_rows(ds, per_class=1, limit=4)
    out = []
    for images in augmentation_preview([ds.image_path(r) for r in rows], preset, size, 4, seed):
        encoded = []
        for image in images:
            buffer = io.BytesIO()
            image.save(buffer, "PNG")
            encoded.append(buffer.getvalue())
        out.append(encoded)
    return out


def preview_section(dataset: Dataset, config: RunConfig) -> None:
    st.subheader("Augmentation preview")
    st.caption(
        f"Your own training images at {config.image_size} px, as the '{config.augmentation}' "
        "augmentation shows them to the model: the original, then four random versions."
    )
    seed = st.session_state.setdefault("preview_seed", 0)
    grid = cached_preview(dataset.id, config.augmentation, min(config.image_size, 160), seed)
    if not grid:
        st.info("No readable training images to preview.")
        return
    with st.container(horizontal=True, gap="medium"):
        for images in grid:
            with st.container(border=True, horizontal=True, gap="xsmall", width="content"):
                for i, data in enumerate(images):
                    st.image(data, caption="original" if i == 0 else f"view {i}", width=96)
    if st.button("Show other random versions", icon=":material/shuffle:", key="preview_shuffle"):
        st.session_state["preview_seed"] = seed + 1
        st.rerun()


# ----------------------------------------------------------------------- LR finder
def run_lr_finder(dataset: Dataset, config: RunConfig, finder_key: tuple) -> None:
    with st.status("Running the learning-rate finder…", expanded=True) as status:
        bar = st.progress(0.0, text="Preparing the data and the model")

        def on_step(step: int, total: int) -> None:
            bar.progress(step / total, text=f"Step {step} of {total}")

        try:
            result = find_lr(config, dataset, ws.cache_dir, progress=on_step)
        except Exception as exc:  # weights missing offline, out of memory ...
            status.update(label="The learning-rate finder failed", state="error", expanded=True)
            error_box(f"The learning-rate finder failed: {exc}", exc)
        else:
            st.session_state["lr_finder"] = {"key": finder_key, "result": result}
            status.update(label="Learning-rate finder finished", state="complete", expanded=False)


def lr_finder_section(dataset: Dataset, config: RunConfig, problems: FormProblems) -> None:
    st.subheader("Learning-rate finder")
    st.caption(
        "Trains for a few dozen mini-batches while raising the learning rate from 1e-7 to 10 "
        "and plots the loss; the suggestion is where it falls fastest."
    )
    finder_key = (dataset.id, config.model, config.weights, config.strategy, config.image_size)
    if st.button(
        "Find a learning rate",
        icon=":material/search:",
        key="lr_find",
        disabled=bool(problems) or dataset.health.blocks_training,
    ):
        run_lr_finder(dataset, config, finder_key)
    found = st.session_state.get("lr_finder")
    if not found:
        return
    result = found["result"]
    if found["key"] != finder_key:
        st.caption("These results are for earlier settings; run the finder again to update them.")
    st.plotly_chart(
        charts.lr_finder_curve(result.lrs, result.losses, result.suggested), key="lr_plot"
    )
    if result.suggested:
        st.button(
            f"Use the suggested learning rate ({result.suggested:.1e})",
            icon=":material/check:",
            key="lr_use",
            on_click=form.set_lr,
            args=(result.suggested,),
        )
    if result.suggested and result.suggested < 1e-5:
        st.warning(
            "The loss hardly fell before it rose, so this suggestion is unreliable (common "
            "without pretrained weights or with very few images). Keep the preset's rate.",
            icon=":material/warning:",
        )
    if result.note:
        st.caption(result.note)


# ----------------------------------------------------------------------- start
def time_estimate(config: RunConfig, info: DeviceInfo, train_count: int) -> None:
    if config.model not in {a.name for a in architectures()}:
        return
    per_image = estimate_train_seconds_per_image(config.model, config.image_size, info.kind)
    if not per_image or math.isnan(per_image):
        return
    factor = 0.3 if config.strategy == "probe" else 1.0
    estimate = per_image * train_count * config.epochs * factor
    st.caption(
        f"{train_count:,} training images × {config.epochs} epochs on {esc(info.name)}: roughly "
        f"{fmt_duration(estimate)} (a rough estimate; the live view shows the real ETA)."
    )


def start_section(
    dataset: Dataset, config: RunConfig, problems: FormProblems, info: DeviceInfo
) -> None:
    st.subheader("Start")
    for problem in problems.unshown():
        st.error(problem, icon=":material/error:")
    if problems and not problems.unshown():
        st.caption("Fix the settings marked in red above (some may be in Advanced settings).")
    time_estimate(config, info, len(dataset.rows("train")))
    with st.expander("Equivalent command line and config file", icon=":material/terminal:"):
        st.code(public(cli_command(config)), language="bash", wrap_lines=True)
        file_name = f"{config.name or config.model}-config.json"
        st.download_button(
            "Download config (JSON)",
            config.to_json(),
            file_name=file_name.replace(" ", "_").replace("/", "_"),
            mime="application/json",
            icon=":material/download:",
        )
    if not can_start(user()):
        st.info("Sign in to start runs.", icon=":material/lock:")
    auto_resume = st.checkbox(
        "Resume by itself if interrupted",
        value=True,
        key="setup_auto_resume",
        help="If the run's process dies without a result (the machine restarted), the run "
        "is queued again and continues from its last checkpoint.",
    )
    if st.button(
        "Start training",
        type="primary",
        icon=":material/play_arrow:",
        key="start",
        disabled=bool(problems) or dataset.health.blocks_training or not can_start(user()),
    ):
        try:  # files named in the config: the core's rule (admin-only server paths, backbones)
            check_config_paths(access_settings(), user(), config, get_workspace())
            run_id = manager.submit(config, creator=current_user(), auto_resume=auto_resume)
        except PermissionDenied as exc:
            st.error(esc(public(str(exc))), icon=":material/lock:")
        except JobError as exc:
            error_box(str(exc))
        else:
            form.started()
            st.switch_page("views/training.py", query_params={"run": run_id})


def main() -> None:
    st.title("Setup")
    form.start()
    if refused := st.session_state.pop("setup_load_error", None):
        st.error(form.problem_list(refused), icon=":material/error:")
    for note in st.session_state.pop("setup_load_notes", []):
        st.warning(esc(note), icon=":material/info:")
    dataset = dataset_section()
    info = device_info()
    recipe_section()
    source, weights, unavailable = model_section(info, len(dataset.rows("train")))
    # Every widget has written its value into the form state before this script runs, so
    # the config (and each problem, shown under its widget below) is known up front.
    try:
        config = form.build_config(dataset.id, weights)
    except ConfigError as exc:
        error_box(str(exc), exc)
        st.stop()
    start_runs = form.start_runs(dataset.id)
    train_images = len(dataset.rows("train"))
    problems = form.check(
        config, source, weights, unavailable, train_images=train_images,
        cached_images=train_images + len(dataset.rows("val")), start_runs=start_runs,
    )  # fmt: skip
    # A fixed slot: its messages come and go without shifting the sections below, which
    # would draw the Advanced settings expander anew, closed, while the user works in it.
    with st.container():
        problems.show("model", "weights")
    training_section(problems)
    advanced_section(problems, start_runs)
    preview_section(dataset, config)
    lr_finder_section(dataset, config, problems)
    start_section(dataset, config, problems, info)


main()
