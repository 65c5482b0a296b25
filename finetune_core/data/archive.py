"""THE archive reader for every page and the CLI (dataset import, CSV staging, Predict).

A zip is checked whole before any entry is read: entry count (from the end record,
before the central directory is parsed), paths, links, special files, encryption, the
compression ratio of each entry and of the whole archive, and the total it declares
against a budget sized to the server. Entries are then streamed in chunks; the
declared sizes are not trusted (bytes are counted while reading), and an entry goes to
disk through a temporary name, so nothing half-written is left when a limit trips.

Limits (the server's environment):
- ``FINETUNE_MAX_ARCHIVE_BYTES``: the most bytes one upload may expand to, e.g. ``20G``.
  Default: the smaller of 10 GiB and half the free disk of the workspace.
- ``FINETUNE_MAX_ARCHIVE_RATIO``: the most an archive may expand (uncompressed bytes
  over its size), default 100; photos barely compress, zip bombs expand ~1000 times.

No path from an archive is ever used as a file-system path: callers choose every
destination, and :func:`safe_member_parts` rejects absolute and ``..`` names.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, BinaryIO

from finetune_core.data.errors import IngestError
from finetune_core.data.images import DEFAULT_MAX_PIXELS
from finetune_core.data.layout import split_path
from finetune_core.store import default_workspace_root

ENV_MAX_BYTES = "FINETUNE_MAX_ARCHIVE_BYTES"
ENV_MAX_RATIO = "FINETUNE_MAX_ARCHIVE_RATIO"
DEFAULT_MAX_BYTES = 10 * 1024**3
FREE_DISK_SHARE = 0.5
DEFAULT_ARCHIVE_RATIO = 100.0
CHUNK = 1024**2
# A central-directory record is 46 bytes plus its name; more than this per entry on
# average is not an image dataset (it would only make parsing the directory costly).
_MAX_DIRECTORY_BYTES_PER_ENTRY = 1024
_DRIVE = re.compile(r"^[A-Za-z]:")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_size(text: str, name: str = ENV_MAX_BYTES) -> int:
    """Bytes from ``"1048576"``, ``"500M"``, ``"20G"`` or ``"1.5T"`` (powers of 1024)."""
    match = _SIZE.match(text)
    if not match or float(match.group(1)) <= 0:
        raise IngestError(
            f"{name}={text!r} is not a size. Set it to a number of bytes, or a number with "
            "K, M, G or T (e.g. 20G), in the server's environment."
        )
    power = " KMGT".index(match.group(2).upper() or " ")
    return int(float(match.group(1)) * 1024**power)


def server_budget(where: str | os.PathLike | None = None) -> int:
    """How many bytes one upload may expand to: ``$FINETUNE_MAX_ARCHIVE_BYTES``, else the
    smaller of :data:`DEFAULT_MAX_BYTES` and half the free disk where it is written."""
    configured = os.environ.get(ENV_MAX_BYTES, "").strip()
    if configured:
        return parse_size(configured)
    folder = Path(where) if where is not None else default_workspace_root()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return DEFAULT_MAX_BYTES
    return max(1, min(DEFAULT_MAX_BYTES, int(free * FREE_DISK_SHARE)))


def server_ratio() -> float:
    """The whole-archive expansion cap: ``$FINETUNE_MAX_ARCHIVE_RATIO``, else 100."""
    configured = os.environ.get(ENV_MAX_RATIO, "").strip()
    if not configured:
        return DEFAULT_ARCHIVE_RATIO
    try:
        value = float(configured)
    except ValueError:
        value = 0.0
    if not value >= 1:  # also refuses nan
        raise IngestError(
            f"{ENV_MAX_RATIO}={configured!r} is not a ratio. Set it to a number of at least 1 "
            f"(default {DEFAULT_ARCHIVE_RATIO:.0f}) in the server's environment."
        )
    return value


@dataclass(frozen=True)
class IngestLimits:
    """Caps that protect the server from hostile or accidental huge uploads."""

    max_files: int = 500_000  # entries in an archive / files in a folder
    max_total_bytes: int = field(default_factory=server_budget)  # one upload, uncompressed
    max_ratio: float = 200.0  # per entry, uncompressed / compressed (or the archive's, if higher)
    max_archive_ratio: float = field(default_factory=server_ratio)  # the whole archive
    ratio_min_bytes: int = 64 * 1024  # entries (archives) expanding to less: no ratio check
    max_pixels: int = DEFAULT_MAX_PIXELS  # per image; larger is a decompression bomb

    @classmethod
    def for_dir(cls, where: str | os.PathLike) -> IngestLimits:
        """The default limits, with the byte budget sized to the disk holding ``where``."""
        return replace(cls(), max_total_bytes=server_budget(where))


def _human(size: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1024
    raise AssertionError  # pragma: no cover


def budget_message(limit: int) -> str:
    """What tripped (the byte budget) and how to raise it."""
    return (
        f"The upload expands to more than {limit:,} bytes ({_human(limit)}), above the limit; "
        f"nothing was imported. Upload a smaller dataset, or ask an admin to raise "
        f"{ENV_MAX_BYTES} (e.g. {ENV_MAX_BYTES}=50G) in the server's environment."
    )


class Budget:
    """Bytes one upload may still expand to, shared by all of its archives and files."""

    def __init__(self, limits: IngestLimits) -> None:
        self.limit = limits.max_total_bytes
        self.left = self.limit

    def spend(self, size: int) -> None:
        self.left -= size
        if self.left < 0:
            raise IngestError(budget_message(self.limit))


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


def open_zip(source: str | os.PathLike | BinaryIO, display: str) -> zipfile.ZipFile:
    """Open a zip, turning every way it can be broken into an IngestError."""
    try:
        return zipfile.ZipFile(source)
    except zipfile.BadZipFile as exc:
        raise IngestError(
            f"{display} is not a valid zip archive ({exc}). Re-create it, or upload the folder."
        ) from exc
    except (OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise IngestError(f"Cannot read the archive {display}: {exc}") from exc


def _count_limit_message(count: int, limits: IngestLimits) -> str:
    return (
        f"The archive has {count:,} entries, more than the limit of {limits.max_files:,}. "
        "Split it into smaller archives."
    )


def check_directory_size(handle: BinaryIO, limits: IngestLimits) -> None:
    """Refuse too many entries from the end record, before the directory is parsed (each
    parsed entry costs memory, so a million empty entries must not be read to count them)."""
    try:
        end = zipfile._EndRecData(handle)  # type: ignore[attr-defined]  # stable since 2.x
    except (OSError, ValueError, EOFError):
        return  # open_zip explains a broken archive
    finally:
        handle.seek(0)
    if not end:
        return
    count, directory = end[zipfile._ECD_ENTRIES_TOTAL], end[zipfile._ECD_SIZE]  # type: ignore[attr-defined]
    if count > limits.max_files or directory > limits.max_files * _MAX_DIRECTORY_BYTES_PER_ENTRY:
        shown = max(count, directory // _MAX_DIRECTORY_BYTES_PER_ENTRY)
        raise IngestError(_count_limit_message(shown, limits))


def check_zip(
    zf: zipfile.ZipFile, limits: IngestLimits, archive_size: int | None = None
) -> list[tuple[tuple[str, ...], zipfile.ZipInfo]]:
    """Validate the whole central directory; return (parts, info) for every regular file.

    Rejects (IngestError) absolute or ``..`` paths, symbolic links and other special
    files, encrypted entries, too many entries, too many uncompressed bytes, entries
    whose compression ratio is typical of zip bombs and, given ``archive_size``, a whole
    archive that expands more than ``limits.max_archive_ratio`` times.
    """
    infos = zf.infolist()
    if len(infos) > limits.max_files:
        raise IngestError(_count_limit_message(len(infos), limits))
    files: list[tuple[tuple[str, ...], zipfile.ZipInfo]] = []
    total = 0
    for info in infos:
        parts = _checked_entry(info)
        if parts is None:
            continue
        _check_entry_ratio(info, limits)
        total += info.file_size
        if total > limits.max_total_bytes:
            raise IngestError(budget_message(limits.max_total_bytes))
        files.append((parts, info))
    if archive_size is not None:
        _check_archive_ratio(total, archive_size, limits)
    return files


def _checked_entry(info: zipfile.ZipInfo) -> tuple[str, ...] | None:
    """The entry's path parts, None for folders; IngestError for entries never extracted."""
    parts = safe_member_parts(info.filename)
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        raise IngestError(
            f"The archive contains a symbolic link ({info.filename!r}). Links are rejected "
            "for safety and nothing was extracted; zip the real files instead."
        )
    if info.is_dir() or not parts:
        return None
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
    return parts


