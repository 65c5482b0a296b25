"""Runs that start from other runs: "continue for N more epochs" (a child run from the
parent's last checkpoint, its history kept) and "start from run X" (a warm start from
another run's best weights), and the whole history of a chain of continued runs.

The configs carry ``init_from`` (training.setup loads it and records the lineage in
run.json); the runs table's ``parent_id`` and ``lineage`` columns link child and parent.
"""

from __future__ import annotations

from typing import Any

from finetune_core import runs
from finetune_core.config import ConfigError, RunConfig
from finetune_core.data import DatasetNotFound, load_dataset
from finetune_core.jobs.manager import JobError
from finetune_core.models.checkpoint import (
    CheckpointError,
    InitSource,
    init_mismatch,
    load_checkpoint,
    mismatch_message,
    parse_init_from,
)
from finetune_core.models.classifier import CUSTOM
from finetune_core.runs import RunPaths
from finetune_core.store import RunRecord, RunStatus, Workspace

CONTINUE = "continue"
WARM_START = "warm-start"
CONTINUABLE = (RunStatus.SUCCEEDED, RunStatus.STOPPED)
CONTINUED_SUFFIX = " (continued)"


class LineageError(JobError):
    """A run cannot be continued or started from; the message says why and what to do."""


# ------------------------------------------------------------------ configs
def continue_config(workspace: Workspace, run_id: str, epochs: int) -> RunConfig:
    """The config of a child run that trains ``run_id``'s model ``epochs`` more epochs:
    the same settings from its last checkpoint (best when there is no last), a new
    schedule over ``epochs``, no frozen warm-up for finetune (the backbone is adapted)."""
    record = _run(workspace, run_id)
    if record.status not in CONTINUABLE:
        hint = (
            " A failed run with a saved epoch can be resumed instead."
            if record.status == RunStatus.FAILED
            else " Resume it, or wait until it has finished."
            if record.status in (*RunStatus.ACTIVE, RunStatus.INTERRUPTED)
            else ""
        )
        raise LineageError(
            f"Only succeeded or stopped runs can continue (this one is {record.status})." + hint
        )
    paths = RunPaths(workspace.run_dir(run_id))
    which = next((w for w in ("last", "best") if paths.checkpoint(w).exists()), None)
    if which is None:
        raise LineageError("This run saved no model to continue from; train a new run instead.")
    config = RunConfig.from_dict(record.config)
    name = config.name or record.name or run_id
    changes: dict[str, Any] = {
        "init_from": f"{run_id}:{which}",
        "epochs": epochs,
        "name": name if name.endswith(CONTINUED_SUFFIX) else name + CONTINUED_SUFFIX,
    }
    if config.strategy == "finetune":
        changes["freeze_epochs"] = 0
    changes.update(_custom_backbone(config.model, paths))
    return _valid(config, changes)


def warm_start_config(workspace: Workspace, source_run_id: str, config: RunConfig) -> RunConfig:
    """``config`` initialised from ``source_run_id``'s best weights, once the source is
    known to fit: the same architecture, trained on the same classes in the same order."""
    record = _run(workspace, source_run_id)
    if record.status in RunStatus.ACTIVE:
        raise LineageError(
            f"Run {source_run_id} is still {record.status.lower()}: start from it once it "
            "has finished, so its best weights are final."
        )
    paths = RunPaths(workspace.run_dir(source_run_id))
    if not paths.has_model():
        raise LineageError(f"Run {source_run_id} has no saved model to start from.")
    try:
        dataset = load_dataset(workspace, config.dataset)
        ckpt = load_checkpoint(paths.checkpoint("best"))
    except (DatasetNotFound, CheckpointError) as exc:
        raise LineageError(str(exc)) from exc
    problems = init_mismatch(ckpt, config.model, list(dataset.class_names))
    if problems:
        source = InitSource(source_run_id, paths.root, "best")
        raise LineageError(mismatch_message(source, problems))
    return _valid(config, {"init_from": source_run_id, **_custom_backbone(config.model, paths)})


def warm_start_sources(workspace: Workspace, model: str, dataset_id: str) -> list[RunRecord]:
    """Finished runs with a model that a run of ``model`` on ``dataset_id`` can start
    from: the same architecture, trained on a dataset with the same classes in the same
    order (newest first). warm_start_config checks the checkpoint itself again."""
    target = workspace.get_dataset(dataset_id)
    if target is None:
        return []
    classes: dict[str, list[str] | None] = {}

    def same_classes(record: RunRecord) -> bool:
        if record.dataset_id not in classes:
            found = workspace.get_dataset(record.dataset_id)
            classes[record.dataset_id] = found.class_names if found else None
        return classes[record.dataset_id] == target.class_names

    return [
        r
        for r in workspace.list_runs()
        if r.status not in RunStatus.ACTIVE
        and r.model == model
        and same_classes(r)
        and RunPaths(workspace.run_dir(r.id)).has_model()
    ]


