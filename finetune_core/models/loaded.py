"""A trained classifier loaded from a run's checkpoint, with its preprocessing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from finetune_core import device as devices
from finetune_core.data.images import ImageSource
from finetune_core.data.preprocess import preprocess_for_inference
from finetune_core.models import inference
from finetune_core.models.checkpoint import CheckpointError, load_checkpoint
from finetune_core.models.classifier import build_classifier
from finetune_core.runs import RunError, RunFolder


@dataclass
class LoadedModel:
    """A trained classifier with everything needed to preprocess its inputs."""

    model: torch.nn.Module  # a Classifier, in eval mode
    class_names: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int
    epoch: int
    device: torch.device

    def predict_uint8(self, images: torch.Tensor) -> np.ndarray:
        """Class probabilities (N, C) for uint8 (N,3,S,S) images at ``image_size``
        (the one fp32 forward pass, ``inference.probabilities``)."""
        if not len(images):
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        mean = torch.tensor(self.mean, dtype=torch.float32)
        std = torch.tensor(self.std, dtype=torch.float32)
        return inference.probabilities(self.model, images, mean, std, self.device)

    def predict_images(self, images: Sequence[Image.Image | ImageSource]) -> np.ndarray:
        """Probabilities for decoded images or image files: the one preprocessing."""
        if not images:
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        arr = np.stack([preprocess_for_inference(im, self.image_size) for im in images])
        return self.predict_uint8(torch.from_numpy(arr))


def load_run_model(run: RunFolder, which: str = "best", device: str = "cpu") -> LoadedModel:
    """Rebuild the classifier from a run's checkpoint (never downloads weights)."""
    try:
        ckpt = load_checkpoint(run.paths.checkpoint(which))
    except CheckpointError as exc:
        raise RunError(str(exc)) from exc
    weights = "none"
    if str(ckpt["config"].get("weights", "")).endswith(".pt2"):
        backbone = run.paths.backbone
        if not backbone.exists():
            raise RunError(
                f"The run's custom backbone ({backbone.name}) is missing from its folder."
            )
        weights = str(backbone)
    model, _ = build_classifier(
        ckpt["arch"], int(ckpt["num_classes"]), weights, image_size=int(ckpt["image_size"])
    )
    model.load_state_dict(ckpt["model_state"])
    dev = devices.resolve_device(device)
    model.to(dev).eval()
    return LoadedModel(
        model=model,
        class_names=list(ckpt["class_names"]),
        mean=tuple(ckpt["mean"]),
        std=tuple(ckpt["std"]),
        image_size=int(ckpt["image_size"]),
        epoch=int(ckpt.get("epoch", 0)),
        device=dev,
    )
