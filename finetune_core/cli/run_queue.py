"""The workspace's queue from the command line: ``runs submit|show|stop|resume``, the
headless ``worker``, and ``runs exec`` (the run process a scheduler starts)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from finetune_core import runs
from finetune_core.cli.common import cli_creator, load_config_file, open_workspace
from finetune_core.config import ConfigError
from finetune_core.jobs import queue
from finetune_core.jobs.execute import execute_run, hooks_from_names
from finetune_core.jobs.manager import JobError, JobManager
from finetune_core.jobs.postrun import DEFAULT_HOOKS
from finetune_core.jobs.scheduler import HOOKS_ENV, LEASE_ENV
from finetune_core.jobs.slots import MAX_SLOTS, Slots, read_slots, write_slots
from finetune_core.runs import RunPaths
from finetune_core.store import RunStatus, StoreError, Workspace
from finetune_core.training.ddp import stop_on_signals

EXIT_USAGE = 2
EXIT_NOT_FOUND = 4


def register_run_commands(commands: argparse._SubParsersAction) -> None:
    """``runs submit|show|stop|resume|exec`` (added to the ``runs`` group)."""

    def add(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        p = commands.add_parser(name, **kwargs)
        p.add_argument("--workspace", default=argparse.SUPPRESS, help="workspace folder")
        return p

    p = add("submit", help="queue a run for the workspace's scheduler (a server or worker)")
    p.add_argument("--config", type=Path, required=True, help="a config.json / run.json")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_submit)
    for name, handler, text in (
        ("show", cmd_show, "a run's status, epoch, device, process and best metrics"),
        ("stop", cmd_stop, "stop a run (queued: leaves the queue; training: after the batch)"),
        ("resume", cmd_resume, "queue a stopped or interrupted run to continue"),
    ):
        p = add(name, help=text)
        p.add_argument("run_id", metavar="ID")
        if name == "show":
            p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(handler=handler)
    p = add("exec", help=argparse.SUPPRESS)  # the run process a scheduler starts
    p.add_argument("run_id", metavar="ID")
    p.set_defaults(handler=cmd_exec)


def register(sub: argparse._SubParsersAction) -> None:
    """The ``worker`` command."""
    p = sub.add_parser(
        "worker",
        help="run the workspace's queue without a browser (a headless scheduler)",
        description="Claims queued runs of the workspace for this machine's free slots and "
        "trains each in its own process, like a dashboard server does. Ctrl-C stops "
        "scheduling; runs already training go on (stop them with `runs stop`).",
    )
    p.add_argument("--cpu-slots", type=int, help=f"runs at once on the CPU (1-{MAX_SLOTS})")
    p.add_argument("--gpu-slots", type=int, help=f"runs at once per GPU (1-{MAX_SLOTS})")
    p.add_argument("--save-slots", action="store_true", help="store the slots in the workspace")
    p.add_argument("--once", action="store_true", help="exit when the queue is empty")
    p.set_defaults(handler=cmd_worker)


def _workspace(args: argparse.Namespace) -> Workspace | None:
    return open_workspace(getattr(args, "workspace", None))


def cmd_submit(args: argparse.Namespace) -> int:
    workspace = _workspace(args)
    if workspace is None:
        return 1
    try:
        config = load_config_file(args.config)
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"--set needs KEY=VALUE (got {item!r}).")
            config = config.replace(**{key.strip(): value})
        manager = JobManager(workspace, start=False)
        run_id = manager.submit(config, creator=cli_creator())
    except (OSError, ConfigError, JobError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    position = queue.positions(workspace).get(run_id)
    if args.json:
        print(json.dumps({"id": run_id, "status": RunStatus.QUEUED, "position": position}))
    else:
        print(run_id)
    return 0


def run_details(workspace: Workspace, run_id: str) -> dict[str, Any] | None:
    """What ``runs show`` prints: the table's row, live epoch and place in the queue."""
    record = workspace.get_run(run_id)
    if record is None:
        return None
    paths = RunPaths(workspace.run_dir(run_id))
    live = JobManager(workspace, start=False).snapshot(run_id)
    return {
        "id": record.id,
        "name": record.name,
        "status": record.status,
        "phase": record.phase,
        "epoch": live.epoch if live else record.epochs_run,
        "epochs": live.epochs if live else (record.config or {}).get("epochs"),
        "device": record.device,
        "host": record.host,
        "pid": record.pid if record.lease_owner else None,
        "queue_position": queue.positions(workspace).get(run_id),
        "best_epoch": record.best_epoch,
        "val_accuracy": runs.val_accuracy(
            paths, record.best_val_accuracy, training=record.status in RunStatus.ACTIVE
        ),
        "error": record.error,
        "creator": record.creator,
        "parent_id": record.parent_id,
        "lineage": record.lineage,
        "folder": str(paths.root),
    }


