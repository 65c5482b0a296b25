"""Zip ingest: layouts, ignored entries, and hostile archives (checked before extracting)."""

from __future__ import annotations

import io
import stat
import struct
import zipfile
from pathlib import Path

import pytest

from finetune_core.data import IngestError, IngestLimits, UploadedFile, ingest
from finetune_core.data.pipeline import _copy
from finetune_core.data.sources import Candidate
from finetune_core.store import Workspace
from tests.helpers.data_files import (
    assert_nothing_registered,
    image_bytes,
    make_zip,
    tree_entries,
    workspace_files,
)

GOOD = tree_entries({"cat": 3, "dog": 3})


def ingest_zip(ws: Workspace, path: Path, **kw):
    return ingest(ws, path, name=kw.pop("name", "z"), **kw)


def test_zip_with_class_folders(workspace: Workspace, tmp_path: Path):
    result = ingest_zip(workspace, make_zip(tmp_path / "d.zip", GOOD))
    ds = result.dataset
    assert ds.class_names == ["cat", "dog"]
    assert len(ds.rows()) == 6
    assert ds.record.source_kind == "zip"
    # stored bytes are the original bytes, not re-encoded
    sources = {r.source: r for r in ds.rows()}
    assert ds.image_path(sources["cat/img_000.jpg"]).read_bytes() == GOOD["cat/img_000.jpg"]


def test_zip_wrapped_in_one_top_level_folder(workspace: Workspace, tmp_path: Path):
    entries = {f"my dataset/{k}": v for k, v in GOOD.items()}
    entries["my dataset/README.txt"] = b"hello"
    ds = ingest_zip(workspace, make_zip(tmp_path / "d.zip", entries)).dataset
    assert ds.class_names == ["cat", "dog"]
    ignored = ds.health.find("ignored_entry")
    assert ignored is not None and ignored.files == ["my dataset/README.txt"]


def test_zip_with_split_folders_keeps_the_split(workspace: Workspace, tmp_path: Path):
    entries = {
        **tree_entries({"cat": 4, "dog": 4}, prefix="data/train/", seed=1),
        **tree_entries({"cat": 2, "dog": 2}, prefix="data/valid/", seed=2),
        **tree_entries({"cat": 1, "dog": 1}, prefix="data/test/", seed=3),
    }
    ds = ingest_zip(workspace, make_zip(tmp_path / "d.zip", entries)).dataset
    assert ds.split_counts() == {
        "train": {"cat": 4, "dog": 4},
        "val": {"cat": 2, "dog": 2},
        "test": {"cat": 1, "dog": 1},
    }
    assert ds.meta["layout"] == "split_folders" and ds.meta["user_split"] is True


def test_macos_and_notebook_junk_never_become_classes(workspace: Workspace, tmp_path: Path):
    entries = dict(GOOD)
    entries["__MACOSX/cat/._img_000.jpg"] = b"\x00\x05\x16\x07junk"
    entries["cat/.DS_Store"] = b"junk"
    entries[".ipynb_checkpoints/img-checkpoint.jpg"] = image_bytes(99)
    entries["dog/Thumbs.db"] = b"junk"
    entries["dog/notes.txt"] = b"text"
    entries["dog/IMG_0001.HEIC"] = b"heic"
    ds = ingest_zip(workspace, make_zip(tmp_path / "d.zip", entries)).dataset
    assert ds.class_names == ["cat", "dog"]
    ignored = ds.health.find("ignored_entry")
    assert ignored.severity == "info" and ignored.count == 6
    assert set(ignored.files) == {
        "__MACOSX/cat/._img_000.jpg",
        "cat/.DS_Store",
        ".ipynb_checkpoints/img-checkpoint.jpg",
        "dog/Thumbs.db",
        "dog/notes.txt",
        "dog/IMG_0001.HEIC",
    }
    assert "1 image format not supported (convert to JPEG or PNG)" in ignored.message
    assert "never become classes" in ignored.message


def test_nested_archive_is_not_extracted(workspace: Workspace, tmp_path: Path):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("bird/b.jpg", image_bytes(50))
    ds = ingest_zip(
        workspace, make_zip(tmp_path / "d.zip", {**GOOD, "cat/more.zip": inner.getvalue()})
    ).dataset
    finding = ds.health.find("nested_archive")
    assert finding.severity == "warning" and finding.files == ["cat/more.zip"]
    assert "bird" not in ds.class_names
    stored = [p.name for p in ds.images_dir.rglob("*")]
    assert not any(name.endswith(".zip") or "b.jpg" in name for name in stored)


@pytest.mark.parametrize(
    "evil_name",
    [
        "../evil.jpg",
        "cat/../../evil.jpg",
        "/tmp/evil.jpg",
        "..\\evil.jpg",
        "C:/evil.jpg",
        "C:\\evil.jpg",
    ],
)
def test_unsafe_paths_reject_the_whole_archive(
    workspace: Workspace, tmp_path: Path, evil_name: str
):
    path = make_zip(tmp_path / "d.zip", {**GOOD, evil_name: image_bytes(9)})
    with pytest.raises(IngestError, match="rejected for safety"):
        ingest_zip(workspace, path)
    assert_nothing_registered(workspace)
    assert not list(tmp_path.rglob("evil.jpg"))
    assert not Path("/tmp/evil.jpg").exists()


def test_symlink_entry_is_rejected(workspace: Workspace, tmp_path: Path):
    path = make_zip(tmp_path / "d.zip", GOOD)
    with zipfile.ZipFile(path, "a") as zf:
        info = zipfile.ZipInfo("cat/link.jpg")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(IngestError, match="symbolic link"):
        ingest_zip(workspace, path)
    assert_nothing_registered(workspace)


