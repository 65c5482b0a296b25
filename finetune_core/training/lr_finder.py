"""Learning-rate finder: an exponential sweep of the rate, as a callback on the loop.

The sweep trains what the run's first training phase trains (the head on cached
features for the probe; the head for fine-tune, as fastai's lr_find does on a frozen
learner; everything for full) with the rate rising from ``start_lr`` to ``end_lr`` over
``num_steps`` batches; the loss curve is smoothed and the suggestion is the rate of
steepest descent. Nothing is written to a run folder (``Trainer(persist=False)``).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_core.config import RunConfig
from finetune_core.training.events import Callback, StopTraining
from finetune_core.training.trainer import Trainer

SMOOTHING = 0.9


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


class LRSweep(Callback):
    """Sets an exponentially rising rate before each training batch and records the
    smoothed loss after it; stops when the sweep is done or the loss blows up."""

    order = 60

    def __init__(
        self,
        start_lr: float,
        end_lr: float,
        num_steps: int,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.start_lr, self.num_steps, self.progress = start_lr, num_steps, progress
        self.gamma = (end_lr / start_lr) ** (1 / max(1, num_steps - 1))
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self._avg, self._best = 0.0, math.inf

    def before_batch(self, trainer: Any) -> None:
        if not trainer.phase.trains:
            return
        trainer.lr = self.start_lr * self.gamma ** len(self.lrs)
        for group in trainer.optimizer.param_groups:
            group["lr"] = trainer.lr

    def after_batch(self, trainer: Any) -> None:
        if not trainer.phase.trains:
            return
        value = float(trainer.loss.detach())
        if not math.isfinite(value):
            raise StopTraining("the loss blew up")
        self._avg = SMOOTHING * self._avg + (1 - SMOOTHING) * value
        smooth = self._avg / (1 - SMOOTHING ** (len(self.lrs) + 1))
        self.lrs.append(trainer.lr)
        self.losses.append(smooth)
        self._best = min(self._best, smooth)
        if self.progress:
            self.progress(len(self.lrs), self.num_steps)
        if len(self.lrs) >= self.num_steps or smooth > 4 * self._best:
            raise StopTraining("the sweep is complete")


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
    sweep = LRSweep(start_lr, end_lr, num_steps, progress)
    # Enough epochs of the first phase for the sweep, whatever the dataset's size.
    first = config.freeze_epochs if config.strategy == "finetune" and config.freeze_epochs else 0
    sweep_config = config.replace(
        epochs=10_000, freeze_epochs=10_000 if first else 0, early_stopping=False
    )
    run_dir = Path(cache_dir) / "lr_finder"
    run_dir.mkdir(parents=True, exist_ok=True)
    Trainer(
        sweep_config, dataset, run_dir, cache_dir, callbacks=[sweep], stop_event=stop_event,
        persist=False,
    ).fit()  # fmt: skip
    suggested = suggest_lr(sweep.lrs, sweep.losses)
    note = (
        ""
        if suggested
        else "The loss did not fall during the sweep (or it was too short), so there is no "
        "rate to suggest; keep the default."
    )
    return LRFinderResult(sweep.lrs, sweep.losses, suggested, note)
