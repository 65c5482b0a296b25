"""Property tests: random trees, random bytes named .jpg, random CSVs and random uploads
never crash ingest with anything but IngestError, never write outside the dataset
folder, and never register half a dataset."""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from finetune_core.data import (
    CsvSource,
    IngestError,
    SplitSpec,
    UploadedFile,
    dataset_fingerprint,
    ingest,
    load_dataset,
)
from finetune_core.store import Workspace
from tests.helpers.data_files import image_bytes

SETTINGS = settings(
    max_examples=int(os.environ.get("DATA_PROPERTY_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

IMAGES = [
    image_bytes(i, (8 + i, 8), fmt) for i, fmt in enumerate(["JPEG", "PNG", "GIF", "BMP", "WEBP"])
]
contents = st.one_of(
    st.sampled_from(IMAGES),
    st.binary(max_size=300),
    st.sampled_from(IMAGES).map(lambda b: b[: len(b) // 2]),
    st.just(b""),
)
parts = st.one_of(
    st.sampled_from(
        [
            "cat",
            "dog",
            "train",
            "val",
            "valid",
            "test",
            "__MACOSX",
            ".hidden",
            ".ipynb_checkpoints",
            "a b",
            "é",
            "<x>",
        ]
    ),
    st.text(
        st.characters(blacklist_characters="/\\\x00", blacklist_categories=("Cs",)),
        min_size=1,
        max_size=8,
    ),
)
file_names = st.tuples(
    st.sampled_from(["img", "x", ".DS_Store", "Thumbs", "photo 1", "ü"]),
    st.sampled_from([".jpg", ".png", ".gif", ".txt", ".zip", ".JPEG", ".webp", ""]),
).map("".join)
trees = st.dictionaries(
    st.tuples(st.lists(parts, min_size=0, max_size=3), file_names).map(lambda t: (*t[0], t[1])),
    contents,
    max_size=12,
)
splits = st.sampled_from([SplitSpec(), SplitSpec(0.5, 0.25, 0.25, 7), SplitSpec(0.9, 0.1, 0.0, 1)])


@contextmanager
def sandbox() -> Iterator[tuple[Path, Workspace]]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        yield root, Workspace(root / "ws")


def snapshot(root: Path) -> dict[str, int]:
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath, name)
            out[path.relative_to(root).as_posix()] = path.lstat().st_size
    return out


def check_outcome(root: Path, ws: Workspace, before: dict[str, int], run) -> None:
    """Run an ingest and check the invariants whatever happens."""
    try:
        result = run()
        event("imported")
    except IngestError as exc:
        event("IngestError")
        assert str(exc) and "unexpectedly" not in str(exc)  # a real message, not a hidden bug
        assert ws.list_datasets() == []
        assert list(ws.datasets_dir.iterdir()) == []
        result = None
    assert list(ws.tmp_dir.iterdir()) == []
    after = snapshot(root)
    changed = {k for k in after.keys() | before.keys() if after.get(k) != before.get(k)}
    allowed = f"ws/datasets/{result.dataset.id}/" if result else "ws/datasets/\x00"
    assert all(k.startswith(allowed) or k.startswith("ws/workspace.db") for k in changed), changed
    if result:
        ds = load_dataset(ws, result.dataset.id)
        assert ds.record.num_images == len(ds.rows()) > 0
        assert ds.fingerprint == dataset_fingerprint(ds.all_rows(), ds.class_names)
        for row in ds.rows():
            path = ds.image_path(row).resolve()
            assert path.is_relative_to(ds.images_dir.resolve()) and path.is_file()
            assert row.split in ("train", "val", "test") and row.label in ds.class_names
        counts = ds.split_counts()
        untrained = [
            c
            for c in ds.class_names
            if not counts["train"][c] and any(r.label == c for r in ds.rows())
        ]
        if untrained:  # only possible when the user pinned every copy outside train
            assert ds.health.find("missing_in_train").classes == untrained


@SETTINGS
@given(tree=trees, split=splits)
def test_random_folders_and_zips(tree: dict[tuple[str, ...], bytes], split: SplitSpec):
    with sandbox() as (root, ws):
        src = root / "src"
        src.mkdir()
        for path_parts, data in tree.items():
            safe = [p for p in path_parts if p not in (".", "..")]
            target = src.joinpath(*safe)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                if not target.exists():
                    target.write_bytes(data)
            except OSError:  # a file and a folder of the same name: skip
                pass
        before = snapshot(root)
        check_outcome(root, ws, before, lambda: ingest(ws, src, name="folder", split=split))

        archive = root / "data.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            for path_parts, data in tree.items():
                zf.writestr("/".join(path_parts), data)  # may contain .. on purpose
        before = snapshot(root)
        check_outcome(root, ws, before, lambda: ingest(ws, archive, name="zip", split=split))


@SETTINGS
@given(
    rows=st.lists(
        st.tuples(
            st.one_of(
                st.sampled_from(["a.jpg", "b.png", "sub/c.gif", "a.jpg", "sub\\c.gif"]),
                st.sampled_from(["../up.jpg", "/etc/passwd", "missing.jpg", "", "sub"]),
                st.text(max_size=10),
            ),
            st.one_of(st.sampled_from(["a", "b", "b", " a "]), st.text(max_size=6)),
            st.sampled_from(["", "", "train", "val", "test", "bogus"]),
        ),
        max_size=10,
    ),
    header=st.sampled_from(["path,label,split", "path,label", "file,class,subset", "x,y", ""]),
    raw=st.binary(max_size=200),
    use_raw=st.sampled_from([False, False, False, True]),
)
def test_random_csvs(rows: list[tuple[str, str, str]], header: str, raw: bytes, use_raw: bool):
    with sandbox() as (root, ws):
        images = root / "images"
        (images / "sub").mkdir(parents=True)
        for name, data in zip(["a.jpg", "b.png", "sub/c.gif"], IMAGES, strict=False):
            (images / name).write_bytes(data)
        csv = images / "labels.csv"
        if use_raw:
            csv.write_bytes(raw)
        else:
            lines = [header] + [",".join(f'"{c}"' if "," in c else c for c in row) for row in rows]
            csv.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
        before = snapshot(root)
        check_outcome(root, ws, before, lambda: ingest(ws, CsvSource(csv), name="csv"))


@SETTINGS
@given(
    files=st.lists(
        st.builds(
            UploadedFile,
            name=st.one_of(file_names, file_names, st.text(max_size=12)),
            data=st.one_of(st.sampled_from(IMAGES), contents),
            label=st.one_of(
                st.sampled_from(["cat", "dog", "", ".x", "__MACOSX", "../../x"]),
                st.text(max_size=6),
            ),
        ),
        max_size=8,
    )
)
def test_random_uploads(files: list[UploadedFile]):
    with sandbox() as (root, ws):
        before = snapshot(root)
        check_outcome(root, ws, before, lambda: ingest(ws, files, name="upload"))
