"""The Evaluation page's tabs: each one section that reads one ``EvalView``."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from finetune_core.data.dataset import Dataset
from finetune_core.evaluation.gradcam import METHOD_TITLES, method_title
from finetune_core.evaluation.honesty import split_honesty
from finetune_core.reporting import charts
from finetune_core.reporting.compare import HEADLINE, config_diff, metrics_table
from finetune_core.reporting.gallery import (
    ImageOrigin,
    cam_candidates,
    cell_predictions,
    default_cam_paths,
    image_origin,
    true_class_probability,
)
from finetune_core.runs import RunFolder, RunPaths
from finetune_core.store import RunRecord, RunStatus
from ui.components import (
    Thumb,
    cell_from_selection,
    error_box,
    esc,
    fmt_metric,
    paginate,
    run_label,
    thumbnail_grid,
)
from ui.services import activation_pngs, get_workspace, public

CELL_PAGE = 24
SPLIT_NAMES = {"val": "Validation", "test": "Test"}


@dataclass(frozen=True)
class EvalView:
    """One run's evaluation on one split, as every tab reads it."""

    run: RunRecord
    folder: RunFolder
    split: str
    metrics: dict[str, Any]
    class_names: list[str]
    preds: list[dict]
    dataset: Dataset | None
    sources: dict[str, str]

    def image_file(self, rel_path: str) -> Path | None:
        if self.dataset is None:
            return None
        path = self.dataset.images_dir / rel_path
        return path if path.is_file() else None

    def short(self, rel_path: str) -> str:
        return self.origin(rel_path).name

    def origin(self, rel_path: str) -> ImageOrigin:
        """The uploaded file name and folder of an image of this split, for captions."""
        return image_origin(rel_path, self.sources, self.split)


TAB_TITLES = ["Confusion matrix", "Per class", "Top losses", "ROC & PR", "Calibration",
              "Activation maps", "Training", "Compare runs"]  # fmt: skip


# ----------------------------------------------------------------------- confusion
def remember_cell(view: EvalView) -> None:
    cell = cell_from_selection(st.session_state.get(f"cm_{view.run.id}_{view.split}"))
    if cell is not None:
        st.session_state["eval_cell"] = {"run": view.run.id, "split": view.split,
                                         "cell": list(cell)}  # fmt: skip


def choose_cell(view: EvalView, i: int, j: int) -> None:
    st.session_state["eval_cell"] = {"run": view.run.id, "split": view.split, "cell": [i, j]}


def cell_images(view: EvalView, i: int, j: int) -> None:
    """The images of one confusion-matrix cell, most confident first."""
    names = view.class_names
    if not (0 <= i < len(names) and 0 <= j < len(names)):
        return
    true_name, pred_name = names[i], names[j]
    rows = cell_predictions(view.preds, view.split, true_name, pred_name)
    kind = "correct" if i == j else "mistakes"
    st.markdown(
        f"**True {esc(true_name)}, predicted {esc(pred_name)}** · {len(rows)} image(s), "
        f"{kind}, most confident first"
    )
    if not rows:
        st.caption("No images in this cell.")
        return
    if view.dataset is None:
        st.warning("The run's dataset was deleted, so its images cannot be shown.")
        return
    page = paginate(len(rows), CELL_PAGE, key=f"cell_page_{view.run.id}_{view.split}_{i}_{j}")
    items = []
    for row in rows[page]:
        p_true = true_class_probability(row, names)
        caption = f"p({pred_name}) {row['prob_pred']:.2f}"
        if i != j and p_true is not None:
            caption += f" · p({true_name}) {p_true:.2f}"
        origin = view.origin(row["path"])
        items.append(Thumb(view.image_file(row["path"]), f"{caption} · {origin.text}"))
    thumbnail_grid(items, columns=6)


def confusion_tab(view: EvalView) -> None:
    normalized = st.toggle("Show row percentages", key="cm_normalized",
                           help="Each row sums to 100%: the share of a true class predicted "
                           "as each class.")  # fmt: skip
    st.plotly_chart(
        charts.confusion_matrix(view.metrics["confusion"], view.class_names,
                                normalized=normalized),
        key=f"cm_{view.run.id}_{view.split}",
        on_select=partial(remember_cell, view),
        selection_mode="points",
    )  # fmt: skip
    confused = view.metrics.get("most_confused") or []
    if confused:
        st.caption("Click a cell to see its images, or open one of the most confused pairs:")
        with st.container(horizontal=True):
            for n, pair in enumerate(confused[:6]):
                st.button(
                    f"{esc(pair['true'])} → {esc(pair['pred'])} ({pair['count']})",
                    key=f"confused_{n}",
                    on_click=choose_cell,
                    args=(view, pair["true_index"], pair["pred_index"]),
                )
    else:
        st.caption("Click a cell to see its images.")
    selected = st.session_state.get("eval_cell")
    if selected and selected.get("run") == view.run.id and selected.get("split") == view.split:
        cell_images(view, *selected["cell"])


