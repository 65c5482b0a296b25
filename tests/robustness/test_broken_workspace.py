"""Issue 15 item 10 (and item 11's dataset folder with no row): a broken workspace says
what is wrong and what to do, rebuilds its index from the folders, and keeps backups.

Real files, real SQLite, real processes (the CLI; a read-only folder checked by a
process running as an unprivileged user, since root may write anywhere). The only
injected fault is a read-only folder for the in-process page tests when they run as
root.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from finetune_core import runs, workspace_backup
from finetune_core.auth import accounts, audit
from finetune_core.config import RunConfig
from finetune_core.data.pipeline import ingest
from finetune_core.runs import RunPaths
from finetune_core.store import WORKSPACE_DB, RunRecord, RunStatus, Workspace
from finetune_core.store_health import WorkspaceUnavailable
from finetune_core.workspace_repair import rebuild_index, tidy
from tests.helpers.data_files import make_tree

ROOT = Path(__file__).resolve().parents[2]
VIEWS = sorted(p.name for p in (ROOT / "views").glob("*.py"))
CLI = [sys.executable, "-m", "finetune_core.cli.workspace_cmd"]
NOBODY = 65534


# ------------------------------------------------------------------------ fixtures
def _add_run(ws: Workspace, dataset_id: str, name: str, status: str, accs: list[float]) -> str:
    """A run row and its folder as training leaves them (config, run.json, history and,
    for a run that ended, its summary), without training."""
    config = RunConfig(dataset=dataset_id, name=name, model="resnet18", epochs=len(accs) + 1)
    record = ws.add_run(
        RunRecord(id=f"r-20260101-0000{len(ws.list_runs()):02d}-ab{len(name):02d}", name=name,
                  dataset_id=dataset_id, model="resnet18", strategy=config.strategy,
                  config=config.to_dict(), creator="ann")
    )  # fmt: skip
    paths = RunPaths(ws.run_dir(record.id))
    runs.save_config(paths, config)
    runs.write_info(paths, {"run_id": record.id, "dataset_id": dataset_id})
    for epoch, acc in enumerate(accs, start=1):
        runs.append_history(paths, {"epoch": epoch, "val_accuracy": acc, "val_loss": 1 - acc})
    best = max(range(len(accs)), key=lambda i: (accs[i], -i))
    changes: dict = {"epochs_run": len(accs), "best_epoch": best + 1,
                     "best_val_accuracy": accs[best]}  # fmt: skip
    if status in (RunStatus.SUCCEEDED, RunStatus.STOPPED):
        runs.write_summary(paths, {"status": status, "val_accuracy": accs[best],
                                   "best_epoch": best + 1, "epochs_run": len(accs),
                                   "train_seconds": 1.5})  # fmt: skip
        changes["train_seconds"] = 1.5
    ws.update_run(record.id, status=status, **changes)
    return record.id


def build_workspace(root: Path, sources: Path) -> Workspace:
    ws = Workspace(root)
    for i, name in enumerate(("cats and dogs", "digits")):
        tree = make_tree(sources / name, {"a": 4, "b": 4}, seed=i)
        ingest(ws, tree, name=name, creator="ann")
    first, second = (d.id for d in sorted(ws.list_datasets(), key=lambda d: d.name))
    _add_run(ws, first, "done", RunStatus.SUCCEEDED, [0.5, 0.75, 0.625])
    _add_run(ws, first, "stopped", RunStatus.STOPPED, [0.25, 0.5])
    _add_run(ws, second, "cut", RunStatus.INTERRUPTED, [0.375, 0.875])
    return ws


def index(ws: Workspace) -> dict:
    """What must survive: ids, names, statuses, best accuracies, dataset contents."""
    return {
        "datasets": sorted(
            (d.id, d.name, d.num_images, tuple(d.class_names), d.fingerprint, d.health)
            for d in ws.list_datasets()
        ),  # fmt: skip
        "runs": sorted(
            (
                r.id,
                r.name,
                r.status,
                r.dataset_id,
                r.best_val_accuracy,
                r.best_epoch,
                r.epochs_run,
                r.model,
            )
            for r in ws.list_runs()
        ),  # fmt: skip
    }


def delete_db(root: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        (root / (WORKSPACE_DB + suffix)).unlink(missing_ok=True)


@pytest.fixture
def built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Workspace, dict]:
    monkeypatch.setenv("FINETUNE_BACKUP_KEEP", "5")
    ws = build_workspace(tmp_path / "ws", tmp_path / "src")
    expected = index(ws)
    assert len(expected["datasets"]) == 2 and len(expected["runs"]) == 3
    ws.close()
    return ws, expected


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})  # fmt: skip


def one_line_reason(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


# ------------------------------------------------------------------------ rebuild
def test_deleted_database_is_rebuilt_from_the_folders_losing_nothing(built) -> None:
    """v1: a new empty database; the app said "No runs yet" with every folder on disk."""
    ws, expected = built
    delete_db(ws.root)
    again = Workspace(ws.root)
    assert again.index_lost
    assert index(again) == expected
    cut = next(r for r in again.list_runs() if r.name == "cut")
    assert cut.status == RunStatus.INTERRUPTED and "Rebuilt from its folder" in cut.error
    done = next(r for r in again.list_runs() if r.name == "done")
    assert done.config["epochs"] == 4 and done.train_seconds == 1.5
    assert [e.action for e in audit.entries(again)] == ["rebuild index"]


def test_cli_rebuild_registers_every_folder(built) -> None:
    ws, expected = built
    delete_db(ws.root)
    proc = cli("--workspace", str(ws.root), "workspace", "rebuild", "--no-backup")
    assert proc.returncode == 0, proc.stderr
    assert "The database was missing" in proc.stdout and "Traceback" not in proc.stderr
    assert index(Workspace(ws.root)) == expected
    # a second rebuild finds every folder with its row
    proc = cli("--workspace", str(ws.root), "workspace", "rebuild")
    assert "nothing to do" in proc.stdout, proc.stdout


def test_database_deleted_under_a_running_server_is_rebuilt_on_its_next_query(built) -> None:
    """v1: every new thread's connection made an empty file: "no such table: runs"."""
    ws, expected = built
    server = Workspace(ws.root)
    assert index(server) == expected
    delete_db(ws.root)
    seen: list = []
    worker = threading.Thread(target=lambda: seen.append(index(server)))
    worker.start()
    worker.join(60)
    assert seen == [expected]
    assert index(server) == expected  # and this thread's connection left the deleted file


