"""Small Streamlit building blocks shared by the pages.

User strings (class, dataset and run names) only ever reach the page through
``st.text``, dataframes, widget options or markdown passed through :func:`esc`;
nothing here uses ``unsafe_allow_html``.
"""

from __future__ import annotations

import math
import re
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import streamlit as st

from finetune_core.reporting.gallery import thumbnail_bytes
from finetune_core.store import DatasetRecord, RunRecord, RunStatus
from ui.services import public

# status -> (label, badge colour, icon)
STATUS_STYLE: dict[str, tuple[str, str, str]] = {
    RunStatus.QUEUED: ("Queued", "gray", ":material/schedule:"),
    RunStatus.RUNNING: ("Running", "blue", ":material/progress_activity:"),
    RunStatus.SUCCEEDED: ("Succeeded", "green", ":material/check_circle:"),
    RunStatus.FAILED: ("Failed", "red", ":material/error:"),
    RunStatus.STOPPED: ("Stopped", "orange", ":material/stop_circle:"),
    RunStatus.INTERRUPTED: ("Interrupted", "violet", ":material/pause_circle:"),
}
HEALTH_STYLE = {
    "ok": ("Healthy", "green"),
    "warning": ("Warnings", "orange"),
    "error": ("Errors", "red"),
}

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")


