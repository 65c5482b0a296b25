"""The Setup page's form: widget state and defaults, presets, loading a config, building
one, and the advanced-settings widgets bound to that state.

The form's values live in one plain dict in the session (``setup_values``): Streamlit
forgets the state of widgets that are not drawn (a strategy's own fields, or the whole
form while another page is open), so each widget is seeded from the dict and writes back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st

from finetune_core.auth.access import PermissionDenied
from finetune_core.auth.server_paths import check_backbone_upload
from finetune_core.config import (
    AUGMENTATIONS,
    BEST_METRICS,
    BOUNDS,
    CLASS_BALANCE,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    STRATEGIES,
    ConfigError,
    RunConfig,
)
from finetune_core.data.uploads import save_weights_upload
from finetune_core.jobs import launcher
from finetune_core.models.weights_check import WeightsReport, inspect_weights
from finetune_core.presets import PRESETS_BY_KEY, preset_of
from finetune_core.resources import cache_problems
from finetune_core.store import RunRecord
from ui.auth import access_settings
from ui.components import esc, fmt_pct
from ui.services import (
    architectures,
    finished_runs_with_model,
    public,
    uploads_dir,
    user,
    val_accuracy,
)

DEFAULTS = RunConfig()
# Form-only values: "Largest that fits" stands for batch_size="auto"; the weights radio
# picks where ``weights`` comes from.
EXTRA: dict[str, Any] = {"batch_auto": False, "weights_source": "imagenet"}
# Fields that have widgets; dataset and weights come from the dataset picker and uploads.
FIELDS = [f for f in DEFAULTS.to_dict() if f not in ("dataset", "weights")]
STRATEGY_NAMES = {
    "probe": "Linear probe (frozen backbone, cached features)",
    "finetune": "Fine-tune (head first, then everything)",
    "full": "Full training (every layer from the start)",
    "last_n": "Last N layer groups",
}
MISSING_WEIGHTS = {
    "upload": "Upload the weights file first.",
    "custom": "Upload the .pt2 backbone first.",
}


def key(name: str) -> str:
    """The widget key of a form value."""
    return f"cfg_{name}"


def store() -> dict[str, Any]:
    """The form's values, seeded with the recommended preset on a session's first visit."""
    if "setup_values" not in st.session_state:
        values = {**DEFAULTS.to_dict(), **EXTRA}
        values.update(PRESETS_BY_KEY["recommended"].changes)
        st.session_state["setup_values"] = values
        st.session_state["setup_preset_value"] = "recommended"
    return st.session_state["setup_values"]


def val(name: str) -> Any:
    """The current value of a form field."""
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


def limits(name: str) -> tuple[Any, Any]:
    """A number widget's (min, max): the config's own range, so every value that passes
    the config's checks is shown as it is and submitted as shown."""
    bound = BOUNDS[name]
    kind = int if isinstance(getattr(DEFAULTS, name), int) else float
    return kind(bound.low), kind(bound.high)


def load_problems(config: RunConfig) -> list[str]:
    """Why the form cannot show ``config`` exactly (a value outside a widget's range or
    options, a model or device count this page does not offer); [] when it can."""
    own = config.field_problems()
    found = [m for name in FIELDS for m in own.get(name, [])]
    models = {a.name for a in architectures()} | {"custom"}
    if config.model and config.model not in models:
        found.append(f"model {config.model!r} is not offered on this server.")
    gpus = launcher.visible_gpus()
    if config.devices not in launcher.device_count_options(gpus) and "devices" not in own:
        found.append(f"devices={config.devices}: this server shows {gpus} GPU(s), so the Setup "
                     "page starts one process; use the command line for CPU worker "
                     "processes.")  # fmt: skip
    if config.nodes != 1 and "nodes" not in own:
        found.append(f"nodes={config.nodes}: runs on several machines start from the command "
                     "line (torchrun), not from this page.")  # fmt: skip
    return found


def loadable(config: RunConfig) -> RunConfig:
    """``config``, or ConfigError listing why the form cannot show it exactly."""
    problems = load_problems(config)
    if problems:
        raise ConfigError("These settings were not loaded (nothing changed); fix them in the "
                          "file and load it again:\n- " + "\n- ".join(problems))  # fmt: skip
    return config


def problem_list(message: str) -> str:
    """A ConfigError's message as escaped markdown: its first line, then one item a line."""
    first, *items = public(message).split("\n")
    return "\n".join([esc(first), *(f"- {esc(item.removeprefix('- '))}" for item in items)])


