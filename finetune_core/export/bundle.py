"""The export bundle's own files: where each one lives, and writing and reading them.

A bundle is one folder per format: the model file (``formats.ARTEFACTS``), ``labels.json``,
``preprocessing.json``, ``model.json``, ``predict.py`` (``predict_template.py`` copied
as is; it reads the format from model.json) and ``verification.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torchvision

from finetune_core.data.preprocess import inference_spec
from finetune_core.export.formats import ARTEFACTS
from finetune_core.fsutil import atomic_write_bytes, atomic_write_json, read_json
from finetune_core.models.backbone import family_of
from finetune_core.models.loaded import LoadedModel
from finetune_core.runs import RunFolder
from finetune_core.store import utc_now

TEMPLATE = "predict_template.py"


@dataclass(frozen=True)
class BundlePaths:
    """Every path inside one export bundle."""

    root: Path

    @property
    def labels(self) -> Path:
        return self.root / "labels.json"

    @property
    def model(self) -> Path:
        return self.root / "model.json"

    @property
    def preprocessing(self) -> Path:
        return self.root / "preprocessing.json"

    @property
    def verification(self) -> Path:
        return self.root / "verification.json"

    @property
    def predict(self) -> Path:
        return self.root / "predict.py"

    def artefact(self, fmt: str) -> Path:
        return self.root / ARTEFACTS[fmt]

    def backbone(self, run: RunFolder) -> Path:
        """A custom run's ``.pt2`` backbone, copied under the name it has in the run."""
        return self.root / run.paths.backbone.name


def template_source() -> bytes:
    """The stand-alone predict script, as shipped in the package."""
    return (resources.files("finetune_core.export") / TEMPLATE).read_bytes()


def write_bundle_files(
    bundle: BundlePaths, run: RunFolder, name: str, loaded: LoadedModel, fmt: str
) -> None:
    """labels.json, preprocessing.json, model.json and predict.py next to the model file."""
    atomic_write_json(bundle.labels, list(loaded.class_names))
    atomic_write_json(bundle.preprocessing, preprocessing_spec(loaded))
    atomic_write_json(bundle.model, model_meta(bundle, run, name, loaded, fmt))
    atomic_write_bytes(bundle.predict, template_source())


def model_meta(
    bundle: BundlePaths, run: RunFolder, name: str, loaded: LoadedModel, fmt: str
) -> dict[str, Any]:
    """model.json: the format (which predict.py reads), input, output and provenance."""
    arch = str(loaded.model.arch)  # a Classifier's architecture name
    size = loaded.image_size
    n_classes = len(loaded.class_names)
    meta: dict[str, Any] = {
        "format": fmt,
        "file": bundle.artefact(fmt).name,
        "arch": arch,
        "num_classes": n_classes,
        "image_size": size,
        "input": {"name": "input", "shape": ["batch", 3, size, size], "dtype": "float32"},
        "output": {"name": "logits", "shape": ["batch", n_classes], "apply": "softmax"},
        "run_id": run.id,
        "run_name": name,
        "checkpoint_epoch": loaded.epoch,
        "exported_at": utc_now(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }
    if fmt == "checkpoint":
        custom = arch == "custom"
        meta["backbone"] = bundle.backbone(run).name if custom else None
        fixed = not custom and family_of(arch).fixed_size
        meta["torchvision_kwargs"] = {"image_size": size} if fixed else {}
    return meta


def preprocessing_spec(loaded: LoadedModel) -> dict[str, Any]:
    """How to turn an image file into the model's input: ``data.preprocess``'s own spec
    of what it does (the code that prepared training's, evaluation's and predict's pixels)."""
    return inference_spec(loaded.image_size, loaded.mean, loaded.std)


def write_verification(bundle: BundlePaths, check: dict[str, Any]) -> None:
    atomic_write_json(bundle.verification, check)


def read_verification(bundle: BundlePaths) -> dict[str, Any] | None:
    """The bundle's verification.json; None when it is missing or unreadable."""
    try:
        data = read_json(bundle.verification)
    except (OSError, ValueError):  # an unreadable file is no check at all
        return None
    return data if isinstance(data, dict) else None
