"""Issue 15 item 2: no upload byte is kept for a client that has not signed in.

The attack: a client opens the app's websocket (which gives it a live Streamlit session
id, signed in or not), takes the XSRF cookie from the first page load, and PUTs a large
body to ``/_stcore/upload_file/<session_id>/<file_id>``. Streamlit 1.67 answers 204 and
keeps the whole file in memory. With ``ui.upload_gate`` installed the route answers 403
before it reads the body, and the server's resident memory stays put.

The server runs a small script with exactly the lines ``app.py`` needs (the gate, the
real sign-in of ``ui.auth``); the same attack against ``app.py`` itself runs once
``app.py`` installs the gate (until then it is skipped with the reason).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit
import tomllib

from tests.helpers.processes import (
    CHROMIUM,
    CHROMIUM_ARGS,
    NEEDS_CHROMIUM,
    ROOT,
    free_port,
    server_log,
    stop_app,
)
from ui import upload_gate

PASSWORD = "s3cret-gate"
ATTACK_MB = 300  # the red team's size: three of these took the server from 79 MB to 981 MB
RSS_BOUND_MB = 40  # what a refused attempt may add to the server (imports, buffers)

GATE_APP = """
import streamlit as st

from ui import upload_gate
from ui.auth import require_login, signed_in

upload_gate.install()
if not signed_in():
    upload_gate.revoke_session()
user = require_login()
upload_gate.allow_session()
file = st.file_uploader("Any file", key="any_file")
if file is not None:
    st.write(f"received {file.size} bytes")
"""


# --------------------------------------------------------------------------- the server
def start_script(
    script: Path, workspace: Path, env: dict[str, str]
) -> tuple[subprocess.Popen, int]:
    """``streamlit run script`` from the repository (its .streamlit/config.toml) on a free
    port; returns once the health check answers."""
    port = free_port()
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("FINETUNE_", "STREAMLIT_"))
    }
    environment.update({"FINETUNE_WORKSPACE": str(workspace), "PYTHONPATH": str(ROOT), **env})
    workspace.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port),
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    with open(workspace / f"streamlit-{port}.log", "ab") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=environment, stdout=log, stderr=log)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}: {server_log(workspace)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
                return proc, port
        except OSError:
            time.sleep(0.3)
    stop_app(proc)
    raise RuntimeError(f"streamlit did not start: {server_log(workspace)}")


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MB, from /proc/<pid>/status."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


class RssSampler(threading.Thread):
    """The highest RSS of ``pid`` while running, sampled every 20 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.halt = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.02)

    def stop(self) -> float:
        self.halt.set()
        self.join(5)
        return max(self.peak, rss_mb(self.pid))


# --------------------------------------------------------------------------- the client
def xsrf_cookie(port: int) -> str:
    """The XSRF cookie the health check (the browser's first request) hands to anyone."""
    url = f"http://127.0.0.1:{port}/_stcore/health"
    with urllib.request.urlopen(url, timeout=10) as response:
        cookies = response.headers.get_all("Set-Cookie") or []
    for cookie in cookies:
        if cookie.startswith("_streamlit_xsrf="):
            return cookie.split(";", 1)[0].split("=", 1)[1]
    raise AssertionError(f"no XSRF cookie in {cookies}")


class AnonymousSession:
    """A websocket client that never signs in: it asks for the page and keeps the
    session alive; ``session_id`` is what the server gave it."""

    def __init__(self, port: int) -> None:
        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
        from websockets.sync.client import connect

        self.conn = connect(  # noqa: SIM115 - closed by close()
            f"ws://127.0.0.1:{port}/_stcore/stream", subprotocols=["streamlit"],
            max_size=None, open_timeout=60,
        )  # fmt: skip
        msg = BackMsg()
        msg.rerun_script.query_string = ""
        self.conn.send(msg.SerializeToString())
        self.session_id, self.text = "", []
        deadline = time.monotonic() + 60
        finished = False
        while time.monotonic() < deadline and not (self.session_id and finished):
            forward = ForwardMsg()
            forward.ParseFromString(self.conn.recv(timeout=60))
            kind = forward.WhichOneof("type")
            if kind == "new_session":
                self.session_id = forward.new_session.initialize.session_id
            elif kind == "script_finished":
                finished = True
            elif kind == "delta" and forward.delta.WhichOneof("type") == "new_element":
                self.text.append(str(forward.delta.new_element))
        assert self.session_id, "the server sent no session id"

    def close(self) -> None:
        self.conn.close()