def test_zip_bomb_entry_ratio_is_rejected(workspace: Workspace, tmp_path: Path):
    path = make_zip(tmp_path / "d.zip", {**GOOD, "cat/bomb.bmp": bytes(8 * 1024 * 1024)})
    with pytest.raises(IngestError, match="zip bomb"):
        ingest_zip(workspace, path)
    assert_nothing_registered(workspace)


def test_total_size_and_file_count_caps(workspace: Workspace, tmp_path: Path):
    path = make_zip(tmp_path / "d.zip", GOOD)
    total = sum(len(v) for v in GOOD.values())
    with pytest.raises(IngestError, match="expands to more than"):
        ingest_zip(workspace, path, limits=IngestLimits(max_total_bytes=total - 1))
    with pytest.raises(IngestError, match="entries, more than the limit of 5"):
        ingest_zip(workspace, path, limits=IngestLimits(max_files=5))
    assert_nothing_registered(workspace)
    assert ingest_zip(workspace, path, limits=IngestLimits(max_total_bytes=total)).dataset


def _patch_central(data: bytes, name: str, offset: int, fmt: str, value: int) -> bytes:
    """Overwrite a field of ``name``'s central-directory header (to forge a header)."""
    out = bytearray(data)
    start = out.find(b"PK\x01\x02" + bytes(24)[:0])
    while start != -1:
        name_len = struct.unpack_from("<H", out, start + 28)[0]
        if out[start + 46 : start + 46 + name_len].decode() == name:
            struct.pack_into(fmt, out, start + offset, value)
            return bytes(out)
        start = out.find(b"PK\x01\x02", start + 4)
    raise AssertionError(name)


def test_encrypted_entries_are_rejected(workspace: Workspace, tmp_path: Path):
    data = make_zip(tmp_path / "d.zip", GOOD).read_bytes()
    flags = zipfile.ZipFile(io.BytesIO(data)).getinfo("cat/img_000.jpg").flag_bits
    forged = _patch_central(data, "cat/img_000.jpg", 8, "<H", flags | 0x1)
    (tmp_path / "e.zip").write_bytes(forged)
    with pytest.raises(IngestError, match="password-protected"):
        ingest_zip(workspace, tmp_path / "e.zip")
    assert_nothing_registered(workspace)


def test_lying_declared_size_never_writes_more_than_declared(workspace: Workspace, tmp_path: Path):
    big = image_bytes(77, (200, 200), "BMP")  # about 120 kB
    data = make_zip(tmp_path / "d.zip", {**GOOD, "cat/liar.bmp": big}).read_bytes()
    forged = _patch_central(data, "cat/liar.bmp", 24, "<I", 100)  # claims 100 bytes
    (tmp_path / "f.zip").write_bytes(forged)
    ds = ingest_zip(workspace, tmp_path / "f.zip").dataset
    liar = next(r for r in ds.all_rows() if r.source == "cat/liar.bmp")
    assert liar.status == "unreadable" and liar.path == ""
    assert all(p.stat().st_size < len(big) for p in ds.images_dir.rglob("*") if p.is_file())
    assert len(ds.rows()) == 6


def test_streaming_enforces_declared_size_and_total_budget(tmp_path: Path):
    """Fault injection: a stream that yields more than its entry declared."""
    cand = Candidate("cat/x.jpg", "cat", None, lambda: io.BytesIO(bytes(5000)), declared_size=1000)
    with pytest.raises(IngestError, match="more data than its header declares"):
        _copy(cand, tmp_path / "x", [10**9], IngestLimits())
    cand = Candidate("cat/y.jpg", "cat", None, lambda: io.BytesIO(bytes(5000)))
    with pytest.raises(IngestError, match="expands to more than"):
        _copy(cand, tmp_path / "y", [4000], IngestLimits(max_total_bytes=4000))


def test_empty_and_broken_archives(workspace: Workspace, tmp_path: Path):
    (tmp_path / "zero.zip").write_bytes(b"")
    with pytest.raises(IngestError, match="is empty"):
        ingest_zip(workspace, tmp_path / "zero.zip")
    with pytest.raises(IngestError, match="contains no files"):
        ingest_zip(workspace, make_zip(tmp_path / "nothing.zip", {}))
    (tmp_path / "garbage.zip").write_bytes(b"this is not a zip file at all")
    with pytest.raises(IngestError, match="not a valid zip"):
        ingest_zip(workspace, tmp_path / "garbage.zip")
    with pytest.raises(IngestError, match="No images found"):
        ingest_zip(
            workspace, make_zip(tmp_path / "text.zip", {"a/readme.txt": b"x", "b/c.csv": b"y"})
        )
    assert_nothing_registered(workspace)


def test_uploaded_zip_bytes(workspace: Workspace, tmp_path: Path):
    data = make_zip(tmp_path / "d.zip", GOOD).read_bytes()
    ds = ingest(workspace, UploadedFile("pets.zip", data), name="up").dataset
    assert ds.class_names == ["cat", "dog"] and ds.record.source_kind == "upload"
    with pytest.raises(IngestError, match="is empty"):
        ingest(workspace, UploadedFile("empty.zip", b""), name="up2")
    assert [r.name for r in workspace.list_datasets()] == ["up"]


def test_dataset_files_stay_inside_the_dataset_folder(workspace: Workspace, tmp_path: Path):
    entries = {"weird/../../x": b"", **GOOD}
    with pytest.raises(IngestError):
        ingest_zip(workspace, make_zip(tmp_path / "d.zip", entries))
    ds = ingest_zip(workspace, make_zip(tmp_path / "ok.zip", GOOD)).dataset
    prefix = f"datasets/{ds.id}"
    assert all(
        f.startswith(prefix) or f in ("cache", "datasets", "runs", "tmp")
        for f in workspace_files(workspace)
    )
