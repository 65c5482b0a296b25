"""RunConfig: every hyperparameter of a run, typed, validated, JSON round-trip.

The setup page builds one, the CLI reads one, and every run stores one as
``config.json``. Defaults train well without touching anything.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from finetune_core.fsutil import atomic_write_text

STRATEGIES = ("probe", "finetune", "full", "last_n")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("onecycle", "cosine", "constant")
AUGMENTATIONS = ("none", "light", "standard", "strong")
PRECISIONS = ("auto", "bf16", "fp16", "off")
CLASS_BALANCE = ("none", "weighted_loss", "balanced_sampler")
BEST_METRICS = ("val_accuracy", "val_loss")  # THE "best": the checkpoint kept, early stopping


# Renamed fields: configs saved by earlier versions still load.
LEGACY_KEYS = {"es_metric": "best_metric"}


class ConfigError(ValueError):
    """The configuration is invalid; the message lists every problem."""


@dataclass
class RunConfig:
    """All settings of one training run."""

    dataset: str = ""  # dataset id or name in the workspace (the CLI may also pass a folder)
    name: str = ""
    notes: str = ""
    model: str = "resnet18"
    weights: str = "imagenet"  # imagenet | none | path to a state_dict (.pt/.pth) | .pt2 backbone
    strategy: str = "finetune"
    epochs: int = 5
    freeze_epochs: int = 1  # finetune: epochs with the backbone frozen before unfreezing
    last_n_groups: int = 2  # last_n: how many parameter groups (from the output) train
    batch_size: int | str = 32  # an int, or "auto" for the largest that fits
    image_size: int = 224
    optimizer: str = "adamw"
    lr: float = 1e-3
    lr_mult: float = 100.0  # discriminative LR: the first group trains at lr / lr_mult
    weight_decay: float = 0.01
    momentum: float = 0.9
    schedule: str = "onecycle"
    warmup_pct: float = 0.25
    label_smoothing: float = 0.0
    class_balance: str = "none"
    augmentation: str = "light"
    probe_views: int = 1  # probe: augmented views per image in the feature cache
    dropout: float = 0.0
    mixed_precision: str = "auto"
    channels_last: bool = True
    grad_clip: float = 0.0  # 0 = off
    early_stopping: bool = True
    best_metric: str = "val_accuracy"  # the best epoch (kept checkpoint, early stopping)
    es_patience: int = 3
    es_min_delta: float = 0.0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    num_threads: int = 0  # 0 = all cores
    # Scale-out (torchrun + DDP): processes per machine (GPUs; CPU workers with device=cpu),
    # 1, N or "all" visible GPUs; and machines. batch_size stays the global batch.
    devices: int | str = 1
    nodes: int = 1

    # ----------------------------------------------------------------- checks
    def problems(self) -> list[str]:
        """Every problem with this config, as sentences a user can act on."""
        return [message for _, message in self._checks()]

    def problems_by_field(self) -> dict[str, list[str]]:
        """The same problems keyed by the field to change, so a form can show each one
        next to its widget."""
        found: dict[str, list[str]] = {}
        for name, message in self._checks():
            found.setdefault(name, []).append(message)
        return found

    def _checks(self) -> list[tuple[str, str]]:
        """(field to change, problem) pairs in a stable order."""
        out: list[tuple[str, str]] = []

        def choice(name: str, options: tuple[str, ...]) -> None:
            value = getattr(self, name)
            if value not in options:
                out.append((name, f"{name} must be one of {', '.join(options)} (got {value!r})."))

        choice("strategy", STRATEGIES)
        choice("optimizer", OPTIMIZERS)
        choice("schedule", SCHEDULES)
        choice("augmentation", AUGMENTATIONS)
        choice("mixed_precision", PRECISIONS)
        choice("class_balance", CLASS_BALANCE)
        choice("best_metric", BEST_METRICS)
        if not self.dataset:
            out.append(("dataset", "Choose a dataset."))
        if not self.model:
            out.append(("model", "Choose a model."))
        if not 1 <= self.epochs <= 10_000:
            out.append(("epochs", "epochs must be between 1 and 10000."))
        if self.strategy == "finetune" and not 0 <= self.freeze_epochs <= self.epochs:
            out.append(("freeze_epochs", "freeze_epochs must be between 0 and epochs."))
        if self.strategy == "last_n" and self.last_n_groups < 1:
            out.append(("last_n_groups", "last_n_groups must be at least 1."))
        if isinstance(self.batch_size, str):
            if self.batch_size != "auto":
                out.append(("batch_size", 'batch_size must be a positive integer or "auto".'))
        elif not 1 <= self.batch_size <= 65_536:
            out.append(("batch_size", "batch_size must be between 1 and 65536."))
        if not 16 <= self.image_size <= 1024:
            out.append(("image_size", "image_size must be between 16 and 1024 pixels."))
        if not 0 < self.lr <= 1000:
            out.append(("lr", "lr must be positive and at most 1000."))
        if self.lr_mult < 1:
            out.append(("lr_mult", "lr_mult must be at least 1."))
        if self.weight_decay < 0:
            out.append(("weight_decay", "weight_decay cannot be negative."))
        if not 0 <= self.warmup_pct < 1:
            out.append(("warmup_pct", "warmup_pct must be in [0, 1)."))
        if not 0 <= self.label_smoothing < 1:
            out.append(("label_smoothing", "label_smoothing must be in [0, 1)."))
        if not 0 <= self.dropout < 1:
            out.append(("dropout", "dropout must be in [0, 1)."))
        if not 1 <= self.probe_views <= 32:
            out.append(("probe_views", "probe_views must be between 1 and 32."))
        if self.grad_clip < 0:
            out.append(("grad_clip", "grad_clip cannot be negative (0 turns it off)."))
        if self.es_patience < 1:
            out.append(("es_patience", "es_patience must be at least 1."))
        if self.num_threads < 0:
            out.append(("num_threads", "num_threads cannot be negative (0 uses all cores)."))
        if self.weights.endswith(".pt2") and self.strategy != "probe":
            out.append(
                (
                    "strategy",
                    "A custom .pt2 backbone is used frozen: choose the probe strategy "
                    "(its exported graph cannot be fine-tuned).",
                )
            )
        if self.model == "custom" and not self.weights.endswith(".pt2"):
            out.append(("weights", "The custom model needs a .pt2 backbone file as its weights."))
        dev = self.device
        if not (
            dev in ("auto", "cpu", "cuda", "mps") or (dev.startswith("cuda:") and dev[5:].isdigit())
        ):
            out.append(("device", f"device must be auto, cpu, cuda, cuda:N or mps (got {dev!r})."))
        out.extend(self._scale_out_checks())
        return out

    def _scale_out_checks(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if isinstance(self.devices, str):
            if self.devices != "all":
                out.append(
                    (
                        "devices",
                        f'devices must be a positive integer or "all" (got {self.devices!r}).',
                    )
                )
        elif not 1 <= self.devices <= 1024:
            out.append(("devices", "devices must be between 1 and 1024 (processes per machine)."))
        if not 1 <= self.nodes <= 1024:
            out.append(("nodes", "nodes must be between 1 and 1024 (machines)."))
        if self.devices == 1 and self.nodes == 1:
            return out
        if self.strategy == "probe":
            out.append(
                (
                    "strategy",
                    "The probe strategy trains on one device (it is quick already): choose "
                    "devices=1 and nodes=1, or another strategy.",
                )
            )
        if self.device == "mps" or self.device.startswith("cuda:"):
            out.append(
                (
                    "device",
                    "With several devices each process takes the GPU of its local rank: choose "
                    "device auto or cuda (or cpu for CPU worker processes).",
                )
            )
        if isinstance(self.batch_size, int) and isinstance(self.devices, int):
            ranks = self.devices * self.nodes
            if self.batch_size < 2 * ranks:
                out.append(
                    (
                        "batch_size",
                        f"batch_size is split across {ranks} processes and each needs at least "
                        f"2 images: choose batch_size of at least {2 * ranks}.",
                    )
                )
        return out

    def validate(self) -> RunConfig:
        problems = self.problems()
        if problems:
            raise ConfigError("Invalid run configuration:\n- " + "\n- ".join(problems))
        return self

    # ------------------------------------------------------------ round trip
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        known = {f.name: f for f in fields(cls)}
        data = {LEGACY_KEYS.get(k, k): v for k, v in data.items()}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"Unknown config keys: {', '.join(unknown)}.")
        values: dict[str, Any] = {}
        errors: list[str] = []
        defaults = cls()
        for key, raw in data.items():
            expected = type(getattr(defaults, key))
            try:
                values[key] = _coerce(key, raw, expected)
            except (TypeError, ValueError):
                errors.append(f"{key} must be of type {expected.__name__} (got {raw!r}).")
        if errors:
            raise ConfigError("Invalid run configuration:\n- " + "\n- ".join(errors))
        return cls(**values)

    @classmethod
    def from_form(cls, values: Mapping[str, Any]) -> RunConfig:
        """A config from a settings form's widget values, which are loosely typed: a number
        widget may hand back 3.0 for an int field, a text box keeps stray spaces. Whole
        floats become ints and text is stripped; anything else goes through ``from_dict``
        (unknown keys and values of the wrong type are refused with a ConfigError)."""
        defaults = cls()
        cleaned: dict[str, Any] = {}
        for key, raw in values.items():
            expected = type(getattr(defaults, key, None))
            if isinstance(raw, str):
                raw = raw.strip()
            elif expected is int and isinstance(raw, float) and raw.is_integer():
                raw = int(raw)
            cleaned[key] = raw
        return cls.from_dict(cleaned)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"The config is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError("The config must be a JSON object.")
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), self.to_json())

    def replace(self, **changes: Any) -> RunConfig:
        return RunConfig.from_dict({**self.to_dict(), **changes})


def _coerce(key: str, raw: Any, expected: type) -> Any:
    if key in ("batch_size", "devices"):
        if raw == ("auto" if key == "batch_size" else "all"):
            return raw
        if isinstance(raw, bool):
            raise TypeError
        return int(raw)
    if expected is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false", "1", "0", "yes", "no"):
            return raw.lower() in ("true", "1", "yes")
        raise TypeError
    if expected is int:
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise TypeError
        return int(raw)
    if expected is float:
        if isinstance(raw, bool):
            raise TypeError
        return float(raw)
    if expected is str:
        if not isinstance(raw, str):
            raise TypeError
        return raw
    return raw
