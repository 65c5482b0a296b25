"""Scale-out: real 2-process torchrun jobs on the CPU (gloo), through the CLI and the manager."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch

from finetune_core.config import RunConfig
from finetune_core.data import create_demo_dataset
from finetune_core.jobs import launcher
from finetune_core.jobs.manager import JobManager
from finetune_core.models.checkpoint import load_checkpoint
from finetune_core.runs import RunPaths
from finetune_core.store import RunStatus, Workspace
from finetune_core.training import ddp, setup
from finetune_core.training.phases import NetworkPhase
from finetune_core.training.progress import LiveState, ProgressFile, read_progress
from finetune_core.training.trainer import Trainer


@pytest.fixture
def demo(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> tuple[Workspace, Any]:
    # one intra-op thread per rank keeps a 2-core machine responsive
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return workspace, create_demo_dataset(workspace, per_class=16, size=40)


def tiny(dataset_id: str, **changes: Any) -> RunConfig:
    base: dict[str, Any] = dict(
        dataset=dataset_id,
        model="resnet18",
        weights="none",
        strategy="finetune",
        epochs=3,
        freeze_epochs=1,
        image_size=32,
        batch_size=8,
        lr=1e-3,
        channels_last=False,
        mixed_precision="off",
        augmentation="none",
        early_stopping=False,
        device="cpu",
        num_threads=1,
    )
    base.update(changes)
    return RunConfig(**base)


# Helpers that outlive the tests which started them (multiprocessing's resource tracker,
# started by any earlier test that used a "spawn" context) are not ours to judge here.
_PREEXISTING: set[int] = set()


@pytest.fixture(autouse=True)
def _ignore_processes_started_before_the_test() -> None:
    _PREEXISTING.clear()
    _PREEXISTING.update(p.pid for p in psutil.Process().children(recursive=True))


def descendants_alive() -> list[psutil.Process]:
    """Live child processes started since this test began."""
    alive = []
    for child in psutil.Process().children(recursive=True):
        if child.pid in _PREEXISTING:
            continue
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
        except psutil.NoSuchProcess:
            pass
    return alive


def assert_nothing_left_behind(timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while descendants_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert descendants_alive() == []


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# ---------------------------------------------------------------------- config and helpers
def test_devices_and_nodes_are_validated_and_round_trip() -> None:
    cfg = RunConfig.from_dict({"dataset": "d", "devices": "all", "nodes": 2})
    assert cfg.devices == "all" and cfg.nodes == 2
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert RunConfig.from_dict({"dataset": "d", "devices": "4"}).devices == 4
    assert RunConfig(dataset="d").devices == 1 and RunConfig(dataset="d").nodes == 1
    assert RunConfig(dataset="d").problems() == []

    def problems(**changes: Any) -> str:
        return " ".join(RunConfig(dataset="d", **changes).problems())

    assert "devices must be between 1 and 1024" in problems(devices=0)
    assert 'devices must be a positive integer or "all"' in problems(devices="many")
    assert "nodes must be between 1 and 1024" in problems(nodes=0)
    assert "probe strategy trains on one device" in problems(devices=2, strategy="probe")
    assert "GPU of its local rank" in problems(devices=2, device="cuda:1")
    assert "batch_size of at least 8" in problems(devices=2, nodes=2, batch_size=6)
    assert problems(devices=2, device="cpu", batch_size=8) == ""


def test_torchrun_command_is_an_argument_list(tmp_path: Path) -> None:
    cmd = launcher.torchrun_command(tmp_path / "r1", nproc=2, workspace=tmp_path / "ws")
    assert cmd[0] == sys.executable and cmd[1] == "-c"
    tail = cmd[3:]
    assert tail[:5] == ["--nnodes", "1", "--nproc-per-node", "2", "--standalone"]
    i = tail.index("-m")
    assert tail[i + 1 : i + 5] == ["finetune_core", "--workspace", str(tmp_path / "ws"), "train"]
    assert tail[-5:] == [
        "--config",
        str(tmp_path / "r1" / "config.json"),
        "--out",
        str(tmp_path / "r1"),
        "--quiet",
    ]
    multi = launcher.torchrun_command(
        tmp_path / "r1", nproc=8, nnodes=2, rdzv_endpoint="node0:29500", resume=True, quiet=False
    )
    joined = " ".join(multi)
    assert "--rdzv-backend c10d --rdzv-endpoint node0:29500 --rdzv-id r1" in joined
    assert "--standalone" not in multi and multi[-1] == "--resume"
    with pytest.raises(ValueError, match="rendezvous endpoint"):
        launcher.torchrun_command(tmp_path / "r1", nproc=8, nnodes=2)


def test_single_process_helpers_are_no_ops() -> None:
    ctx = ddp.current()
    assert ctx == ddp.SINGLE and not ctx.enabled and ctx.is_main
    assert ddp.agree(True, ctx) is True and ddp.agree(False, ctx) is False
    assert ddp.all_sum([1, 2.5], ctx) == [1.0, 2.5]
    assert ddp.broadcast_object({"a": 1}, ctx) == {"a": 1}
    assert ddp.threads_per_rank(0, ctx) == 0
    two = ddp.DistContext(rank=1, world_size=2, local_rank=1, local_world_size=2)
    assert ddp.threads_per_rank(0, two) == max(1, (os.cpu_count() or 1) // 2)
    assert ddp.threads_per_rank(3, two) == 3
    assert launcher.device_count_options(1) == [1]
    assert launcher.device_count_options(2) == [1, 2, "all"]


def test_signals_set_the_stop_event_and_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    for second_ends in (False, True):
        stop = threading.Event()
        with ddp.stop_on_signals(stop, second_ends=second_ends):
            os.kill(os.getpid(), signal.SIGTERM)
            wait_for(stop.is_set, 5, "the stop event")
            # a rank keeps handling repeats; a launcher lets a second signal end it
            assert (signal.getsignal(signal.SIGTERM) is before) is second_ends
        assert signal.getsignal(signal.SIGTERM) is before


def test_progress_file_round_trips_into_the_managers_live_state(demo, tmp_path: Path) -> None:
    ws, ds = demo
    trainer = Trainer(tiny(ds.id), ds, tmp_path, ws.cache_dir)
    cb = ProgressFile(tmp_path, interval=0.0)
    cb.before_fit(trainer)
    cb.on_log(trainer, "model resnet18 on cpu")
    trainer.phase, trainer.epoch, trainer.steps = NetworkPhase("frozen", 1), 1, 5
    cb.before_epoch(trainer)
    trainer.history.append({"epoch": 1, "train_loss": 1.5, "val_accuracy": 0.5})
    trainer.best.epoch, trainer.best.val_accuracy = 1, 0.5
    trainer.step = 4
    cb.after_epoch(trainer)
    path = RunPaths(tmp_path).progress
    progress = read_progress(path)
    assert progress is not None
    assert progress.status == "RUNNING" and progress.epochs == 3 and progress.epoch == 1
    assert progress.steps == 5 and progress.phase == "frozen"
    assert progress.history == ({"epoch": 1, "train_loss": 1.5, "val_accuracy": 0.5},)
    assert progress.best_epoch == 1 and progress.best_metric == 0.5
    assert progress.log[-1].endswith(" model resnet18 on cpu")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files

    state, epochs_seen = LiveState(), []
    state.update(status=RunStatus.RUNNING)
    relay = launcher.ProgressRelay(state, on_epoch=lambda p: epochs_seen.append(len(p.history)))
    relay.follow(path)
    relay.follow(path)  # unchanged file: nothing relayed twice
    snap = state.snapshot()
    assert snap.status == RunStatus.RUNNING  # the manager owns the status
    assert snap.epoch == 1 and snap.history == progress.history and snap.best_epoch == 1
    assert [line[9:] for line in snap.log] == ["model resnet18 on cpu"]
    assert epochs_seen == [1]
    time.sleep(0.01)
    cb.on_log(trainer, "second line")
    trainer.status = "SUCCEEDED"
    cb.after_fit(trainer)
    relay.follow(path)
    assert [line[9:] for line in state.snapshot().log] == ["model resnet18 on cpu", "second line"]
    assert read_progress(path).status == "SUCCEEDED"
    assert read_progress(tmp_path / "missing.json") is None


# ---------------------------------------------------------------------- real torchrun jobs
def metrics_rows(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.slow
def test_two_process_torchrun_matches_the_single_process_run(demo, tmp_path: Path) -> None:
    ws, ds = demo
    config = tiny(ds.id)
    single = Trainer(config, ds, tmp_path / "single", ws.cache_dir).fit()
    assert single.status == "SUCCEEDED"

    out = tmp_path / "ddp"
    out.mkdir()
    config.save(out / "config.json")
    env = {**os.environ, "FINETUNE_WORKSPACE": str(ws.root)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "finetune_core",
            "train",
            "--config",
            str(out / "config.json"),
            "--out",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCEEDED: best epoch" in proc.stdout
    assert proc.stdout.count("run folder:") == 1  # rank 0 alone reports

    # rank 0 alone wrote files: one metrics line per epoch, no error files, loadable checkpoints
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoints",
        "config.json",
        "metrics.json",
        "metrics.jsonl",
        "progress.json",
        "run.json",
        "run.log",
    ]
    ddp = metrics_rows(out)
    assert [r["epoch"] for r in ddp] == [1, 2, 3]
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["status"] == "SUCCEEDED" and summary["epochs_run"] == 3
    assert read_progress(out / "progress.json").status == "SUCCEEDED"
    for name in ("best.pt", "last.pt"):
        ckpt = load_checkpoint(out / "checkpoints" / name)
        assert not any(k.startswith("module.") for k in ckpt["model_state"])  # not the DDP wrapper
        trainer = Trainer(config, ds, tmp_path / "probe", ws.cache_dir)
        setup.build_model(trainer)
        trainer.model.load_state_dict(ckpt["model_state"])
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 3

    # Epoch 1 trains the head over a frozen backbone (BatchNorm in eval mode): each global
    # batch holds the same 8 images as the single-process batch, split 4 + 4, and DDP
    # averages the two halves' gradients into the same mean gradient. Only float summation
    # order differs.
    one, ref = ddp[0], single.history[0]
    assert one["train_loss"] == pytest.approx(ref["train_loss"], abs=1e-3)
    assert one["val_loss"] == pytest.approx(ref["val_loss"], abs=1e-3)
    assert one["val_accuracy"] == ref["val_accuracy"]
    # Unfrozen epochs differ for a real reason: BatchNorm normalises each rank's 4 images
    # instead of the whole batch of 8, so the gradients differ a little every step. On this
    # tiny random-init model that stays within ~25% of the loss and 2 of the 6 val images.
    for got, want in zip(ddp[1:], single.history[1:], strict=True):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=0.25)
        assert got["val_loss"] == pytest.approx(want["val_loss"], rel=0.25)
        assert abs(got["val_accuracy"] - want["val_accuracy"]) <= 2 / 6 + 1e-9
    assert_nothing_left_behind()


@pytest.mark.slow
def test_manager_runs_two_processes_shows_live_progress_and_stops(demo) -> None:
    ws, ds = demo
    manager = JobManager(ws)
    try:
        run_id = manager.submit(tiny(ds.id, devices=2, epochs=6))
        run_dir = ws.run_dir(run_id)
        seen: list[Any] = []

        def live_second_epoch() -> bool:
            snap = manager.snapshot(run_id)
            seen.append(snap)
            return snap.epoch >= 2 and snap.step >= 1 and len(snap.history) >= 1

        wait_for(live_second_epoch, 180, "the second epoch in the live snapshot")
        assert len(descendants_alive()) >= 3  # torchrun and its two ranks
        snap = seen[-1]
        assert snap.status == RunStatus.RUNNING and snap.epochs == 6 and snap.steps == 5
        assert snap.history[0]["epoch"] == 1 and snap.train_loss is not None
        assert any("launched torchrun: 2 processes" in line for line in snap.log)
        assert any("model resnet18" in line for line in snap.log)  # relayed from rank 0
        assert RunPaths(run_dir).progress.exists()
        assert manager.stop(run_id)
        assert manager.wait(run_id, timeout=120) == RunStatus.STOPPED
        run = ws.get_run(run_id)
        assert run.error == "stopped by user" and 1 <= run.epochs_run < 6
        best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
        assert best["epoch"] == run.best_epoch
        rows = metrics_rows(run_dir)
        assert len(rows) == run.epochs_run and rows[-1]["epoch"] == run.epochs_run
        final = manager.snapshot(run_id)
        assert final.status == RunStatus.STOPPED and len(final.history) == run.epochs_run
        # the ranks stopped gracefully: rank 0 finished the batch and wrote its summary
        assert json.loads((run_dir / "metrics.json").read_text())["status"] == "STOPPED"
        rank0 = read_progress(RunPaths(run_dir).progress)
        assert rank0.status == "STOPPED"
        assert any("stop requested: ending after this batch" in line for line in rank0.log)
        assert_nothing_left_behind()

        # resume continues on two processes from the last complete epoch
        stopped_after = run.epochs_run
        manager.resume(run_id)
        assert manager.wait(run_id, timeout=180) == RunStatus.SUCCEEDED
        assert ws.get_run(run_id).epochs_run == 6
        assert [r["epoch"] for r in metrics_rows(run_dir)] == list(range(1, 7))
        assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] == 6
        assert f"resumed from epoch {stopped_after} checkpoint" in " ".join(
            read_progress(RunPaths(run_dir).progress).log
        )
        assert_nothing_left_behind()
    finally:
        manager.shutdown()


@pytest.mark.slow
def test_a_failing_rank_fails_the_run_with_its_error(demo, monkeypatch) -> None:
    ws, ds = demo
    monkeypatch.setenv(ddp.FAIL_RANK_ENV, "1")
    manager = JobManager(ws)
    try:
        run_id = manager.submit(tiny(ds.id, devices=2, epochs=30))
        assert manager.wait(run_id, timeout=180) == RunStatus.FAILED
        run = ws.get_run(run_id)
        assert run.error == f"rank 1 failed: injected failure on rank 1 ({ddp.FAIL_RANK_ENV})"
        # the rank's own traceback, then torchrun's report
        assert "in after_batch" in run.traceback and "torchrun output" in run.traceback
        assert run.epochs_run == 0
        snap = manager.snapshot(run_id)  # what the pages show
        assert snap.status == RunStatus.FAILED and snap.log[-1] == run.error
        assert_nothing_left_behind()
    finally:
        manager.shutdown()


@pytest.mark.slow
def test_single_process_default_runs_in_its_own_process_without_torchrun(demo) -> None:
    ws, ds = demo
    manager = JobManager(ws)
    try:
        run_id = manager.submit(tiny(ds.id, epochs=2))
        commands: set[str] = set()
        while manager.is_active(run_id):
            for proc in descendants_alive():
                with contextlib.suppress(OSError):
                    commands.add(Path(f"/proc/{proc.pid}/cmdline").read_text().replace("\0", " "))
            time.sleep(0.05)
        assert manager.wait(run_id, timeout=5) == RunStatus.SUCCEEDED
        assert any(f"runs exec {run_id}" in c for c in commands), commands  # the run process
        assert not any("torch.distributed" in c or "torchrun" in c for c in commands), commands
        run_dir = ws.run_dir(run_id)
        assert RunPaths(run_dir).progress.exists()  # what pages read while it trains
        assert len(metrics_rows(run_dir)) == 2
    finally:
        manager.shutdown()


@pytest.mark.slow
def test_cli_launches_torchrun_itself_and_ctrl_c_stops_every_rank(demo, tmp_path: Path) -> None:
    ws, ds = demo
    config_path = tmp_path / "run.json"
    tiny(ds.id, epochs=30).save(config_path)
    out = tmp_path / "cli-run"
    env = {**os.environ, "FINETUNE_WORKSPACE": str(ws.root)}
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "finetune_core",
            "train",
            "--config",
            str(config_path),
            "--out",
            str(out),
            "--set",
            "devices=2",
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:

        def first_epoch() -> bool:
            progress = read_progress(RunPaths(out).progress)
            return progress is not None and len(progress.history) >= 1

        wait_for(first_epoch, 180, "the first epoch")
        family = psutil.Process(launcher.pid).children(recursive=True)
        assert len(family) >= 3  # torchrun and two ranks
        launcher.send_signal(signal.SIGINT)  # what Ctrl-C in a terminal sends
        output, _ = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 130, output
    assert "launched 2 process(es) per machine on 1 machine(s)" in output
    assert json.loads((out / "metrics.json").read_text())["status"] == "STOPPED"
    assert load_checkpoint(out / "checkpoints" / "best.pt")["epoch"] >= 1
    _, alive = psutil.wait_procs(family, timeout=10)
    assert alive == []


@pytest.mark.slow
def test_ranks_end_with_torchrun_even_when_it_is_killed(demo) -> None:
    ws, ds = demo
    run_dir = ws.run_dir("orphan-check")
    config = tiny(ds.id, devices=2, epochs=30)
    config.save(run_dir / "config.json")
    run = launcher.launch(run_dir, config, workspace=ws.root)
    try:
        wait_for(lambda: RunPaths(run_dir).progress.exists(), 180, "the ranks")
        ranks = psutil.Process(run.pid).children(recursive=True)
        assert len(ranks) == 2
        os.kill(run.pid, signal.SIGKILL)  # no chance to forward anything
        run.proc.wait(10)
        _, alive = psutil.wait_procs(ranks, timeout=15)  # parent-death signal
        assert alive == []
    finally:
        run.close()
    assert_nothing_left_behind()


# ---------------------------------------------------------------------- GPUs (nccl)
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible on this machine")
def test_all_devices_means_every_visible_gpu() -> None:
    gpus = torch.cuda.device_count()
    assert launcher.visible_gpus() == gpus
    assert launcher.resolve_devices(RunConfig(dataset="d", devices="all")) == gpus
    assert launcher.is_multi_process(RunConfig(dataset="d", devices="all")) is (gpus > 1)
    # device=cpu asks for CPU workers: "all" GPUs then means one process
    assert launcher.resolve_devices(RunConfig(dataset="d", devices="all", device="cpu")) == 1


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs at least 2 CUDA GPUs")
def test_two_gpus_train_with_nccl_through_the_manager(workspace: Workspace) -> None:
    ds = create_demo_dataset(workspace, per_class=40, size=64)
    manager = JobManager(workspace)
    try:
        config = tiny(
            ds.id,
            devices=2,
            device="auto",
            mixed_precision="auto",
            channels_last=True,
            image_size=64,
            batch_size=32,
            lr=2e-3,
            epochs=4,
            num_threads=0,
        )
        run_id = manager.submit(config)
        assert manager.wait(run_id, timeout=300) == RunStatus.SUCCEEDED
        run = workspace.get_run(run_id)
        assert run.epochs_run == 4 and run.best_val_accuracy > 1 / 3
        launch_log = RunPaths(workspace.run_dir(run_id)).launch_log.read_text()
        assert "Traceback" not in launch_log
        assert_nothing_left_behind()
    finally:
        manager.shutdown()
