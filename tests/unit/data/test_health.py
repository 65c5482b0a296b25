"""The health report: every finding, with its severity, count and files; the statistics."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

from finetune_core.data import CsvSource, Finding, HealthReport, ingest
from finetune_core.data.health import MAX_LISTED_FILES
from finetune_core.store import Workspace
from tests.helpers.data_files import image_bytes, make_tree, write_image


def bomb_png(width: int = 9000, height: int = 9000) -> bytes:
    data = bytearray(image_bytes(0, (1, 1), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def test_unusable_files_are_reported_and_left_out(workspace: Workspace, tmp_path: Path):
    root = make_tree(tmp_path / "d", {"a": 6, "b": 6})
    jpeg = image_bytes(1000, (64, 64))
    (root / "a" / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "a" / "random.jpg").write_bytes(b"\x01\x02not an image at all" * 10)
    png = bytearray(image_bytes(1001, (16, 16), "PNG"))
    png[60:80] = bytes(20)
    (root / "b" / "corrupt.png").write_bytes(bytes(png))
    (root / "b" / "bomb.png").write_bytes(bomb_png())
    (root / "b" / "empty.jpg").write_bytes(b"")
    result = ingest(workspace, root, name="bad files")
    report, ds = result.health, result.dataset
    expected = {
        "truncated": ["a/cut.jpg"],
        "not_an_image": ["a/random.jpg"],
        "unreadable": ["b/corrupt.png"],
        "decompression_bomb": ["b/bomb.png"],
        "empty_file": ["b/empty.jpg"],
    }
    for code, files in expected.items():
        finding = report.find(code)
        assert finding is not None, code
        assert (finding.severity, finding.count, finding.files) == ("warning", 1, files)
        assert "left out of training" in finding.message
    assert not report.blocks_training and ds.record.health == "warning"
    assert len(ds.rows()) == 12 and len(ds.all_rows()) == 17 and ds.record.num_images == 12
    statuses = {r.source: r.status for r in ds.all_rows() if not r.ok}
    assert statuses == {files[0]: code for code, files in expected.items()}
    bomb = next(r for r in ds.all_rows() if r.source == "b/bomb.png")
    assert "9000x9000" in bomb.reason and bomb.split == ""
    assert report.stats["num_unusable"] == 5 and report.stats["num_usable"] == 12


def test_duplicates_within_a_class(workspace: Workspace, tmp_path: Path):
    root = make_tree(tmp_path / "d", {"a": 10, "b": 10})
    shutil.copy(root / "a" / "img_000.jpg", root / "a" / "copy1.jpg")
    shutil.copy(root / "a" / "img_000.jpg", root / "a" / "copy2.jpg")
    result = ingest(workspace, root, name="dups")
    finding = result.health.find("duplicate_in_class")
    assert finding.severity == "warning" and finding.count == 3
    assert sorted(finding.files) == ["a/copy1.jpg", "a/copy2.jpg", "a/img_000.jpg"]
    assert finding.message.startswith("2 image(s) are exact copies") and finding.classes == ["a"]
    # the automatic split keeps copies together: no leakage
    splits = {r.split for r in result.dataset.rows() if r.source in finding.files}
    assert len(splits) == 1 and result.health.find("split_leakage") is None


def test_conflicting_labels_warning_and_error(workspace: Workspace, tmp_path: Path):
    root = make_tree(tmp_path / "d", {"a": 12, "b": 12})
    shutil.copy(root / "a" / "img_000.jpg", root / "b" / "same_as_a.jpg")
    report = ingest(workspace, root, name="few").health
    finding = report.find("conflicting_labels")
    assert finding.severity == "warning" and not report.blocks_training
    assert sorted(finding.files) == ["a/img_000.jpg", "b/same_as_a.jpg"] and finding.classes == [
        "a",
        "b",
    ]
    ds = ingest(workspace, root, name="few2").dataset
    assert {r.split for r in ds.rows() if r.source in finding.files} == {"train"}  # kept together

    for i in range(4):  # a folder copied into the wrong class: > 10% of images conflict
        shutil.copy(root / "a" / f"img_{i + 1:03d}.jpg", root / "b" / f"wrong_{i}.jpg")
    report = ingest(workspace, root, name="many").health
    finding = report.find("conflicting_labels")
    assert finding.severity == "error" and finding.count == 10 and report.blocks_training
    assert "wrong class" in finding.message


def test_split_leakage_in_a_user_split(workspace: Workspace, tmp_path: Path):
    root = tmp_path / "d"
    make_tree(root, {"a": 4, "b": 4}, prefix="train", seed=1)
    make_tree(root, {"a": 2, "b": 2}, prefix="val", seed=2)
    shutil.copy(root / "train" / "a" / "img_000.jpg", root / "val" / "a" / "leak.jpg")
    shutil.copy(root / "train" / "b" / "img_000.jpg", root / "val" / "b" / "leak.jpg")
    finding = ingest(workspace, root, name="leaky").health.find("split_leakage")
    assert finding.severity == "warning" and finding.count == 4
    assert sorted(finding.files) == [
        "train/a/img_000.jpg",
        "train/b/img_000.jpg",
        "val/a/leak.jpg",
        "val/b/leak.jpg",
    ]
    assert "train, val" in finding.message


def test_tiny_class_and_class_with_one_image(workspace: Workspace, tmp_path: Path):
    root = make_tree(tmp_path / "d", {"big": 10, "small": 3, "one": 1})
    result = ingest(workspace, root, name="tiny")
    tiny = result.health.find("tiny_class")
    assert tiny.severity == "warning" and tiny.classes == ["one", "small"] and tiny.count == 2
    no_val = result.health.find("missing_in_val")
    assert no_val.classes == ["one"]
    counts = result.dataset.split_counts()
    assert counts["train"]["one"] == 1 and counts["val"]["small"] == 1
    assert not result.health.blocks_training


def test_class_without_usable_images_blocks_training(workspace: Workspace, tmp_path: Path):
    root = make_tree(tmp_path / "d", {"a": 5, "b": 5})
    (root / "c").mkdir()
    (root / "c" / "broken.jpg").write_bytes(b"garbage")
    result = ingest(workspace, root, name="empty class")
    finding = result.health.find("empty_class")
    assert finding.severity == "error" and finding.classes == ["c"]
    assert result.health.blocks_training and result.dataset.record.health == "error"
    assert result.dataset.class_names == ["a", "b", "c"]


def test_single_class_is_an_error(workspace: Workspace, tmp_path: Path):
    root = make_tree(tmp_path / "d", {"only": 6})
    result = ingest(workspace, root, name="single")
    finding = result.health.find("single_class")
    assert finding.severity == "error" and finding.classes == ["only"]
    assert "at least 2" in finding.message
    assert workspace.get_dataset(result.dataset.id).health == "error"


def test_imbalance(workspace: Workspace, tmp_path: Path):
    root = make_tree(tmp_path / "d", {"many": 30, "few": 5})
    report = ingest(workspace, root, name="imb").health
    finding = report.find("imbalance")
    assert finding.severity == "warning" and finding.classes == ["many", "few"]
    assert "6.0 times" in finding.message and report.stats["imbalance_ratio"] == 6.0
    balanced = ingest(workspace, make_tree(tmp_path / "e", {"x": 8, "y": 6}), name="bal").health
    assert balanced.find("imbalance") is None and balanced.stats["imbalance_ratio"] == round(
        8 / 6, 3
    )


def test_class_missing_from_train_in_a_user_split(workspace: Workspace, tmp_path: Path):
    root = tmp_path / "d"
    make_tree(root, {"a": 4, "b": 4}, prefix="train", seed=1)
    make_tree(root, {"a": 1, "b": 1, "c": 2}, prefix="val", seed=2)
    report = ingest(workspace, root, name="notrain").health
    finding = report.find("missing_in_train")
    assert finding.severity == "error" and finding.classes == ["c"] and report.blocks_training


def test_csv_missing_files_and_bad_rows(workspace: Workspace, tmp_path: Path):
    for i in range(6):
        write_image(tmp_path / f"{i}.jpg", seed=i)
    rows = [f"{i}.jpg,{'ab'[i % 2]}" for i in range(6)]
    rows += ["gone.jpg,a", "also/gone.jpg,b", ",a", "3.jpg,", "4.jpg,a,holdout"]
    (tmp_path / "l.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n", encoding="utf-8")
    report = ingest(workspace, CsvSource(tmp_path / "l.csv"), name="csv").health
    missing = report.find("missing_file")
    assert missing.severity == "warning" and missing.files == ["gone.jpg", "also/gone.jpg"]
    bad = report.find("bad_row")
    assert (
        bad.count == 3 and "line 10: empty path" in bad.message and "unknown split" in bad.message
    )


def test_statistics(workspace: Workspace, tmp_path: Path):
    root = tmp_path / "d"
    write_image(root / "a" / "wide.png", seed=1, size=(64, 16), fmt="PNG")
    write_image(root / "a" / "square.jpg", seed=2, size=(32, 32))
    write_image(root / "b" / "tall.jpg", seed=3, size=(20, 40))
    (root / "b" / "gray.png").write_bytes(image_bytes(4, (10, 10), "PNG", mode="L"))
    stats = ingest(workspace, root, name="stats").health.stats
    assert stats["width"] == {"min": 10, "median": 26.0, "max": 64, "mean": 31.5}
    assert stats["height"]["min"] == 10 and stats["height"]["max"] == 40
    assert stats["aspect"]["max"] == 4.0 and stats["aspect"]["min"] == 0.5
    assert stats["modes"] == {"RGB": 3, "L": 1}
    assert stats["formats"] == {"PNG": 2, "JPEG": 2}
    assert stats["class_counts"] == {"a": 2, "b": 2}
    assert stats["small_images"] == 3
    assert sum(stats["split_totals"].values()) == 4
    assert stats["total_bytes"] == sum(p.stat().st_size for p in root.rglob("*.*"))


def test_report_round_trip_and_file_cap():
    files = [f"f{i}.jpg" for i in range(MAX_LISTED_FILES + 50)]
    report = HealthReport(
        findings=[
            Finding("tiny_class", "warning", "m", 1, [], ["x"]),
            Finding("empty_class", "error", "e", 1),
        ],
        stats={"num_usable": 3},
    )
    again = HealthReport.from_dict(report.to_dict())
    assert again == report and again.blocks_training and again.status == "error"
    assert [f.code for f in again.errors] == ["empty_class"] and len(again.warnings) == 1
    assert report.to_dict()["blocks_training"] is True
    from finetune_core.data.health import _finding

    capped = _finding("unreadable", "warning", "m", files)
    assert capped.count == len(files) and len(capped.files) == MAX_LISTED_FILES
    assert HealthReport().status == "ok"


def test_many_ignored_entries_are_capped_in_the_report(workspace: Workspace, tmp_path: Path):
    root = make_tree(tmp_path / "d", {"a": 3, "b": 3})
    for i in range(MAX_LISTED_FILES + 10):
        (root / "a" / f"note{i}.txt").write_text("x")
    finding = ingest(workspace, root, name="notes").health.find("ignored_entry")
    assert finding.count == MAX_LISTED_FILES + 10 and len(finding.files) == MAX_LISTED_FILES
    assert f"{MAX_LISTED_FILES + 10} not an image file" in finding.message