def apply_config(config: RunConfig) -> None:
    """Load every field from a config (runs before any widget is drawn); ConfigError,
    with nothing changed, when the form could not show it exactly."""
    loadable(config)
    for name in FIELDS:
        put(name, getattr(config, name))
    auto = isinstance(config.batch_size, str)
    put("batch_auto", auto)
    put("batch_size", DEFAULTS.batch_size if auto else config.batch_size)
    if config.weights in ("imagenet", "none"):
        put("weights_source", config.weights)
    elif config.weights:  # a file of the server: never loaded from a config
        st.session_state["setup_load_notes"] = [
            f"The weights file {Path(config.weights).name!r} was not loaded with the settings: "
            "choose the weights under Model (upload the file again)."
        ]
    st.session_state["setup_preset_value"] = preset_of(config)
    st.session_state["setup_preset"] = preset_of(config)


def set_lr(value: float) -> None:
    put("lr", float(value))  # the finder's suggestion may be a numpy float


def queue_config(config: RunConfig) -> None:
    """Load ``config`` into the form on the next rerun, before any widget is drawn."""
    st.session_state["setup_pending_config"] = config.to_dict()


def open_in_setup(config: RunConfig) -> None:
    """Open the Setup page with every setting of ``config`` and its dataset (a fresh name)."""
    queue_config(config.replace(name="", notes=""))
    st.switch_page("views/setup.py", query_params={"dataset": config.dataset})


def started() -> None:
    """A run was started: the next visit gets a fresh name and notes.

    The name and notes widgets are already drawn in this script run, so their state can
    only change on the next one (``start`` applies it before they are drawn).
    """
    st.session_state["setup_fresh_identity"] = True


def start() -> None:
    """Prepare the form state: a config queued by an upload or a page, a fresh name after a
    run was started, or a preset from the URL."""
    store()
    if pending := st.session_state.pop("setup_pending_config", None):
        try:
            apply_config(RunConfig.from_dict(pending))
        except ConfigError as exc:
            st.session_state["setup_load_error"] = str(exc)
    if st.session_state.pop("setup_fresh_identity", False):
        put("name", "")
        put("notes", "")
    wanted = st.query_params.get("preset")
    if wanted in PRESETS_BY_KEY and st.session_state.get("preset_from_url") != wanted:
        apply_preset_values(wanted)
        st.session_state["preset_from_url"] = wanted
    if "setup_preset" not in st.session_state:
        st.session_state["setup_preset"] = st.session_state.get("setup_preset_value")


def form_values(dataset_id: str, weights: str | None) -> dict[str, Any]:
    """The form's values as RunConfig fields (``batch_auto`` becomes ``batch_size="auto"``)."""
    values: dict[str, Any] = {name: val(name) for name in FIELDS}
    if val("batch_auto"):
        values["batch_size"] = "auto"
    return {**values, "dataset": dataset_id, "weights": weights or ""}


def build_config(dataset_id: str, weights: str | None) -> RunConfig:
    """The run the form describes (raises ConfigError for a value of the wrong type)."""
    return RunConfig.from_form(form_values(dataset_id, weights))


@dataclass
class FormProblems:
    """The config's problems keyed by field; each shows under its widget once."""

    by_field: dict[str, list[str]]
    shown: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return any(self.by_field.values())

    def show(self, *names: str) -> None:
        """Show the problems of these fields here (below their widgets)."""
        for name in names:
            for message in self.by_field.get(name, []):
                st.error(message, icon=":material/error:")
            self.shown.add(name)

    def widget(self, draw: Callable[..., Any], label: str, name: str, *args: Any, **kw: Any) -> Any:
        """Draw a widget bound to the form value ``name``, its problems right below it.

        Should the widget show another value than the form holds (Streamlit resets a value
        outside a widget's range to its minimum), the shown one becomes the form's and
        Start waits for the next rerun: the page never submits what it does not show."""
        value = draw(label, *args, **bind(name), **kw)
        if value != val(name):
            self.by_field.setdefault(name, []).append(
                f"{name} was {val(name)!r}, which this field cannot show; it is now {value!r}: "
                "check it before starting."
            )
            store()[name] = value
        self.show(name)
        return value

    def number(self, label: str, name: str, **kw: Any) -> Any:
        """A number widget limited to the config's range for ``name``."""
        return self.widget(st.number_input, label, name, *limits(name), **kw)

    def unshown(self) -> list[str]:
        """Problems of fields that have no widget on the page right now."""
        return [m for name, ms in self.by_field.items() if name not in self.shown for m in ms]


