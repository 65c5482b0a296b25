"""Browser uploads that need files on disk: a CSV with its images, and weight files.

Names from the browser are never trusted as paths: every part is checked (no
absolute paths, no ``..``) before anything is written, and files land in a fresh
folder chosen here.
"""

from __future__ import annotations

import csv
import io
import re
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from finetune_core.data.archive import Archive, Budget, IngestLimits, safe_member_parts
from finetune_core.data.csv_dialect import SAMPLE_CHARS, detect_dialect
from finetune_core.data.errors import IngestError
from finetune_core.data.sources import CSV_PATH_COLUMNS, CsvSource
from finetune_core.fsutil import atomic_write_bytes

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class StagedCsv:
    """A CSV upload and its images written under ``folder``; remove it after ingest."""

    folder: Path
    source: CsvSource

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def stage_csv_upload(
    tmp_dir: Path,
    csv_name: str,
    csv_data: bytes,
    files: Sequence[tuple[str, bytes]],
    limits: IngestLimits | None = None,
) -> StagedCsv:
    """Write the CSV and its images (single files, a folder upload or zips) to a new folder.

    The images folder is the one under which most paths listed in the CSV exist: the
    staging root, or the single top folder of a folder upload or zip. Zip entries are
    streamed to disk in chunks under one byte budget for the whole upload (by default
    sized to the disk of ``tmp_dir``); when a limit trips, the folder is removed.
    """
    limits = limits or IngestLimits.for_dir(tmp_dir)
    if not csv_data.strip():
        raise IngestError(
            f"{csv_name} is empty. It needs a header row with path and label columns."
        )
    if not files:
        raise IngestError("Add the images the CSV refers to (a zip, a folder or the files).")
    folder = Path(tmp_dir) / f"csv-upload-{secrets.token_hex(6)}"
    images = folder / "images"
    try:
        images.mkdir(parents=True)
        written: list[tuple[str, ...]] = []
        budget = Budget(limits)
        for name, data in files:
            if name.lower().endswith(".zip"):
                written += _extract_zip(name, data, images, limits, budget)
            else:
                parts = safe_member_parts(name)
                if parts:
                    budget.spend(len(data))
                    _write(images, parts, data)
                    written.append(parts)
        if not written:
            raise IngestError("None of the uploaded files could be used as images.")
        csv_path = folder / "labels.csv"
        atomic_write_bytes(csv_path, csv_data)
        root = choose_images_root(images, written, csv_paths(csv_data))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return StagedCsv(folder=folder, source=CsvSource(csv_path, root))


def _write(root: Path, parts: tuple[str, ...], data: bytes) -> None:
    target = root.joinpath(*parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


def _extract_zip(
    name: str, data: bytes, root: Path, limits: IngestLimits, budget: Budget
) -> list[tuple[str, ...]]:
    """Stream every file of the zip to ``root`` (the archive's own paths, checked safe)."""
    out = []
    with Archive(io.BytesIO(data), name, limits, budget) as archive:
        for entry in archive.entries:
            archive.extract(entry, root.joinpath(*entry.parts))
            out.append(entry.parts)
    return out


def csv_paths(csv_data: bytes, limit: int = 200) -> list[str]:
    """The first ``limit`` values of the CSV's path column (empty if it has none)."""
    try:
        text = csv_data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return []  # the ingest explains the encoding problem
    reader = csv.reader(io.StringIO(text, newline=""), detect_dialect(text[:SAMPLE_CHARS]))
    out: list[str] = []
    try:
        header = [h.strip().lower() for h in next(reader, [])]
        column = next((header.index(c) for c in CSV_PATH_COLUMNS if c in header), None)
        if column is None:
            return []
        for row in reader:
            if column < len(row) and row[column].strip():
                out.append(row[column].strip().replace("\\", "/"))
                if len(out) >= limit:
                    break
    except csv.Error:
        pass  # the ingest explains what is wrong with the CSV
    return out


def choose_images_root(root: Path, written: list[tuple[str, ...]], paths: list[str]) -> Path:
    """The staging root, or its single top folder, whichever resolves more CSV paths."""
    candidates = [root]
    tops = {parts[0] for parts in written if len(parts) > 1}
    if len(tops) == 1 and all(len(parts) > 1 for parts in written):
        candidates.append(root / next(iter(tops)))
    if not paths:
        return candidates[-1]

    def hits(base: Path) -> int:
        return sum(1 for p in paths if (base / p).is_file())

    return max(candidates, key=hits)


def save_weights_upload(uploads_dir: Path, name: str, data: bytes, allowed: Sequence[str]) -> Path:
    """Store an uploaded weights file under a name chosen here; returns its path."""
    suffix = Path(name).suffix.lower()
    if suffix not in allowed:
        raise ValueError(
            f"{name} is not a {' or '.join(allowed)} file. Upload a PyTorch weights file."
        )
    if not data:
        raise ValueError(f"{name} is empty (0 bytes). Upload it again.")
    stem = _SAFE_NAME.sub("_", Path(name).stem)[:60].strip("._") or "weights"
    path = Path(uploads_dir) / f"{secrets.token_hex(4)}-{stem}{suffix}"
    atomic_write_bytes(path, data)
    return path
