"""One function per export format, each writing the model file into a bundle folder.

A writer is ``(model, example, folder, run) -> None``: ``model`` is the float32 Classifier
in eval mode, ``example`` a batch of real preprocessed images to trace with, ``folder``
the bundle being built. ``WRITERS`` maps each format to its writer.
"""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from finetune_core.export.bundle import BundlePaths
from finetune_core.export.formats import ExportError
from finetune_core.fsutil import atomic_write
from finetune_core.models.backbone import family_of
from finetune_core.runs import RunFolder

ONNX_HINT = "install the onnx extra: pip install 'finetune-dashboard[onnx]'"
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")

Writer = Callable[[torch.nn.Module, torch.Tensor, Path, RunFolder], None]


def importable(module: str) -> bool:
    """Whether ``module`` imports (a broken install that fails on import does not)."""
    try:
        importlib.import_module(module)
    except Exception:  # ImportError, or a broken install that fails on import
        return False
    return True


def require_onnx() -> None:
    """Raise ExportError naming the ONNX packages that are missing, with the fix."""
    missing = [m for m in ONNX_PACKAGES if not importable(m)]
    if missing:
        raise ExportError(f"ONNX export needs {', '.join(missing)}: {ONNX_HINT}")


def batch_dim() -> Any:
    """The dynamic batch axis every traced format gets."""
    # AUTO, not Dim("batch", max=...): a custom .pt2 backbone brings its own batch range,
    # and a fixed range of ours would clash with it. Verification runs batches of 1 and
    # N, so a batch axis the exporter made static cannot pass unnoticed.
    return torch.export.Dim.AUTO


def write_checkpoint(
    model: torch.nn.Module, example: torch.Tensor, folder: Path, run: RunFolder
) -> None:
    """weights.pt in torchvision's own parameter names (or backbone + head for .pt2 runs)."""
    bundle = BundlePaths(folder)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if model.arch == "custom":
        shutil.copy2(run.paths.backbone, bundle.backbone(run))
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
        payload = torchvision_state_dict(str(model.arch), state)
    atomic_write(bundle.artefact("checkpoint"), lambda h: torch.save(payload, h))


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


def write_pt2(model: torch.nn.Module, example: torch.Tensor, folder: Path, run: RunFolder) -> None:
    """A ``torch.export`` ExportedProgram with a dynamic batch axis."""
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch_dim()},))
    torch.export.save(program, str(BundlePaths(folder).artefact("pt2")))


def write_torchscript(
    model: torch.nn.Module, example: torch.Tensor, folder: Path, run: RunFolder
) -> None:
    """A traced TorchScript module."""
    traced = torch.jit.trace(model, example)
    torch.jit.save(traced, str(BundlePaths(folder).artefact("torchscript")))


def write_onnx(model: torch.nn.Module, example: torch.Tensor, folder: Path, run: RunFolder) -> None:
    """An ONNX graph: the dynamo exporter first, the TorchScript-based one as a fallback."""
    path = BundlePaths(folder).artefact("onnx")
    try:
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: batch_dim()},),
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


WRITERS: dict[str, Writer] = {
    "checkpoint": write_checkpoint,
    "pt2": write_pt2,
    "torchscript": write_torchscript,
    "onnx": write_onnx,
}
