"""Turn each kind of source into a Plan: the image candidates with their label and split,
plus the entries that were skipped and why. Nothing is copied here.

Sources: a zip (path or upload), a folder (class folders or train/val/test folders),
a CSV of path,label[,split], files uploaded from the browser with their labels, and a
server-side path.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from finetune_core.data.archive import Archive, ArchiveEntry, IngestLimits
from finetune_core.data.csv_dialect import SAMPLE_CHARS, detect_dialect
from finetune_core.data.errors import IngestError
from finetune_core.data.layout import (
    REASON_NOT_IMAGE,
    SPLIT_NAMES,
    Skipped,
    detect_layout,
    folder_ignore_reason,
    ignore_reason,
    normalize_label,
    place,
    split_path,
    unplaced_message,
)


@dataclass(frozen=True)
class UploadedFile:
    """A file uploaded from the browser. ``label`` is its class; for folder uploads it may
    be left empty and is then taken from the parent folder in ``name``."""

    name: str
    data: bytes = field(repr=False)
    label: str = ""


@dataclass(frozen=True)
class CsvSource:
    """A CSV with ``path`` and ``label`` (optional ``split``) columns; paths are relative to
    ``images_root`` (default: the CSV's folder) and must stay inside it."""

    csv_path: str | os.PathLike
    images_root: str | os.PathLike | None = None


@dataclass(frozen=True)
class ServerPath:
    """A folder, zip or CSV on the server (the app gates this behind an admin setting)."""

    path: str | os.PathLike


@dataclass(slots=True)
class Candidate:
    """One file to import: where it came from, its class, its split (None = assign)."""

    source: str
    label: str
    split: str | None
    opener: Callable[[], IO[bytes]]  # a binary file object, closed by the pipeline
    declared_size: int | None = None  # zip entries: streaming may not exceed it


@dataclass
class Plan:
    kind: str  # zip | folder | csv | upload | server
    layout: str  # class_folders | split_folders | csv | labels
    description: str
    candidates: list[Candidate]
    skipped: list[Skipped]

    @property
    def user_split(self) -> bool:
        return any(c.split is not None for c in self.candidates)


CSV_PATH_COLUMNS = ("path", "file", "filename", "file_name", "filepath", "image", "image_path")
CSV_LABEL_COLUMNS = ("label", "class", "class_name", "category", "target")
CSV_SPLIT_COLUMNS = ("split", "subset", "set")


@contextlib.contextmanager
def open_plan(source: object, limits: IngestLimits) -> Iterator[Plan]:
    """Build the Plan for any supported source; open archives stay open inside the block."""
    with contextlib.ExitStack() as stack:
        yield _plan(source, limits, stack)


def _plan(source: object, limits: IngestLimits, stack: contextlib.ExitStack) -> Plan:
    if isinstance(source, ServerPath):
        plan = _path_plan(Path(source.path), limits, stack)
        plan.kind = "server"
        return plan
    if isinstance(source, CsvSource):
        return csv_plan(Path(source.csv_path), source.images_root, limits)
    if isinstance(source, UploadedFile):
        return _uploads_plan([source], limits, stack)
    if isinstance(source, (str, os.PathLike)):
        return _path_plan(Path(source), limits, stack)
    if isinstance(source, (list, tuple)):
        if not all(isinstance(f, UploadedFile) for f in source):
            raise IngestError("Uploads must be given as UploadedFile(name, data, label) items.")
        return _uploads_plan(list(source), limits, stack)
    raise IngestError(
        f"Unsupported source {type(source).__name__}: give a zip, a folder, a CSV, or "
        "uploaded files."
    )


def _path_plan(path: Path, limits: IngestLimits, stack: contextlib.ExitStack) -> Plan:
    path = path.expanduser()
    # Missing, unreadable and not-a-file-or-folder read alike: the message must not tell
    # whoever typed the path whether something they may not read exists there.
    if path.is_dir():
        if not os.access(path, os.R_OK | os.X_OK):
            raise _not_found(path)
        return folder_plan(path, limits)
    if not path.is_file() or not os.access(path, os.R_OK):
        raise _not_found(path)
    if path.stat().st_size == 0:
        raise IngestError(f"The file {path.name} is empty (0 bytes). Upload it again.")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return csv_plan(path, None, limits)
    if suffix == ".zip" or zipfile.is_zipfile(path):
        return zip_plan(stack.enter_context(Archive(path, path.name, limits)))
    raise IngestError(
        f"{path.name} is not a supported source: give a .zip archive, a folder with one "
        "sub-folder per class, or a .csv with path and label columns."
    )


# ---------------------------------------------------------------------- layout
@dataclass(frozen=True, slots=True)
class _Entry:
    """An image candidate of a tree-shaped source: its path parts and how to read it."""

    parts: tuple[str, ...]
    opener: Callable[[], IO[bytes]]
    declared_size: int | None = None


def layout_plan(kind: str, description: str, entries: list[_Entry], skipped: list[Skipped]) -> Plan:
    """THE layout rules for every tree of files (a zip, a folder, a browser folder upload):
    wrapper folders stripped, then class folders or train/ val/ test/ folders of classes.

    ``entries`` are the image candidates left after the source's own ignore rules.
    """
    layout = detect_layout([e.parts for e in entries])
    candidates: list[Candidate] = []
    for entry in entries:
        placed = place(entry.parts, layout)
        if isinstance(placed, Skipped):
            skipped.append(placed)
            continue
        label, split = placed
        candidates.append(
            Candidate("/".join(entry.parts), label, split, entry.opener, entry.declared_size)
        )
    if not candidates:  # say which layout was found, not "none of the 0 files"
        raise IngestError(unplaced_message([e.parts for e in entries], layout))
    return Plan(
        kind=kind,
        layout="split_folders" if layout.split_layout else "class_folders",
        description=description,
        candidates=candidates,
        skipped=skipped,
    )


# ----------------------------------------------------------------------------- zip
def zip_plan(archive: Archive) -> Plan:
    """The plan of a checked archive; its entries are streamed by the pipeline (the
    archive stays open while the plan is used)."""
    if not archive.entries:
        raise IngestError(f"The archive {archive.display} is empty: it contains no files.")
    skipped: list[Skipped] = []
    found: list[_Entry] = []
    for entry in archive.entries:
        reason = ignore_reason(entry.parts)
        if reason:
            skipped.append(reason)
        else:
            found.append(_Entry(entry.parts, _zip_opener(archive, entry), entry.declared_size))
    if not found:
        raise _no_images(archive.display, skipped)
    return layout_plan("zip", archive.display, found, skipped)


# -------------------------------------------------------------------------- folder
def folder_plan(root: Path, limits: IngestLimits) -> Plan:
    """Walk a folder without following folder links (no loops); file links are read."""
    skipped: list[Skipped] = []
    images: list[tuple[tuple[str, ...], str]] = []
    count = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = Path(dirpath).relative_to(root).parts
        dirnames[:] = _folders_to_walk(dirpath, rel_dir, dirnames, skipped)
        for name in sorted(filenames):
            count += 1
            if count > limits.max_files:
                raise IngestError(
                    f"The folder has more than {limits.max_files:,} files, above the limit. "
                    "Import a smaller folder or raise the limit."
                )
            parts = (*rel_dir, name)
            full = os.path.join(dirpath, name)  # a str: a Path per file costs memory at scale
            reason = ignore_reason(parts)
            if reason:
                skipped.append(reason)
            elif not os.path.isfile(full):  # FIFOs and devices would block or never end
                skipped.append(Skipped("/".join(parts), "ignored_entry", "not a regular file"))
            else:
                images.append((parts, full))
    if not images:
        # Counted, not listed: a folder's file names are not the importer's to read.
        raise _no_images(str(root), skipped, list_names=False)
    entries = [_Entry(parts, _file_opener(full)) for parts, full in images]
    return layout_plan("folder", str(root), entries, skipped)


def _folders_to_walk(
    dirpath: str, rel_dir: tuple[str, ...], dirnames: list[str], skipped: list[Skipped]
) -> list[str]:
    """The sub-folders of ``dirpath`` to descend into, sorted; the others go to ``skipped``."""
    keep = []
    for d in sorted(dirnames):
        parts = (*rel_dir, d)
        if Path(dirpath, d).is_symlink():
            skipped.append(
                Skipped("/".join(parts) + "/", "ignored_entry", "link to a folder (not followed)")
            )
        elif reason := folder_ignore_reason(parts, "/".join(parts) + "/"):
            # Reported once, instead of every file inside (a .git folder has thousands).
            skipped.append(reason)
        else:
            keep.append(d)
    return keep


def _zip_opener(archive: Archive, entry: ArchiveEntry) -> Callable[[], IO[bytes]]:
    return lambda: archive.open(entry)


def _file_opener(path: str | Path) -> Callable[[], IO[bytes]]:
    return lambda: open(path, "rb")  # noqa: SIM115 - the pipeline closes it


# ----------------------------------------------------------------------------- csv
def csv_plan(csv_path: Path, images_root: str | os.PathLike | None, limits: IngestLimits) -> Plan:
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file() or not os.access(csv_path, os.R_OK):
        raise _not_found(csv_path, "The CSV file ")
    root = Path(images_root).expanduser() if images_root else csv_path.parent
    if not root.is_dir() or not os.access(root, os.R_OK | os.X_OK):
        raise _not_found(root, "The images folder ")
    real_root = Path(os.path.realpath(root))
    rows = _read_csv_file(csv_path, limits)

    candidates: list[Candidate] = []
    skipped: list[Skipped] = []
    unsafe: list[str] = []
    for line, raw_path, label, split in rows:
        where = f"line {line}"
        if bad := _bad_csv_row(where, raw_path, label, split):
            skipped.append(bad)
            continue
        rel = raw_path.replace("\\", "/")
        if "\x00" in rel:
            unsafe.append(f"{where}: {raw_path!r}")
            continue
        full = Path(rel) if os.path.isabs(rel) else root / rel
        resolved = Path(os.path.realpath(full))
        if not resolved.is_relative_to(real_root):
            unsafe.append(f"{where}: {raw_path}")
            continue
        if not resolved.is_file():
            skipped.append(Skipped(raw_path, "missing_file", f"{where}: file not found"))
            continue
        candidates.append(Candidate(rel, normalize_label(label), split, _file_opener(resolved)))
    if unsafe:
        shown = "; ".join(unsafe[:5]) + (f" and {len(unsafe) - 5} more" if len(unsafe) > 5 else "")
        raise IngestError(
            f"{csv_path.name} has paths outside the images folder {root} ({shown}). They were "
            "rejected for safety; use paths relative to the images folder."
        )
    if not candidates:
        raise _no_csv_rows(csv_path, root, skipped)
    return Plan(
        kind="csv", layout="csv", description=str(csv_path), candidates=candidates, skipped=skipped
    )


def _bad_csv_row(where: str, raw_path: str, label: str, split: str | None) -> Skipped | None:
    """Why a row cannot be imported as written (no path, no label, unknown split), if so."""
    if not raw_path or not label:
        missing = "path" if not raw_path else "label"
        return Skipped(raw_path or where, "bad_row", f"{where}: empty {missing}")
    if split == "?":
        allowed = ", ".join(sorted(SPLIT_NAMES))
        return Skipped(raw_path, "bad_row", f"{where}: unknown split (use {allowed})")
    return None


def _read_csv_file(csv_path: Path, limits: IngestLimits) -> list[tuple[int, str, str, str | None]]:
    try:
        with open(csv_path, encoding="utf-8-sig", newline="") as handle:
            return _read_csv(handle, csv_path.name, limits)
    except UnicodeDecodeError as exc:
        raise IngestError(
            f"{csv_path.name} is not UTF-8 text (byte {exc.start} cannot be decoded). Save it "
            "as UTF-8 (in Excel: Save As > CSV UTF-8) and try again."
        ) from exc
    except csv.Error as exc:
        raise IngestError(f"{csv_path.name} is not a valid CSV file: {exc}.") from exc


def _no_csv_rows(csv_path: Path, root: Path, skipped: list[Skipped]) -> IngestError:
    """The error for a CSV none of whose rows can be imported."""
    missing_files = [s for s in skipped if s.code == "missing_file"]
    if missing_files:
        listed = ", ".join(s.source for s in missing_files[:5])
        return IngestError(
            f"None of the files listed in {csv_path.name} exist under {root} (for example "
            f"{listed}). Check the images folder and that paths are relative to it."
        )
    return IngestError(f"{csv_path.name} lists no usable rows (every row lacks a path or a label).")


def _read_csv(
    handle: io.TextIOBase, display: str, limits: IngestLimits
) -> list[tuple[int, str, str, str | None]]:
    sample = handle.read(SAMPLE_CHARS)
    handle.seek(0)
    if not sample.strip():
        raise IngestError(f"{display} is empty. It needs a header row with path and label columns.")
    reader = csv.reader(handle, detect_dialect(sample))
    header = next(reader, None) or []
    columns = [h.strip().lower() for h in header]

    def find(names: tuple[str, ...]) -> int | None:
        return next((columns.index(n) for n in names if n in columns), None)

    path_col, label_col, split_col = (
        find(CSV_PATH_COLUMNS),
        find(CSV_LABEL_COLUMNS),
        find(CSV_SPLIT_COLUMNS),
    )
    if path_col is None or label_col is None:
        found = ", ".join(h.strip() for h in header if h.strip()) or "none"
        needed = " and ".join(
            name for name, col in (("path", path_col), ("label", label_col)) if col is None
        )
        raise IngestError(
            f"{display} has no {needed} column (found columns: {found}). The first row must be "
            "a header naming a path column and a label column, e.g. path,label[,split]."
        )
    rows: list[tuple[int, str, str, str | None]] = []
    for number, record in enumerate(reader, start=2):
        if not any(cell.strip() for cell in record):
            continue
        if len(rows) >= limits.max_files:
            raise IngestError(
                f"{display} lists more than {limits.max_files:,} files, above the limit."
            )
        split_name = _cell(record, split_col)
        split = SPLIT_NAMES.get(split_name.lower(), "?") if split_name else None
        rows.append((number, _cell(record, path_col), _cell(record, label_col), split))
    return rows


def _cell(record: list[str], col: int | None) -> str:
    return record[col].strip() if col is not None and col < len(record) else ""


# -------------------------------------------------------------------------- uploads
def _uploads_plan(
    files: list[UploadedFile], limits: IngestLimits, stack: contextlib.ExitStack
) -> Plan:
    if not files:
        raise IngestError("No files were uploaded. Choose some images first.")
    if len(files) > limits.max_files:
        raise IngestError(
            f"{len(files):,} files were uploaded, more than the limit of {limits.max_files:,}."
        )
    if len(files) == 1 and not files[0].label and _looks_like_zip(files[0]):
        only = files[0]
        if not only.data:
            raise IngestError(f"The file {only.name} is empty (0 bytes). Upload it again.")
        plan = zip_plan(stack.enter_context(Archive(io.BytesIO(only.data), only.name, limits)))
        plan.kind = "upload"
        return plan
    if all(not f.data for f in files):
        names = ", ".join(f.name for f in files[:3])
        raise IngestError(f"The uploaded file is empty (0 bytes): {names}. Upload it again.")
    labelled = [f for f in files if f.label and f.label.strip()]
    if not labelled:
        # A browser folder upload: names are paths relative to the chosen folder, so the
        # same layout rules as a folder on disk apply (train/ val/ test/ are kept).
        return _folder_upload_plan(files)
    if len(labelled) < len(files):
        unlabelled = next(f.name for f in files if not (f.label and f.label.strip()))
        raise IngestError(
            f"The uploaded file {unlabelled} has no label while others have one. Give every "
            "file a class, or upload a folder with one sub-folder per class."
        )
    return _labelled_plan(files)


def _labelled_plan(files: list[UploadedFile]) -> Plan:
    """Files whose class was given with each one (the Class-by-class uploads)."""
    candidates: list[Candidate] = []
    skipped: list[Skipped] = []
    for upload in files:
        parts = split_path(upload.name) or ("unnamed",)
        label = upload.label.strip()
        source = "/".join(parts) if len(parts) > 1 else f"{label}/{parts[0]}"
        reason = ignore_reason((label, *parts))
        if reason:
            skipped.append(Skipped(source, reason.code, reason.reason))
            continue
        candidates.append(
            Candidate(source, normalize_label(label), None, _bytes_opener(upload.data))
        )
    if not candidates:
        raise _no_images("the upload", skipped)
    return Plan(
        kind="upload",
        layout="labels",
        description="browser upload",
        candidates=candidates,
        skipped=skipped,
    )


def _folder_upload_plan(files: list[UploadedFile]) -> Plan:
    """Files named by their path inside an uploaded folder, laid out as a folder is."""
    skipped: list[Skipped] = []
    entries: list[_Entry] = []
    for upload in files:
        parts = split_path(upload.name)
        reason = ignore_reason(parts) if parts else Skipped(upload.name, "ignored_entry",
                                                            REASON_NOT_IMAGE)  # fmt: skip
        if reason:
            skipped.append(reason)
        else:
            entries.append(_Entry(parts, _bytes_opener(upload.data), len(upload.data)))
    if not entries:
        raise _no_images("the upload", skipped)
    if all(len(e.parts) == 1 for e in entries):
        raise IngestError(
            f"The uploaded file {entries[0].parts[0]} has no label: it is in no class folder. "
            "Upload the folder that holds one sub-folder per class, or name each class in "
            "the 'Class by class' tab."
        )
    return layout_plan("upload", "browser folder upload", entries, skipped)


def _bytes_opener(data: bytes) -> Callable[[], IO[bytes]]:
    return lambda: io.BytesIO(data)


def _looks_like_zip(upload: UploadedFile) -> bool:
    return upload.name.lower().endswith(".zip") or upload.data[:4] == b"PK\x03\x04"


def _not_found(path: Path, what: str = "") -> IngestError:
    """One message for a path that is missing, unreadable or not a file or folder."""
    return IngestError(
        f"{what}{path}: not found or not allowed (it does not exist, or this server may not "
        "read it). Check the path and try again."
    )


def _no_images(display: str, skipped: list[Skipped], *, list_names: bool = True) -> IngestError:
    if not skipped:
        return IngestError(
            f"No images found in {display}. Add image files (JPEG, PNG, ...) in class folders."
        )
    if list_names:  # the names come from the user's own upload or archive
        examples = f" (for example {', '.join(s.source for s in skipped[:5])})"
    else:
        reasons = sorted({s.reason for s in skipped})
        examples = f" ({'; '.join(reasons[:3])})"
    return IngestError(
        f"No images found in {display}: all {len(skipped)} entries were ignored{examples}. "
        "Supported images are JPEG, PNG, GIF, BMP, TIFF and WebP, in one sub-folder per class."
    )
