"""What the HTML report shows about one run, gathered from its run folder.

Collecting is kept apart from rendering (``report_view`` and the template): rendering
stays free of run folders, so the tests can render any ``ReportData`` they build.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from finetune_core.data.dataset import run_dataset
from finetune_core.data.images import ImageReadError, open_rgb
from finetune_core.evaluation.evaluate import read_predictions
from finetune_core.export import read_export_checks
from finetune_core.reporting.gallery import image_origin, source_names
from finetune_core.runs import RunError, read_log, run_record, run_workspace

if TYPE_CHECKING:  # type hints only; the functions take these objects as arguments
    from finetune_core.runs import RunFolder
    from finetune_core.store import Workspace

GALLERY_LIMIT = 60


@dataclass
class ReportData:
    """Everything the report shows about one run; every field may be left empty."""

    run_name: str = ""
    run_id: str = ""
    created_at: str = ""
    creator: str = ""
    status: str = ""
    dataset_name: str = ""
    dataset_fingerprint: str = ""
    health_summary: list[dict] = field(default_factory=list)  # {severity, message, count}
    model: str = ""
    strategy: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    duration_seconds: float | None = None
    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    metrics: dict[str, dict] = field(default_factory=dict)  # split -> compute_metrics()
    class_names: list[str] = field(default_factory=list)
    split_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    # {thumbnail_png: bytes, true, pred, prob_pred, prob_true, split, name, origin}
    gallery: list[dict] = field(default_factory=list)
    notes: str = ""
    gallery_note: str = ""  # shown instead of the gallery when it is empty
    # {format, passed, max_abs_diff, tolerance}
    export_checks: list[dict] = field(default_factory=list)
    finished_at: str = ""
    generated_at: str = ""  # defaults to the time of rendering
    log: list[str] = field(default_factory=list)  # the run's log lines (runs.read_log)


def collect_report_data(
    run: RunFolder, workspace: Workspace | str | Path | None = None
) -> ReportData:
    """The ReportData of a run folder.

    Works for dashboard runs (the runs table adds name, status, creator, times and
    notes) and for CLI run folders anywhere (run.json names their workspace). Missing
    pieces (no evaluation, dataset deleted) leave their fields empty, never fail.
    """
    ws = run_workspace(run, workspace)
    record = run_record(run, ws)
    info, summary = run.info, run.summary()
    evaluation = run.evaluation() or {}
    dataset = _dataset_of(run, ws)
    config = run.config
    class_names = list(
        evaluation.get("class_names")
        or info.get("class_names")
        or (dataset.class_names if dataset else [])
    )
    gallery = misclassified_gallery(run, dataset, class_names)
    gallery_note = ""
    if not gallery and any(r["true"] != r["pred"] for r in read_predictions(run)):
        gallery_note = (
            "The images of the misclassified predictions cannot be shown: the run's dataset "
            "is no longer available."
            if dataset is None
            else "The images of the misclassified predictions could not be read."
        )
    environment = dict(info.get("environment") or {})
    if info.get("cli"):
        environment["CLI command"] = info["cli"]
    return ReportData(
        run_name=(record.name if record else "") or config.name or run.id,
        run_id=run.id,
        created_at=(record.created_at if record else "") or _mtime(run.paths.config),
        creator=record.creator if record else "",
        status=(record.status if record else "") or str(summary.get("status") or ""),
        dataset_name=str(info.get("dataset_name") or (dataset.name if dataset else "")),
        dataset_fingerprint=str(
            info.get("dataset_fingerprint") or evaluation.get("dataset_fingerprint") or ""
        ),
        health_summary=_health_summary(dataset),
        model=config.model,
        strategy=config.strategy,
        config=config.to_dict(),
        environment=environment,
        duration_seconds=_first(
            record.train_seconds if record else None, summary.get("train_seconds")
        ),
        history=run.history(),
        best_epoch=_first(record.best_epoch if record else None, summary.get("best_epoch")),
        metrics=dict(evaluation.get("splits") or {}),
        class_names=class_names,
        split_counts=dataset.split_counts() if dataset else {},
        gallery=gallery,
        gallery_note=gallery_note,
        notes=(record.notes if record else "") or config.notes,
        export_checks=read_export_checks(run),
        finished_at=((record.finished_at or "") if record else "") or _mtime(run.paths.summary),
        log=read_log(run.paths),
    )


def misclassified_gallery(
    run: RunFolder, dataset: Any, class_names: list[str], per_split: int = GALLERY_LIMIT
) -> list[dict]:
    """Thumbnails of the most confident mistakes in the run's predictions, per split.

    Paths are looked up in the dataset's manifest (relative paths only), so a stale or
    edited predictions file can never make the report read files outside the dataset.
    """
    if dataset is None:
        return []
    wrong = [r for r in read_predictions(run) if r["true"] != r["pred"]]
    if not wrong:
        return []
    manifest = {row.path: row for row in dataset.rows()}
    sources = source_names(dataset)
    index = {name: i for i, name in enumerate(class_names)}
    by_split: dict[str, list[dict]] = {}
    for row in wrong:
        by_split.setdefault(row["split"], []).append(row)
    items: list[dict] = []
    for rows in by_split.values():
        rows.sort(key=lambda r: -r["prob_pred"])
        for row in rows[:per_split]:
            entry = manifest.get(row["path"])
            if entry is None:
                continue
            try:
                image = open_rgb(dataset.image_path(entry), reduce_to=192)
            except (ImageReadError, OSError):
                continue
            t = index.get(row["true"])
            probs = row["probs"]
            origin = image_origin(row["path"], sources, row["split"])
            items.append(
                {
                    "name": origin.name,
                    "origin": origin.where,
                    "thumbnail_png": make_thumbnail(image),
                    "true": row["true"],
                    "pred": row["pred"],
                    "prob_pred": row["prob_pred"],
                    "prob_true": float(probs[t]) if t is not None and t < len(probs) else None,
                    "split": row["split"],
                }
            )
    return items


def make_thumbnail(image: Image.Image, size: int = 96) -> bytes:
    """A small JPEG (longest side ``size`` px) of ``image``, for the gallery."""
    if size < 8:
        raise ValueError(f"Thumbnail size must be at least 8 pixels (got {size}).")
    img = image.copy()
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        img = background
    elif img.mode in ("I", "I;16", "F"):
        img = img.point(lambda v: v / 256).convert("L")
    img = img.convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=82, optimize=True)
    return buf.getvalue()


def _dataset_of(run: RunFolder, workspace: Workspace | None) -> Any:
    if workspace is None:
        return None
    try:
        return run_dataset(run, workspace)
    except RunError:
        return None


def _health_summary(dataset: Any) -> list[dict]:
    if dataset is None:
        return []
    order = {"error": 0, "warning": 1, "info": 2}
    findings = sorted(dataset.health.findings, key=lambda f: order.get(f.severity, 3))
    return [{"severity": f.severity, "message": f.message, "count": f.count} for f in findings]


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _mtime(path: Path) -> str:
    try:
        stamp = path.stat().st_mtime
    except OSError:
        return ""
    return datetime.fromtimestamp(stamp, timezone.utc).isoformat(timespec="seconds")