def cmd_show(args: argparse.Namespace) -> int:
    workspace = _workspace(args)
    if workspace is None:
        return 1
    details = run_details(workspace, args.run_id)
    if details is None:
        print(f"error: no run with id {args.run_id!r} in {workspace.root}", file=sys.stderr)
        return EXIT_NOT_FOUND
    if args.json:
        print(json.dumps(details, indent=2, ensure_ascii=False))
        return 0
    width = max(len(k) for k in details)
    for key, value in details.items():
        shown = "-" if value in (None, "") else value
        if key == "val_accuracy" and value is not None:
            shown = f"{value:.1%}"
        print(f"{key.replace('_', ' ').ljust(width)}  {shown}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    workspace = _workspace(args)
    if workspace is None:
        return 1
    record = workspace.get_run(args.run_id)
    if record is None:
        print(f"error: no run with id {args.run_id!r}", file=sys.stderr)
        return EXIT_NOT_FOUND
    if not queue.request_stop(workspace, args.run_id):
        reason = (
            "it trains in a `train` command's own process: stop it there (Ctrl-C)."
            if record.from_cli and record.status == RunStatus.RUNNING
            else f"the run is {record.status}: only queued or training runs stop."
        )
        print(f"error: {reason}", file=sys.stderr)
        return EXIT_USAGE
    print("stopped (left the queue)" if record.status == RunStatus.QUEUED else
          "stop requested: the run stops after the current batch and keeps its best model")  # fmt: skip
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    workspace = _workspace(args)
    if workspace is None:
        return 1
    try:
        JobManager(workspace, start=False).resume(args.run_id)
    except JobError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"queued to resume: position {queue.positions(workspace).get(args.run_id)}")
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    """The run process: train the run this process's lease names."""
    workspace = _workspace(args)
    token = os.environ.get(LEASE_ENV, "")
    if workspace is None or not token:
        print("error: runs exec is started by a scheduler (no lease given)", file=sys.stderr)
        return EXIT_USAGE
    names = [n for n in os.environ.get(HOOKS_ENV, "").split(",") if n]
    stop = threading.Event()
    with stop_on_signals(stop):
        return execute_run(workspace, args.run_id, token, hooks=hooks_from_names(names),
                           stop=stop, own_process=True)  # fmt: skip


def cmd_worker(args: argparse.Namespace) -> int:
    workspace = _workspace(args)
    if workspace is None:
        return 1
    stored = read_slots(workspace)
    slots = Slots(cpu=args.cpu_slots or stored.cpu, gpu=args.gpu_slots or stored.gpu)
    try:
        if args.save_slots:
            write_slots(workspace, cpu=slots.cpu, gpu=slots.gpu)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # Slots given here and not saved apply to this worker alone; otherwise it follows the
    # workspace's setting as an admin changes it.
    overridden = args.cpu_slots is not None or args.gpu_slots is not None
    fixed = slots if overridden and not args.save_slots else None
    manager = JobManager(workspace, post_run=list(DEFAULT_HOOKS), slots=fixed)
    print(f"worker on {workspace.root}: {slots.cpu} CPU slot(s), {slots.gpu} per GPU; "
          "Ctrl-C stops scheduling", flush=True)  # fmt: skip
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            if args.once and not queue.queued(workspace) and not manager.scheduler.running_here():
                break
    except KeyboardInterrupt:
        pass
    manager.shutdown()
    return 0
