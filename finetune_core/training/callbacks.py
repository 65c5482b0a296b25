"""The loop's standard callbacks: the one rule for "best", the best checkpoint, early
stopping, the NaN guard, the stop request, history logging, the run's log file and the
console line.

The loop calls none of them by name; ``standard_callbacks`` lists the ones every run
gets. They read the trainer's state (``trainer.metrics`` after an epoch, ``trainer.loss``
after a batch) and end training by raising ``StopTraining``.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from finetune_core import runs
from finetune_core.models.checkpoint import save_checkpoint
from finetune_core.training import ddp
from finetune_core.training.events import Callback, StopTraining


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to change."""


class TrainingDiverged(TrainingError):
    """The loss became NaN or infinite."""


@dataclass
class Best:
    """The best epoch so far and its numbers (train loss stands in without validation)."""

    epoch: int | None = None
    val_accuracy: float | None = None
    val_loss: float | None = None


class BestMetric(Callback):
    """THE rule for "best", shared by the checkpoint and early stopping.

    ``metric`` is ``val_accuracy`` (higher is better; ties go to the lower validation
    loss) or ``val_loss`` (lower is better); without a validation split, the training
    loss. An epoch improves when it beats the best by more than ``min_delta``.
    """

    order = 0
    state_key = "best"

    def __init__(self, best: Best, metric: str = "val_accuracy", min_delta: float = 0.0) -> None:
        self.best, self.metric, self.min_delta = best, metric, min_delta

    def is_better(self, row: dict[str, Any]) -> bool:
        best = self.best
        if best.epoch is None:
            return True
        va, vl = row.get("val_accuracy"), row.get("val_loss")
        if va is None or vl is None:
            return row["train_loss"] < (best.val_loss or math.inf) - self.min_delta
        best_loss = best.val_loss if best.val_loss is not None else math.inf
        if self.metric == "val_loss":
            return vl < best_loss - self.min_delta
        best_acc = best.val_accuracy or 0.0
        return va > best_acc + self.min_delta or (va == best_acc and vl < best_loss)

    def after_epoch(self, trainer: Any) -> None:
        row = trainer.metrics
        trainer.improved = self.is_better(row)
        if trainer.improved:
            self.best.epoch = trainer.epoch
            self.best.val_accuracy = row.get("val_accuracy")
            val_loss = row.get("val_loss")
            self.best.val_loss = val_loss if val_loss is not None else row["train_loss"]
        row["best_epoch"] = self.best.epoch

    def state_dict(self) -> dict[str, Any]:
        return asdict(self.best)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best.epoch = state.get("epoch")
        self.best.val_accuracy = state.get("val_accuracy")
        self.best.val_loss = state.get("val_loss")


