"""Frozen-backbone features, computed once and cached on disk for the probe strategy."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from finetune_core import device as devices
from finetune_core.data.augment import augment_normalized, normalize
from finetune_core.data.cache import DecodedImages
from finetune_core.fsutil import atomic_write

if TYPE_CHECKING:
    from finetune_core.training.trainer import Trainer

FEATURE_BATCH = 64


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


def feature_cache_path(trainer: Trainer, split: str, views: int) -> Path:
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
        "precision": str(trainer.amp_dtype),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return trainer.cache_dir / "features" / f"{cfg.model}-{split}-{digest}.pt"


def _read_cache(path: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(features, labels) from a cache file, or None when it is damaged or not ours."""
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
        features, labels = cached["features"], cached["labels"]
    except Exception:  # truncated, foreign or hostile (refused by weights_only)
        return None
    if not (torch.is_tensor(features) and torch.is_tensor(labels)) or len(features) != len(labels):
        return None
    return features, labels


@torch.no_grad()
def extract_features(
    trainer: Trainer, data: DecodedImages, *, views: int, split: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N*views, D) float32 features and labels for ``data``, from the disk cache when present."""
    path = feature_cache_path(trainer, split, views)
    if path.exists():
        cached = _read_cache(path)
        if cached is not None:
            trainer.log(f"{split} features loaded from cache ({len(cached[1])} rows)")
            return cached
        trainer.log(f"{split} feature cache {path.name} is unreadable: computing it again")
    model, dev, cfg = trainer.model, trainer.device, trainer.cfg
    model.eval()
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(data)
    total = n * views
    steps = -(-total // FEATURE_BATCH) if total else 0
    feats: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    step = 0
    trainer._emit(
        "on_epoch_start", {"epoch": 0, "phase": f"extracting {split} features", "steps": steps}
    )
    for view in range(views):
        for start in range(0, n, FEATURE_BATCH):
            xb = data.take(slice(start, start + FEATURE_BATCH)).to(dev)
            if view == 0:
                xb = normalize(xb, trainer.mean, trainer.std)
            else:
                xb = augment_normalized(xb, cfg.augmentation, trainer.mean, trainer.std, gen)
            if cfg.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with devices.autocast(dev, trainer.amp_dtype):
                out = model.features(xb)
            feats.append(out.float().cpu())
            labels.append(data.labels[start : start + FEATURE_BATCH])
            trainer._images_seen += len(xb)
            step += 1
            trainer._emit("on_batch_end", {"epoch": 0, "step": step, "steps": steps})
            if trainer.stop_event.is_set():
                return torch.empty(0), torch.empty(0, dtype=torch.long)
    if feats:
        features, label_t = torch.cat(feats), torch.cat(labels)
    else:
        features, label_t = torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    atomic_write(path, lambda h: torch.save({"features": features, "labels": label_t}, h))
    trainer.log(f"{split} features computed: {tuple(features.shape)}")
    return features, label_t
