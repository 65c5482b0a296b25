"""Which entries of an upload are images, and which class and split each one belongs to.

Pure functions on path parts, shared by the zip, folder and upload sources. Ignored
entries (system files, hidden files, non-images, nested archives) are listed with a
reason and never become classes.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import PurePosixPath

from finetune_core.data.errors import IngestError
from finetune_core.data.images import IMAGE_EXTENSIONS

SYSTEM_NAMES = frozenset(
    {
        "__macosx", ".ds_store", "thumbs.db", "ehthumbs.db", "desktop.ini", ".ipynb_checkpoints",
        "@eadir", "$recycle.bin", ".trashes", ".spotlight-v100", ".fseventsd", ".git", ".svn",
        "__pycache__",
    }
)  # fmt: skip
ARCHIVE_EXTENSIONS = frozenset(
    {".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".zst", ".lz4"}
)
# Images Pillow cannot read: reported with advice instead of as "not an image".
UNSUPPORTED_IMAGE_EXTENSIONS = frozenset(
    {".heic", ".heif", ".svg", ".psd", ".raw", ".cr2", ".cr3", ".nef", ".arw", ".dng", ".orf"}
)
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
SPLITS = ("train", "val", "test")

# Reasons, grouped in the ignored-entry finding's message.
REASON_SYSTEM = "system file or folder"
REASON_HIDDEN = "hidden file or folder"
REASON_NOT_IMAGE = "not an image file"
REASON_UNSUPPORTED = "image format not supported (convert to JPEG or PNG)"
REASON_OUTSIDE = "outside any class folder"
REASON_ARCHIVE = "archive inside the upload (not extracted)"


@dataclass(frozen=True)
class Skipped:
    """An entry that is not imported: ``code`` is the finding it is reported under."""

    source: str
    code: str  # ignored_entry | nested_archive | missing_file | bad_row
    reason: str


def normalize_label(label: str) -> str:
    """Labels are kept exactly, except Unicode normalisation (macOS zips store NFD names)."""
    return unicodedata.normalize("NFC", label)


def folder_ignore_reason(parts: tuple[str, ...], source: str | None = None) -> Skipped | None:
    """Why everything under the folder ``parts`` is ignored (system or hidden), or None."""
    source = "/".join(parts) if source is None else source
    for part in parts:
        if part.lower() in SYSTEM_NAMES:
            return Skipped(source, "ignored_entry", REASON_SYSTEM)
        if part.startswith("."):
            return Skipped(source, "ignored_entry", REASON_HIDDEN)
    return None


def ignore_reason(parts: tuple[str, ...]) -> Skipped | None:
    """Why an entry at ``parts`` is not an image candidate, or None if it is one."""
    source = "/".join(parts)
    folder = folder_ignore_reason(parts, source)
    if folder:
        return folder
    suffix = PurePosixPath(parts[-1]).suffix.lower()
    if suffix in ARCHIVE_EXTENSIONS:
        return Skipped(source, "nested_archive", REASON_ARCHIVE)
    if suffix in UNSUPPORTED_IMAGE_EXTENSIONS:
        return Skipped(source, "ignored_entry", REASON_UNSUPPORTED)
    if suffix not in IMAGE_EXTENSIONS:
        return Skipped(source, "ignored_entry", REASON_NOT_IMAGE)
    return None


@dataclass(frozen=True)
class Layout:
    """How folder structure maps to labels: ``strip`` wrapper folders, then [split/]class/..."""

    strip: int
    split_layout: bool


def detect_layout(paths: list[tuple[str, ...]]) -> Layout:
    """Find the layout of image candidates given as path parts.

    One folder per class, or train/ val|valid/ [test/] folders each holding class folders.
    Wrapper folders that hold everything (``my_data/cats/...``) are skipped.
    """
    if not paths:
        return Layout(0, False)
    strip = 0
    while True:
        rest = [p[strip:] for p in paths]
        tops = {p[0] for p in rest}
        if len(tops) == 1 and all(len(p) >= 3 for p in rest):
            strip += 1
            continue
        break
    rest = [p[strip:] for p in paths]
    if all(len(p) == 1 for p in rest):
        raise IngestError(
            "The images are not in class folders. Put each class's images in its own "
            "sub-folder (for example cats/ and dogs/), or upload a CSV with path and label "
            "columns."
        )
    tops = {p[0].lower() for p in rest if len(p) > 1}
    if tops and all(t in SPLIT_NAMES for t in tops):
        mapped = {SPLIT_NAMES[t] for t in tops}
        if "train" not in mapped:
            found = ", ".join(sorted(f"{t}/" for t in tops))
            raise IngestError(
                f"Found {found} but no train/ folder. Add a train/ folder with one sub-folder "
                "per class, or upload the class folders without a split."
            )
        return Layout(strip, True)
    return Layout(strip, False)


def unplaced_message(paths: list[tuple[str, ...]], layout: Layout) -> str:
    """What layout was found when no image landed in a class folder (so the user can see
    why: e.g. train/ and val/ holding images directly, or class folders named train/val
    inside a train/ folder, which read as split folders)."""
    wrapper = "/".join(paths[0][: layout.strip]) + "/" if layout.strip and paths else ""
    counts: dict[str, int] = {}
    for parts in paths:
        top = parts[layout.strip] if len(parts) > layout.strip + 1 else ""
        counts[top] = counts.get(top, 0) + 1
    found = ", ".join(
        f"{wrapper}{top}/ ({n} image{'s' if n != 1 else ''} directly inside)"
        if top
        else f"{n} image{'s' if n != 1 else ''} directly in {wrapper or 'the top folder'}"
        for top, n in sorted(counts.items())
    )
    if layout.split_layout:
        return (
            f"No image is in a class folder. Found {found}: folders named train, val or "
            "test are read as splits, and each split holds one sub-folder per class (for "
            f"example {wrapper}train/cats/). Put the images in class folders inside the split "
            "folders; if these are your class names, rename them (for example train_set/), "
            "or put them inside both a train/ and a val/ folder."
        )
    return (
        f"No image is in a class folder. Found {found}. Put each class's images in its own "
        "sub-folder (for example cats/ and dogs/)."
    )


def place(parts: tuple[str, ...], layout: Layout) -> tuple[str, str | None] | Skipped:
    """The (label, split) of an image candidate, or why it is skipped."""
    rest = parts[layout.strip :]
    split: str | None = None
    if layout.split_layout:
        split = SPLIT_NAMES.get(rest[0].lower()) if len(rest) > 1 else None
        if split is None:
            return Skipped("/".join(parts), "ignored_entry", REASON_OUTSIDE)
        rest = rest[1:]
    if len(rest) < 2:
        return Skipped("/".join(parts), "ignored_entry", REASON_OUTSIDE)
    return normalize_label(rest[0]), split


def split_path(name: str) -> tuple[str, ...]:
    """Split a relative path (``/`` or ``\\`` separators) into its non-empty parts."""
    return tuple(p for p in name.replace("\\", "/").split("/") if p not in ("", "."))