class EarlyStopping(Callback):
    """Stops when the best has not improved for ``patience`` epochs while armed.

    Armed only in the run's last phase (unfreezing first makes things worse for a while)
    and, for decaying schedules, once the learning rate has fallen to half its peak: at
    the peak the validation numbers of a from-scratch run stall and wobble without the
    run being done.
    """

    order = 5
    state_key = "early_stopping"

    def __init__(self, patience: int = 3) -> None:
        self.patience = patience
        self.bad_epochs = 0

    def after_epoch(self, trainer: Any) -> None:
        if trainer.improved:
            self.bad_epochs = 0
        elif trainer.in_last_phase and trainer.schedule.annealing(trainer.epoch):
            self.bad_epochs += 1
        trainer.metrics["patience_left"] = self.patience - self.bad_epochs
        if self.bad_epochs >= self.patience:
            raise StopTraining(
                f"early stopping: the best epoch ({trainer.best.epoch}) was not beaten "
                f"for {self.patience} epochs"
            )

    def patience_left(self) -> int:
        return self.patience - self.bad_epochs

    def state_dict(self) -> dict[str, Any]:
        return {"bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bad_epochs = int(state.get("bad_epochs", 0))


class NaNGuard(Callback):
    """Ends the run with advice when the loss becomes NaN or infinite."""

    order = 1

    def after_batch(self, trainer: Any) -> None:
        loss = trainer.loss
        if loss is None:
            return
        # On a GPU every check syncs the device: look every 25 steps and at the last one.
        if (
            trainer.device.type == "cpu"
            or trainer.step % 25 == 0
            or trainer.step + 1 == trainer.steps
        ):
            self._check(trainer, loss)

    def after_epoch(self, trainer: Any) -> None:
        self._check(trainer, torch.tensor(trainer.metrics["train_loss"]))

    def _check(self, trainer: Any, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss).all():
            raise TrainingDiverged(
                f"The loss became {float(loss.detach())} at epoch {trainer.epoch}, step "
                f"{trainer.step + 1}: training diverged. Lower the learning rate (now "
                f"{trainer.cfg.lr:g}), or turn on gradient clipping."
            )


class StopOnRequest(Callback):
    """The user's stop (a flag set from another thread or by a signal), after the batch.

    Last in its event, so the batch's other callbacks have seen it, and a flag set by one
    of them takes effect at once."""

    order = 100

    def after_batch(self, trainer: Any) -> None:
        if trainer.stop_requested():
            raise StopTraining("stopped by user", requested=True)


class BestCheckpoint(Callback):
    """Writes ``last`` every epoch and ``best`` when the epoch improved (rank 0 only);
    a run stopped before its first epoch ended still gets a model."""

    order = 10

    def after_epoch(self, trainer: Any) -> None:
        if not trainer.dist.is_main:
            return
        payload = trainer.checkpoint_payload()
        if trainer.improved:
            save_checkpoint(trainer.paths.checkpoint("best"), {**payload, "optimizer_state": None})
        save_checkpoint(trainer.paths.checkpoint("last"), payload)

    def on_stop(self, trainer: Any) -> None:
        best = trainer.paths.checkpoint("best")
        if not ddp.broadcast_flag(not best.exists(), trainer.dist):  # rank 0's disk decides
            return
        # Nothing saved yet: validate the current weights so the run still has a model.
        row = trainer.phase.validate(trainer) if trainer.phase is not None else {}
        trainer.best.epoch = len(trainer.history) or None
        trainer.best.val_accuracy = row.get("val_accuracy")
        trainer.best.val_loss = row.get("val_loss")
        if trainer.dist.is_main:
            payload = trainer.checkpoint_payload()
            save_checkpoint(best, payload)
            save_checkpoint(trainer.paths.checkpoint("last"), payload)


class MetricsLogger(Callback):
    """Keeps the run's history file equal to ``trainer.history`` (rank 0 only)."""

    order = 20

    def before_fit(self, trainer: Any) -> None:
        if trainer.dist.is_main:
            runs.write_history(trainer.paths, trainer.history)  # resume: what the checkpoint knows

    def after_epoch(self, trainer: Any) -> None:
        if trainer.dist.is_main:
            runs.append_history(trainer.paths, trainer.history[-1])


class RunLog(Callback):
    """Keeps the run's log file: every ``trainer.log`` line (weights loaded, OOM batch
    halving, why the run stopped), how the fit ended, and the error that ended it (rank 0
    only). Best effort: a log that cannot be written (disk full) never fails a run nor
    hides the error that ended it."""

    order = 21

    def on_log(self, trainer: Any, message: str) -> None:
        self._write(trainer, message)

    def after_fit(self, trainer: Any) -> None:
        best = f", best epoch {trainer.best.epoch}" if trainer.best.epoch is not None else ""
        ended = f"training ended: {trainer.status} after {len(trainer.history)} epochs{best}"
        self._write(trainer, ended)

    def on_exception(self, trainer: Any, exc: BaseException) -> None:
        self._write(trainer, f"failed: {type(exc).__name__}: {exc}")

    def _write(self, trainer: Any, message: str) -> None:
        if trainer.dist.is_main:
            with contextlib.suppress(OSError):
                runs.append_log(trainer.paths, message)


class ConsoleProgress(Callback):
    """A single updating progress line for the CLI."""

    order = 90

    def __init__(self, stream: Any = None, interval: float = 1.0) -> None:
        self.stream = stream or sys.stderr
        self.interval = interval
        self._last = 0.0

    def after_batch(self, trainer: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        n = trainer.live_numbers()
        ips = n.get("images_per_second") or 0
        eta = n.get("eta_seconds")
        eta_text = f"ETA {eta:5.0f}s" if eta is not None else ""
        where = (
            f"epoch {trainer.epoch}/{trainer.total_epochs}"
            if trainer.phase.trains
            else trainer.phase.name
        )
        self.stream.write(
            f"\r{where} step {trainer.step + 1}/{trainer.steps} "
            f"loss {n.get('train_loss') or 0:.4f} {ips:6.1f} img/s {eta_text}   "
        )
        self.stream.flush()

    def after_epoch(self, trainer: Any) -> None:
        row = trainer.history[-1]
        va, vl = row.get("val_accuracy"), row.get("val_loss")
        self.stream.write(
            f"\repoch {row['epoch']}/{trainer.total_epochs} [{row.get('phase', '')}] "
            f"train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f}"
            + (f" | val loss {vl:.4f} acc {va:.3f}" if va is not None else "")
            + f" | {row['seconds']:.1f}s\n"
        )
        self.stream.flush()

    def on_log(self, trainer: Any, message: str) -> None:
        self.stream.write(f"\r{message}\n")
        self.stream.flush()
