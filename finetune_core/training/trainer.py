"""The training loop: strategies, events, checkpoints, stop flag, NaN guard, OOM recovery.

``Trainer(config, dataset, run_dir, cache_dir).fit()`` trains one run. It never
touches Streamlit: progress leaves through callbacks (a LiveState for the UI, a
console line for the CLI). Stop is cooperative: a ``threading.Event`` checked after
every batch. Checkpoints (best and last) are written atomically every epoch, so a
stopped, crashed or killed run keeps its best model and can resume.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from finetune_core import device as devices
from finetune_core.config import RunConfig
from finetune_core.data.augment import augment_normalized, normalize
from finetune_core.data.cache import decoded_split
from finetune_core.fsutil import atomic_write_json
from finetune_core.models.checkpoint import load_checkpoint, save_checkpoint
from finetune_core.models.classifier import build_classifier
from finetune_core.training import ddp as distributed
from finetune_core.training.callbacks import Callback, EarlyStopping, MetricsLogger
from finetune_core.training.features import extract_features
from finetune_core.training.schedules import LRSchedule, build_optimizer, discriminative_lrs

MIN_BATCH_SIZE = 2
AUTO_BATCH_CPU = 32
AUTO_BATCH_GPU_START = 512


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to change."""


class TrainingDiverged(TrainingError):
    """The loss became NaN or infinite."""


