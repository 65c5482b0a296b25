"""Weights saved from another architecture are refused, at upload and at run start, with
the architecture they were saved from named (issue 13 item 8)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from finetune_core.models.backbone import fit_score, guess_architecture
from finetune_core.models.classifier import WeightsError, build_classifier
from finetune_core.models.weights_check import inspect_weights
from finetune_core.models.weights_fit import modules_of, to_classifier_keys


def save_tv(tmp_path: Path, arch: str, num_classes: int = 1000, **extra: torch.Tensor) -> Path:
    torch.manual_seed(0)
    state = torchvision.models.get_model(arch, weights=None, num_classes=num_classes).state_dict()
    path = tmp_path / f"{arch}.pth"
    torch.save({**state, **extra}, path)
    return path


def test_resnet34_weights_on_resnet18_are_refused_naming_resnet34(tmp_path):
    path = save_tv(tmp_path, "resnet34")
    report = inspect_weights(path, "resnet18", 224)
    assert not report.ok
    assert report.architecture_guess == "resnet34"
    # resnet18's keys are a subset of resnet34's: every one matches, 96 are left over
    assert (report.matched, report.total, report.unused) == (120, 120, 96)
    assert "looks like weights for resnet34, not resnet18" in report.message
    assert "layer1.2.*" in report.message and "layer3.3.*" in report.message
    with pytest.raises(WeightsError) as exc:  # run start: the same rule, the same words
        build_classifier("resnet18", 3, str(path))
    assert str(exc.value) == report.message


def test_resnet18_weights_on_resnet34_are_refused_naming_resnet18(tmp_path):
    path = save_tv(tmp_path, "resnet18")
    report = inspect_weights(path, "resnet34", 224)
    assert not report.ok and report.architecture_guess == "resnet18"
    assert (report.matched, report.total, report.unused) == (120, 216, 0)
    assert "start 96 of its own from random values" in report.message
    with pytest.raises(WeightsError, match="looks like weights for resnet18, not resnet34"):
        build_classifier("resnet34", 3, str(path))


def test_matching_weights_are_accepted_with_their_counts(tmp_path):
    path = save_tv(tmp_path, "resnet18", num_classes=3)
    report = inspect_weights(path, "resnet18", 224)
    assert report.ok, report.message
    assert report.architecture_guess == "resnet18"
    assert (report.matched, report.total, report.unused) == (120, 120, 0)
    assert (report.feature_size, report.file_classes) == (512, 3)
    assert "120 of 120 backbone tensors match; 512 features per image" in report.message
    model, load = build_classifier("resnet18", 3, str(path))
    assert load.loaded_tensors == 122 and not load.replaced_head  # 120 + the file's head
    other = inspect_weights(save_tv(tmp_path, "mobilenet_v3_small"), "mobilenet_v3_small", 224)
    assert other.ok and (other.matched, other.total, other.feature_size) == (242, 242, 1024)


def test_foreign_layers_are_refused_but_an_extra_head_is_not(tmp_path):
    layers = {f"blocks.{i}.conv.weight": torch.zeros(8, 8, 3, 3) for i in range(13)}
    report = inspect_weights(save_tv(tmp_path, "resnet18", **layers), "resnet18", 224)
    assert not report.ok and report.unused == 13
    assert "13 tensors that resnet18 has no place for" in report.message
    assert "blocks.0.*" in report.message
    head = {f"projector.{i}.weight": torch.zeros(64, 64) for i in range(13)}
    accepted = inspect_weights(save_tv(tmp_path, "resnet18", **head), "resnet18", 224)
    assert accepted.ok and accepted.unused == 13
    assert "13 of the file's tensors unused" in accepted.message


def test_architecture_guess_comes_from_the_key_signatures(tmp_path):
    state = torchvision.models.efficientnet_b0(weights=None).state_dict()
    mapped = to_classifier_keys(state, "efficientnet_b0")
    assert guess_architecture(mapped)[0] == "efficientnet_b0"
    assert fit_score(mapped, "efficientnet_b0") == 1.0
    assert fit_score(mapped, "resnet18") == 0.0
    assert modules_of(["backbone.layer1.2.conv1.weight", "backbone.layer1.2.bn1.bias",
                       "backbone.fc2.weight"]) == "layer1.2.*, fc2.*"  # fmt: skip


class TinyBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).mean(dim=(2, 3))


def test_pt2_backbone_reports_its_feature_size(tmp_path):
    torch.manual_seed(0)
    batch = {"x": {0: torch.export.Dim("batch", min=1)}}
    program = torch.export.export(
        TinyBackbone().eval(), (torch.randn(2, 3, 32, 32),), dynamic_shapes=batch
    )
    path = tmp_path / "tiny.pt2"
    torch.export.save(program, str(path))
    report = inspect_weights(path, "custom", 32)
    assert report.ok and report.architecture_guess == "custom" and report.feature_size == 6
    assert "6 features per 32x32 image" in report.message
    wrong = inspect_weights(path, "resnet18", 32)
    assert not wrong.ok and "choose the model 'custom'" in wrong.message
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"not a program")
    bad = inspect_weights(junk, "custom", 32)
    assert not bad.ok and "is not a torch.export program" in bad.message
