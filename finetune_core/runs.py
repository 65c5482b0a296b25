"""THE run folder: where every file of a run lives, and the only reader and writer of
its summary (``metrics.json``) and epoch history (``metrics.jsonl``).

Layout (``RunPaths``): ``config.json`` (RunConfig), ``run.json`` (environment, dataset,
CLI command), ``metrics.jsonl`` (one line per epoch), ``metrics.json`` (summary, with
``status``), ``checkpoints/best.pt`` and ``last.pt``, ``run.log``, optionally ``backbone.pt2``
or ``initial-weights.pt`` (its own copy of the weights file it started from);
torchrun runs add ``progress.json``, ``launch.log`` and ``rank-errors/``; evaluation adds
``eval.json``, ``predictions.csv``, ``report.html`` and ``export/``. The dashboard's
runs live in the workspace; CLI runs may live anywhere. Everything else asks this module.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_core.config import RunConfig
from finetune_core.fsutil import atomic_write_json, atomic_write_text, read_json
from finetune_core.store import RunRecord, Workspace, is_workspace

NAMED_WEIGHTS = ("imagenet", "none", "")  # RunConfig.weights values that are not files


class RunError(Exception):
    """The run folder cannot be used for this; the message says why."""


@dataclass(frozen=True)
class RunPaths:
    """Every path inside one run folder."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def info(self) -> Path:
        return self.root / "run.json"

    @property
    def summary(self) -> Path:
        return self.root / "metrics.json"

    @property
    def history(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, which: str = "best") -> Path:
        return self.checkpoints / f"{which}.pt"

    @property
    def backbone(self) -> Path:
        """A custom ``.pt2`` backbone, copied into the run so it never depends on the upload."""
        return self.root / "backbone.pt2"

    @property
    def initial_weights(self) -> Path:
        """The ``state_dict`` file training started from, copied into the run like the
        backbone (the trained weights are in the checkpoints)."""
        return self.root / "initial-weights.pt"

    def own_weights(self, weights: str) -> Path | None:
        """The run's own copy of the weights file ``weights`` names (a RunConfig.weights);
        None for ``imagenet`` and ``none``, which are not files."""
        if weights in NAMED_WEIGHTS:
            return None
        return self.backbone if weights.endswith(".pt2") else self.initial_weights

    @property
    def progress(self) -> Path:
        return self.root / "progress.json"

    @property
    def log(self) -> Path:
        """The run's own log: one line per message (early stopping, OOM halving, weights)."""
        return self.root / "run.log"

    @property
    def launch_log(self) -> Path:
        return self.root / "launch.log"

    @property
    def errors(self) -> Path:
        """One file per failed torchrun rank."""
        return self.root / "rank-errors"

    def rank_error(self, rank: int) -> Path:
        return self.errors / f"rank-{rank}.json"

    @property
    def evaluation(self) -> Path:
        return self.root / "eval.json"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions.csv"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def exports(self) -> Path:
        return self.root / "export"

    def export_bundle(self, fmt: str) -> Path:
        return self.exports / fmt

    def export_zip(self, fmt: str) -> Path:
        return self.exports / f"{fmt}.zip"

    @property
    def cache(self) -> Path:
        """Per-run decode cache for CLI runs outside a workspace."""
        return self.root / ".cache"

    def is_run(self) -> bool:
        return self.config.exists()

    def has_model(self) -> bool:
        """The one answer to "does this run have a model": its best checkpoint exists."""
        return self.checkpoint("best").exists()

    def workspace_guess(self) -> Path:
        """Workspace runs live in ``<workspace>/runs/<id>``."""
        return self.root.parent.parent


# ---------------------------------------------------------------- summary and history
def read_summary(paths: RunPaths) -> dict[str, Any]:
    """The run's summary (``{}`` before training has finished once)."""
    data = read_json(paths.summary, {})
    return data if isinstance(data, dict) else {}


def write_summary(paths: RunPaths, summary: dict[str, Any]) -> None:
    atomic_write_json(paths.summary, summary)


def update_summary(paths: RunPaths, **changes: Any) -> dict[str, Any]:
    """Merge ``changes`` into the summary (e.g. the final ``status``) and write it."""
    summary = {**read_summary(paths), **changes}
    write_summary(paths, summary)
    return summary


def val_accuracy(
    paths: RunPaths, live: float | None = None, *, training: bool = False
) -> float | None:
    """THE validation accuracy of a run (its best checkpoint's): the summary's once
    training has ended; ``live`` (the runs table's per-epoch figure) while it trains, or
    when there is no summary yet."""
    summary = {} if training else read_summary(paths)
    value = summary.get("val_accuracy", live) if summary else live
    return float(value) if isinstance(value, (int, float)) else None


