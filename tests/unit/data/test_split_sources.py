"""Every tree-shaped source keeps the user's split (issue 13 item 7), and a test split is
held out when that split has none (item 4): counts, stratification, seeds."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from finetune_core.data import IngestError, ManifestRow, SplitSpec, UploadedFile, ingest
from finetune_core.data.split import HOLDOUT_DEFAULT, assign_splits, holds_out_test
from finetune_core.store import Workspace
from tests.helpers.data_files import make_tree, make_zip, tree_entries

# The user's split: train 12 + 8, val 3 + 2 (numbers that an 80/10/10 split would change).
TRAIN = {"a": 12, "b": 8}
VAL = {"a": 3, "b": 2}


def split_tree() -> dict[str, bytes]:
    """train/<class>/..., val/<class>/... under a wrapper folder, as a browser sends it."""
    return {
        **tree_entries(TRAIN, prefix="mydata/train/", seed=1),
        **tree_entries(VAL, prefix="mydata/val/", seed=2),
    }


def counts(dataset) -> dict[str, dict[str, int]]:
    return {s: dict(c) for s, c in dataset.split_counts().items() if sum(c.values())}


EXPECTED = {"train": TRAIN, "val": VAL}


def test_a_browser_folder_upload_keeps_train_and_val_exactly(workspace: Workspace) -> None:
    files = [UploadedFile(name, data) for name, data in split_tree().items()]
    files.append(UploadedFile("mydata/.DS_Store", b"junk"))
    result = ingest(workspace, files, name="folder")
    assert counts(result.dataset) == EXPECTED
    assert result.dataset.record.summary["layout"] == "split_folders"
    assert result.dataset.record.summary["user_split"] is True
    assert result.dataset.record.summary["test_held_out"] is None


@pytest.mark.parametrize("kind", ["zip", "folder", "zip upload", "browser folder"])
def test_every_tree_source_gives_the_same_split(
    workspace: Workspace, tmp_path: Path, kind: str
) -> None:
    entries = split_tree()
    if kind == "folder":
        for name, data in entries.items():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_bytes(data)
        source: object = tmp_path / "mydata"
    elif kind == "zip":
        source = make_zip(tmp_path / "mydata.zip", entries)
    elif kind == "zip upload":
        source = UploadedFile("mydata.zip", make_zip(tmp_path / "u.zip", entries).read_bytes())
    else:
        source = [UploadedFile(name, data) for name, data in entries.items()]
    dataset = ingest(workspace, source, name=kind.replace(" ", "-")).dataset
    assert counts(dataset) == EXPECTED
    assert {r.source.split("/")[-1] for r in dataset.rows("val")} == {
        name.split("/")[-1] for name in entries if "/val/" in name
    }


def test_a_folder_upload_of_class_folders_is_split_automatically(workspace: Workspace) -> None:
    files = [UploadedFile(n, d) for n, d in tree_entries({"a": 10, "b": 10}, "pets/").items()]
    dataset = ingest(workspace, files, name="classes").dataset
    assert counts(dataset) == {"train": {"a": 8, "b": 8}, "val": {"a": 1, "b": 1},
                               "test": {"a": 1, "b": 1}}  # fmt: skip
    assert dataset.record.summary["layout"] == "class_folders"


def test_a_folder_upload_with_val_but_no_train_is_refused(workspace: Workspace) -> None:
    files = [UploadedFile(n, d) for n, d in tree_entries({"a": 2, "b": 2}, "d/val/").items()]
    files += [UploadedFile(n, d) for n, d in tree_entries({"a": 2}, "d/test/", seed=3).items()]
    with pytest.raises(IngestError, match="no train/ folder"):
        ingest(workspace, files, name="no-train")


# --------------------------------------------------------------------------- hold-out
def test_hold_out_takes_a_stratified_test_split_from_the_users_train(
    workspace: Workspace,
) -> None:
    files = [UploadedFile(name, data) for name, data in split_tree().items()]
    spec = SplitSpec(holdout=0.25, seed=5)
    dataset = ingest(workspace, files, name="held", split=spec).dataset
    # 25% of each class's train images: a 12 -> 3, b 8 -> 2; val untouched.
    assert counts(dataset) == {"train": {"a": 9, "b": 6}, "val": VAL, "test": {"a": 3, "b": 2}}
    assert dataset.record.summary["test_held_out"] == 0.25
    sources = {r.source for r in dataset.rows("test")}
    assert all("/train/" in s for s in sources), "test comes from the user's train split"

    again = ingest(workspace, files, name="held-again", split=spec).dataset
    assert {r.source for r in again.rows("test")} == sources, "same seed, same hold-out"
    other = ingest(workspace, files, name="held-other", split=SplitSpec(holdout=0.25, seed=6))
    assert {r.source for r in other.dataset.rows("test")} != sources


def test_hold_out_also_when_the_user_split_is_train_only(
    workspace: Workspace, tmp_path: Path
) -> None:
    make_tree(tmp_path / "d", {"a": 20, "b": 20})
    lines = [f"{p.relative_to(tmp_path / 'd').as_posix()},{p.parent.name},train"
             for p in sorted((tmp_path / "d").rglob("*.jpg"))]  # fmt: skip
    (tmp_path / "d" / "labels.csv").write_text("path,label,split\n" + "\n".join(lines))
    spec = SplitSpec(holdout=HOLDOUT_DEFAULT)
    dataset = ingest(workspace, tmp_path / "d" / "labels.csv", name="csv", split=spec).dataset
    # val carved at 0.1 / 0.9 of 20 -> 2, test 15% of 20 -> 3, per class.
    assert counts(dataset) == {"train": {"a": 15, "b": 15}, "val": {"a": 2, "b": 2},
                               "test": {"a": 3, "b": 3}}  # fmt: skip


def test_no_hold_out_when_the_user_has_a_test_split_or_none_asked(
    workspace: Workspace, tmp_path: Path
) -> None:
    make_tree(tmp_path / "d", {"a": 6, "b": 6}, prefix="train")
    make_tree(tmp_path / "d", {"a": 2, "b": 2}, prefix="val", seed=1)
    make_tree(tmp_path / "d", {"a": 2, "b": 2}, prefix="test", seed=2)
    dataset = ingest(workspace, tmp_path / "d", name="has-test",
                     split=SplitSpec(holdout=0.15)).dataset  # fmt: skip
    assert counts(dataset)["test"] == {"a": 2, "b": 2}
    assert dataset.record.summary["test_held_out"] is None
    files = [UploadedFile(name, data) for name, data in split_tree().items()]
    plain = ingest(workspace, files, name="no-holdout").dataset  # SplitSpec(): holdout 0
    assert "test" not in counts(plain)


def test_holds_out_test_rules() -> None:
    def rows(splits: list[str]) -> list[ManifestRow]:
        return [ManifestRow(path=str(i), label="a", split=s, sha256=str(i))
                for i, s in enumerate(splits)]  # fmt: skip

    spec = SplitSpec(holdout=0.2)
    assert holds_out_test(rows(["train"] * 5 + ["val"]), spec)
    assert not holds_out_test(rows(["train"] * 5 + ["test"]), spec)
    assert not holds_out_test(rows([""] * 6), spec), "no user split: Test % applies"
    assert not holds_out_test(rows(["train"] * 5 + ["val"]), SplitSpec())
    # A CSV with some rows split: the automatic split of the others makes a test split.
    assert not holds_out_test(rows(["train", "val", "", ""]), spec)
    assert holds_out_test(rows(["train", "val", "", ""]), SplitSpec(test=0.0, train=0.9,
                                                                    holdout=0.2))  # fmt: skip
    out, carved = assign_splits(rows(["train"] * 20 + ["val"] * 3), spec)
    assert Counter(r.split for r in out) == {"train": 16, "val": 3, "test": 4} and not carved


def test_hold_out_is_validated() -> None:
    assert SplitSpec(holdout=0.6).problems() == [
        "The test hold-out must be between 0 and 0.5 (got 0.6)."
    ]
    assert SplitSpec.from_dict(SplitSpec(holdout=0.15).to_dict()).holdout == 0.15