def check(
    config: RunConfig,
    source: str,
    weights: str | None,
    unavailable: str | None = None,
    *,
    train_images: int = 0,
    cached_images: int = 0,
    start_runs: Sequence[RunRecord] = (),
) -> FormProblems:
    """The config's problems, the caches it would make on this dataset, and a start run
    not among ``start_runs``; an upload still missing, or weights that cannot load here
    (``unavailable``: not cached and not downloadable), replace the weights' own problem."""
    by_field = config.problems_by_field()
    for name, message in cache_problems(
        train_images=train_images, cached_images=cached_images, image_size=config.image_size,
        views=config.probe_views, probe=config.strategy == "probe",
    ):  # fmt: skip
        by_field.setdefault(name, []).append(message)
    if config.init_from and config.init_from not in {r.id for r in start_runs}:
        by_field["init_from"] = [f"{esc(public(config.init_from))} is not a finished run of this "
                                 "dataset with a saved model: choose another or none."]  # fmt: skip
    if weights is None and source in MISSING_WEIGHTS:
        by_field["weights"] = [MISSING_WEIGHTS[source]]
    if unavailable:
        by_field["weights"] = [unavailable]
    if weights and source in MISSING_WEIGHTS:  # an uploaded file: refused if it does not fit
        report = weights_report(weights, config.model, config.image_size)
        if not report.ok:
            by_field["weights"] = [esc(public(report.message))]
    return FormProblems(by_field)


def weights_upload(kind: str, suffixes: tuple[str, ...]) -> str | None:
    """Save an uploaded weights file under the workspace once; return its path."""
    upload = st.file_uploader(
        "Weights file" if kind == "upload" else "Backbone (.pt2 from torch.export)",
        type=[s.lstrip(".") for s in suffixes],
        key=f"weights_file_{kind}",
    )
    if upload is None:
        return None
    if kind == "custom":  # a .pt2 is a whole program: the core decides who may upload one
        try:
            check_backbone_upload(access_settings(), user())
        except PermissionDenied as exc:
            st.error(esc(str(exc)), icon=":material/lock:")
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
    path = saved[upload.file_id]
    show_weights_report(weights_report(path, val("model"), int(val("image_size"))))
    return path


@st.cache_data(max_entries=64, show_spinner="Checking the weights file…")
def _inspected(path: str, arch: str, image_size: int, mtime: float) -> WeightsReport:
    return inspect_weights(path, arch, image_size)


def weights_report(path: str, arch: str, image_size: int) -> WeightsReport:
    """What an uploaded weights file holds, checked against ``arch`` (once per file)."""
    file = Path(path)
    return _inspected(path, arch, image_size, file.stat().st_mtime if file.exists() else 0.0)


def weights_facts(report: WeightsReport) -> str:
    """One line of what was found in the file: architecture, tensors, feature size."""
    if report.architecture_guess == "custom":
        found = ["a torch.export backbone"]
    elif report.architecture_guess:
        found = [f"{report.architecture_guess} weights"]
    else:
        found = ["weights of no architecture offered here"]
    if report.matched is not None:
        found.append(f"{report.matched} of {report.total} {report.arch} backbone tensors match")
    if report.unused:
        found.append(f"{report.unused} unused")
    if report.feature_size:
        found.append(f"{report.feature_size} features per image")
    if report.file_classes:
        found.append(f"a head with {report.file_classes} outputs")
    return "Found: " + " · ".join(found)


def show_weights_report(report: WeightsReport) -> None:
    """Under the uploader: what the file holds; a refusal's reason shows with the
    form's problems (``check``), which also keeps Start disabled."""
    if report.ok:
        st.success(esc(public(report.message)), icon=":material/check_circle:")
    elif report.matched is not None or report.architecture_guess:
        st.caption(esc(weights_facts(report)))


# ----------------------------------------------------------------- advanced settings
def layers_column(problems: FormProblems) -> None:
    """Which layers train, and how the training images are varied."""
    problems.widget(st.selectbox, "Strategy", "strategy", STRATEGIES,
                    format_func=STRATEGY_NAMES.get,
                    help="Which layers train. Presets set this for you.")  # fmt: skip
    strategy = val("strategy")
    if strategy == "finetune":
        problems.number("Frozen epochs", "freeze_epochs",
                        help="Epochs that train only the new head before the backbone "
                        "unfreezes.")  # fmt: skip
    if strategy == "last_n":
        problems.number("Layer groups to train", "last_n_groups",
                        help="Counted from the output; the head is one group.")  # fmt: skip
    if strategy == "probe":
        problems.number("Augmented views per image", "probe_views",
                        help="A probe caches features once; more views add augmented copies "
                        "to the cache (slower start, sometimes better accuracy).")  # fmt: skip
    problems.number("Discriminative LR factor", "lr_mult",
                    help="The first layer group trains at learning rate / this factor, the "
                    "head at the full rate (fine-tune and last-N).")  # fmt: skip
    problems.widget(st.selectbox, "Augmentation", "augmentation", AUGMENTATIONS,
                    help="Random crops, flips, rotations and colour changes on the training "
                    "images; see the preview below.")  # fmt: skip
    problems.number("Dropout before the head", "dropout",
                    step=0.05, help="Regularises the new classification layer.")  # fmt: skip


