"""Helpers for the browser tests: start/stop the app, watch the console, wait for Streamlit.

The fixtures that use them live in ``conftest.py``; test modules import the helpers
from here (``from e2e_helpers import wait_idle``).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "e2e"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 900}
START_TIMEOUT_S = 90.0
STATUS_WIDGET = '[data-testid="stStatusWidget"]'

# Browser console messages that are not the app's fault: (pattern, why it is harmless).
# Anything else logged at "error" level, and every uncaught page error, fails the test.
HARMLESS_CONSOLE: list[tuple[re.Pattern[str], str]] = [
    # Chromium asks for /favicon.ico on its own (e.g. for the report opened from file://).
    (re.compile(r"favicon\.ico"), "the browser's own favicon request"),
]


# ----------------------------------------------------------------------------- server
@dataclass
class AppServer:
    """A running ``streamlit run app.py``."""

    url: str
    workspace: Path
    log: Path
    process: subprocess.Popen = field(repr=False)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.read().decode().strip() == "ok"
    except OSError:
        return False


def start_server(workspace: Path, extra_env: dict[str, str] | None = None) -> AppServer:
    """Start the app from the repository root on a free port; return once it is healthy."""
    workspace.mkdir(parents=True, exist_ok=True)
    # A developer's own FINETUNE_* settings (a password, admins ...) must not leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINETUNE_")}
    env.update({"FINETUNE_WORKSPACE": str(workspace), "PYTHONUNBUFFERED": "1"})
    env.update(extra_env or {})
    port = free_port()
    cmd = [
        sys.executable, "-m", "streamlit", "run", "app.py",
        "--server.port", str(port), "--server.address", "127.0.0.1",
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    log = workspace.parent / f"{workspace.name}-streamlit.log"
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = AppServer(f"http://127.0.0.1:{port}", workspace, log, process)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stop_server(server)
            raise RuntimeError(f"streamlit exited with {process.returncode}:\n{server.log_tail()}")
        if _healthy(server.url):
            return server
        time.sleep(0.5)
    stop_server(server)
    raise RuntimeError(
        f"streamlit did not answer within {START_TIMEOUT_S:.0f} s:\n{server.log_tail()}"
    )


def stop_server(server: AppServer) -> None:
    """Terminate the server's process group (its own session: nothing else is in it)."""
    group = server.process.pid
    try:
        os.killpg(group, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    try:  # the leader has gone; make sure no helper of it is left behind
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if server.process.poll() is None:
        server.process.wait(timeout=10)


# ----------------------------------------------------------------------------- console
@dataclass
class ConsoleLog:
    """Console errors and uncaught page errors of every page it watches."""

    errors: list[str] = field(default_factory=list)

    def watch(self, page) -> None:
        page.on("console", lambda msg: self._console(page, msg))
        page.on("pageerror", lambda exc: self.errors.append(f"{page.url}: page error: {exc}"))

    def _console(self, page, msg) -> None:
        if msg.type != "error":
            return
        where = (msg.location or {}).get("url", "")
        if any(p.search(msg.text) or p.search(where) for p, _why in HARMLESS_CONSOLE):
            return
        self.errors.append(f"{page.url}: console error: {msg.text} (at {where or '?'})")

    def assert_clean(self) -> None:
        assert not self.errors, "The browser reported errors:\n" + "\n".join(self.errors)


# ----------------------------------------------------------------------------- waiting
def wait_idle(page, timeout: float = 60.0, quiet: float = 0.7) -> None:
    """Wait until Streamlit finished its script run: the "Running..." status widget has
    stayed away for ``quiet`` seconds (live pages rerun a fragment now and then)."""
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout * 1000)
    deadline = time.monotonic() + timeout
    calm_since: float | None = None
    while time.monotonic() < deadline:
        if page.locator(STATUS_WIDGET).count() == 0:
            calm_since = calm_since or time.monotonic()
            if time.monotonic() - calm_since >= quiet:
                return
        else:
            calm_since = None
        time.sleep(0.1)
    raise AssertionError(f"The app was still running after {timeout:.0f} s on {page.url}")


def wait_text(page, text: str | re.Pattern[str], timeout: float = 30.0):
    """The first visible element showing ``text`` (a substring or a regex)."""
    locator = page.get_by_text(text).first
    locator.wait_for(state="visible", timeout=timeout * 1000)
    return locator


def open_app(page, server: AppServer, path: str = "/", timeout: float = 60.0) -> None:
    """Go to ``path`` of the app and wait for its script run to finish."""
    page.goto(server.url + path)
    wait_idle(page, timeout=timeout)