def _check_entry_ratio(info: zipfile.ZipInfo, limits: IngestLimits) -> None:
    declared, packed = info.file_size, max(info.compress_size, 1)
    cap = max(limits.max_ratio, limits.max_archive_ratio)  # raising the archive's raises this
    if declared > limits.ratio_min_bytes and declared > cap * packed:
        raise IngestError(
            f"The archive entry {info.filename!r} expands {declared / packed:,.0f} times "
            f"({declared:,} bytes from {packed:,}), typical of a zip bomb; nothing was "
            f"extracted. Entries may expand at most {cap:,.0f} times; if your images really "
            f"compress that much, an admin can raise {ENV_MAX_RATIO} in the server's environment."
        )


def _check_archive_ratio(total: int, archive_size: int, limits: IngestLimits) -> None:
    size = max(archive_size, 1)
    if total > limits.ratio_min_bytes and total > limits.max_archive_ratio * size:
        raise IngestError(
            f"The archive expands {total / size:,.0f} times ({_human(total)} from "
            f"{_human(size)}), typical of a zip bomb; nothing was extracted. Image datasets "
            f"barely compress; if yours really expands that much, an admin can raise "
            f"{ENV_MAX_RATIO} (now {limits.max_archive_ratio:,.0f}) in the server's environment."
        )


