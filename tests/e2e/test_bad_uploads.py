"""Bad uploads get a clear message and leave no dataset behind."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from finetune_core.data import make_demo_folder
from finetune_core.store import Workspace
from tests.helpers.e2e import alerts, click_button, file_input, main, open_app, wait_idle, wait_text

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def zip_bytes(entries: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def jpeg(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    images = make_demo_folder(tmp_path_factory.mktemp("img"), classes=2, per_class=1, size=32)
    return next(images.rglob("*.jpg")).read_bytes()


# name -> (what the archive holds, what the error must say)
CASES = {
    "slip.zip": (
        lambda jpg: zip_bytes([("cats/a.jpg", jpg), ("dogs/b.jpg", jpg), ("../evil.jpg", jpg)]),
        "The archive contains an entry that points outside it ('../evil.jpg')",
    ),
    "documents.zip": (
        lambda jpg: zip_bytes(
            [
                ("cats/notes.txt", b"meeting notes"),
                ("dogs/readme.md", b"# dogs"),
                ("dogs/photo.jpg", b"this is text, not a JPEG"),
            ]
        ),
        "No usable images",
    ),
    "empty.zip": (lambda jpg: b"", "The file empty.zip is empty (0 bytes)"),
}


def import_upload(page, server, folder: Path, name: str, jpg: bytes) -> str:
    """Upload the case's file through the zip uploader and press Import; return the
    message the case expects."""
    make, message = CASES[name]
    upload = folder / name
    upload.write_bytes(make(jpg))
    open_app(page, server, "/data")
    file_input(page, "Zip archive").set_input_files(str(upload))
    wait_text(page, name)
    wait_idle(page)
    click_button(page, "Import zip")
    wait_text(page, "Import failed")
    return message


@pytest.mark.parametrize("name", list(CASES))
def test_bad_upload_is_refused(app_server, page, shot, jpeg: bytes, tmp_path: Path, name: str):
    workspace = Workspace(app_server.workspace)
    message = import_upload(page, app_server, tmp_path, name, jpeg)
    errors = alerts(page, "Error")
    assert any(message in e for e in errors), errors
    assert main(page).get_by_text("Imported").count() == 0
    shot(page, "error")

    # Nothing was created: not in the database, not on disk, not on the page.
    assert workspace.list_datasets() == []
    assert list(workspace.datasets_dir.iterdir()) == []
    assert list(workspace.tmp_dir.iterdir()) == []
    open_app(page, app_server, "/data")
    wait_text(page, "No datasets yet")


def test_bad_upload_reason_is_visible(app_server, page, jpeg: bytes, tmp_path: Path) -> None:
    message = import_upload(page, app_server, tmp_path, "slip.zip", jpeg)
    error = main(page).locator('[data-testid="stAlertContentError"]').filter(has_text=message)
    assert error.count() == 1
    assert error.first.is_visible(), (
        f"the reason ({message!r}) is in the page but hidden: the user sees only "
        "'Import failed' and has to open that box to learn why"
    )
