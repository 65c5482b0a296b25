"""Augmentation presets applied to whole uint8 batches on the training device.

One ``affine_grid`` + ``grid_sample`` call gives every image its own random crop,
scale, flip and rotation; colour jitter and random erasing are per-sample tensor ops.
No per-image Python work, so augmentation costs a few percent of a training step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentPreset:
    """Ranges of the random transforms; zero turns a transform off."""

    min_scale: float = 1.0  # fraction of the side kept by the random crop
    flip: bool = False
    max_rotate_deg: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    erase_prob: float = 0.0


PRESETS: dict[str, AugmentPreset] = {
    "none": AugmentPreset(),
    "light": AugmentPreset(min_scale=0.8, flip=True, brightness=0.1, contrast=0.1),
    "standard": AugmentPreset(
        min_scale=0.6, flip=True, max_rotate_deg=10, brightness=0.2, contrast=0.2, saturation=0.2
    ),
    "strong": AugmentPreset(
        min_scale=0.4,
        flip=True,
        max_rotate_deg=20,
        brightness=0.35,
        contrast=0.35,
        saturation=0.35,
        erase_prob=0.25,
    ),
}


def normalize(batch_u8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (N,3,H,W) -> float32 normalised."""
    return (batch_u8.float().div_(255.0) - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def augment(
    batch_u8: torch.Tensor, preset: str | AugmentPreset, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Randomly augment a uint8 batch; returns float32 in [0, 1] on the batch's device."""
    p = PRESETS[preset] if isinstance(preset, str) else preset
    x = batch_u8.float().div_(255.0)
    n, device = x.shape[0], x.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device="cpu").to(device)

    if p.min_scale < 1.0 or p.flip or p.max_rotate_deg:
        # Area-uniform crop scale, centred anywhere the crop still fits inside the image.
        scale = torch.sqrt(p.min_scale**2 + (1 - p.min_scale**2) * rand(n))
        tx = (rand(n) * 2 - 1) * (1 - scale)
        ty = (rand(n) * 2 - 1) * (1 - scale)
        angle = (rand(n) * 2 - 1) * math.radians(p.max_rotate_deg)
        flip = torch.where(rand(n) < 0.5, -1.0, 1.0) if p.flip else torch.ones(n, device=device)
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        theta = torch.stack(
            [torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1
        )
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    if p.brightness:
        x = x * (1 + (rand(n, 1, 1, 1) * 2 - 1) * p.brightness)
    if p.contrast:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (1 + (rand(n, 1, 1, 1) * 2 - 1) * p.contrast) + mean
    if p.saturation:
        grey = x.mean(dim=1, keepdim=True)
        x = (x - grey) * (1 + (rand(n, 1, 1, 1) * 2 - 1) * p.saturation) + grey
    if p.erase_prob:
        h, w = x.shape[-2:]
        eh, ew = (rand(n) * 0.3 + 0.1) * h, (rand(n) * 0.3 + 0.1) * w
        cy, cx = rand(n) * h, rand(n) * w
        ys = torch.arange(h, device=device).view(1, h, 1)
        xs = torch.arange(w, device=device).view(1, 1, w)
        box = ((ys - cy.view(n, 1, 1)).abs() < eh.view(n, 1, 1) / 2) & (
            (xs - cx.view(n, 1, 1)).abs() < ew.view(n, 1, 1) / 2
        )
        box &= (rand(n) < p.erase_prob).view(n, 1, 1)
        x = x.masked_fill(box.unsqueeze(1), 0.5)
    return x.clamp_(0.0, 1.0)


def augment_normalized(
    batch_u8: torch.Tensor,
    preset: str,
    mean: torch.Tensor,
    std: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Augment (unless preset is none) and normalise a uint8 batch."""
    if preset == "none":
        return normalize(batch_u8, mean, std)
    x = augment(batch_u8, preset, generator)
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def preview(batch_u8: torch.Tensor, preset: str, views: int = 4, seed: int = 0) -> torch.Tensor:
    """``views`` augmented copies of each image as uint8 (N*views, 3, H, W), for the setup page."""
    gen = torch.Generator().manual_seed(seed)
    repeated = batch_u8.repeat_interleave(views, dim=0)
    return (augment(repeated, preset, gen) * 255).round().to(torch.uint8)