def put_upload(
    port: int, session_id: str, token: str, mb: int, file_id: str = "file-1"
) -> tuple[int, int, bool]:
    """PUT an ``mb`` MB multipart file to the upload route over a raw socket and keep
    pushing whatever the server answers; return (HTTP status, bytes the connection took
    before it failed or ended, whether the server closed it within 10 s)."""
    boundary = "gateboundary7f3a"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="big.zip"\r\nContent-Type: application/zip\r\n\r\n'
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    request = (
        f"PUT /_stcore/upload_file/{session_id}/{file_id} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\nContent-Length: {len(head) + mb * 2**20 + len(tail)}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"X-Xsrftoken: {token}\r\nCookie: _streamlit_xsrf={token}\r\n\r\n"
    ).encode()
    response = bytearray()
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:

        def read() -> None:
            try:
                while chunk := sock.recv(65536):
                    response.extend(chunk)
            except OSError:
                pass

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        chunk = b"\0" * 2**20
        try:
            sock.sendall(request + head)
            for _ in range(mb):
                sock.sendall(chunk)
                sent += len(chunk)
            sock.sendall(tail)
        except OSError:
            pass  # the server closed the connection, or stopped reading for 10 s
        reader.join(10)
        closed = not reader.is_alive()
    match = re.match(rb"HTTP/1\.1 (\d{3})", bytes(response))
    assert match, f"no HTTP answer: {bytes(response)[:200]!r}"
    return int(match.group(1)), sent, closed


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def gate_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen, int]]:
    tmp = tmp_path_factory.mktemp("gate")
    script = tmp / "gate_app.py"
    script.write_text(GATE_APP)
    proc, port = start_script(script, tmp / "ws", {"FINETUNE_PASSWORD": PASSWORD})
    try:
        yield proc, port
    finally:
        stop_app(proc)


# --------------------------------------------------------------------------- tests
def attack(proc: subprocess.Popen, port: int, label: str) -> None:
    session = AnonymousSession(port)
    try:
        shown = "".join(session.text)
        assert "Finetune Dashboard" in shown and "Any file" not in shown, shown[:2000]
        token = xsrf_cookie(port)
        time.sleep(1.0)  # let the first script run's allocations settle
        before = rss_mb(proc.pid)
        sampler = RssSampler(proc.pid)
        sampler.start()
        statuses = [
            put_upload(port, session.session_id, token, ATTACK_MB, f"file-{i}") for i in range(3)
        ]
        peak = sampler.stop()
        time.sleep(0.5)
        after = rss_mb(proc.pid)
    finally:
        session.close()
    print(
        f"\n[{label}] 3 x {ATTACK_MB} MB before sign-in: answers {statuses}; server RSS "
        f"{before:.0f} MB before, {peak:.0f} MB peak, {after:.0f} MB after"
    )
    for status, sent, closed in statuses:
        assert status == 403, statuses
        # What the kernel's socket buffers take; the server itself reads nothing.
        assert sent < 32 * 2**20, f"the connection took {sent} bytes of the body"
        assert closed, "the server kept the refused connection open"
    assert peak - before < RSS_BOUND_MB, (before, peak, after)


@pytest.mark.slow
def test_an_upload_before_sign_in_is_refused_before_its_body_is_kept(
    gate_server: tuple[subprocess.Popen, int],
) -> None:
    proc, port = gate_server
    attack(proc, port, "gate")
    # A made-up session id still gets Streamlit's own answer, and the server is healthy.
    status, _, _ = put_upload(port, "no-such-session", xsrf_cookie(port), 1)
    assert status == 400
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=10) as r:
        assert r.status == 200


@pytest.mark.slow
def test_the_real_app_refuses_uploads_before_sign_in(tmp_path: Path) -> None:
    if "upload_gate.install()" not in (ROOT / "app.py").read_text():
        pytest.skip("app.py does not call ui.upload_gate.install() yet (docs/reliability.md)")
    proc, port = start_script(ROOT / "app.py", tmp_path / "ws", {"FINETUNE_PASSWORD": PASSWORD})
    try:
        attack(proc, port, "app.py")
    finally:
        stop_app(proc)


@pytest.mark.slow
def test_an_allowed_session_uploads_and_all_uploads_together_stay_in_the_budget(
    tmp_path: Path,
) -> None:
    """Open access lets every session through the sign-in gate, so the app allows it:
    its upload is kept (204, the server's memory grows by the file), and a second file
    that would take the uploads held past FINETUNE_UPLOAD_MEMORY_MB is refused (413)."""
    script = tmp_path / "gate_app.py"
    script.write_text(GATE_APP)
    proc, port = start_script(script, tmp_path / "ws", {upload_gate.MEMORY_ENV: "12"})
    try:
        session = AnonymousSession(port)
        assert "Any file" in "".join(session.text), "open access should show the page"
        token = xsrf_cookie(port)
        time.sleep(1.0)
        before = rss_mb(proc.pid)
        first = put_upload(port, session.session_id, token, 8, "file-a")
        held = rss_mb(proc.pid)
        second = put_upload(port, session.session_id, token, 8, "file-b")
        after = rss_mb(proc.pid)
        session.close()
    finally:
        stop_app(proc)
    print(
        f"\n[allowed] 8 MB: {first[0]}, RSS {before:.0f} -> {held:.0f} MB; a second 8 MB "
        f"over the 12 MB budget: {second[0]}, RSS {after:.0f} MB"
    )
    assert first[0] == 204 and first[1] == 8 * 2**20, first
    assert held - before > 6, (before, held)  # the file is kept in memory
    assert second[0] == 413, second


