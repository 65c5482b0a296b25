"""Helpers for the adversarial tests that run in other processes (no tests here).

Spawned processes import this module, so it stays light: no torch, no test modules.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from finetune_core.jobs import procs, queue  # light: no torch
from finetune_core.store import RunRecord, RunStatus, Workspace

ROOT = Path(__file__).resolve().parents[2]


def claim_and_update(root: str, prefix: str, run_ids: list[str], n: int, out: Any) -> None:
    """Try to claim every queued run (QUEUED -> RUNNING) and update notes ``n`` times."""
    ws = Workspace(root)
    won = []
    try:
        for run_id in run_ids:
            if ws.transition_run(run_id, (RunStatus.QUEUED,), status=RunStatus.RUNNING,
                                 creator=prefix):  # fmt: skip
                won.append(run_id)
        for i in range(n):
            ws.add_run(RunRecord(id=f"{prefix}-{i}"))
            for run_id in run_ids:
                ws.update_run(run_id, notes=f"{prefix} {i}")
            ws.update_run(f"{prefix}-{i}", epochs_run=i + 1, name=f"{prefix} run {i}")
        out.put((prefix, won, None))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        out.put((prefix, won, f"{type(exc).__name__}: {exc}"))


def hold_write_lock(db: str, ready: Any, seconds: float) -> None:
    conn = sqlite3.connect(db, timeout=60, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("UPDATE runs SET notes='held' WHERE id='r-shared-0'")
    ready.set()
    time.sleep(seconds)
    conn.execute("COMMIT")
    conn.close()


# --------------------------------------------------------------------------- processes
def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(
    workspace: Path, port: int, env: dict[str, str] | None = None, timeout: float = 90.0
) -> subprocess.Popen:
    """``streamlit run app.py`` on ``port`` with FINETUNE_WORKSPACE=``workspace``; returns
    once /_stcore/health answers. The server's output goes to ``workspace/streamlit-*.log``."""
    import urllib.request

    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("FINETUNE_", "STREAMLIT_"))
    }
    environment.update({"FINETUNE_WORKSPACE": str(workspace), **(env or {})})
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
        "--server.port", str(port), "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    workspace.mkdir(parents=True, exist_ok=True)
    log = open(workspace / f"streamlit-{port}.log", "ab")  # noqa: SIM115 - closed by the child
    proc = subprocess.Popen(cmd, cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    proc.workspace = workspace  # type: ignore[attr-defined]  # stop_app ends its runs
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}: {server_log(workspace)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"streamlit did not start in {timeout:.0f} s: {server_log(workspace)}")


def server_log(workspace: Path) -> str:
    return "\n".join(
        p.read_text(errors="replace")[-3000:] for p in workspace.glob("streamlit-*.log")
    )


def end_workspace_runs(root: Path, timeout: float = 60.0) -> None:
    """Stop every run a test's server left training (runs outlive their server: they are
    the workspace's), wait for their processes to let go, SIGKILL what is left."""
    if not (Path(root) / "workspace.db").is_file():
        return
    ws = Workspace(root)
    held = queue.held(ws)
    for record in held:
        queue.request_stop(ws, record.id)
    deadline = time.monotonic() + timeout
    while queue.held(ws) and time.monotonic() < deadline:
        time.sleep(0.2)
    for record in held:
        if record.pid and procs.alive(record.pid, record.pid_started):
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, signal.SIGKILL)
    ws.close()


def stop_app(proc: subprocess.Popen) -> None:
    workspace = getattr(proc, "workspace", None)
    try:
        _stop(proc)
    finally:
        if workspace is not None:
            end_workspace_runs(workspace)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


CHROMIUM = Path("/usr/bin/chromium")
NEEDS_CHROMIUM = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Chromium is missing at /usr/bin/chromium (apt-get install -y chromium): "
    "the browser tests cannot run",
)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def settle(page: Any, text: str | None = None, timeout: float = 60.0, idle: bool = True) -> str:
    """Wait until the app shows ``text`` (when given) and, with ``idle``, no script run is
    in progress (a live page reruns its fragment every second: pass idle=False); return
    the page's text."""
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout * 1000)
    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        time.sleep(0.3)
        body = page.inner_text("body")
        running = idle and page.locator('[data-testid="stStatusWidget"]').count()
        drawn = page.locator('[data-testid="stMainBlockContainer"] h1').count()
        if drawn and not running and (text is None or text in body):
            return body
    raise TimeoutError(f"the page did not show {text!r} in {timeout:.0f} s: {body[:1500]}")


def _train_then_hang(root: str, config_json: str) -> None:
    """Submit a run in this process's own JobManager and keep training until killed."""
    from finetune_core.config import RunConfig
    from finetune_core.jobs.manager import JobManager

    manager = JobManager(Workspace(root))
    print(manager.submit(RunConfig.from_json(config_json), creator="crash-test"), flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    _train_then_hang(sys.argv[1], sys.argv[2])