# ----------------------------------------------------------------------- scores
def per_class_tab(view: EvalView) -> None:
    per_class = pd.DataFrame(view.metrics.get("per_class") or [])
    if per_class.empty:
        st.info("No per-class metrics.")
        return
    per_class = per_class.rename(columns={"class": "Class", "precision": "Precision",
                                          "recall": "Recall", "f1": "F1",
                                          "support": "Images"})  # fmt: skip
    bar = st.column_config.ProgressColumn(min_value=0.0, max_value=1.0, format="percent")
    st.dataframe(per_class, hide_index=True, width="stretch",
                 column_config={"Precision": bar, "Recall": bar, "F1": bar})  # fmt: skip
    st.plotly_chart(charts.per_class_bars(view.metrics.get("per_class") or []), key="per_class")


def top_losses_tab(view: EvalView) -> None:
    losses = view.metrics.get("top_losses") or []
    if not losses:
        st.success("No mistakes on this split.", icon=":material/celebration:")
        return
    if view.dataset is None:
        st.warning("The run's dataset was deleted, so its images cannot be shown.")
        return
    st.caption(
        "The images the model got most wrong: a confident wrong answer often means a "
        "mislabelled image."
    )
    thumbnail_grid(
        [
            Thumb(
                view.image_file(item["path"]) if item.get("path") else None,
                (f"{view.origin(item['path']).text} · " if item.get("path") else "")
                + f"true {item['true']} · predicted {item['pred']} ({item['prob_pred']:.2f}) · "
                f"loss {item['loss']:.2f}",
            )
            for item in losses
        ],
        columns=6,
    )


def curves_tab(view: EvalView) -> None:
    metrics = view.metrics
    st.plotly_chart(
        charts.roc_pr_curves(metrics.get("roc") or {}, metrics.get("pr") or {}, view.class_names),
        key="roc_pr",
    )


def calibration_tab(view: EvalView) -> None:
    st.plotly_chart(
        charts.reliability_diagram(view.metrics.get("calibration") or {}), key="calibration"
    )
    st.caption(
        "Bars at the diagonal mean the model's confidence matches how often it is right; "
        "bars below it mean over-confidence."
    )


# ----------------------------------------------------------------------- Grad-CAM
def activation_card(view: EvalView, path: str, mtime: float, by_path: dict[str, dict]) -> None:
    file = view.image_file(path)
    if file is None:
        return
    try:
        original, heat, label, note, method = activation_pngs(
            str(view.folder.path), mtime, str(file)
        )
    except Exception as exc:
        error_box(f"No activation map for {view.short(path)}: {exc}", exc)
        return
    with st.container(border=True):
        st.image(original, caption=esc(f"{view.origin(path).text} · true {by_path[path]['true']}"),
                 width="stretch")  # fmt: skip
        st.image(heat, caption=esc(f"{method_title(method)} · predicted {label}"),
                 width="stretch")  # fmt: skip
        st.caption(esc(note))


def activation_tab(view: EvalView) -> None:
    if view.dataset is None or not view.preds:
        st.info("Activation maps need the run's dataset and its predictions.")
        return
    ordered = cam_candidates(view.preds)
    options = [p["path"] for p in ordered]
    by_path = {p["path"]: p for p in ordered}
    chosen = st.multiselect(
        "Images",
        options,
        default=default_cam_paths(view.preds),
        max_selections=8,
        format_func=lambda p: (
            f"{view.short(p)} (true {by_path[p]['true']}, predicted {by_path[p]['pred']})"
        ),
        key=f"cam_images_{view.run.id}_{view.split}",
        help="The most confident mistakes are listed first, then the least confident "
        "correct predictions: the images an activation map teaches the most about.",
    )
    st.caption(
        f"{METHOD_TITLES['grad-cam']} highlights the regions that drove the prediction "
        f"(red = strong); models without a convolutional feature map (ViT, custom "
        f"backbones) show {METHOD_TITLES['saliency']} instead, and say so under each map."
    )
    try:
        mtime = view.folder.checkpoint_path("best").stat().st_mtime
    except OSError:
        st.info("This run has no saved model, so activation maps cannot be computed.")
        return
    if chosen and st.toggle("Compute the activation maps", key=f"cam_on_{view.run.id}"):
        with st.grid(4, min_column_width=150):
            for path in chosen:
                activation_card(view, path, mtime, by_path)


