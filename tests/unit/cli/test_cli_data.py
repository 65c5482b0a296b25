"""``python -m finetune_core data ...``: ingest, list, show, demo, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from finetune_core.cli.main import main
from finetune_core.store import Workspace
from tests.helpers.data_files import assert_nothing_registered, make_tree, make_zip, tree_entries


def run(ws: Workspace, *args: str) -> int:
    return main(["--workspace", str(ws.root), "data", *args])


def test_ingest_prints_a_table_and_exits_zero(
    workspace: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture
):
    root = make_tree(tmp_path / "pets", {"cat": 10, "dog": 10})
    (root / "cat" / "notes.txt").write_text("x")
    assert (
        run(
            workspace,
            "ingest",
            str(root),
            "--name",
            "pets",
            "--val",
            "0.2",
            "--test",
            "0",
            "--seed",
            "1",
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "Imported dataset 'pets'" in out
    lines = out.splitlines()
    assert next(line for line in lines if line.startswith("cat")).split() == ["cat", "8", "2", "10"]
    assert "INFO     ignored_entry" in out and "files: cat/notes.txt" in out
    record = workspace.find_dataset_by_name("pets")
    split = {"train": 0.8, "val": 0.2, "test": 0.0, "seed": 1, "holdout": 0.15}
    assert record.summary["split"] == split


def test_ingest_json(workspace: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture):
    path = make_zip(tmp_path / "animals.zip", tree_entries({"a": 5, "b": 5}))
    assert run(workspace, "ingest", str(path), "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True and data["dataset"]["name"] == "animals"
    assert data["dataset"]["class_names"] == ["a", "b"] and data["health"]["status"] == "ok"
    assert data["split_counts"]["train"] == {"a": 3, "b": 3}


def test_blocking_error_exits_2_but_registers(
    workspace: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture
):
    root = make_tree(tmp_path / "one", {"only": 5})
    assert run(workspace, "ingest", str(root), "--name", "single") == 2
    out = capsys.readouterr().out
    assert "ERROR    single_class" in out and "block training" in out
    assert workspace.find_dataset_by_name("single").health == "error"
    assert run(workspace, "show", "single", "--json") == 2
    assert json.loads(capsys.readouterr().out)["health"]["blocks_training"] is True


def test_failed_ingest_exits_1_and_registers_nothing(
    workspace: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture
):
    path = make_zip(tmp_path / "evil.zip", {"../evil.jpg": b"x", **tree_entries({"a": 2, "b": 2})})
    assert run(workspace, "ingest", str(path), "--name", "evil") == 1
    assert "Import failed:" in capsys.readouterr().err
    assert run(workspace, "ingest", str(path), "--json") == 1
    failed = json.loads(capsys.readouterr().out)
    assert failed["ok"] is False and "rejected for safety" in failed["error"]
    assert run(workspace, "ingest", str(tmp_path), "--val", "0.7", "--test", "0.5") == 1
    assert "fraction" in capsys.readouterr().err
    assert_nothing_registered(workspace)


def test_list_show_and_demo(workspace: Workspace, capsys: pytest.CaptureFixture):
    assert run(workspace, "list") == 0
    assert "No datasets yet" in capsys.readouterr().out
    assert run(workspace, "demo", "--per-class", "6", "--size", "32") == 0
    out = capsys.readouterr().out
    assert "Demo dataset 'demo' is ready" in out and "circle" in out and "triangle" in out
    assert run(workspace, "list") == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split()[:3] == ["ID", "NAME", "CLASSES"]
    assert listing[1].split()[1:6] == ["demo", "3", "18", "ok", "demo"]
    assert run(workspace, "list", "--json") == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["name"] == "demo" and record["num_images"] == 18
    assert run(workspace, "show", "demo") == 0
    assert "3 classes, 18 usable images" in capsys.readouterr().out
    assert run(workspace, "show", "nope") == 1
    assert "No dataset with id or name 'nope'" in capsys.readouterr().err
    assert run(workspace, "demo", "--classes", "9") == 1


def test_module_entry_point(tmp_path: Path):
    root = make_tree(tmp_path / "d", {"a": 3, "b": 3})
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "finetune_core",
            "--workspace",
            str(tmp_path / "ws"),
            "data",
            "ingest",
            str(root),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["dataset"]["num_images"] == 6


def test_csv_source_name_defaults_and_images_root(
    workspace: Workspace,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
):
    root = make_tree(tmp_path / "imgs", {"a": 3, "b": 3})
    lines = ["path,label"] + [f"{c}/img_{i:03d}.jpg,{c}" for c in "ab" for i in range(3)]
    (tmp_path / "labels.csv").write_text("\n".join(lines), encoding="utf-8")
    assert run(workspace, "ingest", str(tmp_path / "labels.csv"), "--images-root", str(root)) == 0
    assert workspace.find_dataset_by_name("labels").num_images == 6
    capsys.readouterr()
    assert run(workspace, "ingest", str(root), "--images-root", str(root)) == 1
    assert "--images-root only applies" in capsys.readouterr().err
    monkeypatch.chdir(root)
    assert run(workspace, "ingest", ".") == 0
    assert workspace.find_dataset_by_name("imgs") is not None


@pytest.mark.parametrize(("flags", "expected"), [((), (16, 4)), (("--holdout", "0"), (20, 0))])
def test_ingest_holds_out_a_test_split_when_the_data_has_none(
    workspace: Workspace,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    flags: tuple[str, ...],
    expected: tuple[int, int],
):
    """train/ + val/ without test/: the CLI applies the Data page's default 15% hold-out."""
    root = tmp_path / "split"
    make_tree(root, {"a": 10, "b": 10}, prefix="train")
    make_tree(root, {"a": 3, "b": 3}, seed=1, prefix="val")
    assert run(workspace, "ingest", str(root), "--json", *flags) == 0
    counts = json.loads(capsys.readouterr().out)["split_counts"]
    train, test = (sum(counts.get(part, {}).values()) for part in ("train", "test"))
    assert (train, test) == expected
    assert counts["val"] == {"a": 3, "b": 3}
