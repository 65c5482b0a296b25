"""THE table of export formats: each one's name, human title and model file."""

from __future__ import annotations

from dataclasses import dataclass

from finetune_core.runs import RunError


class ExportError(RunError):
    """The export cannot be attempted (unknown format, missing packages)."""


@dataclass(frozen=True)
class ExportFormat:
    """One way to export a model."""

    name: str
    title: str  # what the app, the CLI and the messages call it
    artefact: str  # the model file inside the bundle


TABLE: tuple[ExportFormat, ...] = (
    ExportFormat("checkpoint", "checkpoint (state_dict)", "weights.pt"),
    ExportFormat("pt2", "ExportedProgram (.pt2)", "model.pt2"),
    ExportFormat("torchscript", "TorchScript", "model.torchscript.pt"),
    ExportFormat("onnx", "ONNX", "model.onnx"),
)
FORMATS: tuple[str, ...] = tuple(f.name for f in TABLE)
FORMAT_TITLES: dict[str, str] = {f.name: f.title for f in TABLE}
ARTEFACTS: dict[str, str] = {f.name: f.artefact for f in TABLE}


def parse_format(fmt: str | None) -> str:
    """``fmt`` normalised, or ExportError naming the formats there are."""
    name = (fmt or "").strip().lower()
    if name not in FORMATS:
        raise ExportError(f"Unknown export format {name!r}; choose one of {', '.join(FORMATS)}.")
    return name
