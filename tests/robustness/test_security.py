"""Security: access control through the real server and the pages, XSRF, HTML from user
strings, escaping in the report of a real run, server paths hidden from non-admins,
and the dependency floor.

The real-server test starts ``streamlit run app.py`` in password mode and opens every
page's URL as the very first request to the fresh server, in headless Chromium:
Streamlit serves the scripts of a ``pages/`` folder on their own (without app.py's
gate) until a session has run ``st.navigation``. That is how this test first found the
pages readable without the password; the app now keeps its pages in ``views/`` and
``ui.services.get_workspace`` asks for sign-in again.
"""

from __future__ import annotations

import ast
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import markupsafe
import pytest
import streamlit as st
from packaging.requirements import Requirement
from packaging.version import Version
from streamlit.testing.v1 import AppTest

from finetune_core.auth import accounts
from finetune_core.auth.access import PermissionDenied, User, guarded_stop
from finetune_core.config import RunConfig
from finetune_core.data import UploadedFile, create_demo_dataset, ingest
from finetune_core.jobs.manager import JobManager
from finetune_core.jobs.postrun import DEFAULT_HOOKS
from finetune_core.store import RunRecord, RunStatus, Workspace
from tests.helpers.data_files import image_bytes
from tests.helpers.processes import (
    CHROMIUM,
    CHROMIUM_ARGS,
    NEEDS_CHROMIUM,
    free_port,
    settle,
    start_app,
    stop_app,
)

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")
UI_DIRS = ["pages", "views", "ui"]
ACCESS_VARIABLES = (
    "FINETUNE_ALLOW_SERVER_PATHS", "FINETUNE_ALLOW_CUSTOM_BACKBONE",
    "FINETUNE_ALLOW_CUSTOM_BACKBONES", "FINETUNE_PASSWORD", "FINETUNE_PASSWORD_SHA256",
    "FINETUNE_ADMINS",
)  # fmt: skip


def quick(dataset_id: str, **changes: Any) -> RunConfig:
    base = dict(
        dataset=dataset_id, model="resnet18", weights="none", strategy="probe", epochs=2,
        image_size=32, batch_size=16, lr=1e-2, channels_last=False, mixed_precision="off",
    )  # fmt: skip
    base.update(changes)
    return RunConfig(**base)


def load_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli", reason="reading TOML on Python 3.10 needs tomli")
    return tomllib.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- 15. dependencies
def test_dependency_floor_is_stated_and_installed() -> None:
    """streamlit >= 1.54 and torch >= 2.6: the releases with the weights_only fixes."""
    project = load_toml(ROOT / "pyproject.toml")["project"]
    floors = {"streamlit": Version("1.54"), "torch": Version("2.6")}
    stated = {Requirement(r).name: Requirement(r) for r in project["dependencies"]}
    for name, floor in floors.items():
        spec = stated[name].specifier
        assert not spec.contains(str(Version(f"{floor.major}.{floor.minor - 1}"))), name
        assert spec.contains(str(floor)) and any(s.operator == ">=" for s in spec), spec
        installed = Version(metadata.version(name).split("+")[0])
        assert installed >= floor, f"{name} {installed} is below the floor {floor}"


# --------------------------------------------------------------------------- 14. config + HTML
def test_streamlit_config_keeps_xsrf_protection_on() -> None:
    config = load_toml(ROOT / ".streamlit" / "config.toml")
    assert config["server"]["enableXsrfProtection"] is True
    # Streamlit turns XSRF protection off when CORS is disabled.
    assert config["server"].get("enableCORS", True) is True


def _ui_files() -> list[Path]:
    files = [ROOT / "app.py"]
    for folder in UI_DIRS:
        if (ROOT / folder).is_dir():
            files += sorted((ROOT / folder).rglob("*.py"))
    return files


# (file, function) whose HTML is built from server-made values only, each checked there:
# the stay-signed-in cookie script gets an HMAC token that must match [A-Za-z0-9._-]*.
REVIEWED_HTML = {("ui/auth.py", "_store_cookie")}


def test_the_reviewed_html_builder_refuses_anything_but_a_token() -> None:
    from ui.auth import _store_cookie

    for hostile in ["'; alert(1); '", "a</script><script>alert(1)", "x y", "a;b"]:
        with pytest.raises(ValueError, match="only letters, digits"):
            _store_cookie(hostile, 60)


