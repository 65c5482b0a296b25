"""The CLI and the dashboard share one workspace (issue 13 item 14): CLI runs are rows of
the workspace's runs table, ``runs list`` shows every run, and ``train --data FOLDER``
reuses the dataset it ingested before."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from finetune_core.cli.main import main
from finetune_core.cli.train import _resolve_dataset
from finetune_core.cli.workspace_runs import cli_creator, start_cli_run
from finetune_core.config import RunConfig
from finetune_core.data import make_demo_folder
from finetune_core.runs import RunFolder, read_summary, run_record
from finetune_core.store import RunRecord, RunStatus, Workspace

# resnet18 with random weights, 32 px, 2 probe epochs: a few seconds on a CPU
TINY = ["--model", "resnet18", "--weights", "none", "--strategy", "probe", "--epochs", "2",
        "--image-size", "32", "--batch-size", "8", "--lr", "0.02", "--seed", "1",
        "--set", "channels_last=false", "--set", "mixed_precision=off", "--quiet"]  # fmt: skip


def cli(*args: str | Path, env_workspace: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m finetune_core ARGS`` as a user types it, in its own process."""
    env = {k: v for k, v in os.environ.items() if k != "FINETUNE_WORKSPACE"}
    if env_workspace is not None:
        env["FINETUNE_WORKSPACE"] = str(env_workspace)
    return subprocess.run([sys.executable, "-m", "finetune_core", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip


@pytest.mark.slow
def test_cli_runs_are_workspace_runs_and_runs_list_shows_them(tmp_path: Path) -> None:
    photos = make_demo_folder(tmp_path / "photos", classes=2, per_class=8, size=32)
    root = tmp_path / "ws"
    outside = tmp_path / "elsewhere" / "first"
    first = cli("--workspace", root, "train", "--data", photos, *TINY, "--out", outside)
    assert first.returncode == 0, first.stderr
    assert "ingested" in first.stderr
    # the same folder again, into a folder inside the workspace (workspace from the env)
    inside = root / "cli-runs" / "second"
    second = cli("train", "--data", photos, *TINY, "--out", inside, env_workspace=root)
    assert second.returncode == 0, second.stderr
    ws = Workspace(root)
    [dataset] = ws.list_datasets()
    assert dataset.name == "photos"
    assert f"already the dataset 'photos' ({dataset.id})" in second.stderr

    listed = cli("runs", "list", "--json", "--workspace", root)
    assert listed.returncode == 0, listed.stderr
    rows = {Path(r["folder"]): r for r in json.loads(listed.stdout)}
    assert set(rows) == {outside.resolve(), inside.resolve()}
    for folder, row in rows.items():
        summary = read_summary(RunFolder(folder).paths)
        assert row["val_accuracy"] == summary["val_accuracy"] is not None
        assert row["status"] == "SUCCEEDED" == summary["status"]
        assert row["name"] == folder.name and row["dataset"] == "photos"
        assert (row["model"], row["strategy"]) == ("resnet18", "probe")
        assert row["creator"] == f"cli:{getpass.getuser()}"
        # the dashboard finds the folder from the id, and the folder knows its row
        assert ws.run_dir(row["id"]) == folder and RunFolder(folder).info["run_id"] == row["id"]
        record = run_record(RunFolder(folder), ws)
        assert record is not None and record.id == row["id"]
        assert record.best_val_accuracy == summary["val_accuracy"]
        assert record.epochs_run == 2 and record.finished_at
    table = cli("--workspace", root, "runs", "list")
    first_row = rows[outside.resolve()]
    assert first_row["id"] in table.stdout and str(outside.resolve()) in table.stdout
    assert f"{first_row['val_accuracy']:.1%}" in table.stdout


def test_train_reuses_an_ingested_folder_and_names_another_one_apart(
    workspace: Workspace, tmp_path: Path
) -> None:
    photos = make_demo_folder(tmp_path / "a" / "photos", classes=2, per_class=5, size=32)
    first = _resolve_dataset(workspace, str(photos))
    again = _resolve_dataset(workspace, str(photos))
    assert (first.name, again.id) == ("photos", first.id)
    assert len(workspace.list_datasets()) == 1  # the second ingest's copy is dropped
    # other images in a folder with the same name: a dataset of their own, named apart
    other = make_demo_folder(tmp_path / "b" / "photos", classes=3, per_class=4, size=32)
    third = make_demo_folder(tmp_path / "c" / "photos", classes=2, per_class=6, size=32)
    assert _resolve_dataset(workspace, str(other)).name == "photos-2"
    assert _resolve_dataset(workspace, str(third)).name == "photos-3"
    assert _resolve_dataset(workspace, str(other)).name == "photos-2"  # reused again
    assert sorted(d.name for d in workspace.list_datasets()) == ["photos", "photos-2", "photos-3"]
    assert {d.num_images for d in workspace.list_datasets()} == {10, 12}
    assert {d.creator for d in workspace.list_datasets()} == {cli_creator()}


def test_a_cli_run_keeps_one_row_and_leaves_dashboard_runs_to_the_manager(
    workspace: Workspace, tmp_path: Path
) -> None:
    config = RunConfig(dataset="d-1", name="", model="resnet18", strategy="probe")
    out = tmp_path / "out" / "pets"
    run_id = start_cli_run(workspace, out, config)
    assert run_id is not None
    record = workspace.get_run(run_id)
    assert record is not None and record.status == RunStatus.RUNNING and record.from_cli
    assert (record.name, record.folder) == ("pets", str(out.resolve()))
    workspace.update_run(run_id, status=RunStatus.SUCCEEDED, best_val_accuracy=0.75)
    # training into the same folder again re-opens the same row, without the old numbers
    assert start_cli_run(workspace, out, config) == run_id
    record = workspace.get_run(run_id)
    assert record is not None
    assert (record.status, record.best_val_accuracy) == (RunStatus.RUNNING, None)
    assert len(workspace.list_runs()) == 1
    # the dashboard's torchrun ranks train a manager run through `train --out runs/<id>`
    workspace.add_run(RunRecord(id="r-20260101-000000-d00d", creator="alice",
                                status=RunStatus.RUNNING))  # fmt: skip
    managed = workspace.run_dir("r-20260101-000000-d00d")
    assert start_cli_run(workspace, managed, config) is None
    assert workspace.get_run("r-20260101-000000-d00d").creator == "alice"  # type: ignore[union-attr]
    assert len(workspace.list_runs()) == 2


def test_runs_list_without_runs_or_without_a_workspace(
    workspace: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["runs", "list", "--workspace", str(workspace.root)]) == 0
    assert "No runs yet" in capsys.readouterr().out
    assert main(["runs", "list", "--json"]) == 0  # FINETUNE_WORKSPACE (the fixture's)
    assert json.loads(capsys.readouterr().out) == []
    missing = tmp_path / "nowhere"
    assert main(["--workspace", str(missing), "runs", "list"]) == 1
    assert f"there is no workspace at {missing}" in capsys.readouterr().err
    assert not missing.exists()  # listing creates nothing
