"""Online backups of the workspace database, with SQLite's backup API.

A backup is a consistent copy taken while other processes keep reading and writing
(``sqlite3.Connection.backup`` copies page by page under SQLite's own locking). Backups
are ``backups/workspace-YYYYmmdd-HHMMSS.db``; the newest ``keep`` stay. A database that
fails its integrity check is never backed up, so a damaged file cannot push the good
copies out. Standard library only: ``store`` calls this when a workspace opens.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

BACKUPS_DIR = "backups"
PREFIX, SUFFIX = "workspace-", ".db"
DEFAULT_KEEP = 5
DEFAULT_INTERVAL_S = 3600.0


class BackupError(Exception):
    """A backup could not be taken or restored; the message says why."""


@dataclass(frozen=True)
class BackupPolicy:
    """How many backups stay and how often one is taken when a workspace opens.

    ``FINETUNE_BACKUP_KEEP`` (default 5; 0 turns the automatic backups off) and
    ``FINETUNE_BACKUP_INTERVAL`` (seconds, default 3600).
    """

    keep: int = DEFAULT_KEEP
    interval_s: float = DEFAULT_INTERVAL_S

    @classmethod
    def from_env(cls) -> BackupPolicy:
        return cls(
            keep=int(_env_number("FINETUNE_BACKUP_KEEP", DEFAULT_KEEP, int)),
            interval_s=_env_number("FINETUNE_BACKUP_INTERVAL", DEFAULT_INTERVAL_S, float),
        )


def _env_number(name: str, default: float, kind: type) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        value = kind(raw) if raw else default
    except ValueError:
        return default
    return value if value >= 0 else default


def list_backups(folder: Path) -> list[Path]:
    """The backups in ``folder``, newest first."""
    try:
        found = [p for p in Path(folder).glob(f"{PREFIX}*{SUFFIX}") if p.is_file()]
    except OSError:
        return []
    return sorted(found, key=lambda p: p.name, reverse=True)


def integrity_problems(db_path: Path, *, quick: bool = False) -> list[str]:
    """SQLite's ``integrity_check`` (or ``quick_check``) of a database: [] when it is
    intact, else what SQLite reports (one line per problem, at most 20)."""
    pragma = "quick_check" if quick else "integrity_check"
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error as exc:
        return [f"cannot be opened: {exc}"]
    try:
        rows = [str(r[0]) for r in conn.execute(f"PRAGMA {pragma}(20)")]
    except sqlite3.Error as exc:
        return [str(exc)]
    finally:
        conn.close()
    if rows == ["ok"]:
        return []
    lines = [line.strip() for row in rows for line in row.splitlines()]
    return [line for line in lines if line and not line.startswith("***")] or rows


def due(folder: Path, interval_s: float, since: float = 0.0, now: float | None = None) -> bool:
    """Whether the newest backup in ``folder`` (with none yet: ``since``, when the
    database was created) is older than ``interval_s``."""
    stamp = since
    newest = list_backups(folder)
    with contextlib.suppress(OSError):
        if newest:
            stamp = max(stamp, newest[0].stat().st_mtime)
    return (time.time() if now is None else now) - stamp >= interval_s


def take_backup(db_path: Path, folder: Path, *, keep: int = DEFAULT_KEEP) -> Path:
    """Copy the live database into ``folder`` with the backup API; prune to ``keep``.

    Raises BackupError when the database is damaged (the old backups stay) or the copy
    cannot be written.
    """
    problems = integrity_problems(db_path, quick=True)
    if problems:
        raise BackupError(
            f"The database failed its integrity check ({problems[0]}); no backup was taken "
            "and the existing ones were kept."
        )
    folder = Path(folder)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    target = folder / f"{PREFIX}{stamp}{SUFFIX}"
    part = folder / f".{target.name}.{os.getpid()}.part"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        source = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=60)
        try:
            copy = sqlite3.connect(part)
            try:
                source.backup(copy)
            finally:
                copy.close()
        finally:
            source.close()
        os.replace(part, target)
    except (OSError, sqlite3.Error) as exc:
        with contextlib.suppress(OSError):
            part.unlink()
        raise BackupError(f"The backup could not be written to {folder}: {exc}.") from exc
    for old in list_backups(folder)[max(1, keep) :]:
        with contextlib.suppress(OSError):
            old.unlink()
    return target


def restore_backup(backup: Path, db_path: Path) -> Path | None:
    """Put ``backup`` in place of the database; the database it replaces is kept as
    ``workspace.db.broken-<time>`` (with its -wal file), whose path is returned (None when
    there was none). Open workspaces switch to the restored file by themselves."""
    problems = integrity_problems(backup)
    if problems:
        raise BackupError(f"The backup {backup.name} is damaged too ({problems[0]}).")
    db_path = Path(db_path)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    kept = db_path.with_name(f"{db_path.name}.broken-{stamp}")
    part = db_path.with_name(f".{db_path.name}.restore.part")
    try:
        shutil.copyfile(backup, part)
        if db_path.exists():
            os.replace(db_path, kept)
        for side in ("-wal", "-shm"):
            extra = db_path.with_name(db_path.name + side)
            if extra.exists():
                os.replace(extra, kept.with_name(kept.name + side))
        os.replace(part, db_path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            part.unlink()
        raise BackupError(f"The backup could not be restored: {exc.strerror or exc}.") from exc
    return kept if kept.exists() else None
