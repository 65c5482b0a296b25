"""The workspace's queue with real run processes: claims, leases, deaths, slots, takeover."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from finetune_core import runs
from finetune_core.config import RunConfig
from finetune_core.data import create_demo_dataset
from finetune_core.jobs import procs, queue
from finetune_core.jobs.manager import JobManager
from finetune_core.jobs.postrun import DEFAULT_HOOKS
from finetune_core.jobs.scheduler import Scheduler
from finetune_core.jobs.slots import Slots, read_slots, write_slots
from finetune_core.runs import RunPaths
from finetune_core.store import RunRecord, RunStatus, StoreError, Workspace, new_id


@pytest.fixture
def demo_ws(workspace: Workspace) -> tuple[Workspace, Any]:
    return workspace, create_demo_dataset(workspace, per_class=12, size=40)


def quick(dataset_id: str, **changes: Any) -> RunConfig:
    base: dict[str, Any] = dict(
        dataset=dataset_id, model="resnet18", weights="none", strategy="probe", epochs=2,
        image_size=32, batch_size=16, lr=1e-2, channels_last=False, mixed_precision="off",
        num_threads=1,
    )  # fmt: skip
    base.update(changes)
    return RunConfig(**base)


def long_run(dataset_id: str, **changes: Any) -> RunConfig:
    """A run that trains for a while (full fine-tune, many epochs, no early stop)."""
    return quick(dataset_id, **{"strategy": "full", "epochs": 40, "early_stopping": False,
                                **changes})  # fmt: skip


def wait_for(check, timeout: float = 90.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def epochs_done(ws: Workspace, run_id: str) -> int:
    return len(runs.read_history(RunPaths(ws.run_dir(run_id))))


def _claim_all(root: str, tag: str, out: Any) -> None:
    ws = Workspace(root)
    got = []
    for _ in range(80):
        claimed = queue.claim(ws, f"{tag}:{os.getpid()}", [queue.Slot("cpu", 1000)])
        if claimed is not None:
            got.append(claimed[0].id)
    out.put((tag, got))


def test_concurrent_claims_take_each_run_exactly_once(workspace: Workspace) -> None:
    """Four processes race to claim 60 queued runs: every run is claimed by one of them."""
    ids = []
    for i in range(60):
        run_id = f"r-claim-{i:02d}"
        workspace.add_run(RunRecord(id=run_id, config={"device": "cpu"}))
        queue.enqueue(workspace, run_id)
        ids.append(run_id)
    out: Any = multiprocessing.get_context("fork").Queue()
    workers = [
        multiprocessing.get_context("fork").Process(
            target=_claim_all, args=(str(workspace.root), f"w{i}", out)
        )
        for i in range(4)
    ]
    for w in workers:
        w.start()
    results = dict(out.get(timeout=60) for _ in workers)
    for w in workers:
        w.join(30)
    claimed = [rid for got in results.values() for rid in got]
    assert sorted(claimed) == ids  # all of them, none twice
    owners = {r.lease_owner.split(":")[0] for r in workspace.list_runs()}
    assert owners <= {"w0", "w1", "w2", "w3"}
    assert all(r.status == RunStatus.RUNNING for r in workspace.list_runs())


def test_slots_limit_claims_and_are_a_workspace_setting(workspace: Workspace) -> None:
    for i in range(3):
        workspace.add_run(RunRecord(id=f"r-slot-{i}", config={"device": "cpu"}))
        queue.enqueue(workspace, f"r-slot-{i}")
    assert read_slots(workspace) == Slots(cpu=1, gpu=1)
    with pytest.raises(StoreError, match="cpu slots must be a whole number from 1 to 64"):
        write_slots(workspace, cpu=0)
    assert write_slots(workspace, cpu=2) == Slots(cpu=2, gpu=1)
    slots = [queue.Slot("cpu", read_slots(workspace).cpu)]
    assert queue.claim(workspace, "a:1", slots) is not None
    assert queue.claim(workspace, "b:1", slots) is not None
    assert queue.claim(workspace, "c:1", slots) is None  # both CPU slots are held
    assert queue.positions(workspace) == {"r-slot-2": 1}
    # a GPU run never takes the CPU slot, a CPU run never a GPU slot
    gpu_run = RunRecord(id="g", config={"device": "cuda"})
    assert not queue.wants(gpu_run, queue.Slot("cpu", 1), gpus=0)
    assert queue.wants(gpu_run, queue.Slot("cuda:0", 1), gpus=1)
    assert not queue.wants(RunRecord(id="c", config={"device": "cpu"}), queue.Slot("cuda:0", 1), 1)
    assert queue.wants(RunRecord(id="a", config={"device": "auto"}), queue.Slot("cuda:1", 1), 2)


def test_a_lease_lost_or_a_stop_request_reaches_the_heartbeat(workspace: Workspace) -> None:
    workspace.add_run(RunRecord(id="r-beat", config={"device": "cpu"}))
    queue.enqueue(workspace, "r-beat")
    claimed = queue.claim(workspace, "me:1", [queue.Slot("cpu", 1)])
    assert claimed is not None
    assert queue.heartbeat(workspace, "r-beat", "me:1") == (True, False)
    assert queue.request_stop(workspace, "r-beat")
    assert queue.heartbeat(workspace, "r-beat", "me:1") == (True, True)
    assert queue.heartbeat(workspace, "r-beat", "someone-else:1") == (False, True)
    assert queue.release(workspace, "r-beat", "me:1", status=RunStatus.STOPPED)
    assert not queue.release(workspace, "r-beat", "me:1")  # released once
    assert workspace.get_run("r-beat").lease_owner == ""


@pytest.mark.slow
def test_a_run_trains_in_its_own_process_and_is_evaluated_there(demo_ws) -> None:
    ws, ds = demo_ws
    manager = JobManager(ws, post_run=list(DEFAULT_HOOKS))
    try:
        run_id = manager.submit(quick(ds.id), creator="alice")
        record = wait_for(lambda: (r := ws.get_run(run_id)).pid and r, what="a run process")
        assert record.pid != os.getpid() and record.host == queue.HOST
        assert record.device == "cpu"
        assert os.getsid(record.pid) == record.pid  # its own session: a server restart spares it
        assert manager.wait(run_id, timeout=180) == RunStatus.SUCCEEDED
        done = ws.get_run(run_id)
        assert done.lease_owner == "" and done.phase == "" and done.epochs_run == 2
        assert RunPaths(ws.run_dir(run_id)).evaluation.is_file()  # evaluated by the run process
        log = "\n".join(runs.read_log(RunPaths(ws.run_dir(run_id))))
        assert "claimed for cpu" in log and "running evaluation" in log
        assert "finished: SUCCEEDED" in log
    finally:
        manager.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV], ids=["sigkill", "segfault"])
def test_a_killed_run_process_fails_with_the_signal_and_the_next_run_starts(demo_ws, sig) -> None:
    """SIGKILL (the out-of-memory killer) or SIGSEGV (what a segfault delivers) ends the run
    process without a result: FAILED with the signal, and the queue goes on."""
    ws, ds = demo_ws
    manager = JobManager(ws)
    try:
        victim = manager.submit(long_run(ds.id))
        after = manager.submit(quick(ds.id))
        wait_for(lambda: epochs_done(ws, victim) >= 1, what="the first epoch")
        pid = ws.get_run(victim).pid
        os.kill(pid, sig)
        assert manager.wait(victim, timeout=60) == RunStatus.FAILED
        failed = ws.get_run(victim)
        assert f"was killed by signal {sig.name} ({int(sig)})" in failed.error
        assert failed.lease_owner == "" and failed.finished_at
        assert not procs.alive(pid)
        assert manager.wait(after, timeout=180) == RunStatus.SUCCEEDED
    finally:
        manager.shutdown(stop_runs=True)


@pytest.mark.slow
def test_two_cpu_slots_train_two_runs_at_once(demo_ws) -> None:
    ws, ds = demo_ws
    write_slots(ws, cpu=2)
    manager = JobManager(ws)
    try:
        # one user asks for every thread there is: each run gets its share of the cores
        first = manager.submit(long_run(ds.id, epochs=6, num_threads=1000))
        second = manager.submit(long_run(ds.id, epochs=6))

        def both_training() -> bool:
            records = [ws.get_run(first), ws.get_run(second)]
            return all(r.status == RunStatus.RUNNING and procs.alive(r.pid) for r in records)

        wait_for(both_training, what="two runs training at once")
        assert {r.id for r in manager.active_runs()} == {first, second}
        assert manager.queue_positions() == {}
        assert manager.wait(first, timeout=240) == RunStatus.SUCCEEDED
        assert manager.wait(second, timeout=240) == RunStatus.SUCCEEDED
        share = max(1, len(os.sched_getaffinity(0)) // 2)
        for run_id in (first, second):
            threads = runs.read_info(RunPaths(ws.run_dir(run_id)))["environment"]["threads"]
            assert threads == share, (run_id, threads)
        log = "\n".join(runs.read_log(RunPaths(ws.run_dir(first))))
        assert f"num_threads 1000 is more than the {share} cores this run may use" in log
    finally:
        manager.shutdown(stop_runs=True)


@pytest.mark.slow
def test_a_new_scheduler_leaves_a_live_run_alone_and_it_finishes_once(demo_ws) -> None:
    """The server that started a run goes away (its scheduler ends, the run process lives):
    another one on the workspace never marks it INTERRUPTED, even with its lease expired,
    and the run ends SUCCEEDED with every epoch once."""
    ws, ds = demo_ws
    first = JobManager(ws)
    run_id = first.submit(long_run(ds.id, epochs=5))
    wait_for(lambda: epochs_done(ws, run_id) >= 1, what="the first epoch")
    first.shutdown()  # the server is gone; its run process is not
    assert procs.alive(ws.get_run(run_id).pid)
    ws.update_run(run_id, lease_until=time.time() - 1000)  # as if it had not renewed it
    second = Scheduler(ws)
    second.tick()
    assert ws.get_run(run_id).status == RunStatus.RUNNING
    deadline = time.monotonic() + 240
    while ws.get_run(run_id).lease_owner and time.monotonic() < deadline:
        second.tick()
        time.sleep(0.2)
    done = ws.get_run(run_id)
    assert done.status == RunStatus.SUCCEEDED, done.error
    epochs = [row["epoch"] for row in runs.read_history(RunPaths(ws.run_dir(run_id)))]
    assert epochs == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_a_run_whose_process_died_unsupervised_is_interrupted_and_resumes(demo_ws) -> None:
    """No parent saw it die: its lease expires with no live process -> INTERRUPTED, and it
    resumes by itself from its last checkpoint (the user's choice at submit)."""
    ws, ds = demo_ws
    first = JobManager(ws)
    run_id = first.submit(long_run(ds.id, epochs=4), auto_resume=True)
    wait_for(lambda: epochs_done(ws, run_id) >= 1, what="the first epoch")
    first.shutdown()
    pid = ws.get_run(run_id).pid
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not procs.alive(pid), what="the process to end")
    ws.update_run(run_id, lease_until=time.time() - 1)
    second = JobManager(ws)
    try:
        wait_for(lambda: ws.get_run(run_id).resume == 1, what="the run to be queued again")
        assert "resumes by itself" in "\n".join(runs.read_log(RunPaths(ws.run_dir(run_id))))
        assert second.wait(run_id, timeout=240) == RunStatus.SUCCEEDED
        epochs = [row["epoch"] for row in runs.read_history(RunPaths(ws.run_dir(run_id)))]
        assert epochs == [1, 2, 3, 4]
    finally:
        second.shutdown(stop_runs=True)