@dataclass(frozen=True)
class ArchiveEntry:
    """A regular file of a checked archive: its safe path parts and its header."""

    parts: tuple[str, ...]
    info: zipfile.ZipInfo

    @property
    def name(self) -> str:
        return "/".join(self.parts)

    @property
    def declared_size(self) -> int:
        return self.info.file_size


class Archive:
    """A zip, checked whole on opening; its entries are read as streams or extracted to
    files in chunks, never held in memory. Use it as a context manager."""

    def __init__(
        self,
        source: str | os.PathLike | BinaryIO,
        display: str,
        limits: IngestLimits,
        budget: Budget | None = None,
    ) -> None:
        self.display = display
        self.limits = limits
        self.budget = budget or Budget(limits)
        handle = _binary(source, display)
        self._own = not hasattr(source, "read")
        try:
            handle.seek(0, io.SEEK_END)
            self.size = handle.tell()
            handle.seek(0)
            check_directory_size(handle, limits)
            self._zf = open_zip(handle, display)
        except BaseException:
            if self._own:
                handle.close()
            raise
        self._handle = handle
        try:
            checked = check_zip(self._zf, limits, archive_size=self.size)
        except BaseException:
            self.close()
            raise
        self.entries = [ArchiveEntry(parts, info) for parts, info in checked]

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._zf.close()
        if self._own:
            self._handle.close()

    def open(self, entry: ArchiveEntry) -> IO[bytes]:
        """The entry as a binary stream that never returns more than it declared.

        The budget is not spent here: whoever copies the stream counts its bytes."""
        try:
            raw = self._zf.open(entry.info)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise self._damaged(entry, exc) from exc
        return io.BufferedReader(
            EntryStream(raw, entry.declared_size, f"{self.display}: {entry.name}")
        )

    def iter_chunks(self, entry: ArchiveEntry) -> Iterator[bytes]:
        """The entry's bytes, ``CHUNK`` at a time, spent from the budget as they come."""
        with self.open(entry) as stream:
            while True:
                try:
                    chunk = stream.read(CHUNK)
                except IngestError:
                    raise
                except Exception as exc:  # zlib and CRC errors
                    raise self._damaged(entry, exc) from exc
                if not chunk:
                    return
                self.budget.spend(len(chunk))
                yield chunk

    def extract(self, entry: ArchiveEntry, dest: Path) -> int:
        """Write the entry to ``dest`` (a path the caller chose) in chunks; returns its size.

        It is written under a temporary name and renamed when complete: a limit or a
        damaged entry leaves no file behind."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        size = 0
        try:
            with open(part, "xb") as out:
                for chunk in self.iter_chunks(entry):
                    out.write(chunk)
                    size += len(chunk)
            os.replace(part, dest)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        return size

    def _damaged(self, entry: ArchiveEntry, exc: BaseException) -> IngestError:
        return IngestError(
            f"The entry {entry.info.filename!r} of {self.display} is damaged ({exc}); nothing "
            "was imported. Re-create the zip and upload it again."
        )


def _binary(source: str | os.PathLike | BinaryIO, display: str) -> BinaryIO:
    if hasattr(source, "read"):
        return source  # type: ignore[return-value]
    try:
        return open(source, "rb")  # noqa: SIM115 - Archive.close closes it
    except OSError as exc:
        raise IngestError(f"Cannot read the archive {display}: {exc.strerror or exc}.") from exc


class EntryStream(io.RawIOBase):
    """A read-only stream over an archive entry that stops at its declared size: an entry
    that holds more than its header says is refused, never written past it."""

    def __init__(self, raw: IO[bytes], declared: int, display: str) -> None:
        self._raw = raw
        self._left = declared
        self._display = display

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:  # the caller asked for everything
            return b"".join(iter(lambda: self.read(CHUNK), b""))
        data = self._raw.read(min(size, self._left + 1))
        if len(data) > self._left:
            raise IngestError(
                f"The archive entry {self._display} holds more data than its header declares, "
                "a sign of a tampered archive; nothing was imported."
            )
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._raw.close()
        super().close()