def test_no_html_is_built_from_user_strings_in_the_app() -> None:
    """``unsafe_allow_html``, ``st.html`` and custom components only ever get literal text."""
    offenders = []
    for path in _ui_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        reviewed = {
            id(call)
            for func in ast.walk(tree)
            if isinstance(func, ast.FunctionDef)
            and (str(path.relative_to(ROOT)), func.name) in REVIEWED_HTML
            for call in ast.walk(func)
        }
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or id(node) in reviewed:
                continue
            name = ast.unparse(node.func)
            raw_html = any(
                kw.arg == "unsafe_allow_html"
                and not (isinstance(kw.value, ast.Constant) and kw.value.value is False)
                for kw in node.keywords
            )
            if raw_html or name.endswith(("st.html", "components.html", "components.v1.html")):
                literal = node.args and isinstance(node.args[0], ast.Constant)
                if not literal:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    assert offenders == []


# --------------------------------------------------------------------------- 14. the report
HOSTILE = {
    "class": '<script>alert("class")</script>',
    "class2": '"><svg/onload=alert(2)>',
    "dataset": "<img src=x onerror=alert(3)>",
    "creator": "</title><script>alert(4)</script>",
    "run": "<iframe src=javascript:alert(5)>",
    "notes": "<b onmouseover=alert(6)>hover</b>",
}


@pytest.mark.slow
def test_the_report_of_a_real_run_escapes_every_user_string_and_shows_no_server_path(
    workspace: Workspace,
) -> None:
    files = [
        UploadedFile(f"{i}.jpg", image_bytes(i, (32, 32)), HOSTILE["class" if i % 2 else "class2"])
        for i in range(24)
    ]
    ds = ingest(workspace, files, name=HOSTILE["dataset"], creator=HOSTILE["creator"]).dataset
    manager = JobManager(workspace, post_run=list(DEFAULT_HOOKS))
    try:
        config = quick(ds.id, name=HOSTILE["run"], notes=HOSTILE["notes"])
        run_id = manager.submit(config, creator=HOSTILE["creator"])
        assert manager.wait(run_id, timeout=180) == RunStatus.SUCCEEDED
    finally:
        manager.shutdown()
    assert workspace.get_run(run_id).error == ""
    report = (workspace.run_dir(run_id) / "report.html").read_text(encoding="utf-8")
    for what, text in HOSTILE.items():
        assert text not in report, f"the {what} appears unescaped"
    assert str(markupsafe.escape(HOSTILE["run"])) in report  # the report's own escaping
    assert str(markupsafe.escape(HOSTILE["class"])) in report
    assert str(workspace.root) not in report and str(workspace.root.parent) not in report
    scripts = re.findall(r"<script[^>]*>(.*?)</script>", report, flags=re.S)
    assert not [s for s in scripts if "alert(" in s and "<script>alert" in s]
    # no inline event handler made it into a tag
    tags = re.findall(r"<[a-zA-Z][^<>]*>", re.sub(r"<script.*?</script>", "", report, flags=re.S))
    assert not [t for t in tags if re.search(r"\son[a-z]+\s*=", t)]


# --------------------------------------------------------------------------- 13/14 pages
@pytest.fixture
def password_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workspace]:
    from ui import services

    monkeypatch.setenv("FINETUNE_WORKSPACE", str(tmp_path / "ws"))
    for name in ACCESS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    st.cache_resource.clear()
    ws = services.get_workspace()
    carol = accounts.bootstrap_admin(ws, "carol", "s3cret-pass")
    for name in ("bob", "alice"):
        accounts.create_account(ws, carol.user(), name, "s3cret-pass")
    yield ws
    st.cache_resource.clear()
    st.cache_data.clear()


def signed_in(name: str, page: str, **query: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=90).run()
    at.text_input[0].input(name)
    at.text_input[1].input("s3cret-pass")
    at.button[0].click().run()
    for key, value in query.items():
        at.query_params[key] = value
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def everything_shown(at: AppTest) -> str:
    parts = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "info", "success",
                 "warning", "error", "text", "code", "exception"):  # fmt: skip
        parts += [str(getattr(e, "value", e)) for e in getattr(at, kind)]
    parts += [str(e.label) for e in at.expander]
    return "\n".join(parts)


def test_non_admins_see_file_names_not_server_paths(password_app: Workspace) -> None:
    ws = password_app
    secret = f"{ws.root}/datasets/d-1/images/000-cat/000001-x.png"
    ws.add_run(
        RunRecord(
            id="r-20260101-000000-beef",
            name="leaky",
            creator="alice",
            status=RunStatus.FAILED,
            error=f"Could not read {secret}: truncated (see /usr/lib/python3/site.py)",
            traceback=(
                "Traceback (most recent call last):\n"
                f'  File "{ROOT}/finetune_core/trainer.py", line 3, in fit\n'
                f"OSError: [Errno 5] Input/output error: '{secret}'"
            ),
        )
    )
    for page in ("views/training.py", "views/runs.py"):
        shown = everything_shown(signed_in("bob", page, run="r-20260101-000000-beef"))
        bob = shown.replace("\\", "")  # markdown escapes ("000001\\-x\\.png")
        assert "000001-x.png" in bob
        for path in (str(ws.root), str(ROOT), "/usr/lib"):
            assert path not in bob, (page, path)
    carol = everything_shown(signed_in("carol", "views/training.py", run="r-20260101-000000-beef"))
    assert secret in carol  # admins see the whole story


