"""The server dies mid-training (SIGKILL, no clean-up at all) and comes back.

Runs train in their own processes, in their own sessions: a killed server leaves its run
training, and the restarted server shows it RUNNING until it ends SUCCEEDED with every
epoch once (a plain process holding the JobManager, and the real ``streamlit run app.py``
server in headless Chromium). When the run's own process dies too (the machine crashed),
its lease expires with no live process: INTERRUPTED, and it resumes by itself from its
last checkpoint to the accuracy of a run that was never interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from finetune_core.config import RunConfig
from finetune_core.data import create_demo_dataset
from finetune_core.jobs import procs
from finetune_core.jobs.manager import JobManager
from finetune_core.jobs.records import read_history
from finetune_core.models.checkpoint import load_checkpoint
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

HELPERS = Path(__file__).resolve().parents[1] / "helpers" / "processes.py"
EPOCHS = 8
# The resumed run replays the same data order, augmentation and LR schedule from the
# checkpointed model and optimizer, so it should land where the uninterrupted run does.
# Allowed: one validation image of difference, and 10% on the final training loss.
LOSS_TOLERANCE = 0.10


def config(dataset_id: str, **changes: Any) -> RunConfig:
    base = dict(
        dataset=dataset_id, name="crash me", model="resnet18", weights="none", strategy="full",
        epochs=EPOCHS, image_size=32, batch_size=16, lr=2e-3, augmentation="none",
        early_stopping=False, channels_last=False, mixed_precision="off", seed=3,
    )  # fmt: skip
    base.update(changes)
    return RunConfig(**base)


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list]:
    """The same config trained without interruption, once for both tests (the demo data,
    its split and the run are deterministic)."""
    ws = Workspace(tmp_path_factory.mktemp("baseline"))
    ds = create_demo_dataset(ws, per_class=20, size=32)
    manager = JobManager(ws)
    try:
        run_id = manager.submit(config(ds.id, name="never interrupted"))
        assert manager.wait(run_id, timeout=300) == RunStatus.SUCCEEDED
    finally:
        manager.shutdown()
    return ws.get_run(run_id), read_history(ws, run_id)


def assert_comparable(
    ws: Workspace, run_id: str, baseline: Any, history: list, *, was_resumed: bool = True
) -> None:
    """All epochs, once each, and the uninterrupted run's accuracy (one validation image of
    slack) and final training loss (LOSS_TOLERANCE)."""
    resumed, resumed_history = ws.get_run(run_id), read_history(ws, run_id)
    assert resumed.status == RunStatus.SUCCEEDED
    assert resumed.epochs_run == EPOCHS == len(resumed_history)
    assert [r["epoch"] for r in resumed_history] == list(range(1, EPOCHS + 1))
    one_image = 1 / len(ws_dataset(ws, resumed.dataset_id).rows("val")) + 1e-9
    assert abs(resumed.best_val_accuracy - baseline.best_val_accuracy) <= one_image
    final, reference = resumed_history[-1]["train_loss"], history[-1]["train_loss"]
    print(
        f"resumed run: best val accuracy {resumed.best_val_accuracy:.3f} (uninterrupted "
        f"{baseline.best_val_accuracy:.3f}), final train loss {final:.4f} ({reference:.4f})"
    )
    assert abs(final - reference) <= LOSS_TOLERANCE * reference + 1e-3, (final, reference)
    summary = json.loads((ws.run_dir(run_id) / "metrics.json").read_text())
    resumes = any(e.startswith("resumed after epoch ") for e in summary["events"])
    assert resumes == was_resumed, summary


def ws_dataset(ws: Workspace, dataset_id: str) -> Any:
    from finetune_core.data import load_dataset

    return load_dataset(ws, dataset_id)


def start_server_process(workspace: Workspace, config_json: str, **env: str) -> tuple[Any, str]:
    """A process holding a JobManager (a server without the web part); returns it and the
    id of the run it submitted."""
    proc = subprocess.Popen(
        [sys.executable, str(HELPERS), str(workspace.root), config_json],
        cwd=HELPERS.parents[2], stdout=subprocess.PIPE, text=True, env={**os.environ, **env},
    )  # fmt: skip
    return proc, proc.stdout.readline().strip()


@pytest.mark.slow
def test_a_killed_server_leaves_its_run_training_and_a_new_one_sees_it_finish(
    workspace: Workspace, baseline: tuple[Any, list]
) -> None:
    ds = create_demo_dataset(workspace, per_class=20, size=32)
    proc, run_id = start_server_process(workspace, config(ds.id).to_json())
    try:
        last = workspace.run_dir(run_id) / "checkpoints" / "last.pt"
        wait_for(last.exists, 120, "the first checkpoint")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    run = workspace.get_run(run_id)
    assert run.status == RunStatus.RUNNING and procs.alive(run.pid, run.pid_started)
    manager = JobManager(workspace)  # the restarted server
    try:
        seen = manager.snapshot(run_id).epoch
        wait_for(lambda: manager.snapshot(run_id).epoch > seen or not manager.is_active(run_id),
                 120, "the epochs to advance")  # fmt: skip
        assert manager.wait(run_id, timeout=300) == RunStatus.SUCCEEDED
    finally:
        manager.shutdown()
    summary = json.loads((workspace.run_dir(run_id) / "metrics.json").read_text())
    assert not any(e.startswith("resumed") for e in summary["events"])  # never interrupted
    assert_comparable(workspace, run_id, *baseline, was_resumed=False)


@pytest.mark.slow
def test_a_run_whose_process_dies_with_its_server_resumes_to_the_same_result(
    workspace: Workspace, baseline: tuple[Any, list]
) -> None:
    """The machine goes down: the server and the run's process are SIGKILLed. The next
    server finds the lease expired with no live process: INTERRUPTED, then it resumes by
    itself from the last checkpoint and lands where the uninterrupted run does."""
    ds = create_demo_dataset(workspace, per_class=20, size=32)
    proc, run_id = start_server_process(workspace, config(ds.id).to_json(),
                                        FINETUNE_LEASE_SECONDS="3")  # fmt: skip
    try:
        last = workspace.run_dir(run_id) / "checkpoints" / "last.pt"
        wait_for(last.exists, 120, "the first checkpoint")
        run_pid = workspace.get_run(run_id).pid
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    os.kill(run_pid, signal.SIGKILL)
    wait_for(lambda: not procs.alive(run_pid), 10, "the run process to end")
    killed_at = load_checkpoint(last)["epoch"]
    assert 1 <= killed_at < EPOCHS
    assert workspace.get_run(run_id).status == RunStatus.RUNNING  # nobody could say otherwise
    manager = JobManager(workspace)  # the restarted server
    try:
        wait_for(lambda: "resumes by itself" in workspace.get_run(run_id).error
                 or workspace.get_run(run_id).resume == 1, 30, "the interruption")  # fmt: skip
        assert manager.wait(run_id, timeout=300) == RunStatus.SUCCEEDED
    finally:
        manager.shutdown()
    summary = json.loads((workspace.run_dir(run_id) / "metrics.json").read_text())
    assert int(summary["events"][0].split()[-1]) >= killed_at  # "resumed after epoch N"
    assert_comparable(workspace, run_id, *baseline)


@pytest.mark.slow
@pytest.mark.e2e
@NEEDS_CHROMIUM
def test_the_streamlit_server_killed_mid_run_leaves_it_training_and_the_restart_shows_it(
    tmp_path: Path, baseline: tuple[Any, list]
) -> None:
    from playwright.sync_api import sync_playwright

    root = tmp_path / "ws"
    ws = Workspace(root)
    ds = create_demo_dataset(ws, per_class=20, size=32)
    queued = JobManager(ws, start=False)  # queued in the workspace: the server trains it
    run_id = queued.submit(config(ds.id))
    queued.shutdown()

    port = free_port()
    server = start_app(root, port)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page()
            url = f"http://127.0.0.1:{port}/training?run={run_id}"
            page.goto(url)  # the first session starts the server's scheduler
            last = ws.run_dir(run_id) / "checkpoints" / "last.pt"
            wait_for(last.exists, 120, "the first checkpoint")
            server.send_signal(signal.SIGKILL)
            server.wait(10)
            run = ws.get_run(run_id)
            assert run.status == RunStatus.RUNNING and procs.alive(run.pid, run.pid_started)
            at_kill = len(read_history(ws, run_id))

            server = start_app(root, port)  # the restarted server
            page.goto(url)
            body = settle(page, "Epoch ", idle=False)
            assert "INTERRUPTED" not in body
            wait_for(lambda: len(read_history(ws, run_id)) > at_kill, 120, "another epoch")
            wait_for(
                lambda: any(
                    text in page.inner_text("body")
                    for text in ("Finished: best validation accuracy", "Training finished;")
                ),
                300,
                "the page to show the finished run",
            )
            browser.close()
        wait_for(lambda: not ws.get_run(run_id).lease_owner, 120, "evaluation to end")
    finally:
        stop_app(server)
    assert_comparable(ws, run_id, *baseline, was_resumed=False)
