"""Grad-CAM heatmaps: which part of an image drove a prediction.

`explain` hooks the target layer's output, takes the gradient of the class
score with ``torch.autograd.grad`` (so no parameter's ``.grad`` is touched),
weights each feature map by its mean gradient, keeps the positive part and
upsamples it to the image. Layers that do not give a conv feature map (a ViT's
tokens) fall back to input-gradient saliency, and the result says so. The
model's training flags, ``requires_grad`` flags and hooks are left as found.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

# What each method is called wherever a map is shown (captions, headers, notes).
METHOD_TITLES = {"grad-cam": "Grad-CAM", "saliency": "saliency (input gradients)"}


def method_title(method: str) -> str:
    """The name a user reads for ``CamResult.method``: 'Grad-CAM' only for Grad-CAM."""
    return METHOD_TITLES.get(method, method)


@dataclass
class CamResult:
    """A heatmap (H, W) in [0, 1] and how it was made."""

    heatmap: np.ndarray
    method: str  # "grad-cam" | "saliency" (see METHOD_TITLES)
    class_index: int
    note: str
    probability: float | None = None  # softmax probability of class_index

    @property
    def title(self) -> str:
        return method_title(self.method)


def grad_cam(
    model: nn.Module,
    target_layer: nn.Module | None,
    image: Tensor,
    class_index: int | None = None,
) -> np.ndarray:
    """The heatmap of `explain` alone: (H, W) float32 in [0, 1]."""
    return explain(model, target_layer, image, class_index).heatmap


def explain(
    model: nn.Module,
    target_layer: nn.Module | None,
    image: Tensor,
    class_index: int | None = None,
) -> CamResult:
    """Grad-CAM for ``class_index`` (default: the predicted class) of one normalised image.

    ``image`` is a (1, 3, H, W) tensor, normalised as the model expects.
    """
    if not isinstance(image, Tensor) or image.ndim != 4 or image.shape[0] != 1:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(
            f"image must be a tensor of shape (1, channels, H, W), got {shape}; "
            "add the batch dimension with image.unsqueeze(0)."
        )
    height, width = int(image.shape[-2]), int(image.shape[-1])
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    device = param.device if param is not None else image.device
    dtype = param.dtype if param is not None else torch.float32
    x = image.detach().to(device=device, dtype=dtype).clone().requires_grad_(True)

    modes = [(m, m.training) for m in model.modules()]
    captured: list[Tensor | None] = []  # None: the layer's output holds no tensor
    handle = None
    if target_layer is not None:
        handle = target_layer.register_forward_hook(
            lambda _module, _inputs, output: captured.append(_first_tensor(output))
        )
    try:
        model.eval()  # dropout off, batch norm on running statistics
        with torch.enable_grad():
            logits = _logits(model(x))
            num_classes = logits.shape[-1]
            class_index = int(logits[0].argmax()) if class_index is None else int(class_index)
            if not 0 <= class_index < num_classes:
                raise ValueError(
                    f"class_index {class_index} is out of range: "
                    f"the model has {num_classes} classes."
                )
            score = logits[0, class_index]
            if not score.requires_grad:
                raise ValueError(
                    "The model's output does not depend on its input through autograd "
                    "(does it run under torch.no_grad, or detach its features?)."
                )
            probability = float(torch.softmax(logits[0].detach().float(), dim=0)[class_index])
            activation = captured[-1] if captured else None
            reason = _why_not_cam(target_layer, activation)
            if reason is None:
                assert activation is not None
                heat = _cam(score, activation, (height, width))
                if heat is not None:
                    h, w = activation.shape[-2:]
                    name = _layer_name(model, target_layer)
                    note = f"Grad-CAM on {name} ({h}x{w} feature map)."
                    return CamResult(heat, "grad-cam", class_index, note, probability)
                reason = "Grad-CAM found no positive evidence for this class in the feature maps"
            heat = _saliency(score, x)
            note = f"{reason}; showing input-gradient saliency instead."
            return CamResult(heat, "saliency", class_index, note, probability)
    finally:
        if handle is not None:
            handle.remove()
        for module, training in modes:
            module.training = training


def overlay(image: Image.Image, heatmap: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """The image with the heatmap blended on top in a jet-like colour map."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1 (got {alpha}).")
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim != 2:
        raise ValueError(f"heatmap must be 2-D (H, W), got shape {heat.shape}.")
    base = image.convert("RGB")
    heat = np.clip(np.nan_to_num(heat, nan=0.0), 0.0, 1.0)
    if heat.shape != (base.height, base.width):
        resized = Image.fromarray(heat, mode="F").resize(base.size, Image.Resampling.BILINEAR)
        heat = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
    colors = jet(heat).astype(np.float32)
    pixels = np.asarray(base, dtype=np.float32)
    blended = (1.0 - alpha) * pixels + alpha * colors
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8), mode="RGB")


