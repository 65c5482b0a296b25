"""The training loop: one ``fit`` over phases x passes x batches, with events.

``Trainer(config, dataset, run_dir, cache_dir).fit()`` trains one run. It never touches
Streamlit: what happens leaves through callbacks (``training.events``). The loop knows
nothing about checkpoints, early stopping, NaN checks, stop requests, history files or
progress: those are callbacks (``training.callbacks``, ``training.progress``) reacting to
the events and raising ``StopTraining`` to end the run cleanly. The phases
(``training.phases``) say what a pass is: image batches through the network, a feature
extraction, or feature batches through the head.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from finetune_core import device as devices
from finetune_core.config import RunConfig
from finetune_core.data.cache import DecodedImages
from finetune_core.models.checkpoint import load_checkpoint
from finetune_core.models.classifier import Classifier
from finetune_core.runs import RunPaths, write_summary
from finetune_core.training import ddp, setup
from finetune_core.training.callbacks import (
    Best,
    BestCheckpoint,
    BestMetric,
    EarlyStopping,
    MetricsLogger,
    NaNGuard,
    RunLog,
    StopOnRequest,
    TrainingDiverged,
    TrainingError,
)
from finetune_core.training.events import Callback, StopTraining
from finetune_core.training.phases import MIN_BATCH_SIZE, Phase, plan
from finetune_core.training.progress import Pace
from finetune_core.training.setup import seed_everything

__all__ = ["Trainer", "TrainResult", "TrainingDiverged", "TrainingError", "seed_everything"]


@dataclass
class TrainResult:
    status: str  # SUCCEEDED | STOPPED
    epochs_run: int
    best_epoch: int | None
    best_val_accuracy: float | None
    best_val_loss: float | None
    train_seconds: float
    stop_reason: str = ""
    batch_size: int = 0
    events: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Trains one run described by a RunConfig on a workspace dataset.

    ``persist=False`` (the LR finder) trains without validation and writes nothing to the
    run folder: no checkpoints, history or summary.
    """

    # Set up by training.setup before the loop starts.
    device: torch.device
    amp_dtype: torch.dtype | None
    model: Classifier
    groups: list[list[nn.Parameter]]
    class_names: list[str]
    mean: torch.Tensor
    std: torch.Tensor
    train_data: DecodedImages
    val_data: DecodedImages
    class_counts: torch.Tensor
    class_weights: torch.Tensor | None
    batch_size: int

    def __init__(
        self,
        config: RunConfig,
        dataset: Any,  # finetune_core.data.Dataset
        run_dir: Path,
        cache_dir: Path,
        *,
        callbacks: Sequence[Callback] = (),
        stop_event: threading.Event | None = None,
        resume: bool = False,
        persist: bool = True,
    ) -> None:
        self.cfg = config.validate()
        self.dataset = dataset
        self.paths = RunPaths(Path(run_dir))
        self.run_dir = self.paths.root
        self.cache_dir = Path(cache_dir)
        self.stop_event = stop_event or threading.Event()
        self.resume = resume
        self.persist = persist
        self.validation = persist
        self.history: list[dict[str, Any]] = []
        self.events: list[str] = []
        self.stop_reason = ""
        self.status = "RUNNING"
        self.total_epochs = config.epochs
        self.best = Best()
        self.dist = ddp.current()  # torchrun ranks: DDP model, sharded batches, rank 0 writes
        self.callbacks = sorted([*self._standard_callbacks(), *callbacks], key=lambda c: c.order)
        # loop state, read by callbacks and step functions
        self.plan: list[Phase] = []
        self.phase: Phase | None = None
        self.phase_index = 0
        self.epoch = 0
        self.step = 0  # the batch in progress (0-based)
        self.batches_done = 0
        self.steps = 0
        self.loss: torch.Tensor | None = None
        self.lr = 0.0
        self.metrics: dict[str, Any] = {}
        self.improved = False
        self.features: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.resumed_from: dict[str, Any] | None = None
        # init_from: the run whose checkpoint started this one (training.setup), and what
        # run.json and every checkpoint record about it
        self.init_source: Any = None
        self.lineage: dict[str, Any] | None = None
        self.resume_epoch = 1
        self.optimizer: torch.optim.Optimizer | None = None
        self.schedule: Any = None
        self.scaler: Any = None
        self.ddp_model: nn.Module | None = None
        self.frozen_backbone = False
        self.pace = Pace()
        self._running_loss = torch.zeros(())
        self._running_hits = torch.zeros((), dtype=torch.long)
        self._running_n = 0
        self._fit_start = time.monotonic()
        self._seconds_before = 0.0

    def _standard_callbacks(self) -> list[Callback]:
        out: list[Callback] = [StopOnRequest(), NaNGuard()]
        if not self.persist:
            return out
        out += [BestMetric(self.best, self.cfg.best_metric, self.cfg.es_min_delta)]
        out += [BestCheckpoint(), MetricsLogger(), RunLog()]
        if self.cfg.early_stopping:
            out.append(EarlyStopping(self.cfg.es_patience))
        return out

    # ------------------------------------------------------------------ events
    def emit(self, hook: str) -> None:
        """Run ``hook`` on every callback; a StopTraining takes effect once all have run."""
        stop: StopTraining | None = None
        for cb in self.callbacks:
            try:
                getattr(cb, hook)(self)
            except StopTraining as exc:
                stop = stop or exc
        if stop is not None:
            raise stop

    @contextlib.contextmanager
    def event(self, name: str) -> Iterator[None]:
        self.emit(f"before_{name}")
        yield
        self.emit(f"after_{name}")

    def log(self, message: str) -> None:
        for cb in self.callbacks:
            cb.on_log(self, message)

    def setup_progress(self, what: str, done: int, total: int) -> None:
        """Progress of a step before the loop (``what``: e.g. "decoding train images")."""
        for cb in self.callbacks:
            cb.on_setup(self, what, done, total)

    # ------------------------------------------------------------------ fit
    def fit(self) -> TrainResult:
        self._fit_start = time.monotonic()
        try:
            setup.build_model(self)
            with ddp.local_main_first(self.dist):
                setup.load_data(self)
            self._resume()
            setup.separate_feature_cache(self)
            self.plan = plan(self)
            with self.event("fit"):
                try:
                    self._run_plan()
                except StopTraining as stop:
                    self.stop_reason = stop.reason
                    if stop.requested:
                        self.stop_event.set()
                    self.log(
                        "stop requested: ending after this batch" if stop.requested else stop.reason
                    )
                    self.emit("on_stop")
                self.status = "STOPPED" if self.stop_event.is_set() else "SUCCEEDED"
                self._write_summary()
        except BaseException as exc:
            for cb in self.callbacks:
                cb.on_exception(self, exc)
            raise
        return TrainResult(
            status=self.status,
            epochs_run=len(self.history),
            best_epoch=self.best.epoch,
            best_val_accuracy=self.best.val_accuracy,
            best_val_loss=self.best.val_loss,
            train_seconds=self.train_seconds,
            stop_reason=self.stop_reason,
            batch_size=self.batch_size,
            events=self.events,
            history=self.history,
        )

    def _run_plan(self) -> None:
        for index, phase in enumerate(self.plan):
            self.phase_index = index
            passes = phase.passes(self.resume_epoch)
            if not passes:
                continue
            self.phase = phase
            with self.event("phase"):
                phase.enter(self)
                for epoch in passes:
                    self.epoch = epoch
                    self._run_pass(phase)

    def _run_pass(self, phase: Phase) -> None:
        """One epoch (or extraction pass); after an out-of-memory error, again at half the batch."""
        while True:
            try:
                self._start_tally()
                self.step, self.batches_done, self.steps = 0, 0, phase.steps(self)
                with self.event(phase.event):
                    for step, batch in enumerate(phase.batches(self)):
                        self.step = step
                        self.lr = phase.set_lr(self) or self.lr
                        with self.event("batch"):
                            self.loss = phase.step(self, batch)
                            self.batches_done = step + 1
                    self.metrics = self._end_pass(phase)
                return
            except Exception as exc:
                if not devices.is_out_of_memory(exc):
                    raise
                self._handle_oom(exc)

    def _end_pass(self, phase: Phase) -> dict[str, Any]:
        """The epoch's row (appended to the history), or {} for a non-training pass."""
        numbers = phase.end_pass(self)
        if not phase.trains:
            return {}
        seconds = self.pace.end_epoch()
        row = {
            "epoch": self.epoch,
            "phase": phase.name,
            "train_loss": float(self._running_loss) / max(1, self._running_n),
            "train_accuracy": float(self._running_hits) / max(1, self._running_n),
            "lr": self.lr,
            "batch_size": self.batch_size,
            "seconds": seconds,
            "images_per_second": self._running_n / max(1e-9, seconds),
            **numbers,
            "elapsed_seconds": self.train_seconds,
        }
        self.history.append(row)
        return row

    # ------------------------------------------------------------------ tallies
    def _start_tally(self) -> None:
        self._running_loss = torch.zeros((), device=self.device)
        self._running_hits = torch.zeros((), device=self.device, dtype=torch.long)
        self._running_n = 0
        self.pace.start_epoch()

    def tally(self, loss: torch.Tensor, hits: torch.Tensor, n: int) -> None:
        """Add a batch to the epoch's running loss and accuracy (no device sync)."""
        self._running_loss += loss * n
        self._running_hits += hits
        self._running_n += n

    def reduce_tally(self) -> None:
        """The epoch's numbers over every rank's share."""
        loss_sum, seen, hits = ddp.all_sum(
            [float(self._running_loss), self._running_n, float(self._running_hits)], self.dist
        )
        self._running_loss, self._running_n = torch.tensor(loss_sum), int(seen)
        self._running_hits = torch.tensor(hits)

    def stop_requested(self) -> bool:
        """The stop flag; with several ranks, set on all of them when any one has it."""
        if self.dist.enabled and ddp.agree(self.stop_event.is_set(), self.dist):
            self.stop_event.set()
        return self.stop_event.is_set()

    @property
    def in_last_phase(self) -> bool:
        return self.phase is not None and self.phase.last_epoch == self.cfg.epochs

    def _resume(self) -> None:
        """Load ``last`` when resuming: weights, history, callback states, where to go on."""
        self.batch_size = setup.initial_batch_size(self)
        last = self.paths.checkpoint("last")
        if not self.resume:
            return
        if not last.exists():
            self.log("no checkpoint to resume from: starting from the first epoch")
            return
        ckpt = load_checkpoint(last, map_location=self.device)
        self.model.load_state_dict(ckpt["model_state"])
        self.history = list(ckpt.get("history", []))
        states = ckpt.get("callbacks") or {}
        for cb in self.callbacks:
            if cb.state_key and cb.state_key in states:
                cb.load_state_dict(states[cb.state_key])
        self.batch_size = int(ckpt.get("batch_size", self.batch_size))
        self._seconds_before = float(ckpt.get("train_seconds", 0.0))
        self._fit_start = time.monotonic()
        self.resumed_from = ckpt
        if ckpt.get("lineage"):  # run.json may have been rewritten since: record it again
            setup.record_lineage(self, ckpt["lineage"])
        self.resume_epoch = int(ckpt["epoch"]) + 1
        self.log(f"resumed from epoch {ckpt['epoch']} checkpoint")
        self.events.append(f"resumed after epoch {ckpt['epoch']}")

    def restore_optimizer(self) -> None:
        """On resume, the optimizer state saved in the phase being resumed."""
        ckpt = self.resumed_from
        if (
            ckpt is not None
            and ckpt.get("phase_index") == self.phase_index
            and ckpt.get("optimizer_state")
            and self.optimizer is not None
        ):
            self.optimizer.load_state_dict(ckpt["optimizer_state"])

    # ------------------------------------------------------------------ model state
    def set_trainable(self, trainable: list[int]) -> None:
        for i, params in enumerate(self.groups):
            for p in params:
                p.requires_grad_(i in trainable)
        # Under DDP the whole model runs through the wrapper, which all-reduces the head's grads.
        self.frozen_backbone = trainable == [len(self.groups) - 1] and not self.dist.enabled

    def train_mode(self) -> None:
        self.model.train()
        # BatchNorm statistics of frozen layers must not drift.
        for module in self.model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in module.parameters(recurse=False)
            ):
                module.eval()

    def _handle_oom(self, exc: BaseException) -> None:
        if self.dist.enabled:  # halving on one rank alone would desynchronise the ranks
            raise TrainingError(
                f"Out of memory at batch size {self.batch_size} (split across "
                f"{self.dist.world_size} processes); choose a smaller batch size or image size."
            ) from exc
        for p in self.model.parameters():
            p.grad = None
        devices.free_memory(self.device)
        new_bs = self.batch_size // 2
        if new_bs < MIN_BATCH_SIZE:
            raise TrainingError(
                f"Out of memory even at batch size {self.batch_size}; choose a smaller model or "
                f"image size ({self.cfg.image_size}px)."
            ) from exc
        message = f"out of memory at batch size {self.batch_size}: retrying the epoch at {new_bs}"
        self.events.append(message)
        self.log(message)
        self.batch_size = new_bs

    def checkpoint_payload(self) -> dict[str, Any]:
        """Everything a checkpoint holds; the phase decides how the model is saved."""
        phase = self.phase
        with phase.saving(self) if phase is not None else contextlib.nullcontext():
            # a copy on the CPU: the phase may change the weights back after this block
            model_state = {
                k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()
            }
        return {
            "model_state": model_state,
            "arch": self.cfg.model,
            "num_classes": len(self.class_names),
            "class_names": self.class_names,
            "mean": list(self.model.mean),
            "std": list(self.model.std),
            "image_size": self.cfg.image_size,
            "config": self.cfg.to_dict(),
            "epoch": self.epoch if phase is not None and phase.trains else len(self.history),
            "phase_index": self.phase_index,
            "optimizer_state": self.optimizer.state_dict() if self.optimizer is not None else None,
            "callbacks": {cb.state_key: cb.state_dict() for cb in self.callbacks if cb.state_key},
            "history": self.history,
            "batch_size": self.batch_size,
            "train_seconds": self.train_seconds,
            "dataset_fingerprint": self.dataset.fingerprint,
            "lineage": self.lineage,
        }

    def _write_summary(self) -> None:
        if not (self.dist.is_main and self.persist):
            return
        write_summary(
            self.paths,
            {
                "status": self.status,
                "val_accuracy": self.best.val_accuracy,
                "val_loss": self.best.val_loss,
                "best_epoch": self.best.epoch,
                "epochs_run": len(self.history),
                "train_seconds": round(self.train_seconds, 3),
                "batch_size": self.batch_size,
                # the steps' precision, and the one every val/eval/predict figure uses
                "train_precision": devices.precision_name(self.amp_dtype),
                "inference_precision": devices.INFERENCE_PRECISION,
                "stop_reason": self.stop_reason,
                "events": self.events,
            },
        )

    # ------------------------------------------------------------------ live numbers
    @property
    def train_seconds(self) -> float:
        return self._seconds_before + (time.monotonic() - self._fit_start)

    @property
    def best_epoch(self) -> int | None:
        return self.best.epoch

    @property
    def best_val_accuracy(self) -> float | None:
        return self.best.val_accuracy

    def live_numbers(self) -> dict[str, Any]:
        """Numbers for a progress snapshot; syncs the device once, so call it sparingly."""
        phase = self.phase
        trains = phase is not None and phase.trains
        loss = float(self._running_loss) / self._running_n if self._running_n else None
        epochs_left = self.total_epochs - self.epoch if trains else self.total_epochs
        done = (self.epoch - 1 + self.step / max(1, self.steps)) / max(1, self.total_epochs)
        patience = next((cb for cb in self.callbacks if isinstance(cb, EarlyStopping)), None)
        return {
            "epoch": self.epoch if trains else len(self.history),
            "step": self.batches_done,
            "steps": self.steps,
            "phase": phase.name if phase is not None else "",
            "train_loss": loss if trains else None,
            "lr": self.lr,
            "images_per_second": self.pace.images_per_second(),
            "eta_seconds": self.pace.eta(
                step=self.batches_done,
                steps=self.steps,
                epochs_left=epochs_left,
                elapsed=self.train_seconds,
                done=done if trains else 0.0,
            )
            if trains
            else None,
            "elapsed_seconds": self.train_seconds,
            "memory_mb": devices.memory_in_use_mb(self.device) if hasattr(self, "device") else None,
            "best_epoch": self.best.epoch,
            "best_metric": self.best.val_accuracy,
            "patience_left": patience.patience_left() if patience is not None else None,
            "batch_size": getattr(self, "batch_size", None),
        }
