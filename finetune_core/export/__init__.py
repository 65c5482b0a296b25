"""Exported models (TorchScript, ExportedProgram, ONNX, checkpoint), verified."""
