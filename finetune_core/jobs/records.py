"""What the jobs write about a run besides its training files: the result and epoch
counts in the runs table, run.json's info (dataset, equivalent command), and progress
rebuilt from the files of a run that is not training."""

from __future__ import annotations

import contextlib
import shlex
from pathlib import Path
from typing import Any

from finetune_core import runs
from finetune_core.config import RunConfig
from finetune_core.runs import RunPaths
from finetune_core.store import RunRecord, RunStatus, StoreError, Workspace
from finetune_core.training.events import Callback
from finetune_core.training.progress import Progress


def record_result(workspace: Workspace, run_id: str, result: Any) -> None:
    """A finished training's TrainResult in the runs table (the manager's and the CLI's runs)."""
    workspace.update_run(
        run_id,
        status=result.status,
        best_val_accuracy=result.best_val_accuracy,
        best_epoch=result.best_epoch,
        epochs_run=result.epochs_run,
        train_seconds=result.train_seconds,
        error=result.stop_reason if result.status == RunStatus.STOPPED else "",
    )


class StoreEpochs(Callback):
    """Keeps the runs table current after every epoch (the runs page reads it)."""

    def __init__(self, workspace: Workspace, run_id: str) -> None:
        self.workspace, self.run_id = workspace, run_id

    def after_epoch(self, trainer: Any) -> None:
        with contextlib.suppress(StoreError):  # the run was deleted meanwhile
            self.workspace.update_run(
                self.run_id,
                epochs_run=len(trainer.history),
                best_epoch=trainer.best_epoch,
                best_val_accuracy=trainer.best_val_accuracy,
            )


def write_run_info(
    run_dir: Path,
    config: RunConfig,
    dataset: Any,
    workspace: Workspace | None = None,
    *,
    run_id: str | None = None,
) -> None:
    """The run's info file: dataset fingerprint and the equivalent CLI command (the
    trainer adds the environment it runs in, see training.setup.environment).

    ``workspace`` is recorded for run folders outside the workspace (CLI runs), so
    evaluation can find the dataset again; ``run_id`` is the id of a CLI run in the
    workspace's table (default: the one already recorded, else the folder's name, as for
    the dashboard's runs).
    """
    paths = RunPaths(run_dir)
    before = runs.read_info(paths)  # a resumed run keeps its id and workspace
    runs.write_info(
        paths,
        {
            "run_id": run_id or before.get("run_id") or Path(run_dir).name,
            "workspace": str(workspace.root) if workspace is not None else before.get("workspace"),
            "dataset_id": dataset.id,
            "dataset_name": dataset.record.name,
            "dataset_fingerprint": dataset.fingerprint,
            "class_names": dataset.class_names,
            "cli": cli_command(config, run_dir, workspace),
        },
    )


def cli_command(
    config: RunConfig, run_dir: Path | None = None, workspace: Workspace | None = None
) -> str:
    """The equivalent command line for a config (shown on the setup page and stored).

    With ``run_dir`` (the command recorded in run.json) a weights file is the run's own
    copy, which stays when the upload is gone; ``workspace`` names where the dataset is.
    """
    defaults = RunConfig()
    own = RunPaths(run_dir).own_weights(config.weights) if run_dir is not None else None
    weights = str(own.resolve()) if own is not None else config.weights
    parts = [
        "python -m finetune_core"
        + (f" --workspace {shlex.quote(str(workspace.root))}" if workspace else "")
        + " train",
        f"--data {shlex.quote(config.dataset or 'DATASET')}",
        f"--model {config.model}",
        f"--weights {shlex.quote(weights)}",
        f"--strategy {config.strategy}",
        f"--epochs {config.epochs}",
        f"--image-size {config.image_size}",
        f"--batch-size {config.batch_size}",
        f"--lr {config.lr:g}",
        f"--seed {config.seed}",
    ]
    covered = {
        "dataset",
        "model",
        "weights",
        "strategy",
        "epochs",
        "image_size",
        "batch_size",
        "lr",
        "seed",
    }
    extra = {
        k: v for k, v in config.to_dict().items() if k not in covered and v != getattr(defaults, k)
    }
    for key, value in sorted(extra.items()):
        parts.append(f"--set {key}={shlex.quote(str(value))}")
    parts.append("--out runs/RUN_NAME")
    return " ".join(parts)


def progress_from_files(workspace: Workspace, run: RunRecord) -> Progress:
    """Progress of a finished (or dead) run, rebuilt from its history and the runs table."""
    history = read_history(workspace, run.id)
    summary = runs.read_summary(RunPaths(workspace.run_dir(run.id)))
    config = run.config or {}
    return Progress(
        status=run.status,
        phase=history[-1].get("phase", "") if history else "",
        epoch=len(history),
        epochs=int(config.get("epochs", len(history)) or 0),
        step=0,
        steps=0,
        elapsed_seconds=float(run.train_seconds or summary.get("train_seconds") or 0.0),
        train_loss=history[-1]["train_loss"] if history else None,
        lr=history[-1].get("lr") if history else None,
        best_epoch=run.best_epoch,
        best_metric=run.best_val_accuracy,
        batch_size=summary.get("batch_size"),
        history=tuple(history),
        log=tuple(line for line in (run.error,) if line),
    )


def read_history(workspace: Workspace, run_id: str) -> list[dict[str, Any]]:
    """A workspace run's epoch rows."""
    return runs.read_history(RunPaths(workspace.run_dir(run_id)))
