"""Issue 15 item 8: admin-only features are admin-only in the core; errors reveal no paths.

v1: with server paths switched on, a non-admin imported 398 images from a server
folder, and the messages listed the files of folders such as ``/etc`` and told whether
``/root/.ssh`` exists; the custom-backbone upload was open to everybody the same way.
Now ``auth.server_paths`` decides, taking the User: non-admins are refused before any
file is looked at, with one message whatever the path; an admin's path outside the
allowed roots reads exactly like a missing one; ingest says "not found or not allowed"
for a missing and an unreadable path alike and counts a folder's ignored files instead
of naming them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from finetune_core.auth import accounts
from finetune_core.auth.access import AccessSettings, PermissionDenied, User, load_access_settings
from finetune_core.auth.server_paths import (
    BACKBONE_ADMINS_ONLY,
    SERVER_IMPORT_ADMINS_ONLY,
    check_backbone_upload,
    check_config_paths,
    check_server_import,
)
from finetune_core.config import RunConfig
from finetune_core.data import IngestError, ServerPath, ingest
from finetune_core.store import RunRecord, Workspace
from tests.helpers.data_files import make_tree

ROOT = Path(__file__).resolve().parents[2]
ANN = User("ann", is_admin=False)
ADMIN = User("root", is_admin=True)
ON = AccessSettings(allow_server_paths=True, allow_custom_backbones=True, auth_mode="password")
PROBES = ("/etc", "/root/.ssh", "/no/such/folder/anywhere")  # v1 told these apart


def entry_points(ws: Workspace) -> dict[str, object]:
    """Every core entry point that takes a server path (or a file of the server)."""
    return {
        "server import": lambda user, p, s=ON: check_server_import(s, user, p),
        "weights path": lambda user, p, s=ON: check_config_paths(
            s, user, RunConfig(dataset="d", weights=f"{p}/model.pt"), ws
        ),
        "init_from folder": lambda user, p, s=ON: check_config_paths(
            s, user, RunConfig(dataset="d", init_from=p), ws
        ),
        "init_from folder:last": lambda user, p, s=ON: check_config_paths(
            s, user, RunConfig(dataset="d", init_from=f"{p}:last"), ws
        ),
        "custom backbone": lambda user, p, s=ON: check_config_paths(
            s,
            user,
            RunConfig(dataset="d", model="custom", weights=f"{p}/b.pt2", strategy="probe"),
            ws,
        ),  # fmt: skip
    }


def refusal(call: object, *args: object) -> str:
    with pytest.raises(PermissionDenied) as caught:
        call(*args)  # type: ignore[operator]
    return str(caught.value)


# ------------------------------------------------------------------ reproductions
def test_a_non_admin_cannot_import_a_server_folder(workspace: Workspace, tmp_path: Path) -> None:
    folder = make_tree(tmp_path / "srv", {"cat": 3, "dog": 3})  # a real folder of images
    assert refusal(check_server_import, ON, ANN, str(folder)) == SERVER_IMPORT_ADMINS_ONLY
    assert workspace.list_datasets() == []
    # the admin may, and gets the real (resolved) path to import from
    checked = check_server_import(ON, ADMIN, f"{folder}/../srv")
    ds = ingest(workspace, ServerPath(str(checked)), name="srv").dataset
    assert ds.class_names == ["cat", "dog"]


def test_a_non_admin_cannot_upload_or_name_a_custom_backbone(workspace: Workspace) -> None:
    assert refusal(check_backbone_upload, ON, ANN) == BACKBONE_ADMINS_ONLY
    uploaded = workspace.root / "uploads" / "1234-b.pt2"  # where the Setup page saves it
    config = RunConfig(dataset="d", model="custom", weights=str(uploaded), strategy="probe")
    assert refusal(check_config_paths, ON, ANN, config, workspace) == BACKBONE_ADMINS_ONLY
    check_backbone_upload(ON, ADMIN)
    check_config_paths(ON, ADMIN, config, workspace)
    off = AccessSettings(auth_mode="password")
    assert "Custom backbone files are off" in refusal(check_backbone_upload, off, ADMIN)


def test_a_server_folder_listing_is_not_in_the_error(workspace: Workspace, tmp_path: Path) -> None:
    secret = tmp_path / "etc"
    secret.mkdir()
    for name in ("passwd", "shadow", "id_rsa", "hosts.allow"):
        (secret / name).write_text("x")
    with pytest.raises(IngestError) as caught:
        ingest(workspace, ServerPath(str(secret)), name="etc")
    message = str(caught.value)
    assert "all 4 entries were ignored (not an image file)" in message
    assert not any(name in message for name in ("passwd", "shadow", "id_rsa", "hosts"))


def test_missing_and_unreadable_paths_read_alike_in_ingest(
    workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hidden = make_tree(tmp_path / "ssh", {"a": 2, "b": 2})
    real_access = os.access
    # The fault: the server may not read this folder (the tests run as root, who may).
    monkeypatch.setattr(
        os, "access", lambda p, m: False if Path(p) == hidden else real_access(p, m)
    )
    messages = []
    for path in (hidden, tmp_path / "missing"):
        with pytest.raises(IngestError) as caught:
            ingest(workspace, ServerPath(str(path)), name="x")
        messages.append(str(caught.value).replace(str(path), "PATH"))
    assert messages[0] == messages[1]
    assert "not found or not allowed" in messages[0]
    assert workspace.list_datasets() == []


# ------------------------------------------------------------------ the class
@pytest.mark.parametrize(
    "entry", ["server import", "weights path", "init_from folder", "init_from folder:last",
              "custom backbone"],
)  # fmt: skip
def test_every_server_path_entry_point_refuses_non_admins_alike(
    workspace: Workspace, entry: str
) -> None:
    call = entry_points(workspace)[entry]
    messages = {refusal(call, ANN, probe) for probe in PROBES}
    assert len(messages) == 1, messages  # nothing tells /etc, /root/.ssh and a missing path apart
    (message,) = messages
    assert not any(p in message for p in ("/etc", ".ssh", "/no/such", "exist"))


@pytest.mark.parametrize("entry", ["server import", "weights path", "init_from folder"])
def test_outside_the_roots_an_admin_gets_the_missing_path_message(
    workspace: Workspace, tmp_path: Path, entry: str
) -> None:
    data = make_tree(tmp_path / "data" / "set", {"a": 2, "b": 2})
    rooted = AccessSettings(
        allow_server_paths=True, server_path_roots=(str(tmp_path / "data"),), auth_mode="password"
    )
    call = entry_points(workspace)[entry]
    link = tmp_path / "data" / "escape"
    link.symlink_to("/etc")  # a link inside the roots that leads out of them
    probes = [*PROBES, str(link), str(tmp_path / "data" / "missing")]
    messages = {
        refusal(call, ADMIN, probe, rooted).replace(repr(probe), "PATH").replace(
            repr(probe + "/model.pt"), "PATH")
        for probe in probes
    }  # fmt: skip
    assert len(messages) == 1, messages
    assert "not found or not allowed" in next(iter(messages))
    if entry == "server import":
        assert check_server_import(rooted, ADMIN, str(data)) == data.resolve()


def test_what_non_admins_may_still_use(workspace: Workspace) -> None:
    """The Setup page's own uploads, a run's own copies and workspace run ids pass."""
    upload = workspace.root / "uploads" / "ab12-weights.pt"
    workspace.add_run(RunRecord(id="r-source", name="source"))
    run_backbone = workspace.run_dir("r-source") / "backbone.pt2"
    for config in (
        RunConfig(dataset="d", weights=str(upload)),
        RunConfig(dataset="d", init_from="r-source"),
        RunConfig(dataset="d", init_from="r-source:last"),
        RunConfig(dataset="d", model="custom", weights=str(run_backbone), strategy="probe"),
        RunConfig(dataset="d"),
    ):
        check_config_paths(ON, ANN, config, workspace)
    escape = workspace.root / "uploads" / "link.pt"
    escape.parent.mkdir(parents=True, exist_ok=True)
    escape.symlink_to("/etc/passwd")  # an upload folder link leading out counts as outside
    with pytest.raises(PermissionDenied):
        check_config_paths(ON, ANN, RunConfig(dataset="d", weights=str(escape)), workspace)


def test_server_path_roots_setting_is_read_and_checked() -> None:
    settings = load_access_settings({}, {"FINETUNE_SERVER_PATH_ROOTS": "/data,/mnt/sets"})
    assert settings.server_path_roots == (os.path.realpath("/data"), os.path.realpath("/mnt/sets"))
    from_secrets = load_access_settings({"access": {"server_path_roots": ["/data"]}}, {})
    assert from_secrets.server_path_roots == (os.path.realpath("/data"),)
    with pytest.raises(ValueError, match="not an absolute folder"):
        load_access_settings({}, {"FINETUNE_SERVER_PATH_ROOTS": "data"})


# ------------------------------------------------------------------ the pages (AppTest)
@pytest.fixture
def signed_in_data_page(workspace: Workspace, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.chdir(ROOT)
    for name in ("FINETUNE_PASSWORD", "FINETUNE_ADMINS", "FINETUNE_TRUSTED_HEADER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FINETUNE_ALLOW_SERVER_PATHS", "1")
    root = accounts.bootstrap_admin(workspace, "root", "root password 1")
    accounts.create_account(workspace, root.user(), "ann", "ann password 1")

    def open_as(name: str, password: str) -> AppTest:
        at = AppTest.from_file(str(ROOT / "views" / "data.py"), default_timeout=60)
        at.secrets = {"unrelated": "value"}
        at.run()
        at.text_input[0].input(name)
        at.text_input[1].input(password)
        return at.button[0].click().run()

    return open_as


def test_the_data_page_offers_server_paths_to_admins_only(signed_in_data_page) -> None:  # noqa: ANN001
    ann = signed_in_data_page("ann", "ann password 1")
    assert not ann.exception
    assert "import_server_path" not in [t.key for t in ann.text_input]
    assert SERVER_IMPORT_ADMINS_ONLY in [i.value for i in ann.info]
    root = signed_in_data_page("root", "root password 1")
    assert not root.exception
    root.text_input(key="import_server_path").input("/etc").run()
    root.button(key="import_server_go").click().run()
    errors = [e.value for e in root.error]
    assert not root.exception and errors and "passwd" not in " ".join(errors)
