"""Predicting new images with a trained run: top-k per image, activation maps, and a
folder or zip of images in, a CSV of predictions out.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from finetune_core import csvsafe
from finetune_core.data.archive import Archive, Budget, IngestLimits
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


def _is_zip(name: str) -> bool:
    return name.lower().endswith(".zip")


def count_images(files: Sequence[tuple[str, bytes]], limits: IngestLimits | None = None) -> int:
    """How many images :func:`iter_images` will yield (zips: from their checked directory)."""
    limits = limits or IngestLimits()
    total = 0
    for name, data in files:
        if _is_zip(name):
            with Archive(io.BytesIO(data), name, limits) as archive:
                total += sum(1 for entry in archive.entries if _wanted(entry.parts))
        elif _wanted(_parts(name)):
            total += 1
    return total


def iter_images(
    files: Sequence[tuple[str, bytes]],
    limits: IngestLimits | None = None,
    tmp_dir: str | os.PathLike | None = None,
) -> Iterator[tuple[str, bytes | Path]]:
    """(name, bytes or path) of every image among uploads: single images as they came,
    the images of a zip through the archive reader, one at a time in a temporary file
    under ``tmp_dir`` that is removed when the next item is asked for.

    No entry is ever held in memory, and every zip of the upload spends one byte budget.
    System clutter (``__MACOSX``, hidden files) and non-image names are skipped.
    """
    limits = limits or (IngestLimits.for_dir(tmp_dir) if tmp_dir else IngestLimits())
    budget = Budget(limits)
    for name, data in files:
        if _is_zip(name):
            yield from _zip_images(name, data, limits, budget, tmp_dir)
        elif _wanted(_parts(name)):
            yield name, data


def _zip_images(
    name: str,
    data: bytes,
    limits: IngestLimits,
    budget: Budget,
    tmp_dir: str | os.PathLike | None,
) -> Iterator[tuple[str, Path]]:
    with (
        Archive(io.BytesIO(data), name, limits, budget) as archive,
        tempfile.TemporaryDirectory(prefix="predict-", dir=tmp_dir) as folder,
    ):
        for index, entry in enumerate(e for e in archive.entries if _wanted(e.parts)):
            # The entry's own name never becomes a path: only its extension is kept.
            path = Path(folder, f"{index:06d}{PurePosixPath(entry.parts[-1]).suffix.lower()}")
            archive.extract(entry, path)
            try:
                yield entry.name, path
            finally:
                path.unlink(missing_ok=True)


def _parts(name: str) -> tuple[str, ...]:
    return tuple(PurePosixPath(name.replace("\\", "/")).parts)


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
    limits: IngestLimits | None = None,
    tmp_dir: str | os.PathLike | None = None,
) -> list[Prediction]:
    """Predict every image in ``files`` (images or zips), in batches; unreadable files get
    an ``error`` instead of stopping the batch. Zip entries are streamed through a
    temporary file each (see :func:`iter_images`); a zip over a limit raises IngestError."""
    limits = limits or (IngestLimits.for_dir(tmp_dir) if tmp_dir else IngestLimits())
    total = count_images(files, limits)
    items = iter_images(files, limits, tmp_dir)
    return list(predict_stream(model, items, k=k, progress=progress, total=total))


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
    """One row per image: file, predicted class, its probability, every class probability.
    File and class names a spreadsheet would run as formulas get a leading quote (csvsafe)."""
    header = ["file", "prediction", "probability", "error", *[f"p:{c}" for c in class_names]]
    rows = []
    for p in predictions:
        probs = [f"{v:.6f}" for v in p.probs] if p.probs is not None else [""] * len(class_names)
        confidence = f"{p.confidence:.6f}" if p.confidence is not None else ""
        rows.append([p.name, p.label, confidence, p.error, *probs])
    return csvsafe.to_text(header, rows)


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
