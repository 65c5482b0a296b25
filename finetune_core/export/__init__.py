"""Exported models (TorchScript, ExportedProgram, ONNX, checkpoint), verified.

``formats`` is the table of formats, ``writers`` writes each one, ``bundle`` owns the
bundle's files (``predict_template.py`` becomes its predict.py), ``verify`` checks an
export against the PyTorch model, ``packaging`` puts it in place and ``pipeline`` runs it all.
"""

from finetune_core.export.bundle import BundlePaths, preprocessing_spec
from finetune_core.export.formats import FORMAT_TITLES, FORMATS, ExportError, ExportFormat
from finetune_core.export.pipeline import (
    ExportResult,
    check_exportable,
    export_run,
    export_summary,
    read_export_checks,
)
from finetune_core.export.verify import TOLERANCE, SampleInputs, sample_inputs, verify_export
from finetune_core.export.writers import ONNX_HINT, torchvision_state_dict

__all__ = [
    "FORMATS",
    "FORMAT_TITLES",
    "ONNX_HINT",
    "TOLERANCE",
    "BundlePaths",
    "ExportError",
    "ExportFormat",
    "ExportResult",
    "SampleInputs",
    "check_exportable",
    "export_run",
    "export_summary",
    "preprocessing_spec",
    "read_export_checks",
    "sample_inputs",
    "torchvision_state_dict",
    "verify_export",
]
