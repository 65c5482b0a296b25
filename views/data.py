"""Data: import a dataset, read its health report, browse it, rename or delete it."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from finetune_core.auth.access import (
    PermissionDenied,
    can_modify,
    can_start,
    guarded_delete_dataset,
    guarded_rename_dataset,
)
from finetune_core.data import (
    DatasetNotFound,
    IngestError,
    ServerPath,
    SplitSpec,
    UploadedFile,
    ingest,
    load_dataset,
)
from finetune_core.data.dataset import Dataset
from finetune_core.data.health import Finding
from finetune_core.data.images import UPLOAD_TYPES
from finetune_core.data.uploads import stage_csv_upload
from finetune_core.reporting import charts
from finetune_core.reporting.gallery import class_rows, finding_files
from finetune_core.store import StoreError
from ui.components import (
    HEALTH_STYLE,
    Metric,
    Thumb,
    error_box,
    esc,
    fmt_when,
    health_badge,
    metric_row,
    paginate,
    pick_dataset,
    thumbnail_grid,
)
from ui.services import allow_server_paths, current_user, get_workspace, public, user

ws = get_workspace()
GALLERY_PAGE = 24
FINDING_THUMBS = 12


# ------------------------------------------------------------------------ import
def run_ingest(source: object, name: str, split: SplitSpec) -> None:
    """Import with a progress bar; on success select the new dataset."""
    with st.status(f"Importing {esc(name)}…", expanded=True) as status:
        bar = st.progress(0.0, text="Reading the upload")

        def progress(done: int, total: int, message: str) -> None:
            fraction = done / total if total else 0.0
            bar.progress(min(1.0, fraction), text=f"{done:,} / {total:,} files · {esc(message)}")

        try:
            result = ingest(
                ws, source, name=name, creator=current_user(), split=split, progress=progress
            )
        except IngestError as exc:
            status.update(label="Import failed", state="error", expanded=True)
            st.error(esc(public(str(exc))), icon=":material/error:")
            return
        except Exception as exc:  # a bug, not bad input: still a readable message
            status.update(label="Import failed", state="error", expanded=True)
            error_box("The import failed unexpectedly; nothing was saved.", exc)
            return
        status.update(label="Import finished", state="complete")
    dataset = result.dataset
    st.session_state["data_dataset"] = dataset.id
    st.query_params["dataset"] = dataset.id
    health = result.health
    note = (
        "training is blocked until the errors are fixed"
        if health.blocks_training
        else f"{len(health.warnings)} warning(s)"
        if health.warnings
        else "no problems found"
    )
    st.session_state["data_flash"] = (
        f"Imported {dataset.record.num_images:,} images in {dataset.num_classes} classes: {note}."
    )
    st.rerun()


def default_name(hint: str) -> str:
    stem = Path(hint).stem if hint else ""
    base = stem or f"dataset-{datetime.now():%Y%m%d-%H%M}"
    name, n = base, 1
    while ws.find_dataset_by_name(name):
        n += 1
        name = f"{base}-{n}"
    return name


def import_section() -> None:
    if not can_start(user()):
        st.info("Sign in to add datasets.", icon=":material/lock:")
        return
    has_data = bool(ws.list_datasets())
    with st.expander("Add a dataset", expanded=not has_data, icon=":material/add_photo_alternate:"):
        name_col, val_col, test_col, seed_col = st.columns([3, 1, 1, 1])
        name = name_col.text_input(
            "Dataset name",
            key="import_name",
            placeholder="taken from the upload when empty",
            help="A name your team will recognise, e.g. 'cats-vs-dogs v2'.",
        )
        val = val_col.number_input(
            "Validation %", 1, 50, 10, key="import_val",
            help="Share of each class set aside to pick the best epoch (used when the upload "
            "has no train/val folders).",
        )  # fmt: skip
        test = test_col.number_input(
            "Test %", 0, 50, 10, key="import_test",
            help="Share of each class kept for the final, untouched evaluation.",
        )  # fmt: skip
        seed = seed_col.number_input("Split seed", 0, 10**6, 0, key="import_seed")
        split = SplitSpec.from_fractions(val=val / 100, test=test / 100, seed=int(seed))
        for problem in split.problems():
            st.error(problem)
        st.caption(
            "Folders named `train`, `val` (or `valid`) and `test` keep your own split. Stray "
            "`__MACOSX`, `.ipynb_checkpoints` and hidden files are ignored, never classes."
        )
        tabs = st.tabs(["Zip archive", "Folder", "Class by class", "CSV + images", "Server path"])
        with tabs[0]:
            zip_tab(name, split)
        with tabs[1]:
            folder_tab(name, split)
        with tabs[2]:
            classes_tab(name, split)
        with tabs[3]:
            csv_tab(name, split)
        with tabs[4]:
            server_tab(name, split)


def zip_tab(name: str, split: SplitSpec) -> None:
    st.markdown(
        "A `.zip` with one folder per class, or `train/`, `val/`, `test/` folders of classes."
    )
    upload = st.file_uploader("Zip archive", type=["zip"], key="import_zip")
    if st.button("Import zip", key="import_zip_go", type="primary", disabled=upload is None):
        data = UploadedFile(upload.name, upload.getvalue())
        run_ingest(data, name.strip() or default_name(upload.name), split)


def folder_tab(name: str, split: SplitSpec) -> None:
    st.markdown(
        "Choose the folder that holds one sub-folder per class: each image's class is the "
        "name of the folder it is in."
    )
    files = st.file_uploader(
        "Dataset folder", accept_multiple_files="directory", key="import_folder"
    )
    if files:
        st.caption(f"{len(files):,} files selected.")
    if st.button("Import folder", key="import_folder_go", type="primary", disabled=not files):
        uploads = [UploadedFile(f.name, f.getvalue()) for f in files]
        top = files[0].name.replace("\\", "/").split("/")[0]
        run_ingest(uploads, name.strip() or default_name(top), split)


def classes_tab(name: str, split: SplitSpec) -> None:
    st.markdown("Name a class and drop its images; add as many classes as you need.")
    slots: list[int] = st.session_state.setdefault("class_slots", [0, 1])
    for slot in list(slots):
        with st.container(border=True):
            cols = st.columns([2, 5, 1], vertical_alignment="bottom")
            cols[0].text_input("Class name", key=f"class_name_{slot}", placeholder="e.g. cat")
            cols[1].file_uploader(
                "Images",
                accept_multiple_files=True,
                type=UPLOAD_TYPES,
                key=f"class_files_{slot}",
            )
            if len(slots) > 2 and cols[2].button(
                "", icon=":material/delete:", key=f"class_remove_{slot}", help="Remove this class"
            ):
                slots.remove(slot)
                st.rerun()
    if st.button("Add another class", icon=":material/add:", key="class_add"):
        slots.append(max(slots) + 1)
        st.rerun()
    if st.button("Import classes", key="import_classes_go", type="primary"):
        uploads, problems = _class_uploads(slots)
        if problems:
            for problem in dict.fromkeys(problems):
                st.error(problem)
        else:
            run_ingest(uploads, name.strip() or default_name(""), split)


def _class_uploads(slots: list[int]) -> tuple[list[UploadedFile], list[str]]:
    """The images of the class slots with their class names, and what stops importing them."""
    uploads: list[UploadedFile] = []
    problems: list[str] = []
    seen: set[str] = set()
    for slot in slots:
        label = str(st.session_state.get(f"class_name_{slot}", "")).strip()
        files = st.session_state.get(f"class_files_{slot}") or []
        if not label and not files:
            continue
        if not label:
            problems.append("Every class with images needs a name.")
        elif label.lower() in seen:
            problems.append(f"The class name '{esc(label)}' is used twice.")
        elif not files:
            problems.append(f"The class '{esc(label)}' has no images yet.")
        seen.add(label.lower())
        uploads += [UploadedFile(f.name, f.getvalue(), label=label) for f in files]
    if len(seen) < 2 and not problems:
        problems.append("A classifier needs at least two classes with images.")
    return uploads, problems


def csv_tab(name: str, split: SplitSpec) -> None:
    st.markdown(
        "A CSV with a `path` and a `label` column (optionally `split`), plus the images it "
        "lists: a zip, or the files. Paths are relative to the images folder."
    )
    csv_file = st.file_uploader("CSV file", type=["csv", "tsv", "txt"], key="import_csv")
    images = st.file_uploader(
        "Images (a zip or the image files)", accept_multiple_files=True, key="import_csv_images"
    )
    ready = csv_file is not None and bool(images)
    if st.button("Import CSV", key="import_csv_go", type="primary", disabled=not ready):
        try:
            staged = stage_csv_upload(
                ws.tmp_dir,
                csv_file.name,
                csv_file.getvalue(),
                [(f.name, f.getvalue()) for f in images],
            )
        except IngestError as exc:
            st.error(esc(public(str(exc))), icon=":material/error:")
            return
        try:
            run_ingest(staged.source, name.strip() or default_name(csv_file.name), split)
        finally:
            staged.cleanup()


def server_tab(name: str, split: SplitSpec) -> None:
    if not allow_server_paths():
        st.info(
            "Importing from a folder on the server is switched off. An admin can allow it with "
            "`FINETUNE_ALLOW_SERVER_PATHS=1` in the environment, or `allow_server_paths = true` "
            "under `[access]` in `.streamlit/secrets.toml`.",
            icon=":material/lock:",
        )
        return
    st.markdown(
        "A folder, `.zip` or `.csv` on this server (read in place, copied into the workspace)."
    )
    path = st.text_input("Server path", key="import_server_path", placeholder="/data/images")
    if st.button("Import from server", key="import_server_go", type="primary", disabled=not path):
        run_ingest(ServerPath(path.strip()), name.strip() or default_name(path.rstrip("/")), split)


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