@dataclass
class Phase:
    """A stretch of epochs with one set of trainable groups and one LR schedule."""

    name: str
    epochs: int
    trainable: list[int]  # indices into model.param_groups()
    lrs: list[float]


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Trains one run described by a RunConfig on a workspace dataset."""

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
    ) -> None:
        self.cfg = config.validate()
        self.dataset = dataset
        self.run_dir = Path(run_dir)
        self.cache_dir = Path(cache_dir)
        self.stop_event = stop_event or threading.Event()
        self.resume = resume
        self.callbacks: list[Callback] = list(callbacks)
        self.history: list[dict[str, Any]] = []
        self.events: list[str] = []
        self.stop_reason = ""
        self.total_epochs = config.epochs
        self.best_epoch: int | None = None
        self.best_val_accuracy: float | None = None
        self.best_val_loss: float | None = None
        self.early_stopping: EarlyStopping | None = None
        # live counters read by callbacks
        self._phase_start = 0.0
        self._steps_done_total = 0
        self._rate_mark = (time.monotonic(), 0)
        self._images_seen = 0
        self._rate: float | None = None
        self._running_loss = torch.zeros(())
        self._running_n = 0
        self._lr = 0.0
        self._fit_start = time.monotonic()
        self._seconds_before = 0.0
        # torchrun ranks: DDP model, sharded batches, rank 0 alone writes files
        self.dist = distributed.current()
        self._ddp: nn.Module | None = None

    # ------------------------------------------------------------------ events
    def _emit(self, hook: str, logs: dict[str, Any]) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, logs)

    def log(self, message: str) -> None:
        for cb in self.callbacks:
            cb.on_log(self, message)

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:

        cfg = self.cfg
        seed_everything(cfg.seed)
        devices.set_threads(distributed.threads_per_rank(cfg.num_threads, self.dist))
        self.device = distributed.rank_device(devices.resolve_device(cfg.device), self.dist)
        self.amp_dtype = devices.resolve_precision(cfg.mixed_precision, self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick kernels
        self.class_names = list(self.dataset.class_names)
        weights = cfg.weights
        if weights.endswith(".pt2"):
            # Keep the backbone with the run so evaluation and export never depend on the upload.
            local = self.run_dir / "backbone.pt2"
            if Path(weights).resolve() != local.resolve():
                shutil.copyfile(weights, local)
            weights = str(local)
        self.model, report = build_classifier(
            cfg.model,
            len(self.class_names),
            weights,
            dropout=cfg.dropout,
            image_size=cfg.image_size,
            progress=lambda done, total: self._emit_status("downloading weights", done, total),
        )
        if report.message:
            self.log(report.message)
        self.model.to(self.device)
        if cfg.channels_last and self.device.type != "mps":
            self.model.to(memory_format=torch.channels_last)
        self.mean = torch.tensor(self.model.mean, device=self.device)
        self.std = torch.tensor(self.model.std, device=self.device)
        self.groups = self.model.param_groups()
        self.log(
            f"model {cfg.model} ({sum(p.numel() for p in self.model.parameters()) / 1e6:.1f}M params) "
            f"on {self.device}, precision {self.amp_dtype or 'fp32'}, {len(self.groups)} groups"
        )

    def _emit_status(self, phase: str, done: int, total: int) -> None:
        self._emit("on_epoch_start", {"epoch": 0, "phase": phase, "steps": total})
        self._emit("on_batch_end", {"epoch": 0, "step": done, "steps": total})

    def _load_data(self) -> None:
        size = self.cfg.image_size
        self.train_data = decoded_split(
            self.dataset,
            "train",
            size,
            self.cache_dir,
            progress=lambda d, t: self._emit_status("decoding train images", d, t),
        )
        self.val_data = decoded_split(
            self.dataset,
            "val",
            size,
            self.cache_dir,
            progress=lambda d, t: self._emit_status("decoding validation images", d, t),
        )
        if len(self.train_data) == 0:
            raise TrainingError("The dataset has no training images; add images or re-split it.")
        if len(self.val_data) == 0:
            self.log("warning: no validation images; the best epoch is chosen by training loss")
        if self.device.type == "cuda":
            self._move_cache_to_gpu()
        counts = torch.bincount(
            self.train_data.labels.cpu(), minlength=len(self.class_names)
        ).float()
        self.class_counts = counts
        self.log(
            f"cached {len(self.train_data)} train and {len(self.val_data)} val images at {size}px"
        )

    def _move_cache_to_gpu(self) -> None:
        """Keep the uint8 cache on the GPU when it fits easily: no host-to-device copy per batch."""
        free, _ = torch.cuda.mem_get_info(self.device)
        for data in (self.train_data, self.val_data):
            if data.images.numel() < 0.25 * free:
                data.images = data.images.to(self.device)
                data.labels = data.labels.to(self.device)
            elif not data.memory_mapped:
                data.images = data.images.pin_memory()

    def _criterion_weights(self) -> torch.Tensor | None:
        if self.cfg.class_balance != "weighted_loss":
            return None
        counts = self.class_counts.clamp(min=1)
        return (counts.sum() / (len(counts) * counts)).to(self.device)

    def _phases(self) -> list[Phase]:
        cfg, n = self.cfg, len(self.groups)
        head = [n - 1]
        if cfg.strategy == "full":
            return [Phase("full", cfg.epochs, list(range(n)), [cfg.lr] * n)]
        if cfg.strategy == "last_n":
            k = min(cfg.last_n_groups, n)
            idx = list(range(n - k, n))
            return [
                Phase(
                    f"last {k} groups",
                    cfg.epochs,
                    idx,
                    discriminative_lrs(cfg.lr, k, cfg.lr_mult ** ((k - 1) / max(1, n - 1))),
                )
            ]
        if cfg.strategy == "finetune":
            phases = []
            if cfg.freeze_epochs:
                phases.append(Phase("frozen", cfg.freeze_epochs, head, [cfg.lr]))
            if cfg.epochs - cfg.freeze_epochs:
                # fastai's fine_tune: halve the rate once unfrozen, spread over the groups.
                phases.append(
                    Phase(
                        "unfrozen",
                        cfg.epochs - cfg.freeze_epochs,
                        list(range(n)),
                        discriminative_lrs(cfg.lr / 2, n, cfg.lr_mult),
                    )
                )
            return phases
        return [Phase("probe", cfg.epochs, head, [cfg.lr])]

    # ------------------------------------------------------------------ fit
    def fit(self) -> TrainResult:
        self._fit_start = time.monotonic()
        logs: dict[str, Any] = {}
        try:
            self._setup()
            with distributed.local_main_first(self.dist):
                self._load_data()
            start_epoch, ckpt = self._maybe_resume()
            self._emit("on_fit_start", logs)
            if self.cfg.early_stopping:
                self.early_stopping = EarlyStopping(
                    self.cfg.es_metric if len(self.val_data) else "train_loss",
                    self.cfg.es_patience,
                    self.cfg.es_min_delta,
                )
            if ckpt and ckpt.get("early_stopping"):
                self.early_stopping.load_state_dict(ckpt["early_stopping"])
            if self.cfg.strategy == "probe":
                self._fit_probe(start_epoch, ckpt)
            else:
                self._fit_network(start_epoch, ckpt)
            self._write_summary()
            self._emit("on_fit_end", logs)
        except BaseException as exc:
            for cb in self.callbacks:
                cb.on_exception(self, exc)
            raise
        status = "STOPPED" if self.stop_event.is_set() else "SUCCEEDED"
        return TrainResult(
            status=status,
            epochs_run=len(self.history),
            best_epoch=self.best_epoch,
            best_val_accuracy=self.best_val_accuracy,
            best_val_loss=self.best_val_loss,
            train_seconds=self.train_seconds,
            stop_reason=self.stop_reason or ("stopped by user" if status == "STOPPED" else ""),
            batch_size=self.batch_size,
            events=self.events,
            history=self.history,
        )

    @property
    def train_seconds(self) -> float:
        return self._seconds_before + (time.monotonic() - self._fit_start)

    def _maybe_resume(self) -> tuple[int, dict[str, Any] | None]:
        self.batch_size = self._initial_batch_size()
        last = self.run_dir / "checkpoints" / "last.pt"
        if not self.resume:
            # A fresh run starts with fresh logs.
            if self.dist.is_main:
                (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
            return 1, None
        if not last.exists():
            self.log("no checkpoint to resume from: starting from the first epoch")
            if self.dist.is_main:
                (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
            return 1, None
        ckpt = load_checkpoint(last, map_location=self.device)
        self.model.load_state_dict(ckpt["model_state"])
        self.history = list(ckpt.get("history", []))
        best = ckpt.get("best", {})
        self.best_epoch = best.get("epoch")
        self.best_val_accuracy = best.get("val_accuracy")
        self.best_val_loss = best.get("val_loss")
        self.batch_size = int(ckpt.get("batch_size", self.batch_size))
        self._seconds_before = float(ckpt.get("train_seconds", 0.0))
        self._fit_start = time.monotonic()
        # metrics.jsonl must hold exactly the epochs the checkpoint knows about
        atomic_lines = "".join(__import__("json").dumps(r) + "\n" for r in self.history)
        if self.dist.is_main:
            (self.run_dir / "metrics.jsonl").write_text(atomic_lines, encoding="utf-8")
        epoch = int(ckpt["epoch"])
        self.log(f"resumed from epoch {epoch} checkpoint")
        self.events.append(f"resumed after epoch {epoch}")
        return epoch + 1, ckpt

    def _initial_batch_size(self) -> int:
        bs = self.cfg.batch_size
        if bs == "auto":
            # On a GPU start big and let the OOM handler halve; on CPU larger batches do not
            # run faster, they only cost memory.
            bs = AUTO_BATCH_GPU_START if self.device.type == "cuda" else AUTO_BATCH_CPU
        bs = max(1, min(int(bs), len(self.train_data)))
        if self.dist.enabled and bs < MIN_BATCH_SIZE * self.dist.world_size:
            raise TrainingError(
                f"The batch of {bs} is split across {self.dist.world_size} processes and each "
                f"needs at least {MIN_BATCH_SIZE} images: use a larger batch (and dataset) or "
                "fewer devices."
            )
        return bs

    # ------------------------------------------------------------------ network strategies
    def _fit_network(self, start_epoch: int, ckpt: dict[str, Any] | None) -> None:
        epoch = 0
        for phase_index, phase in enumerate(self._phases()):
            first, last = epoch + 1, epoch + phase.epochs
            epoch = last
            if last < start_epoch:
                continue
            self._set_trainable(phase.trainable)
            if self.dist.enabled:  # DDP registers the trainable set: rebuild it every phase
                self._ddp = distributed.wrap_model(self.model, self.device)
            opt = build_optimizer(self.cfg, [self.groups[i] for i in phase.trainable], phase.lrs)
            sched = LRSchedule(self.cfg, opt, first, phase.epochs)
            if (
                ckpt is not None
                and ckpt.get("phase_index") == phase_index
                and ckpt.get("optimizer_state")
            ):
                opt.load_state_dict(ckpt["optimizer_state"])
            scaler = torch.amp.GradScaler(
                "cuda", enabled=self.amp_dtype == torch.float16 and self.device.type == "cuda"
            )
            self.log(f"phase {phase.name}: epochs {first}-{last}, groups {phase.trainable}")
            for ep in range(max(first, start_epoch), last + 1):
                row = self._run_epoch(ep, phase, opt, sched, scaler)
                if row is None:  # stopped mid-epoch
                    self._on_stop(phase_index, opt, sched)
                    return
                self._end_epoch(
                    ep, row, phase_index, opt, sched, is_last_phase=last == self.cfg.epochs
                )
                if self._stop_now():
                    return
                if self.stop_reason:
                    self.log(self.stop_reason)
                    return

    def _stop_now(self) -> bool:
        """The stop flag; with several ranks, set on all of them when any one has it."""
        if self.dist.enabled and distributed.agree(self.stop_event.is_set(), self.dist):
            self.stop_event.set()
        return self.stop_event.is_set()

    def _set_trainable(self, trainable: list[int]) -> None:
        for i, params in enumerate(self.groups):
            for p in params:
                p.requires_grad_(i in trainable)
        # Under DDP the whole model runs through the wrapper, which all-reduces the head's grads.
        self.frozen_backbone = trainable == [len(self.groups) - 1] and not self.dist.enabled

    def _train_mode(self) -> None:
        self.model.train()
        # BatchNorm statistics of frozen layers must not drift.
        for module in self.model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in module.parameters(recurse=False)
            ):
                module.eval()

    def _steps_per_epoch(self) -> int:
        return max(1, -(-len(self.train_data) // self.batch_size))

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        n = len(self.train_data)
        if self.cfg.class_balance == "balanced_sampler":
            weights = (1.0 / self.class_counts.clamp(min=1))[self.train_data.labels.cpu()]
            return torch.multinomial(weights, n, replacement=True, generator=gen)
        return torch.randperm(n, generator=gen)

    def _run_epoch(self, epoch, phase, opt, sched, scaler) -> dict[str, Any] | None:
        while True:
            try:
                return self._train_one_epoch(epoch, phase, opt, sched, scaler)
            except Exception as exc:
                if not devices.is_out_of_memory(exc):
                    raise
                self._handle_oom(exc)

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

    def _train_one_epoch(self, epoch, phase, opt, sched, scaler) -> dict[str, Any] | None:
        cfg, dev = self.cfg, self.device
        order = self._epoch_order(epoch)
        steps = self._steps_per_epoch()
        self._train_mode()
        crit_w = self._criterion_weights()
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch + 1_000_003 * self.dist.rank)
        self._running_loss = torch.zeros((), device=dev)
        self._running_n, correct = 0, torch.zeros((), device=dev, dtype=torch.long)
        self._epoch_start = time.monotonic()
        self._steps_in_epoch = steps
        logs = {"epoch": epoch, "phase": phase.name, "steps": steps, "step": 0}
        self._emit("on_epoch_start", logs)
        labels = self.train_data.labels
        order = order.to(self.train_data.images.device)
        for step in range(steps):
            idx = order[step * self.batch_size : (step + 1) * self.batch_size]
            if len(idx) < MIN_BATCH_SIZE * self.dist.world_size and step > 0:
                break  # a trailing single image breaks BatchNorm; it is seen next epoch
            batch_n = len(idx)
            if self.dist.enabled:  # every rank draws the same order: each takes its share
                idx = idx[self.dist.rank :: self.dist.world_size]
            self._lr = sched.at(epoch, step, steps)
            xb = self.train_data.take(idx).to(dev, non_blocking=True)
            yb = labels[idx].to(dev, non_blocking=True)
            xb = augment_normalized(xb, cfg.augmentation, self.mean, self.std, gen)
            if cfg.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with devices.autocast(dev, self.amp_dtype):
                if self.frozen_backbone:
                    with torch.no_grad():
                        feats = self.model.backbone(xb)
                    out = self.model.head(feats.float())
                else:
                    out = (self._ddp or self.model)(xb)
            loss = F.cross_entropy(
                out.float(), yb, weight=crit_w, label_smoothing=cfg.label_smoothing
            )
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            n = len(idx)
            self._running_loss += loss.detach() * n
            self._running_n += n
            correct += (out.detach().argmax(1) == yb).sum()
            self._images_seen += batch_n
            self._steps_done_total += 1
            if dev.type == "cpu" or step % 25 == 0 or step == steps - 1:
                self._check_finite(loss, epoch, step)
            logs.update(step=step + 1)
            self._emit("on_batch_end", logs)
            if self._stop_now():
                return None
        if self.dist.enabled:  # the epoch's numbers over every rank's share
            loss_sum, seen, hits = distributed.all_sum(
                [float(self._running_loss), self._running_n, float(correct)], self.dist
            )
            self._running_loss, self._running_n = torch.tensor(loss_sum), int(seen)
            correct = torch.tensor(hits)
        train_loss = float(self._running_loss) / max(1, self._running_n)
        self._check_finite(torch.tensor(train_loss), epoch, steps)
        row = {
            "epoch": epoch,
            "phase": phase.name,
            "train_loss": train_loss,
            "train_accuracy": float(correct) / max(1, self._running_n),
            "lr": self._lr,
            "batch_size": self.batch_size,
            "seconds": time.monotonic() - self._epoch_start,
            "images_per_second": self._running_n / max(1e-9, time.monotonic() - self._epoch_start),
        }
        row.update(self._validate())
        return row

    def _check_finite(self, loss: torch.Tensor, epoch: int, step: int) -> None:
        if not torch.isfinite(loss).all():
            raise TrainingDiverged(
                f"The loss became {float(loss.detach())} at epoch {epoch}, step {step + 1}: training "
                f"diverged. Lower the learning rate (now {self.cfg.lr:g}), or turn on gradient "
                "clipping."
            )

    @torch.no_grad()
    def _validate(self) -> dict[str, Any]:
        if not len(self.val_data):
            return {"val_loss": None, "val_accuracy": None}
        self.model.eval()
        total_loss, correct = 0.0, 0
        bs = max(self.batch_size * 2, 64)
        rows = torch.arange(len(self.val_data))
        if self.dist.enabled:  # rank 0's model everywhere, each rank a share of the images
            distributed.broadcast_buffers(self.model, self.dist)
            rows = rows[self.dist.rank :: self.dist.world_size]
        rows = rows.to(self.val_data.labels.device)
        for start in range(0, len(rows), bs):
            chunk = rows[start : start + bs]
            xb = self.val_data.take(chunk).to(self.device)
            yb = self.val_data.labels[chunk].to(self.device)
            xb = normalize(xb, self.mean, self.std)
            if self.cfg.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with devices.autocast(self.device, self.amp_dtype):
                out = self.model(xb)
            total_loss += float(F.cross_entropy(out.float(), yb, reduction="sum"))
            correct += int((out.argmax(1) == yb).sum())
        n = len(self.val_data)
        if self.dist.enabled:
            total_loss, correct = distributed.all_sum([total_loss, correct], self.dist)
        return {"val_loss": total_loss / n, "val_accuracy": correct / n}

    # ------------------------------------------------------------------ probe strategy
    def _fit_probe(self, start_epoch: int, ckpt: dict[str, Any] | None) -> None:

        cfg = self.cfg
        train_feats, train_labels = extract_features(
            self,
            self.train_data,
            views=cfg.probe_views if cfg.augmentation != "none" else 1,
            split="train",
        )
        val_feats, val_labels = extract_features(self, self.val_data, views=1, split="val")
        if self.stop_event.is_set():
            self._on_stop(0, None, None)
            return
        # Standardise features for training (a frozen network's features can be tiny or
        # huge); checkpoints hold the head with the scaling folded in, so nothing else changes.
        mu, sigma = feature_scaling(train_feats)
        train_feats = (train_feats - mu) / sigma
        if len(val_feats):
            val_feats = (val_feats - mu) / sigma
        head = self.model.head
        linear = head[-1]
        mu, sigma = mu.to(self.device), sigma.to(self.device)
        if ckpt is not None:
            unfold_scaling(linear, mu, sigma)
        phase = self._phases()[0]
        steps = max(1, -(-len(train_feats) // self.batch_size))
        opt = build_optimizer(cfg, [list(head.parameters())], phase.lrs)
        sched = LRSchedule(cfg, opt, 1, cfg.epochs)
        if ckpt and ckpt.get("optimizer_state"):
            opt.load_state_dict(ckpt["optimizer_state"])
        crit_w = self._criterion_weights()
        for epoch in range(start_epoch, cfg.epochs + 1):
            head.train()
            gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
            order = torch.randperm(len(train_feats), generator=gen)
            logs = {"epoch": epoch, "phase": "probe", "steps": steps, "step": 0}
            self._emit("on_epoch_start", logs)
            self._epoch_start = time.monotonic()
            self._steps_in_epoch = steps
            self._running_loss = torch.zeros((), device=self.device)
            self._running_n, correct = 0, 0
            for step in range(steps):
                idx = order[step * self.batch_size : (step + 1) * self.batch_size]
                fb, yb = train_feats[idx].to(self.device), train_labels[idx].to(self.device)
                self._lr = sched.at(epoch, step, steps)
                out = head(fb)
                loss = F.cross_entropy(out, yb, weight=crit_w, label_smoothing=cfg.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                self._running_loss += loss.detach() * len(idx)
                self._running_n += len(idx)
                correct += int((out.argmax(1) == yb).sum())
                self._images_seen += len(idx)
                self._check_finite(loss, epoch, step)
                logs.update(step=step + 1)
                self._emit("on_batch_end", logs)
                if self.stop_event.is_set():
                    with folded_scaling(linear, mu, sigma):
                        self._on_stop(0, opt, sched)
                    return
            row = {
                "epoch": epoch,
                "phase": "probe",
                "train_loss": float(self._running_loss) / max(1, self._running_n),
                "train_accuracy": correct / max(1, self._running_n),
                "lr": self._lr,
                "batch_size": self.batch_size,
                "seconds": time.monotonic() - self._epoch_start,
                "images_per_second": self._running_n
                / max(1e-9, time.monotonic() - self._epoch_start),
            }
            row.update(self._validate_features(val_feats, val_labels))
            with folded_scaling(linear, mu, sigma):
                self._end_epoch(epoch, row, 0, opt, sched, is_last_phase=True)
            if self.stop_reason:
                self.log(self.stop_reason)
                return

    @torch.no_grad()
    def _validate_features(self, feats: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        if not len(feats):
            return {"val_loss": None, "val_accuracy": None}
        self.model.head.eval()
        out = self.model.head(feats.to(self.device))
        y = labels.to(self.device)
        return {
            "val_loss": float(F.cross_entropy(out, y)),
            "val_accuracy": float((out.argmax(1) == y).float().mean()),
        }

    # ------------------------------------------------------------------ epoch end, checkpoints
    def _is_better(self, row: dict[str, Any]) -> bool:
        """Best = highest validation accuracy, ties broken by lower validation loss."""
        if self.best_epoch is None:
            return True
        va, vl = row.get("val_accuracy"), row.get("val_loss")
        if va is None:
            return row["train_loss"] < (self.best_val_loss or float("inf"))
        best_va = self.best_val_accuracy or 0.0
        return va > best_va or (va == best_va and vl < (self.best_val_loss or float("inf")))

    def _end_epoch(self, epoch, row, phase_index, opt, sched, *, is_last_phase: bool) -> None:
        row["elapsed_seconds"] = self.train_seconds
        improved = self._is_better(row)
        if improved:
            self.best_epoch = epoch
            self.best_val_accuracy = row.get("val_accuracy")
            self.best_val_loss = (
                row.get("val_loss") if row.get("val_loss") is not None else row["train_loss"]
            )
        row["best_epoch"] = self.best_epoch
        self.history.append(row)
        logs = dict(row)
        if is_last_phase and self.early_stopping is not None:
            # Early stopping watches only the final phase: unfreezing first makes things worse.
            self.early_stopping.on_epoch_end(self, logs)
            row["patience_left"] = logs.get("patience_left")
        ckpt_dir = self.run_dir / "checkpoints"
        if self.dist.is_main:
            payload = self._checkpoint_payload(epoch, phase_index, opt, sched)
            if improved:
                save_checkpoint(ckpt_dir / "best.pt", {**payload, "optimizer_state": None})
            save_checkpoint(ckpt_dir / "last.pt", payload)
        self._emit("on_epoch_end", logs)

    def _checkpoint_payload(self, epoch, phase_index, opt, sched) -> dict[str, Any]:
        return {
            "model_state": self.model.state_dict(),
            "arch": self.cfg.model,
            "num_classes": len(self.class_names),
            "class_names": self.class_names,
            "mean": list(self.model.mean),
            "std": list(self.model.std),
            "image_size": self.cfg.image_size,
            "config": self.cfg.to_dict(),
            "epoch": epoch,
            "phase_index": phase_index,
            "optimizer_state": opt.state_dict() if opt is not None else None,
            "best": {
                "epoch": self.best_epoch,
                "val_accuracy": self.best_val_accuracy,
                "val_loss": self.best_val_loss,
            },
            "early_stopping": self.early_stopping.state_dict() if self.early_stopping else None,
            "history": self.history,
            "batch_size": self.batch_size,
            "train_seconds": self.train_seconds,
            "dataset_fingerprint": self.dataset.fingerprint,
        }

    def _on_stop(self, phase_index, opt, sched) -> None:
        """Stopped mid-epoch: keep what the last complete epoch saved; save something if nothing was."""
        self.log("stop requested: ending after this batch")
        best = self.run_dir / "checkpoints" / "best.pt"
        if distributed.broadcast_flag(not best.exists(), self.dist):  # rank 0's disk decides
            # Nothing saved yet: validate the current weights so the run still has a model.
            epoch = len(self.history)
            row = {
                "epoch": epoch,
                "phase": "stopped",
                "train_loss": float(self._running_loss) / max(1, self._running_n),
            }
            row.update(
                self._validate()
                if self.cfg.strategy != "probe"
                else {"val_loss": None, "val_accuracy": None}
            )
            self.best_epoch = epoch or None
            self.best_val_accuracy = row.get("val_accuracy")
            self.best_val_loss = row.get("val_loss")
            if self.dist.is_main:
                payload = self._checkpoint_payload(epoch, phase_index, opt, sched)
                save_checkpoint(best, payload)
                save_checkpoint(self.run_dir / "checkpoints" / "last.pt", payload)

    def _write_summary(self) -> None:
        if not self.dist.is_main:
            return
        atomic_write_json(
            self.run_dir / "metrics.json",
            {
                "val_accuracy": self.best_val_accuracy,
                "val_loss": self.best_val_loss,
                "best_epoch": self.best_epoch,
                "epochs_run": len(self.history),
                "train_seconds": round(self.train_seconds, 3),
                "batch_size": self.batch_size,
                "stop_reason": self.stop_reason,
                "events": self.events,
            },
        )

    # ------------------------------------------------------------------ live numbers
    def live_numbers(self, logs: dict[str, Any]) -> dict[str, Any]:
        """Numbers for a progress snapshot; syncs the device once, so call it sparingly."""
        now = time.monotonic()
        mark_t, mark_n = self._rate_mark
        if now - mark_t > 0.2 and self._images_seen > mark_n:
            rate = (self._images_seen - mark_n) / (now - mark_t)
            self._rate = rate if self._rate is None else 0.5 * self._rate + 0.5 * rate
            self._rate_mark = (now, self._images_seen)
        loss = float(self._running_loss) / self._running_n if self._running_n else None
        eta = None
        steps = getattr(self, "_steps_in_epoch", 0)
        epoch = logs.get("epoch", 0)
        if steps and epoch:
            step = logs.get("step", 0)
            if step >= 3 or not self.history:
                per_step = (now - self._epoch_start) / max(1, step)
            else:  # the first steps of an epoch say little: use the last epoch's pace
                last = self.history[-1]
                per_step = last["seconds"] / max(1, steps)
            remaining = (steps - step) + (self.total_epochs - epoch) * steps
            eta = remaining * per_step
        es = self.early_stopping
        return {
            "epoch": epoch,
            "step": logs.get("step", 0),
            "steps": steps or logs.get("steps", 0),
            "phase": logs.get("phase", ""),
            "train_loss": loss,
            "lr": self._lr,
            "images_per_second": self._rate,
            "eta_seconds": eta,
            "elapsed_seconds": self.train_seconds,
            "memory_mb": devices.memory_in_use_mb(self.device) if hasattr(self, "device") else None,
            "best_epoch": self.best_epoch,
            "best_metric": self.best_val_accuracy,
            "patience_left": (es.patience - es.bad_epochs) if es else None,
            "batch_size": getattr(self, "batch_size", None),
        }


def feature_scaling(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and standard deviation (1 where a dimension is constant)."""
    mu = features.mean(0)
    sigma = features.std(0) if len(features) > 1 else torch.ones_like(mu)
    return mu, torch.where(sigma > 0, sigma, torch.ones_like(sigma))


@torch.no_grad()
def unfold_scaling(linear: nn.Linear, mu: torch.Tensor, sigma: torch.Tensor) -> None:
    """Turn a head trained on raw features into one for standardised features."""
    linear.bias += linear.weight @ mu
    linear.weight *= sigma


@contextlib.contextmanager
def folded_scaling(linear: nn.Linear, mu: torch.Tensor, sigma: torch.Tensor):
    """Temporarily fold the standardisation into the head: W' = W / sigma, b' = b - W' mu."""
    weight, bias = linear.weight.detach().clone(), linear.bias.detach().clone()
    with torch.no_grad():
        linear.weight /= sigma
        linear.bias -= linear.weight @ mu
    try:
        yield
    finally:
        with torch.no_grad():
            linear.weight.copy_(weight)
            linear.bias.copy_(bias)


def standard_callbacks(run_dir: Path) -> list[Callback]:
    return [MetricsLogger(Path(run_dir) / "metrics.jsonl")]


ProgressFn = Callable[[int, int], None]