def test_stop_and_show_from_the_cli(demo_ws, capsys) -> None:
    from finetune_core.cli.main import main

    ws, ds = demo_ws
    config = Path(ws.root) / "cfg.json"
    quick(ds.id).save(config)
    assert main(["--workspace", str(ws.root), "runs", "submit", "--config", str(config)]) == 0
    run_id = capsys.readouterr().out.strip()
    assert ws.get_run(run_id).status == RunStatus.QUEUED
    assert main(["--workspace", str(ws.root), "runs", "show", run_id, "--json"]) == 0
    shown = capsys.readouterr().out
    assert f'"id": "{run_id}"' in shown and '"queue_position": 1' in shown
    assert main(["--workspace", str(ws.root), "runs", "stop", run_id]) == 0
    assert ws.get_run(run_id).status == RunStatus.STOPPED
    assert main(["--workspace", str(ws.root), "runs", "stop", run_id]) == 2
    assert "only queued or training runs stop" in capsys.readouterr().err
    assert main(["--workspace", str(ws.root), "runs", "show", new_id("r")]) == 4


def test_a_cli_run_whose_process_is_gone_is_interrupted_and_a_live_one_is_not(
    workspace: Workspace,
) -> None:
    """``train`` runs hold no lease; they record their process, and only its end counts."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    for run_id, pid in (("r-cli-dead", dead.pid), ("r-cli-live", os.getpid())):
        workspace.add_run(RunRecord(id=run_id, status=RunStatus.RUNNING, creator="cli:bob",
                                    host=queue.HOST, pid=pid,
                                    pid_started=procs.start_time(pid) or "gone"))  # fmt: skip
    workspace.add_run(RunRecord(id="r-cli-old", status=RunStatus.RUNNING, creator="cli:bob"))
    Scheduler(workspace).tick(claim=False)
    assert workspace.get_run("r-cli-dead").status == RunStatus.INTERRUPTED
    assert "--resume" in workspace.get_run("r-cli-dead").error
    assert workspace.get_run("r-cli-live").status == RunStatus.RUNNING
    assert workspace.get_run("r-cli-old").status == RunStatus.RUNNING  # no process recorded


@pytest.mark.slow
def test_the_worker_command_runs_the_queue_without_a_browser(demo_ws) -> None:
    """`worker --once`: a headless scheduler claims the queued run, trains it in its own
    process, evaluates it, and exits when the queue is empty."""
    ws, ds = demo_ws
    run_id = JobManager(ws, start=False).submit(quick(ds.id), creator="cli:ops")
    done = subprocess.run(
        [sys.executable, "-m", "finetune_core", "--workspace", str(ws.root), "worker", "--once"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "1 CPU slot(s)" in done.stdout
    record = ws.get_run(run_id)
    assert record.status == RunStatus.SUCCEEDED and record.lease_owner == ""
    assert RunPaths(ws.run_dir(run_id)).evaluation.is_file()
