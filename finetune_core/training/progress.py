"""Live progress of a run: the snapshot the UI reads, its pace and ETA, and where it goes.

``Progress`` is a frozen snapshot; ``LiveState`` holds the current one behind a lock
(the job manager's thread writes, pages read); ``ProgressReporter`` publishes the
trainer's numbers into a LiveState; ``ProgressFile`` writes them to the run folder's
progress file for readers in other processes (torchrun ranks, a restarted server).
``Pace`` is the one place that turns steps and seconds into images/s and an ETA.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from finetune_core.fsutil import atomic_write_json, read_json
from finetune_core.runs import RunPaths
from finetune_core.training.events import Callback


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


class Pace:
    """Images per second (smoothed) and the time left, from the loop's counters."""

    def __init__(self) -> None:
        self.images_seen = 0
        self.rate: float | None = None
        self._mark = (time.monotonic(), 0)
        self.epoch_started = time.monotonic()
        self.last_epoch_seconds: float | None = None

    def start_epoch(self) -> None:
        self.epoch_started = time.monotonic()

    def end_epoch(self) -> float:
        self.last_epoch_seconds = time.monotonic() - self.epoch_started
        return self.last_epoch_seconds

    def images_per_second(self) -> float | None:
        now = time.monotonic()
        mark_t, mark_n = self._mark
        if now - mark_t > 0.2 and self.images_seen > mark_n:
            rate = (self.images_seen - mark_n) / (now - mark_t)
            self.rate = rate if self.rate is None else 0.5 * self.rate + 0.5 * rate
            self._mark = (now, self.images_seen)
        return self.rate

    def eta(
        self, *, step: int, steps: int, epochs_left: int, elapsed: float, done: float
    ) -> float | None:
        """Seconds left: this epoch's remaining steps plus ``epochs_left`` whole epochs.

        The first steps of an epoch say little about its pace, so until three steps are
        timed the last epoch's pace is used, or, in the first epoch, the run's overall pace
        (``done`` is the fraction of the run finished, ``elapsed`` its seconds).
        """
        if not steps:
            return None
        if step >= 3:
            per_step = (time.monotonic() - self.epoch_started) / step
        elif self.last_epoch_seconds is not None:
            per_step = self.last_epoch_seconds / steps
        elif step:
            per_step = (time.monotonic() - self.epoch_started) / step
        elif done > 0.02 and elapsed:
            return elapsed * (1 - done) / done
        else:
            return None
        return ((steps - step) + epochs_left * steps) * per_step


class ProgressReporter(Callback):
    """Publishes the trainer's live numbers into a LiveState at most every ``interval`` s."""

    order = 80

    def __init__(self, state: LiveState, interval: float = 0.25) -> None:
        self.state = state
        self.interval = interval
        self._last = 0.0

    def before_fit(self, trainer: Any) -> None:
        self.state.update(
            status="RUNNING", epochs=trainer.total_epochs, history=tuple(trainer.history)
        )

    def before_pass(self, trainer: Any) -> None:
        self.state.update(**trainer.live_numbers())

    before_epoch = before_pass

    def after_batch(self, trainer: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.interval and trainer.step + 1 != trainer.steps:
            return
        self._last = now
        self.state.update(**trainer.live_numbers())

    def after_epoch(self, trainer: Any) -> None:
        self.state.update(history=tuple(trainer.history), **trainer.live_numbers())

    def on_setup(self, trainer: Any, what: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last < self.interval and done != total:
            return
        self._last = now
        self.state.update(phase=what, step=done, steps=total)

    def on_log(self, trainer: Any, message: str) -> None:
        self.state.log(message)


class ProgressFile(ProgressReporter):
    """Live progress written atomically to the run folder's progress file.

    Same fields as :class:`Progress` (history included), plus ``log_total`` so a reader
    can tell which log lines are new.
    """

    def __init__(self, run_dir: Path, interval: float = 0.25) -> None:
        super().__init__(LiveState(), interval)
        self.path = RunPaths(run_dir).progress
        self.log_total = 0
        self._written = 0.0

    def _flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._written < self.interval:
            return
        self._written = now
        data = progress_to_dict(self.state.snapshot())
        data["log_total"] = self.log_total
        atomic_write_json(self.path, data)

    def before_fit(self, trainer: Any) -> None:
        super().before_fit(trainer)
        self._flush(force=True)

    def before_pass(self, trainer: Any) -> None:
        super().before_pass(trainer)
        self._flush()

    before_epoch = before_pass

    def after_batch(self, trainer: Any) -> None:
        super().after_batch(trainer)
        self._flush()

    def on_setup(self, trainer: Any, what: str, done: int, total: int) -> None:
        super().on_setup(trainer, what, done, total)
        self._flush(force=done == total)

    def after_epoch(self, trainer: Any) -> None:
        super().after_epoch(trainer)
        self._flush(force=True)

    def after_fit(self, trainer: Any) -> None:
        self.state.update(status=trainer.status)
        self._flush(force=True)

    def on_exception(self, trainer: Any, exc: BaseException) -> None:
        self.state.update(status="FAILED")
        self.on_log(trainer, f"failed: {exc}")

    def on_log(self, trainer: Any, message: str) -> None:
        super().on_log(trainer, message)
        self.log_total += 1
        self._flush(force=True)


# ---------------------------------------------------------------------- the progress file
_PROGRESS_FIELDS = {f.name for f in fields(Progress)}


def progress_to_dict(progress: Progress) -> dict[str, Any]:
    data = asdict(progress)
    data["history"] = list(progress.history)
    data["log"] = list(progress.log)
    return data


def read_progress_dict(path: Path) -> dict[str, Any] | None:
    """The raw contents of a progress file, or None when missing or unreadable."""
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def progress_from_dict(data: dict[str, Any]) -> Progress:
    values = {k: v for k, v in data.items() if k in _PROGRESS_FIELDS}
    values["history"] = tuple(values.get("history") or ())
    values["log"] = tuple(values.get("log") or ())
    return Progress(**values)


def read_progress(path: Path) -> Progress | None:
    """The Progress stored in a progress file, or None when missing or unreadable."""
    data = read_progress_dict(Path(path))
    return None if data is None else progress_from_dict(data)
