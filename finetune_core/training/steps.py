"""Step functions, apart from the loop: one training step and one validation pass for
images (the network strategies) and for cached features (the probe).

Each takes the running Trainer and returns plain numbers; the loop decides when to call
them, the callbacks what to do with the results.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from finetune_core import device as devices
from finetune_core.data.augment import augment_normalized, normalize
from finetune_core.models import inference
from finetune_core.training import ddp


def image_train_step(t: Any, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Forward, backward and optimizer step on the training images ``idx``; the loss."""
    cfg, dev = t.cfg, t.device
    xb = t.train_data.take(idx).to(dev, non_blocking=True)
    yb = t.train_data.labels[idx].to(dev, non_blocking=True)
    xb = augment_normalized(xb, cfg.augmentation, t.mean, t.std, gen)
    if cfg.channels_last:
        xb = xb.contiguous(memory_format=torch.channels_last)
    with devices.autocast(dev, t.amp_dtype):
        if t.frozen_backbone:  # only the head trains: no graph through the backbone
            with torch.no_grad():
                feats = t.model.backbone(xb)
            out = t.model.head(feats.float())
        else:
            out = (t.ddp_model or t.model)(xb)
    loss = F.cross_entropy(
        out.float(), yb, weight=t.class_weights, label_smoothing=cfg.label_smoothing
    )
    t.optimizer.zero_grad(set_to_none=True)
    t.scaler.scale(loss).backward()
    if cfg.grad_clip:
        t.scaler.unscale_(t.optimizer)
        nn.utils.clip_grad_norm_(t.model.parameters(), cfg.grad_clip)
    t.scaler.step(t.optimizer)
    t.scaler.update()
    t.tally(loss.detach(), (out.detach().argmax(1) == yb).sum(), len(idx))
    return loss


def feature_train_step(t: Any, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One optimizer step of the head on a batch of standardised features; the loss."""
    cfg = t.cfg
    fb, yb = feats.to(t.device), labels.to(t.device)
    out = t.model.head(fb)
    loss = F.cross_entropy(out, yb, weight=t.class_weights, label_smoothing=cfg.label_smoothing)
    t.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    t.optimizer.step()
    t.tally(loss.detach(), (out.detach().argmax(1) == yb).sum(), len(yb))
    return loss


@torch.no_grad()
def validate_images(t: Any) -> dict[str, float | None]:
    """Validation loss and accuracy of the current weights on the validation images.

    Computed as evaluation computes them (``models.inference``: fp32 whatever the
    training precision, the same batches, the same loss), so the best epoch's figures
    are the evaluation's figures of the checkpoint saved for it.
    """
    data = t.val_data
    if not len(data):
        return {"val_loss": None, "val_accuracy": None}
    t.model.eval()
    rows = torch.arange(len(data))
    if t.dist.enabled:  # rank 0's model everywhere, each rank a share of the images
        ddp.broadcast_buffers(t.model, t.dist)
        rows = rows[t.dist.rank :: t.dist.world_size]
    rows = rows.to(data.labels.device)
    chunks = []
    # DDP registers the parameters' storage: its model keeps its layout.
    with contextlib.nullcontext() if t.dist.enabled else inference.standard_layout(t.model):
        for start in range(0, len(rows), inference.INFERENCE_BATCH):
            chunk = rows[start : start + inference.INFERENCE_BATCH]
            chunks.append(
                inference.probabilities(t.model, data.take(chunk), t.mean, t.std, t.device)
            )
    probs = np.concatenate(chunks)
    y = data.labels[rows].cpu().numpy()
    return split_numbers(t, y, probs)


def split_numbers(t: Any, y: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
    """val_loss and val_accuracy from probabilities, summed over ranks under DDP."""
    if not t.dist.enabled:
        return {
            "val_loss": inference.log_loss(y, probs),
            "val_accuracy": inference.correct(y, probs) / len(y),
        }
    total_loss, hits, n = ddp.all_sum(
        [inference.loss_sum(y, probs), float(inference.correct(y, probs)), float(len(y))], t.dist
    )
    return {"val_loss": total_loss / n, "val_accuracy": hits / n}


@torch.no_grad()
def validate_features(t: Any, feats: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Validation loss and accuracy of the head on raw (fp32) validation features.

    The caller folds the feature standardisation into the head first, so this is the
    checkpoint's head on the checkpoint's features: evaluation's numbers.
    """
    if not len(feats):
        return {"val_loss": None, "val_accuracy": None}
    t.model.head.eval()
    probs = inference.softmax(inference.run_fp32(t.model.head, feats, t.device))
    return split_numbers(t, labels.cpu().numpy(), probs)


@torch.no_grad()
def extract_val_features(t: Any, xb: torch.Tensor) -> torch.Tensor:
    """Backbone features of un-augmented validation images, as evaluation computes them
    (the caller holds the model in ``inference.standard_layout`` for the whole pass)."""
    mean, std = t.mean, t.std
    return inference.run_fp32(
        t.model.features, xb, t.device, prepare=lambda x: normalize(x, mean, std)
    )


@torch.no_grad()
def extract_step(t: Any, xb: torch.Tensor, *, augment: bool, gen: torch.Generator) -> torch.Tensor:
    """Backbone features (float32, on the CPU) of a uint8 image batch."""
    cfg = t.cfg
    xb = xb.to(t.device)
    if augment:
        xb = augment_normalized(xb, cfg.augmentation, t.mean, t.std, gen)
    else:
        xb = normalize(xb, t.mean, t.std)
    if cfg.channels_last:
        xb = xb.contiguous(memory_format=torch.channels_last)
    with devices.autocast(t.device, t.amp_dtype):
        out = t.model.features(xb)
    return out.float().cpu()


PRECISE_BN_IMAGES = 1024


@torch.no_grad()
def refresh_batchnorm(t: Any, max_images: int = PRECISE_BN_IMAGES) -> None:
    """Recompute the trainable BatchNorm layers' running statistics on training images.

    A network trained from scratch changes faster than BatchNorm's running averages
    follow (momentum 0.1), so validating with them understates the model and makes the
    best epoch a matter of numerical noise. Averaging the statistics of the current
    weights over up to ``max_images`` un-augmented training images ("precise BN") makes
    validation, the saved checkpoint and evaluation see the model as it is.
    """
    layers = [
        m
        for m in t.model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and m.track_running_stats
        and any(p.requires_grad for p in m.parameters(recurse=False))
    ]
    if not layers:
        return
    momenta = [m.momentum for m in layers]
    was_training = t.model.training
    t.model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
        m.train()
    data, bs = t.train_data, max(t.batch_size, 32)
    n = min(len(data), max_images)
    try:
        for start in range(0, n, bs):
            rows = torch.arange(start, min(n, start + bs), device=data.labels.device)
            if len(rows) < 2 and start:  # BatchNorm cannot take a batch of one
                break
            xb = normalize(data.take(rows).to(t.device), t.mean, t.std)
            if t.cfg.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with devices.autocast(t.device, t.amp_dtype):
                t.model(xb)
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
        t.model.train(was_training)
