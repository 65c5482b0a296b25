"""Setting up a run before the loop: seeds, threads, device, the model, the decoded data
and the batch size. Functions of the Trainer they set up, kept apart from the loop."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finetune_core import device as devices
from finetune_core.data.cache import decoded_split
from finetune_core.models.classifier import build_classifier
from finetune_core.training import ddp
from finetune_core.training.callbacks import TrainingError
from finetune_core.training.phases import MIN_BATCH_SIZE

AUTO_BATCH_CPU = 32
AUTO_BATCH_GPU_START = 512


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(t: Any) -> None:
    cfg = t.cfg
    seed_everything(cfg.seed)
    devices.set_threads(ddp.threads_per_rank(cfg.num_threads, t.dist))
    t.device = ddp.rank_device(devices.resolve_device(cfg.device), t.dist)
    t.amp_dtype = devices.resolve_precision(cfg.mixed_precision, t.device)
    if t.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick kernels
    t.class_names = list(t.dataset.class_names)
    weights = cfg.weights
    if weights.endswith(".pt2") and t.persist:
        # Keep the backbone with the run so evaluation and export never depend on the upload.
        local = t.paths.backbone
        if Path(weights).resolve() != local.resolve():
            shutil.copyfile(weights, local)
        weights = str(local)
    t.model, report = build_classifier(
        cfg.model,
        len(t.class_names),
        weights,
        dropout=cfg.dropout,
        image_size=cfg.image_size,
        progress=lambda done, total: t.setup_progress("downloading weights", done, total),
    )
    if report.message:
        t.log(report.message)
    t.model.to(t.device)
    if cfg.channels_last and t.device.type != "mps":
        t.model.to(memory_format=torch.channels_last)
    t.mean = torch.tensor(t.model.mean, device=t.device)
    t.std = torch.tensor(t.model.std, device=t.device)
    t.groups = t.model.param_groups()
    t.log(
        f"model {cfg.model} ({sum(p.numel() for p in t.model.parameters()) / 1e6:.1f}M "
        f"params) on {t.device}, precision {t.amp_dtype or 'fp32'}, "
        f"{len(t.groups)} groups"
    )


def load_data(t: Any) -> None:
    size = t.cfg.image_size
    t.train_data = decoded_split(
        t.dataset, "train", size, t.cache_dir,
        progress=lambda d, n: t.setup_progress("decoding train images", d, n),
    )  # fmt: skip
    t.val_data = decoded_split(
        t.dataset, "val", size, t.cache_dir,
        progress=lambda d, n: t.setup_progress("decoding validation images", d, n),
    )  # fmt: skip
    if len(t.train_data) == 0:
        raise TrainingError("The dataset has no training images; add images or re-split it.")
    if len(t.val_data) == 0:
        t.log("warning: no validation images; the best epoch is chosen by training loss")
    if t.device.type == "cuda":
        move_cache_to_gpu(t)
    t.class_counts = torch.bincount(t.train_data.labels.cpu(), minlength=len(t.class_names)).float()
    t.class_weights = criterion_weights(t)
    t.log(f"cached {len(t.train_data)} train and {len(t.val_data)} val images at {size}px")


def move_cache_to_gpu(t: Any) -> None:
    """Keep the uint8 cache on the GPU when it fits easily: no host-to-device copy per batch."""
    free, _ = torch.cuda.mem_get_info(t.device)
    for data in (t.train_data, t.val_data):
        if data.images.numel() < 0.25 * free:
            data.images = data.images.to(t.device)
            data.labels = data.labels.to(t.device)
        elif not data.memory_mapped:
            data.images = data.images.pin_memory()


def criterion_weights(t: Any) -> torch.Tensor | None:
    if t.cfg.class_balance != "weighted_loss":
        return None
    counts = t.class_counts.clamp(min=1)
    return (counts.sum() / (len(counts) * counts)).to(t.device)


def initial_batch_size(t: Any) -> int:
    bs = t.cfg.batch_size
    if bs == "auto":
        # On a GPU start big and let the OOM handler halve; on CPU larger batches do not
        # run faster, they only cost memory.
        bs = AUTO_BATCH_GPU_START if t.device.type == "cuda" else AUTO_BATCH_CPU
    bs = max(1, min(int(bs), len(t.train_data)))
    if t.dist.enabled and bs < MIN_BATCH_SIZE * t.dist.world_size:
        raise TrainingError(
            f"The batch of {bs} is split across {t.dist.world_size} processes and each "
            f"needs at least {MIN_BATCH_SIZE} images: use a larger batch (and dataset) or "
            "fewer devices."
        )
    return bs
