"""Checkpoints: written atomically, loaded with ``weights_only=True``; and the checkpoint
a run starts from (``RunConfig.init_from``: another run's best or last), checked to fit."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from finetune_core.fsutil import atomic_write
from finetune_core.runs import RunPaths, read_info
from finetune_core.store import Workspace

FORMAT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint is missing, truncated or not one of ours; the message says which."""


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` via a temp file + ``os.replace``: never half a file."""
    payload = {"format": FORMAT_VERSION, **payload}
    path = Path(path)
    # A process killed mid-write leaves its temp file behind; one writer per run owns them.
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    atomic_write(path, lambda handle: torch.save(payload, handle))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"No checkpoint at {path.name}: the run has not saved one yet.")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, pickle refused by weights_only, ...
        raise CheckpointError(
            f"The checkpoint {path.name} cannot be read ({type(exc).__name__}); "
            "it may be truncated or not a Finetune Dashboard checkpoint."
        ) from exc
    if not isinstance(data, dict) or "model_state" not in data:
        raise CheckpointError(f"{path.name} is not a Finetune Dashboard checkpoint.")
    return data


# ------------------------------------------------------------------ warm start (init_from)
INIT_CHECKPOINTS = ("best", "last")


@dataclass(frozen=True)
class InitSource:
    """Where a run's initial weights come from: ``RunConfig.init_from`` resolved."""

    run_id: str  # the workspace run id ('' when the folder is no workspace's run)
    folder: Path
    which: str  # best | last

    @property
    def path(self) -> Path:
        return RunPaths(self.folder).checkpoint(self.which)

    @property
    def label(self) -> str:
        return f"run {self.run_id or self.folder.name}"


def parse_init_from(value: str) -> tuple[str, str]:
    """``"r-1"`` / ``"r-1:last"`` / ``"/runs/a:best"`` -> (run id or folder, checkpoint);
    the best checkpoint unless ``:last`` (or ``:best``) ends the value."""
    text = value.strip()
    ref, sep, which = text.rpartition(":")
    if sep and ref and which in INIT_CHECKPOINTS:
        return ref, which
    return text, "best"


def resolve_init_from(value: str, workspace: Workspace | None) -> InitSource:
    """The run folder and checkpoint ``value`` names: a run id of ``workspace`` first,
    else a run folder on disk. Raises CheckpointError saying what to give instead."""
    ref, which = parse_init_from(value)
    if workspace is not None and _is_run_id(ref) and workspace.get_run(ref) is not None:
        return InitSource(ref, workspace.run_dir(ref), which)
    folder = Path(ref).expanduser()
    if folder.is_dir() and (RunPaths(folder).is_run() or RunPaths(folder).checkpoints.is_dir()):
        folder = folder.resolve()
        record = workspace.find_run_by_folder(folder) if workspace is not None else None
        run_id = record.id if record else str(read_info(RunPaths(folder)).get("run_id") or "")
        return InitSource(run_id, folder, which)
    raise CheckpointError(
        f"Cannot start from {ref!r}: it is neither a run of this workspace nor a run folder. "
        "Give a run id (r-…, see the Runs page or `runs list`), optionally with :last, or "
        "the folder a training run wrote."
    )


def _is_run_id(ref: str) -> bool:
    return bool(ref) and all(c.isalnum() or c in "-_" for c in ref)


def init_mismatch(ckpt: dict[str, Any], arch: str, class_names: list[str]) -> list[str]:
    """How the checkpoint differs from the model a run builds ([] when it fits)."""
    problems: list[str] = []
    source_arch = str(ckpt.get("arch", "?"))
    if source_arch != arch:
        problems.append(f"it is a {source_arch} model and this run builds {arch}")
    source_classes = [str(c) for c in ckpt.get("class_names", [])]
    if source_classes != list(class_names):
        if sorted(source_classes) == sorted(class_names):
            problems.append(
                f"it has the same classes in another order ({', '.join(source_classes)}; "
                f"this dataset: {', '.join(class_names)})"
            )
        else:
            missing = [c for c in class_names if c not in source_classes]
            extra = [c for c in source_classes if c not in class_names]
            parts = [f"classes {', '.join(source_classes) or '(none)'}"]
            if missing:
                parts.append(f"lacking {', '.join(missing)}")
            if extra:
                parts.append(f"with {', '.join(extra)} that this dataset does not have")
            problems.append("it was trained on " + ", ".join(parts))
    return problems


def mismatch_message(source: InitSource, problems: list[str]) -> str:
    """The user's sentence for :func:`init_mismatch`'s problems."""
    return (
        f"Cannot start from {source.label}: {'; '.join(problems)}. Choose a run with the "
        "same model trained on the same classes (in the same order), or start without "
        "'start from' (init_from)."
    )


def load_init_checkpoint(
    source: InitSource, arch: str, class_names: list[str], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """The source's checkpoint (``weights_only=True``) once it fits ``arch`` and
    ``class_names``; CheckpointError with what differs and what to do otherwise."""
    if not source.path.exists():
        other = "last" if source.which == "best" else "best"
        hint = (
            f" it has a {other} checkpoint: use {source.run_id or source.folder}:{other}."
            if RunPaths(source.folder).checkpoint(other).exists()
            else " it has saved no epoch yet: choose a run with a model."
        )
        raise CheckpointError(
            f"Cannot start from {source.label}: no {source.which} checkpoint;" + hint
        )
    ckpt = load_checkpoint(source.path, map_location=map_location)
    problems = init_mismatch(ckpt, arch, class_names)
    if problems:
        raise CheckpointError(mismatch_message(source, problems))
    return ckpt


def state_mismatch(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> list[str]:
    """Tensors of ``target`` (a model's state_dict) that ``state`` lacks or has in
    another shape, and the ones ``state`` has beyond it."""
    out = [f"{k} missing" for k in target if k not in state]
    out += [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in target.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    out += [f"{k} unexpected" for k in state if k not in target]
    return out


def checkpoint_val_accuracy(ckpt: dict[str, Any]) -> float | None:
    """The validation accuracy of the checkpoint's own epoch (its history row), else the
    best so far it recorded."""
    epoch = ckpt.get("epoch")
    for row in reversed(ckpt.get("history") or []):
        if row.get("epoch") == epoch and isinstance(row.get("val_accuracy"), (int, float)):
            return float(row["val_accuracy"])
    best = (ckpt.get("callbacks") or {}).get("best") or {}
    value = best.get("val_accuracy")
    return float(value) if isinstance(value, (int, float)) else None


def file_digest(path: Path) -> str:
    """A short content hash (what makes two checkpoints the same weights)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
