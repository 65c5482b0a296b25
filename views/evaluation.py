"""Evaluation: metrics, confusion matrix whose cells open the images, errors, curves,
activation maps, run comparison, report, export and a permalink."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from finetune_core.auth.access import PermissionDenied, can_modify, guarded_evaluate, guarded_export
from finetune_core.data.dataset import Dataset, run_dataset
from finetune_core.evaluation.evaluate import evaluate_run
from finetune_core.evaluation.honesty import split_honesty
from finetune_core.export import FORMAT_TITLES, FORMATS, export_run, read_export_checks
from finetune_core.reporting.compare import headline_metrics
from finetune_core.reporting.gallery import source_names
from finetune_core.reporting.report import build_report, report_state
from finetune_core.runs import RunError, RunFolder
from finetune_core.store import RunRecord
from ui.components import (
    Metric,
    error_box,
    esc,
    fmt_duration,
    fmt_metric,
    fmt_pct,
    fmt_when,
    metric_row,
    pick_run,
    status_badge,
)
from ui.evaluation_tabs import SPLIT_NAMES, TAB_TITLES, TABS, EvalView
from ui.services import (
    finished_runs_with_model,
    get_job_manager,
    get_workspace,
    predictions,
    public,
    user,
)

ws = get_workspace()


# ----------------------------------------------------------------------- run
def pick_evaluated_run() -> tuple[RunRecord, RunFolder]:
    """The run to evaluate (the page stops when none has a model)."""
    candidates = finished_runs_with_model()
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
        return run, RunFolder(ws.run_dir(run.id))
    except RunError as exc:
        error_box(str(exc), exc)
        st.stop()


def header(run: RunRecord) -> None:
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


def evaluate_now(run: RunRecord, folder: RunFolder) -> None:
    with st.status("Evaluating on the validation and test images…", expanded=True) as status:
        try:
            guarded_evaluate(ws, user(), run.id, lambda: evaluate_run(
                folder, workspace=ws, cache_dir=ws.cache_dir, progress=st.write))  # fmt: skip
        except PermissionDenied as exc:
            status.update(label="Not allowed", state="error", expanded=True)
            st.error(esc(str(exc)))
            return
        except RunError as exc:
            status.update(label="Evaluation failed", state="error", expanded=True)
            st.error(esc(public(str(exc))))
            return
        except Exception as exc:
            status.update(label="Evaluation failed", state="error", expanded=True)
            error_box(f"The evaluation failed: {exc}", exc)
            return
        status.update(label="Evaluation finished", state="complete")
    rebuild_report(folder)
    st.rerun()


def rebuild_report(folder: RunFolder) -> bool:
    """Write the run's report again (it shows the evaluation and every export); a failure
    is shown but never undoes the evaluation or export that came before it."""
    try:
        build_report(folder, ws)
    except Exception as exc:
        error_box(f"The report could not be rebuilt: {exc}", exc)
        return False
    return True


def permalink(run: RunRecord) -> str:
    base = (st.context.url or "").split("?")[0] or "/evaluation"
    return f"{base}?run={run.id}"


def report_button(run: RunRecord, folder: RunFolder) -> None:
    """Download the report, or (re)build it when there is none or it is out of date."""
    state = report_state(folder)
    if folder.paths.report.exists():
        st.download_button(
            "Download report",
            folder.paths.report.read_bytes(),
            file_name=f"report-{run.id}.html",
            mime="text/html",
            icon=":material/description:",
            help="One HTML file with every chart and metric; opens offline, e.g. from an e-mail.",
        )
    if state.stale:
        label = "Rebuild the report" if state.built_at else "Build the report"
        if st.button(label, icon=":material/description:", key="build_report"):
            with st.spinner("Writing the report…"):
                if not rebuild_report(folder):
                    return
            st.rerun()


def report_age(folder: RunFolder) -> None:
    """When the report was built, and what changed since (if anything)."""
    state = report_state(folder)
    if state.built_at is None:
        st.caption("No report has been built for this run yet.")
        return
    built = fmt_when(state.built_at.isoformat())
    if state.changed:
        st.caption(
            f":material/warning: Report built {built}; {' and '.join(state.changed)} changed "
            "since. Rebuild it to share the current numbers."
        )
    else:
        st.caption(f"Report built {built}, up to date.")


def evaluation_actions(run: RunRecord, folder: RunFolder) -> dict[str, Any]:
    """Evaluate, report and permalink; the evaluation (the page stops while there is none)."""
    evaluation = folder.evaluation()
    busy = get_job_manager().is_active(run.id)  # the post-run evaluation is still going
    with st.container(horizontal=True, vertical_alignment="center"):
        if evaluation is None:
            if st.button("Evaluate", type="primary", icon=":material/play_arrow:",
                         key="evaluate", disabled=busy):  # fmt: skip
                evaluate_now(run, folder)
        else:
            allowed = can_modify(user(), run)
            why = (
                None
                if allowed
                else f"Only {run.creator or 'its creator'} or an admin can re-evaluate this run."
            )
            if st.button("Re-evaluate", icon=":material/refresh:", key="evaluate",
                         disabled=busy or not allowed, help=why):  # fmt: skip
                evaluate_now(run, folder)
            report_button(run, folder)
        with st.popover("Permalink", icon=":material/link:"):
            st.caption("Anyone on this server can open this run's evaluation with:")
            st.code(permalink(run), language="text")
    if evaluation is not None:
        report_age(folder)
    if evaluation is None and busy:
        st.info(
            "The model is being evaluated right after training; this page shows the results "
            "in a moment (refresh it).",
            icon=":material/hourglass_top:",
        )
        st.stop()
    if evaluation is None:
        st.info(
            "This run has a trained model but no evaluation yet. Evaluate it to see the "
            "confusion matrix, per-class scores and mistakes.",
            icon=":material/info:",
        )
        st.stop()
    return evaluation


def split_picker(run: RunRecord, evaluation: dict[str, Any]) -> str:
    splits = [s for s in ("test", "val") if s in evaluation.get("splits", {})]
    chosen = st.segmented_control(
        "Evaluated on",
        splits,
        format_func=lambda s: f"{SPLIT_NAMES.get(s, s)} ({evaluation['splits'][s]['n']} images)",
        default=splits[0],
        key=f"eval_split_{run.id}",
        help="Test images were never used during training; validation images picked the best "
        "epoch.",
    )
    return chosen or splits[0]


def evaluation_view(run: RunRecord, folder: RunFolder, evaluation: dict[str, Any]) -> EvalView:
    split = split_picker(run, evaluation)
    metrics: dict[str, Any] = evaluation["splits"][split]
    try:
        dataset: Dataset | None = run_dataset(folder, ws)
    except RunError:
        dataset = None
    return EvalView(
        run=run,
        folder=folder,
        split=split,
        metrics=metrics,
        class_names=list(evaluation.get("class_names") or metrics["class_names"]),
        preds=[p for p in predictions(folder.path) if p.get("split") == split],
        dataset=dataset,
        sources=source_names(dataset) if dataset is not None else {},
    )


def honest_headline(view: EvalView, evaluation: dict[str, Any]) -> None:
    """Which split the figures are on, whether it chose the model, and how far to trust it."""
    honest = split_honesty(evaluation, view.split)
    box = st.warning if honest.chose_model else st.info
    box(esc(honest.text), icon=":material/balance:")
    if honest.warnings:
        st.warning("\n".join(f"- {esc(w)}" for w in honest.warnings), icon=":material/warning:")


def metric_cards(view: EvalView, evaluation: dict[str, Any]) -> None:
    head = headline_metrics(view.metrics)
    honest = split_honesty(evaluation, view.split)
    lo, hi = honest.interval
    cards = [
        Metric(
            "Accuracy",
            fmt_pct(head["accuracy"]),
            help=f"On the {honest.title.lower()} split ({honest.n} images); {honest.label}.",
        ),
        Metric(
            "95% interval",
            f"{fmt_pct(lo)}–{fmt_pct(hi)}",
            help="Wilson score interval of the accuracy: where the accuracy on new images "
            "of this kind probably lies, given how few images were tested.",
        ),
        Metric(
            "Majority baseline",
            fmt_pct(honest.baseline),
            help=f"Accuracy of always predicting the most frequent class "
            f"('{esc(honest.baseline_class)}'); a useful model beats it.",
        ),
        Metric(
            "Balanced accuracy",
            fmt_pct(head["balanced_accuracy"]),
            help="Mean recall over classes: not inflated by a large class.",
        ),
        Metric("Macro F1", fmt_pct(head["macro_f1"])),
        Metric(
            "Macro AUC",
            fmt_metric("macro_auc", head["macro_auc"]) if honest.auc_defined else "undefined",
        ),
        Metric("Log loss", fmt_metric("log_loss", head["log_loss"])),
        Metric(
            "Calibration error",
            fmt_pct(head["ece"]),
            help="Expected calibration error: how far confidence is from accuracy.",
        ),
    ]
    for k, value in sorted((view.metrics.get("top_k") or {}).items()):
        cards.append(Metric(f"Top-{k.removeprefix('top')} accuracy", fmt_pct(value)))
    # The accuracy, its interval and its baseline on a row of their own (room for "a–b%").
    metric_row(cards[:3], per_row=3)
    rest = cards[3:]
    metric_row(rest, per_row=3 if len(rest) in (5, 6) else 4)
    preds = view.preds
    if preds and len({p["pred"] for p in preds}) == 1 and len(view.class_names) > 1:
        st.warning(
            f"Every {SPLIT_NAMES.get(view.split, view.split).lower()} image is predicted as the "
            f"same class ('{esc(preds[0]['pred'])}'): the model has not learned to tell the "
            "classes apart. Train longer, use pretrained weights, or check the data.",
            icon=":material/warning:",
        )


def main() -> tuple[RunRecord, RunFolder]:
    st.title("Evaluation")
    run, folder = pick_evaluated_run()
    header(run)
    evaluation = evaluation_actions(run, folder)
    view = evaluation_view(run, folder, evaluation)
    honest_headline(view, evaluation)
    metric_cards(view, evaluation)
    for tab, section in zip(st.tabs(TAB_TITLES), TABS, strict=True):
        with tab:
            section(view)
    return run, folder


# ----------------------------------------------------------------------- export
def export_section() -> None:
    st.subheader("Export the model")
    st.caption(
        "Each export is a zip with the model, its labels, a stand-alone predict.py and a "
        "verification against the PyTorch model on real images."
    )
    left, right = st.columns([1, 2], gap="medium")
    fmt = left.selectbox("Format", list(FORMATS), format_func=FORMAT_TITLES.get, key="export_fmt")
    replaces = folder.paths.export_zip(fmt).is_file()
    allowed = not replaces or can_modify(user(), run)
    why = None if allowed else (
        f"Only {run.creator or 'its creator'} or an admin can replace this run's export."
    )  # fmt: skip
    if left.button("Export and verify", icon=":material/upload_file:", key="export_go",
                   disabled=not allowed, help=why):  # fmt: skip
        with right, st.spinner(f"Exporting to {FORMAT_TITLES[fmt]} and checking it…"):
            try:
                guarded_export(
                    ws, user(), run.id, fmt, lambda: export_run(folder, fmt, workspace=ws)
                )
                exported = True
            except PermissionDenied as exc:
                st.error(esc(str(exc)))
                exported = False
            except Exception as exc:  # RunError/ExportError explain themselves
                error_box(f"The export failed: {exc}", exc)
                exported = False
        # The report lists every export's verification (failed ones too): rebuild it, and
        # after a success redraw the page so the report's age above is current.
        if folder.evaluation() is not None and rebuild_report(folder) and exported:
            st.rerun()
    checks = {c.get("format"): c for c in read_export_checks(folder)}
    check = checks.get(fmt)
    zip_path = folder.paths.export_zip(fmt)
    with right:
        if check is None:
            st.caption(f"Not exported to {FORMAT_TITLES[fmt]} yet.")
        elif check.get("passed"):
            st.success(check.get("message", "Verified."), icon=":material/verified:")
        else:
            st.warning(check.get("message", "Not verified."), icon=":material/warning:")
        if check is not None and zip_path.is_file():
            st.download_button(
                f"Download {FORMAT_TITLES[fmt]} (.zip)",
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
                    "Format": FORMAT_TITLES.get(f, f),
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


# export_section() reads ``run`` and ``folder`` from the module (being reworked separately).
run, folder = main()
export_section()
