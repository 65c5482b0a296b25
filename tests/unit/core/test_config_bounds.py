"""Every RunConfig field has a range (the class rule), and the attacks that found the
fields without one (issue 15 item 1) are refused with one line naming the field."""

from __future__ import annotations

import json
import math
from dataclasses import fields
from typing import Any

import pytest

from finetune_core.config import (
    BOUNDS,
    DEFAULT_MAX_TEXT_CHARS,
    MAX_TEXT_CHARS,
    ConfigError,
    RunConfig,
    numeric_fields,
    text_fields,
)

CHOICE_FIELDS = {
    "strategy", "optimizer", "schedule", "augmentation", "mixed_precision", "class_balance",
    "best_metric",
}  # fmt: skip
# "full": no strategy-specific rule ties a walked field to another one.
BASE = {"dataset": "d-1", "strategy": "full"}


def problems(**changes: Any) -> dict[str, list[str]]:
    return RunConfig(**{**BASE, **changes}).problems_by_field()


def test_every_numeric_field_has_a_bound() -> None:
    defaults = RunConfig()
    numeric = [
        f.name
        for f in fields(RunConfig)
        if type(getattr(defaults, f.name)) in (int, float)  # bool is a type of its own
    ]
    assert numeric == numeric_fields()
    missing = sorted(set(numeric) - set(BOUNDS))
    assert not missing, f"numeric fields without a range in config.BOUNDS: {missing}"
    assert set(BOUNDS) <= set(numeric)
    for name in numeric:
        assert BOUNDS[name].low <= getattr(defaults, name) <= BOUNDS[name].high, name
    assert RunConfig(**BASE).problems() == []


def _outside(name: str) -> tuple[float, float]:
    bound = BOUNDS[name]
    if isinstance(getattr(RunConfig(), name), int):
        return bound.low - 1, bound.high + 1
    step = max(abs(bound.high) * 1e-3, 1e-12)
    below = bound.low / 2 if bound.low > 0 else bound.low - step
    return below, bound.high + step


@pytest.mark.parametrize("name", numeric_fields())
def test_each_numeric_field_refuses_values_outside_its_range(name: str) -> None:
    bound = BOUNDS[name]
    kind = type(getattr(RunConfig(), name))
    for inside in (bound.low, bound.high):
        assert name not in problems(**{name: kind(inside)}), (name, inside)
    for outside in _outside(name):
        found = problems(**{name: kind(outside)})
        assert list(found) == [name], (name, outside, found)
        [message] = found[name]
        assert message.startswith(f"{name} must be between"), message
        assert "\n" not in message


