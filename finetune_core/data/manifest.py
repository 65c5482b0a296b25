"""The manifest: one row per imported file, stored as ``manifest.csv`` in the dataset folder."""

from __future__ import annotations

import io
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO

from finetune_core import csvsafe
from finetune_core.fsutil import atomic_write

MANIFEST_NAME = "manifest.csv"


@dataclass(frozen=True, slots=True)
class ManifestRow:
    """One imported file.

    ``path`` is relative to the dataset's ``images/`` folder (posix); ``source`` is where
    the file was in the upload (what the user recognises). ``status`` is ``"ok"`` or a
    health-finding code (``truncated``, ``not_an_image`` ...) with ``reason`` saying why.
    """

    path: str
    label: str
    split: str  # train | val | test ("" for unusable files without a user split)
    sha256: str
    width: int = 0
    height: int = 0
    format: str = ""
    mode: str = ""
    status: str = "ok"
    reason: str = ""
    source: str = ""
    size: int = 0  # bytes

    @property
    def ok(self) -> bool:
        return self.status == "ok"


_FIELDS = [f.name for f in fields(ManifestRow)]
_INT_FIELDS = {"width", "height", "size"}


def write_manifest(path: Path, rows: list[ManifestRow]) -> None:
    """Write the manifest atomically, streaming rows (no copy of the whole text in memory)."""

    def write(handle: BinaryIO) -> None:
        text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
        # RFC 4180: a lone \r in a label is quoted; formula-like cells get a leading quote
        writer = csvsafe.writer(text, lineterminator="\r\n")
        writer.writerow(_FIELDS)
        for row in rows:
            writer.writerow([getattr(row, name) for name in _FIELDS])
        text.flush()
        text.detach()  # atomic_write still owns (and closes) the binary handle

    atomic_write(path, write)


def read_manifest(path: Path) -> list[ManifestRow]:
    """The rows :func:`write_manifest` wrote, exactly (escaped cells read back as they were)."""
    with open(path, encoding="utf-8", newline="") as handle:
        rows = []
        for record in csvsafe.dict_reader(handle):
            values: dict[str, Any] = {k: record.get(k, "") or "" for k in _FIELDS}
            for key in _INT_FIELDS:
                values[key] = int(values[key] or 0)
            rows.append(ManifestRow(**values))
        return rows
