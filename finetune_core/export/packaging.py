"""Putting a finished bundle in place: readable files, a zip, and an atomic swap.

Everything is built in a temp folder next to its final place and moved there with
``os.replace``, so the export folder never holds half an export.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
import zipfile
from pathlib import Path
from typing import BinaryIO

from finetune_core.fsutil import atomic_write

TEMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"
COMPRESSED = (".json", ".py", ".txt")


def write_zip(folder: Path, dest: Path, top: str) -> None:
    """``folder``'s files zipped into ``dest``, under a ``top`` folder."""

    def write(handle: BinaryIO) -> None:
        with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(folder.iterdir()):
                # Weights hardly compress; storing them keeps a 100 MB export fast.
                kind = zipfile.ZIP_DEFLATED if path.suffix in COMPRESSED else zipfile.ZIP_STORED
                archive.write(path, f"{top}/{path.name}", compress_type=kind)

    atomic_write(dest, write)


def clean_stale(root: Path, max_age_s: float = 3600.0) -> None:
    """Remove temp folders and zips that a killed export left behind."""
    for path in root.iterdir():
        if not path.name.startswith((TEMP_PREFIX, OLD_PREFIX)):
            continue
        with contextlib.suppress(OSError):
            if time.time() - path.stat().st_mtime > max_age_s:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink()


def make_readable(folder: Path) -> None:
    """Temp files are private (0600); an export is meant to be shared like any other file."""
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)


def swap_in(tmp: Path, folder: Path) -> None:
    """Move the finished ``tmp`` folder to ``folder``, replacing an older export."""
    old = None
    if folder.exists():
        old = folder.with_name(f"{OLD_PREFIX}{folder.name}-{secrets.token_hex(3)}")
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