@pytest.mark.slow
def test_a_signed_in_user_cannot_stop_someone_elses_running_run(password_app: Workspace) -> None:
    from ui import services

    ws = password_app
    dataset = create_demo_dataset(ws, per_class=8, size=32, creator="alice")
    manager = services.get_job_manager()
    run_id = manager.submit(quick(dataset.id, strategy="full", epochs=200), creator="alice")
    deadline = time.monotonic() + 60
    while manager.running() != run_id and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(PermissionDenied, match="Only alice or an admin can stop"):
        guarded_stop(manager, ws, User("bob"), run_id)
    assert manager.running() == run_id

    bob = signed_in("bob", "views/training.py", run=run_id)
    stop = bob.button(key="stop_run")
    assert stop.disabled and "Only alice or an admin" in stop.help
    assert manager.running() == run_id and ws.get_run(run_id).status == RunStatus.RUNNING

    alice = signed_in("alice", "views/training.py", run=run_id)
    assert alice.button(key="stop_run").disabled is False
    alice.button(key="stop_run").click().run()
    assert manager.wait(run_id, timeout=60) == RunStatus.STOPPED


# --------------------------------------------------------------------------- the real server
PAGE_PATHS = ["/training", "/runs", "/", "/data", "/setup", "/evaluation", "/predict"]


@pytest.mark.slow
@pytest.mark.e2e
@NEEDS_CHROMIUM
def test_the_real_server_renders_no_page_before_sign_in_and_enforces_xsrf_and_upload_limit(
    tmp_path: Path,
) -> None:
    from playwright.sync_api import sync_playwright

    root = tmp_path / "ws"
    ws = Workspace(root)
    carol = accounts.bootstrap_admin(ws, "carol", "s3cret-pass")
    accounts.create_account(ws, carol.user(), "bob", "s3cret-pass")
    ws.add_run(
        RunRecord(
            id="r-20260101-000000-a11c",
            name="SECRET-RUN-NAME",
            creator="alice",
            status=RunStatus.FAILED,
            error="boom",
        )  # fmt: skip
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_app(
        root,
        port,
        env={"STREAMLIT_SERVER_MAX_UPLOAD_SIZE": "1"},
    )
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            # The very first request to the fresh server goes straight to a page's URL.
            for path in PAGE_PATHS:
                context = browser.new_context()
                page = context.new_page()
                page.goto(base + path + "?run=r-20260101-000000-a11c")
                body = settle(page, "Your name")
                assert "SECRET-RUN-NAME" not in body and "boom" not in body, (path, body)
                assert not page.get_by_role("button", name="Re-run").count()
                if path == "/":
                    cookies = {c["name"]: c["value"] for c in context.cookies()}
                    assert cookies.get("_streamlit_xsrf"), cookies
                context.close()

            # XSRF: an upload without the token is refused before anything is read.
            request = urllib.request.Request(
                f"{base}/_stcore/upload_file/any-session/any-file", data=b"x" * 10, method="PUT"
            )
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=10)
            assert refused.value.code == 403

            # Signed in: an upload over the server's limit (1 MB here) is refused clearly.
            page = browser.new_page()
            page.goto(base + "/data")
            settle(page, "Your name")
            page.get_by_label("Your name").fill("bob")
            page.get_by_label("Password", exact=True).fill("s3cret-pass")
            page.get_by_role("button", name="Sign in").click()
            settle(page, "Signed in as bob")
            page.get_by_role("link", name="Data").click()  # in-app: a reload signs out
            settle(page, "Zip archive")
            big = tmp_path / "too-big.zip"
            big.write_bytes(b"PK\x03\x04" + bytes(2 * 1024 * 1024))
            page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(
                str(big)
            )
            deadline = time.monotonic() + 30
            while "or smaller" not in page.inner_text("body") and time.monotonic() < deadline:
                time.sleep(0.2)
            assert "must be 1.0MB or smaller" in page.inner_text("body")
            browser.close()
    finally:
        stop_app(server)
    assert ws.list_datasets() == [] and list(ws.datasets_dir.iterdir()) == []
    assert list(ws.tmp_dir.iterdir()) == []
