"""The Data page's browser-folder upload keeps the user's split (issue 13 item 7) and holds
out a test split when it has none, by default (item 4), through AppTest.

AppTest's file_uploader takes (name, bytes, mime) tuples; the name is what the browser
sends for a folder upload (its webkitRelativePath, e.g. ``mydata/train/a/img.jpg``), and
the page gets the same ``UploadedFile`` objects as in the browser.
"""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from finetune_core.store import Workspace
from tests.app.test_pages import app_ws, assert_ok, open_page, texts  # noqa: F401 - fixture
from tests.helpers.data_files import tree_entries

TRAIN = {"a": 12, "b": 8}
VAL = {"a": 3, "b": 2}


def upload_folder(at: AppTest) -> AppTest:
    files = {**tree_entries(TRAIN, prefix="mydata/train/", seed=1),
             **tree_entries(VAL, prefix="mydata/val/", seed=2)}  # fmt: skip
    at.file_uploader(key="import_folder").set_value(
        [(name, data, "image/jpeg") for name, data in files.items()]
    )
    return at.run()


def split_counts(ws: Workspace) -> dict[str, dict[str, int]]:
    [record] = ws.list_datasets()
    totals = record.summary["split_totals"]
    return {s: n for s, n in totals.items() if n}


def test_folder_upload_keeps_train_and_val_exactly(app_ws: Workspace) -> None:  # noqa: F811
    at = open_page("data")
    at.checkbox(key="import_holdout").uncheck()
    upload_folder(at)
    assert "25 files selected." in texts(at)
    at.button(key="import_folder_go").click().run()
    assert_ok(at)
    [record] = app_ws.list_datasets()
    assert record.name == "mydata" and record.class_names == ["a", "b"]
    assert split_counts(app_ws) == {"train": 20, "val": 5}
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Train"], metrics["Validation"], metrics["Test"]) == ("20", "5", "0")
    assert "Your split was kept." in texts(at)


def test_folder_upload_holds_out_a_test_split_by_default(app_ws: Workspace) -> None:  # noqa: F811
    at = open_page("data")
    assert at.checkbox(key="import_holdout").value is True
    assert at.number_input(key="import_holdout_pct").value == 15
    upload_folder(at)
    at.button(key="import_folder_go").click().run()
    assert_ok(at)
    # 15% of each class's train part: a 12 -> 2, b 8 -> 1; val exactly as uploaded.
    assert split_counts(app_ws) == {"train": 17, "val": 5, "test": 3}
    assert "15% of each class of its train part is held out as the test split" in texts(at)
