"""Helpers for the browser tests: start/stop the app, watch the console, wait for Streamlit.

The fixtures that use them live in ``conftest.py``; test modules import the helpers
from here (``from tests.helpers.e2e import wait_idle``).
"""

from __future__ import annotations

import contextlib
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

from tests.helpers.processes import end_workspace_runs

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
    (re.compile(r"/favicon\.ico$"), "the browser's own favicon request"),
    # Opened on a deep link (/data, /training ...), Streamlit's frontend looks for its
    # server one path level at a time: /data/_stcore/health and /data/_stcore/host-config
    # answer 404 before /_stcore/... answers. Only sub-paths match; the root never does.
    (
        re.compile(r"^https?://[^/]+/[^/?#]+/_stcore/(health|host-config)$"),
        "Streamlit looking for its base path on a deep link",
    ),
    # The page icon (:material/...:) is a favicon Streamlit loads from Google's font CDN;
    # the test machines have no internet, so the request fails. The app does not need it.
    (
        re.compile(r"^https://fonts\.gstatic\.com/s/i/short-term/release/materialsymbols"),
        "the Material page-icon favicon from Google's CDN (no internet here)",
    ),
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
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):  # no helper of it may be left behind
        os.killpg(group, signal.SIGKILL)
    if server.process.poll() is None:
        server.process.wait(timeout=10)
    end_workspace_runs(server.workspace)  # its runs' own processes are the workspace's


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
        # Failed requests log "Failed to load resource" with the resource as location.
        if msg.text.startswith("Failed to load resource") and any(
            p.search(where) for p, _why in HARMLESS_CONSOLE
        ):
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


# ----------------------------------------------------------------------------- the app's widgets
def main(page):
    """The page's main area (not the sidebar)."""
    return page.locator('[data-testid="stMain"]')


def go_to(page, title: str) -> None:
    """Click a page in the sidebar navigation, as a user would."""
    nav = page.locator('[data-testid="stSidebarNav"]')
    nav.get_by_role("link", name=re.compile(rf"\b{re.escape(title)}$", re.I)).first.click()
    page.wait_for_url(re.compile(rf"/{re.escape(title.lower())}(\?|$)"))
    wait_idle(page)


def click_button(page, name: str, timeout: float = 30.0, wait: bool = True) -> None:
    """Click the button whose label contains ``name`` (icons add their own words), then
    wait for the app to be idle (``wait=False`` where the next page stays busy, e.g. the
    live training view)."""
    button = main(page).get_by_role("button", name=re.compile(re.escape(name))).first
    button.click(timeout=timeout * 1000)
    if wait:
        wait_idle(page, timeout=max(60.0, timeout))


def widget(page, test_id: str, label: str):
    """The ``stXxx`` widget whose label is exactly ``label``."""
    label_el = page.locator(
        '[data-testid="stWidgetLabel"]', has_text=re.compile(rf"^\s*{re.escape(label)}\s*$")
    )
    return page.locator(f'[data-testid="{test_id}"]').filter(has=label_el).first


def select_option(page, label: str, option: str) -> None:
    """Pick ``option`` in the selectbox labelled ``label``: it is a combo box, so type to
    filter its list, then click the option."""
    box = main(page).get_by_role("combobox", name=label, exact=True).first
    box.fill("")
    box.press_sequentially(option)
    page.get_by_role("option", name=option, exact=True).first.click()
    wait_idle(page)


def selected_option(page, label: str) -> str:
    """The text a selectbox shows for its current value."""
    return main(page).get_by_role("combobox", name=label, exact=True).first.input_value()


def set_number(page, label: str, value: float | int) -> None:
    """Type a value into the number input labelled ``label`` and commit it (Enter)."""
    field_ = widget(page, "stNumberInput", label).locator("input")
    field_.fill(str(value))
    field_.press("Enter")
    wait_idle(page)
    assert float(field_.input_value()) == float(value), f"{label} did not take {value}"


def file_input(page, label: str):
    """The hidden ``input[type=file]`` of the file uploader labelled ``label``."""
    return widget(page, "stFileUploader", label).locator('input[type="file"]')


