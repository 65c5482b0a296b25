"""Faults injected into real runs: exceptions in the worker, NaN/Inf losses, real CPU
allocator failures, disk full and SIGKILL during checkpoint writes, SQLite under
threads and processes at once, and two users starting runs at the same moment.

Faults are injected with monkeypatch (a forward pass that allocates an impossible
tensor, a torch.save that fails half-way); everything else is real: the demo
dataset, resnet18 on CPU, the JobManager's worker thread and SQLite in WAL mode.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from finetune_core.config import RunConfig
from finetune_core.data import create_demo_dataset
from finetune_core.fsutil import read_json
from finetune_core.jobs.manager import JobManager
from finetune_core.jobs.records import read_history
from finetune_core.models import classifier as models
from finetune_core.models.checkpoint import load_checkpoint, save_checkpoint
from finetune_core.store import RunRecord, RunStatus, StoreError, Workspace
from finetune_core.training import setup
from finetune_core.training.events import Callback
from tests.helpers.processes import claim_and_update, hold_write_lock

ROOT = Path(__file__).resolve().parents[2]


def quick(dataset_id: str, **changes: Any) -> RunConfig:
    base = dict(
        dataset=dataset_id, model="resnet18", weights="none", strategy="full", epochs=2,
        image_size=32, batch_size=16, lr=2e-3, channels_last=False, mixed_precision="off",
        early_stopping=False, augmentation="none",
    )  # fmt: skip
    base.update(changes)
    return RunConfig(**base)


@pytest.fixture
def demo_ws(workspace: Workspace) -> tuple[Workspace, Any]:
    return workspace, create_demo_dataset(workspace, per_class=8, size=32)


@pytest.fixture
def manager(demo_ws):
    # The faults are injected into this process's trainer (monkeypatch), so the claimed
    # runs train in a thread here; the queue and leases are the real ones (run processes
    # dying: tests/unit/jobs/test_queue.py).
    manager = JobManager(demo_ws[0], isolation="thread")
    yield manager
    manager.shutdown()


def wait_until(condition: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.02)


# --------------------------------------------------------------------------- 6. worker faults
@pytest.mark.slow
def test_a_failing_post_run_step_keeps_the_model_and_the_queue_moves(demo_ws) -> None:
    ws, ds = demo_ws

    def broken_report(workspace: Workspace, run_id: str) -> None:
        raise RuntimeError("report writer exploded (injected)")

    manager = JobManager(ws, post_run=[broken_report], isolation="thread")  # injected here
    try:
        first = manager.submit(quick(ds.id, strategy="probe"))
        second = manager.submit(quick(ds.id, strategy="probe"))
        assert manager.wait(first, timeout=120) == RunStatus.SUCCEEDED
        assert manager.wait(second, timeout=120) == RunStatus.SUCCEEDED
        run = ws.get_run(first)
        assert run.error == "Trained, but a post-run step failed: report writer exploded (injected)"
        assert run.finished_at and run.best_epoch is not None
        assert load_checkpoint(ws.run_dir(first) / "checkpoints" / "best.pt")["epoch"] >= 1
    finally:
        manager.shutdown()


@pytest.mark.slow
def test_a_dataset_deleted_while_its_run_waits_fails_that_run_only(demo_ws, manager) -> None:
    ws, ds = demo_ws
    other = create_demo_dataset(ws, per_class=6, size=32, classes=2)
    blocker = manager.submit(quick(ds.id, epochs=200))
    doomed = manager.submit(quick(other.id))
    after = manager.submit(quick(ds.id, strategy="probe"))
    wait_until(lambda: manager.running() == blocker)
    ws.delete_dataset(other.id)
    manager.stop(blocker)
    assert manager.wait(doomed, timeout=60) == RunStatus.FAILED
    assert "No dataset" in ws.get_run(doomed).error
    assert manager.wait(after, timeout=120) == RunStatus.SUCCEEDED


# --------------------------------------------------------------------------- 7. NaN, Inf, OOM
class _PoisonFrom(Callback):
    """Sets ``flag["on"]`` from epoch ``epoch`` on (the forward pass below reads it)."""

    def __init__(self, flag: dict[str, bool], epoch: int) -> None:
        self.flag, self.epoch = flag, epoch

    def before_epoch(self, trainer: Any) -> None:
        self.flag["on"] = trainer.epoch >= self.epoch


@pytest.mark.parametrize("kind", ["nan", "inf"])
@pytest.mark.slow
def test_a_non_finite_loss_fails_the_run_and_keeps_the_last_good_checkpoint(
    demo_ws, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    ws, ds = demo_ws
    flag = {"on": False}
    original = models.Classifier.forward

    def forward(self, x):
        out = original(self, x)
        if not (self.training and flag["on"]):
            return out
        if kind == "nan":
            return out * float("nan")
        poisoned = torch.full_like(out, -3e38)
        poisoned[:, 0] = 3e38  # cross-entropy overflows to +inf for the other targets
        return poisoned + 0 * out

    monkeypatch.setattr(models.Classifier, "forward", forward)
    manager = JobManager(ws, extra_callbacks=lambda run_id: [_PoisonFrom(flag, 2)])
    try:
        run_id = manager.submit(quick(ds.id, epochs=3))
        assert manager.wait(run_id, timeout=120) == RunStatus.FAILED
    finally:
        manager.shutdown()
    run = ws.get_run(run_id)
    assert f"The loss became {kind} at epoch 2, step 1" in run.error
    assert "Lower the learning rate" in run.error and "TrainingDiverged" in run.traceback
    assert run.epochs_run == 1 and run.best_epoch == 1
    assert load_checkpoint(ws.run_dir(run_id) / "checkpoints" / "best.pt")["epoch"] == 1
    assert load_checkpoint(ws.run_dir(run_id) / "checkpoints" / "last.pt")["epoch"] == 1


def _allocate_impossibly(kind: str) -> None:
    if kind == "torch CPU allocator":
        torch.empty(2**50, dtype=torch.uint8)  # 1 PiB: the real allocator error
    else:
        np.empty(2**50, dtype=np.uint8)  # numpy raises MemoryError


@pytest.mark.parametrize("kind", ["torch CPU allocator", "numpy MemoryError"])
@pytest.mark.slow
def test_a_real_cpu_out_of_memory_halves_the_batch_and_the_run_succeeds(
    demo_ws, manager, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    ws, ds = demo_ws
    original = models.Classifier.forward

    def forward(self, x):
        if self.training and x.shape[0] > 4:
            _allocate_impossibly(kind)
        return original(self, x)

    monkeypatch.setattr(models.Classifier, "forward", forward)
    run_id = manager.submit(quick(ds.id, batch_size=16))
    assert manager.wait(run_id, timeout=120) == RunStatus.SUCCEEDED, ws.get_run(run_id).error
    assert [r["batch_size"] for r in manager.snapshot(run_id).history] == [4, 4]
    events = read_json(ws.run_dir(run_id) / "metrics.json")["events"]
    assert events[:2] == [
        "out of memory at batch size 16: retrying the epoch at 8",
        "out of memory at batch size 8: retrying the epoch at 4",
    ]


@pytest.mark.slow
def test_out_of_memory_at_the_smallest_batch_fails_with_advice_and_the_queue_moves(
    demo_ws, manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws, ds = demo_ws
    original = models.Classifier.forward

    def forward(self, x):
        if self.training and getattr(self, "_doomed", False):
            torch.empty(2**50, dtype=torch.uint8)
        return original(self, x)

    monkeypatch.setattr(models.Classifier, "forward", forward)
    original_build = models.build_classifier

    def build(*args, **kwargs):
        model, report = original_build(*args, **kwargs)
        model._doomed = args[1] == 3  # only the first run's model (3 classes) runs out
        return model, report

    monkeypatch.setattr(setup, "build_classifier", build)  # the name the trainer's setup calls
    other = create_demo_dataset(ws, per_class=6, size=32, classes=2)
    doomed = manager.submit(quick(ds.id, batch_size=8))
    fine = manager.submit(quick(other.id, strategy="probe"))
    assert manager.wait(doomed, timeout=120) == RunStatus.FAILED
    assert ws.get_run(doomed).error == (
        "Out of memory even at batch size 2; choose a smaller model or image size (32px)."
    )
    assert manager.wait(fine, timeout=120) == RunStatus.SUCCEEDED


# --------------------------------------------------------------------------- 9. checkpoint writes
@pytest.mark.slow
def test_disk_full_during_a_checkpoint_write_fails_the_run_and_keeps_the_previous_one(
    demo_ws, manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws, ds = demo_ws
    original = torch.save
    writes = {"last": 0}

    def save(obj, handle, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("optimizer_state") is not None:  # last.pt
            writes["last"] += 1
            if writes["last"] == 2:
                handle.write(b"PK\x03\x04 half a checkpoint")
                raise OSError(28, "No space left on device")
        return original(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    run_id = manager.submit(quick(ds.id, epochs=3))
    assert manager.wait(run_id, timeout=120) == RunStatus.FAILED
    run = ws.get_run(run_id)
    assert run.error.startswith("The disk holding the workspace is full (No space left on device).")
    assert "resume the run" in run.error
    assert "OSError" in run.traceback
    ckpts = ws.run_dir(run_id) / "checkpoints"
    assert load_checkpoint(ckpts / "last.pt")["epoch"] == 1
    assert load_checkpoint(ckpts / "best.pt")["epoch"] in (1, 2)
    assert not [p.name for p in ckpts.iterdir() if p.name.endswith(".tmp")]

    # space freed: the failed run resumes from its last saved epoch and finishes
    monkeypatch.setattr(torch, "save", original)
    assert manager.can_resume(run)
    manager.resume(run_id)
    assert manager.wait(run_id, timeout=120) == RunStatus.SUCCEEDED
    done = ws.get_run(run_id)
    assert done.epochs_run == 3 and done.error == ""
    assert [row["epoch"] for row in read_history(ws, run_id)] == [1, 2, 3]


KILL_MID_WRITE = textwrap.dedent(
    """
    import sys, time, torch
    from pathlib import Path
    from finetune_core.models.checkpoint import save_checkpoint

    last = Path(sys.argv[1])
    save_checkpoint(last, {"model_state": {"w": torch.ones(3)}, "epoch": 1})
    real_save = torch.save

    def slow_save(obj, handle, *args, **kwargs):
        handle.write(b"PK\\x03\\x04" + bytes(100_000))  # half a checkpoint on disk
        handle.flush()
        print("WRITING", flush=True)
        time.sleep(60)

    torch.save = slow_save
    save_checkpoint(last, {"model_state": {"w": torch.zeros(3)}, "epoch": 2})
    """
)


def test_sigkill_during_a_checkpoint_write_leaves_the_previous_one_loadable(
    tmp_path: Path,
) -> None:
    last = tmp_path / "checkpoints" / "last.pt"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_MID_WRITE, str(last)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "WRITING"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    ckpt = load_checkpoint(last)
    assert ckpt["epoch"] == 1 and ckpt["model_state"]["w"].tolist() == [1.0, 1.0, 1.0]
    leftovers = [p for p in last.parent.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1  # what the killed process was writing
    save_checkpoint(last, {"model_state": {"w": torch.zeros(3)}, "epoch": 2})
    assert load_checkpoint(last)["epoch"] == 2
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.pt"]  # leftover removed


# --------------------------------------------------------------------------- 10. SQLite
@pytest.mark.slow
def test_threads_and_processes_at_once_lose_nothing_and_never_say_locked(
    workspace: Workspace,
) -> None:
    shared = [f"r-shared-{i}" for i in range(6)]
    for run_id in shared:
        workspace.add_run(RunRecord(id=run_id, status=RunStatus.QUEUED))
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    ready = ctx.Event()
    holder = ctx.Process(target=hold_write_lock, args=(str(workspace.db_path), ready, 2.0))
    holder.start()
    assert ready.wait(30)  # another process holds the write lock for 2 s while we start
    procs = [
        ctx.Process(target=claim_and_update, args=(str(workspace.root), f"p{k}", shared, 15, out))
        for k in range(2)
    ]
    threads = [
        threading.Thread(target=claim_and_update, args=(str(workspace.root), f"t{k}", shared, 15, out))
        for k in range(4)
    ]  # fmt: skip
    started = time.monotonic()
    for worker in procs + threads:
        worker.start()
    results = [out.get(timeout=120) for _ in range(len(procs) + len(threads))]
    for worker in threads:
        worker.join(30)
    for worker in [*procs, holder]:
        worker.join(30)
    assert [p.exitcode for p in [*procs, holder]] == [0, 0, 0]
    assert time.monotonic() - started < 60
    errors = {prefix: err for prefix, _, err in results if err}
    assert errors == {}
    winners = [run_id for _, won, _ in results for run_id in won]
    assert sorted(winners) == sorted(shared)  # each queued run claimed exactly once
    for run_id in shared:
        run = workspace.get_run(run_id)
        assert run.status == RunStatus.RUNNING and run.notes.endswith(" 14")
    for prefix, _, _ in results:
        rows = [workspace.get_run(f"{prefix}-{i}") for i in range(15)]
        assert [(r.epochs_run, r.name) for r in rows] == [
            (i + 1, f"{prefix} run {i}") for i in range(15)
        ]
    assert len(workspace.list_runs()) == 6 + 6 * 15


def test_a_write_lock_held_past_every_retry_is_a_clear_message(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's own retries end in a readable StoreError, never sqlite's "locked"."""
    import finetune_core.store as store

    workspace.add_run(RunRecord(id="r-1"))
    naps: list[float] = []
    monkeypatch.setattr(store.time, "sleep", naps.append)  # the retries' back-off, not waited
    blocker = sqlite3.connect(workspace.db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        conn = workspace._conn()
        conn.execute("PRAGMA busy_timeout=10")  # shrink the wait so the test is quick
        with pytest.raises(StoreError, match="stayed busy; try again in a moment"):
            workspace.update_run("r-1", notes="x")
        assert len(naps) == 20  # it retried before giving up
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        workspace.close()
    workspace.update_run("r-1", notes="after")
    assert workspace.get_run("r-1").notes == "after"


# --------------------------------------------------------------------------- 12. two users
@pytest.mark.slow
def test_two_users_starting_at_the_same_moment_queue_one_behind_the_other(demo_ws, manager) -> None:
    ws, ds = demo_ws
    barrier = threading.Barrier(2)
    ids: dict[str, str] = {}

    def start(user: str) -> None:
        barrier.wait()
        ids[user] = manager.submit(quick(ds.id, epochs=200, name=f"{user}'s run"), creator=user)

    threads = [threading.Thread(target=start, args=(u,)) for u in ("alice", "bob")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert set(ids) == {"alice", "bob"}
    wait_until(lambda: manager.running() in ids.values())
    first = manager.running()
    second = next(i for i in ids.values() if i != first)
    assert manager.queue_positions() == {second: 1}
    assert ws.get_run(second).status == RunStatus.QUEUED
    assert manager.snapshot(second).status == RunStatus.QUEUED
    assert {ws.get_run(i).creator for i in ids.values()} == {"alice", "bob"}
    wait_until(lambda: (manager.snapshot(first).step or 0) > 0)
    manager.stop(first)
    assert manager.wait(first, timeout=60) == RunStatus.STOPPED
    wait_until(lambda: manager.running() == second)
    assert manager.queue_positions() == {}
    manager.stop(second)
    assert manager.wait(second, timeout=60) == RunStatus.STOPPED
    assert ws.get_run(first).finished_at <= ws.get_run(second).started_at
