"""Prove an export predicts what the trained model predicts.

The export is loaded back through the bundle's own ``predict.py`` (so the script users
run is what was checked), run on up to SAMPLE_IMAGES real images of the run's dataset
preprocessed exactly as in training, and its softmax probabilities are compared with
the PyTorch model's. A failed check is recorded and reported, never passed silently.
"""

from __future__ import annotations

import importlib.util
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from finetune_core.data.augment import normalize
from finetune_core.data.dataset import run_dataset
from finetune_core.data.images import ImageReadError
from finetune_core.data.preprocess import preprocess_for_inference
from finetune_core.export.bundle import BundlePaths
from finetune_core.export.errors import first_line, quiet
from finetune_core.export.formats import FORMAT_TITLES, ExportError
from finetune_core.models.loaded import LoadedModel
from finetune_core.models.safe_pt2 import check_archive
from finetune_core.runs import RunError, RunFolder
from finetune_core.store import Workspace, utc_now

TOLERANCE = 1e-4  # max |softmax difference| allowed for an fp32 export
PREPROCESS_TOLERANCE = 1e-6  # predict.py's preprocessing vs training's, on normalised pixels
SAMPLE_IMAGES = 16


@dataclass
class SampleInputs:
    """Images to verify an export on, preprocessed exactly as in training."""

    batch: torch.Tensor  # (N, 3, S, S) float32, normalised
    files: list[Path]  # the image files (empty for synthetic inputs)
    source: str  # where the images came from, for the message


def sample_inputs(run: RunFolder, loaded: LoadedModel, workspace: Workspace | None) -> SampleInputs:
    """Up to SAMPLE_IMAGES real images: the val split first, then test, then train.

    When the run's dataset is gone, fixed random images stand in (the message says so).
    """
    rows_by_split: list[tuple[str, list[Path]]] = []
    dataset = None
    if workspace is not None:
        try:
            dataset = run_dataset(run, workspace)
        except RunError:
            dataset = None
    if dataset is not None:
        for split in ("val", "test", "train"):
            rows_by_split.append((split, [dataset.image_path(r) for r in dataset.rows(split)]))
    arrays: list[np.ndarray] = []
    files: list[Path] = []
    counts: dict[str, int] = {}
    for split, paths in rows_by_split:
        for path in spread(paths, SAMPLE_IMAGES - len(files)):
            try:
                arrays.append(preprocess_for_inference(path, loaded.image_size))
            except (ImageReadError, OSError):
                continue
            files.append(path)
            counts[split] = counts.get(split, 0) + 1
    if arrays:
        u8 = torch.from_numpy(np.stack(arrays))
        source = ", ".join(f"{n} {split}" for split, n in counts.items())
        source = f"{len(files)} images of the run's dataset ({source})"
    else:
        gen = torch.Generator().manual_seed(0)
        size = loaded.image_size
        u8 = torch.randint(0, 256, (8, 3, size, size), generator=gen, dtype=torch.uint8)
        source = "8 random images (the run's dataset is not available)"
    mean = torch.tensor(loaded.mean, dtype=torch.float32)
    std = torch.tensor(loaded.std, dtype=torch.float32)
    batch = normalize(u8, mean, std).contiguous()
    if len(batch) == 1:  # a batch of one would let the exporter fix the batch size to 1
        batch = batch.repeat(2, 1, 1, 1)
    return SampleInputs(batch=batch, files=files, source=source)