@pytest.mark.slow
@pytest.mark.e2e
@NEEDS_CHROMIUM
def test_a_browser_let_through_the_sign_in_gate_uploads_through_the_gate(tmp_path: Path) -> None:
    """The browser's own upload (its XSRF header, its session) passes the gate and the
    script reads every byte; the server holds the file until the browser removes it."""
    from playwright.sync_api import sync_playwright

    script = tmp_path / "gate_app.py"
    script.write_text(GATE_APP)
    data = bytes(range(256)) * (3 * 2**12)  # 3 MB
    upload = tmp_path / "three.zip"
    upload.write_bytes(data)
    proc, port = start_script(script, tmp_path / "ws", {})
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector('[data-testid="stFileUploader"]', timeout=60_000)
            before = rss_mb(proc.pid)
            page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(
                str(upload)
            )
            page.get_by_text(f"received {len(data)} bytes").wait_for(timeout=60_000)
            held = rss_mb(proc.pid)
            browser.close()
    finally:
        stop_app(proc)
    print(f"\n[browser] 3 MB upload through the gate: RSS {before:.0f} -> {held:.0f} MB")


# --------------------------------------------------------------------------- the rule
def test_the_decision_follows_the_registry_and_forgets_revoked_sessions() -> None:
    sid = "sess-decision-1"
    assert upload_gate.decide(sid, active=True) == 403
    assert upload_gate.decide(sid, active=False) is None  # Streamlit answers 400 itself
    upload_gate.allow_session(sid)
    try:
        assert upload_gate.decide(sid, active=True) is None
        assert sid in upload_gate.allowed_sessions()
    finally:
        upload_gate.revoke_session(sid)
    assert upload_gate.decide(sid, active=True) == 403
    assert sid not in upload_gate.allowed_sessions()


def test_the_registry_is_safe_under_threads() -> None:
    ids = [f"sess-thread-{i}" for i in range(400)]

    def churn(chunk: list[str]) -> None:
        for sid in chunk:
            upload_gate.allow_session(sid)
            upload_gate.decide(sid, active=True)
        for sid in chunk[::2]:
            upload_gate.revoke_session(sid)

    threads = [threading.Thread(target=churn, args=(ids[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    kept = {sid for sid in ids if sid in upload_gate.allowed_sessions()}
    assert kept == {sid for i in range(8) for sid in ids[i::8][1::2]}
    for sid in kept:
        upload_gate.revoke_session(sid)
    assert not kept & upload_gate.allowed_sessions()


def test_install_does_nothing_without_a_server() -> None:
    assert upload_gate.install() is False


@pytest.mark.parametrize(
    ("raw", "mb"), [("", None), ("512", 512), ("0", 1), ("lots", None), ("-5", 1)]
)
def test_the_upload_memory_budget_is_read_from_the_environment(
    raw: str, mb: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(upload_gate.MEMORY_ENV, raw)
    expected = 2 * streamlit.config.get_option("server.maxUploadSize") if mb is None else mb
    assert upload_gate.memory_budget_bytes() == expected * 2**20


def test_the_shipped_upload_limit_is_bounded_and_the_budget_holds_two_files() -> None:
    server = tomllib.loads((ROOT / ".streamlit/config.toml").read_text())["server"]
    assert server["maxUploadSize"] <= 1024, "every uploaded byte is held in memory"
    assert streamlit.config.get_option("server.maxUploadSize") == server["maxUploadSize"]
    assert upload_gate.default_memory_mb() == 2 * server["maxUploadSize"]


def test_the_upload_route_is_the_only_caller_of_the_wrapped_check() -> None:
    """The gate wraps ``Runtime.is_active_session``: it must stay the upload route's
    first look at a request, before the body, and nothing else may call it (a Streamlit
    upgrade that changes either must fail here, not open the route)."""
    package = Path(streamlit.__file__).parent
    callers = sorted(
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if re.search(r"(?<!_session_mgr)\.is_active_session\(", p.read_text(errors="replace"))
    )
    assert callers == ["web/server/starlette/starlette_routes.py"], callers
    routes = (package / "web/server/starlette/starlette_routes.py").read_text()
    put = routes[routes.index("async def _upload_put(") :]
    put = put[: put.index("async def _upload_delete(")]
    assert put.index("runtime.is_active_session(session_id)") < put.index("request.stream()")
