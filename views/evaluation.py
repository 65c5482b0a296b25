"""Evaluation: metrics, confusion matrix whose cells open the images, errors, curves,
activation maps, run comparison, report, export and a permalink."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from finetune_core.data.dataset import run_dataset
from finetune_core.data.images import open_rgb
from finetune_core.evaluation.evaluate import evaluate_run
from finetune_core.evaluation.predict import explain_image
from finetune_core.export.exporter import export_run, read_export_checks
from finetune_core.reporting import charts
from finetune_core.reporting.compare import HEADLINE, config_diff, headline_metrics, metrics_table
from finetune_core.reporting.gallery import cell_predictions, source_names, true_class_probability
from finetune_core.reporting.report import build_report
from finetune_core.runs import RunError, RunFolder
from finetune_core.store import RunRecord, RunStatus
from ui.components import (
    Metric,
    Thumb,
    cell_from_selection,
    error_box,
    esc,
    fmt_duration,
    fmt_pct,
    fmt_when,
    metric_row,
    paginate,
    pick_run,
    run_label,
    status_badge,
    thumbnail_grid,
)
from ui.services import get_job_manager, get_workspace, load_model, predictions, public

ws = get_workspace()
CELL_PAGE = 24
EXPORT_FORMATS = {
    "checkpoint": "PyTorch checkpoint + labels",
    "pt2": "ExportedProgram (.pt2)",
    "torchscript": "TorchScript",
    "onnx": "ONNX",
}
SPLIT_NAMES = {"val": "Validation", "test": "Test"}

st.title("Evaluation")


def has_model(record: RunRecord) -> bool:
    folder = ws.run_dir(record.id)
    return (folder / "checkpoints" / "best.pt").exists() or (folder / "eval.json").exists()


candidates = [r for r in ws.list_runs() if r.status not in RunStatus.ACTIVE and has_model(r)]
if not candidates:
    st.info(
        "No trained model to evaluate yet. Runs appear here once they have saved a model.",
        icon=":material/info:",
    )
    st.page_link("views/setup.py", label="Set up a run", icon=":material/tune:")
    st.stop()

run = pick_run(candidates, key="eval_run")
assert run is not None
try:
    folder = RunFolder(ws.run_dir(run.id))
except RunError as exc:
    error_box(str(exc), exc)
    st.stop()


# ----------------------------------------------------------------------- header
with st.container(horizontal=True, vertical_alignment="center"):
    st.subheader(esc(run.name or run.id), anchor=False)
    status_badge(run.status)
dataset_record = ws.get_dataset(run.dataset_id)
st.caption(
    f"{run.model} · {run.strategy} · dataset "
    f"{esc(dataset_record.name) if dataset_record else '(deleted)'} · best epoch "
    f"{run.best_epoch if run.best_epoch is not None else '–'} · trained in "
    f"{fmt_duration(run.train_seconds)} · {fmt_when(run.created_at)}"
)


def evaluate_now() -> None:

    with st.status("Evaluating on the validation and test images…", expanded=True) as status:
        try:
            evaluate_run(folder, workspace=ws, cache_dir=ws.cache_dir, progress=st.write)
        except RunError as exc:
            status.update(label="Evaluation failed", state="error", expanded=True)
            st.error(esc(public(str(exc))))
            return
        except Exception as exc:
            status.update(label="Evaluation failed", state="error", expanded=True)
            error_box(f"The evaluation failed: {exc}", exc)
            return
        status.update(label="Evaluation finished", state="complete")
    st.rerun()


def format_metric(key_name: str, value: Any) -> str:
    if value is None:
        return "–"
    if key_name == "n":
        return f"{int(value):,}"
    if key_name in ("accuracy", "balanced_accuracy", "macro_f1", "ece"):
        return fmt_pct(value)
    return f"{value:.3f}"


def permalink() -> str:
    base = (st.context.url or "").split("?")[0] or "/evaluation"
    return f"{base}?run={run.id}"


def report_button() -> None:
    html_path = folder.path / "report.html"
    if html_path.exists():
        st.download_button(
            "Download report",
            html_path.read_bytes(),
            file_name=f"report-{run.id}.html",
            mime="text/html",
            icon=":material/description:",
            help="One HTML file with every chart and metric; opens offline, e.g. from an e-mail.",
        )
        return
    if st.button("Build the report", icon=":material/description:", key="build_report"):
        with st.spinner("Writing the report…"):
            try:
                build_report(folder, ws)
            except Exception as exc:
                error_box(f"The report could not be written: {exc}", exc)
                return
        st.rerun()


evaluation = folder.evaluation()
busy = get_job_manager().is_active(run.id)  # the post-run evaluation is still going
with st.container(horizontal=True, vertical_alignment="center"):
    if evaluation is None:
        if st.button(
            "Evaluate", type="primary", icon=":material/play_arrow:", key="evaluate", disabled=busy
        ):
            evaluate_now()
    else:
        if st.button("Re-evaluate", icon=":material/refresh:", key="evaluate", disabled=busy):
            evaluate_now()
        report_button()
    with st.popover("Permalink", icon=":material/link:"):
        st.caption("Anyone on this server can open this run's evaluation with:")
        st.code(permalink(), language="text")

if evaluation is None and busy:
    st.info(
        "The model is being evaluated right after training; this page shows the results in a "
        "moment (refresh it).",
        icon=":material/hourglass_top:",
    )
    st.stop()
if evaluation is None:
    st.info(
        "This run has a trained model but no evaluation yet. Evaluate it to see the confusion "
        "matrix, per-class scores and mistakes.",
        icon=":material/info:",
    )
    st.stop()

splits = [s for s in ("test", "val") if s in evaluation.get("splits", {})]
split = (
    st.segmented_control(
        "Evaluated on",
        splits,
        format_func=lambda s: f"{SPLIT_NAMES.get(s, s)} ({evaluation['splits'][s]['n']} images)",
        default=splits[0],
        key=f"eval_split_{run.id}",
        help="Test images were never used during training; validation images picked the best epoch.",
    )
    or splits[0]
)
metrics: dict[str, Any] = evaluation["splits"][split]
class_names: list[str] = list(evaluation.get("class_names") or metrics["class_names"])
head = headline_metrics(metrics)
cards = [
    Metric("Accuracy", fmt_pct(head["accuracy"])),
    Metric(
        "Balanced accuracy",
        fmt_pct(head["balanced_accuracy"]),
        help="Mean recall over classes: not inflated by a large class.",
    ),  # fmt: skip
    Metric("Macro F1", fmt_pct(head["macro_f1"])),
    Metric("Macro AUC", f"{head['macro_auc']:.3f}" if head["macro_auc"] is not None else "–"),
    Metric("Log loss", f"{head['log_loss']:.3f}" if head["log_loss"] is not None else "–"),
    Metric(
        "Calibration error",
        fmt_pct(head["ece"]),
        help="Expected calibration error: how far confidence is from accuracy.",
    ),  # fmt: skip
]
for k, value in sorted((metrics.get("top_k") or {}).items()):
    cards.append(Metric(f"Top-{k.removeprefix('top')} accuracy", fmt_pct(value)))
metric_row(cards, per_row=3 if len(cards) in (5, 6) else 4)
preds = [p for p in predictions(folder.path) if p.get("split") == split]
if preds and len({p["pred"] for p in preds}) == 1 and len(class_names) > 1:
    st.warning(
        f"Every {SPLIT_NAMES.get(split, split).lower()} image is predicted as the same class "
        f"('{esc(preds[0]['pred'])}'): the model has not learned to tell the classes apart. Train longer, "
        "use pretrained weights, or check the data.",
        icon=":material/warning:",
    )


def dataset_or_none() -> Any:
    try:
        return run_dataset(folder, ws)
    except RunError:
        return None


dataset = dataset_or_none()
sources = source_names(dataset) if dataset is not None else {}


def image_file(rel_path: str) -> Path | None:
    if dataset is None:
        return None
    path = dataset.images_dir / rel_path
    return path if path.is_file() else None


def short(rel_path: str) -> str:
    return Path(sources.get(rel_path, rel_path)).name


tabs = st.tabs(
    [
        "Confusion matrix",
        "Per class",
        "Top losses",
        "ROC & PR",
        "Calibration",
        "Activation maps",
        "Training",
        "Compare runs",
    ]  # fmt: skip
)


# ----------------------------------------------------------------------- confusion
def remember_cell() -> None:
    cell = cell_from_selection(st.session_state.get(f"cm_{run.id}_{split}"))
    if cell is not None:
        st.session_state["eval_cell"] = {"run": run.id, "split": split, "cell": list(cell)}


def choose_cell(i: int, j: int) -> None:
    st.session_state["eval_cell"] = {"run": run.id, "split": split, "cell": [i, j]}


with tabs[0]:
    normalized = st.toggle("Show row percentages", key="cm_normalized",
                           help="Each row sums to 100%: the share of a true class predicted "
                           "as each class.")  # fmt: skip
    st.plotly_chart(
        charts.confusion_matrix(metrics["confusion"], class_names, normalized=normalized),
        key=f"cm_{run.id}_{split}",
        on_select=remember_cell,
        selection_mode="points",
    )
    confused = metrics.get("most_confused") or []
    if confused:
        st.caption("Click a cell to see its images, or open one of the most confused pairs:")
        with st.container(horizontal=True):
            for n, pair in enumerate(confused[:6]):
                st.button(
                    f"{esc(pair['true'])} → {esc(pair['pred'])} ({pair['count']})",
                    key=f"confused_{n}",
                    on_click=choose_cell,
                    args=(pair["true_index"], pair["pred_index"]),
                )
    else:
        st.caption("Click a cell to see its images.")
    selected = st.session_state.get("eval_cell")
    if selected and selected.get("run") == run.id and selected.get("split") == split:
        i, j = selected["cell"]
        if 0 <= i < len(class_names) and 0 <= j < len(class_names):
            true_name, pred_name = class_names[i], class_names[j]
            rows = cell_predictions(preds, split, true_name, pred_name)
            kind = "correct" if i == j else "mistakes"
            st.markdown(
                f"**True {esc(true_name)}, predicted {esc(pred_name)}** · {len(rows)} image(s), "
                f"{kind}, most confident first"
            )
            if not rows:
                st.caption("No images in this cell.")
            elif dataset is None:
                st.warning("The run's dataset was deleted, so its images cannot be shown.")
            else:
                page = paginate(len(rows), CELL_PAGE, key=f"cell_page_{run.id}_{split}_{i}_{j}")
                items = []
                for row in rows[page]:
                    p_true = true_class_probability(row, class_names)
                    caption = f"p({pred_name}) {row['prob_pred']:.2f}"
                    if i != j and p_true is not None:
                        caption += f" · p({true_name}) {p_true:.2f}"
                    items.append(
                        Thumb(image_file(row["path"]), f"{caption} · {short(row['path'])}")
                    )
                thumbnail_grid(items, columns=6)


# ----------------------------------------------------------------------- per class
with tabs[1]:
    per_class = pd.DataFrame(metrics.get("per_class") or [])
    if per_class.empty:
        st.info("No per-class metrics.")
    else:
        per_class = per_class.rename(
            columns={
                "class": "Class",
                "precision": "Precision",
                "recall": "Recall",
                "f1": "F1",
                "support": "Images",
            }  # fmt: skip
        )
        bar = {"min_value": 0.0, "max_value": 1.0, "format": "percent"}
        st.dataframe(
            per_class,
            hide_index=True,
            width="stretch",
            column_config={
                "Precision": st.column_config.ProgressColumn(**bar),
                "Recall": st.column_config.ProgressColumn(**bar),
                "F1": st.column_config.ProgressColumn(**bar),
            },
        )
        st.plotly_chart(charts.per_class_bars(metrics.get("per_class") or []), key="per_class")


# ----------------------------------------------------------------------- top losses
with tabs[2]:
    losses = metrics.get("top_losses") or []
    if not losses:
        st.success("No mistakes on this split.", icon=":material/celebration:")
    elif dataset is None:
        st.warning("The run's dataset was deleted, so its images cannot be shown.")
    else:
        st.caption(
            "The images the model got most wrong: a confident wrong answer often means a "
            "mislabelled image."
        )
        thumbnail_grid(
            [
                Thumb(
                    image_file(item["path"]) if item.get("path") else None,
                    f"true {item['true']} · predicted {item['pred']} ({item['prob_pred']:.2f}) · "
                    f"loss {item['loss']:.2f}",
                )
                for item in losses
            ],
            columns=6,
        )


# ----------------------------------------------------------------------- curves
with tabs[3]:
    st.plotly_chart(
        charts.roc_pr_curves(metrics.get("roc") or {}, metrics.get("pr") or {}, class_names),
        key="roc_pr",
    )
with tabs[4]:
    st.plotly_chart(charts.reliability_diagram(metrics.get("calibration") or {}), key="calibration")
    st.caption(
        "Bars at the diagonal mean the model's confidence matches how often it is right; "
        "bars below it mean over-confidence."
    )


# ----------------------------------------------------------------------- Grad-CAM
@st.cache_data(max_entries=256, show_spinner=False)
def cam_images(run_dir: str, mtime: float, image: str) -> tuple[bytes, bytes, str, str]:

    model = load_model(Path(run_dir))
    result = explain_image(model, open_rgb(image))
    encoded = []
    for picture in (result.image, result.overlay):
        buffer = io.BytesIO()
        picture.save(buffer, "PNG")
        encoded.append(buffer.getvalue())
    prob = f" ({result.probability:.2f})" if result.probability is not None else ""
    return encoded[0], encoded[1], f"{result.class_name}{prob}", result.note


with tabs[5]:
    if dataset is None or not preds:
        st.info("Activation maps need the run's dataset and its predictions.")
    else:
        ordered = sorted(preds, key=lambda p: (p["true"] == p["pred"], p["prob_pred"]))
        options = [p["path"] for p in ordered]
        by_path = {p["path"]: p for p in ordered}
        chosen = st.multiselect(
            "Images",
            options,
            default=options[: min(3, len(options))],
            max_selections=8,
            format_func=lambda p: (
                f"{short(p)} (true {by_path[p]['true']}, predicted {by_path[p]['pred']})"
            ),
            key=f"cam_images_{run.id}_{split}",
            help="Mistakes are listed first.",
        )
        st.caption("Grad-CAM highlights the regions that drove the prediction (red = strong).")
        try:
            mtime = folder.checkpoint_path("best").stat().st_mtime
        except OSError:
            mtime = None
        if mtime is None:
            st.info("This run has no saved model, so activation maps cannot be computed.")
        elif chosen and st.toggle("Compute the activation maps", key=f"cam_on_{run.id}"):
            with st.grid(4, min_column_width=150):
                for path in chosen:
                    file = image_file(path)
                    if file is None:
                        continue
                    try:
                        original, heat, label, note = cam_images(str(folder.path), mtime, str(file))
                    except Exception as exc:
                        error_box(f"No activation map for {short(path)}: {exc}", exc)
                        continue
                    with st.container(border=True):
                        st.image(
                            original,
                            caption=esc(f"{short(path)} · true {by_path[path]['true']}"),
                            width="stretch",
                        )
                        st.image(heat, caption=esc(f"predicted {label}"), width="stretch")
                        st.caption(esc(note))


# ----------------------------------------------------------------------- training
with tabs[6]:
    history = folder.history()
    st.plotly_chart(charts.training_curves(history, run.best_epoch), key="eval_curves")
    config_rows = [
        {"Setting": k, "Value": str(v)} for k, v in sorted(folder.config.to_dict().items())
    ]
    left, right = st.columns(2, gap="medium")
    with left:
        st.markdown("**Settings**")
        st.dataframe(pd.DataFrame(config_rows), hide_index=True, width="stretch", height=320)
    with right:
        env = folder.info.get("environment") or {}
        st.markdown("**Environment**")
        st.dataframe(
            pd.DataFrame([{"Item": k, "Value": str(v)} for k, v in env.items()]),
            hide_index=True,
            width="stretch",
        )
        if folder.info.get("dataset_fingerprint"):
            st.caption(f"Data fingerprint `{folder.info['dataset_fingerprint'][:16]}`")
        if folder.info.get("cli"):
            st.code(folder.info["cli"], language="bash", wrap_lines=True)


# ----------------------------------------------------------------------- compare
with tabs[7]:
    others = [r for r in ws.list_runs() if r.id != run.id and r.status not in RunStatus.ACTIVE]
    if not others:
        st.info("Train another run to compare it with this one.")
    else:
        by_id = {r.id: r for r in others}
        picked = st.multiselect(
            "Compare with",
            list(by_id),
            format_func=lambda i: run_label(by_id[i]),
            key=f"compare_{run.id}",
            max_selections=5,
        )
        if picked:
            group = [run] + [by_id[i] for i in picked]

            def label_of(record: RunRecord) -> str:
                return f"{record.name or record.model} ({record.id[-4:]})"

            metric = (
                st.segmented_control(
                    "Curve",
                    ["val_accuracy", "val_loss", "train_loss", "train_accuracy"],
                    default="val_accuracy",
                    format_func=lambda m: m.replace("_", " "),
                    key="compare_metric",
                )
                or "val_accuracy"
            )
            histories = {
                label_of(r): RunFolder(ws.run_dir(r.id)).history()
                for r in group
                if (ws.run_dir(r.id) / "config.json").exists()
            }
            st.plotly_chart(charts.run_comparison(histories, metric), key="compare_chart")
            evaluations = {
                label_of(r): RunFolder(ws.run_dir(r.id)).evaluation()
                for r in group
                if (ws.run_dir(r.id) / "config.json").exists()
            }
            st.markdown(f"**Metrics on the {SPLIT_NAMES.get(split, split).lower()} split**")
            rows = metrics_table(evaluations, split)
            for row, (key_name, _title) in zip(rows, HEADLINE, strict=True):
                for column in list(row)[1:]:
                    row[column] = format_metric(key_name, row[column])
            st.dataframe(pd.DataFrame(rows).rename(columns={"metric": "Metric"}).set_index("Metric"),
                         width="stretch")  # fmt: skip
            diff = config_diff({label_of(r): r.config for r in group})
            st.markdown("**Settings that differ**")
            if diff:
                st.dataframe(
                    pd.DataFrame(diff).rename(columns={"setting": "Setting"}).set_index("Setting"),
                    width="stretch",
                )
            else:
                st.caption("The runs used the same settings.")


# ----------------------------------------------------------------------- export
def export_section() -> None:
    st.subheader("Export the model")
    st.caption(
        "Each export is a zip with the model, its labels, a stand-alone predict.py and a "
        "verification against the PyTorch model on real images."
    )
    left, right = st.columns([1, 2], gap="medium")
    fmt = left.selectbox(
        "Format", list(EXPORT_FORMATS), format_func=EXPORT_FORMATS.get, key="export_fmt"
    )
    if left.button("Export and verify", icon=":material/upload_file:", key="export_go"):
        with right, st.spinner(f"Exporting to {EXPORT_FORMATS[fmt]} and checking it…"):
            try:
                export_run(folder, fmt, workspace=ws)
            except Exception as exc:  # RunError/ExportError explain themselves
                error_box(f"The export failed: {exc}", exc)
    checks = {c.get("format"): c for c in read_export_checks(folder)}
    check = checks.get(fmt)
    zip_path = folder.path / "export" / f"{fmt}.zip"
    with right:
        if check is None:
            st.caption(f"Not exported to {EXPORT_FORMATS[fmt]} yet.")
        elif check.get("passed"):
            st.success(check.get("message", "Verified."), icon=":material/verified:")
        else:
            st.warning(check.get("message", "Not verified."), icon=":material/warning:")
        if check is not None and zip_path.is_file():
            st.download_button(
                f"Download {EXPORT_FORMATS[fmt]} (.zip)",
                zip_path.read_bytes(),
                file_name=f"{run.id}-{fmt}.zip",
                mime="application/zip",
                icon=":material/download:",
                key="export_download",
                on_click="ignore",
            )
    if checks:
        table = pd.DataFrame(
            [
                {
                    "Format": EXPORT_FORMATS.get(f, f),
                    "Verified": "yes" if c.get("passed") else "no",
                    "Max. difference": c.get("max_abs_diff"),
                    "Tolerance": c.get("tolerance"),
                    "Checked": fmt_when(c.get("checked_at")),
                }
                for f, c in checks.items()
            ]
        )
        st.dataframe(
            table,
            hide_index=True,
            width="stretch",
            column_config={
                "Max. difference": st.column_config.NumberColumn(format="%.1e"),
                "Tolerance": st.column_config.NumberColumn(format="%.0e"),
            },
        )


export_section()
