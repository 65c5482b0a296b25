"""Export a trained run, and prove the export predicts what the trained model predicts.

Formats: ``checkpoint`` (weights + architecture name, rebuilt with plain torchvision),
``pt2`` (a ``torch.export`` ExportedProgram), ``torchscript`` and ``onnx``. Each lands in
``<run>/export/<format>/`` with ``labels.json``, ``preprocessing.json``, ``model.json``,
a generated ``predict.py`` that needs no Finetune Dashboard, and ``verification.json``,
plus ``<run>/export/<format>.zip`` of that folder for download.

Verification loads the export back through the generated ``predict.py`` itself (so the
snippet users run is what was checked), runs it on up to 16 real images of the run's
dataset preprocessed exactly as in training, and compares softmax probabilities with
the PyTorch model. A failed check is recorded and reported, never passed silently.
Everything is built in a temp folder inside ``export/`` and moved into place with
``os.replace``, so the run folder never holds half an export.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import shutil
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finetune_core.data.augment import normalize
from finetune_core.data.cache import to_uint8_chw
from finetune_core.data.dataset import run_dataset
from finetune_core.data.images import ImageReadError, open_rgb
from finetune_core.fsutil import atomic_write, atomic_write_json, read_json
from finetune_core.models.backbone import family_of
from finetune_core.models.loaded import LoadedModel, load_run_model
from finetune_core.runs import RunError, RunFolder, run_record, run_status, run_workspace
from finetune_core.store import RunStatus, Workspace, utc_now

FORMATS = ("checkpoint", "pt2", "torchscript", "onnx")
FORMAT_TITLES = {
    "checkpoint": "checkpoint (state_dict)",
    "pt2": "ExportedProgram (.pt2)",
    "torchscript": "TorchScript",
    "onnx": "ONNX",
}
ARTEFACTS = {
    "checkpoint": "weights.pt",
    "pt2": "model.pt2",
    "torchscript": "model.torchscript.pt",
    "onnx": "model.onnx",
}
EXPORT_DIR = "export"
TOLERANCE = 1e-4  # max |softmax difference| allowed for an fp32 export
PREPROCESS_TOLERANCE = 1e-6  # predict.py's preprocessing vs training's, on normalised pixels
SAMPLE_IMAGES = 16
ONNX_HINT = "install the onnx extra: pip install 'finetune-dashboard[onnx]'"


class ExportError(RunError):
    """The export cannot be attempted (unknown format, missing packages)."""


@dataclass
class ExportResult:
    """What an export produced and whether it was verified.

    ``path`` is the zip to download (None when the exporter itself failed); ``files``
    are the names inside the export folder; ``details`` is verification.json.
    """

    format: str
    path: Path | None
    verified: bool
    max_abs_diff: float | None
    tolerance: float
    message: str
    files: list[str] = field(default_factory=list)
    folder: Path | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = self.path.name if self.path else None
        out["folder"] = self.folder.name if self.folder else None
        return out


# ------------------------------------------------------------ checks
def check_exportable(run: RunFolder, workspace: Workspace | None) -> None:
    """Raise RunError unless the run has a model worth exporting."""
    if run_status(run, workspace) == RunStatus.FAILED:
        raise RunError(
            "This run FAILED; its model is not exported. Fix the cause shown on the run "
            "and re-run it, then export the new run."
        )
    if not run.has_checkpoint():
        raise RunError(
            "This run has no saved model to export: it ended before its first epoch "
            "finished. Re-run it, or resume it if it was stopped."
        )


def read_export_checks(run: RunFolder) -> list[dict[str, Any]]:
    """Every export's verification.json in the run folder, in FORMATS order."""
    checks = []
    for fmt in FORMATS:
        try:
            data = read_json(run.path / EXPORT_DIR / fmt / "verification.json")
        except (OSError, ValueError):  # an unreadable file is no check at all
            continue
        if isinstance(data, dict):
            checks.append(data)
    return checks


