"""Picking images to show: thumbnails, a class's images, the files behind a health
finding, and the images in one confusion-matrix cell.

Pure functions over datasets and prediction rows, used by the dashboard's galleries
(and testable without it).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image

from finetune_core.data.augment import preview
from finetune_core.data.dataset import Dataset
from finetune_core.data.health import Finding
from finetune_core.data.images import ImageReadError, open_rgb
from finetune_core.data.manifest import ManifestRow
from finetune_core.data.preprocess import preprocess_for_inference


def thumbnail_bytes(path: str | Path, size: int = 160) -> bytes | None:
    """A JPEG thumbnail (longest side ``size``) of an image file; None if it cannot be read."""
    try:
        image = open_rgb(path, reduce_to=size)
    except (ImageReadError, OSError):
        return None
    return thumbnail_of(image, size)


def thumbnail_of(image: Image.Image, size: int = 160) -> bytes:
    """A JPEG thumbnail of a decoded image (longest side ``size``)."""
    image = image.convert("RGB")
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=88)
    return buffer.getvalue()


def class_rows(dataset: Dataset, label: str, split: str | None = None) -> list[ManifestRow]:
    """Usable images of one class (optionally one split), in manifest order."""
    return [r for r in dataset.rows(split) if r.label == label]


@dataclass(frozen=True)
class FindingFile:
    """One file named by a health finding: where it was in the upload, and its copy
    in the dataset (``path`` is None for files that could not be copied)."""

    source: str
    path: Path | None
    label: str
    reason: str
    usable: bool = False  # a readable image that training uses


def finding_files(
    dataset: Dataset, finding: Finding, limit: int | None = None
) -> list[FindingFile]:
    """The files behind a finding, matched to their dataset copies by source name."""
    by_source: dict[str, ManifestRow] = {}
    for manifest_row in dataset.all_rows():
        by_source.setdefault(manifest_row.source, manifest_row)
    out = []
    for source in finding.files[:limit] if limit else finding.files:
        row = by_source.get(source)
        path = dataset.images_dir / row.path if row is not None and row.path else None
        if path is not None and not path.is_file():
            path = None
        out.append(
            FindingFile(
                source=source,
                path=path,
                label=row.label if row is not None else "",
                reason=row.reason if row is not None else "",
                usable=row is not None and row.ok,
            )
        )
    return out


def cell_predictions(
    predictions: Iterable[dict[str, Any]], split: str, true_name: str, pred_name: str
) -> list[dict[str, Any]]:
    """Prediction rows of one confusion-matrix cell, most confident first."""
    rows = [
        p
        for p in predictions
        if p.get("split") == split and p.get("true") == true_name and p.get("pred") == pred_name
    ]
    return sorted(rows, key=lambda p: -float(p.get("prob_pred", 0.0)))


def true_class_probability(row: dict[str, Any], class_names: Sequence[str]) -> float | None:
    """The probability a prediction row gives to its true class."""
    try:
        return float(row["probs"][list(class_names).index(row["true"])])
    except (KeyError, ValueError, IndexError, TypeError):
        return None


@dataclass(frozen=True)
class ImageOrigin:
    """What a gallery caption says about an image: its file name and where it came from."""

    name: str  # the file name the user uploaded
    folder: str  # the folder it was in within the upload ("" at the top)
    split: str  # the split it was evaluated in (val, test)

    @property
    def where(self) -> str:
        """'val split · from train/cat/' (the folder only when there was one)."""
        parts = [f"{self.split} split"] if self.split else []
        if self.folder:
            parts.append(f"from {self.folder}/")
        return " · ".join(parts)

    @property
    def text(self) -> str:
        return " · ".join(p for p in (self.name, self.where) if p)


def image_origin(rel_path: str, sources: dict[str, str], split: str = "") -> ImageOrigin:
    """The origin of a dataset image for its caption, from ``source_names``' map (falling
    back to the dataset-relative path when the source is unknown)."""
    source = PurePosixPath(str(sources.get(rel_path) or rel_path).replace("\\", "/"))
    folder = "" if str(source.parent) in (".", "/") else str(source.parent)
    return ImageOrigin(name=source.name, folder=folder, split=split)


def cam_candidates(predictions: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Prediction rows in the order activation maps teach the most: the most confident
    mistakes first, then the least confident correct predictions."""
    wrong = [p for p in predictions if p.get("true") != p.get("pred")]
    right = [p for p in predictions if p.get("true") == p.get("pred")]
    wrong.sort(key=lambda p: -float(p.get("prob_pred", 0.0)))
    right.sort(key=lambda p: float(p.get("prob_pred", 0.0)))
    return wrong + right


def default_cam_paths(
    predictions: Sequence[dict[str, Any]], count: int = 4, mistakes: int = 3
) -> list[str]:
    """The images shown by default: up to ``mistakes`` most confident mistakes, the rest
    of ``count`` filled with the least confident correct predictions."""
    ordered = cam_candidates(predictions)
    wrong = [p for p in ordered if p.get("true") != p.get("pred")][: min(mistakes, count)]
    right = [p for p in ordered if p.get("true") == p.get("pred")][: count - len(wrong)]
    picked = wrong + right
    if len(picked) < count:  # few correct ones: more mistakes instead
        chosen = {id(p) for p in picked}
        picked += [p for p in ordered if id(p) not in chosen][: count - len(picked)]
    return [str(p["path"]) for p in picked]


def source_names(dataset: Dataset) -> dict[str, str]:
    """Dataset-relative image path -> the file name the user uploaded."""
    return {r.path: r.source for r in dataset.all_rows() if r.path}


def preview_rows(dataset: Dataset, per_class: int = 1, limit: int = 4) -> list[ManifestRow]:
    """A few training images, spread over the classes, for the augmentation preview."""
    rows = dataset.rows("train") or dataset.rows()
    picked: list[ManifestRow] = []
    for label in dataset.class_names:
        picked += [r for r in rows if r.label == label][:per_class]
    return picked[:limit]


def augmentation_preview(
    paths: Sequence[Path], preset: str, image_size: int, views: int = 4, seed: int = 0
) -> list[list[Image.Image]]:
    """For each image: the training-size original (the pixels training reads, from the
    one preprocessing), then ``views`` augmented versions."""
    originals = []
    for path in paths:
        try:
            originals.append(preprocess_for_inference(path, image_size))
        except (ImageReadError, OSError):
            continue
    if not originals:
        return []
    batch = torch.from_numpy(np.stack(originals))
    augmented = preview(batch, preset, views=views, seed=seed).numpy()
    out = []
    for i, original in enumerate(originals):
        row = [Image.fromarray(original.transpose(1, 2, 0))]
        for v in range(views):
            row.append(Image.fromarray(augmented[i * views + v].transpose(1, 2, 0)))
        out.append(row)
    return out
