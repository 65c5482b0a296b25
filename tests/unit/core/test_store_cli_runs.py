"""The workspace holds CLI runs wherever their folder is (issue 13 item 14)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from finetune_core import store
from finetune_core.store import (
    MAX_NAME_CHARS,
    SCHEMA_VERSION,
    DatasetRecord,
    RunRecord,
    RunStatus,
    Workspace,
)

CLI_RUN = "r-20260101-000000-c11a"
APP_RUN = "r-20260101-000000-a11a"


def test_a_cli_run_lives_in_its_own_folder(workspace: Workspace, tmp_path: Path) -> None:
    outside = (tmp_path / "mine" / "pets").resolve()
    workspace.add_run(RunRecord(id=CLI_RUN, creator="cli:bob", folder=str(outside),
                                status=RunStatus.SUCCEEDED))  # fmt: skip
    workspace.add_run(RunRecord(id=APP_RUN, creator="alice", status=RunStatus.SUCCEEDED))
    assert outside.is_dir()  # add_run makes the run's folder, where it is
    assert workspace.run_dir(CLI_RUN) == outside
    assert workspace.run_dir(APP_RUN) == workspace.runs_dir / APP_RUN
    assert workspace.find_run_by_folder(tmp_path / "mine" / ".." / "mine" / "pets").id == CLI_RUN  # type: ignore[union-attr]
    assert workspace.find_run_by_folder(workspace.runs_dir / APP_RUN).id == APP_RUN  # type: ignore[union-attr]
    assert workspace.find_run_by_folder(tmp_path / "other") is None
    # deleting forgets both; only the folder inside the workspace is removed
    (outside / "config.json").write_text("{}")
    workspace.delete_run(CLI_RUN)
    workspace.delete_run(APP_RUN)
    assert workspace.list_runs() == []
    assert (outside / "config.json").is_file()
    assert not (workspace.runs_dir / APP_RUN).exists()


def test_migration_from_version_2_adds_the_folder(tmp_path: Path) -> None:
    db = tmp_path / "ws" / "workspace.db"
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db)
    for script in store.MIGRATIONS[:2]:
        conn.executescript(script)
    conn.execute("INSERT INTO runs (id, created_at, status) VALUES (?, '2026-01-01', 'FAILED')",
                 (APP_RUN,))  # fmt: skip
    conn.execute("PRAGMA user_version=2")
    conn.commit()
    conn.close()
    ws = Workspace(tmp_path / "ws")
    assert ws.schema_version() == SCHEMA_VERSION >= 3
    assert ws.get_run(APP_RUN).folder == ""  # type: ignore[union-attr]
    assert ws.run_dir(APP_RUN) == ws.runs_dir / APP_RUN


def test_dataset_by_fingerprint_and_free_names(workspace: Workspace) -> None:
    for i, name in enumerate(["photos", "photos-2", "x" * MAX_NAME_CHARS]):
        workspace.add_dataset(DatasetRecord(id=f"d-{i}", name=name, fingerprint=f"fp{i % 2}"))
    assert workspace.find_dataset_by_fingerprint("fp0").id == "d-0"  # type: ignore[union-attr]
    assert workspace.find_dataset_by_fingerprint("fp0", other_than="d-0").id == "d-2"  # type: ignore[union-attr]
    assert workspace.find_dataset_by_fingerprint("fp1", other_than="d-1") is None
    assert workspace.find_dataset_by_fingerprint("") is None
    assert workspace.free_dataset_name("pets") == "pets"
    assert workspace.free_dataset_name(" photos ") == "photos-3"
    long = workspace.free_dataset_name("x" * MAX_NAME_CHARS)
    assert long == "x" * (MAX_NAME_CHARS - 2) + "-2" and len(long) == MAX_NAME_CHARS
