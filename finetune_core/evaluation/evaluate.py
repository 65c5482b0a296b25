"""Evaluate a trained run on its validation and test splits.

Writes ``eval.json`` (metrics per split, see ``metrics.compute_metrics``) and
``predictions.csv`` (one row per image with every class probability), both
atomically: a failed evaluation leaves the previous files as they were.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from finetune_core import csvsafe
from finetune_core import device as devices
from finetune_core.data.cache import decoded_split
from finetune_core.data.dataset import run_dataset
from finetune_core.evaluation.metrics import compute_metrics
from finetune_core.fsutil import atomic_write_json, atomic_write_text
from finetune_core.models.inference import INFERENCE_BATCH
from finetune_core.models.loaded import load_run_model
from finetune_core.runs import RunError, RunFolder
from finetune_core.store import utc_now

SPLITS = ("val", "test")
# Images per read (a memory-mapped cache stays within its RAM budget); a multiple of the
# inference batch, so the batches are validation's and the figures match to the bit.
EVAL_CHUNK = 8 * INFERENCE_BATCH


def evaluate_run(
    run: RunFolder,
    *,
    workspace: Any = None,
    cache_dir: Path | None = None,
    splits: tuple[str, ...] = SPLITS,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Predict every val/test image with the best checkpoint and store the metrics.

    The images come from the decoded cache, which holds exactly
    ``preprocess_for_inference``'s pixels: the same as predict on the original files.
    """
    if not run.has_checkpoint():
        raise RunError(
            "This run has no saved model to evaluate: it ended before its first epoch "
            "finished. Re-run it, or resume it if it was stopped."
        )
    loaded = load_run_model(run, "best")
    dataset = run_dataset(run, workspace)
    if list(dataset.class_names) != loaded.class_names:
        raise RunError(
            "The dataset's classes changed since this run trained; evaluate a new run instead."
        )
    cache = Path(cache_dir) if cache_dir else run.paths.cache
    result: dict[str, Any] = {
        "run_id": run.id,
        "created_at": utc_now(),
        "checkpoint_epoch": loaded.epoch,
        "inference_precision": devices.INFERENCE_PRECISION,
        "class_names": loaded.class_names,
        "dataset_fingerprint": dataset.fingerprint,
        "splits": {},
    }
    rows: list[list[Any]] = []
    for split in splits:
        decoded = decoded_split(dataset, split, loaded.image_size, cache)
        if len(decoded) == 0:
            continue
        if progress:
            progress(f"predicting {len(decoded)} {split} images")
        probs = np.concatenate(
            [
                loaded.predict_uint8(decoded.take(slice(start, start + EVAL_CHUNK)))
                for start in range(0, len(decoded), EVAL_CHUNK)
            ]
        )
        y = decoded.labels.numpy()
        result["splits"][split] = compute_metrics(y, probs, loaded.class_names, paths=decoded.paths)
        pred = probs.argmax(1)
        for i, path in enumerate(decoded.paths):
            rows.append(
                [
                    split,
                    path,
                    loaded.class_names[y[i]],
                    loaded.class_names[pred[i]],
                    f"{probs[i, pred[i]]:.6f}",
                    *(f"{p:.6f}" for p in probs[i]),
                ]
            )
    if not result["splits"]:
        raise RunError("The dataset has no validation or test images to evaluate on.")
    atomic_write_text(run.paths.predictions, predictions_text(loaded.class_names, rows))
    atomic_write_json(run.paths.evaluation, result)
    return result


def predictions_text(class_names: list[str], rows: list[list[Any]]) -> str:
    """``predictions.csv``: split, path, true, pred, prob_pred and a ``p:<class>`` column
    per class; names a spreadsheet would run as formulas get a leading quote (csvsafe)."""
    header = ["split", "path", "true", "pred", "prob_pred", *[f"p:{c}" for c in class_names]]
    return csvsafe.to_text(header, rows)


def read_predictions(run: RunFolder) -> list[dict[str, Any]]:
    """The evaluation's per-image predictions, with probabilities as floats (names exactly
    as evaluated: the writer's quotes are removed)."""
    path = run.paths.predictions
    if not path.exists():
        return []
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csvsafe.dict_reader(handle)
        out: list[dict[str, Any]] = []
        for cells in reader:
            row: dict[str, Any] = dict(cells)
            row["prob_pred"] = float(row["prob_pred"])
            row["probs"] = np.array([float(row.pop(k)) for k in list(row) if k.startswith("p:")])
            out.append(row)
        return out