def optimizer_column(problems: FormProblems) -> None:
    problems.widget(st.selectbox, "Optimizer", "optimizer", OPTIMIZERS,
                    help="AdamW is robust; SGD with momentum can generalise better.")  # fmt: skip
    if val("optimizer") == "sgd":
        problems.number("Momentum", "momentum", step=0.01)
    problems.number("Weight decay", "weight_decay", step=0.005,
                    format="%.4f", help="L2-style regularisation on the weights.")  # fmt: skip
    problems.widget(st.selectbox, "Schedule", "schedule", SCHEDULES,
                    help="One-cycle warms up then anneals (fastai's default); cosine anneals "
                    "from the start; constant keeps the rate.")  # fmt: skip
    problems.number("Warm-up share", "warmup_pct", step=0.05,
                    help="Fraction of steps spent warming up (one-cycle).")  # fmt: skip
    problems.number("Label smoothing", "label_smoothing",
                    step=0.05, help="Softens the targets; helps with noisy labels.")  # fmt: skip
    problems.widget(st.selectbox, "Class balance", "class_balance", CLASS_BALANCE,
                    help="For imbalanced classes: weight the loss by class frequency, or "
                    "sample classes equally.")  # fmt: skip
    problems.number("Gradient clipping (0 = off)", "grad_clip",
                    step=0.5, help="Caps the gradient norm; guards against loss spikes.")  # fmt: skip


def run_column(problems: FormProblems) -> None:
    """Stopping, precision and where the run executes."""
    problems.widget(st.selectbox, "Best epoch by", "best_metric", BEST_METRICS,
                    help="The one rule for the best epoch: the checkpoint kept and evaluated, "
                    "and what early stopping waits to improve (accuracy ties go to the lower "
                    "loss).")  # fmt: skip
    st.checkbox("Early stopping", **bind("early_stopping"),
                help="Stop when the best epoch has not been beaten for the patience, once the "
                "learning rate has come down from its peak; the best epoch's model is kept "
                "either way.")  # fmt: skip
    if val("early_stopping"):
        problems.number("Patience (epochs)", "es_patience")
        problems.number("Minimum improvement", "es_min_delta",
                        step=0.001, format="%.4f")  # fmt: skip
    problems.widget(st.selectbox, "Mixed precision", "mixed_precision", PRECISIONS,
                    help="auto: bf16/fp16 where the device runs it fast and accurately; off: "
                    "fp32.")  # fmt: skip
    st.checkbox("Channels-last memory format", **bind("channels_last"),
                help="Faster convolutions on most GPUs and recent CPUs.")  # fmt: skip
    problems.widget(st.text_input, "Device", "device", help="auto, cpu, cuda, cuda:N or mps.")
    gpus = launcher.visible_gpus()
    if gpus > 1:  # several GPUs: one process per GPU through torchrun + DDP
        problems.widget(st.selectbox, "GPUs", "devices", launcher.device_count_options(gpus),
                        help=f"{gpus} GPUs are visible. More than 1 launches torchrun with one "
                        "process per GPU (DistributedDataParallel); the batch size is the "
                        "global batch.")  # fmt: skip
    problems.number("CPU threads (0 = all)", "num_threads")
    problems.number("Seed", "seed",
                    help="Same seed, data and settings: the same run.")  # fmt: skip


# ----------------------------------------------------------------- start from a run
def start_runs(dataset_id: str) -> list[RunRecord]:
    """Finished runs of this dataset with a saved model: what a new run can start from."""
    return [r for r in finished_runs_with_model() if r.dataset_id == dataset_id]


def start_from_picker(problems: FormProblems, runs: Sequence[RunRecord]) -> None:
    """'Start from run': a finished run whose best weights initialise the model
    (``init_from``), none by default; its model and validation accuracy beside it."""
    by_id = {r.id: r for r in runs}
    options = ["", *by_id]
    if val("init_from") not in options:  # from a loaded config: shown, with its problem
        options.append(val("init_from"))

    def label(run_id: str) -> str:
        run = by_id.get(run_id)
        if not run_id:
            return "none (the weights chosen above)"
        return f"{run.name or run.model} · {run.id}" if run else public(run_id)

    pick, about = st.columns([1, 2], vertical_alignment="bottom")
    with pick:
        problems.widget(st.selectbox, "Start from run", "init_from", options, format_func=label,
                        help="A finished run of this dataset whose best weights initialise "
                        "the model instead of the weights chosen above.")  # fmt: skip
    chosen = by_id.get(val("init_from"))
    if chosen is not None:
        about.caption(f"{esc(chosen.model)} · {esc(chosen.strategy)} · validation accuracy "
                      f"{fmt_pct(val_accuracy(chosen))}")  # fmt: skip