def read_history(paths: RunPaths) -> list[dict[str, Any]]:
    """Epoch rows; a torn last line (crash mid-write) is ignored."""
    rows: list[dict[str, Any]] = []
    try:
        text = paths.history.read_text(encoding="utf-8")
    except FileNotFoundError:
        return rows
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def append_history(paths: RunPaths, row: dict[str, Any]) -> None:
    with paths.history.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def write_history(paths: RunPaths, rows: list[dict[str, Any]]) -> None:
    """Replace the history (resume: exactly the epochs the checkpoint knows about)."""
    atomic_write_text(paths.history, "".join(json.dumps(r) + "\n" for r in rows))


def clear_history(paths: RunPaths) -> None:
    paths.history.unlink(missing_ok=True)


def append_log(paths: RunPaths, message: str, when: float | None = None) -> None:
    """Add a line to the run's log: "YYYY-MM-DD HH:MM:SS message" in local time; a
    message's own line breaks become " | " so that a line is a message."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))
    text = " | ".join(part.strip() for part in str(message).splitlines() if part.strip())
    paths.log.parent.mkdir(parents=True, exist_ok=True)
    with paths.log.open("a", encoding="utf-8") as handle:
        handle.write(f"{stamp} {text}\n")


def read_log(paths: RunPaths, last: int | None = None) -> list[str]:
    """The run's log lines, oldest first (the ``last`` ones when given); [] without a log."""
    try:
        text = paths.log.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-last:] if last else lines


def read_info(paths: RunPaths) -> dict[str, Any]:
    data = read_json(paths.info, {})
    return data if isinstance(data, dict) else {}


def write_info(paths: RunPaths, info: dict[str, Any]) -> None:
    atomic_write_json(paths.info, info)


def update_info(paths: RunPaths, **changes: Any) -> dict[str, Any]:
    """Merge ``changes`` into run.json (e.g. the environment, once training has set it up)."""
    info = {**read_info(paths), **changes}
    write_info(paths, info)
    return info


def save_config(paths: RunPaths, config: RunConfig) -> None:
    config.save(paths.config)


class RunFolder:
    """Read access to one run's files."""

    def __init__(self, path: str | Path) -> None:
        self.paths = RunPaths(Path(path))
        self.path = self.paths.root
        if not self.paths.is_run():
            raise RunError(
                f"{self.path.name} is not a run folder (no {self.paths.config.name}); "
                "pass the folder a training run wrote (--out)."
            )
        self.config = RunConfig.load(self.paths.config)
        self.info: dict[str, Any] = read_info(self.paths)

    @property
    def id(self) -> str:
        return self.path.name

    def checkpoint_path(self, which: str = "best") -> Path:
        return self.paths.checkpoint(which)

    def has_checkpoint(self) -> bool:
        return self.paths.has_model()

    def history(self) -> list[dict[str, Any]]:
        return read_history(self.paths)

    def summary(self) -> dict[str, Any]:
        return read_summary(self.paths)

    def evaluation(self) -> dict[str, Any] | None:
        data = read_json(self.paths.evaluation)
        return data if isinstance(data, dict) else None

    def workspace_root(self) -> Path | None:
        """The workspace that holds this run's dataset: run.json's, else the folder's parent."""
        root = Path(self.info.get("workspace") or self.paths.workspace_guess())
        return root if is_workspace(root) else None


def run_workspace(
    run: RunFolder, workspace: Workspace | str | Path | None = None
) -> Workspace | None:
    """The workspace that holds the run's dataset, without creating one anywhere.

    ``workspace`` wins; else run.json's ``workspace`` (CLI runs); else the workspace
    whose ``runs/`` folder contains the run.
    """
    if isinstance(workspace, Workspace):
        return workspace
    if workspace:
        return Workspace(workspace)
    recorded = run.info.get("workspace")
    if recorded and is_workspace(recorded):
        return Workspace(recorded)
    folder = run.path.resolve()
    if folder.parent.name == "runs" and is_workspace(folder.parent.parent):
        return Workspace(folder.parent.parent)
    return None


def run_record(run: RunFolder, workspace: Workspace | None) -> RunRecord | None:
    """The run's row in the workspace table: the row whose folder this is (a dashboard
    run's ``runs/<id>``, or a CLI run's ``--out`` anywhere)."""
    return workspace.find_run_by_folder(run.path) if workspace is not None else None


def run_status(run: RunFolder, workspace: Workspace | None) -> str:
    """SUCCEEDED, FAILED, ... from the runs table, else the summary (CLI runs), else ''."""
    record = run_record(run, workspace)
    if record is not None:
        return record.status
    return str(run.summary().get("status") or "")
