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
    assert "lr must be between 1e-08 and 10 (got -1)." in text
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


def test_problems_by_field_name_the_field_to_change() -> None:
    cfg = RunConfig(
        dataset="", strategy="finetune", epochs=2, freeze_epochs=5, lr=0.0, device="gpu"
    )
    by_field = cfg.problems_by_field()
    assert by_field["freeze_epochs"] == ["freeze_epochs must be between 0 and epochs."]
    assert by_field["lr"] == ["lr must be between 1e-08 and 10 (got 0.0)."]
    assert by_field["dataset"] == ["Choose a dataset."]
    assert "device" in by_field and set(by_field) == {"dataset", "freeze_epochs", "lr", "device"}
    flat = [message for messages in by_field.values() for message in messages]
    assert sorted(flat) == sorted(cfg.problems())
    assert RunConfig(dataset="d").problems_by_field() == {}


def test_problems_by_field_covers_combinations() -> None:
    custom = RunConfig(dataset="d", model="custom", weights="bb.pt2", strategy="finetune")
    assert list(custom.problems_by_field()) == ["strategy"]
    no_backbone = RunConfig(dataset="d", model="custom", weights="", strategy="probe")
    assert list(no_backbone.problems_by_field()) == ["weights"]
    split = RunConfig(dataset="d", strategy="full", devices=4, batch_size=4)
    assert "at least 8" in split.problems_by_field()["batch_size"][0]


def test_from_form_casts_widget_values() -> None:
    cfg = RunConfig.from_form(
        {
            "dataset": "d-1",
            "name": "  my run ",
            "epochs": 3.0,
            "image_size": 64,
            "lr": 1,
            "batch_size": "auto",
            "devices": 2,
            "channels_last": False,
            "weights": "none",
        }
    )
    assert (cfg.name, cfg.epochs, cfg.image_size, cfg.batch_size, cfg.devices) == (
        "my run", 3, 64, "auto", 2,
    )  # fmt: skip
    assert isinstance(cfg.epochs, int) and isinstance(cfg.lr, float) and cfg.lr == 1.0
    assert cfg.channels_last is False and cfg.weights == "none"
    assert RunConfig.from_form(RunConfig(dataset="d").to_dict()) == RunConfig(dataset="d")


def test_from_form_refuses_unknown_keys_and_wrong_types() -> None:
    with pytest.raises(ConfigError, match="Unknown config keys: batch_auto"):
        RunConfig.from_form({"epochs": 2, "batch_auto": True})
    with pytest.raises(ConfigError, match="epochs must be of type int"):
        RunConfig.from_form({"epochs": 2.5})
    with pytest.raises(ConfigError, match="name must be of type str"):
        RunConfig.from_form({"name": 7})