def spread(items: list[Path], n: int) -> list[Path]:
    """``n`` items spread evenly over ``items`` (so several classes are covered)."""
    if n <= 0 or not items:
        return []
    if len(items) <= n:
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def load_predict_module(folder: Path) -> ModuleType:
    """Import a bundle's predict.py as a module."""
    name = f"_finetune_export_predict_{secrets.token_hex(4)}"
    spec = importlib.util.spec_from_file_location(name, BundlePaths(folder).predict)
    if spec is None or spec.loader is None:
        raise ExportError(f"Cannot load the generated predict.py in {folder.name}.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module


def check_programs(folder: Path) -> None:
    """Raise UnsafeProgramError if a .pt2 file in the bundle would run code when loaded.

    predict.py loads its files with plain ``torch.export.load`` (it cannot import the
    safe loader); verification runs it in this process, so the archives are checked first.
    """
    for path in sorted(folder.glob("*.pt2")):
        check_archive(path)


@torch.no_grad()
def verify_export(
    folder: Path, fmt: str, model: torch.nn.Module, samples: SampleInputs
) -> dict[str, Any]:
    """Compare the export (loaded by its own predict.py) with ``model`` on ``samples``.

    Passes when every softmax probability is within TOLERANCE, the top class agrees on
    every image whose top two reference probabilities are more than TOLERANCE apart (a
    closer pair is a tie either answer is right for), a batch of one gives the same
    answer (the batch axis is really dynamic), and predict.py's own image preprocessing
    reproduces training's on the sample files.
    """
    x = samples.batch
    reference = torch.softmax(model(x).float(), dim=1).double().numpy()
    problems: list[str] = []
    diff: float | None = None
    probs: np.ndarray | None
    single: np.ndarray | None
    try:
        with quiet():
            check_programs(folder)
            module = load_predict_module(folder)
            predictor = module.Predictor(folder)
            probs = np.asarray(predictor.probabilities(x.numpy()), dtype=np.float64)
            single = np.asarray(predictor.probabilities(x[:1].numpy()), dtype=np.float64)
            pixels = [
                module.preprocess(module.load_image(f), predictor.preprocessing)
                for f in samples.files
            ]
    except Exception as exc:  # the export does not load or run: that is a failed check
        problems.append(
            "the export could not be loaded and run "
            f"({type(exc).__name__}: {first_line(exc)[:300]})"
        )
        probs, single, pixels = None, None, []

    agree = disagree_real = 0
    preprocess_diff: float | None = None
    if probs is not None and single is not None:
        if not np.isfinite(reference).all():
            problems.append("the trained model itself gives non-finite outputs on these images")
        elif probs.shape != reference.shape or not np.isfinite(probs).all():
            problems.append(f"the export returned shape {probs.shape} or non-finite values")
        else:
            diff = float(max(np.abs(probs - reference).max(), np.abs(single - reference[:1]).max()))
            ref_top, got_top = reference.argmax(1), probs.argmax(1)
            ordered = np.sort(reference, axis=1)
            margin = ordered[:, -1] - (ordered[:, -2] if reference.shape[1] > 1 else 0.0)
            agree = int((ref_top == got_top).sum())
            disagree_real = int(((ref_top != got_top) & (margin > TOLERANCE)).sum())
            if diff > TOLERANCE:
                problems.append(
                    f"max |probability difference| {diff:.2e} > tolerance {TOLERANCE:.0e}"
                )
            if disagree_real:
                problems.append(f"the top class differs on {disagree_real} of {len(x)} images")
    if pixels:
        expected = x[: len(pixels)].numpy()
        preprocess_diff = float(np.abs(np.stack(pixels) - expected).max())
        if preprocess_diff > PREPROCESS_TOLERANCE:
            problems.append(
                f"predict.py preprocesses images differently from training "
                f"(max difference {preprocess_diff:.2e})"
            )
    n = len(x)
    passed = not problems
    title = FORMAT_TITLES[fmt]
    if passed:
        message = (
            f"Verified: the {title} export matches the PyTorch model on {samples.source}: "
            f"max |probability difference| {diff:.2e} <= {TOLERANCE:.0e}, "
            f"same top class on {agree}/{n}."
        )
    else:
        message = (
            f"NOT verified: the {title} export differs from the PyTorch model: "
            + "; ".join(problems)
            + "."
        )
    artefact = BundlePaths(folder).artefact(fmt).name
    return {
        "format": fmt,
        "passed": passed,
        "max_abs_diff": diff,
        "tolerance": TOLERANCE,
        "compared": "softmax probabilities",
        "images": n,
        "image_source": samples.source,
        "top1_agree": agree,
        "top1_disagree_beyond_ties": disagree_real,
        "preprocessing_max_abs_diff": preprocess_diff,
        "checked_with": f"predict.py in this folder ({artefact}), batch of {n} and batch of 1",
        "message": message,
        "checked_at": utc_now(),
    }