@pytest.mark.parametrize("name", numeric_fields())
@pytest.mark.parametrize("raw", [math.nan, math.inf, -math.inf, "nan", "Infinity", "-inf", "NaN"])
def test_each_numeric_field_refuses_nan_and_infinities(name: str, raw: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        RunConfig.from_dict({**BASE, name: raw})
    lines = str(caught.value).splitlines()
    assert lines[1:] == [f"- {name} must be a finite number (got {raw!r})."], lines
    if isinstance(raw, float):  # built directly, the checks refuse it too
        assert problems(**{name: raw})[name] == [f"{name} must be a finite number (got {raw})."]


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_json_non_finite_tokens_are_refused_naming_the_field(token: str) -> None:
    with pytest.raises(ConfigError, match=r"lr must be a finite number"):
        RunConfig.from_json(f'{{"dataset": "d", "lr": {token}}}')
    with pytest.raises(ConfigError, match=r"epochs must be a finite number"):
        RunConfig.from_json(f'{{"dataset": "d", "epochs": {token}}}')


def test_numbers_too_long_or_nested_too_deep_are_explained() -> None:
    with pytest.raises(ConfigError, match="number too long"):
        RunConfig.from_json('{"seed": ' + "9" * 5000 + "}")
    with pytest.raises(ConfigError, match="nested too deeply"):
        RunConfig.from_json("[" * 100_000)
    with pytest.raises(ConfigError, match="seed must be of type int"):
        RunConfig.from_dict({"seed": "9" * 5000})  # Python reads at most 4,300 digits
    message = str(pytest.raises(ConfigError, RunConfig.from_dict, {"seed": "9" * 5000}).value)
    assert len(message) < 200  # the value is named, not repeated in full


@pytest.mark.parametrize(
    ("changes", "field", "text"),
    [
        ({"num_threads": 100_000}, "num_threads", "between 0 and 1024 (got 100000)"),
        ({"num_threads": 1_000_000}, "num_threads", "between 0 and 1024 (got 1000000)"),
        ({"num_threads": -1}, "num_threads", "between 0 and 1024 (got -1)"),
        ({"epochs": 10_001}, "epochs", "between 1 and 10000 (got 10001)"),
        ({"momentum": 2.0}, "momentum", "between 0 and 0.999 (got 2.0)"),
        ({"lr": math.nan}, "lr", "finite number (got nan)"),
        ({"lr": 0.0}, "lr", "between 1e-08 and 10 (got 0.0)"),
        ({"lr_mult": 1e9}, "lr_mult", "between 1 and 1000000"),
        ({"es_min_delta": -1.0}, "es_min_delta", "between 0 and 10 (got -1.0)"),
        ({"seed": -5}, "seed", "between 0 and 2147483647 (got -5)"),
        ({"seed": 2**70}, "seed", "(got 1180591620717411303424)"),
        ({"image_size": 100_000}, "image_size", "between 16 and 1024 (got 100000)"),
        ({"weight_decay": 5.0}, "weight_decay", "between 0 and 1"),
        ({"probe_views": 1000}, "probe_views", "between 1 and 32"),
        ({"batch_size": 0}, "batch_size", "between 1 and 16384 (got 0)"),
    ],
)
def test_red_team_values_are_refused(changes: dict, field: str, text: str) -> None:
    found = problems(**changes)
    assert list(found) == [field], found
    assert text in found[field][0]


def test_epochs_5000_is_inside_the_range() -> None:
    # The decision: epochs up to 10,000 (a long run costs time, not the machine; the
    # Setup page's widget has the same limit, so 5000 is shown as 5000).
    assert problems(epochs=5000) == {}


def test_batches_of_absurd_pixel_counts_are_refused() -> None:
    found = problems(batch_size=4096, image_size=1024)
    assert "batch_size 4096 at image_size 1024" in found["batch_size"][0]
    assert "4.3 G pixels" in found["batch_size"][0]
    assert problems(batch_size=2048, image_size=1024) == {}  # exactly the cap
    assert problems(batch_size=4096, image_size=1024, strategy="probe") == {}  # features


def test_mistyped_fields_built_directly_are_problems_not_crashes() -> None:
    found = problems(epochs="many", image_size=None, weights=7, devices=2.5)
    assert found["epochs"] == ["epochs must be a number (got 'many')."]
    assert found["image_size"] == ["image_size must be a number (got None)."]
    assert found["weights"] == ["weights must be text (got 7)."]
    assert found["devices"] == ["devices must be a whole number (got 2.5)."]


@pytest.mark.parametrize("name", text_fields())
def test_every_text_field_has_a_length_and_no_control_characters(name: str) -> None:
    limit = 200 if name == "name" else MAX_TEXT_CHARS.get(name, DEFAULT_MAX_TEXT_CHARS)
    expected = ("must be one of",) if name in CHOICE_FIELDS else ("at most", "control characters")
    found = problems(**{name: "x" * (limit + 1)})
    assert name in found and expected[0] in found[name][0], found
    assert len(found[name][0]) < 300  # the value is named, not repeated
    for bad in ("\x00", "\x1b[2J", "\u202e"):
        found = problems(**{name: f"a{bad}b"})
        assert name in found and expected[-1] in found[name][0], (name, found)


def test_notes_keep_line_breaks_and_init_from_takes_a_run_id() -> None:
    assert problems(notes="first line\nsecond\tline") == {}
    assert problems(init_from="r-20261128-172601-3fa2") == {}
    assert problems(init_from="") == {}


def test_a_valid_config_round_trips_through_json_at_its_limits() -> None:
    limits = {
        name: type(getattr(RunConfig(), name))(BOUNDS[name].high) for name in numeric_fields()
    }
    limits["batch_size"] = 2048  # the pixel cap at 1024 px
    limits["devices"] = limits["nodes"] = 1  # 1024 x 1024 processes would split the batch
    cfg = RunConfig(**{**BASE, **limits}).validate()
    assert RunConfig.from_json(cfg.to_json()) == cfg
    assert json.loads(cfg.to_json())["seed"] == 2**31 - 1
