"""Learning-rate finder: an exponential sweep of the rate over a few mini-batches.

The model trains what the run's first phase trains (the head for probe and
fine-tune, as fastai's lr_find does on a frozen learner; everything for full);
the loss curve is smoothed and the suggestion is the rate of steepest descent.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from finetune_core import device as devices
from finetune_core.config import RunConfig
from finetune_core.data.augment import augment_normalized
from finetune_core.training.schedules import build_optimizer
from finetune_core.training.trainer import Trainer


@dataclass
class LRFinderResult:
    lrs: list[float]
    losses: list[float]  # smoothed
    suggested: float | None
    note: str = ""


def suggest_lr(lrs: list[float], losses: list[float]) -> float | None:
    """The rate where the smoothed loss falls fastest (before it blows up)."""
    if len(losses) < 5:
        return None
    cut = int(min(range(len(losses)), key=losses.__getitem__))
    if losses[cut] > 0.95 * losses[0]:
        return None  # the loss never really fell: no rate to recommend
    if cut < 3:
        return lrs[max(0, cut)] / 10
    logs = [math.log10(x) for x in lrs[: cut + 1]]
    slopes = [(losses[i + 1] - losses[i - 1]) / (logs[i + 1] - logs[i - 1]) for i in range(1, cut)]
    best = min(range(len(slopes)), key=slopes.__getitem__) + 1
    return lrs[best]


def find_lr(
    config: RunConfig,
    dataset: Any,
    cache_dir: Path,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 60,
    progress: Callable[[int, int], None] | None = None,
    stop_event: threading.Event | None = None,
) -> LRFinderResult:
    """Sweep the learning rate from ``start_lr`` to ``end_lr``; leaves no files but caches."""

    probe = Trainer(config, dataset, Path(cache_dir) / "lr_finder", cache_dir)
    probe.run_dir.mkdir(parents=True, exist_ok=True)
    probe._setup()
    probe._load_data()
    probe.batch_size = probe._initial_batch_size()
    cfg, dev = probe.cfg, probe.device
    first = probe._phases()[0]
    probe._set_trainable(first.trainable)
    params = [probe.groups[i] for i in first.trainable]
    opt = build_optimizer(cfg, params, [start_lr] * len(params))
    gamma = (end_lr / start_lr) ** (1 / max(1, num_steps - 1))
    gen = torch.Generator().manual_seed(cfg.seed)
    labels = probe.train_data.labels
    n = len(labels)
    lrs: list[float] = []
    smoothed: list[float] = []
    avg, beta, best = 0.0, 0.9, math.inf
    probe._train_mode()
    for step in range(num_steps):
        lr = start_lr * gamma**step
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, n, (min(probe.batch_size, n),), generator=gen)
        xb = augment_normalized(
            probe.train_data.take(idx).to(dev), cfg.augmentation, probe.mean, probe.std, gen
        )
        yb = labels[idx].to(dev)
        with devices.autocast(dev, probe.amp_dtype):
            out = probe.model(xb)
        loss = F.cross_entropy(out.float(), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            break
        avg = beta * avg + (1 - beta) * value
        smooth = avg / (1 - beta ** (step + 1))
        lrs.append(lr)
        smoothed.append(smooth)
        best = min(best, smooth)
        if progress:
            progress(step + 1, num_steps)
        if smooth > 4 * best or (stop_event is not None and stop_event.is_set()):
            break
    suggested = suggest_lr(lrs, smoothed)
    note = (
        ""
        if suggested
        else "The loss did not fall during the sweep (or it was too short), so there is no "
        "rate to suggest; keep the default."
    )
    return LRFinderResult(lrs, smoothed, suggested, note)