def jet(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to uint8 RGB: dark blue, blue, cyan, yellow, red, dark red."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25], dtype=np.float32)  # where R, G, B peak
    rgb = np.clip(1.5 - np.abs(4.0 * (v - centres)), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------- internals
def _first_tensor(output: object) -> Tensor | None:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((o for o in output if isinstance(o, Tensor)), None)
    return None


def _logits(output: object) -> Tensor:
    if hasattr(output, "logits"):
        output = output.logits
    out = _first_tensor(output)
    if out is None or out.ndim != 2 or out.shape[0] != 1:
        shape = tuple(out.shape) if out is not None else type(output).__name__
        raise ValueError(f"The model must return logits of shape (1, classes), got {shape}.")
    return out


def _why_not_cam(target_layer: nn.Module | None, activation: Tensor | None) -> str | None:
    """None when Grad-CAM can run, else the reason it cannot (for the note)."""
    if target_layer is None:
        return "No target layer was given"
    if activation is None:
        return "The target layer did not run (or returned no tensor) in the forward pass"
    if activation.ndim != 4:
        kind = " (transformer tokens)" if activation.ndim == 3 else ""
        return (
            f"The target layer outputs shape {tuple(activation.shape)}{kind}, "
            "not a convolutional feature map (N, C, h, w)"
        )
    if not activation.requires_grad:
        return "The target layer's output is detached from the graph"
    return None


def _cam(score: Tensor, activation: Tensor, size: tuple[int, int]) -> np.ndarray | None:
    (grads,) = torch.autograd.grad(score, activation, retain_graph=True)
    act = activation.detach().float()
    weights = grads.detach().float().mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * act).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
    return _normalise(cam[0, 0])


def _saliency(score: Tensor, x: Tensor) -> np.ndarray:
    (grads,) = torch.autograd.grad(score, x)
    sal = grads.detach().float().abs().amax(dim=1, keepdim=True)
    sal = _gaussian_blur(sal, sigma=max(1.0, min(sal.shape[-2:]) / 56))
    heat = _normalise(sal[0, 0])
    return heat if heat is not None else np.zeros(tuple(sal.shape[-2:]), dtype=np.float32)


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    radius = max(1, math.ceil(2 * sigma))
    radius = min(radius, (min(x.shape[-2:]) - 1) // 2) if min(x.shape[-2:]) > 2 else 0
    if radius < 1:
        return x
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    return F.conv2d(x, kernel.view(1, 1, -1, 1))


def _normalise(heat: Tensor) -> np.ndarray | None:
    """Scale to [0, 1]; None when the map is flat (nothing to show)."""
    lo, hi = float(heat.min()), float(heat.max())
    if not math.isfinite(lo) or not math.isfinite(hi) or hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return None
    return ((heat - lo) / (hi - lo)).cpu().numpy().astype(np.float32)


def _layer_name(model: nn.Module, layer: nn.Module | None) -> str:
    for name, module in model.named_modules():
        if module is layer:
            return name or "the model"
    return type(layer).__name__
