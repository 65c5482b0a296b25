"""The activation map says which method made it: 'Grad-CAM' only when it is Grad-CAM."""

from __future__ import annotations

import torch
from torch import nn

from finetune_core.evaluation.gradcam import METHOD_TITLES, explain, method_title


def conv_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 2),
    )  # fmt: skip


def test_a_model_without_a_feature_map_falls_back_to_saliency_and_says_so() -> None:
    # A custom backbone gives no cam layer (Classifier.cam_layer() is None): saliency.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2))
    result = explain(model, None, torch.rand(1, 3, 16, 16))
    assert result.method == "saliency"
    assert result.title == method_title("saliency") == "saliency (input gradients)"
    assert "Grad-CAM" not in result.title
    assert "input-gradient saliency" in result.note
    assert (
        result.heatmap.shape == (16, 16)
        and 0.0 <= result.heatmap.min() <= result.heatmap.max() <= 1.0
    )


def test_grad_cam_is_called_grad_cam() -> None:
    model = conv_net()
    result = explain(model, model[0], torch.rand(1, 3, 16, 16))
    if result.method == "grad-cam":
        assert result.title == "Grad-CAM" and result.note.startswith("Grad-CAM on 0 ")
    else:  # no positive evidence for the class: saliency, and it says so
        assert result.title == METHOD_TITLES["saliency"]
    assert method_title("something-new") == "something-new"
