"""Stratified deterministic split, and the dataset fingerprint."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from finetune_core.data import ManifestRow, SplitSpec, dataset_fingerprint, ingest
from finetune_core.data.split import assign_splits, quotas
from finetune_core.store import Workspace
from tests.helpers.data_files import make_tree


def rows_for(counts: dict[str, int]) -> list[ManifestRow]:
    return [
        ManifestRow(path=f"{c}/{i}", label=c, split="", sha256=f"{c}-{i}")
        for c, n in counts.items()
        for i in range(n)
    ]


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (1, (0, 0)),
        (2, (1, 0)),
        (3, (1, 0)),
        (4, (1, 1)),
        (10, (1, 1)),
        (100, (10, 10)),
        (25, (3, 3)),
    ],
)
def test_quotas(n: int, expected: tuple[int, int]):
    assert quotas(n, SplitSpec()) == expected
    n_val, n_test = quotas(n, SplitSpec())
    assert n - n_val - n_test >= 1


def test_split_is_stratified_and_every_class_trains():
    counts = {"a": 100, "b": 37, "c": 5, "d": 2, "e": 1}
    rows, carved = assign_splits(rows_for(counts), SplitSpec())
    assert not carved
    per = {c: {s: 0 for s in ("train", "val", "test")} for c in counts}
    for r in rows:
        per[r.label][r.split] += 1
    assert per["a"] == {"train": 80, "val": 10, "test": 10}
    assert per["b"] == {"train": 29, "val": 4, "test": 4}
    assert per["c"] == {"train": 3, "val": 1, "test": 1}
    assert per["d"] == {"train": 1, "val": 1, "test": 0}
    assert per["e"] == {"train": 1, "val": 0, "test": 0}


def test_split_is_deterministic_and_seeded():
    base = rows_for({"a": 50, "b": 50})
    first, _ = assign_splits(base, SplitSpec(seed=3))
    again, _ = assign_splits(list(reversed(base)), SplitSpec(seed=3))
    assert {r.sha256: r.split for r in first} == {r.sha256: r.split for r in again}
    other, _ = assign_splits(base, SplitSpec(seed=4))
    assert {r.sha256: r.split for r in first} != {r.sha256: r.split for r in other}


def test_custom_fractions():
    rows, _ = assign_splits(rows_for({"a": 100}), SplitSpec.from_fractions(val=0.25, test=0.0))
    assert sorted(r.split for r in rows).count("val") == 25
    assert not any(r.split == "test" for r in rows)
    assert SplitSpec.from_fractions(0.2, 0.1) == SplitSpec(train=0.7, val=0.2, test=0.1)


def test_user_split_is_respected_and_unusable_rows_are_not_split():
    rows = rows_for({"a": 4})
    rows[0] = ManifestRow(path="x", label="a", split="test", sha256="x")
    rows[1] = ManifestRow(path="y", label="a", split="val", sha256="y")
    rows.append(ManifestRow(path="z", label="a", split="", sha256="", status="truncated"))
    out, carved = assign_splits(rows, SplitSpec())
    assert (out[0].split, out[1].split) == ("test", "val") and not carved
    assert out[-1].split == ""
    assert all(r.split in ("train", "val", "test") for r in out[:-1])


def test_spec_problems():
    assert SplitSpec().problems() == []
    assert "add up to 1" in SplitSpec(0.5, 0.2, 0.2).problems()[0]
    assert "between 0 and 1" in SplitSpec(1.5, -0.3, -0.2).problems()[0]
    assert "train fraction must be above 0" in SplitSpec(0.0, 0.5, 0.5).problems()[0]
    assert SplitSpec.from_dict(SplitSpec(0.7, 0.2, 0.1, 5).to_dict()) == SplitSpec(0.7, 0.2, 0.1, 5)


def test_fingerprint_depends_on_contents_names_labels_and_split(
    workspace: Workspace, tmp_path: Path
):
    root = make_tree(tmp_path / "d", {"a": 10, "b": 10})
    ds = ingest(workspace, root, name="one").dataset
    fp = ds.fingerprint
    # the same files in another folder: same fingerprint, same training order
    moved = tmp_path / "elsewhere"
    shutil.copytree(root, moved)
    again = ingest(workspace, moved, name="copy").dataset
    assert again.fingerprint == fp
    assert [r.sha256 for r in again.rows("train")] == [r.sha256 for r in ds.rows("train")]
    # renaming one file reorders what training reads, so the fingerprint changes
    first = sorted((moved / "a").iterdir())[0]
    first.rename(first.with_name("z_" + first.name))
    renamed = ingest(workspace, moved, name="two").dataset
    assert renamed.fingerprint != fp
    # (contents, labels and splits are unchanged: the v1 fingerprint missed this)
    assert sorted((r.sha256, r.label, r.split) for r in renamed.rows()) == sorted(
        (r.sha256, r.label, r.split) for r in ds.rows()
    )
    # a different seed moves images between splits
    assert ingest(workspace, root, name="seed", split=SplitSpec(seed=1)).dataset.fingerprint != fp
    # one image moved to the other class
    shutil.move(moved / "a" / "img_001.jpg", moved / "b" / "moved.jpg")
    assert ingest(workspace, moved, name="relabel").dataset.fingerprint != fp


def test_fingerprint_function():
    rows = [ManifestRow("p1", "a", "train", "s1"), ManifestRow("p2", "b", "val", "s2")]
    fp = dataset_fingerprint(rows, ["a", "b"])
    assert fp == dataset_fingerprint(rows, ["b", "a"]) and len(fp) == 64
    assert fp == "2c241687473019c53eab2a2c1747c384e2f949a80770648b6cb51809a421f329"
    # order and names are what training reads: both change the fingerprint
    assert fp != dataset_fingerprint(list(reversed(rows)), ["a", "b"])
    assert fp != dataset_fingerprint([ManifestRow("p0", "a", "train", "s1"), rows[1]], ["a", "b"])
    assert fp != dataset_fingerprint([rows[0], ManifestRow("p2", "b", "test", "s2")], ["a", "b"])
    assert fp != dataset_fingerprint([rows[0], ManifestRow("p2", "a", "val", "s2")], ["a", "b"])
    assert fp != dataset_fingerprint([rows[0], ManifestRow("p2", "b", "val", "s3")], ["a", "b"])
    unusable = ManifestRow("p3", "b", "", "s9", status="truncated")
    assert fp == dataset_fingerprint([*rows, unusable], ["a", "b"])
