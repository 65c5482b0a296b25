"""The Data page's import: the split settings and one tab per kind of source (zip,
browser folder, class by class, CSV with its images, server path), each handing its
source to ``finetune_core.data.ingest``, where the same layout rules apply to all."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import streamlit as st

from finetune_core.auth.access import PermissionDenied, can_start
from finetune_core.auth.server_paths import SERVER_IMPORT_ADMINS_ONLY, check_server_import
from finetune_core.data import (
    IngestError,
    IngestLimits,
    ServerPath,
    SplitSpec,
    UploadedFile,
    ingest,
)
from finetune_core.data.images import UPLOAD_TYPES
from finetune_core.data.split import HOLDOUT_DEFAULT, HOLDOUT_MAX
from finetune_core.data.uploads import stage_csv_upload
from ui.auth import access_settings
from ui.components import error_box, esc
from ui.services import allow_server_paths, current_user, get_workspace, public, user


def run_ingest(source: object, name: str, split: SplitSpec) -> None:
    """Import with a progress bar; on success select the new dataset."""
    with st.status(f"Importing {esc(name)}…", expanded=True) as status:
        bar = st.progress(0.0, text="Reading the upload")

        def progress(done: int, total: int, message: str) -> None:
            fraction = done / total if total else 0.0
            bar.progress(min(1.0, fraction), text=f"{done:,} / {total:,} files · {esc(message)}")

        try:
            workspace = get_workspace()
            result = ingest(
                workspace,
                source,
                name=name,
                creator=current_user(),
                split=split,
                progress=progress,
                limits=IngestLimits.for_dir(workspace.root),  # the budget of this disk
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
    held_out = dataset.record.summary.get("test_held_out")
    kept = (
        f" Your split was kept; {held_out:.0%} of each class of its train part is held out "
        "as the test split (it had none)."
        if held_out
        else " Your split was kept."
        if dataset.record.summary.get("user_split")
        else ""
    )
    st.session_state["data_flash"] = (
        f"Imported {dataset.record.num_images:,} images in {dataset.num_classes} classes: "
        f"{note}.{kept}"
    )
    st.rerun()


def default_name(hint: str) -> str:
    stem = Path(hint).stem if hint else ""
    base = stem or f"dataset-{datetime.now():%Y%m%d-%H%M}"
    name, n = base, 1
    while get_workspace().find_dataset_by_name(name):
        n += 1
        name = f"{base}-{n}"
    return name


def import_section() -> None:
    if not can_start(user()):
        st.info("Sign in to add datasets.", icon=":material/lock:")
        return
    has_data = bool(get_workspace().list_datasets())
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
        holdout = holdout_choice()
        split = SplitSpec.from_fractions(
            val=val / 100, test=test / 100, seed=int(seed), holdout=holdout
        )
        for problem in split.problems():
            st.error(problem)
        st.caption(
            "Folders named `train`, `val` (or `valid`) and `test` keep your own split (in a "
            "zip, a folder or a server path alike). Stray `__MACOSX`, `.ipynb_checkpoints` and "
            "hidden files are ignored, never classes."
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


def holdout_choice() -> float:
    """The share of the user's own train split to hold out as test when it has no test."""
    left, right = st.columns([3, 1], vertical_alignment="bottom")
    on = left.checkbox(
        "If my data comes split without a test part, hold one out",
        value=True,
        key="import_holdout",
        help="The validation split picks the best epoch, so its accuracy is optimistic. A "
        "test split the model never influenced gives the honest figure. The images are "
        "taken from your train split, the same share of each class, with the split seed.",
    )
    pct = right.number_input(
        "Test hold-out %", 5, int(HOLDOUT_MAX * 100), int(HOLDOUT_DEFAULT * 100),
        key="import_holdout_pct", disabled=not on,
    )  # fmt: skip
    return pct / 100 if on else 0.0


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
        "Choose the folder that holds one sub-folder per class (each image's class is the "
        "name of its folder), or `train/`, `val/` [`test/`] folders of class folders."
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
                get_workspace().tmp_dir,
                csv_file.name,
                csv_file.getvalue(),
                [(f.name, f.getvalue()) for f in images],
            )
        except IngestError as exc:
            st.error(esc(public(str(exc))), icon=":material/error:")
            return
        except OSError as exc:  # the staging folder was removed; say why, not a traceback
            st.error(
                esc(public(f"The upload could not be written: {exc.strerror or exc}. "
                           "Check free disk space, then try again.")),
                icon=":material/error:",
            )  # fmt: skip
            return
        try:
            run_ingest(staged.source, name.strip() or default_name(csv_file.name), split)
        finally:
            staged.cleanup()


def server_tab(name: str, split: SplitSpec) -> None:
    if not user().is_admin:
        st.info(SERVER_IMPORT_ADMINS_ONLY, icon=":material/lock:")
        return
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
        try:  # the rule is the core's: admins only, inside the allowed roots, readable
            checked = check_server_import(access_settings(), user(), path)
        except PermissionDenied as exc:
            st.error(esc(public(str(exc))), icon=":material/error:")
            return
        run_ingest(ServerPath(str(checked)), name.strip() or default_name(path.rstrip("/")), split)
