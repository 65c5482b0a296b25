"""RunConfig: every hyperparameter of a run, typed, validated, JSON round-trip.

The setup page builds one, the CLI reads one, and every run stores one as
``config.json``. Defaults train well without touching anything.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
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
    # Warm start: a run id of the workspace (or a run folder) whose best weights
    # initialise this run's model; '' = from `weights` as usual.
    init_from: str = ""

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
        for name, options in _CHOICES:
            value = getattr(self, name)
            if value not in options:
                out.append((name, f"{name} must be one of {', '.join(options)} (got {value!r})."))
        for name, is_problem, message in _RULES:
            if is_problem(self):
                out.append((name, message.format(value=getattr(self, name))))
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


# The fields checked by name against their options, in the order problems are listed.
_CHOICES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("strategy", STRATEGIES),
    ("optimizer", OPTIMIZERS),
    ("schedule", SCHEDULES),
    ("augmentation", AUGMENTATIONS),
    ("mixed_precision", PRECISIONS),
    ("class_balance", CLASS_BALANCE),
    ("best_metric", BEST_METRICS),
)

# The other checks, in the order problems are listed: (field to change, is it a problem,
# the problem). ``{value!r}`` in a problem is the field's value.
_RULES: tuple[tuple[str, Callable[[RunConfig], bool], str], ...] = (
    ("dataset", lambda c: not c.dataset, "Choose a dataset."),
    ("model", lambda c: not c.model, "Choose a model."),
    ("epochs", lambda c: not 1 <= c.epochs <= 10_000, "epochs must be between 1 and 10000."),
    (
        "freeze_epochs",
        lambda c: c.strategy == "finetune" and not 0 <= c.freeze_epochs <= c.epochs,
        "freeze_epochs must be between 0 and epochs.",
    ),
    (
        "last_n_groups",
        lambda c: c.strategy == "last_n" and c.last_n_groups < 1,
        "last_n_groups must be at least 1.",
    ),
    (
        "batch_size",
        lambda c: isinstance(c.batch_size, str) and c.batch_size != "auto",
        'batch_size must be a positive integer or "auto".',
    ),
    (
        "batch_size",
        lambda c: not isinstance(c.batch_size, str) and not 1 <= c.batch_size <= 65_536,
        "batch_size must be between 1 and 65536.",
    ),
    (
        "image_size",
        lambda c: not 16 <= c.image_size <= 1024,
        "image_size must be between 16 and 1024 pixels.",
    ),
    ("lr", lambda c: not 0 < c.lr <= 1000, "lr must be positive and at most 1000."),
    ("lr_mult", lambda c: c.lr_mult < 1, "lr_mult must be at least 1."),
    ("weight_decay", lambda c: c.weight_decay < 0, "weight_decay cannot be negative."),
    ("warmup_pct", lambda c: not 0 <= c.warmup_pct < 1, "warmup_pct must be in [0, 1)."),
    (
        "label_smoothing",
        lambda c: not 0 <= c.label_smoothing < 1,
        "label_smoothing must be in [0, 1).",
    ),
    ("dropout", lambda c: not 0 <= c.dropout < 1, "dropout must be in [0, 1)."),
    (
        "probe_views",
        lambda c: not 1 <= c.probe_views <= 32,
        "probe_views must be between 1 and 32.",
    ),
    ("grad_clip", lambda c: c.grad_clip < 0, "grad_clip cannot be negative (0 turns it off)."),
    ("es_patience", lambda c: c.es_patience < 1, "es_patience must be at least 1."),
    (
        "num_threads",
        lambda c: c.num_threads < 0,
        "num_threads cannot be negative (0 uses all cores).",
    ),
    (
        "strategy",
        lambda c: c.weights.endswith(".pt2") and c.strategy != "probe",
        "A custom .pt2 backbone is used frozen: choose the probe strategy "
        "(its exported graph cannot be fine-tuned).",
    ),
    (
        "weights",
        lambda c: c.model == "custom" and not c.weights.endswith(".pt2"),
        "The custom model needs a .pt2 backbone file as its weights.",
    ),
    (
        "device",
        lambda c: (
            not (
                c.device in ("auto", "cpu", "cuda", "mps")
                or (c.device.startswith("cuda:") and c.device[5:].isdigit())
            )
        ),
        "device must be auto, cpu, cuda, cuda:N or mps (got {value!r}).",
    ),
)


def _coerce(key: str, raw: Any, expected: type) -> Any:
    if key in ("batch_size", "devices"):
        if raw == ("auto" if key == "batch_size" else "all"):
            return raw
        if isinstance(raw, bool):
            raise TypeError
        return int(raw)
    coerce = _COERCE.get(expected)
    return raw if coerce is None else coerce(raw)


def _to_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.lower() in ("true", "false", "1", "0", "yes", "no"):
        return raw.lower() in ("true", "1", "yes")
    raise TypeError


def _to_int(raw: Any) -> int:
    if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
        raise TypeError
    return int(raw)


def _to_float(raw: Any) -> float:
    if isinstance(raw, bool):
        raise TypeError
    return float(raw)


def _to_str(raw: Any) -> str:
    if not isinstance(raw, str):
        raise TypeError
    return raw


# How a JSON/form value becomes a field's type (TypeError/ValueError: it cannot).
_COERCE: dict[type, Callable[[Any], Any]] = {
    bool: _to_bool,
    int: _to_int,
    float: _to_float,
    str: _to_str,
}
