"""The plan of a run: phases the loop walks through, each with its own batches and step.

- ``NetworkPhase``: epochs of image batches through the network with a set of trainable
  parameter groups and a learning-rate schedule (probe-free strategies: finetune's frozen
  and unfrozen phases, full, last_n).
- ``ExtractPhase``: one pass computing frozen-backbone features (cached on disk).
- ``ProbePhase``: epochs of feature batches training the head alone.

``plan(trainer)`` turns a RunConfig's strategy into phases; epochs are numbered across
the whole run (1..epochs) so resuming knows where it stands.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from finetune_core.models import inference
from finetune_core.training import ddp
from finetune_core.training.features import (
    FEATURE_BATCH,
    feature_cache_path,
    read_feature_cache,
    write_feature_cache,
)
from finetune_core.training.schedules import LRSchedule, build_optimizer, discriminative_lrs
from finetune_core.training.steps import (
    extract_step,
    extract_val_features,
    feature_train_step,
    image_train_step,
    refresh_batchnorm,
    validate_features,
    validate_images,
)

MIN_BATCH_SIZE = 2


@dataclass
class Phase:
    """A stretch of the run; ``event`` names the loop events of one of its passes."""

    name: str
    epochs: int = 0
    first_epoch: int = 1
    event = "epoch"
    trains = True

    @property
    def last_epoch(self) -> int:
        return self.first_epoch + self.epochs - 1

    def passes(self, resume_epoch: int) -> list[int]:
        """The global epoch numbers still to run (all of them on a fresh run)."""
        return list(range(max(self.first_epoch, resume_epoch), self.last_epoch + 1))

    def enter(self, t: Any) -> None:
        """Set up before the first pass: trainable groups, optimizer, schedule."""

    def steps(self, t: Any) -> int:
        raise NotImplementedError

    def batches(self, t: Any) -> Iterator[Any]:
        raise NotImplementedError

    def step(self, t: Any, batch: Any) -> torch.Tensor | None:
        raise NotImplementedError

    def end_pass(self, t: Any) -> dict[str, Any]:
        return {}

    def validate(self, t: Any) -> dict[str, Any]:
        return {"val_loss": None, "val_accuracy": None}

    @contextlib.contextmanager
    def saving(self, t: Any) -> Iterator[None]:
        """While a checkpoint is written: the model as evaluation must see it."""
        yield

    def set_lr(self, t: Any) -> float:
        return 0.0


@dataclass
class NetworkPhase(Phase):
    trainable: list[int] = field(default_factory=list)  # indices into model.param_groups()
    lrs: list[float] = field(default_factory=list)

    def enter(self, t: Any) -> None:
        t.set_trainable(self.trainable)
        if t.dist.enabled:  # DDP registers the trainable set: rebuild it every phase
            t.ddp_model = ddp.wrap_model(t.model, t.device)
        t.optimizer = build_optimizer(t.cfg, [t.groups[i] for i in self.trainable], self.lrs)
        t.schedule = LRSchedule(t.cfg, t.optimizer, self.first_epoch, self.epochs)
        t.restore_optimizer()
        t.scaler = torch.amp.GradScaler(
            "cuda", enabled=t.amp_dtype == torch.float16 and t.device.type == "cuda"
        )
        t.log(
            f"phase {self.name}: epochs {self.first_epoch}-{self.last_epoch}, "
            f"groups {self.trainable}"
        )

    def steps(self, t: Any) -> int:
        return max(1, -(-len(t.train_data) // t.batch_size))

    def _order(self, t: Any) -> torch.Tensor:
        gen = torch.Generator().manual_seed(t.cfg.seed * 100_003 + t.epoch)
        n = len(t.train_data)
        if t.cfg.class_balance == "balanced_sampler":
            weights = (1.0 / t.class_counts.clamp(min=1))[t.train_data.labels.cpu()]
            return torch.multinomial(weights, n, replacement=True, generator=gen)
        return torch.randperm(n, generator=gen)

    def batches(self, t: Any) -> Iterator[tuple[torch.Tensor, int]]:
        t.train_mode()
        self._gen = torch.Generator().manual_seed(
            t.cfg.seed * 7919 + t.epoch + 1_000_003 * t.dist.rank
        )
        order = self._order(t).to(t.train_data.images.device)
        world = t.dist.world_size
        for step in range(self.steps(t)):
            idx = order[step * t.batch_size : (step + 1) * t.batch_size]
            if len(idx) < MIN_BATCH_SIZE * world and step > 0:
                return  # a trailing single image breaks BatchNorm; it is seen next epoch
            batch_n = len(idx)
            if t.dist.enabled:  # every rank draws the same order: each takes its share
                idx = idx[t.dist.rank :: world]
            yield idx, batch_n

    def set_lr(self, t: Any) -> float:
        return t.schedule.at(t.epoch, t.step, t.steps)

    def step(self, t: Any, batch: tuple[torch.Tensor, int]) -> torch.Tensor:
        idx, batch_n = batch
        loss = image_train_step(t, idx, self._gen)
        t.pace.images_seen += batch_n
        return loss

    def end_pass(self, t: Any) -> dict[str, Any]:
        if t.dist.enabled:  # the epoch's numbers over every rank's share
            t.reduce_tally()
        if t.cfg.weights == "none" and t.validation:  # from scratch: see steps.refresh_batchnorm
            refresh_batchnorm(t)
        return self.validate(t)

    def validate(self, t: Any) -> dict[str, Any]:
        return validate_images(t) if t.validation else {"val_loss": None, "val_accuracy": None}


@dataclass
class ExtractPhase(Phase):
    """One pass of the frozen backbone over a split (skipped when the cache has it)."""

    split: str = "train"
    views: int = 1
    event = "pass"
    trains = False

    def passes(self, resume_epoch: int) -> list[int]:
        return [0]

    def enter(self, t: Any) -> None:
        self.path = feature_cache_path(t, self.split, self.views)
        self.cached = read_feature_cache(self.path)
        if self.cached is not None:
            t.log(f"{self.split} features loaded from cache ({len(self.cached[1])} rows)")
        elif self.path.exists():
            t.log(f"{self.split} feature cache {self.path.name} is unreadable: computing it again")
        self._feats: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        t.model.eval()
        # Validation features are evaluation's: the weights in the standard layout for the
        # whole pass (switched once, not per batch), put back in end_pass.
        self._layout = contextlib.ExitStack()
        if self.split == "val" and self.cached is None:
            self._layout.enter_context(inference.standard_layout(t.model))

    def _data(self, t: Any) -> Any:
        return t.train_data if self.split == "train" else t.val_data

    def steps(self, t: Any) -> int:
        if self.cached is not None:
            return 0
        return self.views * -(-len(self._data(t)) // FEATURE_BATCH)

    def batches(self, t: Any) -> Iterator[tuple[int, int]]:
        if self.cached is not None:
            return
        self._gen = torch.Generator().manual_seed(t.cfg.seed)
        for view in range(self.views):
            for start in range(0, len(self._data(t)), FEATURE_BATCH):
                yield view, start

    def step(self, t: Any, batch: tuple[int, int]) -> None:
        view, start = batch
        data = self._data(t)
        xb = data.take(slice(start, start + FEATURE_BATCH))
        if self.split == "val":  # validation scores the checkpoint: evaluation's fp32 pass
            self._feats.append(extract_val_features(t, xb))
        else:
            self._feats.append(extract_step(t, xb, augment=view > 0, gen=self._gen))
        self._labels.append(data.labels[start : start + FEATURE_BATCH].cpu())
        t.pace.images_seen += len(xb)

    def end_pass(self, t: Any) -> dict[str, Any]:
        self._layout.close()
        if self.cached is None:
            if self._feats:
                features, labels = torch.cat(self._feats), torch.cat(self._labels)
            else:
                features, labels = torch.empty(0, 0), torch.empty(0, dtype=torch.long)
            write_feature_cache(self.path, features, labels)
            t.log(f"{self.split} features computed: {tuple(features.shape)}")
            self.cached = (features, labels)
        t.features[self.split] = self.cached
        return {}


@dataclass
class ProbePhase(Phase):
    """The head alone, on standardised cached features."""

    lrs: list[float] = field(default_factory=list)

    def enter(self, t: Any) -> None:
        train_feats, self.train_labels = t.features["train"]
        val_feats, self.val_labels = t.features.get("val", (torch.empty(0), torch.empty(0)))
        # Standardise features for training (a frozen network's features can be tiny or
        # huge); checkpoints hold the head with the scaling folded in, so nothing else changes.
        mu, sigma = feature_scaling(train_feats)
        self.train_feats = (train_feats - mu) / sigma
        self.val_feats = val_feats  # raw: validation uses the folded head, as evaluation does
        self.linear: nn.Linear = t.model.head[-1]
        self.mu, self.sigma = mu.to(t.device), sigma.to(t.device)
        if t.resumed_from is not None:
            unfold_scaling(self.linear, self.mu, self.sigma)
        t.optimizer = build_optimizer(t.cfg, [list(t.model.head.parameters())], self.lrs)
        t.schedule = LRSchedule(t.cfg, t.optimizer, self.first_epoch, self.epochs)
        t.restore_optimizer()

    def steps(self, t: Any) -> int:
        return max(1, -(-len(self.train_feats) // t.batch_size))

    def batches(self, t: Any) -> Iterator[torch.Tensor]:
        t.model.head.train()
        gen = torch.Generator().manual_seed(t.cfg.seed * 100_003 + t.epoch)
        order = torch.randperm(len(self.train_feats), generator=gen)
        for step in range(self.steps(t)):
            yield order[step * t.batch_size : (step + 1) * t.batch_size]

    def set_lr(self, t: Any) -> float:
        return t.schedule.at(t.epoch, t.step, t.steps)

    def step(self, t: Any, idx: torch.Tensor) -> torch.Tensor:
        loss = feature_train_step(t, self.train_feats[idx], self.train_labels[idx])
        t.pace.images_seen += len(idx)
        return loss

    def end_pass(self, t: Any) -> dict[str, Any]:
        return self.validate(t)

    def validate(self, t: Any) -> dict[str, Any]:
        if not t.validation or not hasattr(self, "val_feats"):
            return {"val_loss": None, "val_accuracy": None}
        with folded_scaling(self.linear, self.mu, self.sigma):
            return validate_features(t, self.val_feats, self.val_labels)

    @contextlib.contextmanager
    def saving(self, t: Any) -> Iterator[None]:
        with folded_scaling(self.linear, self.mu, self.sigma):
            yield


def plan(t: Any) -> list[Phase]:
    """The phases of a run's strategy, numbered over the run's epochs."""
    cfg, n = t.cfg, len(t.groups)
    head = [n - 1]
    phases: list[Phase]
    if cfg.strategy == "probe":
        views = cfg.probe_views if cfg.augmentation != "none" else 1
        phases = [
            ExtractPhase("extracting train features", split="train", views=views),
            ExtractPhase("extracting val features", split="val", views=1),
            ProbePhase("probe", cfg.epochs, lrs=[cfg.lr]),
        ]
    elif cfg.strategy == "full":
        phases = [NetworkPhase("full", cfg.epochs, trainable=list(range(n)), lrs=[cfg.lr] * n)]
    elif cfg.strategy == "last_n":
        k = min(cfg.last_n_groups, n)
        lrs = discriminative_lrs(cfg.lr, k, cfg.lr_mult ** ((k - 1) / max(1, n - 1)))
        phases = [
            NetworkPhase(f"last {k} groups", cfg.epochs, trainable=list(range(n - k, n)), lrs=lrs)
        ]
    else:  # finetune: fastai's fine_tune
        phases = []
        if cfg.freeze_epochs:
            phases.append(NetworkPhase("frozen", cfg.freeze_epochs, trainable=head, lrs=[cfg.lr]))
        if cfg.epochs - cfg.freeze_epochs:
            # halve the rate once unfrozen, spread over the groups
            lrs = discriminative_lrs(cfg.lr / 2, n, cfg.lr_mult)
            phases.append(
                NetworkPhase(
                    "unfrozen", cfg.epochs - cfg.freeze_epochs, trainable=list(range(n)), lrs=lrs
                )
            )
    epoch = 1
    for phase in phases:
        phase.first_epoch = epoch
        epoch += phase.epochs
    return phases


# ---------------------------------------------------------------------- feature scaling
def feature_scaling(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and standard deviation (1 where a dimension is constant)."""
    mu = features.mean(0)
    sigma = features.std(0) if len(features) > 1 else torch.ones_like(mu)
    return mu, torch.where(sigma > 0, sigma, torch.ones_like(sigma))


@torch.no_grad()
def unfold_scaling(linear: nn.Linear, mu: torch.Tensor, sigma: torch.Tensor) -> None:
    """Turn a head trained on raw features into one for standardised features."""
    linear.bias.add_(linear.weight @ mu)
    linear.weight.mul_(sigma)


@contextlib.contextmanager
def folded_scaling(linear: nn.Linear, mu: torch.Tensor, sigma: torch.Tensor) -> Iterator[None]:
    """Temporarily fold the standardisation into the head: W' = W / sigma, b' = b - W' mu."""
    weight, bias = linear.weight.detach().clone(), linear.bias.detach().clone()
    with torch.no_grad():
        linear.weight.div_(sigma)
        linear.bias.sub_(linear.weight @ mu)
    try:
        yield
    finally:
        with torch.no_grad():
            linear.weight.copy_(weight)
            linear.bias.copy_(bias)
