"""Ingest from every source: folders, split folders, CSV, browser uploads, server paths."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from finetune_core.data import (
    CsvSource,
    DatasetNotFound,
    IngestError,
    ServerPath,
    SplitSpec,
    UploadedFile,
    ingest,
    load_dataset,
)
from finetune_core.store import Workspace
from tests.helpers.data_files import (
    assert_nothing_registered,
    image_bytes,
    make_tree,
    write_image,
)


def test_folder_per_class(workspace: Workspace, tmp_path: Path):
    root = make_tree(tmp_path / "pets", {"cat": 10, "dog": 10})
    calls: list[tuple[int, int, str]] = []
    result = ingest(
        workspace, root, name="pets", creator="ana", progress=lambda *a: calls.append(a)
    )
    ds = result.dataset
    assert ds.class_names == ["cat", "dog"]
    assert ds.split_counts() == {
        "train": {"cat": 8, "dog": 8},
        "val": {"cat": 1, "dog": 1},
        "test": {"cat": 1, "dog": 1},
    }
    assert ds.record.num_images == 20 and ds.record.num_classes == 2
    assert ds.record.creator == "ana" and ds.record.health == "ok"
    assert ds.record.source_kind == "folder"
    assert result.health.findings == []
    assert calls[0][:2] == (0, 20) and calls[-1][:2] == (20, 20)
    # manifest rows: stored bytes are the originals, sha256 of the bytes, sizes probed
    for row in ds.rows():
        data = ds.image_path(row).read_bytes()
        assert data == (root / row.source).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row.sha256
        assert (row.width, row.height, row.format, row.mode) == (32, 32, "JPEG", "RGB")
        assert ds.label_index(row) == ds.class_names.index(row.label)
    assert sorted(p.name for p in ds.root.iterdir()) == [
        "dataset.json",
        "health.json",
        "images",
        "manifest.csv",
    ]
    assert list(workspace.tmp_dir.iterdir()) == []


def test_split_folders_are_kept(workspace: Workspace, tmp_path: Path):
    root = tmp_path / "ds"
    make_tree(root, {"a": 5, "b": 5}, prefix="train", seed=1)
    make_tree(root, {"a": 2, "b": 2}, prefix="val", seed=2)
    make_tree(root, {"a": 1, "b": 3}, prefix="test", seed=3)
    ds = ingest(workspace, root, name="pre-split").dataset
    assert ds.split_counts() == {
        "train": {"a": 5, "b": 5},
        "val": {"a": 2, "b": 2},
        "test": {"a": 1, "b": 3},
    }
    assert ds.meta["user_split"] is True
    # a different seed cannot move user-split images
    ds2 = ingest(workspace, root, name="pre-split 2", split=SplitSpec(seed=9)).dataset
    assert ds2.fingerprint == ds.fingerprint


def test_train_and_test_without_val_carves_val_from_train(workspace: Workspace, tmp_path: Path):
    root = tmp_path / "ds"
    make_tree(root, {"a": 9, "b": 9}, prefix="Train", seed=1)
    make_tree(root, {"a": 3, "b": 3}, prefix="test", seed=2)
    result = ingest(workspace, root, name="tt")
    counts = result.dataset.split_counts()
    assert counts["test"] == {"a": 3, "b": 3}
    assert counts["val"] == {"a": 1, "b": 1} and counts["train"] == {"a": 8, "b": 8}
    note = result.health.find("val_from_train")
    assert note.severity == "info" and "11%" in note.message


def test_csv_with_path_label_and_split(workspace: Workspace, tmp_path: Path):
    images = tmp_path / "imgs"
    lines = ["filename,class,split"]
    for i in range(8):
        write_image(images / "sub" / f"{i}.png", seed=i, fmt="PNG")
        split = "" if i < 4 else ("train" if i < 6 else "valid")
        lines.append(f"sub/{i}.png,{'x' if i % 2 else 'y'},{split}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ds = ingest(workspace, CsvSource(tmp_path / "labels.csv", images), name="csv").dataset
    by_source = {r.source: r for r in ds.rows()}
    assert by_source["sub/4.png"].split == "train" and by_source["sub/6.png"].split == "val"
    assert by_source["sub/7.png"].label == "x" and by_source["sub/6.png"].label == "y"
    assert ds.record.source_kind == "csv" and ds.class_names == ["x", "y"]
    assert {r.split for r in ds.rows()} <= {"train", "val", "test"}


def test_csv_path_defaults_images_root_to_its_folder(workspace: Workspace, tmp_path: Path):
    for i in range(4):
        write_image(tmp_path / f"img{i}.jpg", seed=i)
    (tmp_path / "l.csv").write_text(
        "path;label\nimg0.jpg;a\nimg1.jpg;a\nimg2.jpg;b\nimg3.jpg;b\n", encoding="utf-8"
    )
    ds = ingest(workspace, tmp_path / "l.csv", name="semicolons").dataset
    assert ds.class_names == ["a", "b"] and len(ds.rows()) == 4


def test_csv_problems(workspace: Workspace, tmp_path: Path):
    write_image(tmp_path / "a.jpg", seed=1)
    csv = tmp_path / "l.csv"
    csv.write_text("file_path,category\na.jpg,x\n", encoding="utf-8")
    with pytest.raises(IngestError, match=r"no path column \(found columns: file_path, category\)"):
        ingest(workspace, csv, name="c1")
    csv.write_bytes("path,label\na.jpg,caf\xe9\n".encode("latin-1"))
    with pytest.raises(IngestError, match="not UTF-8"):
        ingest(workspace, csv, name="c2")
    csv.write_text("path,label\n../outside.jpg,x\na.jpg,y\n", encoding="utf-8")
    with pytest.raises(IngestError, match=r"outside the images folder .*line 2: \.\./outside\.jpg"):
        ingest(workspace, csv, name="c3")
    csv.write_text(f"path,label\n{tmp_path.parent / 'elsewhere.jpg'},x\n", encoding="utf-8")
    with pytest.raises(IngestError, match="outside the images folder"):
        ingest(workspace, csv, name="c4")
    csv.write_text("path,label\nnope1.jpg,x\nnope2.jpg,y\n", encoding="utf-8")
    with pytest.raises(IngestError, match="None of the files listed.*nope1.jpg"):
        ingest(workspace, csv, name="c5")
    csv.write_text("", encoding="utf-8")
    with pytest.raises(IngestError, match="is empty"):
        ingest(workspace, csv, name="c6")
    csv.write_text("path,label\n", encoding="utf-8")
    with pytest.raises(IngestError, match="no usable rows"):
        ingest(workspace, csv, name="c7")
    assert_nothing_registered(workspace)


def test_csv_symlink_escaping_the_root_is_rejected(workspace: Workspace, tmp_path: Path):
    outside = write_image(tmp_path / "secret" / "s.jpg", seed=3)
    root = tmp_path / "root"
    root.mkdir()
    (root / "link.jpg").symlink_to(outside)
    (root / "l.csv").write_text("path,label\nlink.jpg,a\n", encoding="utf-8")
    with pytest.raises(IngestError, match="outside the images folder"):
        ingest(workspace, root / "l.csv", name="link")
    assert_nothing_registered(workspace)


def test_browser_uploads_with_labels(workspace: Workspace):
    files = [UploadedFile(f"photo{i}.jpg", image_bytes(i), "cats") for i in range(3)]
    files += [UploadedFile(f"photo{i}.jpg", image_bytes(10 + i), "dogs") for i in range(3)]
    files.append(UploadedFile(".DS_Store", b"junk", "dogs"))
    result = ingest(workspace, files, name="uploaded")
    ds = result.dataset
    assert ds.class_names == ["cats", "dogs"] and len(ds.rows()) == 6
    assert {r.source for r in ds.rows("train")} <= {
        f"{c}/photo{i}.jpg" for c in ("cats", "dogs") for i in range(3)
    }
    assert result.health.find("ignored_entry").files == ["dogs/.DS_Store"]
    assert ds.record.source_kind == "upload"


def test_folder_upload_takes_label_from_parent_folder(workspace: Workspace):
    files = [
        UploadedFile(f"pets/{c}/{i}.png", image_bytes(i + 7 * len(c), fmt="PNG"))
        for c in ("cat", "dog")
        for i in range(3)
    ]
    files.append(
        UploadedFile("pets/.ipynb_checkpoints/0-checkpoint.png", image_bytes(99, fmt="PNG"))
    )
    result = ingest(workspace, files, name="folder-upload")
    assert result.dataset.class_names == ["cat", "dog"]
    assert result.health.find("ignored_entry").count == 1
    with pytest.raises(IngestError, match="has no label"):
        ingest(workspace, [UploadedFile("loose.jpg", image_bytes(1))], name="nolabel")


def test_empty_uploads(workspace: Workspace):
    with pytest.raises(IngestError, match="file is empty"):
        ingest(workspace, [UploadedFile("a.jpg", b"", "cat")], name="e1")
    with pytest.raises(IngestError, match="No files were uploaded"):
        ingest(workspace, [], name="e2")
    assert_nothing_registered(workspace)
    # one empty file among good ones is a finding, not a failure
    files = [UploadedFile(f"{i}.jpg", image_bytes(i), "ab"[i % 2]) for i in range(6)]
    files.append(UploadedFile("blank.jpg", b"", "a"))
    result = ingest(workspace, files, name="e3")
    finding = result.health.find("empty_file")
    assert finding.files == ["a/blank.jpg"] and finding.severity == "warning"


def test_server_path(workspace: Workspace, tmp_path: Path):
    root = make_tree(tmp_path / "srv", {"x": 3, "y": 3})
    ds = ingest(workspace, ServerPath(str(root)), name="srv").dataset
    assert ds.record.source_kind == "server" and ds.class_names == ["x", "y"]
    with pytest.raises(IngestError, match="does not exist"):
        ingest(workspace, ServerPath(str(tmp_path / "missing")), name="srv2")


def test_class_names_are_kept_exactly(workspace: Workspace, tmp_path: Path):
    names = ["golden retriever", "café ☕", 'say "cheese"', "<b>bold<b> & co", "it's"]
    root = tmp_path / "weird"
    for k, name in enumerate(names):
        for i in range(2):
            write_image(root / name / f"{i}.jpg", seed=100 * k + i)
    ds = ingest(workspace, root, name="weird").dataset
    assert ds.class_names == sorted(names)
    assert {r.label for r in ds.rows()} == set(names)
    # stored folders are sanitised, never the raw label
    for row in ds.rows():
        assert ds.image_path(row).resolve().is_relative_to(ds.images_dir.resolve())
        assert all(c.isalnum() or c in "-_./" for c in row.path), row.path
    again = load_dataset(workspace, ds.id)
    assert again.class_names == sorted(names)
    # browser uploads can carry any label, even with slashes
    html = '<script>alert("x")</script>'
    files = [
        UploadedFile(f"{i}.jpg", image_bytes(500 + i), html if i % 2 else "a/b") for i in range(4)
    ]
    up = ingest(workspace, files, name="html").dataset
    assert up.class_names == sorted([html, "a/b"])
    assert all(up.image_path(r).parent.parent == up.images_dir for r in up.rows())
    # line breaks survive the manifest round trip
    breaks = ["line\nbreak", "carriage\rreturn"]
    files = [UploadedFile(f"{i}.jpg", image_bytes(600 + i), breaks[i % 2]) for i in range(4)]
    lines = load_dataset(workspace, ingest(workspace, files, name="breaks").dataset.id)
    assert lines.class_names == sorted(breaks) and {r.label for r in lines.rows()} == set(breaks)


def test_loose_images_without_class_folders(workspace: Workspace, tmp_path: Path):
    for i in range(3):
        write_image(tmp_path / "flat" / f"{i}.jpg", seed=i)
    with pytest.raises(IngestError, match="not in class folders"):
        ingest(workspace, tmp_path / "flat", name="flat")
    make_tree(tmp_path / "vt", {"a": 2}, prefix="val")
    make_tree(tmp_path / "vt", {"a": 2}, prefix="test", seed=1)
    with pytest.raises(IngestError, match="no train/ folder"):
        ingest(workspace, tmp_path / "vt", name="vt")
    assert_nothing_registered(workspace)


def test_bad_arguments(workspace: Workspace, tmp_path: Path):
    root = make_tree(tmp_path / "d", {"a": 2, "b": 2})
    with pytest.raises(IngestError, match="Give the dataset a name"):
        ingest(workspace, root, name="  ")
    with pytest.raises(IngestError, match="add up to 1"):
        ingest(workspace, root, name="x", split=SplitSpec(train=0.5, val=0.1, test=0.1))
    with pytest.raises(IngestError, match="val fraction must be above 0"):
        ingest(workspace, root, name="x", split=SplitSpec(train=0.9, val=0.0, test=0.1))
    with pytest.raises(IngestError, match="Unsupported source"):
        ingest(workspace, 42, name="x")
    with pytest.raises(IngestError, match="not a supported source"):
        ingest(workspace, write_image(tmp_path / "one.jpg"), name="x")
    with pytest.raises(IngestError, match="does not exist"):
        ingest(workspace, tmp_path / "nope", name="x")
    assert_nothing_registered(workspace)
    ingest(workspace, root, name="taken")
    with pytest.raises(IngestError, match="already exists"):
        ingest(workspace, root, name="taken")
    assert len(workspace.list_datasets()) == 1


def test_load_dataset_by_id_or_name(workspace: Workspace, tmp_path: Path):
    ds = ingest(workspace, make_tree(tmp_path / "d", {"a": 3, "b": 3}), name="mine").dataset
    assert load_dataset(workspace, ds.id).id == ds.id
    by_name = load_dataset(workspace, "mine")
    assert by_name.id == ds.id and by_name.fingerprint == ds.fingerprint
    assert [r.source for r in by_name.all_rows()] == [r.source for r in ds.all_rows()]
    assert by_name.health.to_dict() == ds.health.to_dict()
    with pytest.raises(
        DatasetNotFound, match="No dataset with id or name 'other'. Available: mine"
    ):
        load_dataset(workspace, "other")
    with pytest.raises(LookupError):
        load_dataset(workspace, "../../etc")
    workspace.delete_dataset(ds.id)
    with pytest.raises(DatasetNotFound, match="no datasets yet"):
        load_dataset(workspace, ds.id)


def test_missing_files_of_a_registered_dataset(workspace: Workspace, tmp_path: Path):
    ds = ingest(workspace, make_tree(tmp_path / "d", {"a": 3, "b": 3}), name="gone").dataset
    (ds.root / "manifest.csv").unlink()
    with pytest.raises(DatasetNotFound, match="are missing"):
        load_dataset(workspace, "gone")


def test_failure_midway_leaves_nothing(
    workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Fault injection: the database refuses the row after the files were moved."""
    root = make_tree(tmp_path / "d", {"a": 3, "b": 3})

    def refuse(record):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(workspace, "add_dataset", refuse)
    with pytest.raises(IngestError, match="No space left on device"):
        ingest(workspace, root, name="x")
    monkeypatch.undo()
    assert_nothing_registered(workspace)


