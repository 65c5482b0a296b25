"""The workspace: one folder with a SQLite database, a folder per dataset and per run.

The database uses WAL mode and one connection per thread, so the job worker, the
CLI and several browser sessions can read and write at the same time. Writes go
through short `BEGIN IMMEDIATE` transactions with a generous busy timeout, so
"database is locked" never reaches a user under normal contention.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from finetune_core import workspace_backup
from finetune_core.schema import MIGRATIONS, SCHEMA_VERSION
from finetune_core.store_health import StoreError, file_id, has_entries, run_open_hooks, unavailable

assert len(MIGRATIONS) == SCHEMA_VERSION


WORKSPACE_DB = "workspace.db"
_CREATED = "workspace.created"  # settings key: when the database was made (time.time())
CLI_CREATOR_PREFIX = "cli:"  # creator of the runs the CLI trains: "cli:<os user>"


class RunStatus:
    """Run lifecycle states stored in the database."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"
    INTERRUPTED = "INTERRUPTED"

    ACTIVE = (QUEUED, RUNNING)
    FINISHED = (SUCCEEDED, FAILED, STOPPED, INTERRUPTED)
    RESUMABLE = (STOPPED, INTERRUPTED)


MAX_NAME_CHARS = 200
# Control characters and bidirectional overrides: they can rewrite a terminal or
# disguise a name (U+202E turns "gpj.exe" into "exe.jpg" on screen).
_BIDI_CONTROLS = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def check_name(name: str, what: str, *, allow_empty: bool = False) -> str:
    """``name`` without surrounding blanks; StoreError if it is empty, longer than
    MAX_NAME_CHARS or holds control characters."""
    name = (name or "").strip()
    if not name and not allow_empty:
        raise StoreError(f"A {what} name cannot be empty.")
    if len(name) > MAX_NAME_CHARS:
        raise StoreError(
            f"A {what} name can have at most {MAX_NAME_CHARS} characters (this one has "
            f"{len(name):,}); choose a shorter name."
        )
    bad = sorted({c for c in name if unicodedata.category(c) == "Cc" or c in _BIDI_CONTROLS})
    if bad:
        shown = ", ".join(repr(c) for c in bad[:5])
        raise StoreError(
            f"A {what} name cannot contain control characters (found {shown}); use letters, "
            "digits, spaces and punctuation."
        )
    return name


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_id(prefix: str) -> str:
    """A sortable, readable id such as ``r-20261128-172601-3fa2``."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{prefix}-{stamp}-{secrets.token_hex(2)}"


@dataclass
class DatasetRecord:
    id: str
    name: str
    created_at: str = field(default_factory=utc_now)
    creator: str = ""
    source_kind: str = ""
    num_images: int = 0
    num_classes: int = 0
    class_names: list[str] = field(default_factory=list)
    fingerprint: str = ""
    health: str = "ok"  # ok | warning | error
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunRecord:
    id: str
    status: str = RunStatus.QUEUED
    name: str = ""
    dataset_id: str = ""
    created_at: str = field(default_factory=utc_now)
    started_at: str | None = None
    finished_at: str | None = None
    creator: str = ""
    model: str = ""
    strategy: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    best_val_accuracy: float | None = None
    best_epoch: int | None = None
    epochs_run: int = 0
    error: str = ""
    traceback: str = ""
    notes: str = ""
    train_seconds: float | None = None
    folder: str = ""  # absolute path of a CLI run's folder ('' = the workspace's runs/<id>)
    # the queue (jobs/queue.py owns these): when queued, continue from the last
    # checkpoint, resume by itself after an interruption, stop asked for; the lease of
    # the process training it (owner token, expiry as time.time()), where and which
    # process; phase: "" | "training" | "evaluating"
    queued_at: float | None = None
    resume: int = 0
    auto_resume: int = 0
    stop_requested: int = 0
    lease_owner: str = ""
    lease_until: float | None = None
    host: str = ""
    device: str = ""
    pid: int | None = None
    pid_started: str = ""
    phase: str = ""
    # lineage: the run this one continues or was warm-started from ("continue" | "warm-start"
    # | "re-run")
    parent_id: str = ""
    lineage: str = ""

    @property
    def from_cli(self) -> bool:
        """Trained by ``python -m finetune_core train``: its process, not the job manager,
        owns its status."""
        return self.creator.startswith(CLI_CREATOR_PREFIX)


_JSON_FIELDS = {"class_names", "summary", "config"}


def _encode(record: Any) -> dict[str, Any]:
    row = asdict(record)
    for key in _JSON_FIELDS & row.keys():
        row[key] = json.dumps(row[key])
    return row


def _decode(cls: type, row: sqlite3.Row) -> Any:
    names = {f.name for f in fields(cls)}
    values = {k: row[k] for k in row.keys() if k in names}  # noqa: SIM118 (sqlite3.Row)
    for key in _JSON_FIELDS & values.keys():
        values[key] = json.loads(values[key])
    return cls(**values)


def is_workspace(root: str | Path) -> bool:
    """Whether ``root`` holds a workspace (its database exists); creates nothing."""
    return (Path(root) / WORKSPACE_DB).is_file()


def default_workspace_root() -> Path:
    return Path(os.environ.get("FINETUNE_WORKSPACE", "workspace")).expanduser().resolve()


class Workspace:
    """A workspace folder: ``workspace.db``, ``datasets/<id>/`` and ``runs/<id>/``."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser().resolve() if root else default_workspace_root()
        self.datasets_dir = self.root / "datasets"
        self.runs_dir = self.root / "runs"
        self.cache_dir = self.root / "cache"
        self.tmp_dir = self.root / "tmp"
        self.backups_dir = self.root / workspace_backup.BACKUPS_DIR
        self.db_path = self.root / WORKSPACE_DB
        self._local = threading.local()
        self.index_lost = False  # the database was rebuilt from the folders on this open
        try:
            for folder in (self.datasets_dir, self.runs_dir, self.cache_dir, self.tmp_dir):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise unavailable(self.root, exc) from exc
        if not os.access(self.root, os.W_OK) or (
            self.db_path.exists() and not os.access(self.db_path, os.W_OK)
        ):
            raise unavailable(self.root, PermissionError("read-only"))
        self._open_database()

    # ------------------------------------------------------------------ plumbing
    def _open_database(self) -> None:
        """Open (or create) the database, bring its schema up to date, then run the open
        hooks (the rebuild when the index was lost) and the periodic backup."""
        existed = self.db_path.exists()
        lost = not existed and has_entries(self.datasets_dir, self.runs_dir)
        try:
            self._connect()
            self._migrate()
            if not existed:  # the first backup is due an interval after creation
                with self._write() as conn:
                    conn.execute("REPLACE INTO settings VALUES (?, ?)", (_CREATED, time.time()))
            self.index_lost = lost
            run_open_hooks(self, lost)
            self._backup_if_due()
        except sqlite3.DatabaseError as exc:  # damage past the header shows up here too
            self.close()
            raise unavailable(self.root, exc) from exc

    def _backup_if_due(self) -> None:
        policy = workspace_backup.BackupPolicy.from_env()
        row = self._conn().execute("SELECT value FROM settings WHERE key=?", (_CREATED,))
        created = float((row.fetchone() or [0])[0])
        if policy.keep and workspace_backup.due(self.backups_dir, policy.interval_s, created):
            with contextlib.suppress(workspace_backup.BackupError):  # the open goes on
                self.backup()

    def backup(self) -> Path:
        """An online backup into ``backups/`` now (BackupError: damaged, or not written)."""
        keep = max(1, workspace_backup.BackupPolicy.from_env().keep)
        return workspace_backup.take_backup(self.db_path, self.backups_dir, keep=keep)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=60000")
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error:
            conn.close()
            raise
        self._local.conn, self._local.file = conn, file_id(self.db_path)
        return conn

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        current = file_id(self.db_path)
        if conn is not None and current == self._local.file:
            return conn
        if conn is not None:  # the file was deleted or replaced (a restore) underneath it
            conn.close()
        if current is None:
            self._open_database()
            return self._local.conn
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            raise unavailable(self.root, exc) from exc

    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A short exclusive-write transaction (``BEGIN IMMEDIATE``) for modules that own
        their own tables or columns (jobs.queue, auth.accounts, auth.audit)."""
        return self._write()

    def read(self) -> sqlite3.Connection:
        """This thread's connection, for reads by those modules."""
        return self._conn()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A short exclusive-write transaction, retried if the database stays busy."""
        conn = self._conn()
        for attempt in range(20):
            try:
                conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                time.sleep(0.05 * (attempt + 1))
        else:
            raise StoreError("The workspace database stayed busy; try again in a moment.")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def _migrate(self) -> None:
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"The workspace at {self.root} was written by a newer version "
                    f"(schema {version} > {SCHEMA_VERSION}); upgrade finetune-dashboard."
                )
            for target in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[target].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={target + 1}")

    def schema_version(self) -> int:
        return int(self._conn().execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def check(self) -> list[str]:
        """SQLite's full integrity check of the database: [] when it is intact."""
        return workspace_backup.integrity_problems(self.db_path)

    # ------------------------------------------------------------------ datasets
    def dataset_dir(self, dataset_id: str) -> Path:
        return self.datasets_dir / _safe_id(dataset_id)

    def add_dataset(self, record: DatasetRecord) -> DatasetRecord:
        row = _encode(record)
        with self._write() as conn:
            conn.execute(
                f"INSERT INTO datasets ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                list(row.values()),
            )
        return record

    def get_dataset(self, dataset_id: str) -> DatasetRecord | None:
        row = self._conn().execute("SELECT * FROM datasets WHERE id=?", (dataset_id,)).fetchone()
        return _decode(DatasetRecord, row) if row else None

    def list_datasets(self) -> list[DatasetRecord]:
        rows = self._conn().execute("SELECT * FROM datasets ORDER BY created_at DESC, rowid DESC")
        return [_decode(DatasetRecord, r) for r in rows]

    def find_dataset_by_name(self, name: str) -> DatasetRecord | None:
        row = (
            self._conn()
            .execute(
                "SELECT * FROM datasets WHERE name=? ORDER BY created_at DESC, rowid DESC LIMIT 1",
                (name,),
            )
            .fetchone()
        )
        return _decode(DatasetRecord, row) if row else None

    def find_dataset_by_fingerprint(
        self, fingerprint: str, *, other_than: str = ""
    ) -> DatasetRecord | None:
        """The first dataset (in import order) with this fingerprint, the same images,
        names and splits; ``other_than`` leaves out one id (the copy just imported)."""
        if not fingerprint:
            return None
        row = (
            self._conn()
            .execute(
                "SELECT * FROM datasets WHERE fingerprint=? AND id!=? ORDER BY rowid LIMIT 1",
                (fingerprint, other_than),
            )
            .fetchone()
        )
        return _decode(DatasetRecord, row) if row else None

    def free_dataset_name(self, name: str) -> str:
        """``name`` if no dataset has it, else the first free ``name-2``, ``name-3``, ..."""
        name = check_name(name, "dataset")
        taken = {r[0] for r in self._conn().execute("SELECT name FROM datasets")}
        candidate, n = name, 1
        while candidate in taken:
            n += 1
            suffix = f"-{n}"
            candidate = name[: MAX_NAME_CHARS - len(suffix)] + suffix
        return candidate

    def rename_dataset(self, dataset_id: str, name: str) -> None:
        name = check_name(name, "dataset")
        with self._write() as conn:
            cur = conn.execute("UPDATE datasets SET name=? WHERE id=?", (name, dataset_id))
            if cur.rowcount == 0:
                raise StoreError(f"No dataset with id {dataset_id!r}.")

    def delete_dataset(self, dataset_id: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM datasets WHERE id=?", (dataset_id,))
        shutil.rmtree(self.dataset_dir(dataset_id), ignore_errors=True)

    # ------------------------------------------------------------------ runs
    def run_dir(self, run_id: str) -> Path:
        """The run's folder: ``runs/<id>``, or where the CLI trained it (``--out``)."""
        safe = _safe_id(run_id)
        row = self._conn().execute("SELECT folder FROM runs WHERE id=?", (run_id,)).fetchone()
        return Path(row["folder"]) if row and row["folder"] else self.runs_dir / safe

    def find_run_by_folder(self, folder: str | Path) -> RunRecord | None:
        """The run whose folder is ``folder`` (a CLI run's, or the workspace's runs/<id>)."""
        path = Path(folder).expanduser().resolve()
        row = self._conn().execute("SELECT * FROM runs WHERE folder=?", (str(path),)).fetchone()
        if row is None and path.parent == self.runs_dir.resolve():
            row = (
                self._conn()
                .execute("SELECT * FROM runs WHERE id=? AND folder=''", (path.name,))
                .fetchone()
            )
        return _decode(RunRecord, row) if row else None

    def add_run(self, record: RunRecord) -> RunRecord:
        row = _encode(record)
        with self._write() as conn:
            conn.execute(
                f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                list(row.values()),
            )
        self.run_dir(record.id).mkdir(parents=True, exist_ok=True)
        return record

    def get_run(self, run_id: str) -> RunRecord | None:
        row = self._conn().execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        return _decode(RunRecord, row) if row else None

    def list_runs(
        self, status: str | tuple[str, ...] | None = None, limit: int | None = None
    ) -> list[RunRecord]:
        query = "SELECT * FROM runs"
        params: list[str] = []
        if status:
            statuses = (status,) if isinstance(status, str) else tuple(status)
            query += f" WHERE status IN ({', '.join('?' * len(statuses))})"
            params.extend(statuses)
        query += " ORDER BY created_at DESC, rowid DESC"
        if limit:
            query += f" LIMIT {int(limit)}"
        return [_decode(RunRecord, r) for r in self._conn().execute(query, params)]

    def update_run(self, run_id: str, **changes: Any) -> None:
        allowed = {f.name for f in fields(RunRecord)} - {"id"}
        unknown = set(changes) - allowed
        if unknown:
            raise StoreError(f"Unknown run fields: {sorted(unknown)}")
        if not changes:
            return
        values = [json.dumps(v) if k in _JSON_FIELDS else v for k, v in changes.items()]
        assignments = ", ".join(f"{k}=?" for k in changes)
        with self._write() as conn:
            cur = conn.execute(f"UPDATE runs SET {assignments} WHERE id=?", [*values, run_id])
            if cur.rowcount == 0:
                raise StoreError(f"No run with id {run_id!r}.")

    def transition_run(self, run_id: str, from_status: tuple[str, ...], **changes: Any) -> bool:
        """Update a run only if its status is one of ``from_status``; True if it was."""
        values = [json.dumps(v) if k in _JSON_FIELDS else v for k, v in changes.items()]
        assignments = ", ".join(f"{k}=?" for k in changes)
        marks = ", ".join("?" * len(from_status))
        with self._write() as conn:
            cur = conn.execute(
                f"UPDATE runs SET {assignments} WHERE id=? AND status IN ({marks})",
                [*values, run_id, *from_status],
            )
            return cur.rowcount == 1

    def rename_run(self, run_id: str, name: str) -> None:
        self.update_run(run_id, name=check_name(name, "run", allow_empty=True))

    def delete_run(self, run_id: str) -> None:
        """Forget the run and delete its folder when the folder is inside the workspace (a
        CLI run's folder elsewhere belongs to its user and stays)."""
        run = self.get_run(run_id)
        if run and run.status == RunStatus.RUNNING:
            raise StoreError("Stop the run before deleting it.")
        if run and run.lease_owner:  # trained; its process still evaluates or reports it
            raise StoreError("This run is still being evaluated; delete it when that ends.")
        folder = self.run_dir(run_id)
        with self._write() as conn:
            conn.execute("DELETE FROM runs WHERE id=?", (run_id,))
        if folder.resolve().is_relative_to(self.root):
            shutil.rmtree(folder, ignore_errors=True)

    def counts(self) -> dict[str, int]:
        conn = self._conn()
        out = {"datasets": conn.execute("SELECT COUNT(*) FROM datasets").fetchone()[0]}
        out["runs"] = conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        for status in (RunStatus.RUNNING, RunStatus.QUEUED):
            out[status.lower()] = conn.execute(
                "SELECT COUNT(*) FROM runs WHERE status=?", (status,)
            ).fetchone()[0]
        return out


def _safe_id(identifier: str) -> str:
    """Ids become folder names: refuse anything that could leave the workspace."""
    if not identifier or not all(c.isalnum() or c in "-_" for c in identifier):
        raise StoreError(f"Invalid id {identifier!r}.")
    return identifier
