"""Data: import a dataset, read its health report, browse it, rename or delete it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from finetune_core.auth.access import (
    PermissionDenied,
    can_modify,
    guarded_delete_dataset,
    guarded_rename_dataset,
)
from finetune_core.data import DatasetNotFound, load_dataset
from finetune_core.data.dataset import Dataset
from finetune_core.data.health import Finding
from finetune_core.reporting import charts
from finetune_core.reporting.gallery import class_rows, finding_files
from finetune_core.store import StoreError
from ui.components import (
    HEALTH_STYLE,
    Metric,
    Thumb,
    esc,
    fmt_when,
    health_badge,
    metric_row,
    paginate,
    pick_dataset,
    thumbnail_grid,
)
from ui.data_import import import_section
from ui.services import get_workspace, public, user

ws = get_workspace()
GALLERY_PAGE = 24
FINDING_THUMBS = 12


# ------------------------------------------------------------------------ browse
def datasets_table() -> None:
    records = ws.list_datasets()
    rows = [
        {
            "Name": r.name,
            "Images": r.num_images,
            "Classes": r.num_classes,
            "Health": HEALTH_STYLE.get(r.health, (r.health,))[0],
            "Source": r.source_kind,
            "Created": fmt_when(r.created_at),
            "Creator": r.creator or "–",
            "Id": r.id,
        }
        for r in records
    ]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def finding_block(dataset: Dataset, finding: Finding, index: int) -> None:
    """The finding's message; for findings about files, the files (thumbnails when the
    images are usable, e.g. duplicates; a table with the reason otherwise)."""
    show = {"error": st.error, "warning": st.warning, "info": st.info}.get(
        finding.severity, st.info
    )
    icon = {"error": ":material/block:", "warning": ":material/warning:"}.get(
        finding.severity, ":material/info:"
    )
    with st.container(gap="xxsmall"):
        show(esc(finding.message), icon=icon)
        if not finding.files:
            return  # class findings name their classes in the message
        files = finding_files(dataset, finding)
        with st.expander(f"Show the {finding.count} file(s)"):
            viewable = [f for f in files if f.path is not None and f.usable]
            if viewable:
                shown = viewable[:FINDING_THUMBS]
                thumbnail_grid(
                    [Thumb(f.path, f"{f.label}: {Path(f.source).name}") for f in shown], columns=6
                )
                if len(viewable) > len(shown):
                    st.caption(
                        f"First {len(shown)} of {len(viewable)} images; all are listed below."
                    )
            table = pd.DataFrame(
                [{"File": f.source, "Class": f.label or "–", "Reason": f.reason} for f in files]
            )
            if not any(f.reason for f in files):
                table = table.drop(columns="Reason")
            st.dataframe(table, hide_index=True, width="stretch", key=f"finding_table_{index}")
            if finding.count > len(files):
                st.caption(f"{len(files)} of {finding.count} files listed.")


def health_section(dataset: Dataset) -> None:
    health = dataset.health
    st.subheader("Health report")
    if health.blocks_training:
        st.error(
            "**Training is blocked** until the errors below are fixed: correct the data and "
            "import it again.",
            icon=":material/block:",
        )
    elif not health.findings:
        st.success("No problems found: readable images, no duplicates, no leakage, enough "
                   "images per class.", icon=":material/verified:")  # fmt: skip
    for i, finding in enumerate(health.findings):
        finding_block(dataset, finding, i)
    stats = health.stats
    width, height = stats.get("width") or {}, stats.get("height") or {}
    if width and height:
        st.caption(
            f"Image sizes: median {width.get('median', 0):g} × {height.get('median', 0):g} px "
            f"(smallest {width.get('min', 0):g} × {height.get('min', 0):g}, largest "
            f"{width.get('max', 0):g} × {height.get('max', 0):g}) · formats "
            + ", ".join(f"{k or '?'} {v}" for k, v in (stats.get("formats") or {}).items())
        )


def gallery_section(dataset: Dataset) -> None:
    st.subheader("Images")
    if not dataset.class_names:
        st.info("This dataset has no classes.")
        return
    left, right = st.columns([3, 2])
    label = left.selectbox("Class", dataset.class_names, key=f"gallery_class_{dataset.id}")
    split = right.segmented_control(
        "Split", ["all", "train", "val", "test"], default="all", key=f"gallery_split_{dataset.id}"
    )
    rows = class_rows(dataset, label, None if split in (None, "all") else split)
    if not rows:
        st.info("No images of this class in this split.")
        return
    st.caption(f"{len(rows):,} image(s)")
    page = paginate(len(rows), GALLERY_PAGE, key=f"gallery_page_{dataset.id}_{label}_{split}")
    thumbnail_grid(
        [Thumb(dataset.image_path(r), f"{r.split} · {Path(r.source).name}") for r in rows[page]],
        columns=8,
        size=140,
    )


def manage_section(dataset: Dataset) -> None:
    st.subheader("Manage")
    me = user()
    allowed = can_modify(me, dataset.record)
    if not allowed:
        owner = dataset.record.creator or "its creator"
        st.caption(f"Only {esc(owner)} or an admin can rename or delete this dataset.")
    left, right = st.columns(2, gap="medium")
    with left, st.container(border=True):
        new_name = st.text_input(
            "Rename to", value=dataset.name, key=f"rename_{dataset.id}", disabled=not allowed
        )
        if st.button(
            "Rename", key=f"rename_go_{dataset.id}", icon=":material/edit:", disabled=not allowed
        ):
            try:
                if new_name.strip() != dataset.name and ws.find_dataset_by_name(new_name.strip()):
                    raise StoreError(f"A dataset named {new_name.strip()!r} already exists.")
                guarded_rename_dataset(ws, me, dataset.id, new_name)
            except (StoreError, PermissionDenied) as exc:
                st.error(esc(public(str(exc))))
            else:
                st.session_state["data_flash"] = f"Renamed to {esc(new_name.strip())}."
                st.rerun()
    with right, st.container(border=True):
        used = [r for r in ws.list_runs() if r.dataset_id == dataset.id]
        st.markdown("**Delete this dataset**")
        st.caption(
            "Removes its images from the workspace. "
            + (
                f"{len(used)} run(s) trained on it keep their models and reports, but cannot be "
                "re-evaluated."
                if used
                else "No runs use it."
            )  # fmt: skip
        )
        confirm = st.checkbox(
            "Yes, delete it and its images",
            key=f"delete_confirm_{dataset.id}",
            disabled=not allowed,
        )
        if st.button(
            "Delete dataset",
            key=f"delete_go_{dataset.id}",
            icon=":material/delete:",
            disabled=not (confirm and allowed),
        ):
            try:
                guarded_delete_dataset(ws, me, dataset.id)
            except (StoreError, PermissionDenied) as exc:
                st.error(esc(public(str(exc))))
                return
            st.session_state.pop("data_dataset", None)
            st.query_params.pop("dataset", None)
            st.session_state["data_flash"] = f"Deleted {esc(dataset.name)}."
            st.rerun()


def dataset_section() -> None:
    records = ws.list_datasets()
    st.subheader("Datasets")
    if not records:
        st.info(
            "No datasets yet. Add one above, or create the demo dataset from the Home page.",
            icon=":material/info:",
        )
        return
    datasets_table()
    record = pick_dataset(records, key="data_dataset", label="Open dataset")
    if record is None:
        return
    try:
        dataset = load_dataset(ws, record.id)
    except DatasetNotFound as exc:
        st.error(esc(public(str(exc))))
        return
    st.divider()
    with st.container(horizontal=True, vertical_alignment="center"):
        st.header(esc(dataset.name), anchor=False)
        health_badge(record.health)
    totals: dict[str, Any] = {s: sum(c.values()) for s, c in dataset.split_counts().items()}
    metric_row(
        [
            Metric("Images", f"{record.num_images:,}"),
            Metric("Classes", str(dataset.num_classes)),
            Metric("Train", f"{totals.get('train', 0):,}"),
            Metric("Validation", f"{totals.get('val', 0):,}"),
            Metric("Test", f"{totals.get('test', 0):,}"),
        ]
    )
    with st.container(horizontal=True):
        st.page_link(
            "views/setup.py",
            label="Train a model on it",
            icon=":material/tune:",
            query_params={"dataset": dataset.id},
            disabled=dataset.health.blocks_training,
        )
    health_section(dataset)
    st.subheader("Class distribution")
    st.plotly_chart(charts.class_distribution(dataset.split_counts()), key="class_dist")
    gallery_section(dataset)
    manage_section(dataset)


def main() -> None:
    st.title("Data")
    if flash := st.session_state.pop("data_flash", None):
        st.success(flash, icon=":material/check_circle:")
    import_section()
    dataset_section()


main()
