"""The on-disk cache of frozen-backbone features (the probe strategy).

The features are computed by the loop's extraction phases (``phases.ExtractPhase``);
this module decides when two extractions are the same (the cache key) and reads and
writes the cache files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from finetune_core import device as devices
from finetune_core.data.preprocess import PREPROCESS_VERSION
from finetune_core.fsutil import atomic_write
from finetune_core.models.inference import INFERENCE_BATCH

# Evaluation's batches: validation features then match evaluation's to the bit.
FEATURE_BATCH = INFERENCE_BATCH


def weights_identity(weights: str) -> str:
    """What makes two backbones equal: the source name, or a file's content hash."""
    path = Path(weights)
    if weights in ("imagenet", "none") or not path.is_file():
        return weights
    h = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def feature_cache_path(trainer: Any, split: str, views: int) -> Path:
    cfg = trainer.cfg
    key = {
        "dataset": trainer.dataset.fingerprint,
        "split": split,
        "paths": hashlib.sha256(
            "\n".join(getattr(trainer, f"{split}_data").paths).encode()
        ).hexdigest(),
        "model": cfg.model,
        "weights": weights_identity(trainer.cfg.weights),
        # random-init backbones differ per seed; pretrained ones do not
        "seed": cfg.seed if cfg.weights == "none" or views > 1 else None,
        "size": cfg.image_size,
        "views": views,
        "augmentation": cfg.augmentation if views > 1 else "none",
        # validation features are computed as evaluation computes them (steps.extract_val_features)
        "precision": devices.INFERENCE_PRECISION if split == "val" else str(trainer.amp_dtype),
        "channels_last": cfg.channels_last and split != "val",
        "preprocess": PREPROCESS_VERSION,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return trainer.cache_dir / "features" / f"{cfg.model}-{split}-{digest}.pt"


def read_feature_cache(path: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(features, labels) from a cache file, or None when missing, damaged or not ours."""
    if not path.exists():
        return None
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
        features, labels = cached["features"], cached["labels"]
    except Exception:  # truncated, foreign or hostile (refused by weights_only)
        return None
    if not (torch.is_tensor(features) and torch.is_tensor(labels)) or len(features) != len(labels):
        return None
    return features, labels


def write_feature_cache(path: Path, features: torch.Tensor, labels: torch.Tensor) -> None:
    atomic_write(path, lambda h: torch.save({"features": features, "labels": labels}, h))
