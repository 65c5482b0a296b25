"""The workspace database's schema: one migration per version, applied in order by
``Workspace`` when it opens a database written by an older version."""

from __future__ import annotations

SCHEMA_VERSION = 4

# Each entry upgrades the schema from version i to i+1. Never edit a released entry.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE datasets (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        created_at TEXT NOT NULL,
        creator TEXT NOT NULL DEFAULT '',
        source_kind TEXT NOT NULL DEFAULT '',
        num_images INTEGER NOT NULL DEFAULT 0,
        num_classes INTEGER NOT NULL DEFAULT 0,
        class_names TEXT NOT NULL DEFAULT '[]',
        fingerprint TEXT NOT NULL DEFAULT '',
        health TEXT NOT NULL DEFAULT 'ok',
        summary TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL DEFAULT '',
        dataset_id TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT,
        creator TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL,
        model TEXT NOT NULL DEFAULT '',
        strategy TEXT NOT NULL DEFAULT '',
        config TEXT NOT NULL DEFAULT '{}',
        best_val_accuracy REAL,
        best_epoch INTEGER,
        epochs_run INTEGER NOT NULL DEFAULT 0,
        error TEXT NOT NULL DEFAULT '',
        traceback TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX runs_status ON runs(status);
    CREATE INDEX runs_created ON runs(created_at);
    """,
    """
    ALTER TABLE runs ADD COLUMN notes TEXT NOT NULL DEFAULT '';
    ALTER TABLE runs ADD COLUMN train_seconds REAL;
    """,
    # where a run trained with the CLI (--out) lives; '' = runs/<id> in the workspace
    """
    ALTER TABLE runs ADD COLUMN folder TEXT NOT NULL DEFAULT '';
    CREATE INDEX runs_folder ON runs(folder);
    """,
    # the queue (jobs/queue.py): leases, run processes, slots; lineage; accounts; audit log
    """
    ALTER TABLE runs ADD COLUMN queued_at REAL;
    ALTER TABLE runs ADD COLUMN resume INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN auto_resume INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN stop_requested INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN lease_owner TEXT NOT NULL DEFAULT '';
    ALTER TABLE runs ADD COLUMN lease_until REAL;
    ALTER TABLE runs ADD COLUMN host TEXT NOT NULL DEFAULT '';
    ALTER TABLE runs ADD COLUMN device TEXT NOT NULL DEFAULT '';
    ALTER TABLE runs ADD COLUMN pid INTEGER;
    ALTER TABLE runs ADD COLUMN pid_started TEXT NOT NULL DEFAULT '';
    ALTER TABLE runs ADD COLUMN phase TEXT NOT NULL DEFAULT '';
    ALTER TABLE runs ADD COLUMN parent_id TEXT NOT NULL DEFAULT '';
    ALTER TABLE runs ADD COLUMN lineage TEXT NOT NULL DEFAULT '';
    CREATE INDEX runs_queue ON runs(status, queued_at);
    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL DEFAULT '',
        is_admin INTEGER NOT NULL DEFAULT 0,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        created_by TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target_kind TEXT NOT NULL DEFAULT '',
        target_id TEXT NOT NULL DEFAULT '',
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX audit_target ON audit(target_id);
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)
    """,
]
