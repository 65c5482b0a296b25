"""The CLI's runs in the workspace: ``runs list``, and the row each ``train`` keeps in the
workspace's runs table, so the dashboard's Runs, Evaluation and Predict pages show CLI
runs like any other (their creator is ``cli:<os user>``)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from finetune_core import runs
from finetune_core.cli.common import cli_creator, open_workspace
from finetune_core.cli.run_queue import register_run_commands
from finetune_core.config import RunConfig
from finetune_core.jobs import procs, queue
from finetune_core.runs import RunPaths
from finetune_core.store import RunRecord, RunStatus, Workspace, new_id, utc_now

EXIT_NO_WORKSPACE = 1
COLUMNS = ("id", "name", "status", "dataset", "model", "strategy", "val_accuracy", "folder")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``runs`` command group."""
    group = sub.add_parser("runs", help="the workspace's runs (the dashboard's and the CLI's)")
    commands = group.add_subparsers(dest="runs_command", required=True, metavar="SUBCOMMAND")
    p = commands.add_parser(
        "list",
        help="list every run of the workspace",
        description="Every run of the workspace, newest first: id, name, status, dataset, "
        "model, strategy, validation accuracy and run folder.",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    # also accepted after the subcommand; SUPPRESS keeps a global --workspace when absent
    p.add_argument("--workspace", default=argparse.SUPPRESS, help="workspace folder")
    p.set_defaults(handler=cmd_list)
    register_run_commands(commands)


def run_rows(workspace: Workspace) -> list[dict[str, Any]]:
    """One row per run of the workspace, newest first."""
    datasets = {d.id: d.name for d in workspace.list_datasets()}
    rows = []
    for record in workspace.list_runs():
        folder = workspace.run_dir(record.id)
        rows.append(
            {
                "id": record.id,
                "name": record.name,
                "status": record.status,
                "dataset": datasets.get(record.dataset_id, ""),
                "dataset_id": record.dataset_id,
                "model": record.model,
                "strategy": record.strategy,
                "val_accuracy": runs.val_accuracy(
                    RunPaths(folder),
                    record.best_val_accuracy,
                    training=record.status in RunStatus.ACTIVE,
                ),
                "folder": str(folder),
                "creator": record.creator,
                "created_at": record.created_at,
            }
        )
    return rows


def cmd_list(args: argparse.Namespace) -> int:
    workspace = open_workspace(args.workspace)
    if workspace is None:
        return EXIT_NO_WORKSPACE
    rows = run_rows(workspace)
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    if not rows:
        print("No runs yet. Train one with `train --data DATASET --out FOLDER`.")
        return 0
    table = [tuple(c.upper().replace("_", " ") for c in COLUMNS)]
    for row in rows:
        acc = row["val_accuracy"]
        cells = {**row, "val_accuracy": "-" if acc is None else f"{acc:.1%}"}
        table.append(tuple(str(cells[c] or "-") for c in COLUMNS))
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    for r in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    return 0


# -------------------------------------------------------------- the train command's row
def start_cli_run(
    workspace: Workspace, out: Path, config: RunConfig, *, resume: bool = False
) -> str | None:
    """Record (or re-open, when training into the same folder again) the CLI run training
    into ``out``; returns its id. None for a run the job manager owns (the dashboard
    starts torchrun runs through this command): the manager keeps its row."""
    folder = out.expanduser().resolve()
    existing = workspace.find_run_by_folder(folder)
    if existing is not None and not existing.from_cli:
        return None
    fields: dict[str, Any] = dict(
        name=config.name or folder.name,
        dataset_id=config.dataset,
        model=config.model,
        strategy=config.strategy,
        config=config.to_dict(),
        notes=config.notes,
        status=RunStatus.RUNNING,
        started_at=utc_now(),
        # which process trains it: a scheduler interrupts the row once that process is gone
        host=queue.HOST,
        pid=os.getpid(),
        pid_started=procs.start_time(os.getpid()) or "",
        finished_at=None,
        error="",
        traceback="",
    )
    if not resume:  # a fresh start in the folder: no numbers from the run it replaces
        fields.update(best_val_accuracy=None, best_epoch=None, epochs_run=0, train_seconds=None)
    if existing is not None:
        workspace.update_run(existing.id, **fields)
        return existing.id
    run_id = new_id("r")
    workspace.add_run(RunRecord(id=run_id, creator=cli_creator(), folder=str(folder), **fields))
    return run_id


def end_cli_run(workspace: Workspace, run_id: str | None, status: str, error: str) -> None:
    """A CLI run that did not finish: FAILED (with why) or INTERRUPTED (Ctrl-C)."""
    if run_id is not None:
        workspace.update_run(run_id, status=status, error=error, finished_at=utc_now())