def _custom_backbone(model: str, source: RunPaths) -> dict[str, str]:
    """A custom model's .pt2 backbone: the source run's own copy (the upload may be gone)."""
    if model == CUSTOM and source.backbone.is_file():
        return {"weights": str(source.backbone)}
    return {}


def _valid(config: RunConfig, changes: dict[str, Any]) -> RunConfig:
    try:
        return config.replace(**changes).validate()
    except ConfigError as exc:
        raise LineageError(str(exc)) from exc


def _run(workspace: Workspace, run_id: str) -> RunRecord:
    record = workspace.get_run(run_id)
    if record is None:
        raise LineageError(f"No run with id {run_id!r}: it may have been deleted.")
    return record


# ------------------------------------------------------------------ submitting
def submit_continue(
    manager: Any, workspace: Workspace, run_id: str, epochs: int, *, creator: str = ""
) -> str:
    """Queue the child run of :func:`continue_config`; returns its id."""
    config = continue_config(workspace, run_id, epochs)
    return manager.submit(config, creator=creator, parent_id=run_id, lineage=CONTINUE)


def submit_warm_start(
    manager: Any, workspace: Workspace, source_run_id: str, config: RunConfig, *, creator: str = ""
) -> str:
    """Queue ``config`` warm-started from ``source_run_id``'s best weights; returns its id."""
    config = warm_start_config(workspace, source_run_id, config)
    return manager.submit(config, creator=creator, parent_id=source_run_id, lineage=WARM_START)


# ------------------------------------------------------------------ reading lineage
def recorded_lineage(workspace: Workspace, run_id: str) -> dict[str, Any]:
    """What the run's training recorded about the checkpoint it started from ({} if none)."""
    info = runs.read_info(RunPaths(workspace.run_dir(run_id)))
    lineage = info.get("lineage")
    return lineage if isinstance(lineage, dict) else {}


def describe(workspace: Workspace, record: RunRecord) -> str:
    """One line on where the run's weights came from ('' for a run from scratch or
    ImageNet): "continues r-…", "warm-started from r-…"; no server paths."""
    recorded = recorded_lineage(workspace, record.id)
    parent = record.parent_id or str(recorded.get("source_run_id") or "")
    if not parent:
        return ""
    which = recorded.get("checkpoint") or parse_init_from(_init_from(record))[1]
    epoch = f", epoch {recorded['epoch']}" if recorded.get("epoch") else ""
    if record.lineage == "re-run":
        return f"re-run of {parent}"
    verb = "continues" if record.lineage == CONTINUE else "warm-started from"
    return f"{verb} {parent} (its {which} checkpoint{epoch})"


def _init_from(record: RunRecord) -> str:
    return str((record.config or {}).get("init_from") or "")


def continue_chain(workspace: Workspace, run_id: str) -> list[RunRecord]:
    """The run and the runs it continues, oldest first (warm starts end the chain)."""
    chain: list[RunRecord] = []
    record = workspace.get_run(run_id)
    seen: set[str] = set()
    while record is not None and record.id not in seen:
        chain.append(record)
        seen.add(record.id)
        if record.lineage != CONTINUE or not record.parent_id:
            break
        record = workspace.get_run(record.parent_id)
    return chain[::-1]


def lineage_history(workspace: Workspace, run_id: str) -> list[dict[str, Any]]:
    """The epoch rows of a chain of continued runs: each parent's up to the checkpoint its
    child started from, then the child's, numbered on (``epoch`` continuous; ``run_id``
    and ``run_epoch`` say whose row and which of its epochs it is)."""
    chain = continue_chain(workspace, run_id)
    out: list[dict[str, Any]] = []
    offset = 0
    for i, record in enumerate(chain):
        rows = runs.read_history(RunPaths(workspace.run_dir(record.id)))
        cut = _start_epoch(workspace, record, chain[i + 1]) if i + 1 < len(chain) else None
        if cut is not None:
            rows = [r for r in rows if int(r.get("epoch", 0)) <= cut]
        for row in rows:
            local = int(row.get("epoch", 0))
            shifted = {**row, "run_id": record.id, "run_epoch": local, "epoch": offset + local}
            if isinstance(row.get("best_epoch"), int):
                shifted["best_epoch"] = offset + row["best_epoch"]
            out.append(shifted)
        last = max((int(r.get("epoch", 0)) for r in rows), default=0)
        offset += cut if cut is not None else last
    return out


def _start_epoch(workspace: Workspace, parent: RunRecord, child: RunRecord) -> int | None:
    """The parent's epoch whose checkpoint the child started from (None: all of them)."""
    recorded = recorded_lineage(workspace, child.id).get("epoch")
    if isinstance(recorded, int):
        return recorded
    if parse_init_from(_init_from(child))[1] == "best":
        return parent.best_epoch
    return None  # last: the parent's last epoch
