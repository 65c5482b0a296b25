"""Safe zip reading: every entry is checked from the central directory before anything
is extracted, and limits are enforced again while streaming (declared sizes can lie).

Nothing here writes to disk; the ingest pipeline streams each entry to its own
destination, so no path from the archive is ever used as a file-system path.
"""

from __future__ import annotations

import re
import stat
import zipfile
from dataclasses import dataclass
from typing import BinaryIO

from finetune_core.data.errors import IngestError
from finetune_core.data.images import DEFAULT_MAX_PIXELS
from finetune_core.data.layout import split_path

_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class IngestLimits:
    """Caps that protect the server from hostile or accidental huge uploads."""

    max_files: int = 500_000  # entries in an archive / files in a folder
    max_total_bytes: int = 50 * 1024**3  # uncompressed bytes imported in total
    max_ratio: float = 200.0  # uncompressed / compressed, per archive entry
    ratio_min_bytes: int = 1024**2  # entries smaller than this are not ratio-checked
    max_pixels: int = DEFAULT_MAX_PIXELS  # per image; larger is a decompression bomb


def safe_member_parts(name: str) -> tuple[str, ...]:
    """Path parts of a zip member, or IngestError if it could land outside the target."""
    normalized = name.replace("\\", "/")
    if "\x00" in name or normalized.startswith("/") or _DRIVE.match(normalized):
        raise IngestError(
            f"The archive contains an entry with an absolute path ({name!r}). It was rejected "
            "for safety and nothing was extracted; re-create the zip from the dataset folder."
        )
    parts = split_path(normalized)
    if ".." in parts:
        raise IngestError(
            f"The archive contains an entry that points outside it ({name!r}). It was rejected "
            "for safety and nothing was extracted; re-create the zip from the dataset folder."
        )
    return parts


def open_zip(source: str | BinaryIO, display: str) -> zipfile.ZipFile:
    """Open a zip, turning every way it can be broken into an IngestError."""
    try:
        return zipfile.ZipFile(source)
    except zipfile.BadZipFile as exc:
        raise IngestError(
            f"{display} is not a valid zip archive ({exc}). Re-create it, or upload the folder."
        ) from exc
    except (OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise IngestError(f"Cannot read the archive {display}: {exc}") from exc


def check_zip(
    zf: zipfile.ZipFile, limits: IngestLimits
) -> list[tuple[tuple[str, ...], zipfile.ZipInfo]]:
    """Validate the whole central directory; return (parts, info) for every regular file.

    Rejects (IngestError) absolute or ``..`` paths, symbolic links and other special
    files, encrypted entries, too many entries, too many uncompressed bytes and entries
    whose compression ratio is typical of zip bombs.
    """
    infos = zf.infolist()
    if len(infos) > limits.max_files:
        raise IngestError(
            f"The archive has {len(infos):,} entries, more than the limit of "
            f"{limits.max_files:,}. Split it into smaller archives."
        )
    files: list[tuple[tuple[str, ...], zipfile.ZipInfo]] = []
    total = 0
    for info in infos:
        parts = safe_member_parts(info.filename)
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFLNK:
            raise IngestError(
                f"The archive contains a symbolic link ({info.filename!r}). Links are rejected "
                "for safety and nothing was extracted; zip the real files instead."
            )
        if info.is_dir() or not parts:
            continue
        if kind not in (0, stat.S_IFREG):
            raise IngestError(
                f"The archive contains a special file ({info.filename!r}) that is not a "
                "regular file; nothing was extracted. Zip only the image files."
            )
        if info.flag_bits & 0x1:
            raise IngestError(
                "The archive is password-protected; encrypted zips are not supported. "
                "Re-create it without a password."
            )
        declared = info.file_size
        if declared > limits.ratio_min_bytes and declared > limits.max_ratio * max(
            info.compress_size, 1
        ):
            raise IngestError(
                f"The archive entry {info.filename!r} expands {declared / max(info.compress_size, 1):,.0f}"
                f" times ({declared:,} bytes), typical of a zip bomb; nothing was extracted."
            )
        total += declared
        if total > limits.max_total_bytes:
            raise IngestError(
                f"The archive expands to more than {limits.max_total_bytes:,} bytes, above the "
                "limit; nothing was extracted. Upload a smaller dataset or raise the limit."
            )
        files.append((parts, info))
    return files
