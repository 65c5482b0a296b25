"""Setup: dataset, model, weights, recipe and hyperparameters; then start the run."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import streamlit as st

from finetune_core.auth.access import can_start
from finetune_core.config import (
    AUGMENTATIONS,
    CLASS_BALANCE,
    ES_METRICS,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    STRATEGIES,
    ConfigError,
    RunConfig,
)
from finetune_core.data import DatasetNotFound, load_dataset
from finetune_core.data.dataset import Dataset
from finetune_core.data.uploads import save_weights_upload
from finetune_core.device import device_info
from finetune_core.jobs.manager import JobError, cli_command
from finetune_core.models.classifier import estimate_train_seconds_per_image
from finetune_core.presets import PRESETS, PRESETS_BY_KEY, preset_of
from finetune_core.reporting import charts
from finetune_core.reporting.gallery import augmentation_preview, preview_rows
from finetune_core.training import ddp as distributed
from ui.components import error_box, esc, fmt_duration, pick_dataset
from ui.services import (
    allow_custom_backbones,
    architectures,
    current_user,
    get_job_manager,
    get_workspace,
    public,
    uploads_dir,
    user,
)

ws = get_workspace()
manager = get_job_manager()
DEFAULTS = RunConfig()
STRATEGY_NAMES = {
    "probe": "Linear probe (frozen backbone, cached features)",
    "finetune": "Fine-tune (head first, then everything)",
    "full": "Full training (every layer from the start)",
    "last_n": "Last N layer groups",
}
WEIGHT_SOURCES = {
    "imagenet": "ImageNet pretrained",
    "none": "None (random initialisation)",
    "upload": "Upload a state_dict (.pt / .pth)",
    "custom": "Custom .pt2 backbone",
}
FIELDS = [f for f in DEFAULTS.to_dict() if f not in ("dataset", "weights")]

st.title("Setup")


# ----------------------------------------------------------------------- state
# The form's values live in one plain dict in the session ("setup_values"): Streamlit
# forgets the state of widgets that are not drawn (a strategy's own fields, or the whole
# form while another page is open), so each widget is seeded from the dict and writes back.
EXTRA = {"batch_auto": False, "weights_source": "imagenet"}


def key(name: str) -> str:
    return f"cfg_{name}"


def store() -> dict[str, Any]:
    if "setup_values" not in st.session_state:
        values = {**DEFAULTS.to_dict(), **EXTRA}
        values.update(PRESETS_BY_KEY["recommended"].changes)
        st.session_state["setup_values"] = values
        st.session_state["setup_preset_value"] = "recommended"
    return st.session_state["setup_values"]


def val(name: str) -> Any:
    values = store()
    if name not in values:  # a field added to RunConfig since this session started
        values[name] = {**DEFAULTS.to_dict(), **EXTRA}[name]
    return values[name]


def put(name: str, value: Any) -> None:
    """Change a value (only from callbacks, or before its widget is drawn)."""
    store()[name] = value
    st.session_state[key(name)] = value


def _sync(name: str) -> None:
    store()[name] = st.session_state[key(name)]


def bind(name: str) -> dict[str, Any]:
    """Widget arguments that tie the widget to ``store()[name]``."""
    if key(name) not in st.session_state:
        st.session_state[key(name)] = val(name)
    return {"key": key(name), "on_change": _sync, "args": (name,)}


def apply_preset_values(preset_key: str) -> None:
    for name, value in PRESETS_BY_KEY[preset_key].changes.items():
        put(name, value)
    st.session_state["setup_preset_value"] = preset_key
    st.session_state["setup_preset"] = preset_key


def on_preset_change() -> None:
    chosen = st.session_state.get("setup_preset")
    st.session_state["setup_preset_value"] = chosen
    if chosen in PRESETS_BY_KEY:
        apply_preset_values(chosen)


def apply_config(config: RunConfig) -> None:
    """Load every field from a config (runs before any widget is drawn)."""
    for name in FIELDS:
        put(name, getattr(config, name))
    auto = isinstance(config.batch_size, str)
    put("batch_auto", auto)
    put("batch_size", DEFAULTS.batch_size if auto else config.batch_size)
    if config.weights in ("imagenet", "none"):
        put("weights_source", config.weights)
    st.session_state["setup_preset_value"] = preset_of(config)
    st.session_state["setup_preset"] = preset_of(config)


def set_lr(value: float) -> None:
    put("lr", float(value))


store()
if pending := st.session_state.pop("setup_pending_config", None):
    apply_config(RunConfig.from_dict(pending))
wanted_preset = st.query_params.get("preset")
if wanted_preset in PRESETS_BY_KEY and st.session_state.get("preset_from_url") != wanted_preset:
    apply_preset_values(wanted_preset)
    st.session_state["preset_from_url"] = wanted_preset
if "setup_preset" not in st.session_state:
    st.session_state["setup_preset"] = st.session_state.get("setup_preset_value")


# ----------------------------------------------------------------------- dataset
records = ws.list_datasets()
if not records:
    st.info(
        "There is no dataset to train on yet. Add one on the Data page, or start from the demo "
        "dataset on the Home page.",
        icon=":material/info:",
    )
    st.page_link("views/data.py", label="Add a dataset", icon=":material/upload:")
    st.stop()

record = pick_dataset(records, key="setup_dataset")
try:
    dataset: Dataset = load_dataset(ws, record.id)
except DatasetNotFound as exc:
    st.error(esc(public(str(exc))))
    st.stop()
train_count = len(dataset.rows("train"))
if dataset.health.blocks_training:
    st.error(
        "This dataset has errors that block training: "
        + esc(" ".join(f.message for f in dataset.health.errors))
        + " Fix them on the Data page.",
        icon=":material/block:",
    )


# ----------------------------------------------------------------------- recipe
st.subheader("Recipe")
st.segmented_control(
    "Strategy preset",
    [p.key for p in PRESETS],
    format_func=lambda k: PRESETS_BY_KEY[k].title,
    key="setup_preset",
    on_change=on_preset_change,
    help="A starting point: it sets the strategy, epochs, learning rate and augmentation. "
    "Every value stays editable below.",
)
current = st.session_state.get("setup_preset")
if current in PRESETS_BY_KEY:
    st.caption(PRESETS_BY_KEY[current].summary)
else:
    st.caption("Custom settings (no preset matches them exactly).")


# ----------------------------------------------------------------------- model
st.subheader("Model")
archs = architectures()
info = device_info()
arch_names = [a.name for a in archs]
image_size_now = int(val("image_size"))


def epoch_seconds(arch: str) -> float | None:
    per_image = estimate_train_seconds_per_image(arch, image_size_now, info.kind)
    return None if math.isnan(per_image) else per_image * train_count


table = pd.DataFrame(
    [
        {
            "Model": a.name,
            "Parameters (M)": a.params / 1e6,
            "ImageNet top-1 %": a.imagenet_top1,
            "Native input": f"{a.input_size} px",
            "GFLOPs": a.gflops,
            "ImageNet weights": "cached" if a.cached else "download",
            "Est. time / epoch": fmt_duration(epoch_seconds(a.name)),
        }
        for a in archs
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
        "Est. time / epoch": st.column_config.TextColumn(
            help=f"Training every layer on {train_count} images at {image_size_now} px on this "
            f"{info.kind.upper()}; a linear probe is much faster after its first epoch."
        ),
    },
)

weight_options = ["imagenet", "none", "upload"] + (["custom"] if allow_custom_backbones() else [])
if val("weights_source") not in weight_options:
    put("weights_source", "imagenet")
model_col, weights_col = st.columns(2, gap="medium")
with weights_col:
    source = st.radio(
        "Weights",
        weight_options,
        format_func=WEIGHT_SOURCES.get,
        **bind("weights_source"),
        help="Pretrained ImageNet weights make small datasets work. 'None' trains from "
        "scratch. A state_dict continues from your own checkpoint of the same architecture.",
    )
    if not allow_custom_backbones():
        st.caption(
            "Custom `.pt2` backbones are off; an administrator can allow them with "
            "`FINETUNE_ALLOW_CUSTOM_BACKBONES=1`."
        )
with model_col:
    if source == "custom":
        put("model", "custom")
        st.selectbox("Architecture", ["custom"], disabled=True, key="cfg_model_custom")
    else:
        if val("model") not in arch_names:
            put("model", DEFAULTS.model)
        st.selectbox(
            "Architecture",
            arch_names,
            **bind("model"),
            help="Bigger models are more accurate on ImageNet and slower; resnet18, "
            "mobilenet_v3 and efficientnet_b0 suit CPUs.",
        )
model_name = val("model")
weights_value: str | None = source if source in ("imagenet", "none") else None


def weights_upload(kind: str, suffixes: tuple[str, ...]) -> str | None:
    """Save an uploaded weights file under the workspace once; return its path."""
    upload = st.file_uploader(
        "Weights file" if kind == "upload" else "Backbone (.pt2 from torch.export)",
        type=[s.lstrip(".") for s in suffixes],
        key=f"weights_file_{kind}",
    )
    if upload is None:
        return None
    saved = st.session_state.setdefault("saved_weights", {})
    if upload.file_id not in saved:
        try:
            saved[upload.file_id] = str(
                save_weights_upload(uploads_dir(), upload.name, upload.getvalue(), suffixes)
            )
        except ValueError as exc:
            st.error(esc(public(str(exc))))
            return None
    return saved[upload.file_id]


with weights_col:
    if source == "imagenet" and model_name in arch_names:
        arch = next(a for a in archs if a.name == model_name)
        if arch.cached:
            st.success(f"ImageNet weights for {model_name} are cached on this server.",
                       icon=":material/check_circle:")  # fmt: skip
        else:
            size = f" ({arch.file_size_mb:.0f} MB)" if arch.file_size_mb else ""
            st.warning(
                f"The ImageNet weights for {model_name}{size} are not on this server yet; the "
                "run downloads them when it starts (this needs internet access).",
                icon=":material/cloud_download:",
            )
            if st.button("Download them now", icon=":material/download:", key="weights_download"):
                from finetune_core.models.classifier import WeightsError
                from finetune_core.models.weights import download_imagenet_weights

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
    elif source == "upload":
        weights_value = weights_upload("upload", (".pt", ".pth"))
    elif source == "custom":
        weights_value = weights_upload("custom", (".pt2",))


# ----------------------------------------------------------------------- basics
st.subheader("Training")
c1, c2, c3, c4 = st.columns(4)
c1.number_input(
    "Epochs", 1, 1000, **bind("epochs"),
    help="Passes over the training images. Early stopping may end the run sooner.",
)  # fmt: skip
c2.number_input(
    "Image size (px)", 16, 1024, step=16, **bind("image_size"),
    help="Images are resized and centre-cropped to this square. 224 matches ImageNet; smaller "
    "is much faster on a CPU.",
)  # fmt: skip
with c3:
    st.number_input(
        "Batch size", 1, 4096, **bind("batch_size"), disabled=val("batch_auto"),
        help="Images per step. Larger is faster on a GPU until memory runs out.",
    )  # fmt: skip
    st.checkbox(
        "Largest that fits (auto)", **bind("batch_auto"),
        help="Probe the device memory and pick the largest batch that fits.",
    )  # fmt: skip
c4.number_input(
    "Learning rate", 1e-7, 5.0, step=1e-4, format="%.2e", **bind("lr"),
    help="The peak learning rate. The LR finder below suggests one for your data.",
)  # fmt: skip

with st.expander("Advanced settings", icon=":material/settings:"):
    a1, a2, a3 = st.columns(3)
    with a1:
        st.selectbox(
            "Strategy", STRATEGIES, format_func=STRATEGY_NAMES.get, **bind("strategy"),
            help="Which layers train. Presets set this for you.",
        )  # fmt: skip
        strategy = val("strategy")
        if strategy == "finetune":
            st.number_input(
                "Frozen epochs", 0, 1000, **bind("freeze_epochs"),
                help="Epochs that train only the new head before the backbone unfreezes.",
            )  # fmt: skip
        if strategy == "last_n":
            st.number_input(
                "Layer groups to train", 1, 20, **bind("last_n_groups"),
                help="Counted from the output; the head is one group.",
            )  # fmt: skip
        if strategy == "probe":
            st.number_input(
                "Augmented views per image", 1, 32, **bind("probe_views"),
                help="A probe caches features once; more views add augmented copies to "
                "the cache (slower start, sometimes better accuracy).",
            )  # fmt: skip
        st.number_input(
            "Discriminative LR factor", 1.0, 1e6, **bind("lr_mult"),
            help="The first layer group trains at learning rate / this factor, the head at "
            "the full rate (fine-tune and last-N).",
        )  # fmt: skip
        st.selectbox(
            "Augmentation", AUGMENTATIONS, **bind("augmentation"),
            help="Random crops, flips, rotations and colour changes on the training images; "
            "see the preview below.",
        )  # fmt: skip
        st.number_input(
            "Dropout before the head", 0.0, 0.95, step=0.05, **bind("dropout"),
            help="Regularises the new classification layer.",
        )  # fmt: skip
    with a2:
        st.selectbox("Optimizer", OPTIMIZERS, **bind("optimizer"),
                     help="AdamW is robust; SGD with momentum can generalise better.")  # fmt: skip
        if val("optimizer") == "sgd":
            st.number_input("Momentum", 0.0, 0.999, step=0.01, **bind("momentum"))
        st.number_input(
            "Weight decay", 0.0, 1.0, step=0.005, format="%.4f", **bind("weight_decay"),
            help="L2-style regularisation on the weights.",
        )  # fmt: skip
        st.selectbox(
            "Schedule", SCHEDULES, **bind("schedule"),
            help="One-cycle warms up then anneals (fastai's default); cosine anneals from the "
            "start; constant keeps the rate.",
        )  # fmt: skip
        st.number_input(
            "Warm-up share", 0.0, 0.95, step=0.05, **bind("warmup_pct"),
            help="Fraction of steps spent warming up (one-cycle).",
        )  # fmt: skip
        st.number_input(
            "Label smoothing", 0.0, 0.95, step=0.05, **bind("label_smoothing"),
            help="Softens the targets; helps with noisy labels.",
        )  # fmt: skip
        st.selectbox(
            "Class balance", CLASS_BALANCE, **bind("class_balance"),
            help="For imbalanced classes: weight the loss by class frequency, or sample "
            "classes equally.",
        )  # fmt: skip
        st.number_input(
            "Gradient clipping (0 = off)", 0.0, 1000.0, step=0.5, **bind("grad_clip"),
            help="Caps the gradient norm; guards against loss spikes.",
        )  # fmt: skip
    with a3:
        st.checkbox("Early stopping", **bind("early_stopping"),
                    help="Stop when the validation metric stops improving; the best epoch's "
                    "model is kept either way.")  # fmt: skip
        if val("early_stopping"):
            st.selectbox("Watch", ES_METRICS, **bind("es_metric"))
            st.number_input("Patience (epochs)", 1, 1000, **bind("es_patience"))
            st.number_input("Minimum improvement", 0.0, 10.0, step=0.001, format="%.4f",
                            **bind("es_min_delta"))  # fmt: skip
        st.selectbox(
            "Mixed precision", PRECISIONS, **bind("mixed_precision"),
            help="auto: bf16/fp16 where the device runs it fast and accurately; off: fp32.",
        )  # fmt: skip
        st.checkbox("Channels-last memory format", **bind("channels_last"),
                    help="Faster convolutions on most GPUs and recent CPUs.")  # fmt: skip
        st.text_input("Device", **bind("device"),
                      help="auto, cpu, cuda, cuda:N or mps.")  # fmt: skip
        gpus = distributed.visible_gpus()
        if gpus > 1:  # several GPUs: one process per GPU through torchrun + DDP
            st.selectbox(
                "GPUs", distributed.device_count_options(gpus), **bind("devices"),
                help=f"{gpus} GPUs are visible. More than 1 launches torchrun with one process "
                "per GPU (DistributedDataParallel); the batch size is the global batch.",
            )  # fmt: skip
        st.number_input("CPU threads (0 = all)", 0, 1024, **bind("num_threads"))
        st.number_input("Seed", 0, 2**31 - 1, **bind("seed"),
                        help="Same seed, data and settings: the same run.")  # fmt: skip
    n1, n2 = st.columns([1, 2])
    n1.text_input("Run name", **bind("name"), placeholder=f"{model_name} {strategy}")
    n2.text_input("Notes", **bind("notes"), placeholder="what you are trying")
    loaded = st.file_uploader(
        "Load settings from a config JSON", type=["json"], key="config_upload"
    )
    if loaded is not None and st.session_state.get("config_loaded") != loaded.file_id:
        try:
            uploaded = RunConfig.from_json(loaded.getvalue().decode("utf-8", "replace"))
        except ConfigError as exc:
            st.error(esc(public(str(exc))))
        else:
            st.session_state["config_loaded"] = loaded.file_id
            st.session_state["setup_pending_config"] = uploaded.to_dict()
            st.rerun()


# ----------------------------------------------------------------------- config
def build_config() -> RunConfig:
    values: dict[str, Any] = {name: val(name) for name in FIELDS}
    values["batch_size"] = "auto" if val("batch_auto") else int(values["batch_size"])
    for name in ("epochs", "image_size", "freeze_epochs", "last_n_groups", "probe_views",
                 "es_patience", "seed", "num_threads"):  # fmt: skip
        values[name] = int(values[name])
    for name in ("lr", "lr_mult", "weight_decay", "momentum", "warmup_pct", "label_smoothing",
                 "dropout", "grad_clip", "es_min_delta"):  # fmt: skip
        values[name] = float(values[name])
    values["name"] = str(values["name"]).strip()
    return RunConfig(dataset=dataset.id, weights=weights_value or "", **values)


config = build_config()
problems = config.problems()
if weights_value is None:
    problems = [
        "Upload the weights file first."
        if source == "upload"
        else "Upload the .pt2 backbone first."
    ] + [p for p in problems if "custom model needs" not in p]


# ----------------------------------------------------------------------- preview
st.subheader("Augmentation preview")
st.caption(
    f"Your own training images at {config.image_size} px, as the '{config.augmentation}' "
    "augmentation shows them to the model: the original, then four random versions."
)


@st.cache_data(max_entries=32, show_spinner=False)
def cached_preview(dataset_id: str, preset: str, size: int, seed: int) -> list[list[bytes]]:
    import io

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


seed = st.session_state.setdefault("preview_seed", 0)
preview_size = min(config.image_size, 160)
grid = cached_preview(dataset.id, config.augmentation, preview_size, seed)
if grid:
    with st.container(horizontal=True, gap="medium"):
        for images in grid:
            with st.container(border=True, horizontal=True, gap="xsmall", width="content"):
                for i, data in enumerate(images):
                    st.image(data, caption="original" if i == 0 else f"view {i}", width=96)
    if st.button("Show other random versions", icon=":material/shuffle:", key="preview_shuffle"):
        st.session_state["preview_seed"] = seed + 1
        st.rerun()
else:
    st.info("No readable training images to preview.")


# ----------------------------------------------------------------------- LR finder
st.subheader("Learning-rate finder")
st.caption(
    "Trains for a few dozen mini-batches while raising the learning rate from 1e-7 to 10 and "
    "plots the loss; the suggestion is where it falls fastest."
)
finder_key = (dataset.id, config.model, config.weights, config.strategy, config.image_size)
if st.button(
    "Find a learning rate",
    icon=":material/search:",
    key="lr_find",
    disabled=bool(problems) or dataset.health.blocks_training,
):
    from finetune_core.training.lr_finder import find_lr

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
found = st.session_state.get("lr_finder")
if found:
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
            on_click=set_lr,
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
st.subheader("Start")
for problem in problems:
    st.error(problem, icon=":material/error:")
per_image = None
if config.model in arch_names:
    from finetune_core.models.classifier import estimate_train_seconds_per_image

    per_image = estimate_train_seconds_per_image(config.model, config.image_size, info.kind)
if per_image and not math.isnan(per_image):
    factor = 0.3 if config.strategy == "probe" else 1.0
    estimate = per_image * train_count * config.epochs * factor
    st.caption(
        f"{train_count:,} training images × {config.epochs} epochs on {esc(info.name)}: roughly "
        f"{fmt_duration(estimate)} (a rough estimate; the live view shows the real ETA)."
    )
with st.expander("Equivalent command line and config file", icon=":material/terminal:"):
    st.code(cli_command(config), language="bash", wrap_lines=True)
    st.download_button(
        "Download config (JSON)",
        config.to_json(),
        file_name=f"{config.name or config.model}-config.json".replace(" ", "_").replace("/", "_"),
        mime="application/json",
        icon=":material/download:",
    )
if not can_start(user()):
    st.info("Sign in to start runs.", icon=":material/lock:")
if st.button(
    "Start training",
    type="primary",
    icon=":material/play_arrow:",
    key="start",
    disabled=bool(problems) or dataset.health.blocks_training or not can_start(user()),
):
    try:
        run_id = manager.submit(config, creator=current_user())
    except JobError as exc:
        error_box(str(exc))
    else:
        st.switch_page("views/training.py", query_params={"run": run_id})
