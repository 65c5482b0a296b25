"""Strategy presets for the setup page, and the one-click demo run.

A preset is a named set of RunConfig changes; the user can still edit every field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from finetune_core.config import RunConfig


@dataclass(frozen=True)
class Preset:
    key: str
    title: str
    summary: str
    changes: dict[str, Any] = field(default_factory=dict)


PRESETS: tuple[Preset, ...] = (
    Preset(
        "quick",
        "Quick",
        "Linear probe: the pretrained backbone stays frozen, its features are computed once "
        "and only the last layer trains. Minutes even on a laptop CPU; a strong baseline.",
        {"strategy": "probe", "epochs": 10, "lr": 1e-3, "augmentation": "light"},
    ),
    Preset(
        "recommended",
        "Recommended",
        "fastai-style fine-tune: one epoch training the new head with the backbone frozen, "
        "then every layer with discriminative learning rates and a one-cycle schedule.",
        {
            "strategy": "finetune",
            "epochs": 5,
            "freeze_epochs": 1,
            "lr": 1e-3,
            "schedule": "onecycle",
            "augmentation": "standard",
        },
    ),
    Preset(
        "full",
        "Full",
        "Every layer trains from the first epoch at one learning rate. For images far from "
        "everyday photos, or when training without pretrained weights.",
        {"strategy": "full", "epochs": 15, "lr": 3e-4, "schedule": "onecycle"},
    ),
)
PRESETS_BY_KEY = {p.key: p for p in PRESETS}


def apply_preset(config: RunConfig, key: str) -> RunConfig:
    """``config`` with the preset's settings."""
    return config.replace(**PRESETS_BY_KEY[key].changes)


def preset_of(config: RunConfig) -> str | None:
    """The preset whose settings ``config`` matches, if any."""
    for preset in PRESETS:
        if all(getattr(config, k) == v for k, v in preset.changes.items()):
            return preset.key
    return None


def demo_config(dataset: str, *, pretrained_available: bool) -> RunConfig:
    """A run that finishes in about a minute on a CPU and learns the demo shapes.

    With cached ImageNet weights, a linear probe; without them (no download needed),
    a small network trained from scratch on small images.
    """
    if pretrained_available:
        return RunConfig(
            dataset=dataset,
            name="demo: quick probe",
            model="resnet18",
            weights="imagenet",
            strategy="probe",
            epochs=10,
            image_size=64,
            lr=1e-3,
        )
    return RunConfig(
        dataset=dataset,
        name="demo: small network from scratch",
        model="resnet18",
        weights="none",
        strategy="full",
        epochs=8,
        image_size=64,
        batch_size=16,
        lr=2e-3,
        augmentation="light",
        early_stopping=False,
    )
