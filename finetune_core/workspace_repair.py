"""Rebuild the workspace's index (its database) from the folders on disk, and tidy up
when a workspace opens.

The folders hold everything a row says: ``datasets/<id>/`` its ``dataset.json``,
manifest and health report; ``runs/<id>/`` its config, run.json, summary and history.
A rebuild starts from the newest intact backup when there is one (accounts, the audit
log, settings and CLI runs outside the workspace live only in the database), then adds
a row for every folder without one and corrects what the folders know better (a run
that finished after the backup; a row whose folder was deleted since). It runs by itself
when the database is missing while folders exist, and with ``workspace rebuild``.

At every open: a dataset folder with no row (a kill between the import's move into
place and its row) is registered again when it is complete, since the import had
finished and only its row is missing; an incomplete one (a deletion killed half-way) is
removed, finishing that deletion. Stale temporary folders are swept with the ingest's
own sweep.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from finetune_core import runs, workspace_backup
from finetune_core.auth import audit
from finetune_core.config import RunConfig
from finetune_core.data.dataset import DATASET_META, HEALTH_NAME, IMAGES_DIR
from finetune_core.data.health import HealthReport
from finetune_core.data.manifest import MANIFEST_NAME, read_manifest
from finetune_core.data.pipeline import remove_stale_builds as sweep_stale_tmp
from finetune_core.fsutil import read_json
from finetune_core.runs import RunPaths
from finetune_core.schema import SCHEMA_VERSION
from finetune_core.store import DatasetRecord, RunRecord, RunStatus, Workspace
from finetune_core.store_health import StoreError, on_open

log = logging.getLogger(__name__)

# A dataset folder younger than this with no row may be an import about to add its row.
ORPHAN_GRACE_S = 600.0
INTERRUPTED_NOTE = "Rebuilt from its folder: how the run ended was not recorded."
FINISHED_IN_FILES = (RunStatus.SUCCEEDED, RunStatus.STOPPED)


@dataclass
class RepairReport:
    """What a rebuild or a tidy-up did (ids), and what it could not use (folder: why)."""

    from_backup: str = ""
    datasets_added: list[str] = field(default_factory=list)
    datasets_removed: list[str] = field(default_factory=list)
    runs_added: list[str] = field(default_factory=list)
    runs_updated: list[str] = field(default_factory=list)
    rows_dropped: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def line(self) -> str:
        parts = [f"started from backup {self.from_backup}"] if self.from_backup else []
        for label, items in (
            ("dataset(s) registered", self.datasets_added),
            ("incomplete dataset folder(s) removed", self.datasets_removed),
            ("run(s) registered", self.runs_added),
            ("run(s) updated from their files", self.runs_updated),
            ("row(s) whose folder is gone dropped", self.rows_dropped),
            ("folder(s) skipped", self.skipped),
        ):
            if items:
                parts.append(f"{len(items)} {label}")
        return "; ".join(parts) or "nothing to do: every folder has its row"


# ---------------------------------------------------------------- rebuild
def rebuild_index(workspace: Workspace, *, use_backup: bool = True) -> RepairReport:
    """Rows for every dataset and run folder of the workspace (see the module's doc)."""
    report = RepairReport()
    if use_backup and not _has_rows(workspace):
        report.from_backup = _load_newest_backup(workspace)
    from_backup = bool(report.from_backup)
    known = {d.id for d in workspace.list_datasets()}
    for folder in _folders(workspace.datasets_dir):
        if folder.name not in known:
            _register_dataset(workspace, folder, report)
    records = {r.id: r for r in workspace.list_runs()}
    for folder in _folders(workspace.runs_dir):
        record = records.get(folder.name)
        if record is None:
            _register_run(workspace, folder, report)
        elif from_backup:
            _refresh_run(workspace, record, folder, report)
    if from_backup:
        _drop_rows_without_folders(workspace, report)
    with contextlib.suppress(StoreError, sqlite3.Error):
        audit.record(workspace, "system", "rebuild index", "workspace", "", report.line())
    return report


def _has_rows(workspace: Workspace) -> bool:
    counts = workspace.counts()
    return bool(counts["datasets"] or counts["runs"])


def _load_newest_backup(workspace: Workspace) -> str:
    """Copy every row of the newest intact backup of this schema in; its name, or ''."""
    for backup in workspace_backup.list_backups(workspace.backups_dir):
        if workspace_backup.integrity_problems(backup, quick=True):
            continue
        try:
            _copy_rows(workspace, backup)
        except sqlite3.Error as exc:
            log.warning("backup %s not used: %s", backup.name, exc)
            continue
        return backup.name
    return ""


def _copy_rows(workspace: Workspace, backup: Path) -> None:
    source = sqlite3.connect(f"file:{backup}?mode=ro", uri=True)
    try:
        if source.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            raise sqlite3.DatabaseError("written by another schema version")
        tables = [
            r[0]
            for r in source.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        data = {t: _table(source, t) for t in tables}
    finally:
        source.close()
    with workspace.transaction() as conn:
        for table, (columns, rows) in data.items():
            mine = {r[1] for r in conn.execute(f"PRAGMA table_info('{table}')")}
            keep = [i for i, c in enumerate(columns) if c in mine]
            if not keep or not rows:
                continue
            names = ", ".join(f'"{columns[i]}"' for i in keep)
            marks = ", ".join("?" * len(keep))
            conn.executemany(
                f'INSERT OR IGNORE INTO "{table}" ({names}) VALUES ({marks})',
                [[row[i] for i in keep] for row in rows],
            )


def _table(conn: sqlite3.Connection, table: str) -> tuple[list[str], list[tuple]]:
    cursor = conn.execute(f'SELECT * FROM "{table}"')
    return [d[0] for d in cursor.description], cursor.fetchall()


def _folders(parent: Path) -> list[Path]:
    try:
        return sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def _drop_rows_without_folders(workspace: Workspace, report: RepairReport) -> None:
    """Rows from the backup whose folder was deleted after it."""
    for dataset in workspace.list_datasets():
        if not workspace.dataset_dir(dataset.id).is_dir():
            with workspace.transaction() as conn:
                conn.execute("DELETE FROM datasets WHERE id=?", (dataset.id,))
            report.rows_dropped.append(dataset.id)
    for run in workspace.list_runs():
        if not run.folder and not (workspace.runs_dir / run.id).is_dir():
            with workspace.transaction() as conn:
                conn.execute("DELETE FROM runs WHERE id=?", (run.id,))
            report.rows_dropped.append(run.id)


# ---------------------------------------------------------------- datasets
def dataset_record(folder: Path) -> DatasetRecord | str:
    """The row a complete dataset folder stands for, or why it is not complete."""
    meta = read_json(folder / DATASET_META, None)
    if not isinstance(meta, dict) or not meta.get("name"):
        return f"no readable {DATASET_META}"
    try:
        rows = read_manifest(folder / MANIFEST_NAME)
    except (OSError, ValueError) as exc:
        return f"no readable {MANIFEST_NAME} ({exc})"
    usable = [r for r in rows if r.ok]
    missing = sum(1 for r in usable if not (folder / IMAGES_DIR / r.path).is_file())
    if missing or not usable:
        return f"{missing} of {len(usable)} image file(s) missing"
    report = HealthReport.from_dict(read_json(folder / HEALTH_NAME, {}) or {})
    class_names = [str(c) for c in meta.get("class_names") or sorted({r.label for r in rows})]
    stats = report.stats
    summary = {
        "class_counts": stats.get("class_counts", {}),
        "split_totals": stats.get("split_totals", {}),
        "num_unusable": stats.get("num_unusable", len(rows) - len(usable)),
        "num_ignored": stats.get("num_ignored", 0),
        "errors": len(report.errors),
        "warnings": len(report.warnings),
        "finding_codes": report.codes(),
        "layout": meta.get("layout", ""),
        "user_split": meta.get("user_split"),
        "split": meta.get("split", {}),
        "test_held_out": meta.get("test_held_out"),
    }
    return DatasetRecord(
        id=folder.name,
        name=str(meta["name"]),
        created_at=str(meta.get("created_at") or _stamp(folder)),
        source_kind=str(meta.get("source_kind") or ""),
        num_images=len(usable),
        num_classes=len(class_names),
        class_names=class_names,
        fingerprint=str(meta.get("fingerprint") or ""),
        health=report.status,
        summary=summary,
    )


def _register_dataset(workspace: Workspace, folder: Path, report: RepairReport) -> bool:
    record = dataset_record(folder)
    if isinstance(record, str):
        report.skipped.append(f"datasets/{folder.name}: {record}")
        return False
    try:
        record.name = workspace.free_dataset_name(record.name)
        workspace.add_dataset(record)
    except (StoreError, sqlite3.IntegrityError) as exc:  # registered meanwhile, or a bad id
        report.skipped.append(f"datasets/{folder.name}: {exc}")
        return False
    report.datasets_added.append(record.id)
    return True


# ---------------------------------------------------------------- runs
def run_record(folder: Path) -> RunRecord | str:
    """The row a run folder stands for, or why it is not a run folder. The status comes
    from the summary: SUCCEEDED or STOPPED as written there, else INTERRUPTED (resumable
    from its last checkpoint, when it has one)."""
    paths = RunPaths(folder)
    raw = read_json(paths.config, None) if paths.is_run() else None
    if not isinstance(raw, dict):
        return f"no readable {paths.config.name}"
    try:
        config: dict[str, Any] = RunConfig.load(paths.config).to_dict()
    except (ValueError, OSError):
        config = raw  # kept as written: the Runs page still shows it
    info, summary = runs.read_info(paths), runs.read_summary(paths)
    history = runs.read_history(paths)
    status = str(summary.get("status") or "")
    finished = status in FINISHED_IN_FILES
    best = _best_row(history)
    found = info.get("lineage")
    lineage: dict[str, Any] = found if isinstance(found, dict) else {}
    model, strategy = str(config.get("model") or ""), str(config.get("strategy") or "")
    return RunRecord(
        id=folder.name,
        status=status if finished else RunStatus.INTERRUPTED,
        name=str(config.get("name") or f"{model} {strategy}".strip()),
        dataset_id=str(info.get("dataset_id") or config.get("dataset") or ""),
        created_at=_stamp(folder),
        finished_at=_mtime_iso(paths.summary) if finished else None,
        model=model,
        strategy=strategy,
        config=config,
        best_val_accuracy=summary.get("val_accuracy", best.get("val_accuracy")),
        best_epoch=summary.get("best_epoch", best.get("epoch")),
        epochs_run=int(summary.get("epochs_run") or len(history)),
        error="" if finished else INTERRUPTED_NOTE,
        notes=str(config.get("notes") or ""),
        train_seconds=summary.get("train_seconds"),
        parent_id=str(lineage.get("source_run_id") or ""),
        lineage="warm-start" if lineage.get("source_run_id") else "",
    )


def _best_row(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The epoch with the highest validation accuracy (the earliest of ties)."""
    scored = [r for r in history if isinstance(r.get("val_accuracy"), (int, float))]
    return max(reversed(scored), key=lambda r: r["val_accuracy"]) if scored else {}


def _register_run(workspace: Workspace, folder: Path, report: RepairReport) -> None:
    record = run_record(folder)
    if isinstance(record, str):
        report.skipped.append(f"runs/{folder.name}: {record}")
        return
    try:
        workspace.add_run(record)
    except (StoreError, sqlite3.IntegrityError) as exc:
        report.skipped.append(f"runs/{folder.name}: {exc}")
        return
    report.runs_added.append(record.id)


def _refresh_run(
    workspace: Workspace, record: RunRecord, folder: Path, report: RepairReport
) -> None:
    """A backed-up row that its files have overtaken: the run finished after the backup."""
    found = run_record(folder)
    if isinstance(found, str) or found.status not in FINISHED_IN_FILES:
        return
    if record.status == found.status and record.best_val_accuracy == found.best_val_accuracy:
        return
    workspace.update_run(
        record.id,
        status=found.status,
        best_val_accuracy=found.best_val_accuracy,
        best_epoch=found.best_epoch,
        epochs_run=found.epochs_run,
        train_seconds=found.train_seconds,
        finished_at=record.finished_at or found.finished_at,
        error="",
        lease_owner="",
        lease_until=None,
        phase="",
    )
    report.runs_updated.append(record.id)


def _stamp(folder: Path) -> str:
    """When an id like ``r-20261128-172601-3fa2`` was made, else the folder's time."""
    parts = folder.name.split("-")
    if len(parts) >= 3:
        with contextlib.suppress(ValueError):
            when = datetime.strptime(f"{parts[1]}{parts[2]}", "%Y%m%d%H%M%S")
            return when.replace(tzinfo=timezone.utc).isoformat(timespec="seconds")
    return _mtime_iso(folder) or ""


def _mtime_iso(path: Path) -> str | None:
    try:
        stamp = path.stat().st_mtime
    except OSError:
        return None
    return datetime.fromtimestamp(stamp, timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- at every open
def tidy(workspace: Workspace, *, grace_s: float = ORPHAN_GRACE_S) -> RepairReport:
    """Dataset folders with no row (older than ``grace_s``): registered when complete,
    removed when not; stale temporary folders swept."""
    report = RepairReport()
    known = {d.id for d in workspace.list_datasets()}
    cutoff = time.time() - grace_s
    for folder in _folders(workspace.datasets_dir):
        if folder.name in known or _newest_mtime(folder) > cutoff:
            continue
        if isinstance(dataset_record(folder), str):  # half-deleted or half-built
            shutil.rmtree(folder, ignore_errors=True)
            report.datasets_removed.append(folder.name)
        else:
            _register_dataset(workspace, folder, report)
    sweep_stale_tmp(workspace.tmp_dir)
    return report


def _newest_mtime(folder: Path) -> float:
    stamps = [folder / DATASET_META, folder / MANIFEST_NAME, folder]
    return max((p.stat().st_mtime for p in stamps if p.exists()), default=0.0)


def _on_open(workspace: Workspace, index_lost: bool) -> None:
    """The store's open hook: a rebuild when the index was lost, else the tidy-up.
    Nothing here may stop the workspace from opening."""
    try:
        report = rebuild_index(workspace) if index_lost else tidy(workspace)
    except (OSError, StoreError, sqlite3.Error) as exc:
        log.warning("workspace %s: repair on open failed: %s", workspace.root, exc)
        return
    if index_lost or report.datasets_added or report.datasets_removed:
        log.warning("workspace %s: %s", workspace.root, report.line())


on_open(_on_open)