def test_rebuild_starts_from_the_newest_backup_and_the_folders_win(built) -> None:
    """Accounts and the audit log live only in the database: the backup brings them
    back; runs that ended or began after the backup come from their folders."""
    ws, _ = built
    ws = Workspace(ws.root)
    accounts.bootstrap_admin(ws, "ann", "a long enough password 1")
    cut = next(r for r in ws.list_runs() if r.name == "cut")
    ws.update_run(cut.id, status=RunStatus.RUNNING)
    backup = ws.backup()
    # after the backup: the run ends, a new run is made, a run is deleted
    runs.write_summary(RunPaths(ws.run_dir(cut.id)), {"status": "SUCCEEDED", "val_accuracy": 0.875,
                                                      "best_epoch": 2, "epochs_run": 2})  # fmt: skip
    ws.update_run(cut.id, status=RunStatus.SUCCEEDED)
    late = _add_run(ws, cut.dataset_id, "late", RunStatus.SUCCEEDED, [0.5])
    gone = next(r for r in ws.list_runs() if r.name == "stopped")
    ws.delete_run(gone.id)
    expected = index(ws)
    delete_db(ws.root)
    again = Workspace(ws.root)
    assert index(again) == expected
    assert accounts.get_account(again, "ann") is not None
    entries = audit.entries(again)
    assert entries[0].action == "rebuild index" and backup.name in entries[0].detail
    assert late in {r.id for r in again.list_runs()}


