"""Predicting new images with a trained run: top-k per image, activation maps, and a
folder or zip of images in, a CSV of predictions out.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from finetune_core.data.archive import IngestLimits, check_zip, open_zip
from finetune_core.data.augment import normalize
from finetune_core.data.images import IMAGE_EXTENSIONS, ImageReadError, ImageSource
from finetune_core.data.layout import ignore_reason
from finetune_core.data.preprocess import preprocess_for_inference
from finetune_core.evaluation.gradcam import explain, overlay
from finetune_core.models.loaded import LoadedModel

BATCH = 32


@dataclass
class Prediction:
    """One image's result: the top classes with probabilities, or why it failed."""

    name: str
    top: list[tuple[str, float]] = field(default_factory=list)
    probs: np.ndarray | None = None
    error: str = ""

    @property
    def label(self) -> str:
        return self.top[0][0] if self.top else ""

    @property
    def confidence(self) -> float | None:
        return self.top[0][1] if self.top else None


def top_k(probs: np.ndarray, class_names: Sequence[str], k: int = 5) -> list[tuple[str, float]]:
    order = np.argsort(-probs, kind="stable")[: min(k, len(class_names))]
    return [(class_names[i], float(probs[i])) for i in order]


def iter_images(
    files: Sequence[tuple[str, bytes]], limits: IngestLimits | None = None
) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every image among uploads; zips are opened safely and walked.

    System clutter (``__MACOSX``, hidden files) and non-image names are skipped.
    """
    limits = limits or IngestLimits()
    for name, data in files:
        if name.lower().endswith(".zip"):
            with open_zip(io.BytesIO(data), name) as zf:
                for parts, info in check_zip(zf, limits):
                    if _wanted(parts):
                        with zf.open(info) as handle:
                            yield "/".join(parts), handle.read()
        elif _wanted(tuple(PurePosixPath(name.replace("\\", "/")).parts)):
            yield name, data


def _wanted(parts: tuple[str, ...]) -> bool:
    if not parts or ignore_reason(parts) is not None:
        return False
    return PurePosixPath(parts[-1]).suffix.lower() in IMAGE_EXTENSIONS


def predict_files(
    model: LoadedModel,
    files: Sequence[tuple[str, bytes]],
    *,
    k: int = 5,
    progress: Callable[[int, int], None] | None = None,
) -> list[Prediction]:
    """Predict every image in ``files`` (images or zips), in batches; unreadable files get
    an ``error`` instead of stopping the batch."""
    items = list(iter_images(files))
    return list(predict_stream(model, items, k=k, progress=progress, total=len(items)))


def predict_stream(
    model: LoadedModel,
    items: Iterable[tuple[str, bytes | Path]],
    *,
    k: int = 5,
    progress: Callable[[int, int], None] | None = None,
    total: int = 0,
) -> Iterator[Prediction]:
    """Predictions for (name, bytes or path) pairs, in order, read lazily in batches of
    ``BATCH``: a folder of any size needs memory for one batch only."""
    pending: list[Prediction] = []
    batch: list[tuple[Prediction, np.ndarray]] = []

    def flush() -> list[Prediction]:
        if batch:
            arr = torch.from_numpy(np.stack([a for _, a in batch]))
            for (pred, _), p in zip(batch, model.predict_uint8(arr), strict=True):
                pred.probs = p
                pred.top = top_k(p, model.class_names, k)
            batch.clear()
        ready = pending.copy()
        pending.clear()
        return ready

    for done, (name, data) in enumerate(items, start=1):
        pred = Prediction(name=name)
        pending.append(pred)
        try:  # the one preprocessing: evaluation's and the exports' pixels
            batch.append((pred, preprocess_for_inference(data, model.image_size)))
        except ImageReadError as exc:
            pred.error = exc.reason
        except OSError as exc:
            pred.error = f"cannot read: {exc}"
        if len(batch) >= BATCH:
            yield from flush()
        if progress:
            progress(done, max(total, done))
    yield from flush()


def predictions_csv(predictions: Sequence[Prediction], class_names: Sequence[str]) -> str:
    """One row per image: file, predicted class, its probability, every class probability."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        ["file", "prediction", "probability", "error", *[f"p:{c}" for c in class_names]]
    )
    for p in predictions:
        probs = [f"{v:.6f}" for v in p.probs] if p.probs is not None else [""] * len(class_names)
        confidence = f"{p.confidence:.6f}" if p.confidence is not None else ""
        writer.writerow([p.name, p.label, confidence, p.error, *probs])
    return buffer.getvalue()


@dataclass
class Explanation:
    """The activation map of one image for its predicted (or a chosen) class."""

    image: Image.Image  # the model's input view (resized, centre-cropped)
    overlay: Image.Image
    class_name: str
    probability: float | None
    method: str
    note: str


def explain_image(
    model: LoadedModel, image: ImageSource | Image.Image, class_index: int | None = None
) -> Explanation:
    """Grad-CAM (or saliency, where the model has no conv feature map) for one image file
    or decoded image, on the pixels predict uses (``preprocess_for_inference``)."""

    arr = preprocess_for_inference(image, model.image_size)
    view = Image.fromarray(arr.transpose(1, 2, 0))
    mean = torch.tensor(model.mean, device=model.device)
    std = torch.tensor(model.std, device=model.device)
    x = normalize(torch.from_numpy(arr).unsqueeze(0).to(model.device), mean, std)
    cam_layer = getattr(model.model, "cam_layer", None)  # a Classifier's; None elsewhere
    layer = cam_layer() if cam_layer is not None else None
    result = explain(model.model, layer, x, class_index)
    return Explanation(
        image=view,
        overlay=overlay(view, result.heatmap),
        class_name=model.class_names[result.class_index],
        probability=result.probability,
        method=result.method,
        note=result.note,
    )
