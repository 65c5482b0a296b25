"""Does a state_dict fit an architecture? Key layouts, the match of a file's tensors
against a model's, and the refusal of weights saved from another architecture.

Shared by loading (``weights.apply_state_dict``, at run start) and by checking a file
when it is uploaded (``weights_check.inspect_weights``), so both say the same thing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings

from finetune_core.models.backbone import (
    SAME_ARCH_SCORE,
    ZOO,
    family_of,
    fit_score,
    guess_architecture,
)

Shapes = Mapping[str, tuple[int, ...]]  # a model's tensor names -> shapes
MIN_MATCH_FRACTION = 0.5  # below this, the file is for another architecture
# More unused tensors than this fraction of the backbone's, not named like a head
# (an extra classifier is common), are layers of another architecture.
FOREIGN_FRACTION = 0.1
HEAD_NAMES = frozenset({"fc", "head", "heads", "classifier", "logits", "last_linear", "projector"})


class WeightsError(Exception):
    """Weights could not be obtained or do not fit; the message says what to do."""


def to_classifier_keys(state: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """Map torchvision keys ("layer1.0.conv1.weight", "fc.weight") onto Classifier keys.

    A Classifier state_dict ("backbone.*", "head.*") passes through unchanged.
    """
    if any(k.startswith(("backbone.", "head.")) for k in state):
        return dict(state)
    head = family_of(arch).head + "."
    return {
        ("head.1." + k[len(head) :] if k.startswith(head) else "backbone." + k): v
        for k, v in state.items()
    }


@dataclass
class LoadPlan:
    """Which tensors of a state_dict (Classifier keys) fit a model's tensors."""

    state: dict[str, torch.Tensor]
    usable: dict[str, torch.Tensor]  # same name and shape as the model's
    unexpected: list[str]  # the model has no tensor of that name
    mismatched: list[str]  # same name, other shape
    missing: list[str]  # the model's tensors the file lacks
    matched: int  # backbone tensors of the model found in the file
    total: int  # backbone tensors of the model

    @property
    def unused(self) -> list[str]:
        """File tensors that will not be loaded, the head aside (a new head is normal)."""
        return [k for k in (*self.unexpected, *self.mismatched) if not k.startswith("head.")]


def plan_state_dict(
    state: dict[str, torch.Tensor], arch: str, target: Shapes, label: str
) -> LoadPlan:
    """:func:`match_state_dict`, refusing a file that :func:`other_architecture` finds
    was saved from another architecture (WeightsError naming the likely one)."""
    plan = match_state_dict(state, target)
    problem = other_architecture(plan, arch, Path(label).name)
    if problem:
        raise WeightsError(problem)
    return plan


def match_state_dict(state: dict[str, torch.Tensor], target: Shapes) -> LoadPlan:
    """Match ``state`` (Classifier keys) against a model's tensor shapes ``target``."""
    usable, unexpected, mismatched = _match_keys(state, target)
    backbone = [k for k in target if k.startswith("backbone.")]
    return LoadPlan(
        state=state,
        usable=usable,
        unexpected=unexpected,
        mismatched=mismatched,
        missing=[k for k in target if k not in state],
        matched=sum(1 for k in backbone if k in usable),
        total=len(backbone),
    )