# ------------------------------------------------------------------- export
def export_run(
    run: RunFolder,
    fmt: str,
    out_dir: Path | None = None,
    *,
    workspace: Workspace | str | Path | None = None,
) -> ExportResult:
    """Export the run's best checkpoint as ``fmt`` into ``out_dir`` (default ``run/export``).

    Raises RunError for a run without a checkpoint or a FAILED run, ExportError for an
    unknown format or missing ONNX packages. An exporter that cannot handle the model
    gives ``verified=False`` with its first error line; a check that fails gives
    ``verified=False`` with the numbers (the export is still written, to inspect).
    """
    fmt = (fmt or "").strip().lower()
    if fmt not in FORMATS:
        raise ExportError(f"Unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    ws = run_workspace(run, workspace)
    check_exportable(run, ws)
    if fmt == "onnx":
        _require_onnx()
    loaded = load_run_model(run, "best", device="cpu")
    model = loaded.model.float().eval()
    samples = sample_inputs(run, loaded, ws)
    root = Path(out_dir) if out_dir else run.path / EXPORT_DIR
    root.mkdir(parents=True, exist_ok=True)
    _clean_stale(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{fmt}-", dir=root))
    try:
        try:
            with _quiet():
                _EXPORTERS[fmt](model, samples.batch[:2], tmp, run)
        except Exception as exc:  # the exporter's own error, reported with its first line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return ExportResult(
                format=fmt,
                path=None,
                verified=False,
                max_abs_diff=None,
                tolerance=TOLERANCE,
                message=f"The {FORMAT_TITLES[fmt]} export failed ({type(exc).__name__}): "
                f"{first[:300]}",
            )
        record = run_record(run, ws)
        name = (record.name if record else "") or run.config.name or run.id
        _write_common(tmp, run, name, loaded, fmt)
        check = verify_export(tmp, fmt, model, samples)
        atomic_write_json(tmp / "verification.json", check)
        files = sorted(p.name for p in tmp.iterdir())
        _make_readable(tmp)
        folder = root / fmt
        zip_path = root / f"{fmt}.zip"
        partial_zip = root / f"{tmp.name}.zip"
        _write_zip(tmp, partial_zip, f"{run.id}-{fmt}")
        partial_zip.chmod(0o644)
        _swap_in(tmp, folder)
        os.replace(partial_zip, zip_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            (root / f"{tmp.name}.zip").unlink()
    return ExportResult(
        format=fmt,
        path=zip_path,
        verified=bool(check["passed"]),
        max_abs_diff=check["max_abs_diff"],
        tolerance=TOLERANCE,
        message=check["message"],
        files=files,
        folder=folder,
        details=check,
    )


def _require_onnx() -> None:
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if not _importable(m)]
    if missing:
        raise ExportError(f"ONNX export needs {', '.join(missing)}: {ONNX_HINT}")


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:  # ImportError, or a broken install that fails on import
        return False
    return True


@contextlib.contextmanager
def _quiet():
    """Exporters warn about deprecations and tracing details; the result says what matters."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ---------------------------------------------------------------- exporters
def _batch_dim() -> Any:
    # AUTO, not Dim("batch", max=...): a custom .pt2 backbone brings its own batch range,
    # and a fixed range of ours would clash with it. Verification runs batches of 1 and
    # N, so a batch axis the exporter made static cannot pass unnoticed.
    return torch.export.Dim.AUTO


def _export_checkpoint(
    model: torch.nn.Module, example: torch.Tensor, tmp: Path, run: RunFolder
) -> None:
    """weights.pt in torchvision's own parameter names (or backbone + head for .pt2 runs)."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if model.arch == "custom":
        shutil.copy2(run.path / "backbone.pt2", tmp / "backbone.pt2")
        payload: dict[str, Any] = {
            "backbone": {
                k.removeprefix("backbone.net."): v
                for k, v in state.items()
                if k.startswith("backbone.net.")
            },
            "head": {
                k.removeprefix("head.1."): v for k, v in state.items() if k.startswith("head.1.")
            },
        }
    else:
        payload = torchvision_state_dict(model.arch, state)
    atomic_write(tmp / ARTEFACTS["checkpoint"], lambda h: torch.save(payload, h))


def torchvision_state_dict(arch: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Classifier's state_dict renamed for ``torchvision.models.get_model(arch, num_classes=N)``.

    The Classifier is the torchvision model with its last Linear moved into ``head.1``
    (and a Dropout before it replaced by Identity, which holds no weights), so renaming
    ``backbone.*`` -> ``*`` and ``head.1.*`` -> ``<family head>.*`` restores the layout.
    """

    head = family_of(arch).head
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("backbone."):
            out[key.removeprefix("backbone.")] = value
        elif key.startswith("head.1."):
            out[f"{head}.{key.removeprefix('head.1.')}"] = value
    return out


def _export_pt2(model: torch.nn.Module, example: torch.Tensor, tmp: Path, run: RunFolder) -> None:
    program = torch.export.export(model, (example,), dynamic_shapes=({0: _batch_dim()},))
    torch.export.save(program, str(tmp / ARTEFACTS["pt2"]))


def _export_torchscript(
    model: torch.nn.Module, example: torch.Tensor, tmp: Path, run: RunFolder
) -> None:
    traced = torch.jit.trace(model, example)
    torch.jit.save(traced, str(tmp / ARTEFACTS["torchscript"]))


def _export_onnx(model: torch.nn.Module, example: torch.Tensor, tmp: Path, run: RunFolder) -> None:
    path = tmp / ARTEFACTS["onnx"]
    try:
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: _batch_dim()},),
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    except Exception as dynamo_error:  # the TorchScript-based exporter handles some others
        try:
            torch.onnx.export(
                model,
                (example,),
                str(path),
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                dynamo=False,
            )
        except Exception:
            raise dynamo_error from None


_EXPORTERS: dict[str, Callable[[torch.nn.Module, torch.Tensor, Path, RunFolder], None]] = {
    "checkpoint": _export_checkpoint,
    "pt2": _export_pt2,
    "torchscript": _export_torchscript,
    "onnx": _export_onnx,
}


# ------------------------------------------------------------- common files
def _write_common(tmp: Path, run: RunFolder, name: str, loaded: LoadedModel, fmt: str) -> None:
    import torchvision

    model = loaded.model
    size = loaded.image_size
    atomic_write_json(tmp / "labels.json", list(loaded.class_names))
    atomic_write_json(tmp / "preprocessing.json", preprocessing_spec(loaded))
    custom = model.arch == "custom"
    meta: dict[str, Any] = {
        "format": fmt,
        "file": ARTEFACTS[fmt],
        "arch": model.arch,
        "num_classes": len(loaded.class_names),
        "image_size": size,
        "input": {"name": "input", "shape": ["batch", 3, size, size], "dtype": "float32"},
        "output": {
            "name": "logits",
            "shape": ["batch", len(loaded.class_names)],
            "apply": "softmax",
        },
        "run_id": run.id,
        "run_name": name,
        "checkpoint_epoch": loaded.epoch,
        "exported_at": utc_now(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }
    if fmt == "checkpoint":
        meta["backbone"] = "backbone.pt2" if custom else None
        meta["torchvision_kwargs"] = (
            {"image_size": size} if not custom and _fixed_size(model.arch) else {}
        )
    atomic_write_json(tmp / "model.json", meta)
    script = (
        PREDICT_TEMPLATE.replace("@@FORMAT@@", fmt)
        .replace("@@TITLE@@", FORMAT_TITLES[fmt])
        .replace("@@RUN@@", _one_line(meta["run_name"]))
        .replace("@@REQUIREMENTS@@", _requirements(fmt, custom))
        .replace("@@SIZE@@", str(size))
    )
    atomic_write(tmp / "predict.py", lambda h: h.write(script.encode("utf-8")))


def preprocessing_spec(loaded: LoadedModel) -> dict[str, Any]:
    """How to turn an image file into the model's input, exactly as training did."""
    return {
        "image_size": loaded.image_size,
        "color": "RGB; transparency composited on white; EXIF orientation applied",
        "resize": "shorter side to image_size, then centre crop image_size x image_size",
        "interpolation": "bilinear",
        "scale": "pixel / 255 -> float32 in [0, 1]",
        "mean": [float(v) for v in loaded.mean],
        "std": [float(v) for v in loaded.std],
        "normalize": "(x - mean) / std per channel",
        "layout": "NCHW",
        "dtype": "float32",
    }


def _fixed_size(arch: str) -> bool:

    return family_of(arch).fixed_size


def _requirements(fmt: str, custom: bool) -> str:
    if fmt == "onnx":
        return "onnxruntime, numpy and Pillow"
    if fmt == "checkpoint" and not custom:
        return "torch, torchvision and Pillow"
    return "torch, numpy and Pillow"


def _one_line(text: str) -> str:
    """Text that is safe inside the generated script's docstring."""
    text = " ".join(str(text).split()).replace("\\", "/").replace('"', "'")
    return text.replace("@@", "@ @")


# ------------------------------------------------------------- verification
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
        for path in _spread(paths, SAMPLE_IMAGES - len(files)):
            try:
                arrays.append(to_uint8_chw(open_rgb(path), loaded.image_size))
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


def _spread(items: list[Path], n: int) -> list[Path]:
    """``n`` items spread evenly over ``items`` (so several classes are covered)."""
    if n <= 0 or not items:
        return []
    if len(items) <= n:
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def load_predict_module(folder: Path) -> Any:
    """Import an export folder's generated predict.py as a module."""
    name = f"_finetune_export_predict_{secrets.token_hex(4)}"
    spec = importlib.util.spec_from_file_location(name, folder / "predict.py")
    if spec is None or spec.loader is None:
        raise ExportError(f"Cannot load the generated predict.py in {folder.name}.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module


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
    try:
        with _quiet():
            module = load_predict_module(folder)
            predictor = module.Predictor(folder)
            probs = np.asarray(predictor.probabilities(x.numpy()), dtype=np.float64)
            single = np.asarray(predictor.probabilities(x[:1].numpy()), dtype=np.float64)
            pixels = [
                module.preprocess(module.load_image(f), predictor.preprocessing)
                for f in samples.files
            ]
    except Exception as exc:  # the export does not load or run: that is a failed check
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        problems.append(
            f"the export could not be loaded and run ({type(exc).__name__}: {first[:300]})"
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
        "checked_with": f"predict.py in this folder ({ARTEFACTS[fmt]}), batch of {n} and batch of 1",
        "message": message,
        "checked_at": utc_now(),
    }


# ------------------------------------------------------------------ files
def _write_zip(folder: Path, dest: Path, top: str) -> None:
    def write(handle: Any) -> None:
        with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(folder.iterdir()):
                # Weights hardly compress; storing them keeps a 100 MB export fast.
                text = path.suffix in (".json", ".py", ".txt")
                kind = zipfile.ZIP_DEFLATED if text else zipfile.ZIP_STORED
                archive.write(path, f"{top}/{path.name}", compress_type=kind)

    atomic_write(dest, write)


def _clean_stale(root: Path, max_age_s: float = 3600.0) -> None:
    """Remove temp folders and zips that a killed export left behind."""
    import time

    for path in root.iterdir():
        if not path.name.startswith((".tmp-", ".old-")):
            continue
        with contextlib.suppress(OSError):
            if time.time() - path.stat().st_mtime > max_age_s:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink()


def _make_readable(folder: Path) -> None:
    """Temp files are private (0600); an export is meant to be shared like any other file."""
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)


def _swap_in(tmp: Path, folder: Path) -> None:
    """Move the finished ``tmp`` folder to ``folder``, replacing an older export."""
    old = None
    if folder.exists():
        old = folder.with_name(f".old-{folder.name}-{secrets.token_hex(3)}")
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_summary(result: ExportResult) -> str:
    """Two or three lines for the CLI: where the export is and what the check said."""
    lines = [result.message]
    if result.path is not None:
        lines.insert(0, f"{result.format} export: {result.path}")
        lines.append(f"folder: {result.folder} ({', '.join(result.files)})")
    return "\n".join(lines)


# The generated predict.py: standalone (numpy, Pillow, plus torch or onnxruntime), with
# @@PLACEHOLDERS@@ filled in by _write_common. Kept ruff-clean as a script of its own.
PREDICT_TEMPLATE = r'''#!/usr/bin/env python3
"""Classify images with the model in this folder: @@TITLE@@ export of run "@@RUN@@".

Needs only @@REQUIREMENTS@@ (not Finetune Dashboard):

    python predict.py IMAGE_OR_FOLDER [IMAGE_OR_FOLDER ...] [--top-k 3] [--json]

Prints one line per image: path<TAB>label<TAB>probability (with --top-k, more
label/probability pairs follow). Images are prepared exactly as in training (see
preprocessing.json): RGB, shorter side resized to @@SIZE@@ px (bilinear), centre crop
@@SIZE@@x@@SIZE@@, pixel / 255, then (x - mean) / std, as float32 NCHW. Unreadable files
are reported on stderr and make the exit code 1; the other images are still classified.
In Python: ``Predictor().probabilities(batch)`` for a preprocessed (N, 3, H, W) batch.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
FORMAT = "@@FORMAT@@"
EXTENSIONS = {
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".dib", ".tif", ".tiff",
    ".webp", ".ppm", ".pgm", ".pbm", ".pnm",
}  # fmt: skip
BATCH_SIZE = 32
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def read_json(folder: Path, name: str):
    return json.loads((folder / name).read_text(encoding="utf-8"))


# ------------------------------------------------------------------ images
def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow image as 8-bit RGB, converted the way training converted it."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(image)
        if mode == "F":
            arr = np.nan_to_num(arr.astype(np.float64))
            if arr.size and arr.max() <= 1.0 and arr.min() >= 0.0:
                arr = arr * 255.0
            grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        else:
            wide = arr.astype(np.int64)
            if mode == "I" and (wide.size == 0 or wide.max() <= 255):
                grey = np.clip(wide, 0, 255).astype(np.uint8)
            else:
                grey = ((np.clip(wide, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "CMYK":
        icc = image.info.get("icc_profile")
        if icc:
            try:
                from PIL import ImageCms

                source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                srgb = ImageCms.createProfile("sRGB")
                out = ImageCms.profileToProfile(image, source, srgb, outputMode="RGB")
                if out is not None:
                    return out
            except Exception:
                pass
        return image.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        "transparency" in image.info and mode in ("P", "L", "RGB", "1")
    ):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Decode an image file to RGB with its EXIF orientation applied."""
    with Image.open(path) as image:
        image.load()
        try:
            orientation = int(image.getexif().get(0x0112, 1))
        except Exception:
            orientation = 1
        rgb = to_rgb(image)
        if rgb is image:
            rgb = image.copy()
    method = _TRANSPOSE.get(orientation)
    return rgb.transpose(method) if method is not None else rgb


def preprocess(image: Image.Image, spec: dict) -> np.ndarray:
    """One RGB image -> float32 (3, S, S): resize, centre crop, scale, normalise."""
    size = int(spec["image_size"])
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    if nw * nh > 16 * size * size:  # very long, thin images: resample only the crop
        sx, sy = w / nw, h / nh
        box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
        image = image.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0)
    else:
        image = image.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=3.0)
        image = image.crop((left, top, left + size, top + size))
    x = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / 255.0
    mean = np.asarray(spec["mean"], dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(spec["std"], dtype=np.float32).reshape(3, 1, 1)
    return (x - mean) / std


# ------------------------------------------------------------------ models
def _torch_forward(module):
    import torch

    def forward(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(batch)).float().numpy()

    return forward


def _load_checkpoint(folder: Path, meta: dict):
    import torch

    state = torch.load(folder / meta["file"], map_location="cpu", weights_only=True)
    if meta.get("backbone"):  # a custom torch.export backbone plus a linear head
        backbone = torch.export.load(str(folder / meta["backbone"])).module()
        backbone.load_state_dict(state["backbone"])
        out_features, in_features = state["head"]["weight"].shape
        head = torch.nn.Linear(in_features, out_features)
        head.load_state_dict(state["head"])
        head.eval()
        return _torch_forward(lambda x: head(backbone(x)))
    import torchvision

    net = torchvision.models.get_model(
        meta["arch"], weights=None, num_classes=meta["num_classes"], **meta["torchvision_kwargs"]
    )
    net.load_state_dict(state)
    net.eval()
    return _torch_forward(net)


def _load_pt2(folder: Path, meta: dict):
    import torch

    return _torch_forward(torch.export.load(str(folder / meta["file"])).module())


def _load_torchscript(folder: Path, meta: dict):
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still works
        module = torch.jit.load(str(folder / meta["file"]), map_location="cpu")
    module.eval()
    return _torch_forward(module)


def _load_onnx(folder: Path, meta: dict):
    import onnxruntime

    session = onnxruntime.InferenceSession(
        str(folder / meta["file"]), providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})[0]


LOADERS = {
    "checkpoint": _load_checkpoint,
    "pt2": _load_pt2,
    "torchscript": _load_torchscript,
    "onnx": _load_onnx,
}


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


class Predictor:
    """The exported model with its labels and preprocessing."""

    def __init__(self, folder: str | Path = HERE) -> None:
        self.folder = Path(folder)
        self.labels: list[str] = read_json(self.folder, "labels.json")
        self.preprocessing: dict = read_json(self.folder, "preprocessing.json")
        meta = read_json(self.folder, "model.json")
        self._forward = LOADERS[FORMAT](self.folder, meta)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N, C) for a preprocessed float32 (N, 3, H, W) batch."""
        return softmax(np.asarray(self._forward(np.ascontiguousarray(batch, np.float32))))

    def predict_files(self, paths: list[Path], top_k: int = 1) -> list[tuple]:
        """(path, [(label, probability), ...], error) per path, in order; error or top is None."""
        out: list[tuple] = []
        for start in range(0, len(paths), BATCH_SIZE):
            chunk = [(path, None, None) for path in paths[start : start + BATCH_SIZE]]
            arrays = []
            for i, (path, _, _) in enumerate(chunk):
                try:
                    arrays.append((i, preprocess(load_image(path), self.preprocessing)))
                except Exception as exc:  # one bad file must not stop the others
                    chunk[i] = (path, None, f"cannot read image ({type(exc).__name__}: {exc})")
            if arrays:
                probs = self.probabilities(np.stack([a for _, a in arrays]))
                for k, (i, _) in enumerate(arrays):
                    row = probs[k]
                    top = np.argsort(-row, kind="stable")[:top_k]
                    chunk[i] = (chunk[i][0], [(self.labels[j], float(row[j])) for j in top], None)
            out.extend(chunk)
        return out


def collect(inputs: list[str]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Image files named or inside the given folders (recursively), and missing paths."""
    files, missing = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in EXTENSIONS
                and not any(part.startswith(".") or part == "__MACOSX" for part in p.parts)
            )
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            missing.append((path, "no such file or folder"))
    return files, missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="image files or folders of images")
    parser.add_argument("--top-k", type=int, default=1, help="how many classes per image")
    parser.add_argument("--json", action="store_true", help="print JSON instead of lines")
    args = parser.parse_args(argv)
    files, errors = collect(args.inputs)
    predictor = Predictor()
    k = max(1, min(args.top_k, len(predictor.labels)))
    results = []
    for path, top, error in predictor.predict_files(files, k):
        if error:
            errors.append((path, error))
            continue
        results.append(
            {
                "path": str(path),
                "label": top[0][0],
                "prob": top[0][1],
                "top_k": [{"label": lab, "prob": p} for lab, p in top],
            }
        )
        if not args.json:
            print(str(path) + "".join(f"\t{lab}\t{p:.4f}" for lab, p in top))
    for path, error in errors:
        print(f"{path}\terror: {error}", file=sys.stderr)
    if args.json:
        failed = [{"path": str(p), "error": e} for p, e in errors]
        print(json.dumps({"predictions": results, "errors": failed}, indent=2))
    if not files and not errors:
        print("error: no image files found in the given paths", file=sys.stderr)
    return 1 if errors or not results else 0


if __name__ == "__main__":
    sys.exit(main())
'''


__all__ = [
    "EXPORT_DIR",
    "FORMATS",
    "ONNX_HINT",
    "TOLERANCE",
    "ExportError",
    "ExportResult",
    "check_exportable",
    "export_run",
    "export_summary",
    "read_export_checks",
    "verify_export",
]
