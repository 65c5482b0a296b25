"""RunConfig: every hyperparameter of a run, typed, validated, JSON round-trip.

The setup page builds one, the CLI reads one, and every run stores one as
``config.json``. Defaults train well without touching anything.
"""

from __future__ import annotations

import contextlib
import json
import math
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from finetune_core.fsutil import atomic_write_text
from finetune_core.store import StoreError, check_name

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


@dataclass(frozen=True)
class Bound:
    """The closed range of a numeric field; ``note`` follows the problem's sentence."""

    low: float
    high: float
    note: str = ""


# Every numeric field's range (a test fails when a numeric field has none). The Setup
# page's widgets take their limits from here, so a config that passes its checks is
# always shown exactly as it runs.
BOUNDS: dict[str, Bound] = {
    "epochs": Bound(1, 10_000),
    "freeze_epochs": Bound(0, 10_000),
    "last_n_groups": Bound(1, 100),
    "batch_size": Bound(1, 16_384),
    "image_size": Bound(16, 1024, "pixels per side"),
    "lr": Bound(1e-8, 10.0),
    "lr_mult": Bound(1.0, 1e6),
    "weight_decay": Bound(0.0, 1.0),
    "momentum": Bound(0.0, 0.999),
    "warmup_pct": Bound(0.0, 0.99),
    "label_smoothing": Bound(0.0, 0.99),
    "dropout": Bound(0.0, 0.99),
    "probe_views": Bound(1, 32),
    "grad_clip": Bound(0.0, 1000.0, "0 turns it off"),
    "es_patience": Bound(1, 10_000, "epochs"),
    "es_min_delta": Bound(0.0, 10.0),
    "seed": Bound(0, 2**31 - 1),
    # A hard cap; a run is clamped further to the cores it may use (resources.run_threads).
    "num_threads": Bound(0, 1024, "0 uses every core the run may use"),
    "devices": Bound(1, 1024, "processes per machine"),
    "nodes": Bound(1, 1024, "machines"),
}
# A batch of more pixels than this (batch_size x image_size^2) is refused: a float32
# batch of 2**31 pixels in 3 channels already takes 24 GiB before any activation.
MAX_BATCH_PIXELS = 2**31
# Text fields: the longest value, and the control characters allowed (notes may have
# line breaks). Run names follow the store's name rule (store.check_name).
MAX_TEXT_CHARS = {"notes": 10_000}
DEFAULT_MAX_TEXT_CHARS = 4096
_TEXT_CONTROLS_ALLOWED = {"notes": "\n\t"}
_BIDI_CONTROLS = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


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

    def field_problems(self) -> dict[str, list[str]]:
        """The problems of single fields' own values (outside their range or options, of
        the wrong type, bad text), leaving out the rules between fields."""
        found: dict[str, list[str]] = {}
        for name, message in self._own_checks():
            found.setdefault(name, []).append(message)
        return found

    def _checks(self) -> list[tuple[str, str]]:
        """(field to change, problem) pairs in a stable order."""
        out = self._own_checks()
        for name, is_problem, message in _RULES:
            if name not in {n for n, _ in out} and _safely(is_problem, self):
                out.append((name, message.format(value=_shown(getattr(self, name)))))
        for more in (_scale_out_checks, _multiplier_checks):
            with contextlib.suppress(TypeError):  # a mistyped field: its own check says so
                out.extend(more(self))
        return out

    def _own_checks(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for name, options in _CHOICES:
            value = getattr(self, name)
            if value not in options:
                out.append(
                    (name, f"{name} must be one of {', '.join(options)} (got {_shown(value)}).")
                )
        for name in BOUNDS:
            problem = range_problem(name, getattr(self, name))
            if problem:
                out.append((name, problem))
        out.extend(_text_checks(self))
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
            except _NotFinite:
                errors.append(f"{key} must be a finite number (got {_shown(raw)}).")
            except (TypeError, ValueError, OverflowError):
                errors.append(f"{key} must be of type {expected.__name__} (got {_shown(raw)}).")
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
        except ValueError as exc:  # Python reads integers of at most 4,300 digits
            raise ConfigError("The config holds a number too long to read.") from exc
        except RecursionError as exc:
            raise ConfigError("The config is nested too deeply to read.") from exc
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
# the problem). ``{value!r}`` in a problem is the field's value. Numeric ranges are in
# BOUNDS; these are the rules that tie fields together or check text.
_RULES: tuple[tuple[str, Callable[[RunConfig], bool], str], ...] = (
    ("dataset", lambda c: not c.dataset, "Choose a dataset."),
    ("model", lambda c: not c.model, "Choose a model."),
    ("freeze_epochs",
     lambda c: c.strategy == "finetune" and not 0 <= c.freeze_epochs <= c.epochs,
     "freeze_epochs must be between 0 and epochs."),
    ("batch_size", lambda c: isinstance(c.batch_size, str) and c.batch_size != "auto",
     'batch_size must be a positive integer or "auto".'),
    ("strategy", lambda c: c.weights.endswith(".pt2") and c.strategy != "probe",
     "A custom .pt2 backbone is used frozen: choose the probe strategy (its exported graph "
     "cannot be fine-tuned)."),
    ("weights", lambda c: c.model == "custom" and not c.weights.endswith(".pt2"),
     "The custom model needs a .pt2 backbone file as its weights."),
    ("device",
     lambda c: not (c.device in ("auto", "cpu", "cuda", "mps")
                    or (c.device.startswith("cuda:") and c.device[5:].isdigit())),
     "device must be auto, cpu, cuda, cuda:N or mps (got {value})."),
)  # fmt: skip


_CHOICE_NAMES = {name for name, _ in _CHOICES}


def _multiplier_checks(c: RunConfig) -> list[tuple[str, str]]:
    """Knobs that multiply each other's cost: one batch's pixels."""
    if isinstance(c.batch_size, str) or c.strategy == "probe":
        return []  # "auto" is bounded by the trainer; a probe's batches are features
    if range_problem("batch_size", c.batch_size) or range_problem("image_size", c.image_size):
        return []
    pixels = c.batch_size * c.image_size**2
    if pixels <= MAX_BATCH_PIXELS:
        return []
    return [("batch_size", f"batch_size {c.batch_size} at image_size {c.image_size} makes "
             f"batches of {pixels / 1e9:.1f} G pixels, more than the {MAX_BATCH_PIXELS / 1e9:.1f} "
             "G allowed: choose a smaller batch size or image size.")]  # fmt: skip


def _scale_out_checks(c: RunConfig) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if range_problem("devices", c.devices) or range_problem("nodes", c.nodes):
        return out
    if isinstance(c.devices, str) and c.devices != "all":
        out.append(("devices", f'devices must be a positive integer or "all" (got '
                    f"{_shown(c.devices)})."))  # fmt: skip
    if c.devices == 1 and c.nodes == 1:
        return out
    if c.strategy == "probe":
        out.append(("strategy", "The probe strategy trains on one device (it is quick already): "
                    "choose devices=1 and nodes=1, or another strategy."))  # fmt: skip
    if c.device == "mps" or c.device.startswith("cuda:"):
        out.append(("device", "With several devices each process takes the GPU of its local "
                    "rank: choose device auto or cuda (or cpu for CPU worker processes)."))  # fmt: skip
    if isinstance(c.batch_size, int) and isinstance(c.devices, int):
        ranks = c.devices * c.nodes
        if c.batch_size < 2 * ranks:
            out.append(("batch_size", f"batch_size is split across {ranks} processes and each "
                        f"needs at least 2 images: choose batch_size of at least {2 * ranks}."))  # fmt: skip
    return out


def numeric_fields() -> list[str]:
    """The fields holding a number (bool is not one), in declaration order."""
    defaults = RunConfig()
    return [
        f.name
        for f in fields(RunConfig)
        if isinstance(getattr(defaults, f.name), (int, float))
        and not isinstance(getattr(defaults, f.name), bool)
    ]


def text_fields() -> list[str]:
    """The fields holding text."""
    defaults = RunConfig()
    return [f.name for f in fields(RunConfig) if isinstance(getattr(defaults, f.name), str)]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fmt(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def _shown(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut short: a problem names the value without repeating a huge one."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def range_problem(name: str, value: Any) -> str | None:
    """The problem with ``value`` for the numeric field ``name`` (BOUNDS), or None."""
    bound = BOUNDS[name]
    if isinstance(value, str) and name in ("batch_size", "devices"):
        return None  # "auto" / "all", or a word their own rule refuses
    if not _is_number(value):
        return f"{name} must be a number (got {_shown(value)})."
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name} must be a finite number (got {value})."
    whole = isinstance(getattr(_DEFAULTS, name), int)
    if whole and isinstance(value, float) and not value.is_integer():
        return f"{name} must be a whole number (got {value})."
    if bound.low <= value <= bound.high:
        return None
    note = f"; {bound.note}" if bound.note else ""
    return (
        f"{name} must be between {_fmt(bound.low)} and {_fmt(bound.high)} "
        f"(got {_shown(value)}){note}."
    )


def _safely(rule: Callable[[RunConfig], bool], config: RunConfig) -> bool:
    try:
        return bool(rule(config))
    except (TypeError, AttributeError):  # a field of the wrong type: its own check says so
        return False


def _text_checks(config: RunConfig) -> list[tuple[str, str]]:
    """Text fields: of type str, not too long, without control characters."""
    out: list[tuple[str, str]] = []
    for name in text_fields():
        if name in _CHOICE_NAMES:
            continue  # one of its options or refused as such
        value = getattr(config, name)
        if not isinstance(value, str):
            out.append((name, f"{name} must be text (got {_shown(value)})."))
            continue
        if name == "name":
            try:
                check_name(value, "run", allow_empty=True)
            except StoreError as exc:
                out.append((name, str(exc)))
            continue
        limit = MAX_TEXT_CHARS.get(name, DEFAULT_MAX_TEXT_CHARS)
        if len(value) > limit:
            out.append(
                (name, f"{name} can have at most {limit:,} characters (this has {len(value):,}).")
            )
            continue
        allowed = _TEXT_CONTROLS_ALLOWED.get(name, "")
        bad = sorted(
            {
                c
                for c in value
                if (unicodedata.category(c) == "Cc" and c not in allowed) or c in _BIDI_CONTROLS
            }
        )
        if bad:
            found = ", ".join(repr(c) for c in bad[:5])
            out.append((name, f"{name} cannot contain control characters (found {found})."))
    return out


class _NotFinite(ValueError):
    """A number field got nan or an infinity."""


def _refuse_non_finite(raw: Any) -> None:
    if isinstance(raw, float) and not math.isfinite(raw):
        raise _NotFinite
    if isinstance(raw, str) and raw.strip().lstrip("+-").lower() in ("nan", "inf", "infinity"):
        raise _NotFinite


def _coerce(key: str, raw: Any, expected: type) -> Any:
    if expected in (int, float):
        _refuse_non_finite(raw)
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

_DEFAULTS = RunConfig()