# ----------------------------------------------------------------------- training
def training_tab(view: EvalView) -> None:
    folder = view.folder
    st.plotly_chart(charts.training_curves(folder.history(), view.run.best_epoch),
                    key="eval_curves")  # fmt: skip
    settings = [{"Setting": k, "Value": str(v)} for k, v in sorted(folder.config.to_dict().items())]
    left, right = st.columns(2, gap="medium")
    with left:
        st.markdown("**Settings**")
        st.dataframe(pd.DataFrame(settings), hide_index=True, width="stretch", height=320)
    with right:
        env = folder.info.get("environment") or {}
        st.markdown("**Environment**")
        st.dataframe(pd.DataFrame([{"Item": k, "Value": str(v)} for k, v in env.items()]),
                     hide_index=True, width="stretch")  # fmt: skip
        if folder.info.get("dataset_fingerprint"):
            st.caption(f"Data fingerprint `{folder.info['dataset_fingerprint'][:16]}`")
        if folder.info.get("cli"):
            st.code(public(folder.info["cli"]), language="bash", wrap_lines=True)


# ----------------------------------------------------------------------- compare
def comparison(view: EvalView, group: list[RunRecord]) -> None:
    """Curves, metrics and differing settings of this run and the picked ones."""

    def label_of(record: RunRecord) -> str:
        return f"{record.name or record.model} ({record.id[-4:]})"

    metric = st.segmented_control(
        "Curve",
        ["val_accuracy", "val_loss", "train_loss", "train_accuracy"],
        default="val_accuracy",
        format_func=lambda m: m.replace("_", " "),
        key="compare_metric",
    )
    folders = {label_of(r): RunFolder(get_workspace().run_dir(r.id)) for r in group
               if RunPaths(get_workspace().run_dir(r.id)).is_run()}  # fmt: skip
    histories = {label: f.history() for label, f in folders.items()}
    st.plotly_chart(charts.run_comparison(histories, metric or "val_accuracy"),
                    key="compare_chart")  # fmt: skip
    evaluations = {label: f.evaluation() for label, f in folders.items()}
    honest = split_honesty({"splits": {view.split: view.metrics}}, view.split)
    st.markdown(
        f"**Metrics on the {SPLIT_NAMES.get(view.split, view.split).lower()} split** "
        f"({esc(honest.label)})"
    )
    rows = metrics_table(evaluations, view.split)
    for row, (key_name, _title) in zip(rows, HEADLINE, strict=True):
        for column in list(row)[1:]:
            value = row[column]
            if key_name == "accuracy_interval":
                row[column] = value or "–"
            else:
                row[column] = fmt_metric("accuracy" if key_name == "baseline" else key_name, value)
    st.dataframe(pd.DataFrame(rows).rename(columns={"metric": "Metric"}).set_index("Metric"),
                 width="stretch")  # fmt: skip
    diff = config_diff({label_of(r): r.config for r in group})
    st.markdown("**Settings that differ**")
    if diff:
        st.dataframe(pd.DataFrame(diff).rename(columns={"setting": "Setting"})
                     .set_index("Setting"), width="stretch")  # fmt: skip
    else:
        st.caption("The runs used the same settings.")


def compare_tab(view: EvalView) -> None:
    others = [
        r
        for r in get_workspace().list_runs()
        if r.id != view.run.id and r.status not in RunStatus.ACTIVE
    ]
    if not others:
        st.info("Train another run to compare it with this one.")
        return
    by_id = {r.id: r for r in others}
    picked = st.multiselect("Compare with", list(by_id), format_func=lambda i: run_label(by_id[i]),
                            key=f"compare_{view.run.id}", max_selections=5)  # fmt: skip
    if picked:
        comparison(view, [view.run] + [by_id[i] for i in picked])


TABS = [confusion_tab, per_class_tab, top_losses_tab, curves_tab, calibration_tab,
        activation_tab, training_tab, compare_tab]  # fmt: skip
