"""Checkpoints: written atomically, loaded with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from finetune_core.fsutil import atomic_write

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