# ------------------------------------------------------------------------ backups
def test_backups_are_taken_on_open_at_most_once_an_interval_and_pruned(
    built, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws, expected = built
    Workspace(ws.root)  # created less than an interval ago: no backup yet
    assert workspace_backup.list_backups(ws.backups_dir) == []
    monkeypatch.setenv("FINETUNE_BACKUP_INTERVAL", "0")
    monkeypatch.setenv("FINETUNE_BACKUP_KEEP", "2")
    made = []
    for _ in range(3):
        Workspace(ws.root)
        made.append(workspace_backup.list_backups(ws.backups_dir)[0])
        time.sleep(1.05)  # backups are named by the second
    kept = workspace_backup.list_backups(ws.backups_dir)
    assert kept == made[:0:-1] and len(kept) == 2
    monkeypatch.setenv("FINETUNE_BACKUP_INTERVAL", "3600")
    Workspace(ws.root)
    assert workspace_backup.list_backups(ws.backups_dir) == kept
    copy = sqlite3.connect(kept[0])
    assert copy.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == len(expected["runs"])
    copy.close()


def test_cli_backup_and_check(built) -> None:
    ws, _ = built
    proc = cli("--workspace", str(ws.root), "workspace", "backup")
    assert proc.returncode == 0 and "Backed up workspace.db" in proc.stdout, proc.stderr
    proc = cli("--workspace", str(ws.root), "workspace", "check")
    assert proc.returncode == 0 and proc.stdout.startswith("ok: "), proc.stderr
    assert "1 kept" in proc.stdout


# ------------------------------------------------------------------------ corrupt
def corrupt_header(db: Path) -> None:
    data = bytearray(db.read_bytes())
    data[:100] = b"\x5a" * 100
    db.write_bytes(bytes(data))


def corrupt_pages(db: Path) -> None:
    """Garbage over every page after the first two: the schema opens, the tables do not."""
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    data = bytearray(db.read_bytes())
    for start in range(2 * size, len(data), size):
        data[start + 8 : start + size] = os.urandom(size - 8)
    db.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [corrupt_header, corrupt_pages])
def test_corrupt_database_gives_one_line_and_restores_from_the_latest_backup(built, damage) -> None:
    ws, expected = built
    Workspace(ws.root).backup()
    Workspace(ws.root).close()
    damage(ws.db_path)
    line = one_line_reason(cli("--workspace", str(ws.root), "workspace", "check"))
    assert "workspace restore" in line
    if damage is corrupt_header:
        with pytest.raises(WorkspaceUnavailable) as caught:
            Workspace(ws.root)
        assert "damaged database" in caught.value.public and "workspace restore" in str(
            caught.value
        )
        assert str(ws.root) not in caught.value.public
        line = one_line_reason(cli("--workspace", str(ws.root), "workspace", "backup"))
        assert "damaged database" in line
    proc = cli("--workspace", str(ws.root), "workspace", "restore")
    assert proc.returncode == 0, proc.stderr
    assert "Restored workspace-" in proc.stdout and "kept as workspace.db.broken-" in proc.stdout
    assert index(Workspace(ws.root)) == expected
    assert list(ws.root.glob("workspace.db.broken-*"))  # the damaged file is kept aside


def test_a_damaged_database_is_never_backed_up(built, monkeypatch) -> None:
    ws, _ = built
    first = Workspace(ws.root).backup()
    corrupt_pages(ws.db_path)
    monkeypatch.setenv("FINETUNE_BACKUP_INTERVAL", "0")
    with pytest.raises(workspace_backup.BackupError, match="integrity check"):
        workspace_backup.take_backup(ws.db_path, ws.backups_dir)
    assert workspace_backup.list_backups(ws.backups_dir) == [first]


# ------------------------------------------------------------------------ read-only
def _as_nobody_possible() -> bool:
    return os.geteuid() == 0 and shutil.which("setpriv") is not None


READ_ONLY_PROBE = """
import sys
from finetune_core.store import Workspace
from finetune_core.store_health import WorkspaceUnavailable
try:
    Workspace(sys.argv[1])
except WorkspaceUnavailable as exc:
    print(exc.public)
    sys.exit(3)
print("opened")
"""