def other_architecture(plan: LoadPlan, arch: str, name: str) -> str | None:
    """Why file ``name`` was saved from another architecture than ``arch``, or None.

    Refused: fewer than half of the backbone tensors match; or the file fits another zoo
    architecture better (resnet34 weights on resnet18 fill all 120 of its tensors and
    leave 96 of the file's unused; resnet18 weights on resnet34 leave 96 random); or many
    unused tensors are not named like a head, so they are layers ``arch`` does not have.
    """
    if plan.matched < MIN_MATCH_FRACTION * plan.total:
        guess, _ = guess_architecture(plan.state)
        hint = f" It looks like weights for {guess}." if guess and guess != arch else ""
        return (
            f"{name} looks like weights for a different architecture: only "
            f"{plan.matched} of {plan.total} {arch} backbone tensors match by name and "
            f"shape.{hint} Choose the matching model, or another weights file."
        )
    unused = plan.unused
    own = arch in ZOO and fit_score(plan.state, arch) >= SAME_ARCH_SCORE
    guess = arch if own or arch not in ZOO else guess_architecture(plan.state)[0]
    if guess is not None and guess != arch:
        random_own = [k for k in plan.missing if k.startswith("backbone.")]
        leave = f", leave {len(unused)} of the file's unused ({modules_of(unused)})"
        start = f", and start {len(random_own)} of its own from random values"
        return (
            f"{name} looks like weights for {guess}, not {arch}: {arch} would take "
            f"{plan.matched} of its {plan.total} backbone tensors from the file"
            + (leave if unused else "")
            + (start if random_own else "")
            + f". Choose {guess} as the model, or weights saved from {arch}."
        )
    layers = [k for k in unused if _module_name(k) not in HEAD_NAMES]
    if len(layers) > FOREIGN_FRACTION * plan.total:
        return (
            f"{name} holds {len(layers)} tensors that {arch} has no place for "
            f"({modules_of(layers)}): they look like layers of another architecture, so it "
            "was not loaded. Choose the model it was saved from, or another weights file."
        )
    return None


def _module_name(key: str) -> str:
    """The top module of a backbone key ("backbone.fc.weight" -> "fc")."""
    return key.removeprefix("backbone.").split(".", 1)[0]


def modules_of(keys: list[str], n: int = 6) -> str:
    """The modules ``keys`` belong to, as "layer1.2.*, layer3.3.*" (up to the first index)."""
    names: list[str] = []
    for key in keys:
        parts = key.removeprefix("backbone.").split(".")
        cut = next((i for i, p in enumerate(parts[:-1]) if p.isdigit()), 0)
        name = ".".join(parts[: cut + 1]) + (".*" if len(parts) > 1 else "")
        if name not in names:
            names.append(name)
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def best_key_layout(
    state: dict[str, torch.Tensor], arch: str, target: Shapes
) -> dict[str, torch.Tensor]:
    """Classifier keys for ``state``; also tries without a wrapper's common first name.

    Lightning and similar wrappers save "model.layer1..." where torchvision has "layer1...".
    """
    mapped = to_classifier_keys(state, arch)
    first = {k.split(".", 1)[0] for k in state}
    if len(first) != 1 or not all("." in k for k in state):
        return mapped
    prefix = next(iter(first)) + "."
    unwrapped = to_classifier_keys({k[len(prefix) :]: v for k, v in state.items()}, arch)

    def hits(candidate: dict[str, torch.Tensor]) -> int:
        return sum(1 for k, v in candidate.items() if target.get(k) == tuple(v.shape))

    return unwrapped if hits(unwrapped) > hits(mapped) else mapped


def short_list(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def _match_keys(
    state: dict[str, torch.Tensor], target: Shapes
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Split ``state`` into (tensors that fit ``target``, keys ``target`` lacks, other shapes)."""
    usable: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    mismatched: list[str] = []
    for key, value in state.items():
        if key not in target:
            unexpected.append(key)
        elif target[key] != tuple(value.shape):
            mismatched.append(key)
        else:
            usable[key] = value
    return usable, unexpected, mismatched


def resize_vit_positions(
    state: dict[str, torch.Tensor], target: Shapes, model: nn.Module
) -> dict[str, torch.Tensor]:
    """Interpolate a ViT's position embeddings when the file was trained at another size."""
    key = "backbone.encoder.pos_embedding"
    if key not in state or key not in target or tuple(state[key].shape) == target[key]:
        return state
    vit = cast(VisionTransformer, model.get_submodule("backbone"))  # fixed_size: a ViT
    resized = interpolate_embeddings(
        vit.image_size, vit.patch_size, {"encoder.pos_embedding": state[key]}
    )
    return {**state, key: resized["encoder.pos_embedding"]}
