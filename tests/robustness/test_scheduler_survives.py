"""Issue 15 item 4: deleting a run during its evaluation killed v1's job worker, and every
later run stayed QUEUED until a restart. Now the core refuses to delete a run its process
still holds, and no exception in a post-run step or a store call stops the scheduler."""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

import pytest

from finetune_core.config import RunConfig
from finetune_core.data import create_demo_dataset
from finetune_core.jobs import queue
from finetune_core.jobs.manager import JobManager
from finetune_core.store import RunStatus, StoreError, Workspace


def quick(dataset_id: str) -> RunConfig:
    return RunConfig(dataset=dataset_id, model="resnet18", weights="none", strategy="probe",
                     epochs=1, image_size=32, batch_size=16, lr=1e-2, channels_last=False,
                     mixed_precision="off", num_threads=1)  # fmt: skip


@pytest.fixture
def demo_ws(workspace: Workspace) -> tuple[Workspace, Any]:
    return workspace, create_demo_dataset(workspace, per_class=8, size=32)


DELETE_ATTEMPTS: list[str] = []


def delete_during_evaluation(workspace: Workspace, run_id: str) -> None:
    """A post-run step during which a user clicks Delete on the run (v1's reproduction)."""
    try:
        workspace.delete_run(run_id)
    except StoreError as exc:
        DELETE_ATTEMPTS.append(str(exc))
        raise


@pytest.mark.slow
def test_deleting_a_run_during_its_evaluation_is_refused_and_the_queue_goes_on(demo_ws) -> None:
    ws, ds = demo_ws
    DELETE_ATTEMPTS.clear()
    manager = JobManager(ws, post_run=[delete_during_evaluation], isolation="thread")
    try:
        first = manager.submit(quick(ds.id))
        second = manager.submit(quick(ds.id))
        assert manager.wait(first, timeout=120) == RunStatus.SUCCEEDED
        assert DELETE_ATTEMPTS and "still being evaluated" in DELETE_ATTEMPTS[0]
        assert ws.get_run(first) is not None  # refused in the core: the run and model stay
        assert "post-run step failed" in ws.get_run(first).error
        assert manager.wait(second, timeout=120) == RunStatus.SUCCEEDED  # the queue moved
        ws.delete_run(first)  # once its process let go, it can be deleted
        assert ws.get_run(first) is None
    finally:
        manager.shutdown()


@pytest.mark.slow
def test_a_failing_store_call_does_not_stop_the_scheduler(demo_ws, monkeypatch) -> None:
    """The class: any exception in a scheduler tick (here the database failing the claim,
    twice) is logged and the next tick carries on."""
    ws, ds = demo_ws
    real_claim, failures = queue.claim, {"left": 2}
    lock = threading.Lock()

    def flaky_claim(*args: Any, **kwargs: Any) -> Any:
        with lock:
            if failures["left"] > 0:
                failures["left"] -= 1
                raise sqlite3.OperationalError("disk I/O error (injected)")
        return real_claim(*args, **kwargs)

    monkeypatch.setattr(queue, "claim", flaky_claim)
    manager = JobManager(ws, isolation="thread")
    try:
        run_id = manager.submit(quick(ds.id))
        assert manager.wait(run_id, timeout=120) == RunStatus.SUCCEEDED
        assert failures["left"] == 0
        assert manager.scheduler.is_alive()
    finally:
        manager.shutdown()