def metric_value(page, label: str) -> str:
    """The value shown on the ``st.metric`` card labelled exactly ``label``."""
    label_el = page.locator(
        '[data-testid="stMetricLabel"]', has_text=re.compile(rf"^\s*{re.escape(label)}\s*$")
    )
    card = main(page).locator('[data-testid="stMetric"]').filter(has=label_el).first
    return card.locator('[data-testid="stMetricValue"]').inner_text().strip()


def alerts(page, kind: str = "Error") -> list[str]:
    """Texts of the ``st.error``/``st.warning``/... boxes in the main area, shown or not
    (one inside a collapsed expander is in the page but hidden)."""
    boxes = main(page).locator(f'[data-testid="stAlertContent{kind}"]')
    return [(boxes.nth(i).text_content() or "").strip() for i in range(boxes.count())]


def full_page_screenshot(page, path: Path, max_height: int = 8000) -> None:
    """The whole page, not just the viewport: Streamlit scrolls inside its main area, so
    the viewport grows to the content for the shot (and shrinks back)."""
    size = page.viewport_size or VIEWPORT
    height = page.evaluate(
        """() => {
            const inner = document.querySelector('[data-testid="stMainBlockContainer"]');
            return Math.max(inner ? inner.scrollHeight + 160 : 0, document.body.scrollHeight);
        }"""
    )
    tall = max(size["height"], min(int(height), max_height))
    try:
        if tall > size["height"]:
            page.set_viewport_size({"width": size["width"], "height": tall})
            page.wait_for_timeout(400)  # charts redraw for the new size
        page.screenshot(path=str(path))
    finally:
        page.set_viewport_size(size)


def choose_segment(page, group: str, option: str) -> None:
    """Pick ``option`` of the segmented control (or radio group) labelled ``group``."""
    item = main(page).get_by_role("radiogroup", name=group).get_by_role("radio", name=option)
    item.first.click()
    wait_idle(page)
    assert item.first.get_attribute("aria-checked") == "true", f"{option} was not selected"


# ----------------------------------------------------------------------------- training page
# Points per named line of the training curves, e.g. {"train": 3, "val": 3, ...}.
CURVES_JS = """() => {
    const out = {};
    for (const gd of document.querySelectorAll('[data-testid="stMain"] .js-plotly-plot'))
        for (const t of gd.data || [])
            if (t.type === 'scatter' && t.name && t.x)
                out[t.name] = Math.max(out[t.name] || 0, t.x.length);
    return out;
}"""
# The live view in one go (the page redraws it every second, so no piecemeal reads).
LIVE_JS = """() => {
    const main = document.querySelector('[data-testid="stMain"]');
    const bar = main.querySelector('[data-testid="stProgress"]');
    const value = bar && bar.querySelector('[role="progressbar"]');
    return {
        text: bar ? bar.innerText.trim() : "",
        value: value ? value.getAttribute('aria-valuenow') : null,
        finished: main.innerText.includes('Finished: best validation accuracy'),
    };
}"""


def curve_lengths(page) -> dict[str, int]:
    """Points per named line of the training curves."""
    return page.evaluate(CURVES_JS)


def live_reading(page) -> dict[str, object]:
    """What the live training view shows right now: progress text and value (0-100),
    whether the run has finished, and the number of points on the curves."""
    reading = page.evaluate(LIVE_JS)
    reading["points"] = sum(curve_lengths(page).values())
    return reading


def run_id_from_url(url: str) -> str:
    match = re.search(r"[?&]run=([\w-]+)", url)
    assert match, f"no run id in {url}"
    return match.group(1)


def watch_training(page, timeout: float = 300.0) -> list[dict[str, object]]:
    """Read the live view every few tenths of a second until the run has finished."""
    readings = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reading = live_reading(page)
        readings.append(reading)
        if reading["finished"]:
            return readings
        time.sleep(0.3)
    raise AssertionError(f"training did not finish in {timeout} s; last reading {readings[-1]}")
