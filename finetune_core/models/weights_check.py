"""What a weights file holds, checked against the chosen architecture before a run.

:func:`inspect_weights` is what the Setup page shows when a file is uploaded: the
architecture the file was saved from, how many of the model's backbone tensors it fills,
the feature size, or why it is refused. It applies the same rule as loading at run start
(``weights_fit.other_architecture``), so an upload that is accepted here also loads there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from finetune_core.models.backbone import SAME_ARCH_SCORE, ZOO, fit_score, guess_architecture
from finetune_core.models.backbone import signature as backbone_signature
from finetune_core.models.classifier import CUSTOM
from finetune_core.models.weights import load_exported_backbone, read_state_dict
from finetune_core.models.weights_fit import (
    WeightsError,
    best_key_layout,
    match_state_dict,
    other_architecture,
)


@dataclass(frozen=True)
class WeightsReport:
    """What :func:`inspect_weights` found in one file."""

    path: str
    arch: str  # the architecture the file was checked against
    ok: bool  # False: a run with this file and architecture would be refused
    message: str
    architecture_guess: str | None = None  # the zoo model it was saved from; "custom" for .pt2
    matched: int | None = None  # backbone tensors of ``arch`` found in the file
    total: int | None = None  # backbone tensors of ``arch``
    unused: int | None = None  # file tensors that would not be loaded (the head aside)
    feature_size: int | None = None  # length of the feature vector the head receives
    file_classes: int | None = None  # outputs of the file's own head, if it has one


def inspect_weights(path: str | Path, arch: str, image_size: int) -> WeightsReport:
    """Check a .pt/.pth state_dict against zoo architecture ``arch``, or a .pt2 backbone
    (``arch`` "custom") at ``image_size``; never raises for a bad file (``ok`` is False)."""
    path = Path(path)
    try:
        if path.suffix == ".pt2":
            return _inspect_backbone(path, arch, image_size)
        return _inspect_state_dict(path, arch)
    except WeightsError as exc:
        return WeightsReport(str(path), arch, ok=False, message=str(exc))


def _inspect_backbone(path: Path, arch: str, image_size: int) -> WeightsReport:
    if arch != CUSTOM:
        raise WeightsError(
            f"{path.name} is a complete .pt2 backbone: choose the model 'custom' to use it "
            f"(not {arch})."
        )
    _, feature_size = load_exported_backbone(path, image_size)
    return WeightsReport(
        str(path),
        arch,
        ok=True,
        message=(
            f"{path.name}: a torch.export backbone giving {feature_size} features per "
            f"{image_size}x{image_size} image; it stays frozen and a new head is trained."
        ),
        architecture_guess=CUSTOM,
        feature_size=feature_size,
    )


def _inspect_state_dict(path: Path, arch: str) -> WeightsReport:
    if arch not in ZOO:
        raise WeightsError(
            f"{path.name} is a state_dict; the model 'custom' needs a .pt2 backbone. Choose "
            f"the architecture it was saved from ({', '.join(ZOO)})."
        )
    sig = backbone_signature(arch)
    state = best_key_layout(read_state_dict(path), arch, sig.shapes)
    guess = arch if fit_score(state, arch) >= SAME_ARCH_SCORE else guess_architecture(state)[0]
    head = state.get("head.1.weight")
    classes = int(head.shape[0]) if head is not None and head.dim() == 2 else None
    plan = match_state_dict(state, sig.shapes)
    unused = len(plan.unused)
    problem = other_architecture(plan, arch, path.name)
    what = f"{arch} weights" if guess == arch else f"weights that fit {arch}"
    accepted = (
        f"{path.name}: {what}, {plan.matched} of {plan.total} backbone tensors match"
        + (f", {unused} of the file's tensors unused" if unused else "")
        + f"; {sig.feature_size} features per image. "
        + (
            f"Its head has {classes} outputs: kept when the dataset has as many classes, "
            "else a new head is trained."
            if classes is not None
            else "It has no head: a new one is trained."
        )
    )
    return WeightsReport(
        str(path),
        arch,
        ok=problem is None,
        message=problem or accepted,
        architecture_guess=guess,
        matched=plan.matched,
        total=plan.total,
        unused=unused,
        feature_size=sig.feature_size,
        file_classes=classes,
    )
