"""A run folder on disk, and the trained model inside it.

Layout: ``config.json`` (RunConfig), ``run.json`` (environment, dataset, CLI command),
``metrics.jsonl`` (one line per epoch), ``metrics.json`` (summary),
``checkpoints/best.pt`` and ``last.pt``, optionally ``backbone.pt2``, and after
evaluation ``eval.json``, ``predictions.csv``, ``report.html`` and ``export/``.
The dashboard's runs live in the workspace; CLI runs may live anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from finetune_core import device as devices
from finetune_core.models.checkpoint import CheckpointError, load_checkpoint
from finetune_core.config import RunConfig
from finetune_core.data.augment import normalize
from finetune_core.data.cache import to_uint8_chw
from finetune_core.fsutil import read_json


class RunError(Exception):
    """The run folder cannot be used for this; the message says why."""


@dataclass
class LoadedModel:
    """A trained classifier with everything needed to preprocess its inputs."""

    model: torch.nn.Module  # finetune_core.models.classifier.Classifier, in eval mode
    class_names: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int
    epoch: int
    device: torch.device

    @torch.no_grad()
    def predict_uint8(self, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
        """Class probabilities (N, C) for uint8 (N,3,S,S) images at ``image_size``."""
        mean = torch.tensor(self.mean, device=self.device)
        std = torch.tensor(self.std, device=self.device)
        out = []
        for start in range(0, len(images), batch_size):
            xb = normalize(images[start : start + batch_size].to(self.device), mean, std)
            out.append(torch.softmax(self.model(xb).float(), dim=1).cpu())
        if not out:
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        return torch.cat(out).numpy()

    def predict_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Probabilities for PIL images: the same resize and centre crop as training."""
        arr = np.stack([to_uint8_chw(im, self.image_size) for im in images]) if images else None
        if arr is None:
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        return self.predict_uint8(torch.from_numpy(arr))


class RunFolder:
    """Read access to one run's files."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / "config.json").exists():
            raise RunError(
                f"{self.path.name} is not a run folder (no config.json); "
                "pass the folder a training run wrote (--out)."
            )
        self.config = RunConfig.load(self.path / "config.json")
        self.info: dict[str, Any] = read_json(self.path / "run.json", {}) or {}

    @property
    def id(self) -> str:
        return self.path.name

    def checkpoint_path(self, which: str = "best") -> Path:
        return self.path / "checkpoints" / f"{which}.pt"

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path("best").exists()

    def history(self) -> list[dict[str, Any]]:
        from finetune_core.jobs.manager import read_history_file

        return read_history_file(self.path / "metrics.jsonl")

    def summary(self) -> dict[str, Any]:
        return read_json(self.path / "metrics.json", {}) or {}

    def evaluation(self) -> dict[str, Any] | None:
        return read_json(self.path / "eval.json")

    def load_model(self, which: str = "best", device: str = "cpu") -> LoadedModel:
        """Rebuild the classifier from a checkpoint (never downloads weights)."""
        from finetune_core.models.classifier import build_classifier

        try:
            ckpt = load_checkpoint(self.checkpoint_path(which))
        except CheckpointError as exc:
            raise RunError(str(exc)) from exc
        weights = "none"
        if str(ckpt["config"].get("weights", "")).endswith(".pt2"):
            backbone = self.path / "backbone.pt2"
            if not backbone.exists():
                raise RunError(
                    "The run's custom backbone (backbone.pt2) is missing from its folder."
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

    def dataset(self, workspace: Any = None) -> Any:
        """The dataset the run trained on (from the workspace that holds it)."""
        from finetune_core.data import DatasetNotFound, load_dataset
        from finetune_core.store import Workspace

        if workspace is None:
            root = self.info.get("workspace") or self.path.parent.parent
            if not (Path(root) / "workspace.db").exists():
                raise RunError(
                    "Cannot find the workspace that holds this run's dataset; pass --workspace."
                )
            workspace = Workspace(root)
        try:
            return load_dataset(workspace, self.config.dataset)
        except DatasetNotFound as exc:
            raise RunError(
                f"The run's dataset ({self.config.dataset}) is no longer in the workspace: {exc}"
            ) from exc
