from __future__ import annotations

import pytest

from finetune_core.config import ConfigError, RunConfig


def test_defaults_are_valid_and_roundtrip() -> None:
    cfg = RunConfig(dataset="d-1")
    assert cfg.validate() is cfg
    again = RunConfig.from_json(cfg.to_json())
    assert again == cfg


def test_every_problem_is_reported() -> None:
    cfg = RunConfig(dataset="", strategy="magic", epochs=0, lr=-1, batch_size="huge")
    problems = cfg.problems()
    text = "\n".join(problems)
    assert "Choose a dataset" in text
    assert "strategy must be one of probe, finetune, full, last_n" in text
    assert "epochs must be between" in text
    assert "lr must be positive and at most 1000" in text
    assert 'batch_size must be a positive integer or "auto"' in text
    with pytest.raises(ConfigError, match="Invalid run configuration"):
        cfg.validate()


def test_custom_backbone_requires_probe() -> None:
    cfg = RunConfig(dataset="d", model="custom", weights="bb.pt2", strategy="finetune")
    assert any("probe" in p for p in cfg.problems())
    assert (
        RunConfig(dataset="d", model="custom", weights="bb.pt2", strategy="probe").problems() == []
    )


def test_from_dict_rejects_unknown_and_mistyped() -> None:
    with pytest.raises(ConfigError, match="Unknown config keys: colour"):
        RunConfig.from_dict({"colour": "red"})
    with pytest.raises(ConfigError, match="epochs must be of type int"):
        RunConfig.from_dict({"epochs": "many"})
    cfg = RunConfig.from_dict({"epochs": "3", "batch_size": "auto", "channels_last": "false"})
    assert cfg.epochs == 3 and cfg.batch_size == "auto" and cfg.channels_last is False


def test_bad_json_is_explained() -> None:
    with pytest.raises(ConfigError, match="not valid JSON"):
        RunConfig.from_json("{nope")
    with pytest.raises(ConfigError, match="JSON object"):
        RunConfig.from_json("[1, 2]")
