from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from pathlib import Path

import pytest

from finetune_core.store import (
    SCHEMA_VERSION,
    DatasetRecord,
    RunRecord,
    RunStatus,
    StoreError,
    Workspace,
    new_id,
)


def test_schema_is_migrated_and_wal(workspace: Workspace) -> None:
    assert workspace.schema_version() == SCHEMA_VERSION
    mode = workspace._conn().execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    for folder in ("datasets", "runs"):
        assert (workspace.root / folder).is_dir()


def test_migration_from_version_1_keeps_rows(tmp_path: Path) -> None:
    from finetune_core import store

    db = tmp_path / "ws" / "workspace.db"
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db)
    conn.executescript(store.MIGRATIONS[0])
    conn.execute(
        "INSERT INTO runs (id, created_at, status) VALUES ('r-old', '2026-01-01', 'SUCCEEDED')"
    )
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    ws = Workspace(tmp_path / "ws")
    run = ws.get_run("r-old")
    assert run is not None and run.status == "SUCCEEDED" and run.notes == ""
    assert ws.schema_version() == SCHEMA_VERSION


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "workspace.db"
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 5}")
    conn.close()
    with pytest.raises(StoreError, match="newer version"):
        Workspace(tmp_path)


def test_dataset_roundtrip_rename_delete(workspace: Workspace) -> None:
    rec = DatasetRecord(
        id=new_id("d"), name="cats <b>& dogs</b>", class_names=["cat", "dög"], num_images=3
    )
    workspace.add_dataset(rec)
    workspace.dataset_dir(rec.id).mkdir()
    got = workspace.get_dataset(rec.id)
    assert got == rec
    workspace.rename_dataset(rec.id, "  pets ")
    assert workspace.get_dataset(rec.id).name == "pets"
    with pytest.raises(StoreError, match="empty"):
        workspace.rename_dataset(rec.id, "  ")
    workspace.delete_dataset(rec.id)
    assert workspace.get_dataset(rec.id) is None
    assert not workspace.dataset_dir(rec.id).exists()


def test_run_update_transition_and_interrupt(workspace: Workspace) -> None:
    run = workspace.add_run(RunRecord(id=new_id("r"), model="resnet18", config={"lr": 0.1}))
    assert workspace.run_dir(run.id).is_dir()
    assert workspace.transition_run(run.id, (RunStatus.QUEUED,), status=RunStatus.RUNNING)
    assert not workspace.transition_run(run.id, (RunStatus.QUEUED,), status=RunStatus.STOPPED)
    workspace.update_run(run.id, best_val_accuracy=0.75, config={"lr": 0.2})
    got = workspace.get_run(run.id)
    assert got.status == RunStatus.RUNNING and got.best_val_accuracy == 0.75
    assert got.config == {"lr": 0.2}
    with pytest.raises(StoreError, match="Stop the run"):
        workspace.delete_run(run.id)
    workspace.update_run(run.id, status=RunStatus.SUCCEEDED, lease_owner="host:evaluating")
    with pytest.raises(StoreError, match="still being evaluated"):
        workspace.delete_run(run.id)  # its process still evaluates it
    assert workspace.get_run(run.id) is not None
    with pytest.raises(StoreError, match="Unknown run fields"):
        workspace.update_run(run.id, bogus=1)


def test_ids_cannot_escape_the_workspace(workspace: Workspace) -> None:
    for bad in ("../etc", "a/b", "", "..", "x\x00"):
        with pytest.raises(StoreError, match="Invalid id"):
            workspace.run_dir(bad)


def test_concurrent_threads_lose_no_updates(workspace: Workspace) -> None:
    ids = [new_id("r") + f"-{i}" for i in range(8)]
    errors: list[BaseException] = []

    def worker(run_id: str) -> None:
        try:
            workspace.add_run(RunRecord(id=run_id))
            for epoch in range(25):
                workspace.update_run(run_id, epochs_run=epoch + 1)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(r.epochs_run for r in workspace.list_runs()) == [25] * 8


def _process_writer(root: str, prefix: str, n: int) -> None:
    ws = Workspace(root)
    for i in range(n):
        ws.add_run(RunRecord(id=f"{prefix}-{i}"))
        ws.update_run(f"{prefix}-{i}", epochs_run=i)


@pytest.mark.slow
def test_two_processes_write_at_once(workspace: Workspace) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_process_writer, args=(str(workspace.root), f"p{k}", 40))
        for k in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    runs = workspace.list_runs()
    assert len(runs) == 80
    assert sum(r.epochs_run for r in runs) == 2 * sum(range(40))


def test_counts_and_filters(workspace: Workspace) -> None:
    workspace.add_run(RunRecord(id="r-a", status=RunStatus.QUEUED))
    workspace.add_run(RunRecord(id="r-b", status=RunStatus.RUNNING))
    workspace.add_run(RunRecord(id="r-c", status=RunStatus.SUCCEEDED))
    assert workspace.counts() == {"datasets": 0, "runs": 3, "running": 1, "queued": 1}
    assert {r.id for r in workspace.list_runs(status=RunStatus.ACTIVE)} == {"r-a", "r-b"}
    assert [r.id for r in workspace.list_runs(status=RunStatus.SUCCEEDED)] == ["r-c"]