@pytest.mark.parametrize("what", ["folder and database", "database only", "new workspace"])
def test_read_only_workspace_says_so_in_a_real_unprivileged_process(built, what) -> None:
    """v1: PermissionError / "attempt to write a readonly database"."""
    if os.geteuid() != 0:
        prefix: list[str] = []
    elif _as_nobody_possible():
        prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    else:
        pytest.skip("running as root without setpriv: a read-only folder cannot be made")
    ws, _ = built
    base = Path(tempfile.mkdtemp(prefix="ro-ws-"))  # /tmp: reachable by an unprivileged user
    try:
        copy = base / "ws"
        shutil.copytree(ws.root, copy)
        for path in [copy, *copy.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        target = copy
        if what == "database only":
            copy.chmod(0o777)
        if what == "new workspace":
            target = copy / "datasets" / "fresh"
        os.chmod(base, 0o755)
        proc = subprocess.run([*prefix, sys.executable, "-c", READ_ONLY_PROBE, str(target)],
                              capture_output=True, text=True, cwd=ROOT, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
        assert proc.returncode == 3, proc.stdout + proc.stderr
        assert "cannot be written" in proc.stdout and "FINETUNE_WORKSPACE" in proc.stdout
        assert "Traceback" not in proc.stderr
    finally:
        for path in [base, *base.rglob("*")]:
            path.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------------ pages
def _break(kind: str, ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    if kind == "read-only":  # root writes anywhere: the folder's answer is injected
        real = os.access
        monkeypatch.setattr(
            "finetune_core.store.os.access",
            lambda p, mode: False if Path(p) == ws.root and mode == os.W_OK else real(p, mode),
        )
    elif kind == "corrupt header":
        corrupt_header(ws.db_path)
    else:
        corrupt_pages(ws.db_path)


@pytest.mark.parametrize("kind", ["read-only", "corrupt header", "corrupt pages"])
@pytest.mark.parametrize("view", VIEWS)
def test_every_page_shows_one_clear_message_for_a_broken_workspace(
    built, monkeypatch: pytest.MonkeyPatch, view: str, kind: str
) -> None:
    ws, _ = built
    monkeypatch.setenv("FINETUNE_WORKSPACE", str(ws.root))
    _break(kind, ws, monkeypatch)
    at = AppTest.from_file(str(ROOT / "views" / view), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert len(errors) == 1, errors
    text = errors[0]
    expected = "cannot be written" if kind == "read-only" else "damaged database"
    assert expected in text and "workspace check" in text
    assert str(ws.root) not in text  # nobody is signed in yet: no server path


# ------------------------------------------------------------------------ at start-up
def test_dataset_folder_without_a_row_is_registered_when_complete_removed_when_not(
    built,
) -> None:
    """Item 11: a kill between the import's move into place and its row; a deletion
    killed half-way."""
    ws, expected = built
    ws = Workspace(ws.root)
    complete, half = sorted(ws.list_datasets(), key=lambda d: d.name)
    with ws.transaction() as conn:
        conn.execute("DELETE FROM datasets")
    images = sorted((ws.dataset_dir(half.id) / "images").rglob("*.jpg"))
    images[0].unlink()  # what a killed rmtree leaves
    young = tidy(ws)  # both still inside the grace period: an import may be finishing
    assert young.datasets_added == young.datasets_removed == []
    old = time.time() - 3600
    for folder in (ws.dataset_dir(complete.id), ws.dataset_dir(half.id)):
        for path in [folder, *folder.iterdir()]:
            os.utime(path, (old, old))
    stale = ws.tmp_dir / "csv-upload-killed"
    stale.mkdir()
    (stale / "big.bin").write_bytes(b"x" * 1024)
    os.utime(stale, (old - 86400, old - 86400))
    fresh = ws.tmp_dir / "ingest-now"
    fresh.mkdir()
    Workspace(ws.root)  # the open hook tidies up
    assert [d.id for d in ws.list_datasets()] == [complete.id]
    assert ws.get_dataset(complete.id).name == complete.name
    assert not ws.dataset_dir(half.id).exists()
    assert not stale.exists() and fresh.exists()
    assert index(ws)["datasets"] == [d for d in expected["datasets"] if d[0] == complete.id]


def test_rebuild_keeps_folders_it_cannot_read_and_says_why(built) -> None:
    ws, expected = built
    ws = Workspace(ws.root)
    (ws.runs_dir / "r-20260101-000000-zzzz").mkdir()  # no config.json
    (ws.datasets_dir / "d-20260101-000000-zzzz").mkdir()  # no dataset.json
    delete_db(ws.root)
    report = rebuild_index(Workspace(ws.root), use_backup=False)
    assert len(report.skipped) == 2 and all("no readable" in s for s in report.skipped)
    assert (ws.runs_dir / "r-20260101-000000-zzzz").exists()
    assert index(Workspace(ws.root)) == expected
