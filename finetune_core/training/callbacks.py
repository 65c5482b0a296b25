"""Trainer callbacks: typed no-op hooks, plus progress, early stopping and logging.

The trainer calls ``on_*`` hooks with itself and a ``logs`` dict; callbacks read the
logs and may set ``trainer.stop_reason`` to end training after the current epoch.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from finetune_core.training.trainer import Trainer


class Callback:
    """Base class: override the hooks you need."""

    def on_fit_start(self, trainer: Trainer, logs: dict[str, Any]) -> None: ...
    def on_epoch_start(self, trainer: Trainer, logs: dict[str, Any]) -> None: ...
    def on_batch_end(self, trainer: Trainer, logs: dict[str, Any]) -> None: ...
    def on_epoch_end(self, trainer: Trainer, logs: dict[str, Any]) -> None: ...
    def on_fit_end(self, trainer: Trainer, logs: dict[str, Any]) -> None: ...
    def on_exception(self, trainer: Trainer, exc: BaseException) -> None: ...
    def on_log(self, trainer: Trainer, message: str) -> None: ...


@dataclass(frozen=True)
class Progress:
    """A frozen snapshot of a run's live state, safe to hand to the UI."""

    status: str = "QUEUED"
    phase: str = ""
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps: int = 0
    images_per_second: float | None = None
    eta_seconds: float | None = None
    elapsed_seconds: float = 0.0
    train_loss: float | None = None
    lr: float | None = None
    memory_mb: float | None = None
    best_epoch: int | None = None
    best_metric: float | None = None
    patience_left: int | None = None
    batch_size: int | None = None
    history: tuple[dict[str, Any], ...] = ()
    log: tuple[str, ...] = ()
    updated_at: float = field(default_factory=time.time)

    @property
    def fraction(self) -> float:
        if not self.epochs:
            return 0.0
        per_epoch = 1.0 / self.epochs
        within = self.step / self.steps if self.steps else 0.0
        return min(1.0, max(0, self.epoch - 1) * per_epoch + within * per_epoch)


class LiveState:
    """Lock-guarded live progress written by the worker and read by any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._progress = Progress()
        self._log: deque[str] = deque(maxlen=200)

    def update(self, **changes: Any) -> None:
        with self._lock:
            self._progress = replace(self._progress, updated_at=time.time(), **changes)

    def log(self, message: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {message}"
        with self._lock:
            self._log.append(line)
            self._progress = replace(self._progress, log=tuple(self._log))

    def snapshot(self) -> Progress:
        with self._lock:
            return self._progress


class ProgressReporter(Callback):
    """Publishes progress into a LiveState at most every ``interval`` seconds."""

    def __init__(self, state: LiveState, interval: float = 0.25) -> None:
        self.state = state
        self.interval = interval
        self._last = 0.0

    def on_fit_start(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        self.state.update(
            status="RUNNING", epochs=trainer.total_epochs, history=tuple(trainer.history)
        )

    def on_epoch_start(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        self.state.update(
            epoch=logs["epoch"], phase=logs.get("phase", ""), step=0, steps=logs.get("steps", 0)
        )

    def on_batch_end(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - self._last < self.interval and logs["step"] != logs["steps"]:
            return
        self._last = now
        self.state.update(**trainer.live_numbers(logs))

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        self.state.update(history=tuple(trainer.history), **trainer.live_numbers(logs))

    def on_log(self, trainer: Trainer, message: str) -> None:
        self.state.log(message)


class EarlyStopping(Callback):
    """Stops when the monitored metric has not improved by ``min_delta`` for ``patience`` epochs."""

    def __init__(self, metric: str = "val_loss", patience: int = 3, min_delta: float = 0.0) -> None:
        self.metric, self.patience, self.min_delta = metric, patience, min_delta
        self.mode = "min" if metric.endswith("loss") else "max"
        self.best: float | None = None
        self.bad_epochs = 0

    def improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        value = logs.get(self.metric)
        if value is None:
            return
        if self.improved(value):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.patience:
                trainer.stop_reason = (
                    f"early stopping: {self.metric} did not improve for {self.patience} epochs"
                )
        logs["patience_left"] = self.patience - self.bad_epochs

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_epochs = state.get("best"), state.get("bad_epochs", 0)


class MetricsLogger(Callback):
    """Appends one JSON line per epoch to ``metrics.jsonl``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(trainer.history[-1]) + "\n")


class ConsoleProgress(Callback):
    """A single updating progress line for the CLI."""

    def __init__(self, stream: Any = None, interval: float = 1.0) -> None:
        import sys

        self.stream = stream or sys.stderr
        self.interval = interval
        self._last = 0.0

    def on_batch_end(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        n = trainer.live_numbers(logs)
        ips = n.get("images_per_second") or 0
        eta = n.get("eta_seconds")
        eta_text = f"ETA {eta:5.0f}s" if eta is not None else ""
        self.stream.write(
            f"\repoch {logs['epoch']}/{trainer.total_epochs} step {logs['step']}/{logs['steps']} "
            f"loss {n.get('train_loss') or 0:.4f} {ips:6.1f} img/s {eta_text}   "
        )
        self.stream.flush()

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        row = trainer.history[-1]
        va = row.get("val_accuracy")
        vl = row.get("val_loss")
        self.stream.write(
            f"\repoch {row['epoch']}/{trainer.total_epochs} [{row.get('phase', '')}] "
            f"train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f}"
            + (f" | val loss {vl:.4f} acc {va:.3f}" if va is not None else "")
            + f" | {row['seconds']:.1f}s\n"
        )
        self.stream.flush()

    def on_log(self, trainer: Trainer, message: str) -> None:
        self.stream.write(f"\r{message}\n")
        self.stream.flush()