# ----------------------------------------------------------------------------- text
def esc(text: Any) -> str:
    """Escape a user string for markdown (captions, labels): shown as typed, never formatted."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def fmt_pct(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value * 100:.{digits}f}%"


PERCENT_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "ece")


def fmt_metric(name: str, value: float | None) -> str:
    """An evaluation metric as shown in cards and tables: shares as percentages, counts
    with thousands separators, the rest to three decimals."""
    if value is None:
        return "–"
    if name == "n":
        return f"{int(value):,}"
    if name in PERCENT_METRICS:
        return fmt_pct(value)
    return f"{value:.3f}"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0 or math.isnan(seconds):
        return "–"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def fmt_when(iso: str | None) -> str:
    """An ISO timestamp as local 'YYYY-MM-DD HH:MM'."""
    if not iso:
        return "–"
    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return iso


def parse_time(iso: str | None) -> datetime | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso)
    except ValueError:
        return None


def run_duration(run: RunRecord) -> float | None:
    """Training seconds, else wall time between start and finish."""
    if run.train_seconds:
        return float(run.train_seconds)
    start, end = parse_time(run.started_at), parse_time(run.finished_at)
    if start and end:
        return (end - start).total_seconds()
    return None


def status_label(status: str) -> str:
    return STATUS_STYLE.get(status, (status.title(),))[0]


def run_label(run: RunRecord) -> str:
    """'name · Status · id' for pickers (plain text: some browsers lack emoji fonts)."""
    return f"{run.name or run.model} · {status_label(run.status)} · {run.id}"


def dataset_label(record: DatasetRecord) -> str:
    return f"{record.name} · {record.num_images} images, {record.num_classes} classes"


# ----------------------------------------------------------------------------- badges
def status_badge(status: str) -> None:
    label, color, icon = STATUS_STYLE.get(status, (status.title(), "gray", None))
    st.badge(label, icon=icon, color=color)


def health_badge(health: str) -> None:
    label, color = HEALTH_STYLE.get(health, (health, "gray"))
    st.badge(label, color=color)


@dataclass(frozen=True)
class Metric:
    label: str
    value: str
    help: str | None = None


def metric_row(metrics: Sequence[Metric], per_row: int = 6) -> None:
    """Bordered metric cards in rows of equal columns (``per_row`` at most)."""
    per_row = max(1, min(per_row, len(metrics) or 1))
    for start in range(0, len(metrics), per_row):
        cols = st.columns(per_row, gap="small")
        for col, m in zip(cols, metrics[start : start + per_row], strict=False):
            col.metric(m.label, m.value, help=m.help, border=True)


def error_box(message: str, exc: BaseException | None = None, details: str | None = None) -> None:
    """A readable error, with the technical detail folded away (server paths hidden from
    users who are not admins)."""

    st.error(esc(public(message)), icon=":material/error:")
    text = details
    if text is None and exc is not None:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if text:
        with st.expander("Details"):
            st.code(public(text), language="text")


# ----------------------------------------------------------------------------- images
@st.cache_data(max_entries=5000, show_spinner=False)
def _thumb(path: str, mtime: float, size: int) -> bytes | None:
    return thumbnail_bytes(path, size)


def thumbnail(path: str | Path, size: int = 160) -> bytes | None:
    """A cached JPEG thumbnail of an image file (None if unreadable)."""
    try:
        mtime = Path(path).stat().st_mtime
    except OSError:
        return None
    return _thumb(str(path), mtime, size)


@dataclass(frozen=True)
class Thumb:
    """One gallery tile: an image file (or bytes) and a caption (a user string: escaped)."""

    image: Path | bytes | None
    caption: str = ""


def thumbnail_grid(items: Sequence[Thumb], columns: int = 6, size: int = 160) -> None:
    """Images in a responsive grid with their captions."""
    if not items:
        return
    with st.grid(columns, min_column_width=110, gap="small"):
        for item in items:
            data = thumbnail(item.image, size) if isinstance(item.image, Path) else item.image
            with st.container():
                if data:
                    st.image(data, width="stretch")
                else:
                    st.markdown(":material/broken_image: *cannot be shown*")
                if item.caption:
                    st.caption(esc(item.caption))


def paginate(total: int, page_size: int, key: str) -> slice:
    """Pagination controls when there is more than one page; the slice of this page."""
    pages = max(1, math.ceil(total / page_size))
    page = 1
    if pages > 1:
        page = st.pagination(pages, key=key)
        page = min(max(1, int(page or 1)), pages)
    start = (page - 1) * page_size
    return slice(start, min(total, start + page_size))


# ----------------------------------------------------------------------------- pickers
def _sync_param(param: str, key: str) -> None:
    value = st.session_state.get(key)
    if value:
        st.query_params[param] = value
    else:
        st.query_params.pop(param, None)


def pick_id(
    ids: Sequence[str],
    labels: dict[str, str],
    *,
    label: str,
    key: str,
    param: str,
    default: str | None = None,
    help: str | None = None,
) -> str | None:
    """A selectbox of ids mirrored in ``st.query_params[param]`` (permalinks).

    A valid id in the URL wins (it came from a link or switch_page); otherwise the
    previous choice, else ``default``, else the first id. The previous choice is kept
    under a key of its own: Streamlit drops a widget's state while another page is open.
    """
    if not ids:
        st.query_params.pop(param, None)
        return None
    remembered = f"{key}__chosen"
    wanted = st.query_params.get(param)
    if wanted in ids:
        st.session_state[key] = wanted
    elif st.session_state.get(key) not in ids:
        previous = st.session_state.get(remembered)
        st.session_state[key] = (
            previous if previous in ids else default if default in ids else ids[0]
        )
    choice = st.selectbox(
        label,
        list(ids),
        format_func=lambda i: labels.get(i, i),
        key=key,
        on_change=_sync_param,
        args=(param, key),
        help=help,
    )
    st.session_state[remembered] = choice
    if st.query_params.get(param) != choice:
        st.query_params[param] = choice
    return choice


def pick_run(
    runs: Sequence[RunRecord],
    *,
    key: str,
    label: str = "Run",
    default: str | None = None,
) -> RunRecord | None:
    by_id = {r.id: r for r in runs}
    chosen = pick_id(
        [r.id for r in runs],
        {r.id: run_label(r) for r in runs},
        label=label,
        key=key,
        param="run",
        default=default,
    )
    return by_id.get(chosen) if chosen else None


def pick_dataset(
    datasets: Sequence[DatasetRecord], *, key: str, label: str = "Dataset"
) -> DatasetRecord | None:
    by_id = {d.id: d for d in datasets}
    chosen = pick_id(
        [d.id for d in datasets],
        {d.id: dataset_label(d) for d in datasets},
        label=label,
        key=key,
        param="dataset",
    )
    return by_id.get(chosen) if chosen else None


# ----------------------------------------------------------------------------- plotly
def cell_from_selection(state: Any) -> tuple[int, int] | None:
    """(true, predicted) of the clicked confusion-matrix cell in a plotly selection state."""
    try:
        points = state["selection"]["points"]
    except (KeyError, TypeError):
        return None
    for point in points or []:
        data = point.get("customdata")
        if isinstance(data, (list, tuple)) and len(data) >= 2:
            try:
                return int(data[0]), int(data[1])
            except (TypeError, ValueError):
                continue
    return None
