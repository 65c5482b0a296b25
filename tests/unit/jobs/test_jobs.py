"""The job manager with real runs on the demo dataset."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torchvision

from finetune_core.config import RunConfig
from finetune_core.data import create_demo_dataset
from finetune_core.jobs.manager import JobError, JobManager
from finetune_core.jobs.records import cli_command
from finetune_core.runs import RunPaths
from finetune_core.store import RunStatus, Workspace
from finetune_core.training import setup


@pytest.fixture
def demo_ws(workspace: Workspace) -> tuple[Workspace, Any]:
    return workspace, create_demo_dataset(workspace, per_class=12, size=40)


def quick(dataset_id: str, **changes: Any) -> RunConfig:
    base = dict(
        dataset=dataset_id,
        model="resnet18",
        weights="none",
        strategy="probe",
        epochs=3,
        image_size=32,
        batch_size=16,
        lr=1e-2,
        channels_last=False,
        mixed_precision="off",
    )
    base.update(changes)
    return RunConfig(**base)


@pytest.mark.slow
def test_submit_runs_to_success_and_records_everything(demo_ws) -> None:
    ws, ds = demo_ws
    hooks: list[str] = []
    # a thread runs it here, so the test's own hook can see it (the run-process path: test_queue)
    manager = JobManager(ws, post_run=[lambda w, rid: hooks.append(rid)], isolation="thread")
    try:
        run_id = manager.submit(quick(ds.name), creator="alice")
        assert manager.wait(run_id, timeout=120) == RunStatus.SUCCEEDED
        run = ws.get_run(run_id)
        assert run.creator == "alice" and run.dataset_id == ds.id
        assert run.epochs_run == 3 and run.best_epoch is not None
        assert run.started_at and run.finished_at and run.train_seconds > 0
        assert hooks == [run_id]
        snap = manager.snapshot(run_id)
        assert snap.status == RunStatus.SUCCEEDED and len(snap.history) == 3
        run_dir = ws.run_dir(run_id)
        for name in ("config.json", "run.json", "metrics.jsonl", "metrics.json"):
            assert (run_dir / name).exists(), name
        assert "python -m finetune_core train" in (run_dir / "run.json").read_text()
    finally:
        manager.shutdown()


@pytest.mark.slow
def test_queue_is_fifo_and_a_queued_run_can_be_removed(demo_ws) -> None:
    ws, ds = demo_ws
    manager = JobManager(ws)
    try:
        first = manager.submit(quick(ds.id, epochs=8))
        second = manager.submit(quick(ds.id))
        third = manager.submit(quick(ds.id))
        deadline = time.monotonic() + 30
        while manager.running() != first and time.monotonic() < deadline:
            time.sleep(0.02)
        assert manager.queue_positions() == {second: 1, third: 2}
        assert manager.snapshot(second).status == RunStatus.QUEUED
        assert manager.stop(second)
        assert ws.get_run(second).status == RunStatus.STOPPED
        assert manager.queue_positions() == {third: 1}
        assert manager.wait(third, timeout=120) == RunStatus.SUCCEEDED
        assert ws.get_run(first).finished_at <= ws.get_run(third).started_at
        assert ws.get_run(second).epochs_run == 0
    finally:
        manager.shutdown()


@pytest.mark.slow
def test_a_failing_run_is_failed_with_reason_and_the_next_one_starts(demo_ws, monkeypatch) -> None:
    ws, ds = demo_ws
    original = setup.load_data

    def exploding(trainer):
        if trainer.cfg.name == "boom":
            raise ValueError("injected failure in the worker")
        return original(trainer)

    monkeypatch.setattr(setup, "load_data", exploding)
    manager = JobManager(ws, isolation="thread")  # the injected fault lives in this process
    try:
        bad = manager.submit(quick(ds.id, name="boom"))
        good = manager.submit(quick(ds.id))
        assert manager.wait(bad, timeout=60) == RunStatus.FAILED
        assert manager.wait(good, timeout=120) == RunStatus.SUCCEEDED
        run = ws.get_run(bad)
        assert run.error == "injected failure in the worker"
        assert "Traceback" in run.traceback and "exploding" in run.traceback
    finally:
        manager.shutdown()


@pytest.mark.slow
def test_stop_running_keeps_best_and_resume_finishes(demo_ws) -> None:
    ws, ds = demo_ws
    manager = JobManager(ws)
    try:
        run_id = manager.submit(quick(ds.id, strategy="full", epochs=6, early_stopping=False))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            snap = manager.snapshot(run_id)
            if snap.history:
                break
            time.sleep(0.05)
        assert manager.stop(run_id)
        assert manager.wait(run_id, timeout=60) == RunStatus.STOPPED
        stopped = ws.get_run(run_id)
        assert 1 <= stopped.epochs_run < 6
        assert (ws.run_dir(run_id) / "checkpoints" / "best.pt").exists()
        manager.resume(run_id)
        assert manager.wait(run_id, timeout=180) == RunStatus.SUCCEEDED
        assert ws.get_run(run_id).epochs_run == 6
        with pytest.raises(
            JobError, match="Only stopped or interrupted runs, or failed runs with a saved epoch"
        ):
            manager.resume(run_id)
    finally:
        manager.shutdown()


def test_a_new_server_interrupts_leaseless_leftovers_and_keeps_the_queue(demo_ws) -> None:
    """A RUNNING row without a lease was left by a server of a version without leases: it
    becomes INTERRUPTED. A queued run stays queued: the queue belongs to the workspace."""
    ws, ds = demo_ws
    from finetune_core.store import RunRecord

    ws.add_run(RunRecord(id="r-dead", status=RunStatus.RUNNING, config=quick(ds.id).to_dict()))
    ws.add_run(RunRecord(id="r-waiting", status=RunStatus.QUEUED, config=quick(ds.id).to_dict()))
    manager = JobManager(ws, start=False)
    manager.scheduler.tick(claim=False)
    assert ws.get_run("r-dead").status == RunStatus.INTERRUPTED
    assert "resume" in ws.get_run("r-dead").error
    assert ws.get_run("r-waiting").status == RunStatus.QUEUED
    assert manager.queue_positions() == {"r-waiting": 1}


def test_bad_requests_are_explained(demo_ws) -> None:
    ws, ds = demo_ws
    manager = JobManager(ws, start=False)
    with pytest.raises(JobError, match="No dataset"):
        manager.submit(quick("no-such-dataset"))
    with pytest.raises(JobError, match="epochs must be between"):
        manager.submit(quick(ds.id, epochs=0))
    with pytest.raises(JobError, match="No run with id"):
        manager.resume("r-missing")


def test_cli_command_round_trips_non_default_fields() -> None:
    cmd = cli_command(
        RunConfig(dataset="pets", epochs=7, label_smoothing=0.1, augmentation="strong")
    )
    assert "--data pets" in cmd and "--epochs 7" in cmd
    assert "--set augmentation=strong" in cmd and "--set label_smoothing=0.1" in cmd


def test_rerun_uses_the_runs_own_copy_of_its_weights(demo_ws, tmp_path) -> None:
    """The upload a run started from may be deleted later; a re-run starts from the copy
    the first run keeps (setup.own_weights made it, as at the start of every run)."""
    ws, ds = demo_ws
    upload = tmp_path / "uploads" / "start.pt"
    upload.parent.mkdir()
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), upload)
    manager = JobManager(ws, start=False)
    first = manager.submit(quick(ds.id, weights=str(upload)))
    paths = RunPaths(ws.run_dir(first))
    paths.root.mkdir(parents=True, exist_ok=True)
    copy = setup.own_weights(SimpleNamespace(paths=paths), str(upload))
    assert copy == str(paths.initial_weights)
    upload.unlink()
    second = manager.rerun(first)
    assert ws.get_run(second).config["weights"] == str(paths.initial_weights)
    assert ws.get_run(second).name.endswith("(re-run)")
