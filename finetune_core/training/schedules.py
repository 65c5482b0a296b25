"""Optimizers and learning-rate schedules for one training phase.

Schedules are functions of the phase's progress (0 to 1) rather than of a step count,
so halving the batch size after an out-of-memory error, or resuming mid-phase, keeps
the same curve without replaying steps.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from finetune_core.config import RunConfig

ONECYCLE_DIV = 25.0
ONECYCLE_FINAL_DIV = 1e4


def discriminative_lrs(max_lr: float, n_groups: int, lr_mult: float) -> list[float]:
    """Geometric learning rates from ``max_lr / lr_mult`` (first group) to ``max_lr`` (last)."""
    if n_groups == 1:
        return [max_lr]
    low = max_lr / lr_mult
    return [low * (max_lr / low) ** (i / (n_groups - 1)) for i in range(n_groups)]


def build_optimizer(
    cfg: RunConfig, groups: list[list[nn.Parameter]], lrs: list[float]
) -> torch.optim.Optimizer:
    param_groups = [
        {"params": params, "lr": lr, "max_lr": lr}
        for params, lr in zip(groups, lrs, strict=True)
        if params
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            param_groups, lr=lrs[-1], momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.AdamW(param_groups, lr=lrs[-1], weight_decay=cfg.weight_decay)


def lr_factor(kind: str, progress: float, warmup_pct: float) -> float:
    """Multiplier of the peak learning rate at ``progress`` in [0, 1] of a phase."""
    t = min(1.0, max(0.0, progress))
    if kind == "onecycle":
        start, end = 1 / ONECYCLE_DIV, 1 / (ONECYCLE_DIV * ONECYCLE_FINAL_DIV)
        if warmup_pct and t < warmup_pct:
            return start + (1 - start) * 0.5 * (1 - math.cos(math.pi * t / warmup_pct))
        u = (t - warmup_pct) / max(1e-9, 1 - warmup_pct)
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * u))
    if warmup_pct and t < warmup_pct:
        return max(t / warmup_pct, 0.01)
    if kind == "constant":
        return 1.0
    u = (t - warmup_pct) / max(1e-9, 1 - warmup_pct)
    return 0.5 * (1 + math.cos(math.pi * u))


class LRSchedule:
    """Sets every group's learning rate from the phase progress."""

    def __init__(
        self, cfg: RunConfig, optimizer: torch.optim.Optimizer, first_epoch: int, epochs: int
    ) -> None:
        self.kind, self.warmup = cfg.schedule, cfg.warmup_pct
        self.optimizer = optimizer
        self.first_epoch, self.epochs = first_epoch, epochs

    def at(self, epoch: int, step: int, steps: int) -> float:
        """Set the rates for ``step`` of ``steps`` in ``epoch``; returns the last group's rate."""
        return self.set((epoch - self.first_epoch + step / max(1, steps)) / self.epochs)

    def set(self, progress: float) -> float:
        f = lr_factor(self.kind, progress, self.warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = group["max_lr"] * f
        return self.optimizer.param_groups[-1]["lr"]

    def annealing(self, epoch: int) -> bool:
        """At the end of ``epoch``: past the warm-up and, unless the schedule is constant,
        down to half the peak rate (early stopping waits for this)."""
        progress = (epoch - self.first_epoch + 1) / self.epochs
        if progress <= self.warmup:
            return False
        return self.kind == "constant" or lr_factor(self.kind, progress, self.warmup) <= 0.5
