"""Two real dashboard servers and the CLI on one workspace: one queue, each run once.

Runs are submitted from each server's Training page (a click in Chromium) and with
``runs submit``; every run trains exactly once (one claim, one process, each epoch
once) and none is marked INTERRUPTED while its process lives. Then run processes are
killed (SIGKILL, and SIGSEGV as a segfault delivers it): each run is FAILED with its
signal, both servers still answer their health check, and the next queued run starts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from finetune_core import runs
from finetune_core.config import RunConfig
from finetune_core.data import create_demo_dataset
from finetune_core.runs import RunPaths
from finetune_core.store import RunRecord, RunStatus, Workspace
from tests.helpers.processes import (
    CHROMIUM,
    CHROMIUM_ARGS,
    NEEDS_CHROMIUM,
    ROOT,
    free_port,
    settle,
    start_app,
    stop_app,
)

TEMPLATE = "r-20260101-000000-0001"


def tiny(dataset_id: str, **changes: Any) -> RunConfig:
    base: dict[str, Any] = dict(
        dataset=dataset_id, name="tiny", model="resnet18", weights="none", strategy="probe",
        epochs=2, image_size=32, batch_size=16, lr=1e-2, channels_last=False,
        mixed_precision="off", num_threads=1,
    )  # fmt: skip
    base.update(changes)
    return RunConfig(**base)


def cli(root: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "finetune_core", "--workspace", str(root), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def submit(root: Path, config: RunConfig, name: str) -> str:
    path = root / f"{name}.json"
    config.replace(name=name).save(path)
    return cli(root, "runs", "submit", "--config", str(path))


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def healthy(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5) as reply:
        return reply.status == 200


def claims(ws: Workspace, run_id: str) -> int:
    return sum("claimed for" in line for line in runs.read_log(RunPaths(ws.run_dir(run_id))))


@pytest.mark.slow
@pytest.mark.e2e
@NEEDS_CHROMIUM
def test_two_servers_and_the_cli_share_one_queue_and_survive_killed_runs(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    root = tmp_path / "ws"
    ws = Workspace(root)
    ds = create_demo_dataset(ws, per_class=8, size=32)
    ws.add_run(RunRecord(id=TEMPLATE, name="template", dataset_id=ds.id, status=RunStatus.STOPPED,
                         config=tiny(ds.id).to_dict(), creator="alice"))  # fmt: skip
    ports = [free_port(), free_port()]
    servers = [start_app(root, port) for port in ports]
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            for port in ports:  # each server: a re-run from its Training page
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{port}/training?run={TEMPLATE}")
                settle(page, "Re-run with the same settings")
                before = {r.id for r in ws.list_runs()}
                page.get_by_role("button", name="Re-run with the same settings").click()
                wait_for(lambda b=before: {r.id for r in ws.list_runs()} - b, 30, "the re-run")
            from_cli = [submit(root, tiny(ds.id), f"cli-{i}") for i in range(2)]
            submitted = [r.id for r in ws.list_runs() if r.id != TEMPLATE]
            assert len(submitted) == 4 and set(from_cli) <= set(submitted)

            def all_done() -> bool:
                return all(ws.get_run(r).status not in RunStatus.ACTIVE
                           and not ws.get_run(r).lease_owner for r in submitted)  # fmt: skip

            wait_for(all_done, 300, "the four runs")
            for run_id in submitted:
                record = ws.get_run(run_id)
                assert record.status == RunStatus.SUCCEEDED, (run_id, record.error)
                assert claims(ws, run_id) == 1, runs.read_log(RunPaths(ws.run_dir(run_id)))
                epochs = [r["epoch"] for r in runs.read_history(RunPaths(ws.run_dir(run_id)))]
                assert epochs == [1, 2]
                log = "\n".join(runs.read_log(RunPaths(ws.run_dir(run_id))))
                assert "ended without a result" not in log and "INTERRUPTED" not in log

            # run processes die: FAILED with the signal, the servers stay up, the queue goes on
            long = tiny(ds.id, strategy="full", epochs=200, early_stopping=False)
            victims = [submit(root, long, f"victim-{s.name}") for s in (signal.SIGKILL,
                                                                       signal.SIGSEGV)]  # fmt: skip
            last = submit(root, tiny(ds.id), "after")
            for victim, sig in zip(victims, (signal.SIGKILL, signal.SIGSEGV), strict=True):
                pid = wait_for(lambda v=victim: ws.get_run(v).pid, 120, "a run process")
                wait_for(lambda v=victim: runs.read_history(RunPaths(ws.run_dir(v))), 120,
                         "its first epoch")  # fmt: skip
                os.kill(pid, sig)
                wait_for(lambda v=victim: ws.get_run(v).status == RunStatus.FAILED, 60,
                         "the run to fail")  # fmt: skip
                assert f"killed by signal {sig.name}" in ws.get_run(victim).error
                assert all(healthy(port) for port in ports)
            wait_for(lambda: ws.get_run(last).status == RunStatus.SUCCEEDED, 180, "the next run")
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{ports[1]}/training?run={victims[1]}")
            body = settle(page, "The run failed")
            assert "killed by signal SIGSEGV" in body
            browser.close()
    finally:
        for server in servers:
            stop_app(server)