def test_folder_symlinks_and_special_files(workspace: Workspace, tmp_path: Path):
    import os

    root = make_tree(tmp_path / "d", {"a": 3, "b": 3})
    shared = make_tree(tmp_path / "pool", {"p": 1}, seed=5)
    (root / "a" / "linked.jpg").symlink_to(shared / "p" / "img_000.jpg")  # file links are read
    (root / "looped").symlink_to(root, target_is_directory=True)  # folder links are not followed
    os.mkfifo(root / "b" / "pipe.jpg")
    result = ingest(workspace, root, name="links")
    assert (
        len(result.dataset.rows("train"))
        + len(result.dataset.rows("val"))
        + len(result.dataset.rows("test"))
        == 7
    )
    ignored = result.health.find("ignored_entry")
    assert set(ignored.files) == {"looped/", "b/pipe.jpg"}


def test_stale_builds_are_removed_and_fresh_ones_kept(workspace: Workspace, tmp_path: Path):
    import os
    import time

    stale = workspace.tmp_dir / "ingest-d-old"
    fresh = workspace.tmp_dir / "ingest-d-running"
    for folder in (stale, fresh):
        (folder / "images").mkdir(parents=True)
    old = time.time() - 2 * 24 * 3600
    os.utime(stale, (old, old))
    ingest(workspace, make_tree(tmp_path / "d", {"a": 2, "b": 2}), name="x")
    assert not stale.exists() and fresh.exists()
